//! `cargo xtask`: the developer commands of ptwatch.
//!
//! A plain `cargo build` cannot produce a working agent: the eBPF object
//! needs a pinned toolchain with `rust-src`, a bpf-linker built against the
//! same LLVM major as that toolchain, and a kernel with bpffs and tracefs
//! mounted. These commands check and install all of that first, so that
//! `cargo xtask run -- agent` and `cargo xtask test` work on a fresh machine.
use std::{env, ffi::OsString, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

mod bench;
mod cargo;
mod cmd;
mod dist;
mod docs;
mod setup;
mod target;
mod test;
mod vm;
mod vmtest;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "ptwatch developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check, and install when missing, what a purpose needs (must run as
    /// root): `run` (the default) the build and the agent, `dist` also the
    /// cross compilers and packaging tools, `test` also the runtimes the
    /// artifacts are tested in.
    Setup {
        #[arg(long = "for", value_enum, default_value = "run")]
        purpose: setup::Purpose,
    },
    /// Set up, then build the release binaries `ptwatch` and
    /// `ptwatch-workload` with the real eBPF object: for this host in
    /// `target/release`, or static for each `--target` in
    /// `target/<triple>/release` (`--target all`: x86_64, aarch64, riscv64).
    Build {
        /// Release targets: `all`, or a comma-separated list of triples
        /// (`aarch64-unknown-linux-musl`) or architectures (`aarch64`,
        /// `arm64`). Installs the Rust target and the C cross compiler
        /// when missing.
        #[arg(long)]
        target: Option<target::Targets>,
    },
    /// Set up, build every target, then write the release artifacts to
    /// target/dist: static tarballs, .deb packages (checked by lintian), a
    /// multi-arch OCI image archive, SHA256SUMS.
    Dist,
    /// Set up, build, then replace this process with
    /// `target/release/ptwatch <ARGS>`, e.g. `cargo xtask run -- agent`.
    Run {
        /// Arguments for `ptwatch`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Set up, build, then run fmt, clippy and every test (one at a time:
    /// integration tests load eBPF and measure system-wide state).
    Test {
        /// Passed to the test binaries after `--test-threads=1`, e.g. a
        /// test-name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, then run the integration tests inside real Debian
    /// kernels of x86_64, arm64 and riscv64 booted under qemu, with the
    /// probe plans forced in turn. `cargo xtask test` runs this too.
    VmTest(vmtest::VmTestArgs),
    /// Real Debian kernels in a VM: fetch them, boot one and run a command.
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// Set up, build, then rewrite docs/cli.md from the CLI definitions (a
    /// test fails when it is stale) and write the man pages and shell
    /// completions the packages ship into target/docs/.
    Docs,
    /// Measure what the agent costs the node: bystanders and DONTNEED loops
    /// with the agent off and on (host and VM), and its own footprint.
    Bench(bench::BenchArgs),
    /// What `bench` runs in processes of their own: the timed loops (neither
    /// the agent nor the process that drives it) and, inside a VM, a whole
    /// session.
    #[command(hide = true, subcommand)]
    BenchChild(bench::Child),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    // rustup installs bpf-linker and cargo's tools into ~/.cargo/bin, which a
    // root shell (sudo, CI) often lacks on PATH; agent/build.rs looks
    // bpf-linker up on PATH. Set it once here so every child inherits it.
    put_cargo_bin_on_path();
    match command {
        Command::Setup { purpose } => setup::run_for(purpose).map(|()| ExitCode::SUCCESS),
        Command::Build { target: None } => {
            setup::run()?;
            cargo::build().map(|_| ExitCode::SUCCESS)
        }
        Command::Build { target: Some(targets) } => {
            setup::run()?;
            for &target in &targets.0 {
                setup::cross(target)?;
            }
            cargo::build_targets(&targets.0)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dist => {
            setup::run_for(setup::Purpose::Dist)?;
            dist::run().map(|_| ExitCode::SUCCESS)
        }
        Command::Run { args } => {
            setup::run()?;
            let built = cargo::build()?;
            cargo::exec(&built.ptwatch, &args)
        }
        Command::Test { args } => {
            setup::run_for(setup::Purpose::Test)?;
            // The artifacts are tested in their runtimes (.deb under
            // systemd, image under podman, tarball on the host), and every
            // other test runs the static binaries they carry (`dist` built
            // them): what users install, and one release build less (4–6
            // min on 2 cores).
            let dist = dist::run()?;
            let built = cargo::build_shipped()?;
            test::run(&built, &dist, &args)
        }
        Command::Docs => {
            setup::run()?;
            let built = cargo::build()?;
            docs::run(&built).map(|()| ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            setup::run_for(setup::Purpose::Test)?;
            let built = cargo::build()?;
            bench::run(&built, &args).map(|()| ExitCode::SUCCESS)
        }
        Command::VmTest(args) => {
            setup::run_for(setup::Purpose::Test)?;
            let built = cargo::build_shipped()?;
            Ok(if vmtest::run(&built, &args, vmtest::Binaries::new())? { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Vm(command) => vm::run(command).map(|()| ExitCode::SUCCESS),
        Command::BenchChild(child) => bench::run_child(&child).map(|()| ExitCode::SUCCESS),
    }
}

/// `$CARGO_HOME/bin`, or `~/.cargo/bin` when CARGO_HOME is unset.
fn cargo_bin_dir() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|home| home.join("bin"))
}

fn put_cargo_bin_on_path() {
    let Some(bin) = cargo_bin_dir() else {
        return;
    };
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|dir| dir == bin) {
        return;
    }
    let joined = env::join_paths(std::iter::once(bin).chain(env::split_paths(&path)));
    if let Ok(joined) = joined {
        // Edition 2021, and no other thread exists yet.
        env::set_var("PATH", joined);
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::{Cli, Command};

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_passes_everything_after_the_subcommand_on() {
        for argv in [
            &["xtask", "run", "--", "agent", "--listen", "127.0.0.1:1"][..],
            &["xtask", "run", "agent", "--listen", "127.0.0.1:1"][..],
        ] {
            let Ok(Cli { command: Command::Run { args } }) = Cli::try_parse_from(argv) else {
                panic!("{argv:?} did not parse as `run`");
            };
            assert_eq!(args, ["agent", "--listen", "127.0.0.1:1"]);
        }
    }

    #[test]
    fn test_passes_a_filter_on() {
        let Ok(Cli { command: Command::Test { args } }) =
            Cli::try_parse_from(["xtask", "test", "--", "reclaim", "--exact"])
        else {
            panic!("did not parse as `test`");
        };
        assert_eq!(args, ["reclaim", "--exact"]);
    }
}
