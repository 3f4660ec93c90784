//! Page-table pages freed, by cause and level (fentry and kprobe plans).
//!
//! Every page-table page the kernel frees through the mmu_gather passes
//! either the x86 per-level functions (`___pte_free_tlb` .. `___p4d_free_tlb`)
//! or `tlb_remove_table`; which one counts is the plan's choice
//! ([`free_source`]). The cause comes from what the freeing thread is doing:
//! tearing down the whole mm (`tlb->fullmm`), inside `free_pgtables`
//! (munmap and friends), or inside a DONTNEED call (PT_RECLAIM). Frees are
//! attributed to the mm's owner (`tlb->mm->owner`), not to the running task:
//! an exit finished by another task's `mmput` still belongs to the process.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_task,
    macros::{fentry, fexit, kprobe, kretprobe, map},
    maps::{LruHashMap, PerCpuArray},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use ptwatch_common::{
    cause, free_source, level, FreeCounters, FreeKey, KernelConfig, NodeFrees, COMM_LEN, MAX_INFLIGHT_CALLS,
    MAX_TRACKED_PROCESSES,
};

use crate::{
    atomic,
    counters::{record_free_update_failure, record_pte_pages_reclaimed},
    events,
    kernel::{config, read_kernel, CurrentTask},
    madvise::in_dontneed,
};

/// Distinct (process, cause, level) triples; a process rarely has more than
/// a handful.
const MAX_FREE_KEYS: u32 = MAX_TRACKED_PROCESSES * 4;

#[map(name = "PAGETABLE_FREES")]
static PAGETABLE_FREES: LruHashMap<FreeKey, FreeCounters> = LruHashMap::with_max_entries(MAX_FREE_KEYS, 0);

#[map(name = "NODE_FREES")]
static NODE_FREES: PerCpuArray<NodeFrees> = PerCpuArray::with_max_entries(1, 0);

/// Threads inside `free_pgtables` (it may sleep, so per thread, not per CPU).
#[map(name = "IN_FREE_PGTABLES")]
static IN_FREE_PGTABLES: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_INFLIGHT_CALLS, 0);

/// The level named by a `___p?d_free_tlb` call, for the `tlb_remove_table`
/// call it makes next on the same CPU: `[tid + 1, level]` (0: none).
#[map(name = "PENDING_LEVEL")]
static PENDING_LEVEL: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Owner of an mm: its tgid and comm.
struct Owner {
    tgid: u32,
    comm: [u8; COMM_LEN],
}

/// The process an mm belongs to.
///
/// `mm->owner` names it while the process lives. When its last user goes
/// away, `mm_update_next_owner()` clears the owner before the tables are
/// freed: on exit the dying task still has the mm as `active_mm`, and on
/// execve the task replacing its mm has `in_execve` set. An mm whose last
/// reference is dropped by an unrelated task (one reading `/proc/<pid>/`,
/// say) has no owner to name: `None`, counted on the node only.
#[inline(always)]
fn owner(config: &KernelConfig, mm: u64) -> Option<Owner> {
    let named = if config.mm_owner_offset == u64::MAX {
        0
    } else {
        read_kernel::<u64>(mm, config.mm_owner_offset).unwrap_or(0)
    };
    let task = if named != 0 {
        named
    } else {
        // SAFETY: returns the running task_struct; no preconditions.
        let current = unsafe { bpf_get_current_task() };
        let in_execve = config.task_in_execve_bit != u64::MAX
            && read_kernel::<u8>(current, config.task_in_execve_bit / 8)
                .is_some_and(|byte| (byte >> (config.task_in_execve_bit % 8)) & 1 == 1);
        let own = in_execve
            || read_kernel::<u64>(current, config.task_mm_offset) == Some(mm)
            || read_kernel::<u64>(current, config.task_active_mm_offset) == Some(mm)
            // Without CONFIG_MEMCG there is no owner at all: the running task.
            || config.mm_owner_offset == u64::MAX;
        if !own {
            return None;
        }
        current
    };
    let tgid: i32 = read_kernel(task, config.task_tgid_offset)?;
    Some(Owner { tgid: tgid as u32, comm: read_kernel(task, config.task_comm_offset).unwrap_or_default() })
}

