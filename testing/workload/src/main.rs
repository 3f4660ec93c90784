//! `ptwatch-workload`: runs one workload and prints its [`Report`] as JSON.
//!
//! ```text
//! ptwatch-workload cuts MIB OFFSET_KIB CUT_KIB ROUNDS ADVICE
//!   # ADVICE: dontneed, dontneed-locked, process-madvise, free, compat (x86_64: a 32-bit program's madvise)
//! ptwatch-workload threads THREADS MIB ROUNDS
//! ptwatch-workload refused MIB   # per 2 MiB span: two DONTNEEDs refused (EINVAL), one page accepted
//! ptwatch-workload unmap MIB     # touch, then munmap
//! ptwatch-workload unmap-paced MIB  # touch, print, wait for a line; munmap, print, wait until stdin closes
//! ptwatch-workload exit MIB      # touch, then exit with the mapping
//! ptwatch-workload hold MIB      # touch, DONTNEED, print, keep the mapping until stdin closes
//! ptwatch-workload fleet CHILDREN SPANS CONCURRENCY  # fork CHILDREN short-lived processes, each reclaiming SPANS tables
//! ptwatch-workload phases MIB    # per stdin line: touch, DONTNEED, print the phase's report; EOF ends
//! ptwatch-workload thp MIB       # THP-backed anonymous memory, then DONTNEED (deposited tables)
//! ptwatch-workload collapse MIB  # small-page shmem, then MADV_COLLAPSE (retired PTE tables)
//! ptwatch-workload io-uring MIB CUT_KIB ROUNDS  # touch, then IORING_OP_MADVISE DONTNEED in cuts
//! ptwatch-workload crowd CHILDREN SPANS  # CHILDREN processes alive at once, each reclaiming SPANS tables, until stdin closes
//! ptwatch-workload exec-step MIB [PROGRAM ARGS...]  # paced by stdin: DONTNEED MIB, then execve PROGRAM
//! ptwatch-workload churn THREADS MIB ROUNDS  # threads map, touch, DONTNEED, touch, unmap concurrently
//! ptwatch-workload halves MIB    # touch, DONTNEED each 2 MiB span in two 1 MiB halves, hold until stdin closes
//! ptwatch-workload whole MIB     # touch, DONTNEED each 2 MiB span in one call, hold until stdin closes
//! ptwatch-workload sparse GIB EVERY  # one page per 2 MiB span, every EVERY-th DONTNEEDed again, hold
//! ```
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use ptwatch_workload::{
    churn, cuts, exit_with_tables, fleet, hold_dontneeded, huge, phases, refused, sparse, threads, unmap, uring, Advice,
};

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
        Some("refused") => refused(arg(&args, 1, "MIB")?)?,
        Some("unmap") => unmap(arg(&args, 1, "MIB")?, |_| Ok(()))?,
        Some("unmap-paced") => {
            let report = unmap(arg(&args, 1, "MIB")?, sparse::print_and_wait_line)?;
            return sparse::print_and_wait(&report);
        }
        Some("exit") => exit_with_tables(arg(&args, 1, "MIB")?)?,
        Some("thp") => huge::thp_dontneed(arg(&args, 1, "MIB")?)?,
        Some("collapse") => huge::collapse_shmem(arg(&args, 1, "MIB")?)?,
        Some("io-uring") => {
            uring::io_uring_dontneed(arg(&args, 1, "MIB")?, arg(&args, 2, "CUT_KIB")?, arg(&args, 3, "ROUNDS")?)?
        }
        Some("hold") => {
            let (report, region) = hold_dontneeded(arg(&args, 1, "MIB")?)?;
            sparse::print_and_wait(&report)?;
            drop(region);
            // Already printed: the report must be out before the wait.
            return Ok(());
        }
        Some(mode @ ("halves" | "whole")) => {
            let (report, region) = sparse::split_spans(arg(&args, 1, "MIB")?, if mode == "halves" { 2 } else { 1 })?;
            return sparse::print_and_wait(&report).map(|()| drop(region));
        }
        Some("sparse") => {
            let (report, mapping) = sparse::sparse(arg(&args, 1, "GIB")?, arg(&args, 2, "EVERY")?)?;
            return sparse::print_and_wait(&report).map(|()| drop(mapping));
        }
        Some("phases") => return phases::phases(arg(&args, 1, "MIB")?),
        Some("fleet") => {
            let report = fleet::fleet(arg(&args, 1, "CHILDREN")?, arg(&args, 2, "SPANS")?, arg(&args, 3, "CONCURRENCY")?)?;
            ptwatch_workload::print_report(&report)?;
            return Ok(());
        }
        Some("churn") => {
            let report = churn::churn(arg(&args, 1, "THREADS")?, arg(&args, 2, "MIB")?, arg(&args, 3, "ROUNDS")?)?;
            ptwatch_workload::print_report(&report)?;
            return Ok(());
        }
        Some("crowd") => return ptwatch_workload::crowd::crowd(arg(&args, 1, "CHILDREN")?, arg(&args, 2, "SPANS")?),
        Some("exec-step") => return ptwatch_workload::exec_step::exec_step(arg(&args, 1, "MIB")?, &args[2..]),
        Some("threads") => threads(arg(&args, 1, "THREADS")?, arg(&args, 2, "MIB")?, arg(&args, 3, "ROUNDS")?)?,
        _ => bail!(
            "usage: ptwatch-workload cuts MIB OFFSET_KIB CUT_KIB ROUNDS ADVICE | threads THREADS MIB ROUNDS | unmap MIB | exit MIB | hold MIB | thp MIB | collapse MIB | io-uring MIB CUT_KIB ROUNDS | churn THREADS MIB ROUNDS | fleet CHILDREN SPANS CONCURRENCY | phases MIB | crowd CHILDREN SPANS | exec-step MIB [PROGRAM ARGS...] | halves MIB | whole MIB | sparse GIB EVERY"
        ),
    };
    ptwatch_workload::print_report(&report)?;
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
