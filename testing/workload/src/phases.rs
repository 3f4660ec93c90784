//! A workload in phases that the caller paces: each line on stdin starts
//! one phase (touch the region, DONTNEED all of it, measure `VmPTE` around
//! the call), and each phase's [`Report`] is printed as one JSON line. EOF
//! ends it. Tests start and stop agents between phases.

use std::io::BufRead as _;

use anyhow::{Context as _, Result};

use crate::{advise, vmpte_kib, Advice, Region, Report, MIB};

pub fn phases(mib: usize) -> Result<()> {
    let region = Region::new(mib * MIB, 0)?;
    for line in std::io::stdin().lock().lines() {
        line.context("reading the next phase's go")?;
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
    }
    Ok(())
}
