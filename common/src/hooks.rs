//! Kernel functions the fentry and kprobe plans hook, with the names of the
//! program of each flavour. One table for the kernel side (which defines the
//! programs through a macro) and the agent (which plans and attaches them).

/// One hooked kernel function.
#[derive(Debug, PartialEq, Eq)]
pub struct Hook {
    pub function: &'static str,
    /// Program names: fentry/fexit flavour and kprobe/kretprobe flavour;
    /// `None` when that flavour does not need this hook (an fexit program
    /// sees the arguments, a kretprobe does not, so some kprobe plans need an
    /// entry hook the fentry plan does without).
    pub fentry: Option<&'static str>,
    pub kprobe: Option<&'static str>,
    /// Attached at return (fexit/kretprobe) rather than entry.
    pub at_return: bool,
}

pub const TLB_REMOVE_TABLE: Hook = Hook {
    function: "tlb_remove_table",
    fentry: Some("tlb_remove_table_fentry"),
    kprobe: Some("tlb_remove_table_kprobe"),
    at_return: false,
};
pub const FREE_PGTABLES_ENTRY: Hook = Hook {
    function: "free_pgtables",
    fentry: Some("free_pgtables_fentry"),
    kprobe: Some("free_pgtables_kprobe"),
    at_return: false,
};
pub const FREE_PGTABLES_EXIT: Hook = Hook {
    function: "free_pgtables",
    fentry: Some("free_pgtables_fexit"),
    kprobe: Some("free_pgtables_kretprobe"),
    at_return: true,
};
pub const PTE_FREE_TLB: Hook = Hook {
    function: "___pte_free_tlb",
    fentry: Some("pte_free_tlb_fentry"),
    kprobe: Some("pte_free_tlb_kprobe"),
    at_return: false,
};
pub const PMD_FREE_TLB: Hook = Hook {
    function: "___pmd_free_tlb",
    fentry: Some("pmd_free_tlb_fentry"),
    kprobe: Some("pmd_free_tlb_kprobe"),
    at_return: false,
};
pub const PUD_FREE_TLB: Hook = Hook {
    function: "___pud_free_tlb",
    fentry: Some("pud_free_tlb_fentry"),
    kprobe: Some("pud_free_tlb_kprobe"),
    at_return: false,
};
pub const P4D_FREE_TLB: Hook = Hook {
    function: "___p4d_free_tlb",
    fentry: Some("p4d_free_tlb_fentry"),
    kprobe: Some("p4d_free_tlb_kprobe"),
    at_return: false,
};

/// `do_madvise(mm, start, len_in, behavior)`: `madvise(2)` and io_uring's
/// `IORING_OP_MADVISE` on every kernel, and `process_madvise(2)` (one call
/// per iovec) before 6.15.
pub const DO_MADVISE_ENTRY: Hook = Hook {
    function: "do_madvise",
    fentry: Some("do_madvise_fentry"),
    kprobe: Some("do_madvise_kprobe"),
    at_return: false,
};
pub const DO_MADVISE_EXIT: Hook = Hook {
    function: "do_madvise",
    fentry: Some("do_madvise_fexit"),
    kprobe: Some("do_madvise_kretprobe"),
    at_return: true,
};
/// `vector_madvise(mm, iter, behavior)`: `process_madvise(2)` since 6.15,
/// which no longer goes through `do_madvise`.
pub const VECTOR_MADVISE_ENTRY: Hook = Hook {
    function: "vector_madvise",
    fentry: Some("vector_madvise_fentry"),
    kprobe: Some("vector_madvise_kprobe"),
    at_return: false,
};
pub const VECTOR_MADVISE_EXIT: Hook = Hook {
    function: "vector_madvise",
    fentry: Some("vector_madvise_fexit"),
    kprobe: Some("vector_madvise_kretprobe"),
    at_return: true,
};

pub const PTE_FREE_DEFER: Hook = Hook {
    function: "pte_free_defer",
    fentry: Some("pte_free_defer_fentry"),
    kprobe: Some("pte_free_defer_kprobe"),
    at_return: false,
};
/// `zap_huge_pmd(tlb, vma, pmd, addr)` returns 1 when it zapped a huge PMD
/// (present or under migration); for an anonymous VMA the kernel then frees
/// the PTE table deposited with the THP. The fexit program sees arguments
/// and result at once; the kprobe plan notes the VMA at entry.
pub const ZAP_HUGE_PMD_ENTRY: Hook =
    Hook { function: "zap_huge_pmd", fentry: None, kprobe: Some("zap_huge_pmd_kprobe"), at_return: false };
pub const ZAP_HUGE_PMD_EXIT: Hook = Hook {
    function: "zap_huge_pmd",
    fentry: Some("zap_huge_pmd_fexit"),
    kprobe: Some("zap_huge_pmd_kretprobe"),
    at_return: true,
};

/// The per-level functions, in [`crate::Level`] order (pte, pmd, pud, p4d).
pub const LEVEL_FUNCTIONS: [Hook; 4] = [PTE_FREE_TLB, PMD_FREE_TLB, PUD_FREE_TLB, P4D_FREE_TLB];
/// Context hooks every free plan needs, to tell `unmap` from the rest.
pub const CONTEXT: [Hook; 2] = [FREE_PGTABLES_ENTRY, FREE_PGTABLES_EXIT];
/// The DONTNEED requests every fentry/kprobe plan needs: call counts, and
/// the context that tells `reclaim` from the rest.
pub const DONTNEED: [Hook; 2] = [DO_MADVISE_ENTRY, DO_MADVISE_EXIT];
/// `process_madvise(2)` where it bypasses `do_madvise` (6.15+).
pub const DONTNEED_VECTOR: [Hook; 2] = [VECTOR_MADVISE_ENTRY, VECTOR_MADVISE_EXIT];
/// Page-table frees outside the mmu_gather, each with its own cause,
/// hooked when the kernel has the function: `collapse` (6.5+) and `thp`.
pub const OUTSIDE_MMU_GATHER: [Hook; 3] = [PTE_FREE_DEFER, ZAP_HUGE_PMD_ENTRY, ZAP_HUGE_PMD_EXIT];

/// Every hook the fentry and kprobe plans may attach: the names to look up
/// in BTF and kallsyms.
pub const ALL: [&Hook; 14] = [
    &DO_MADVISE_ENTRY,
    &DO_MADVISE_EXIT,
    &VECTOR_MADVISE_ENTRY,
    &VECTOR_MADVISE_EXIT,
    &FREE_PGTABLES_ENTRY,
    &FREE_PGTABLES_EXIT,
    &TLB_REMOVE_TABLE,
    &PTE_FREE_TLB,
    &PMD_FREE_TLB,
    &PUD_FREE_TLB,
    &P4D_FREE_TLB,
    &PTE_FREE_DEFER,
    &ZAP_HUGE_PMD_ENTRY,
    &ZAP_HUGE_PMD_EXIT,
];

impl Hook {
    /// The program of this hook in the fentry (`fentry`) or kprobe flavour.
    pub const fn program(&self, fentry: bool) -> Option<&'static str> {
        if fentry {
            self.fentry
        } else {
            self.kprobe
        }
    }
}
