//! How many PTE tables one DONTNEED request reclaimed, measured around it
//! (tracepoint plan, which cannot see the frees themselves).
//!
//! PT_RECLAIM can only free the PTE table of a 2 MiB span that the zap
//! covers completely, so a range covering no whole span needs no
//! measurement at all: that is what keeps an allocator's 4 KiB DONTNEEDs
//! cheap. Otherwise the tables under the fully covered spans are counted at
//! entry and at exit by walking the page tables (`pagetable.rs`): immune to
//! other threads faulting or zapping elsewhere in the same address space.
//! Where the walk is unavailable, the drop of `mm->pgtables_bytes` across
//! the request is used (exact only when nothing else changes the address
//! space's page tables meanwhile; counted as approximate).

use ptwatch_common::context::measured;

use crate::{
    counters::{count, Diagnostic},
    kernel::{current_mm, pgtables_bytes, Config},
    pagetable::{count_pte_tables, PMD_SPAN},
};

/// What was measured when a request started.
#[derive(Clone, Copy, Default)]
pub struct AtEntry {
    /// PTE tables under the covered spans (valid when `walked`).
    pub tables: u64,
    pub walked: bool,
    /// `mm->pgtables_bytes`, for the fallback.
    pub pgtables_bytes: u64,
}

impl AtEntry {
    /// How it was measured, as stored in a context (`measured::*`).
    #[inline(always)]
    pub fn method(&self) -> u64 {
        if self.walked {
            measured::WALK
        } else {
            measured::PGTABLES_BYTES
        }
    }

    /// Back from a stored `method` and values; `None` when nothing was
    /// measured (the request could not reclaim).
    #[inline(always)]
    pub fn stored(method: u64, tables: u64, pgtables_bytes: u64) -> Option<Self> {
        match method {
            measured::WALK => Some(Self { tables, walked: true, pgtables_bytes }),
            measured::PGTABLES_BYTES => Some(Self { tables, walked: false, pgtables_bytes }),
            _ => None,
        }
    }
}

/// Whether `[start, start + len)` covers at least one whole 2 MiB span.
#[inline(always)]
pub fn covers_a_span(start: u64, len: u64) -> bool {
    let end = start.wrapping_add(len);
    if end <= start {
        // Empty, or wrapping around (the kernel rejects it).
        return false;
    }
    let first = start.wrapping_add(PMD_SPAN - 1) & !(PMD_SPAN - 1);
    first >= start && end.checked_sub(first).is_some_and(|rest| rest >= PMD_SPAN)
}

/// Whether a DONTNEED request on `range` can reclaim: PT_RECLAIM works on
/// this kernel and the range covers a whole span. `None`: the range is not
/// known exactly (process_madvise with several iovecs), so it may.
///
/// What every plan asks before it keeps more than the range of a request:
/// the tracepoint plan measures only these requests, the function plans
/// mark only these as inside a zap that may reclaim.
#[inline(always)]
pub fn can_reclaim(config: Config, range: Option<(u64, u64)>) -> bool {
    config.pt_reclaim() != 0 && range.is_none_or(|(start, len)| covers_a_span(start, len))
}

/// Measure at the start of a request that covers a span. `WALK`: whether
/// this program variant contains the walk (kernels whose verifier rejects
/// it load the variant without).
#[inline(always)]
pub fn at_entry<const WALK: bool>(config: Config, mm: u64, start: u64, len: u64) -> AtEntry {
    let mut entry = AtEntry { pgtables_bytes: pgtables_bytes(config, mm).unwrap_or(0), ..AtEntry::default() };
    if WALK && config.direct_map_base() != 0 {
        if let Some(count) = count_pte_tables(config, mm, start, start.wrapping_add(len)) {
            if count.complete {
                entry.tables = count.tables;
                entry.walked = true;
            }
        }
    }
    entry
}

/// PTE tables the request on `[start, start + len)` of the running task's
/// address space reclaimed, from what `at_entry` measured (`None`: nothing
/// was, the request could not reclaim). `current->mm` is read only for a
/// measured request: most (an allocator's small ones) are not.
#[inline(always)]
pub fn reclaimed<const WALK: bool>(config: Config, entry: Option<AtEntry>, start: u64, len: u64) -> u64 {
    let Some(entry) = entry else {
        return 0;
    };
    let Some(mm) = current_mm(config) else {
        return 0;
    };
    if WALK && entry.walked {
        if let Some(count) = count_pte_tables(config, mm, start, start.wrapping_add(len)) {
            if count.complete {
                return entry.tables.saturating_sub(count.tables);
            }
        }
    }
    count(Diagnostic::ApproximateCall);
    let now = pgtables_bytes(config, mm).unwrap_or(entry.pgtables_bytes);
    // checked_div: a division the compiler cannot prove safe would leave a
    // panic path, which the verifier rejects.
    entry.pgtables_bytes.saturating_sub(now).checked_div(config.page_size()).unwrap_or(0)
}
