//! Probe plans: which kernel functions or tracepoints each plan attaches,
//! checked against the running kernel's BTF, kallsyms and tracefs before
//! anything is loaded.
//!
//! Three plans, tried in this order by `--probe-mode auto`:
//! - fentry: BPF trampolines on kernel functions (cheapest; needs BTF and a
//!   kernel that lets this process load tracing programs);
//! - kprobe: the same functions through kprobes (needs CONFIG_KPROBES);
//! - tracepoint: syscall and io_uring tracepoints, plus a page-table walk
//!   around each DONTNEED request (works almost everywhere, sees no frees,
//!   and makes every syscall on the node take the slow path).
//!
//! A plan whose required attach points are missing is not tried; one that
//! fails to load or attach falls through to the next. Every attach point of
//! every plan, whether it exists and why each plan was or was not used, is
//! kept for `ptwatch check`, the logs and `ptwatch_probe_info`.

use std::path::Path;

use ptwatch_common::{hooks, hooks::Hook, names, Cause, FreeSource};
use serde::Serialize;

use super::limitation::Limitation;
use crate::kernel::{btf::KernelBtf, kallsyms::Kallsyms};

/// A probe plan (what `--probe-mode` forces).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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

    /// What this plan costs processes it does not trace.
    pub fn bystander_cost(self) -> BystanderCost {
        match self {
            Self::Fentry | Self::Kprobe => BystanderCost::HookedFunctionsOnly,
            Self::Tracepoint => BystanderCost::EverySyscall,
        }
    }
}

/// What the user asked for with `--probe-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize)]
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
    /// Plans to try, in order.
    pub fn alternatives(self) -> &'static [Attach] {
        match self {
            Self::Auto => &[Attach::Fentry, Attach::Kprobe, Attach::Tracepoint],
            Self::Fentry => &[Attach::Fentry],
            Self::Kprobe => &[Attach::Kprobe],
            Self::Tracepoint => &[Attach::Tracepoint],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
            Self::Tracepoint => "tracepoint",
        }
    }
}

/// What a plan costs work it does not trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BystanderCost {
    /// Only calls of the hooked kernel functions run a program.
    HookedFunctionsOnly,
    /// A `syscalls:*` tracepoint is attached: every syscall of every process
    /// on the node takes the kernel's slow path (SYSCALL_WORK) while it is.
    EverySyscall,
}

impl BystanderCost {
    /// One line for `ptwatch check`, with what the benchmark measured.
    pub fn describe(self) -> &'static str {
        match self {
            Self::HookedFunctionsOnly => "none outside the hooked functions: processes that make no DONTNEED request and free no page table run no ptwatch code",
            Self::EverySyscall => "every syscall of every process on the node takes the kernel's slow path while syscall tracepoints are attached (measured on CI hosts: a getppid loop +11–20 % in CPU time on Intel, +28–35 % on AMD EPYC; docs/benchmarks.md)",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::HookedFunctionsOnly => "hooked_functions_only",
            Self::EverySyscall => "every_syscall",
        }
    }
}

/// What the agent observes; each plan provides some of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// DONTNEED requests of madvise(2) and process_madvise(2): calls, bytes.
    Dontneed,
    /// io_uring `IORING_OP_MADVISE` DONTNEED requests.
    IoUringDontneed,
    /// PTE tables freed by PT_RECLAIM, per request.
    PtReclaim,
    /// Every page-table page freed, by cause and level.
    PagetableFree,
}

impl Event {
    pub const ALL: [Self; 4] = [Self::Dontneed, Self::IoUringDontneed, Self::PtReclaim, Self::PagetableFree];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dontneed => "dontneed",
            Self::IoUringDontneed => "io_uring_dontneed",
            Self::PtReclaim => "pt_reclaim",
            Self::PagetableFree => "pagetable_free",
        }
    }
}

/// Where an attach point is looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Registry {
    /// fentry/fexit need the function's BTF.
    Btf,
    /// A kprobe needs the symbol.
    Kallsyms,
    /// A tracepoint needs its tracefs event.
    Tracefs,
}

impl Registry {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Btf => "BTF",
            Self::Kallsyms => "kallsyms",
            Self::Tracefs => "tracefs",
        }
    }
}

