//! Page-table pages freed, by cause and level (fentry and kprobe plans).
//!
//! Every page-table page the kernel frees through the mmu_gather passes
//! either the x86 per-level functions (`___pte_free_tlb` .. `___p4d_free_tlb`)
//! or `tlb_remove_table`; which one counts is the plan's choice
//! ([`FreeSource`]). The cause comes from what the freeing thread is doing:
//! tearing down the whole mm (`tlb->fullmm`), inside `free_pgtables` through
//! this very mmu_gather (munmap and friends), or inside a DONTNEED request on
//! this mm (PT_RECLAIM: marked, or told by elimination, see [`classify`]).
//! Frees are attributed to the mm's owner, not to the running task: an exit
//! finished by another task's `mmput` still belongs to the process.

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use ptwatch_common::{context::NONE, Cause, FreeSource, Level, ProcessKey, ThreadContext};

use crate::{
    context,
    counters::{record_frees, CommSource, Owner},
    events,
    kernel::{config, current_task, leader_start_time, read_kernel, Config, CurrentTask},
};

/// The process an mm belongs to.
///
/// The running task, when the mm is its own (reclaim, munmap, its own
/// exit): its ids come from helpers. Otherwise `mm->owner`. When the last
/// user goes away, `mm_update_next_owner()` clears the owner before the
/// tables are freed: on exit the dying task still has the mm as
/// `active_mm`, and on execve the task replacing its mm has `in_execve`
/// set. An mm whose last reference is dropped by an unrelated task (one
/// reading `/proc/<pid>/`, say) has no owner to name: `None`.
#[inline(always)]
fn owner(config: Config, mm: u64) -> Option<Owner> {
    let current = current_task();
    let own = read_kernel::<u64>(current, config.task_mm_offset()) == Some(mm)
        // Without CONFIG_MEMCG there is no owner at all: the running task.
        || config.mm_owner_offset() == u64::MAX;
    if own {
        return Some(current_owner(config, current));
    }
    let named = read_kernel::<u64>(mm, config.mm_owner_offset()).unwrap_or(0);
    if named != 0 {
        let tgid: i32 = read_kernel(named, config.task_tgid_offset())?;
        let key = ProcessKey { tgid: tgid as u32, _pad: 0, start_time_ns: leader_start_time(config, named) };
        return Some(Owner { key, comm: CommSource::Task(named) });
    }
    if in_execve(config, current) || read_kernel::<u64>(current, config.task_active_mm_offset()) == Some(mm) {
        return Some(current_owner(config, current));
    }
    None
}

/// Whether a PTE-table free outside teardown, munmap and exec is
/// PT_RECLAIM's even without a DONTNEED mark: PT_RECLAIM works and exec is
/// marked. The same rule makes the fentry plan drop its DONTNEED entry
/// programs (`KernelSymbols::reclaim_by_elimination` in the agent).
#[inline(always)]
fn reclaim_by_elimination(config: Config) -> bool {
    config.pt_reclaim() != 0 && config.task_in_execve_bit() != u64::MAX
}

/// Whether `task` is inside an `execve` (`task->in_execve`); false where
/// the kernel has no such bit.
#[inline(always)]
fn in_execve(config: Config, task: u64) -> bool {
    let bit = config.task_in_execve_bit();
    bit != u64::MAX && read_kernel::<u8>(task, bit / 8).is_some_and(|byte| (byte >> (bit % 8)) & 1 == 1)
}

#[inline(always)]
fn current_owner(config: Config, current: u64) -> Owner {
    let tgid = CurrentTask::get().tgid;
    Owner {
        key: ProcessKey { tgid, _pad: 0, start_time_ns: leader_start_time(config, current) },
        comm: CommSource::Current,
    }
}