#[inline(always)]
fn classify(config: &KernelConfig, tlb: u64, tid: u32, level_of_table: u32) -> u32 {
    let fullmm_byte: u8 = read_kernel(tlb, config.tlb_fullmm_bit / 8).unwrap_or(0);
    if (fullmm_byte >> (config.tlb_fullmm_bit % 8)) & 1 == 1 {
        return cause::EXIT;
    }
    // SAFETY: presence test only.
    if unsafe { IN_FREE_PGTABLES.get(tid) }.is_some() {
        return cause::UNMAP;
    }
    // PT_RECLAIM frees PTE tables only; on architectures that do not name
    // the level, every table freed inside a DONTNEED zap is one.
    if in_dontneed(tid) && (level_of_table == level::PTE || level_of_table == level::UNKNOWN) {
        return cause::RECLAIM;
    }
    cause::OTHER
}

/// Count one page-table page freed through `tlb`.
#[inline(always)]
fn on_free(tlb: u64, level_of_table: u32) {
    let config = config();
    let Some(mm) = read_kernel::<u64>(tlb, config.tlb_mm_offset) else {
        return;
    };
    let why = classify(&config, tlb, CurrentTask::get().tid, level_of_table);
    record_free(&config, mm, why, level_of_table);
}

/// Count one page-table page of `mm` freed for `why`: on the node, and for
/// the process owning `mm`. Every free, whatever hook saw it, ends here.
#[inline(always)]
fn record_free(config: &KernelConfig, mm: u64, why: u32, level_of_table: u32) {
    let owner = owner(config, mm);
    if owner.as_ref().is_some_and(|o| u64::from(o.tgid) == config.agent_tgid) {
        return;
    }
    if let Some(node) = NODE_FREES.get_ptr_mut(0) {
        let (c, l) = (why as usize, level_of_table as usize);
        if c < cause::COUNT && l < level::COUNT {
            // SAFETY: per-CPU value of this CPU; indices checked.
            unsafe { (*node).pages[c][l] += 1 };
        }
    }
    // `ptwatch trace` only; for the agent a branch on a constant.
    let (tgid, comm) = owner.as_ref().map_or((0, [0; COMM_LEN]), |o| (o.tgid, o.comm));
    events::page_table_freed(config, tgid, comm, why, level_of_table);
    let Some(owner) = owner else {
        return;
    };
    let key = FreeKey { tgid: owner.tgid, cause: why, level: level_of_table, _pad: 0 };
    let entry = match PAGETABLE_FREES.get_ptr_mut(key) {
        Some(entry) => Some(entry),
        None => {
            let fresh = FreeCounters { pages: 0, comm: owner.comm };
            let _ = PAGETABLE_FREES.insert(key, fresh, u64::from(BPF_NOEXIST));
            PAGETABLE_FREES.get_ptr_mut(key)
        }
    };
    match entry {
        // SAFETY: pointer into a live map value.
        Some(entry) => atomic::add(unsafe { &raw mut (*entry).pages }, 1),
        None => record_free_update_failure(),
    }
    if why == cause::RECLAIM && config.reclaim_from_frees != 0 {
        record_pte_pages_reclaimed(owner.tgid, 1);
    }
}

/// `tlb_remove_table(tlb, table)`.
#[inline(always)]
fn on_tlb_remove_table(tlb: u64) {
    let config = config();
    let tid = CurrentTask::get().tid;
    let mut named = level::UNKNOWN;
    if let Some(pending) = PENDING_LEVEL.get_ptr_mut(0) {
        // SAFETY: per-CPU value of this CPU.
        let pending = unsafe { &mut *pending };
        if pending[0] == u64::from(tid) + 1 {
            named = pending[1] as u32;
        }
        pending[0] = 0;
    }
    let level_of_table = match config.free_source {
        // A table no PMD/PUD/P4D function announced is a PTE table.
        free_source::TLB_REMOVE_TABLE if named == level::UNKNOWN => level::PTE,
        free_source::TLB_REMOVE_TABLE => named,
        _ => level::UNKNOWN,
    };
    on_free(tlb, level_of_table);
}

/// `___p?d_free_tlb(tlb, table)`: count here, or name the level for the
/// `tlb_remove_table` call that follows.
#[inline(always)]
fn on_level_function(tlb: u64, level_of_table: u32) {
    let config = config();
    if config.free_source == free_source::LEVEL_FUNCTIONS {
        on_free(tlb, level_of_table);
    } else if let Some(pending) = PENDING_LEVEL.get_ptr_mut(0) {
        // SAFETY: per-CPU value of this CPU.
        unsafe { *pending = [u64::from(CurrentTask::get().tid) + 1, u64::from(level_of_table)] };
    }
}