/// Why a plan needs an attach point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// DONTNEED requests of madvise(2), io_uring, and process_madvise(2)
    /// before 6.15: calls, bytes, and the context that marks reclaim.
    DontneedRequests,
    /// process_madvise(2) DONTNEED requests since 6.15.
    ProcessMadvise,
    /// io_uring DONTNEED requests (tracepoint plan).
    IoUring,
    /// Tells `unmap` frees from the rest (`free_pgtables`).
    UnmapContext,
    /// Counts page-table frees (and names their level where it can).
    FreeCounting,
    /// Names the level of frees counted at `tlb_remove_table`.
    LevelNaming,
    /// `collapse` frees (`pte_free_defer`, 6.5+).
    Collapse,
    /// `thp` frees (tables deposited with anonymous THPs).
    Thp,
}

/// Whether a plan can do without an attach point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Need {
    Required,
    /// Used when present; what it adds is missing otherwise.
    Optional,
    /// Not used by this plan on this kernel (an alternative is).
    Unused,
}

/// One function or tracepoint a plan attaches to, checked on this kernel.
#[derive(Clone, Debug, Serialize)]
pub struct AttachPoint {
    /// `do_madvise`, `syscalls:sys_enter_madvise`, ...
    pub name: String,
    /// Attached at return (fexit, kretprobe).
    pub at_return: bool,
    pub role: Role,
    pub need: Need,
    pub registry: Registry,
    /// Present in `registry` on this kernel.
    pub found: bool,
    /// The eBPF program attached there (fentry/kprobe plans).
    #[serde(skip)]
    pub program: Option<&'static str>,
}

/// A plan as checked on this kernel, before loading.
#[derive(Clone, Debug, Serialize)]
pub struct PlanCheck {
    pub attach: Attach,
    pub points: Vec<AttachPoint>,
    /// fentry/kprobe plans: where frees are counted.
    #[serde(skip)]
    pub free_source: FreeSource,
    /// `Err`: why the plan cannot work here (a required point is missing).
    #[serde(serialize_with = "serialize_usable")]
    pub usable: Result<(), String>,
    /// What the plan cannot see on this kernel although it works.
    pub limitations: Vec<Limitation>,
}

fn serialize_usable<S: serde::Serializer>(usable: &Result<(), String>, s: S) -> Result<S::Ok, S::Error> {
    match usable {
        Ok(()) => s.serialize_none(),
        Err(reason) => s.serialize_some(reason),
    }
}

impl PlanCheck {
    /// The points to attach: present, and required or optional.
    pub fn to_attach(&self) -> impl Iterator<Item = &AttachPoint> {
        self.points.iter().filter(|p| p.found && p.need != Need::Unused)
    }

    /// Whether an attach point with this role is attached.
    pub fn has(&self, role: Role) -> bool {
        self.to_attach().any(|p| p.role == role)
    }

    /// Whether the unmap, exit and other frees this plan sees carry their
    /// table's level (PTE, PMD, …): not where every level goes through
    /// `tlb_remove_table` with nothing to tell them apart, nor where no
    /// free is seen. (Reclaim, collapse and THP frees are PTE tables by
    /// their path.)
    pub fn names_free_levels(&self) -> bool {
        matches!(self.free_source, FreeSource::LevelFunctions | FreeSource::TlbRemoveTable)
    }

    /// The causes this plan can tell apart, in [`Cause`] order: the
    /// mmu_gather ones always (fentry/kprobe), `collapse` and `thp` with
    /// their hooks; none in the tracepoint plan (it sees no frees).
    pub fn causes(&self) -> Vec<Cause> {
        if self.attach == Attach::Tracepoint {
            return Vec::new();
        }
        Cause::ALL
            .into_iter()
            .filter(|cause| match cause {
                Cause::Collapse => self.has(Role::Collapse),
                Cause::Thp => self.has(Role::Thp),
                _ => true,
            })
            .collect()
    }

    /// The events this plan observes.
    pub fn events(&self) -> Vec<Event> {
        match self.attach {
            Attach::Fentry | Attach::Kprobe => Event::ALL.to_vec(),
            Attach::Tracepoint => {
                let mut events = vec![Event::Dontneed, Event::PtReclaim];
                if self.has(Role::IoUring) {
                    events.insert(1, Event::IoUringDontneed);
                }
                events
            }
        }
    }

