//! Probe plans: for each event, ordered alternatives (fentry, then kprobe,
//! then the tracepoint method), each checked against the running kernel's
//! BTF and kallsyms before anything is loaded. An alternative that fails to
//! load or attach falls through to the next, and the reason is kept for
//! `ptwatch check`, the logs and `ptwatch_probe_info`.

use ptwatch_common::{free_source, hooks, hooks::Hook};

use crate::kernel::{btf::KernelBtf, kallsyms::Kallsyms};

/// How a probe attaches to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attach {
    Fentry,
    Kprobe,
    Tracepoint,
}

impl Attach {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
            Self::Tracepoint => "tracepoint",
        }
    }
}

/// What the user asked for with `--probe-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeMode {
    /// The most precise plan the kernel allows.
    #[default]
    Auto,
    Fentry,
    Kprobe,
    Tracepoint,
}

impl ProbeMode {
    /// Alternatives to try, in order.
    pub fn alternatives(self) -> &'static [Attach] {
        match self {
            Self::Auto => &[Attach::Fentry, Attach::Kprobe, Attach::Tracepoint],
            Self::Fentry => &[Attach::Fentry],
            Self::Kprobe => &[Attach::Kprobe],
            Self::Tracepoint => &[Attach::Tracepoint],
        }
    }
}

/// The functions a fentry or kprobe plan hooks, and how frees are counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookSet {
    pub source: u64,
    pub hooks: Vec<&'static Hook>,
}

impl HookSet {
    /// One line for humans.
    pub fn describe(&self) -> String {
        let counted_at = match self.source {
            free_source::LEVEL_FUNCTIONS => "frees counted at ___p?d_free_tlb (level known)",
            free_source::TLB_REMOVE_TABLE => "frees counted at tlb_remove_table, level from ___p?d_free_tlb",
            _ => "frees counted at tlb_remove_table, level unknown",
        };
        let mut functions: Vec<&str> = self.hooks.iter().map(|h| h.function).collect();
        functions.dedup();
        format!("{counted_at}; causes {}; hooks {}", self.causes().join(", "), functions.join(", "))
    }
}

/// Where an attach type looks functions up.
enum Symbols<'a> {
    /// fentry needs the function's BTF.
    Btf(&'a KernelBtf),
    /// A kprobe needs the symbol.
    Kallsyms(&'a Kallsyms),
}

impl Symbols<'_> {
    fn has_function(&self, function: &str) -> bool {
        match self {
            Self::Btf(btf) => btf.has_function(function),
            Self::Kallsyms(kallsyms) => kallsyms.has_function(function),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Btf(_) => "BTF",
            Self::Kallsyms(_) => "kallsyms",
        }
    }
}

/// The perf PMU through which kprobes attach; absent without CONFIG_KPROBES.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

/// An error and all its causes on one line, without the empty verifier log
/// aya appends when the kernel refused a program before verifying it.
pub fn describe_error(err: &dyn std::error::Error) -> String {
    let text = crate::error_chain::ErrorChain(err).to_string();
    let text = text.replace(". Verifier output: \n", "").replace(". Verifier output: ", ": ");
    text.trim_end_matches([':', ' ', '\n']).to_owned()
}

/// Pick the hooks for `attach` from what the kernel offers: functions in BTF
/// for fentry, in kallsyms for kprobes. `Err` says why the plan cannot work.
pub fn hook_set(attach: Attach, btf: &KernelBtf, kallsyms: Option<&Kallsyms>) -> Result<HookSet, String> {
    let symbols = match attach {
        Attach::Fentry => Symbols::Btf(btf),
        Attach::Kprobe if !std::path::Path::new(KPROBE_PMU).exists() => {
            return Err(format!(
                "kprobes are not available on this kernel (no {KPROBE_PMU}: CONFIG_KPROBES is not set)"
            ))
        }
        Attach::Kprobe => match kallsyms {
            Some(kallsyms) => Symbols::Kallsyms(kallsyms),
            None => return Err("/proc/kallsyms is not readable".into()),
        },
        Attach::Tracepoint => return Err("page-table frees have no tracepoint".into()),
    };
    let has = |function: &str| symbols.has_function(function);
    let where_ = symbols.name();
    for hook in &hooks::CONTEXT {
        if !has(hook.function) {
            return Err(format!("{} is not in {where_} (needed to tell unmap from other frees)", hook.function));
        }
    }
    // Frees outside the mmu_gather add their own causes where the kernel has
    // the function (pte_free_defer: 6.5+); without them the plan still works.
    let context = hooks::CONTEXT.iter().chain(hooks::OUTSIDE_MMU_GATHER.iter().filter(|h| has(h.function)));
    // Count where the level is known when the PTE function can be hooked:
    // on 6.1 x86 native, tables never reach tlb_remove_table at all.
    let levels: Vec<&'static Hook> = hooks::LEVEL_FUNCTIONS.iter().filter(|h| has(h.function)).collect();
    if has(hooks::PTE_FREE_TLB.function) {
        return Ok(HookSet { source: free_source::LEVEL_FUNCTIONS, hooks: context.chain(levels).collect() });
    }
    if !has(hooks::TLB_REMOVE_TABLE.function) {
        return Err(format!("neither ___pte_free_tlb nor tlb_remove_table is in {where_}"));
    }
    // PTE tables go through tlb_remove_table without a level function we can
    // hook: the PMD/PUD/P4D ones name the other levels.
    let source = if levels.is_empty() { free_source::TLB_REMOVE_TABLE_NO_LEVEL } else { free_source::TLB_REMOVE_TABLE };
    Ok(HookSet { source, hooks: context.chain([&hooks::TLB_REMOVE_TABLE]).chain(levels).collect() })
}

