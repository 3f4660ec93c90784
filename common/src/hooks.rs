//! Kernel functions the fentry and kprobe plans hook, with the names of the
//! program of each flavour. One table for the kernel side (which defines the
//! programs through a macro) and the agent (which plans and attaches them).

/// One hooked kernel function.
#[derive(Debug, PartialEq, Eq)]
pub struct Hook {
    pub function: &'static str,
    /// Program names: fentry/fexit flavour and kprobe/kretprobe flavour.
    pub fentry: &'static str,
    pub kprobe: &'static str,
    /// Attached at return (fexit/kretprobe) rather than entry.
    pub at_return: bool,
}

pub const TLB_REMOVE_TABLE: Hook = Hook {
    function: "tlb_remove_table",
    fentry: "tlb_remove_table_fentry",
    kprobe: "tlb_remove_table_kprobe",
    at_return: false,
};
pub const FREE_PGTABLES_ENTRY: Hook = Hook {
    function: "free_pgtables",
    fentry: "free_pgtables_fentry",
    kprobe: "free_pgtables_kprobe",
    at_return: false,
};
pub const FREE_PGTABLES_EXIT: Hook = Hook {
    function: "free_pgtables",
    fentry: "free_pgtables_fexit",
    kprobe: "free_pgtables_kretprobe",
    at_return: true,
};
pub const PTE_FREE_TLB: Hook = Hook {
    function: "___pte_free_tlb",
    fentry: "pte_free_tlb_fentry",
    kprobe: "pte_free_tlb_kprobe",
    at_return: false,
};
pub const PMD_FREE_TLB: Hook = Hook {
    function: "___pmd_free_tlb",
    fentry: "pmd_free_tlb_fentry",
    kprobe: "pmd_free_tlb_kprobe",
    at_return: false,
};
pub const PUD_FREE_TLB: Hook = Hook {
    function: "___pud_free_tlb",
    fentry: "pud_free_tlb_fentry",
    kprobe: "pud_free_tlb_kprobe",
    at_return: false,
};
pub const P4D_FREE_TLB: Hook = Hook {
    function: "___p4d_free_tlb",
    fentry: "p4d_free_tlb_fentry",
    kprobe: "p4d_free_tlb_kprobe",
    at_return: false,
};

pub const PTE_FREE_DEFER: Hook = Hook {
    function: "pte_free_defer",
    fentry: "pte_free_defer_fentry",
    kprobe: "pte_free_defer_kprobe",
    at_return: false,
};
pub const ZAP_HUGE_PMD: Hook =
    Hook { function: "zap_huge_pmd", fentry: "zap_huge_pmd_fentry", kprobe: "zap_huge_pmd_kprobe", at_return: false };

/// The per-level functions, in [`crate::Level`] order (pte, pmd, pud, p4d).
pub const LEVEL_FUNCTIONS: [Hook; 4] = [PTE_FREE_TLB, PMD_FREE_TLB, PUD_FREE_TLB, P4D_FREE_TLB];
/// Context hooks every free plan needs, to tell `unmap` from the rest.
pub const CONTEXT: [Hook; 2] = [FREE_PGTABLES_ENTRY, FREE_PGTABLES_EXIT];
/// Page-table frees outside the mmu_gather, each with its own cause,
/// hooked when the kernel has the function: `collapse` (6.5+) and `thp`.
pub const OUTSIDE_MMU_GATHER: [Hook; 2] = [PTE_FREE_DEFER, ZAP_HUGE_PMD];
