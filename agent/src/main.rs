//! The `ptwatch` binary: parse flags, set up logging, run a command, and turn
//! any error into one line and an exit code (0 ok, 1 runtime failure,
//! 2 usage error).
use std::process::ExitCode;

use clap::Parser as _;
use ptwatch::cli::{Cli, Command, LogFormat};
use tracing_subscriber::{fmt, EnvFilter};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
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
            // clap's message spans several lines; the first says what is wrong.
            let rendered = err.to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("ptwatch: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let filter = match EnvFilter::try_new(&cli.log) {
        Ok(filter) => filter,
        Err(err) => {
            eprintln!("ptwatch: invalid --log filter {:?}: {err}", cli.log);
            return ExitCode::from(2);
        }
    };
    let subscriber = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ptwatch: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match command {
        Command::Agent(args) => runtime.block_on(ptwatch::agent::run(args)),
        Command::Check(args) => ptwatch::check::run(args),
    }
}