impl HookSet {
    /// The causes this set can tell apart, in [`ptwatch_common::cause`]
    /// order: the mmu_gather ones always, `collapse` and `thp` with their hooks.
    pub fn causes(&self) -> Vec<&'static str> {
        let hooked = |hook: &Hook| self.hooks.iter().any(|h| h.function == hook.function);
        ptwatch_common::cause::NAMES
            .iter()
            .copied()
            .filter(|&name| match name {
                "collapse" => hooked(&hooks::PTE_FREE_DEFER),
                "thp" => hooked(&hooks::ZAP_HUGE_PMD),
                _ => true,
            })
            .collect()
    }
}

/// Which alternative an event uses and why the others were not used.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EventChoice {
    pub event: &'static str,
    /// `None`: the event cannot be observed on this kernel.
    pub attach: Option<Attach>,
    pub detail: String,
    pub rejected: Vec<Rejected>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Rejected {
    pub attach: Attach,
    pub reason: String,
}

/// The plan in force, as reported by `check` and the metrics.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PlanReport {
    pub pagetable_free: EventChoice,
    pub pt_reclaim: EventChoice,
}

impl PlanReport {
    /// The attach type that defines the agent's mode (`probe_mode` label).
    pub fn mode(&self) -> Attach {
        self.pt_reclaim.attach.unwrap_or(Attach::Tracepoint)
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly")]
    use std::path::Path;

    use super::*;
    use crate::kernel::btf::VMLINUX_BTF;

    fn btf() -> KernelBtf {
        KernelBtf::load(Path::new(VMLINUX_BTF)).unwrap()
    }

    #[test]
    fn fentry_hooks_follow_the_running_kernels_btf() {
        let btf = btf();
        let set = hook_set(Attach::Fentry, &btf, None).unwrap();
        let functions: Vec<&str> = set.hooks.iter().map(|h| h.function).collect();
        assert!(functions.contains(&"free_pgtables"), "{functions:?}");
        match set.source {
            free_source::LEVEL_FUNCTIONS => {
                assert!(functions.contains(&"___pte_free_tlb"));
                assert!(!functions.contains(&"tlb_remove_table"), "counted once, at the level functions");
            }
            free_source::TLB_REMOVE_TABLE => {
                assert!(functions.contains(&"tlb_remove_table"));
                assert!(!functions.contains(&"___pte_free_tlb"));
                assert!(functions.contains(&"___pmd_free_tlb"));
            }
            other => assert_eq!(other, free_source::TLB_REMOVE_TABLE_NO_LEVEL),
        }
        // This kernel (6.18) has both functions outside the mmu_gather.
        assert!(functions.contains(&"pte_free_defer") && functions.contains(&"zap_huge_pmd"), "{functions:?}");
        assert_eq!(set.causes(), ptwatch_common::cause::NAMES);
        // Every hook has a program of each flavour in the object's naming.
        for hook in &set.hooks {
            assert!(hook.fentry.ends_with("_fentry") || hook.fentry.ends_with("_fexit"));
            assert!(hook.kprobe.ends_with("_kprobe") || hook.kprobe.ends_with("_kretprobe"));
        }
    }

    #[test]
    fn tracepoints_cannot_see_frees() {
        assert!(hook_set(Attach::Tracepoint, &btf(), None).unwrap_err().contains("no tracepoint"));
    }

    #[test]
    fn auto_tries_the_precise_probes_first() {
        assert_eq!(ProbeMode::Auto.alternatives(), &[Attach::Fentry, Attach::Kprobe, Attach::Tracepoint]);
        assert_eq!(ProbeMode::Kprobe.alternatives(), &[Attach::Kprobe]);
    }

    #[test]
    fn errors_are_described_on_one_line() {
        let err =
            std::io::Error::other("the BPF_PROG_LOAD syscall returned Operation not permitted. Verifier output: \n");
        assert_eq!(describe_error(&err), "the BPF_PROG_LOAD syscall returned Operation not permitted");
    }
}
