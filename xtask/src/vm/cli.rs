//! `cargo xtask vm …`: set up the tools, fetch kernels, boot one and run a
//! command, or print what ptwatch depends on in each kernel.

use std::{path::PathBuf, time::Duration};

use anyhow::{anyhow, bail, Result};

use super::{
    arch::{Arch, Cpu},
    boot::{run_steps, VmOptions},
    fetch::{default_cache_dir, fetch_kernel, fetch_kernel_with, FetchMode},
    guest::Step,
    kernel::KernelLine,
    tools::ensure_vm_tools,
};

/// `cargo xtask vm …`
#[derive(Debug, clap::Subcommand)]
pub enum VmCommand {
    /// Install qemu (every architecture), virtme-ng and virtiofsd when
    /// missing.
    Setup,
    /// Resolve, download and prepare kernels (the whole test matrix when
    /// none is named).
    Fetch {
        /// `<arch>/<series>`, e.g. x86_64/sid-7, arm64/newest-7,
        /// riscv64/sid-7 (a bare series is x86_64).
        kernels: Vec<KernelLine>,
        /// Re-resolve against the mirror even when a kernel is cached.
        #[arg(long)]
        refresh: bool,
    },
    /// Boot a kernel and run a shell command in it as root.
    Run {
        /// `<arch>/<series>`, e.g. arm64/newest-7.
        kernel: KernelLine,
        /// Seconds for boot + command.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// qemu CPU model (arm64: max or cortex-a57).
        #[arg(long)]
        cpu: Option<String>,
        /// arm64/riscv64: a static executable to put in the guest's
        /// /ptwatch/, as NAME=PATH (repeatable).
        #[arg(long = "file", value_parser = parse_file)]
        files: Vec<(String, PathBuf)>,
        /// Print the kernel console too.
        #[arg(long)]
        console: bool,
        /// The command (joined with spaces, run by /bin/sh).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Boot each kernel and print what ptwatch depends on: BTF, mounts,
    /// the hooked functions in kallsyms.
    Check { kernels: Vec<KernelLine> },
}

fn parse_file(s: &str) -> Result<(String, PathBuf)> {
    let (name, path) = s.split_once('=').ok_or_else(|| anyhow!("expected NAME=PATH, got {s:?}"))?;
    Ok((name.to_owned(), PathBuf::from(path)))
}

/// The kernel functions ptwatch's fentry/kprobe plans hook, from the one
/// table in `ptwatch_common::hooks`, without duplicates.
pub fn probe_symbols() -> Vec<&'static str> {
    use ptwatch_common::hooks;
    let mut symbols: Vec<&str> = [hooks::TLB_REMOVE_TABLE]
        .iter()
        .chain(&hooks::LEVEL_FUNCTIONS)
        .chain(&hooks::CONTEXT)
        .chain(&hooks::OUTSIDE_MMU_GATHER)
        .map(|h| h.function)
        .collect();
    symbols.sort_unstable();
    symbols.dedup();
    symbols
}

/// Entry point for `cargo xtask vm …`.
pub fn run(cmd: VmCommand) -> Result<()> {
    let cache = default_cache_dir();
    let or_all = |ks: Vec<KernelLine>| if ks.is_empty() { KernelLine::MATRIX.to_vec() } else { ks };
    match cmd {
        VmCommand::Setup => ensure_vm_tools(&Arch::ALL),
        VmCommand::Fetch { kernels, refresh } => {
            let mode = if refresh { FetchMode::Refresh } else { FetchMode::CacheFirst };
            for k in or_all(kernels) {
                let b = fetch_kernel_with(k, &cache, mode)?;
                println!("{k}: {} ({}) {}", b.release, b.package_version, b.vmlinuz.display());
            }
            Ok(())
        }
        VmCommand::Run { kernel, timeout, cpu, files, console, command } => {
            ensure_vm_tools(&[kernel.arch])?;
            let k = fetch_kernel(kernel, &cache)?;
            let mut opts = VmOptions::new(Duration::from_secs(timeout));
            opts.cpu = cpu.map(|c| Cpu::parse_for(kernel.arch, &c)).transpose()?;
            opts.files = files;
            let run = run_steps(&k, &[Step::new("command", command.join(" "))], &opts)?;
            if console {
                eprintln!("{}", run.console);
            }
            if let Some(failure) = run.failure() {
                bail!("{failure}");
            }
            let step = run.log.step("command").ok_or_else(|| anyhow!("the guest ran no command"))?;
            print!("{}", step.output);
            if !step.succeeded() {
                bail!("command exited with status {:?} in {}", step.status, k.release);
            }
            Ok(())
        }
        VmCommand::Check { kernels } => {
            let kernels = or_all(kernels);
            let arches: Vec<Arch> = kernels.iter().map(|k| k.arch).collect();
            ensure_vm_tools(&arches)?;
            let script = format!(
                "uname -rm; ls -la /sys/kernel/btf/vmlinux; mount | grep -E 'bpf|tracefs|debugfs'; \
                 echo kallsyms: $(grep -c . /proc/kallsyms); grep -wE '{}' /proc/kallsyms | awk '{{print $3}}' | sort -u",
                probe_symbols().join("|")
            );
            for k in kernels {
                let b = fetch_kernel(k, &cache)?;
                let run =
                    run_steps(&b, &[Step::new("check", script.clone())], &VmOptions::new(Duration::from_secs(300)))?;
                if let Some(failure) = run.failure() {
                    bail!("{k}: {failure}");
                }
                println!(
                    "== {k} ({}), booted in {:.1}s, CONFIG_PT_RECLAIM={}",
                    b.release,
                    run.boot_time.unwrap_or(run.elapsed).as_secs_f64(),
                    b.config_value("CONFIG_PT_RECLAIM").unwrap_or_else(|| "unset".into())
                );
                print!("{}", run.log.step("check").map(|s| s.output.as_str()).unwrap_or_default());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test fails with the error it unwraps")]
mod tests {
    #[test]
    fn probe_symbols_come_from_the_hook_table() {
        let symbols = super::probe_symbols();
        for f in ["tlb_remove_table", "___pte_free_tlb", "free_pgtables", "pte_free_defer", "zap_huge_pmd"] {
            assert!(symbols.contains(&f), "{f} missing from {symbols:?}");
        }
        let mut sorted = symbols.clone();
        sorted.dedup();
        assert_eq!(sorted, symbols, "no duplicates");
    }
}
