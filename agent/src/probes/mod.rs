//! Loading and attaching the kernel programs.
//!
//! `object` embeds the eBPF object, `config` turns kernel facts into the
//! programs' [`KernelConfig`], `plan` chooses the probes per event,
//! `calibrate` enables the exact page-table walk of the tracepoint method,
//! and [`Probes`] owns the loaded object: while it lives the programs stay
//! attached, dropping it detaches everything.

mod calibrate;
mod config;
mod object;
pub mod plan;

use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{FEntry, FExit, KProbe, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use ptwatch_common::{names, FreeCounters, FreeKey, KernelConfig, NodeCounters, NodeFrees, ProcessCounters};

pub use config::kernel_config;
use plan::{describe_error, hook_set, Attach, EventChoice, HookSet, PlanReport, ProbeMode, Rejected};

use crate::kernel::{btf::KernelBtf, kallsyms::Kallsyms};

/// How PTE pages reclaimed by a DONTNEED call are counted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum ReclaimAccounting {
    /// Each PTE table freed inside a DONTNEED call and outside
    /// `free_pgtables` (fentry and kprobe plans): exact.
    FreeClassification,
    /// Tables under the call's range at entry minus at exit (tracepoint
    /// plan): exact, also for multi-threaded processes.
    PageTableWalk,
    /// Drop of `mm->pgtables_bytes` across the call (tracepoint plan without
    /// the walk): exact only when no other thread changes the process' page
    /// tables meanwhile.
    PgtablesBytes { why: String },
}

impl ReclaimAccounting {
    pub fn method(&self) -> &'static str {
        match self {
            Self::FreeClassification => "free_classification",
            Self::PageTableWalk => "page_table_walk",
            Self::PgtablesBytes { .. } => "pgtables_bytes",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("this ptwatch binary was built without its eBPF object (bpf-linker was missing at build time); rebuild with `cargo xtask run`")]
    NoObject,
    #[error(transparent)]
    Btf(#[from] crate::kernel::btf::BtfError),
    #[error("loading the eBPF object failed")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program {0} is missing from the object")]
    MissingProgram(&'static str),
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("probe mode {mode} is not possible on this kernel: {reasons}")]
    NoPlan { mode: &'static str, reasons: String },
}

/// `(program, attach point)` of each attached program.
pub type AttachedPrograms = Vec<(&'static str, String)>;

/// The maps the aggregation layer reads.
pub struct ProbeMaps {
    pub processes: HashMap<MapData, u32, ProcessCounters>,
    pub node: PerCpuArray<MapData, NodeCounters>,
    pub frees: HashMap<MapData, FreeKey, FreeCounters>,
    pub node_frees: PerCpuArray<MapData, NodeFrees>,
}

/// What a caller needs from the object besides the aggregation every plan
/// does. The default is the agent's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Send a [`ptwatch_common::TraceEvent`] per DONTNEED call and per
    /// page-table free (`ptwatch trace`).
    pub events: Option<EventOptions>,
}

/// Kernel-side event filters and the ring buffer size of `ptwatch trace`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventOptions {
    /// Only this process (0: every process).
    pub tgid: u32,
    /// Only tasks in this cgroup v2 id (0: every cgroup).
    pub cgroup_id: u64,
    /// Ring buffer size: a power of two, at least one page.
    pub ring_bytes: u32,
}

impl LoadOptions {
    fn apply(&self, base: KernelConfig) -> KernelConfig {
        match self.events {
            Some(events) => KernelConfig {
                emit_events: 1,
                trace_tgid: u64::from(events.tgid),
                trace_cgroup_id: events.cgroup_id,
                ..base
            },
            None => base,
        }
    }
}

/// The event stream of an object loaded with [`LoadOptions::events`].
pub struct EventMaps {
    pub events: RingBuf<MapData>,
    /// Events that did not fit in the ring buffer, per CPU.
    pub lost: PerCpuArray<MapData, u64>,
}

/// The loaded, attached programs. Dropping this detaches them.
pub struct Probes {
    ebpf: Ebpf,
    plan: PlanReport,
    accounting: ReclaimAccounting,
    /// `(program, attach point)` for each attached program.
    attached: AttachedPrograms,
}

impl Probes {
    /// Choose and attach a plan for `mode` on this kernel.
    pub fn load(btf: &KernelBtf, mode: ProbeMode) -> Result<Self, ProbeError> {
        Self::load_with(btf, mode, LoadOptions::default())
    }