    /// One line for logs and `check`: where frees are counted and the
    /// functions hooked.
    pub fn describe(&self) -> String {
        let mut names: Vec<&str> = self.to_attach().map(|p| p.name.as_str()).collect();
        names.dedup();
        let counted_at = match self.free_source {
            FreeSource::None => "no page-table frees observable (no tracepoint reports them)",
            FreeSource::LevelFunctions => "frees counted at ___p?d_free_tlb (level known)",
            FreeSource::TlbRemoveTable => "frees counted at tlb_remove_table, level from ___p?d_free_tlb",
            FreeSource::TlbRemoveTableNoLevel => {
                "frees counted at tlb_remove_table; level known for reclaim, collapse and thp (PTE), else unknown"
            }
        };
        format!("{counted_at}; attaches {}", names.join(", "))
    }
}

/// What the running kernel offers, for checking attach points.
pub struct KernelSymbols<'a> {
    pub btf: &'a KernelBtf,
    pub kallsyms: Option<&'a Kallsyms>,
    /// Root of tracefs (`/sys/kernel/tracing`), if mounted.
    pub tracefs: Option<&'a Path>,
    /// The tracepoint plan can read io_uring madvise requests (`struct
    /// io_madvise` in BTF, the io_uring tracepoints carry the request).
    pub io_uring_readable: bool,
    /// The kernel's version (major, minor), from its release string.
    pub version: (u32, u32),
    /// PT_RECLAIM works on this kernel (the start-up check): without it no
    /// DONTNEED request can reclaim.
    pub pt_reclaim: bool,
    /// `task_struct` has `in_execve` (in BTF): exec's stack move, the one
    /// free of a task's own PTE tables outside teardown, munmap and
    /// PT_RECLAIM, can be told apart.
    pub exec_marked: bool,
    /// The caller wants each DONTNEED request's reclaimed tables in its
    /// event (`ptwatch trace`).
    pub request_events: bool,
}

/// Before 5.11, `madvise(2)` reaches `do_madvise` inlined into the syscall
/// (Debian's 5.10 build): the out-of-line copy the function plans hook sees
/// io_uring and process_madvise only, so DONTNEED requests would go unseen.
const FUNCTION_PLANS_SINCE: (u32, u32) = (5, 11);

/// The perf PMU through which kprobes attach; absent without CONFIG_KPROBES.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

impl KernelSymbols<'_> {
    /// Whether a PTE-table free of the running task's own mm, outside
    /// teardown, munmap and exec, is counted as PT_RECLAIM's without a mark
    /// of the DONTNEED request it happens in: where PT_RECLAIM works and
    /// exec is marked. The programs apply the same rule
    /// (`reclaim_by_elimination` in `ebpf/src/frees.rs`).
    pub fn reclaim_by_elimination(&self) -> bool {
        self.pt_reclaim && self.exec_marked
    }

    /// Whether the fentry plan needs entry programs on the DONTNEED
    /// functions: they mark the thread as inside a request that may
    /// reclaim. Without PT_RECLAIM no request can; with it, its frees are
    /// told by elimination where exec is marked, and only per-request
    /// events need the mark (it sums the request's reclaimed tables).
    fn dontneed_marks_needed(&self) -> bool {
        self.pt_reclaim && (!self.exec_marked || self.request_events)
    }

    /// Whether the kernel runs 32-bit programs beside 64-bit ones (x86_64's
    /// ia32 and x32, arm64's AArch32, riscv64's RV32): a compat syscall is
    /// in BTF.
    pub fn runs_compat_syscalls(&self) -> bool {
        COMPAT_SYSCALLS.iter().any(|name| self.btf.has_function(name))
    }

    fn has(&self, registry: Registry, name: &str) -> bool {
        match registry {
            Registry::Btf => self.btf.has_function(name),
            Registry::Kallsyms => self.kallsyms.is_some_and(|k| k.has_function(name)),
            Registry::Tracefs => self.tracefs.is_some_and(|root| {
                let (category, event) = name.split_once(':').unwrap_or(("", name));
                root.join("events").join(category).join(event).join("id").exists()
            }),
        }
    }
}

/// `ioctl`'s compat entry point under each architecture's name for it (the
/// last: kernels without syscall wrappers). Every kernel built with
/// CONFIG_COMPAT has it.
const COMPAT_SYSCALLS: [&str; 5] = [
    "__ia32_compat_sys_ioctl",
    "__x32_compat_sys_ioctl",
    "__arm64_compat_sys_ioctl",
    "__riscv_compat_sys_ioctl",
    "compat_sys_ioctl",
];

