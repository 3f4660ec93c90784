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

/// `agent_config` is `Some` for `Command::Agent`, resolved by `main`.
fn run(command: Command, agent_config: Option<AgentConfig>) -> anyhow::Result<()> {
    if matches!(command, Command::Agent(_)) {
        ptwatch::agent::configure_heap();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match command {
        Command::Agent(_) => {
            let config = agent_config.context("agent configuration was not resolved")?;
            runtime.block_on(ptwatch::agent::run(config))
        }
        Command::Check(args) => ptwatch::check::run(args),
        Command::Scan(args) => ptwatch::scan::run(args),
        Command::Trace(args) => runtime.block_on(ptwatch::trace::run(args)),
        Command::Top(args) => ptwatch::top::run(args),
    }
}