    /// [`Probes::load`] with options: the same plans, in the same order.
    pub fn load_with(btf: &KernelBtf, mode: ProbeMode, options: LoadOptions) -> Result<Self, ProbeError> {
        let base = options.apply(kernel_config(btf)?);
        let kallsyms = Kallsyms::load()
            .map_err(|err| tracing::warn!(error = %err, "cannot read /proc/kallsyms: kprobe plans unavailable"))
            .ok();
        let mut rejected = Vec::new();
        for &attach in mode.alternatives() {
            let attempt = match attach {
                Attach::Fentry | Attach::Kprobe => hook_set(attach, btf, kallsyms.as_ref())
                    .and_then(|set| Self::try_hooks(base, attach, &set, &options).map_err(|e| describe_error(&e))),
                Attach::Tracepoint => return Self::tracepoint_plan(base, rejected, &options),
            };
            match attempt {
                Ok(mut probes) => {
                    probes.plan.pagetable_free.rejected = rejected.clone();
                    probes.plan.pt_reclaim.rejected = rejected;
                    return Ok(probes);
                }
                Err(reason) => {
                    tracing::info!(attach = attach.as_str(), %reason, "probe plan not usable, trying the next");
                    rejected.push(Rejected { attach, reason });
                }
            }
        }
        Err(ProbeError::NoPlan {
            mode: attach_list(mode),
            reasons: rejected
                .iter()
                .map(|r| format!("{}: {}", r.attach.as_str(), r.reason))
                .collect::<Vec<_>>()
                .join("; "),
        })
    }

    /// Load the object for a fentry or kprobe plan and attach every hook.
    fn try_hooks(base: KernelConfig, attach: Attach, set: &HookSet, options: &LoadOptions) -> Result<Self, ProbeError> {
        let config = KernelConfig { reclaim_from_frees: 1, free_source: set.source, ..base };
        let mut ebpf = load_object(&config, options)?;
        let mut attached = attach_madvise(&mut ebpf, false)?;
        let kernel_btf = match attach {
            Attach::Fentry => Some(Btf::from_sys_fs().map_err(|e| ProbeError::Load(aya::EbpfError::BtfError(e)))?),
            _ => None,
        };
        for hook in &set.hooks {
            let name = match attach {
                Attach::Fentry => hook.fentry,
                _ => hook.kprobe,
            };
            let program = ebpf.program_mut(name).ok_or(ProbeError::MissingProgram(name))?;
            let err = |source| ProbeError::Program { name, source };
            match (&kernel_btf, hook.at_return) {
                (Some(btf), false) => {
                    let program: &mut FEntry = program.try_into().map_err(err)?;
                    program.load(hook.function, btf).map_err(err)?;
                    program.attach().map_err(err)?;
                }
                (Some(btf), true) => {
                    let program: &mut FExit = program.try_into().map_err(err)?;
                    program.load(hook.function, btf).map_err(err)?;
                    program.attach().map_err(err)?;
                }
                (None, _) => {
                    let program: &mut KProbe = program.try_into().map_err(err)?;
                    program.load().map_err(err)?;
                    program.attach(hook.function, 0).map_err(err)?;
                }
            }
            attached.push((
                name,
                format!("{}:{}{}", attach.as_str(), hook.function, if hook.at_return { " (return)" } else { "" }),
            ));
        }
        let detail = set.describe();
        tracing::info!(attach = attach.as_str(), %detail, "page-table free probes attached");
        Ok(Self {
            ebpf,
            plan: PlanReport {
                pagetable_free: EventChoice {
                    event: "pagetable_free",
                    attach: Some(attach),
                    detail: detail.clone(),
                    rejected: Vec::new(),
                },
                pt_reclaim: EventChoice {
                    event: "pt_reclaim",
                    attach: Some(attach),
                    detail: "PTE tables freed inside MADV_DONTNEED and outside free_pgtables".into(),
                    rejected: Vec::new(),
                },
            },
            accounting: ReclaimAccounting::FreeClassification,
            attached,
        })
    }

    /// The tracepoint method: reclaim by page-table walk (or the
    /// `pgtables_bytes` fallback); page-table frees are not observable.
    fn tracepoint_plan(base: KernelConfig, rejected: Vec<Rejected>, options: &LoadOptions) -> Result<Self, ProbeError> {
        let (ebpf, accounting, attached) = load_calibrated(base, options)?;
        match &accounting {
            ReclaimAccounting::PgtablesBytes { why } => tracing::warn!(
                reason = %why,
                "page-table walk unavailable: reclaim measured through pgtables_bytes, approximate for multi-threaded processes"
            ),
            _ => tracing::info!("reclaim measured exactly by page-table walks"),
        }
        let mut free_rejected = rejected.clone();
        free_rejected
            .push(Rejected { attach: Attach::Tracepoint, reason: "no tracepoint reports page-table frees".into() });
        Ok(Self {
            ebpf,
            plan: PlanReport {
                pagetable_free: EventChoice {
                    event: "pagetable_free",
                    attach: None,
                    detail: "not observable with this plan: ptwatch_pagetable_pages_freed_total is not exported".into(),
                    rejected: free_rejected,
                },
                pt_reclaim: EventChoice {
                    event: "pt_reclaim",
                    attach: Some(Attach::Tracepoint),
                    detail: format!(
                        "syscalls:sys_{{enter,exit}}_{{madvise,process_madvise}}, counted by {}",
                        accounting.method()
                    ),
                    rejected,
                },
            },
            accounting,
            attached,
        })
    }

    pub fn plan(&self) -> &PlanReport {
        &self.plan
    }

    pub fn mode(&self) -> Attach {
        self.plan.mode()
    }