/// Check `attach` on this kernel.
pub fn check(attach: Attach, kernel: &KernelSymbols<'_>) -> PlanCheck {
    match attach {
        Attach::Fentry | Attach::Kprobe => check_functions(attach, kernel),
        Attach::Tracepoint => check_tracepoints(kernel),
    }
}

fn check_functions(attach: Attach, kernel: &KernelSymbols<'_>) -> PlanCheck {
    let fentry = attach == Attach::Fentry;
    let registry = if fentry { Registry::Btf } else { Registry::Kallsyms };
    let point = |hook: &'static Hook, role: Role, need: Need| AttachPoint {
        name: hook.function.to_owned(),
        at_return: hook.at_return,
        role,
        need,
        registry,
        found: kernel.has(registry, hook.function),
        program: hook.program(fentry),
    };
    let mut points = Vec::new();
    for hook in &hooks::DONTNEED {
        points.push(point(hook, Role::DontneedRequests, Need::Required));
    }
    for hook in &hooks::DONTNEED_VECTOR {
        points.push(point(hook, Role::ProcessMadvise, Need::Optional));
    }
    for hook in &hooks::CONTEXT {
        points.push(point(hook, Role::UnmapContext, Need::Required));
    }
    points.push(point(&hooks::PTE_FREE_DEFER, Role::Collapse, Need::Optional));
    for hook in [&hooks::ZAP_HUGE_PMD_ENTRY, &hooks::ZAP_HUGE_PMD_EXIT] {
        points.push(point(hook, Role::Thp, Need::Optional));
    }
    // Count where the level is known when the PTE function can be hooked:
    // on 6.1 x86 native, tables never reach tlb_remove_table at all. Else
    // count at tlb_remove_table; the other level functions name the level.
    let pte_function = kernel.has(registry, hooks::PTE_FREE_TLB.function);
    let upper_levels = hooks::LEVEL_FUNCTIONS[1..].iter().any(|h| kernel.has(registry, h.function));
    let free_source = match (pte_function, upper_levels) {
        (true, _) => FreeSource::LevelFunctions,
        (false, true) => FreeSource::TlbRemoveTable,
        (false, false) => FreeSource::TlbRemoveTableNoLevel,
    };
    let (level_role, level_need) = match free_source {
        FreeSource::LevelFunctions => (Role::FreeCounting, Need::Required),
        _ => (Role::LevelNaming, Need::Optional),
    };
    points.push(point(
        &hooks::PTE_FREE_TLB,
        Role::FreeCounting,
        if pte_function { Need::Required } else { Need::Unused },
    ));
    for hook in &hooks::LEVEL_FUNCTIONS[1..] {
        // P4D tables exist only with 5-level paging, and kernels that cannot
        // have them (Debian's 5.10) define no ___p4d_free_tlb: optional,
        // stated below when absent.
        let need = if hook.function == hooks::P4D_FREE_TLB.function && level_need == Need::Required {
            Need::Optional
        } else {
            level_need
        };
        points.push(point(hook, level_role, need));
    }
    points.push(point(
        &hooks::TLB_REMOVE_TABLE,
        Role::FreeCounting,
        if free_source == FreeSource::LevelFunctions { Need::Unused } else { Need::Required },
    ));
    // Hooks this flavour has no program for (an fexit sees what the kprobe
    // plan needs an entry hook for) are not used.
    for p in &mut points {
        if p.program.is_none() {
            p.need = Need::Unused;
        }
    }
    // Where no mark is needed, the fexit programs see the arguments again
    // and count every request alone: one program per request, not two (a
    // small DONTNEED's trampoline costs 1.8 % of it instead of 2.8 %,
    // docs/benchmarks.md). A kretprobe does not see them, so the kprobe
    // plan keeps its entry hooks.
    if fentry && !kernel.dontneed_marks_needed() {
        for p in &mut points {
            if matches!(p.role, Role::DontneedRequests | Role::ProcessMadvise) && !p.at_return {
                p.need = Need::Unused;
            }
        }
    }
    let mut limitations = Vec::new();
    let vector = kernel.has(registry, hooks::VECTOR_MADVISE_ENTRY.function);
    if !vector && kernel.btf.has_function("madvise_do_behavior") {
        // 6.15+ splits madvise into these helpers; without vector_madvise
        // to hook, process_madvise(2) requests pass no hooked function.
        limitations.push(Limitation::ProcessMadviseUnseen { registry });
    }
    if !kernel.has(registry, hooks::PTE_FREE_DEFER.function) {
        limitations.push(Limitation::CollapseUnseen { registry });
    }
    if free_source == FreeSource::LevelFunctions && !kernel.has(registry, hooks::P4D_FREE_TLB.function) {
        limitations.push(Limitation::P4dFreesUncounted { function: hooks::P4D_FREE_TLB.function, registry });
    }
    if free_source == FreeSource::TlbRemoveTableNoLevel {
        limitations.push(Limitation::FreeLevelUnknown);
    }
    let usable = if attach == Attach::Kprobe && !Path::new(KPROBE_PMU).exists() {
        Err(format!("kprobes are not available on this kernel (no {KPROBE_PMU}: CONFIG_KPROBES is not set)"))
    } else if attach == Attach::Kprobe && kernel.kallsyms.is_none() {
        Err("/proc/kallsyms is not readable".to_owned())
    } else if kernel.version < FUNCTION_PLANS_SINCE {
        Err(format!(
            "on Linux {}.{} madvise(2) does not call the do_madvise these programs hook (it is inlined into the syscall): DONTNEED requests would go unseen; the fentry and kprobe plans need {}.{}+",
            kernel.version.0, kernel.version.1, FUNCTION_PLANS_SINCE.0, FUNCTION_PLANS_SINCE.1
        ))
    } else if let Some(params) = unexpected_do_madvise(kernel) {
        // The programs read the advice from the fourth argument: another
        // signature would make them count nothing, silently.
        Err(format!(
            "do_madvise takes ({}) on this kernel; the programs read (mm, start, len_in, behavior)",
            params.join(", ")
        ))
    } else {
        missing_required(&points)
    };
    PlanCheck { attach, points, free_source, usable, limitations }
}

