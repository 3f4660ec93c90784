//! The `ptwatch` binary: parse flags, resolve the configuration, set up
//! logging, run a command, and turn any error into one line and an exit code
//! (0 ok, 1 runtime failure, 2 usage error: bad flags or configuration).
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use ptwatch::{
    cli::{generate, Cli, Command, LogFormat},
    config::{AgentConfig, LogConfig},
    error_chain::ErrorChain,
};
use tracing_subscriber::{fmt, EnvFilter};

/// Every `memcpy` of the static x86_64 binary, in place of musl's
/// (`agent/build.rs` links with `--wrap=memcpy`; why: `ptwatch::memcpy`).
///
/// # Safety
/// C's `memcpy` contract, which every caller (compiled code, libc) keeps.
#[cfg(all(target_arch = "x86_64", target_env = "musl"))]
#[no_mangle]
pub unsafe extern "C" fn __wrap_memcpy(dst: *mut u8, src: *const u8, len: usize) -> *mut u8 {
    // SAFETY: the caller's.
    unsafe { ptwatch::memcpy::copy(dst, src, len) };
    dst
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if generate::requested(&args) {
        return generate::main(&args[1..]);
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(err) => {
            use clap::error::ErrorKind;
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = err.print();
                return if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // clap's message spans several lines; the first says what is wrong,
            // and when it ends in ':' (a missing argument) the next says which.
            let rendered = err.to_string();
            let mut lines = rendered.lines();
            let first = lines.next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            match (first.strip_suffix(':'), lines.next()) {
                (Some(head), Some(what)) => eprintln!("ptwatch: {head}: {}", what.trim()),
                _ => eprintln!("ptwatch: {first}"),
            }
            return ExitCode::from(2);
        }
    };
    // The agent's config file can set the log options, so it is read (and a
    // bad one rejected as a usage error) before logging starts.
    let agent_config = match &cli.command {
        Command::Agent(args) => match AgentConfig::resolve(args, &cli.log) {
            Ok(config) => Some(config),
            Err(err) => {
                eprintln!("ptwatch: {}", ErrorChain(&err));
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let log = match agent_config.as_ref().map(|c| Ok(c.log.clone())).unwrap_or_else(|| LogConfig::from_args(&cli.log)) {
        Ok(log) => log,
        Err(err) => {
            eprintln!("ptwatch: {}", ErrorChain(&err));
            return ExitCode::from(2);
        }
    };
    let filter = match EnvFilter::try_new(&log.filter) {
        Ok(filter) => filter,
        Err(err) => {
            eprintln!("ptwatch: invalid log filter {:?}: {err}", log.filter);
            return ExitCode::from(2);
        }
    };
    let subscriber = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match log.format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    match run(cli.command, agent_config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.downcast_ref::<ptwatch::cli::UsageError>().is_some() => {
            eprintln!("ptwatch: {}", ErrorChain(&*err));
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("ptwatch: error: {}", ErrorChain(&*err));
            ExitCode::FAILURE
        }
    }
}

/// `agent_config` is `Some` for `Command::Agent`, resolved by `main`. Only
/// `trace` needs an async runtime here: the agent starts its own once its
/// probes are attached and its privileges dropped (`agent.rs`).
fn run(command: Command, agent_config: Option<AgentConfig>) -> anyhow::Result<()> {
    match command {
        Command::Agent(_) => {
            ptwatch::agent::configure_heap();
            ptwatch::agent::run(agent_config.context("agent configuration was not resolved")?)
        }
        Command::Check(args) => ptwatch::check::run(args),
        Command::Scan(args) => ptwatch::scan::run(args),
        Command::Trace(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(ptwatch::trace::run(args))
        }
        Command::Top(args) => ptwatch::top::run(args),
    }
}