/// `pte_free_defer(mm, pgtable)`: a PTE table retired after its range was
/// collapsed into a PMD-mapped THP; freed after an RCU grace period.
#[inline(always)]
fn on_pte_free_defer(mm: u64) {
    record_free(&config(), mm, cause::COLLAPSE, level::PTE);
}

/// x86 `_PAGE_PSE`: the PMD maps a huge page rather than a PTE table.
const PMD_HUGE: u64 = 1 << 7;

/// `zap_huge_pmd(tlb, vma, pmd, addr)`. When the PMD maps an anonymous THP
/// (or the huge zero page), the kernel frees the PTE table deposited with it
/// (`zap_deposited_table`, an inline `pte_free` with no hook of its own).
/// File THPs carry no deposited table on x86. A huge PMD that is being
/// migrated (not present, no PSE bit) is missed: rare and short-lived.
#[inline(always)]
fn on_zap_huge_pmd(tlb: u64, vma: u64, pmd: u64) {
    let config = config();
    let anonymous = read_kernel::<u64>(vma, config.vma_vm_ops_offset) == Some(0);
    let huge = read_kernel::<u64>(pmd, 0).is_some_and(|entry| entry & PMD_HUGE != 0);
    if !(anonymous && huge) {
        return;
    }
    if let Some(mm) = read_kernel::<u64>(tlb, config.tlb_mm_offset) {
        record_free(&config, mm, cause::THP, level::PTE);
    }
}

#[inline(always)]
fn on_free_pgtables_entry(_tlb: u64) {
    let _ = IN_FREE_PGTABLES.insert(CurrentTask::get().tid, 1, 0);
}

#[inline(always)]
fn on_free_pgtables_exit() {
    let _ = IN_FREE_PGTABLES.remove(CurrentTask::get().tid);
}

/// Defines each entry hook twice, as fentry and as kprobe, from one body
/// using the named arguments (fentry may only read the arguments the
/// function has, so each hook lists its own). Program names must match
/// `ptwatch_common::hooks`.
macro_rules! entry_hooks {
    ($($function:literal ($($arg:ident = $index:literal),+) => $fentry:ident, $kprobe:ident, $body:expr;)*) => {$(
        #[fentry(function = $function)]
        pub fn $fentry(ctx: FEntryContext) -> u32 {
            $(let $arg: u64 = ctx.arg($index);)+
            $body;
            0
        }

        #[kprobe]
        pub fn $kprobe(ctx: ProbeContext) -> u32 {
            $(let Some($arg) = ctx.arg::<u64>($index) else {
                return 0;
            };)+
            $body;
            0
        }
    )*};
}

entry_hooks! {
    "tlb_remove_table"(tlb = 0) => tlb_remove_table_fentry, tlb_remove_table_kprobe, on_tlb_remove_table(tlb);
    "___pte_free_tlb"(tlb = 0) => pte_free_tlb_fentry, pte_free_tlb_kprobe, on_level_function(tlb, level::PTE);
    "___pmd_free_tlb"(tlb = 0) => pmd_free_tlb_fentry, pmd_free_tlb_kprobe, on_level_function(tlb, level::PMD);
    "___pud_free_tlb"(tlb = 0) => pud_free_tlb_fentry, pud_free_tlb_kprobe, on_level_function(tlb, level::PUD);
    "___p4d_free_tlb"(tlb = 0) => p4d_free_tlb_fentry, p4d_free_tlb_kprobe, on_level_function(tlb, level::P4D);
    "free_pgtables"(tlb = 0) => free_pgtables_fentry, free_pgtables_kprobe, on_free_pgtables_entry(tlb);
    "pte_free_defer"(mm = 0) => pte_free_defer_fentry, pte_free_defer_kprobe, on_pte_free_defer(mm);
    "zap_huge_pmd"(tlb = 0, vma = 1, pmd = 2) => zap_huge_pmd_fentry, zap_huge_pmd_kprobe, on_zap_huge_pmd(tlb, vma, pmd);
}

#[fexit(function = "free_pgtables")]
pub fn free_pgtables_fexit(_ctx: FExitContext) -> u32 {
    on_free_pgtables_exit();
    0
}

#[kretprobe]
pub fn free_pgtables_kretprobe(_ctx: RetProbeContext) -> u32 {
    on_free_pgtables_exit();
    0
}
