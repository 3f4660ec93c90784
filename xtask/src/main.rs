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
mod setup;
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
    /// Check, and install when missing, everything the build and the agent
    /// need (must run as root).
    Setup,
    /// Set up, then build the release binaries `ptwatch` and
    /// `ptwatch-workload` with the real eBPF object.
    Build,
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
    /// kernels (6.1, newest 6.x, newest 7.x) booted under qemu, with each
    /// probe plan forced in turn. `cargo xtask test` runs this too.
    VmTest(vmtest::VmTestArgs),
    /// Real Debian kernels in a VM: fetch them, boot one and run a command.
    #[command(subcommand)]
    Vm(vm::VmCommand),
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
        Command::Setup => setup::run().map(|()| ExitCode::SUCCESS),
        Command::Build => {
            setup::run()?;
            cargo::build().map(|_| ExitCode::SUCCESS)
        }
        Command::Run { args } => {
            setup::run()?;
            let built = cargo::build()?;
            cargo::exec(&built.ptwatch, &args)
        }
        Command::Test { args } => {
            setup::run()?;
            let built = cargo::build()?;
            test::run(&built, &args)
        }
        Command::Bench(args) => {
            setup::run()?;
            let built = cargo::build()?;
            bench::run(&built, &args).map(|()| ExitCode::SUCCESS)
        }
        Command::VmTest(args) => {
            setup::run()?;
            let built = cargo::build()?;
            Ok(if vmtest::run(&built, &args)? { ExitCode::SUCCESS } else { ExitCode::FAILURE })
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