fn check_tracepoints(kernel: &KernelSymbols<'_>) -> PlanCheck {
    let point = |name: String, role: Role, need: Need| AttachPoint {
        found: kernel.has(Registry::Tracefs, &name),
        name,
        at_return: false,
        role,
        need,
        registry: Registry::Tracefs,
        program: None,
    };
    let mut points: Vec<AttachPoint> = names::MADVISE_PROGRAMS
        .iter()
        .map(|(event, _, _)| point(format!("syscalls:{event}"), Role::DontneedRequests, Need::Required))
        .collect();
    let io_need = if kernel.io_uring_readable { Need::Optional } else { Need::Unused };
    points.extend(
        names::IO_URING_PROGRAMS
            .iter()
            .map(|(category, event, _, _)| point(format!("{category}:{event}"), Role::IoUring, io_need)),
    );
    let mut limitations = vec![Limitation::FreesUnseen];
    if !points.iter().any(|p| p.role == Role::IoUring && p.found && p.need != Need::Unused) {
        limitations.push(Limitation::IoUringUnseen);
    }
    // Only raw_syscalls:* report compat syscalls, and they run a program on
    // every syscall of the node, which this plan will not attach.
    if kernel.runs_compat_syscalls() {
        limitations.push(Limitation::CompatSyscallsUnseen);
    }
    let usable =
        if kernel.tracefs.is_none() { Err("tracefs is not mounted".to_owned()) } else { missing_required(&points) };
    PlanCheck { attach: Attach::Tracepoint, points, free_source: FreeSource::None, usable, limitations }
}

/// `do_madvise`'s parameters when they are not the ones the programs read
/// (None: as expected, or unknown to BTF).
fn unexpected_do_madvise(kernel: &KernelSymbols<'_>) -> Option<Vec<String>> {
    let params = kernel.btf.function_params(hooks::DO_MADVISE_ENTRY.function)?;
    (params.len() != 4 || params.first().map(String::as_str) != Some("mm")).then_some(params)
}

fn missing_required(points: &[AttachPoint]) -> Result<(), String> {
    let missing: Vec<String> = points
        .iter()
        .filter(|p| p.need == Need::Required && !p.found)
        .map(|p| format!("{} is not in {}", p.name, p.registry.as_str()))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        let mut unique = missing;
        unique.dedup();
        Err(unique.join("; "))
    }
}

/// What happened to a plan at start-up.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "reason")]
pub enum Outcome {
    /// Loaded and attached: the agent uses it.
    Chosen,
    /// Its attach points were there but loading or attaching failed.
    Failed(String),
    /// A required attach point is missing.
    Unusable(String),
    /// An earlier plan was chosen.
    NotTried,
    /// `--probe-mode` excludes it.
    Excluded,
}