    pub fn accounting(&self) -> &ReclaimAccounting {
        &self.accounting
    }

    pub fn attached(&self) -> &[(&'static str, String)] {
        &self.attached
    }

    /// The loaded object, for the kernel's statistics of its programs and
    /// maps (self-metrics, `export::self_metrics`).
    pub fn object(&self) -> &Ebpf {
        &self.ebpf
    }

    /// Hand the aggregation maps over to their reader. Call once.
    pub fn take_maps(&mut self) -> Result<ProbeMaps, ProbeError> {
        Ok(ProbeMaps {
            processes: self.take(names::PROCESS_COUNTERS)?,
            node: self.take(names::NODE_COUNTERS)?,
            frees: self.take(names::PAGETABLE_FREES)?,
            node_frees: self.take(names::NODE_FREES)?,
        })
    }

    /// Hand the event stream over to its reader (objects loaded with
    /// [`LoadOptions::events`]). Call once.
    pub fn take_events(&mut self) -> Result<EventMaps, ProbeError> {
        Ok(EventMaps { events: self.take(names::TRACE_EVENTS)?, lost: self.take(names::TRACE_LOST)? })
    }

    fn take<T>(&mut self, name: &'static str) -> Result<T, ProbeError>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
        T::try_from(map).map_err(|source| ProbeError::Map { name, source })
    }
}

fn attach_list(mode: ProbeMode) -> &'static str {
    match mode {
        ProbeMode::Auto => "auto",
        ProbeMode::Fentry => "fentry",
        ProbeMode::Kprobe => "kprobe",
        ProbeMode::Tracepoint => "tracepoint",
    }
}

/// Attach the DONTNEED programs (every plan needs them: call counts, and the
/// DONTNEED context of the free classification), with or without the
/// page-table walk.
fn attach_madvise(ebpf: &mut Ebpf, walk: bool) -> Result<AttachedPrograms, ProbeError> {
    let mut attached = Vec::new();
    for (event, with_walk, plain) in names::MADVISE_PROGRAMS {
        let name = if walk { with_walk } else { plain };
        let err = |source| ProbeError::Program { name, source };
        let program: &mut TracePoint =
            ebpf.program_mut(name).ok_or(ProbeError::MissingProgram(name))?.try_into().map_err(err)?;
        program.load().map_err(err)?;
        program.attach("syscalls", event).map_err(err)?;
        attached.push((name, format!("tracepoint:syscalls:{event}")));
    }
    Ok(attached)
}

fn load_object(config: &KernelConfig, options: &LoadOptions) -> Result<Ebpf, ProbeError> {
    let object = object::bytes();
    if object.is_empty() {
        return Err(ProbeError::NoObject);
    }
    tracing::debug!(?config, "kernel configuration for the programs");
    let mut loader = EbpfLoader::new();
    loader.override_global(names::KERNEL_CONFIG, config, true);
    // The object's ring buffer is one page (what the agent, which sends no
    // events, keeps); `trace` asks for its own size.
    if let Some(events) = options.events {
        loader.map_max_entries(names::TRACE_EVENTS, events.ring_bytes);
    }
    loader.load(object).map_err(ProbeError::Load)
}

/// Load the object and attach the DONTNEED programs with the page-table
/// walk if calibration, the self-test and the kernel's verifier all accept
/// it; else without it. The configuration is a frozen global, so each
/// attempt is a fresh load of the object.
fn load_calibrated(
    mut config: KernelConfig,
    options: &LoadOptions,
) -> Result<(Ebpf, ReclaimAccounting, AttachedPrograms), ProbeError> {
    let why = match try_walk(&mut config, options) {
        Ok((ebpf, attached)) => return Ok((ebpf, ReclaimAccounting::PageTableWalk, attached)),
        Err(why) => why,
    };
    config.direct_map_base = 0;
    let mut ebpf = load_object(&config, options)?;
    let attached = attach_madvise(&mut ebpf, false)?;
    Ok((ebpf, ReclaimAccounting::PgtablesBytes { why }, attached))
}

fn try_walk(config: &mut KernelConfig, options: &LoadOptions) -> Result<(Ebpf, AttachedPrograms), String> {
    let mut probe = load_object(config, options).map_err(|e| describe_error(&e))?;
    let (base, levels) = calibrate::RequestChannel::open(&mut probe, names::PROG_AGENT_REQUEST)
        .and_then(|mut channel| calibrate::find_direct_map(&mut channel))
        .map_err(|e| e.to_string())?;
    drop(probe);
    config.direct_map_base = base;
    config.pgtable_levels = levels;
    let mut ebpf = load_object(config, options).map_err(|e| describe_error(&e))?;
    calibrate::RequestChannel::open(&mut ebpf, names::PROG_WALK_SELF_TEST)
        .and_then(|mut channel| calibrate::self_test(&mut channel))
        .map_err(|e| e.to_string())?;
    let attached = attach_madvise(&mut ebpf, true)
        .map_err(|e| format!("the walk does not load on this kernel: {}", describe_error(&e)))?;
    Ok((ebpf, attached))
}
