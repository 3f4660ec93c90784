//! Loading and attaching the kernel programs.
//!
//! `object` embeds the eBPF object, `config` turns kernel facts into the
//! programs' [`KernelConfig`], `calibrate` enables the exact page-table walk,
//! and [`Probes`] owns the loaded object: while it lives the programs stay
//! attached, dropping it detaches everything.

mod calibrate;
mod config;
mod object;

use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::TracePoint,
    Ebpf, EbpfLoader,
};
use ptwatch_common::{names, KernelConfig, NodeCounters, ProcessCounters};

pub use config::kernel_config;

/// How an event is observed. Only the tracepoint method exists on hosts that
/// refuse fentry and kprobes; the mode is reported in `ptwatch_build_info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeMode {
    Tracepoint,
}

impl ProbeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tracepoint => "tracepoint",
        }
    }
}

/// How PTE pages reclaimed by a DONTNEED call are counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReclaimAccounting {
    /// Tables under the call's range at entry minus at exit: exact, also
    /// for multi-threaded processes.
    PageTableWalk,
    /// Drop of `mm->pgtables_bytes` across the call: exact only when no
    /// other thread changes the process' page tables meanwhile.
    PgtablesBytes { why: String },
}

impl ReclaimAccounting {
    pub fn method(&self) -> &'static str {
        match self {
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
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program {0} is missing from the object")]
    MissingProgram(&'static str),
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// A tracepoint program and where it attaches.
struct TracepointProbe {
    program: &'static str,
    category: &'static str,
    event: &'static str,
}

/// The tracepoint plan: DONTNEED windows through the syscall tracepoints.
const TRACEPOINT_PLAN: &[TracepointProbe] = &[
    TracepointProbe {
        program: names::PROG_MADVISE_ENTER,
        category: "syscalls",
        event: "sys_enter_madvise",
    },
    TracepointProbe {
        program: names::PROG_MADVISE_EXIT,
        category: "syscalls",
        event: "sys_exit_madvise",
    },
    TracepointProbe {
        program: names::PROG_PROCESS_MADVISE_ENTER,
        category: "syscalls",
        event: "sys_enter_process_madvise",
    },
    TracepointProbe {
        program: names::PROG_PROCESS_MADVISE_EXIT,
        category: "syscalls",
        event: "sys_exit_process_madvise",
    },
];

/// The maps the aggregation layer reads.
pub struct ProbeMaps {
    pub processes: HashMap<MapData, u32, ProcessCounters>,
    pub node: PerCpuArray<MapData, NodeCounters>,
}

/// The loaded, attached programs. Dropping this detaches them.
pub struct Probes {
    ebpf: Ebpf,
    mode: ProbeMode,
    accounting: ReclaimAccounting,
    /// `(program, tracepoint)` for each attached program.
    attached: Vec<(&'static str, String)>,
}

impl Probes {
    /// Load the object for `config` (see [`kernel_config`]) and attach the
    /// plan's programs.
    pub fn load(config: KernelConfig) -> Result<Self, ProbeError> {
        let (mut ebpf, accounting) = load_calibrated(config)?;
        match &accounting {
            ReclaimAccounting::PageTableWalk => {
                tracing::info!("reclaim measured exactly by page-table walks")
            }
            ReclaimAccounting::PgtablesBytes { why } => tracing::warn!(
                reason = %why,
                "page-table walk unavailable: reclaim measured through pgtables_bytes, approximate for multi-threaded processes"
            ),
        }
        let mut attached = Vec::new();
        for probe in TRACEPOINT_PLAN {
            let program: &mut TracePoint = ebpf
                .program_mut(probe.program)
                .ok_or(ProbeError::MissingProgram(probe.program))?
                .try_into()
                .map_err(|source| ProbeError::Program {
                    name: probe.program,
                    source,
                })?;
            program.load().map_err(|source| ProbeError::Program {
                name: probe.program,
                source,
            })?;
            program
                .attach(probe.category, probe.event)
                .map_err(|source| ProbeError::Program {
                    name: probe.program,
                    source,
                })?;
            tracing::info!(program = probe.program, tracepoint = %format!("{}:{}", probe.category, probe.event), "attached");
            attached.push((probe.program, format!("{}:{}", probe.category, probe.event)));
        }
        Ok(Self {
            ebpf,
            mode: ProbeMode::Tracepoint,
            accounting,
            attached,
        })
    }

    pub fn mode(&self) -> ProbeMode {
        self.mode
    }

    pub fn accounting(&self) -> &ReclaimAccounting {
        &self.accounting
    }

    pub fn attached(&self) -> &[(&'static str, String)] {
        &self.attached
    }

    /// Hand the aggregation maps over to their reader. Call once.
    pub fn take_maps(&mut self) -> Result<ProbeMaps, ProbeError> {
        Ok(ProbeMaps {
            processes: self.take(names::PROCESS_COUNTERS)?,
            node: self.take(names::NODE_COUNTERS)?,
        })
    }

    fn take<T>(&mut self, name: &'static str) -> Result<T, ProbeError>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(ProbeError::MissingMap(name))?;
        T::try_from(map).map_err(|source| ProbeError::Map { name, source })
    }
}

fn load_object(config: &KernelConfig) -> Result<Ebpf, ProbeError> {
    let object = object::bytes();
    if object.is_empty() {
        return Err(ProbeError::NoObject);
    }
    tracing::debug!(?config, "kernel configuration for the programs");
    EbpfLoader::new()
        .override_global(names::KERNEL_CONFIG, config, true)
        .load(object)
        .map_err(ProbeError::Load)
}

/// Load the object with the page-table walk enabled if calibration and the
/// self-test succeed, else with it disabled. The configuration is a frozen
/// global, so each attempt is a fresh load of the object.
fn load_calibrated(mut config: KernelConfig) -> Result<(Ebpf, ReclaimAccounting), ProbeError> {
    let mut probe = load_object(&config)?;
    let found = calibrate::RequestChannel::open(&mut probe)
        .and_then(|mut channel| calibrate::find_direct_map(&mut channel));
    drop(probe);
    let why = match found {
        Ok((base, levels)) => {
            config.direct_map_base = base;
            config.pgtable_levels = levels;
            let mut ebpf = load_object(&config)?;
            let tested = calibrate::RequestChannel::open(&mut ebpf)
                .and_then(|mut channel| calibrate::self_test(&mut channel));
            match tested {
                Ok(()) => return Ok((ebpf, ReclaimAccounting::PageTableWalk)),
                Err(err) => err.to_string(),
            }
        }
        Err(err) => err.to_string(),
    };
    config.direct_map_base = 0;
    Ok((
        load_object(&config)?,
        ReclaimAccounting::PgtablesBytes { why },
    ))
}
