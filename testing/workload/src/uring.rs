//! DONTNEED through io_uring (`IORING_OP_MADVISE`): the request passes no
//! madvise syscall; the kernel runs it in an io-wq worker thread of this
//! process, and PT_RECLAIM frees the PTE tables as for madvise(2).

use anyhow::{bail, Context as _, Result};
use io_uring::{opcode, IoUring};

use crate::{vmpte_kib, Region, Report, MIB};

/// Map and touch `mib` MiB (2 MiB aligned, no THP), then advise it away
/// with one `IORING_OP_MADVISE` `MADV_DONTNEED` request per `cut_kib`,
/// waiting for each, measuring `VmPTE` around each; `rounds` times.
pub fn io_uring_dontneed(mib: usize, cut_kib: usize, rounds: u32) -> Result<Report> {
    let mut ring = IoUring::new(4).context(
        "io_uring_setup failed (io_uring disabled? see sysctl kernel.io_uring_disabled): the io_uring DONTNEED workload needs it",
    )?;
    let len = mib * MIB;
    let cut = (cut_kib * 1024).max(4096);
    let region = Region::new(len, 0)?;
    let mut report = Report { pid: std::process::id(), ..Report::default() };
    for _ in 0..rounds {
        region.touch_tables();
        report.vmpte_peak_kib = report.vmpte_peak_kib.max(vmpte_kib()?);
        let mut from = 0;
        while from < len {
            let this = cut.min(len - from);
            // SAFETY: inside the region.
            let addr = unsafe { region.start.add(from) };
            let request = opcode::Madvise::new(addr.cast(), this as libc::off_t, libc::MADV_DONTNEED).build();
            let before = vmpte_kib()?;
            // SAFETY: the request points into `region`, which outlives it
            // (we wait for its completion below).
            unsafe { ring.submission().push(&request) }.context("io_uring submission queue full")?;
            ring.submit_and_wait(1).context("io_uring_enter failed")?;
            let completion = ring.completion().next().context("no io_uring completion")?;
            if completion.result() < 0 {
                bail!("IORING_OP_MADVISE failed: {}", std::io::Error::from_raw_os_error(-completion.result()));
            }
            let after = vmpte_kib()?;
            report.vmpte_drop_kib += before.saturating_sub(after);
            report.calls += 1;
            report.bytes += this as u64;
            report.expected_tables += region.covered_spans(from, this);
            from += this;
        }
    }
    report.vmpte_end_kib = vmpte_kib()?;
    Ok(report)
}
