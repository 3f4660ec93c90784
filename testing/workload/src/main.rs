//! `ptwatch-workload`: runs one workload and prints its [`Report`] as JSON.
//!
//! ```text
//! ptwatch-workload cuts MIB OFFSET_KIB CUT_KIB ROUNDS ADVICE
//! ptwatch-workload threads THREADS MIB ROUNDS
//! ptwatch-workload unmap MIB     # touch, then munmap
//! ptwatch-workload exit MIB      # touch, then exit with the mapping
//! ```
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use ptwatch_workload::{cuts, exit_with_tables, threads, unmap, Advice};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str) -> Result<T> {
    args.get(i).with_context(|| format!("missing {name}"))?.parse().ok().with_context(|| format!("bad {name}"))
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let report = match args.first().map(String::as_str) {
        Some("cuts") => cuts(
            arg(&args, 1, "MIB")?,
            arg(&args, 2, "OFFSET_KIB")?,
            arg(&args, 3, "CUT_KIB")?,
            arg(&args, 4, "ROUNDS")?,
            Advice::parse(args.get(5).context("missing ADVICE")?)?,
        )?,
        Some("unmap") => unmap(arg(&args, 1, "MIB")?)?,
        Some("exit") => exit_with_tables(arg(&args, 1, "MIB")?)?,
        Some("threads") => threads(arg(&args, 1, "THREADS")?, arg(&args, 2, "MIB")?, arg(&args, 3, "ROUNDS")?)?,
        _ => bail!(
            "usage: ptwatch-workload cuts MIB OFFSET_KIB CUT_KIB ROUNDS ADVICE | threads THREADS MIB ROUNDS | unmap MIB | exit MIB"
        ),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ptwatch-workload: {err:#}");
            ExitCode::FAILURE
        }
    }
}