/// Why the page at `level` is freed through `tlb`, given this thread's
/// context (copied before it may be released): KERNEL-NOTES.md,
/// "Classifying page-table frees by cause".
#[inline(always)]
fn classify(config: Config, tlb: u64, mm: u64, level: Level, context: &FreeContext) -> (Cause, Level) {
    let fullmm_byte: u8 = read_kernel(tlb, config.tlb_fullmm_bit() / 8).unwrap_or(0);
    if (fullmm_byte >> (config.tlb_fullmm_bit() % 8)) & 1 == 1 {
        return (Cause::Exit, level);
    }
    // The mmu_gather of the `free_pgtables` call this thread is in: a
    // stale mark from a missed exit cannot match a later gather by chance
    // (it was dropped when the next context began).
    if context.free_pgtables_tlb != NONE && context.free_pgtables_tlb == tlb {
        return (Cause::Unmap, level);
    }
    // PT_RECLAIM frees PTE tables only: where the architecture does not
    // name the level, a table freed inside a DONTNEED zap of this mm is one.
    if !matches!(level, Level::Pte | Level::Unknown) {
        return (Cause::Other, level);
    }
    if context.dontneed_mm != NONE && context.dontneed_mm == mm {
        return (Cause::Reclaim, Level::Pte);
    }
    // Without a mark: the only other path that frees a PTE table of the
    // running task's own mm through an mmu_gather is exec's stack move
    // (`relocate_vma_down` → `free_pgd_range` on the new mm, under
    // `in_execve`), so what is left is PT_RECLAIM's. This is what lets the
    // fentry plan count a DONTNEED request with one program at exit.
    if reclaim_by_elimination(config) {
        let current = current_task();
        if read_kernel::<u64>(current, config.task_mm_offset()) == Some(mm) && !in_execve(config, current) {
            return (Cause::Reclaim, Level::Pte);
        }
    }
    (Cause::Other, level)
}

/// Count one page-table page of the mm behind `tlb`, freed at `level`.
#[inline(always)]
fn on_free(config: Config, task: CurrentTask, tlb: u64, level: Level, context: FreeContext) {
    let Some(mm) = read_kernel::<u64>(tlb, config.tlb_mm_offset()) else {
        return;
    };
    let (cause, level) = classify(config, tlb, mm, level, &context);
    if cause == Cause::Reclaim && config.emit_events() != 0 {
        events::reclaimed_in_call(task.tid);
    }
    record_free(config, mm, cause, level);
}

/// Count one page-table page of `mm` freed for `cause`: on the node, and for
/// the process owning `mm`. Every free, whatever hook saw it, ends here.
#[inline(always)]
fn record_free(config: Config, mm: u64, cause: Cause, level: Level) {
    let owner = owner(config, mm);
    if owner.as_ref().is_some_and(|o| u64::from(o.key.tgid) == config.agent_tgid()) {
        return;
    }
    record_frees(owner.as_ref(), cause, level, 1);
    // `ptwatch trace` only; for the agent a branch on a constant.
    events::page_table_freed(config, owner.as_ref(), cause, level);
}

/// What classifying a free needs of the thread's context: the
/// `free_pgtables` gather and the DONTNEED address space it is inside of
/// (`NONE`: none, as for a thread without context).
#[derive(Clone, Copy)]
struct FreeContext {
    free_pgtables_tlb: u64,
    dontneed_mm: u64,
}

/// The context of this thread, copied (the entry may be released below).
/// Always initialised, with `NONE` when the thread has none: an `Option`
/// of the whole value leaves stack slots the compiler may read on either
/// path, which older verifiers (5.10) reject as uninitialised reads.
#[inline(always)]
fn context_of(tid: u32) -> (Option<*mut ThreadContext>, FreeContext) {
    let pointer = context::get(tid);
    let copied = match pointer {
        // SAFETY: a live map value of this thread's key, read at once.
        Some(p) => unsafe { FreeContext { free_pgtables_tlb: (*p).free_pgtables_tlb, dontneed_mm: (*p).dontneed_mm } },
        None => FreeContext { free_pgtables_tlb: NONE, dontneed_mm: NONE },
    };
    (pointer, copied)
}

/// `tlb_remove_table(tlb, table)`.
#[inline(always)]
fn on_tlb_remove_table(tlb: u64) {
    let config = config();
    let task = CurrentTask::get();
    let (pointer, context) = context_of(task.tid);
    let level = if config.free_source() == FreeSource::TlbRemoveTable as u64 {
        // A table no PMD/PUD/P4D function announced is a PTE table.
        context::take_level(task.tid, pointer).and_then(|l| Level::from_index(l as usize)).unwrap_or(Level::Pte)
    } else {
        Level::Unknown
    };
    on_free(config, task, tlb, level, context);
}

