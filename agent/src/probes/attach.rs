//! Loading the object and attaching one plan's programs.

use aya::{
    maps::{HashMap, MapData},
    programs::{FEntry, FExit, KProbe, TracePoint},
    Ebpf, EbpfLoader,
};
use ptwatch_common::{names, overflow_capacity, KernelConfig, ProcessCounters, UNATTRIBUTED_CGROUP};

use crate::kernel::btf::Skeleton;

use super::{
    calibrate,
    limitation::Limitation,
    object,
    plan::{describe_error, Attach, Need, PlanCheck, Role},
    AttachedPrograms, Attempt, LoadOptions, ProbeError, ReclaimAccounting,
};

/// Load and attach the plan `check` describes; `Err` says why it failed.
/// An optional part of a fentry/kprobe plan that the kernel refuses is
/// dropped with its reason (added to the plan's limitations) instead of
/// failing the plan.
pub(super) fn attempt(
    base: KernelConfig,
    check: &mut PlanCheck,
    btf: Option<&Skeleton>,
    options: &LoadOptions,
) -> Result<Attempt, String> {
    match check.attach {
        Attach::Fentry | Attach::Kprobe => functions(base, check, btf, options).map_err(|e| describe_error(&e)),
        Attach::Tracepoint => Ok(tracepoints(base, check, options)?),
    }
}