/// A plan, checked and (maybe) tried.
#[derive(Clone, Debug, Serialize)]
pub struct PlanResult {
    #[serde(flatten)]
    pub check: PlanCheck,
    pub bystander_cost: BystanderCost,
    pub outcome: Outcome,
}

/// Every plan as checked and tried on this kernel, for `check`, the logs
/// and the metrics.
#[derive(Clone, Debug, Serialize)]
pub struct PlanReport {
    pub chosen: Attach,
    pub plans: Vec<PlanResult>,
    /// Why the page-table walk of the tracepoint plan is or is not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub walk: Option<String>,
}

impl PlanReport {
    /// The plan the agent uses.
    pub fn mode(&self) -> Attach {
        self.chosen
    }

    pub fn chosen(&self) -> &PlanResult {
        // `new` guarantees the chosen plan is in the list.
        self.plans.iter().find(|p| p.check.attach == self.chosen).unwrap_or(&self.plans[0])
    }

    /// Each event and how it is observed (`None`: not on this kernel).
    pub fn events(&self) -> Vec<(Event, Option<Attach>)> {
        let observed = self.chosen().check.events();
        Event::ALL.into_iter().map(|e| (e, observed.contains(&e).then_some(self.chosen))).collect()
    }

    /// Page-table frees are observed (fentry and kprobe plans).
    pub fn frees_observed(&self) -> bool {
        self.chosen != Attach::Tracepoint
    }

    /// The causes the chosen plan can tell apart.
    pub fn causes(&self) -> Vec<Cause> {
        self.chosen().check.causes()
    }

    /// [`Self::causes`] as their label values, as `check` and `trace` print them.
    pub fn cause_names(&self) -> Vec<&'static str> {
        self.causes().into_iter().map(Cause::name).collect()
    }
}