/// `___p?d_free_tlb(tlb, table)`: count here, or name the level for the
/// `tlb_remove_table` call it makes next on this thread.
#[inline(always)]
fn on_level_function(tlb: u64, level: Level) {
    let config = config();
    let task = CurrentTask::get();
    if config.free_source() == FreeSource::LevelFunctions as u64 {
        let (_, context) = context_of(task.tid);
        on_free(config, task, tlb, level, context);
    } else {
        context::announce_level(task, level as u32);
    }
}

/// `pte_free_defer(mm, pgtable)`: a PTE table retired after its range was
/// collapsed into a PMD-mapped THP; freed after an RCU grace period.
#[inline(always)]
fn on_pte_free_defer(mm: u64) {
    record_free(config(), mm, Cause::Collapse, Level::Pte);
}

/// `zap_huge_pmd` zapped a huge PMD (`ret` 1) of a VMA: for an anonymous
/// one (no `vm_ops`) the kernel freed the PTE table deposited with the THP
/// (`zap_deposited_table`, an inline `pte_free` with no hook of its own),
/// also when the PMD was a migration entry. Architecture-neutral: no page
/// table bit is decoded.
#[inline(always)]
fn on_huge_pmd_zapped(config: Config, mm: u64) {
    record_free(config, mm, Cause::Thp, Level::Pte);
}

#[inline(always)]
fn anonymous(config: Config, vma: u64) -> bool {
    read_kernel::<u64>(vma, config.vma_vm_ops_offset()) == Some(0)
}

#[inline(always)]
fn on_free_pgtables_entry(tlb: u64) {
    context::begin_free_pgtables(CurrentTask::get(), tlb);
}

#[inline(always)]
fn on_free_pgtables_exit() {
    context::end_free_pgtables(CurrentTask::get().tid);
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
    "___pte_free_tlb"(tlb = 0) => pte_free_tlb_fentry, pte_free_tlb_kprobe, on_level_function(tlb, Level::Pte);
    "___pmd_free_tlb"(tlb = 0) => pmd_free_tlb_fentry, pmd_free_tlb_kprobe, on_level_function(tlb, Level::Pmd);
    "___pud_free_tlb"(tlb = 0) => pud_free_tlb_fentry, pud_free_tlb_kprobe, on_level_function(tlb, Level::Pud);
    "___p4d_free_tlb"(tlb = 0) => p4d_free_tlb_fentry, p4d_free_tlb_kprobe, on_level_function(tlb, Level::P4d);
    "free_pgtables"(tlb = 0) => free_pgtables_fentry, free_pgtables_kprobe, on_free_pgtables_entry(tlb);
    "pte_free_defer"(mm = 0) => pte_free_defer_fentry, pte_free_defer_kprobe, on_pte_free_defer(mm);
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

/// Whether `zap_huge_pmd` zapped a huge PMD: it returns `int` 1 on older
/// kernels and `bool` true since 7.x. Only the low byte of the return
/// register is defined for a `bool`.
#[inline(always)]
fn zapped(ret: u64) -> bool {
    ret & 0xff != 0
}

/// `zap_huge_pmd(tlb, vma, pmd, addr)`: arguments and result at once.
#[fexit(function = "zap_huge_pmd")]
pub fn zap_huge_pmd_fexit(ctx: FExitContext) -> u32 {
    let (tlb, vma): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    let ret: u64 = ctx.arg(4);
    let config = config();
    if zapped(ret) && anonymous(config, vma) {
        if let Some(mm) = read_kernel::<u64>(tlb, config.tlb_mm_offset()) {
            on_huge_pmd_zapped(config, mm);
        }
    }
    0
}

/// kprobe plan: note an anonymous VMA's mm for the kretprobe.
#[kprobe]
pub fn zap_huge_pmd_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(tlb), Some(vma)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return 0;
    };
    let config = config();
    let mm = if anonymous(config, vma) { read_kernel::<u64>(tlb, config.tlb_mm_offset()) } else { None };
    // Also for a non-anonymous VMA: clears what a missed kretprobe left.
    context::begin_huge_zap(CurrentTask::get(), mm);
    0
}

#[kretprobe]
pub fn zap_huge_pmd_kretprobe(ctx: RetProbeContext) -> u32 {
    let ret = ctx.ret::<u64>();
    if let Some(mm) = context::end_huge_zap(CurrentTask::get().tid) {
        if zapped(ret) {
            on_huge_pmd_zapped(config(), mm);
        }
    }
    0
}