/// fentry/kprobe plans: every present hook of the plan, role by role.
fn functions(
    base: KernelConfig,
    check: &mut PlanCheck,
    skeleton: Option<&Skeleton>,
    options: &LoadOptions,
) -> Result<Attempt, ProbeError> {
    let config = KernelConfig { free_source: check.free_source as u64, ..base };
    let mut ebpf = load_object(&config, options)?;
    // Parsed after the object is loaded: the loader's own transient
    // allocations are gone by then (start-up peak).
    let btf = skeleton.map(Skeleton::to_aya).transpose()?;
    let btf = btf.as_ref();
    let mut attached: AttachedPrograms = Vec::new();
    let mut roles: Vec<Role> = Vec::new();
    for point in check.to_attach() {
        if !roles.contains(&point.role) {
            roles.push(point.role);
        }
    }
    for role in roles {
        let points: Vec<(Option<&'static str>, String, bool, Need)> = check
            .to_attach()
            .filter(|p| p.role == role)
            .map(|p| (p.program, p.name.clone(), p.at_return, p.need))
            .collect();
        let optional = points.iter().all(|(_, _, _, need)| *need == Need::Optional);
        let mut done = Vec::new();
        for (program, function, at_return, _) in &points {
            let name = program.ok_or(ProbeError::MissingProgram("(no program for this flavour)"))?;
            match attach_function(&mut ebpf, check.attach, btf, name, function, *at_return) {
                Ok(point) => done.push((name, point)),
                Err(err) if optional => {
                    // Both halves of an entry/return pair, or none.
                    for (program, _) in &done {
                        unload(&mut ebpf, program);
                    }
                    let reason = describe_error(&err);
                    tracing::info!(?role, %reason, "optional hook refused by the kernel; the plan goes on without it");
                    check.limitations.push(Limitation::ProgramRefused { function: function.clone(), reason });
                    for point in check.points.iter_mut().filter(|p| p.role == role) {
                        point.need = Need::Unused;
                    }
                    done.clear();
                    break;
                }
                Err(err) => return Err(err),
            }
        }
        attached.extend(done);
    }
    Ok(Attempt { ebpf, accounting: ReclaimAccounting::FreeClassification, attached, walk: None })
}

/// Load and attach one program of a fentry/kprobe plan; returns its attach
/// point for the records.
fn attach_function(
    ebpf: &mut Ebpf,
    attach: Attach,
    btf: Option<&aya::Btf>,
    name: &'static str,
    function: &str,
    at_return: bool,
) -> Result<String, ProbeError> {
    let program = ebpf.program_mut(name).ok_or(ProbeError::MissingProgram(name))?;
    let err = |source| ProbeError::Program { name, source };
    match (attach, btf, at_return) {
        (Attach::Fentry, Some(btf), false) => {
            let program: &mut FEntry = program.try_into().map_err(err)?;
            program.load(function, btf).map_err(err)?;
            program.attach().map_err(err)?;
        }
        (Attach::Fentry, Some(btf), true) => {
            let program: &mut FExit = program.try_into().map_err(err)?;
            program.load(function, btf).map_err(err)?;
            program.attach().map_err(err)?;
        }
        _ => {
            let program: &mut KProbe = program.try_into().map_err(err)?;
            program.load().map_err(err)?;
            program.attach(function, 0).map_err(err)?;
        }
    }
    let kind = match (attach, at_return) {
        (Attach::Fentry, false) => "fentry",
        (Attach::Fentry, true) => "fexit",
        (_, false) => "kprobe",
        (_, true) => "kretprobe",
    };
    Ok(format!("{kind}:{function}"))
}

/// Detach and unload program `name` (an optional hook being dropped).
fn unload(ebpf: &mut Ebpf, name: &str) {
    let Some(program) = ebpf.program_mut(name) else {
        return;
    };
    let unloaded = match program {
        aya::programs::Program::FEntry(p) => p.unload(),
        aya::programs::Program::FExit(p) => p.unload(),
        aya::programs::Program::KProbe(p) => p.unload(),
        _ => Ok(()),
    };
    if let Err(err) = unloaded {
        tracing::warn!(program = name, error = %describe_error(&err), "unloading a dropped hook failed");
    }
}

/// The tracepoint plan: reclaim by page-table walk if calibration, the
/// self-test and the kernel's verifier all accept it, else through
/// `pgtables_bytes`. The configuration is a frozen global, so each attempt
/// is a fresh load of the object.
fn tracepoints(mut config: KernelConfig, check: &PlanCheck, options: &LoadOptions) -> Result<Attempt, String> {
    let io_uring = check.has(Role::IoUring);
    let why = match try_walk(&mut config, options, io_uring) {
        Ok((ebpf, attached)) => {
            tracing::info!("reclaim measured exactly by page-table walks");
            let walk = Some("used: calibrated and self-tested at start-up".to_owned());
            return Ok(Attempt { ebpf, accounting: ReclaimAccounting::PageTableWalk, attached, walk });
        }
        Err(why) => why,
    };
    tracing::warn!(reason = %why, "page-table walk unavailable: reclaim measured through pgtables_bytes, approximate for multi-threaded processes");
    config.direct_map_base = 0;
    let attach = || -> Result<(Ebpf, AttachedPrograms), ProbeError> {
        let mut ebpf = load_object(&config, options)?;
        let attached = attach_tracepoints(&mut ebpf, false, io_uring)?;
        Ok((ebpf, attached))
    };
    let (ebpf, attached) = attach().map_err(|e| describe_error(&e))?;
    Ok(Attempt {
        ebpf,
        accounting: ReclaimAccounting::PgtablesBytes { why: why.clone() },
        attached,
        walk: Some(format!("not used: {why}")),
    })
}

fn try_walk(
    config: &mut KernelConfig,
    options: &LoadOptions,
    io_uring: bool,
) -> Result<(Ebpf, AttachedPrograms), String> {
    if !cfg!(target_arch = "x86_64") {
        return Err(format!("the page-table walk reads x86_64 page tables; this is {}", std::env::consts::ARCH));
    }
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
    let attached = attach_tracepoints(&mut ebpf, true, io_uring)
        .map_err(|e| format!("the walk does not load on this kernel: {}", describe_error(&e)))?;
    Ok((ebpf, attached))
}

/// Attach the DONTNEED tracepoint programs (syscalls, and io_uring when
/// `io_uring`), with or without the page-table walk.
fn attach_tracepoints(ebpf: &mut Ebpf, walk: bool, io_uring: bool) -> Result<AttachedPrograms, ProbeError> {
    let syscalls =
        names::MADVISE_PROGRAMS.iter().map(|(event, with_walk, plain)| ("syscalls", *event, *with_walk, *plain));
    let io = names::IO_URING_PROGRAMS.iter().filter(|_| io_uring).map(|(c, e, w, p)| (*c, *e, *w, *p));
    let mut attached = Vec::new();
    for (category, event, with_walk, plain) in syscalls.chain(io) {
        let name = if walk { with_walk } else { plain };
        let err = |source| ProbeError::Program { name, source };
        let program: &mut TracePoint =
            ebpf.program_mut(name).ok_or(ProbeError::MissingProgram(name))?.try_into().map_err(err)?;
        program.load().map_err(err)?;
        program.attach(category, event).map_err(err)?;
        attached.push((name, format!("tracepoint:{category}:{event}")));
    }
    Ok(attached)
}

/// Load the object with `config` frozen into it, the maps sized, and the
/// always-present overflow slot created.
pub(super) fn load_object(config: &KernelConfig, options: &LoadOptions) -> Result<Ebpf, ProbeError> {
    let object = object::bytes();
    if object.is_empty() {
        return Err(ProbeError::NoObject);
    }
    tracing::debug!(?config, "kernel configuration for the programs");
    // `new` parses the kernel's whole BTF for CO-RE relocations (~19 MiB
    // while it runs, at every load): the object has none (offsets come from
    // the kernel's BTF at start-up, `kernel::btf`; a test below checks), so
    // it is dropped at once, before the object is parsed. aya 0.14 offers
    // no loader without it. fentry programs get their BTF at their own load.
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    loader.override_global(names::KERNEL_CONFIG, config, true);
    // The object's ring buffer is one page (what the agent, which sends no
    // events, keeps); `trace` asks for its own size.
    if let Some(events) = options.events {
        loader.map_max_entries(names::TRACE_EVENTS, events.ring_bytes);
    }
    loader.map_max_entries(names::PROCESS_COUNTERS, options.max_tracked_processes);
    loader.map_max_entries(names::OVERFLOW_COUNTERS, overflow_capacity(options.max_tracked_processes));
    let mut ebpf = loader.load(object).map_err(ProbeError::Load)?;
    create_unattributed_slot(&mut ebpf)?;
    Ok(ebpf)
}

/// Create the overflow slot that must always exist (see
/// `ptwatch_common::UNATTRIBUTED_CGROUP`) before any program can run.
fn create_unattributed_slot(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    let name = names::OVERFLOW_COUNTERS;
    let map = ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
    let mut overflow: HashMap<&mut MapData, u64, ProcessCounters> =
        HashMap::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
    overflow
        .insert(UNATTRIBUTED_CGROUP, ProcessCounters::default(), 0)
        .map_err(|source| ProbeError::Map { name, source })
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly")]

    /// `load_object` gives the loader no kernel BTF: that is only right
    /// while the object carries no CO-RE relocations.
    #[test]
    fn the_object_has_no_core_relocations() {
        let bytes = super::object::bytes();
        if bytes.is_empty() {
            return; // stub build
        }
        let object = aya_obj::Object::parse(bytes).unwrap();
        assert!(!object.has_btf_relocations(), "CO-RE relocations need the kernel BTF in load_object");
    }
}
