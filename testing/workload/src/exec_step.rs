//! One step of a process that changes its name by `execve`: the caller
//! paces it through stdin so that an observer can see each name before the
//! next step runs.
//!
//! `exec-step MIB [PROGRAM ARGS...]`: wait for a line on stdin; touch MIB
//! and DONTNEED all of it (measuring `VmPTE` around the call) and print the
//! [`Report`] as one JSON line; then, with PROGRAM, wait for another line
//! and `execve` PROGRAM with ARGS (the same pid continues as PROGRAM, under
//! the name of PROGRAM's file: a symlink named `after` gives comm `after`),
//! else wait until stdin closes.

use std::{
    ffi::CString,
    io::{BufRead as _, Read as _},
};

use anyhow::{bail, Context as _, Result};

use crate::{advise, vmpte_kib, Advice, Region, Report, MIB};

pub fn exec_step(mib: usize, next: &[String]) -> Result<()> {
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    stdin.read_line(&mut line).context("waiting for the go")?;
    let region = Region::new(mib * MIB, 0)?;
    region.touch_tables();
    let peak = vmpte_kib()?;
    let bytes = advise(region.start, region.len, Advice::Dontneed)?;
    let end = vmpte_kib()?;
    let report = Report {
        pid: std::process::id(),
        vmpte_drop_kib: peak.saturating_sub(end),
        vmpte_peak_kib: peak,
        vmpte_end_kib: end,
        calls: 1,
        bytes,
        expected_tables: region.covered_spans(0, region.len),
        region_unmap: None,
    };
    crate::print_report(&report)?;
    let Some(program) = next.first() else {
        let mut sink = Vec::new();
        stdin.read_to_end(&mut sink).context("waiting for stdin to close")?;
        return Ok(());
    };
    line.clear();
    stdin.read_line(&mut line).context("waiting for the go to exec")?;
    let args: Vec<CString> = next.iter().map(|a| CString::new(a.as_str())).collect::<Result<_, _>>()?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let program = CString::new(program.as_str())?;
    // SAFETY: NUL-terminated strings and a NULL-terminated argv that outlive
    // the call; execv returns only on failure. The environment is kept.
    unsafe { libc::execv(program.as_ptr(), argv.as_ptr()) };
    bail!("execv {}: {}", program.to_string_lossy(), std::io::Error::last_os_error())
}