/// An error and all its causes on one line, each cause once, without the
/// empty verifier log aya appends when the kernel refused a program before
/// verifying it.
pub fn describe_error(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    let text = text.replace(". Verifier output: \n", "").replace(". Verifier output: ", ": ");
    text.trim_end_matches([':', ' ', '\n']).to_owned()
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;
    use crate::kernel::btf::VMLINUX_BTF;

    fn btf() -> KernelBtf {
        KernelBtf::load(Path::new(VMLINUX_BTF)).unwrap()
    }

    /// This machine's BTF (a 6.18 kernel), without kallsyms and tracefs.
    fn without_kallsyms(btf: &KernelBtf, pt_reclaim: bool) -> KernelSymbols<'_> {
        KernelSymbols {
            btf,
            kallsyms: None,
            tracefs: None,
            io_uring_readable: false,
            version: (6, 18),
            pt_reclaim,
            exec_marked: true,
            request_events: false,
        }
    }

    /// The DONTNEED hooks the fentry plan attaches: (function, at return).
    fn request_hooks(check: &PlanCheck) -> Vec<(&str, bool)> {
        check
            .to_attach()
            .filter(|p| matches!(p.role, Role::DontneedRequests | Role::ProcessMadvise))
            .map(|p| (p.name.as_str(), p.at_return))
            .collect()
    }

    fn names(check: &PlanCheck) -> Vec<&str> {
        check.to_attach().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn fentry_plan_follows_the_running_kernels_btf() {
        let btf = btf();
        let kernel = without_kallsyms(&btf, true);
        let check = check(Attach::Fentry, &kernel);
        assert!(check.usable.is_ok(), "{:?}", check.usable);
        let names = names(&check);
        // No syscall tracepoint: DONTNEED requests come from kernel functions.
        assert!(names.iter().all(|n| !n.contains(':')), "{names:?}");
        assert!(names.contains(&"do_madvise") && names.contains(&"free_pgtables"), "{names:?}");
        // This kernel (6.18) has vector_madvise: process_madvise bypasses do_madvise.
        assert!(names.contains(&"vector_madvise"), "{names:?}");
        match check.free_source {
            FreeSource::LevelFunctions => {
                assert!(names.contains(&"___pte_free_tlb"));
                assert!(!names.contains(&"tlb_remove_table"), "counted once, at the level functions");
            }
            FreeSource::TlbRemoveTable => assert!(names.contains(&"tlb_remove_table")),
            other => panic!("unexpected {other:?}"),
        }
        // fexit sees zap_huge_pmd's arguments and result: no entry hook.
        let thp: Vec<_> = check.to_attach().filter(|p| p.role == Role::Thp).collect();
        assert_eq!(thp.len(), 1, "{thp:?}");
        assert!(thp[0].at_return);
        assert_eq!(check.causes(), Cause::ALL.to_vec());
        assert!(check.to_attach().all(|p| p.program.is_some()));
    }

    #[test]
    fn a_missing_required_function_makes_the_plan_unusable_and_says_which() {
        let btf = btf();
        let kernel = without_kallsyms(&btf, true);
        let mut plan = check(Attach::Fentry, &kernel);
        for p in &mut plan.points {
            if p.name == "do_madvise" {
                p.found = false;
            }
        }
        assert_eq!(missing_required(&plan.points).unwrap_err(), "do_madvise is not in BTF");
    }

    #[test]
    fn without_pt_reclaim_the_fentry_plan_counts_requests_at_exit_alone() {
        let btf = btf();
        let kernel = without_kallsyms(&btf, false);
        let check = check(Attach::Fentry, &kernel);
        assert!(check.usable.is_ok(), "{:?}", check.usable);
        assert_eq!(request_hooks(&check), [("do_madvise", true), ("vector_madvise", true)]);
        // The frees are hooked as with PT_RECLAIM.
        assert!(names(&check).contains(&"free_pgtables"));
        assert!(check.events().contains(&Event::Dontneed));
    }

    #[test]
    fn with_pt_reclaim_the_entry_marks_are_needed_only_where_elimination_cannot_tell_or_for_events() {
        let btf = btf();
        let both = [("do_madvise", false), ("do_madvise", true), ("vector_madvise", false), ("vector_madvise", true)];
        let exit_only = [("do_madvise", true), ("vector_madvise", true)];
        for (exec_marked, request_events, expected) in
            [(true, false, &exit_only[..]), (false, false, &both[..]), (true, true, &both[..])]
        {
            let kernel = KernelSymbols { exec_marked, request_events, ..without_kallsyms(&btf, true) };
            assert_eq!(kernel.reclaim_by_elimination(), exec_marked);
            let fentry = check(Attach::Fentry, &kernel);
            let mut hooks = request_hooks(&fentry);
            hooks.sort_unstable();
            assert_eq!(hooks, expected, "exec marked: {exec_marked}, events: {request_events}");
            assert!(fentry.events().contains(&Event::PtReclaim));
        }
    }

    #[test]
    fn kprobe_plan_needs_kallsyms() {
        let btf = btf();
        let kernel = without_kallsyms(&btf, true);
        assert!(check(Attach::Kprobe, &kernel).usable.is_err());
    }

    #[test]
    fn tracepoint_plan_lists_syscall_and_io_uring_tracepoints() {
        crate::kernel::support::ensure_tracefs().unwrap();
        let btf = btf();
        let tracefs = Path::new("/sys/kernel/tracing");
        let kernel = KernelSymbols {
            btf: &btf,
            kallsyms: None,
            tracefs: Some(tracefs),
            io_uring_readable: true,
            version: (6, 18),
            pt_reclaim: true,
            exec_marked: true,
            request_events: false,
        };
        let check = check(Attach::Tracepoint, &kernel);
        assert!(check.usable.is_ok(), "{:?}", check.usable);
        let names = names(&check);
        assert!(names.contains(&"syscalls:sys_enter_madvise"), "{names:?}");
        assert!(names.contains(&"io_uring:io_uring_submit_req"), "{names:?}");
        assert_eq!(check.events(), vec![Event::Dontneed, Event::IoUringDontneed, Event::PtReclaim]);
        assert!(check.causes().is_empty());
        // 32-bit programs' madvise calls (where the kernel runs them: ia32
        // emulation here) no syscall tracepoint reports; the function plans
        // see them.
        let stated = check.limitations.contains(&Limitation::CompatSyscallsUnseen);
        assert_eq!(stated, kernel.runs_compat_syscalls(), "{:?}", check.limitations);
        let fentry = super::check(Attach::Fentry, &kernel);
        assert!(!fentry.limitations.contains(&Limitation::CompatSyscallsUnseen), "{:?}", fentry.limitations);
        assert_eq!(Attach::Tracepoint.bystander_cost(), BystanderCost::EverySyscall);
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
