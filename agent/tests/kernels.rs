//! What every kernel must show, whatever the probe plan, read straight from
//! the kernel maps (no aggregation in between): run on this host
//! (tracepoint plan) by `cargo xtask test`, and inside real Debian kernels by
//! `cargo xtask vm-test`, which forces each plan in turn with
//! `PTWATCH_TEST_PROBE_MODE` and says whether the kernel has PT_RECLAIM with
//! `PTWATCH_EXPECT_PT_RECLAIM`.
//!
//! Every test asserts something in every plan: where a plan cannot see an
//! event, the test checks that ptwatch says so and counts nothing for it.
//! Counts are compared with the kernel's own accounting (`VmPTE`, reported
//! by the workload around each request), exactly.

mod support;

use std::{
    collections::BTreeMap,
    ops::Deref,
    path::PathBuf,
    process::Command,
    sync::{Mutex, MutexGuard, PoisonError},
};

use ptwatch::{
    aggregate::{
        identity::{Liveness as _, ProcLiveness},
        slots::DontneedSlots,
    },
    kernel::btf::{KernelBtf, VMLINUX_BTF},
    probes::{
        limitation::Limitation,
        plan::{Attach, Event, Outcome, ProbeMode},
        LoadOptions, ProbeMaps, Probes, ReclaimAccounting,
    },
};
use ptwatch_common::{
    Cause, DontneedSlot, FreeCounts, Level, NodeCounters, ProcessCounters, ProcessKey, DONTNEED_SLOT_CLAIM_CALLS,
};
use ptwatch_workload::{churn::ChurnReport, fleet::FleetReport, Report};
use support::{expect_pt_reclaim, probe_mode, run_workload, workload_bin, Held};

/// The real probes of the plan under test, and their maps.
struct Kernel {
    probes: Probes,
    maps: ProbeMaps,
}

/// One attachment serves the tests of this binary in turn. Loading the BTF,
/// verifying and attaching every program, then detaching them, takes
/// seconds in a guest under qemu's emulation: once per test, that was a
/// fifth of this suite's time in every plan of every guest (arm64 7.3:
/// 123–144 s per plan before, 104–113 s after). Each test holds the lock
/// for its whole run, so tests never overlap.
static SHARED: Mutex<Option<Kernel>> = Mutex::new(None);

/// The shared attachment, held by one test.
struct Shared(MutexGuard<'static, Option<Kernel>>);

impl Deref for Shared {
    type Target = Kernel;

    fn deref(&self) -> &Kernel {
        self.0.as_ref().expect("attached when taken")
    }
}

/// The lock on the shared attachment; a test that failed holding it leaves
/// the kernel's maps as valid as ever.
fn lock_shared() -> MutexGuard<'static, Option<Kernel>> {
    SHARED.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Kernel {
    /// The shared attachment, as a fresh one would be for what a test reads:
    /// no process entries, no claimed DONTNEED slots, no contexts of threads
    /// that are gone (a test reads its own processes' entries and deltas of
    /// the node and overflow counters, never their absolute values).
    fn attach() -> Shared {
        let mut shared = lock_shared();
        match shared.as_mut() {
            Some(kernel) => kernel.forget_earlier_tests(),
            None => *shared = Some(Self::attach_with(LoadOptions::default())),
        }
        Shared(shared)
    }

    /// Probes of their own, for a test that needs other options: the shared
    /// attachment is detached until the returned guard is dropped, so that
    /// only one set of programs is attached at a time.
    fn attach_alone(options: LoadOptions) -> (MutexGuard<'static, Option<Kernel>>, Self) {
        let mut shared = lock_shared();
        drop(shared.take());
        (shared, Self::attach_with(options))
    }

    /// Remove what earlier tests left in the maps. The processes, slots and
    /// threads of earlier tests are gone; the maps keep them until an agent
    /// harvests (which tests do not run), and a stale slot owner could take
    /// the slot a later process hashes to.
    fn forget_earlier_tests(&mut self) {
        let maps = &mut self.maps;
        let owners: Vec<ProcessKey> =
            maps.dontneed_slot_owners.iter().map(|entry| entry.expect("read DONTNEED_SLOT_OWNERS").1).collect();
        for owner in owners {
            DontneedSlots::release(maps, &owner).expect("release a DONTNEED slot");
        }
        let processes: Vec<ProcessKey> = maps.processes.keys().map(|key| key.expect("read PROCESS_COUNTERS")).collect();
        for key in processes {
            // Absent already if the process' entry was removed meanwhile.
            let _ = maps.processes.remove(&key);
        }
        // A live thread's context may be in use by a hooked call right now:
        // the agent's own rule for which contexts it may remove.
        let liveness = ProcLiveness::default();
        let gone: Vec<u32> = maps
            .threads
            .keys()
            .map(|tid| tid.expect("read THREAD_CONTEXT"))
            .filter(|tid| !liveness.thread_exists(*tid))
            .collect();
        for tid in gone {
            let _ = maps.threads.remove(&tid);
        }
    }

    fn attach_with(options: LoadOptions) -> Self {
        ptwatch::kernel::support::require_privileges().expect("these tests must run as root");
        let btf = KernelBtf::load(std::path::Path::new(VMLINUX_BTF)).expect("kernel BTF");
        let mut probes = Probes::load_with(btf, probe_mode(), options).expect("load and attach the eBPF programs");
        let maps = probes.take_maps().expect("maps");
        Self { probes, maps }
    }

    /// Every process entry, by key, with its DONTNEED slot (as the agent
    /// reads them).
    fn processes(&self) -> BTreeMap<ProcessKey, ProcessCounters> {
        let mut entries: Vec<_> =
            self.maps.processes.iter().map(|entry| entry.expect("read PROCESS_COUNTERS")).collect();
        DontneedSlots::default().fold(&self.maps, &mut entries).expect("read the DONTNEED slots");
        entries.into_iter().collect()
    }

    /// The entries of process `pid` (one per process lifetime), summed;
    /// `None` if it has none.
    fn process_if_counted(&self, pid: u32) -> Option<ProcessCounters> {
        let mut sum: Option<ProcessCounters> = None;
        for (key, counters) in self.processes() {
            if key.tgid == pid {
                let sum = sum.get_or_insert_with(ProcessCounters::default);
                sum.add_counts(&counters);
                sum.comm = counters.comm;
            }
        }
        sum
    }

    /// The entries of process `pid`, summed; it must have one.
    fn process(&self, pid: u32) -> ProcessCounters {
        self.process_if_counted(pid).unwrap_or_else(|| panic!("no PROCESS_COUNTERS entry for pid {pid}"))
    }

    fn overflow(&self) -> BTreeMap<u64, ProcessCounters> {
        self.maps.overflow.iter().map(|entry| entry.expect("read OVERFLOW_COUNTERS")).collect()
    }

    fn node(&self) -> NodeCounters {
        let per_cpu = self.maps.node.get(&0, 0).expect("read NODE_COUNTERS");
        per_cpu.iter().fold(NodeCounters::default(), |mut sum, cpu| {
            sum.add(cpu);
            sum
        })
    }

    /// Runs of the attached programs the kernel skipped (recursion
    /// protection: on a preemptible kernel a preempted fentry program makes
    /// the kernel skip the same program on that CPU until it resumes).
    fn recursion_misses(&self) -> u64 {
        self.probes.program_stats().iter().map(|s| s.recursion_misses).sum()
    }

    fn frees_seen(&self) -> bool {
        self.probes.plan().frees_observed()
    }

    fn sees(&self, event: Event) -> bool {
        self.probes.plan().events().iter().any(|(e, attach)| *e == event && attach.is_some())
    }
}

/// `counted` equals `expected`, or falls short by no more than the runs the
/// kernel skipped meanwhile (`misses`, exported as
/// `ptwatch_bpf_program_misses_total`) can explain: never more than
/// expected, never an unexplained loss. `per_miss` is the most one skipped
/// run can lose: a skipped free hook loses its one table, a skipped entry
/// of a DONTNEED or `free_pgtables` call the classification of every table
/// that call frees (they count as `other`).
fn assert_exact_or_missed(counted: u64, expected: u64, misses: u64, what: &str) {
    assert_exact_or_missed_by(counted, expected, misses, 1, what);
}

fn assert_exact_or_missed_by(counted: u64, expected: u64, misses: u64, per_miss: u64, what: &str) {
    assert!(counted <= expected, "{what}: {counted} counted, more than the {expected} that happened");
    assert!(
        expected - counted <= misses * per_miss,
        "{what}: {counted} counted of {expected}, and the kernel skipped only {misses} program runs (each losing at most {per_miss})"
    );
}

/// The most tables one call of a workload covers: `tables` over `calls`,
/// rounded up.
fn per_call(tables: u64, calls: u64) -> u64 {
    tables.div_ceil(calls.max(1)).max(1)
}

/// Whether the running kernel is at least `major.minor` (from `uname -r`).
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
    let found = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    found >= (major, minor)
}

fn frees_of(counters: &ProcessCounters, cause: Cause) -> u64 {
    counters.frees.pages[cause.index()].iter().sum()
}

fn comm(counters: &ProcessCounters) -> String {
    let end = counters.comm.iter().position(|&b| b == 0).unwrap_or(counters.comm.len());
    String::from_utf8_lossy(&counters.comm[..end]).into_owned()
}

/// The plan under test must be the one in force, and the fentry and kprobe
/// plans must hold no tracepoint at all (no syscall tax on bystanders): the
/// kernel's own program types of everything attached prove it.
#[test]
fn the_requested_plan_is_in_force_and_function_plans_hold_no_tracepoint() {
    let kernel = Kernel::attach();
    let plan = kernel.probes.plan();
    let stats = kernel.probes.program_stats();
    assert_eq!(stats.len(), kernel.probes.attached().len(), "every attached program has kernel statistics");
    // bpf_prog_type: TRACEPOINT 5, RAW_TRACEPOINT 17, RAW_TRACEPOINT_WRITABLE 24.
    let tracepoints: Vec<_> = stats.iter().filter(|s| matches!(s.program_type, 5 | 17 | 24)).collect();
    let syscall_points: Vec<_> = stats.iter().filter(|s| s.attach_point.contains("syscalls:")).collect();
    match probe_mode() {
        ProbeMode::Fentry | ProbeMode::Kprobe => {
            let wanted = if probe_mode() == ProbeMode::Fentry { Attach::Fentry } else { Attach::Kprobe };
            assert_eq!(plan.mode(), wanted);
            assert!(tracepoints.is_empty(), "a {wanted:?} plan holds tracepoint programs: {tracepoints:?}");
            assert!(syscall_points.is_empty(), "{syscall_points:?}");
            // The DONTNEED requests come from kernel functions.
            assert!(stats.iter().any(|s| s.attach_point.ends_with(":do_madvise")), "{stats:?}");
            // The fentry plan marks requests at entry only where one can
            // reclaim and its frees cannot be told by elimination (exec not
            // marked); elsewhere its fexit programs count them alone.
            if wanted == Attach::Fentry {
                let btf = KernelBtf::load(std::path::Path::new(VMLINUX_BTF)).expect("kernel BTF");
                let exec_marked = btf.member_bit_offset("task_struct", "in_execve").is_ok();
                let entry = stats.iter().any(|s| s.attach_point == "fentry:do_madvise");
                assert_eq!(
                    entry,
                    expect_pt_reclaim() && !exec_marked,
                    "an entry program on do_madvise (exec marked: {exec_marked}): {stats:?}"
                );
            }
        }
        ProbeMode::Tracepoint => {
            assert_eq!(plan.mode(), Attach::Tracepoint);
            // Positive control for the check above: these are tracepoints.
            assert!(syscall_points.len() >= 4 && tracepoints.len() >= 4, "{stats:?}");
        }
        ProbeMode::Auto => {
            // Every plan tried before the chosen one says why it was not used.
            for result in &plan.plans {
                if result.check.attach == plan.mode() {
                    assert!(matches!(result.outcome, Outcome::Chosen));
                    break;
                }
                assert!(matches!(result.outcome, Outcome::Failed(_) | Outcome::Unusable(_)), "{result:?}");
            }
        }
    }
}

#[test]
fn pt_reclaim_support_is_detected() {
    assert_eq!(support::pt_reclaim(), expect_pt_reclaim(), "behavioural PT_RECLAIM detection");
}

/// Run a workload; also returns the program runs the kernel skipped
/// meanwhile.
fn run_counted(kernel: &Kernel, args: &[&str]) -> (Report, u64) {
    let before = kernel.recursion_misses();
    let report = run_workload(args);
    (report, kernel.recursion_misses() - before)
}

/// Reclaim, calls and bytes of one workload, against the kernel's numbers:
/// exact, or short by no more than the program runs the kernel skipped.
fn check_request_counts(kernel: &Kernel, args: &[&str], report: &Report, skipped: u64) {
    let counters = kernel.process(report.pid);
    let what = format!("{args:?}: {counters:?} vs {report:?}");
    if expect_pt_reclaim() {
        assert_eq!(report.expected_tables * 4, report.vmpte_drop_kib, "the kernel reclaimed what {args:?} expects");
        let per_miss = per_call(report.expected_tables, report.calls);
        assert_exact_or_missed_by(counters.frees.reclaimed(), report.expected_tables, skipped, per_miss, &what);
    } else {
        assert_eq!(report.vmpte_drop_kib, 0, "no PT_RECLAIM: VmPTE does not drop");
        assert_eq!(counters.frees.reclaimed(), 0, "{what}");
    }
    // PT_RECLAIM frees PTE tables only.
    assert_eq!(counters.frees.get(Cause::Reclaim, Level::Pte), counters.frees.reclaimed());
    assert_exact_or_missed(counters.dontneed_calls, report.calls, skipped, &what);
    if counters.dontneed_calls == report.calls {
        assert_eq!(counters.dontneed_bytes, report.bytes, "{what}");
    }
    assert_eq!(comm(&counters), "ptwatch-workloa");
}

/// madvise(2) in cuts of several sizes and alignments, MADV_DONTNEED_LOCKED,
/// process_madvise(2): the same counts whatever the path.
#[test]
fn dontneed_reclaim_calls_and_bytes_equal_the_kernels_accounting() {
    let kernel = Kernel::attach();
    for args in [
        &["cuts", "64", "0", "2048", "1", "dontneed"][..],
        &["cuts", "1024", "0", "1048576", "1", "dontneed"],
        // Unaligned cuts: only fully covered spans can be reclaimed.
        &["cuts", "64", "1000", "3000", "2", "dontneed"],
        // MADV_DONTNEED_LOCKED exists from 5.18 on.
        &["cuts", "64", "0", "6144", "1", "dontneed-locked"],
        &["cuts", "64", "0", "4096", "1", "process-madvise"],
    ] {
        // process_madvise(2) accepts MADV_DONTNEED (on the caller's own
        // address space) since Linux 6.13; before, it fails with EINVAL.
        if args.contains(&"process-madvise") && !kernel_at_least(6, 13) {
            continue;
        }
        if args.contains(&"dontneed-locked") && !kernel_at_least(5, 18) {
            continue;
        }
        let (report, skipped) = run_counted(&kernel, args);
        check_request_counts(&kernel, args, &report, skipped);
    }
}

/// An allocator-style process (2,048 requests of 4 KiB) counts its first
/// requests in its hash entry, then claims its DONTNEED slot and counts the
/// rest there, without a hash lookup; entry and slot add up to the exact
/// counts.
#[test]
fn a_busy_process_counts_its_requests_in_its_dontneed_slot() {
    let kernel = Kernel::attach();
    let args = ["cuts", "8", "0", "4", "1", "dontneed"];
    // Another process of the machine whose pid shares the slot index may
    // hold the slot: then the workload is run again (a new pid).
    for _ in 0..5 {
        let (report, skipped) = run_counted(&kernel, &args);
        check_request_counts(&kernel, &args, &report, skipped);
        let key = *kernel.processes().keys().find(|key| key.tgid == report.pid).expect("the workload's entry");
        let index = DontneedSlot::index(&key);
        let owner = kernel.maps.dontneed_slot_owners.get(&index, 0).expect("the slot of the workload's pid is claimed");
        if owner != key {
            eprintln!("slot {index} is held by {owner:?}, not the workload {key:?}: once more");
            continue;
        }
        let slot = kernel.maps.dontneed_slots.get(&index, 0).expect("read DONTNEED_SLOTS");
        let entry = kernel.maps.processes.get(&key, 0).expect("read the workload's hash entry");
        assert_eq!(slot.key, key);
        let what = format!("{report:?}: hash entry {entry:?}, slot {slot:?}");
        assert_exact_or_missed(entry.dontneed_calls + slot.dontneed_calls, report.calls, skipped, &what);
        if skipped == 0 {
            assert_eq!(
                entry.dontneed_calls, DONTNEED_SLOT_CLAIM_CALLS,
                "the slot is claimed at the {DONTNEED_SLOT_CLAIM_CALLS}th request: {what}"
            );
            assert_eq!(entry.dontneed_bytes + slot.dontneed_bytes, report.bytes, "{what}");
        }
        return;
    }
    panic!("five workloads in a row found their DONTNEED slot held by another process");
}

/// io_uring `IORING_OP_MADVISE` requests: counted like madvise(2) in every
/// plan that says it sees them (fentry/kprobe through `do_madvise`, the
/// tracepoint plan through io_uring's tracepoints).
#[test]
fn io_uring_dontneed_is_counted_like_madvise() {
    let kernel = Kernel::attach();
    let args = ["io-uring", "64", "2048", "2"];
    let (report, skipped) = run_counted(&kernel, &args);
    assert!(report.calls > 0);
    if kernel.sees(Event::IoUringDontneed) {
        check_request_counts(&kernel, &args, &report, skipped);
    } else {
        let plan = kernel.probes.plan().chosen();
        assert!(
            plan.check.limitations.contains(&Limitation::IoUringUnseen),
            "io_uring unseen must be stated: {plan:?}"
        );
    }
}

/// madvise(2) DONTNEED of a 32-bit program (x86_64's ia32 entry, where the
/// kernel runs them): the fentry and kprobe plans see it in `do_madvise`
/// and count it exactly; the syscall tracepoints skip compat syscalls, so
/// the tracepoint plan states that it misses such requests, and counts
/// none of the ones the kernel did reclaim for.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_32_bit_programs_dontneed_is_counted_or_stated_as_unseen() {
    let kernel = Kernel::attach();
    let btf = KernelBtf::load(std::path::Path::new(VMLINUX_BTF)).expect("kernel BTF");
    let plan = kernel.probes.plan().chosen();
    let stated = plan.check.limitations.contains(&Limitation::CompatSyscallsUnseen);
    if !btf.has_function("__ia32_sys_madvise") {
        // No ia32 emulation: no such request can be made, none is missed.
        assert!(!stated, "{:?}", plan.check.limitations);
        return;
    }
    let args = ["cuts", "64", "0", "2048", "1", "compat"];
    let (report, skipped) = run_counted(&kernel, &args);
    assert_eq!(report.calls, 32);
    if plan.check.attach == Attach::Tracepoint {
        assert!(stated, "a tracepoint plan must state that it misses 32-bit requests: {:?}", plan.check.limitations);
        if expect_pt_reclaim() {
            assert_eq!(report.expected_tables * 4, report.vmpte_drop_kib, "the kernel reclaimed for {args:?}");
        }
        let counted = kernel.process_if_counted(report.pid).map(|c| (c.dontneed_calls, c.frees.reclaimed()));
        assert!(matches!(counted, None | Some((0, 0))), "unseen requests counted: {counted:?}");
    } else {
        assert!(!stated, "{:?}", plan.check.limitations);
        check_request_counts(&kernel, &args, &report, skipped);
    }
}

/// Wherever the kernel has `bpf_task_pt_regs` (5.15+), the tracepoint plan
/// reads a small madvise request back from the saved user registers at
/// exit, and the kprobe plan tells the madvise syscall's own `do_madvise`
/// call by the syscall number there: the offsets resolved from this
/// kernel's BTF are those of its architecture's syscall ABI, the first
/// argument from its saved copy where the return value overwrites the
/// register (arm64, riscv64). Elsewhere none are resolved, and such
/// requests keep their range in a context.
#[test]
fn syscall_arguments_are_read_back_from_the_registers_where_the_kernel_allows() {
    let btf = KernelBtf::load(std::path::Path::new(VMLINUX_BTF)).expect("kernel BTF");
    let config = ptwatch::probes::kernel_config(&btf, None, true).expect("the programs' configuration");
    let offsets = [
        config.syscall_arg0_offset,
        config.syscall_arg1_offset,
        config.syscall_arg2_offset,
        config.syscall_nr_offset,
        config.madvise_syscall_nr,
    ];
    let expected = if btf.has_enum_value("bpf_func_id", "BPF_FUNC_task_pt_regs") {
        // struct pt_regs: x86_64 di, si, dx, orig_ax; arm64 orig_x0,
        // regs[1], regs[2], syscallno; riscv64 orig_a0, a1, a2, a7. Then
        // __NR_madvise: x86_64's table, asm-generic's.
        if cfg!(target_arch = "x86_64") {
            [112, 104, 96, 120, 28]
        } else if cfg!(target_arch = "aarch64") {
            [272, 8, 16, 280, 233]
        } else {
            [280, 88, 96, 136, 233]
        }
    } else {
        [u64::MAX; 5]
    };
    assert_eq!(offsets, expected);
}

/// Requests the kernel refuses (`EINVAL`), small and large, count nothing,
/// whichever way the plan learns a request's result (the tracepoint plan
/// reads a small one's range back from the registers at exit, and keeps a
/// large one's in the thread's context); the accepted ones between them
/// count exactly.
#[test]
fn refused_dontneeds_are_not_counted() {
    let kernel = Kernel::attach();
    let args = ["refused", "8"];
    let (report, skipped) = run_counted(&kernel, &args);
    assert_eq!((report.calls, report.bytes), (4, 4 * 4096));
    check_request_counts(&kernel, &args, &report, skipped);
}

/// Allocator-style purges (4 KiB DONTNEEDs) cannot reclaim a table: they
/// are counted, measure nothing, and are never reported as approximate.
#[test]
fn small_dontneeds_are_counted_without_measuring() {
    let kernel = Kernel::attach();
    let before = kernel.node();
    let args = ["cuts", "16", "0", "4", "1", "dontneed"];
    let (report, skipped) = run_counted(&kernel, &args);
    assert_eq!(report.calls, 4096);
    check_request_counts(&kernel, &args, &report, skipped);
    assert_eq!(kernel.process(report.pid).frees.reclaimed(), 0);
    // Where no context is kept for them (tracepoint plan, kprobe plan on
    // 5.15+), returns are still told apart from missed ones: 4,096 requests
    // of one thread, none taken for a missed exit.
    let exit_misses = kernel.node().context_exit_misses - before.context_exit_misses;
    assert!(exit_misses <= skipped, "{exit_misses} exits missed, {skipped} program runs skipped");
    let approximate = kernel.node().approximate_calls - before.approximate_calls;
    // Other processes may DONTNEED meanwhile; ours alone would be 4096.
    assert!(approximate < report.calls / 2, "{approximate} approximate requests: small ones must not be measured");
}

/// Threads faulting and DONTNEEDing disjoint regions concurrently: exact.
#[test]
fn concurrent_threads_are_counted_exactly() {
    let kernel = Kernel::attach();
    let approximate_before = kernel.node().approximate_calls;
    let (report, skipped) = run_counted(&kernel, &["threads", "4", "16", "25"]);
    let counters = kernel.process(report.pid);
    // Every call is the workload's (its threads do not end before it does);
    // a program run the kernel skipped loses at most its call.
    assert!(
        (report.calls - skipped.min(report.calls)..=report.calls).contains(&counters.dontneed_calls),
        "{counters:?} vs {report:?}, {skipped} runs skipped"
    );
    let exact = !matches!(kernel.probes.accounting(), ReclaimAccounting::PgtablesBytes { .. });
    match (expect_pt_reclaim(), exact) {
        (true, true) => {
            let per_miss = per_call(report.expected_tables, report.calls);
            let what = format!("{report:?}");
            assert_exact_or_missed_by(counters.frees.reclaimed(), report.expected_tables, skipped, per_miss, &what);
        }
        // The fallback can see other threads' faults; documented as approximate.
        (true, false) => assert!(counters.frees.reclaimed() > 0),
        (false, _) => {
            assert_eq!(counters.frees.reclaimed(), 0);
            // Where nothing can be reclaimed nothing is measured, on the
            // whole node: a drop of pgtables_bytes would be someone's munmap.
            assert_eq!(kernel.node().approximate_calls, approximate_before, "requests measured without PT_RECLAIM");
        }
    }
}

/// The frees counted for `ptwatch-workload unmap-paced MIB` during its
/// munmap alone (the counters are read right before and right after it:
/// the process' other frees, at start-up or by its allocator, depend on
/// where the kernel placed its mappings), its report and the program runs
/// the kernel skipped meanwhile.
fn frees_of_munmap(kernel: &Kernel, mib: u32) -> (Report, FreeCounts, u64) {
    let frees_and_misses = |pid| (kernel.process_if_counted(pid).unwrap_or_default().frees, kernel.recursion_misses());
    let (report, (before, misses_before), (after, misses_after)) =
        support::unmap_paced(mib, frees_and_misses, frees_and_misses);
    let mut during = FreeCounts::default();
    for (cause, level) in Cause::ALL.into_iter().flat_map(|c| Level::ALL.into_iter().map(move |l| (c, l))) {
        during.pages[cause.index()][level.index()] = after.get(cause, level) - before.get(cause, level);
    }
    (report, during, misses_after - misses_before)
}

/// exec's stack move (`relocate_vma_down`) frees the old stack's page
/// tables of the new address space, outside munmap and outside any
/// DONTNEED: never PT_RECLAIM's, also where reclaim is told by elimination.
/// A process DONTNEEDs 4 MiB, execs itself and DONTNEEDs 4 MiB again: its
/// reclaim is the two VmPTE drops, exactly, and the stack move's tables
/// are `other`.
#[test]
fn an_execs_stack_move_is_not_reclaim() {
    use std::io::{BufRead as _, BufReader, Write as _};
    let kernel = Kernel::attach();
    // The exec'd image gets its own name (a symlink's), so that the test
    // sees when the exec is done: a go sent before could be read, and lost,
    // by the image it replaces.
    let dir = std::env::temp_dir().join(format!("ptwatch-kernels-exec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let after = dir.join("execafter");
    std::os::unix::fs::symlink(workload_bin(), &after).expect("symlink the workload");
    let misses_before = kernel.recursion_misses();
    let mut child = Command::new(workload_bin())
        .args(["exec-step", "4"])
        .arg(&after)
        .args(["exec-step", "4"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the exec-step workload");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut stdin = child.stdin.take().expect("stdin");
    let mut report = || -> Report {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("the step's report");
        serde_json::from_str(&line).unwrap_or_else(|err| panic!("workload report {line:?}: {err}"))
    };
    writeln!(stdin).expect("go: DONTNEED before the exec");
    let before_exec = report();
    writeln!(stdin).expect("go: exec");
    let comm_path = format!("/proc/{}/comm", child.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_to_string(&comm_path).expect("the workload's comm").trim() != "execafter" {
        assert!(std::time::Instant::now() < deadline, "the workload did not exec within 10 s");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    writeln!(stdin).expect("go: DONTNEED after the exec");
    let after_exec = report();
    let counters = kernel.process(child.id());
    let skipped = kernel.recursion_misses() - misses_before;
    drop(stdin);
    assert!(child.wait().expect("wait for the workload").success(), "exec-step workload failed");
    let _ = std::fs::remove_dir_all(&dir);
    let what = format!("{counters:?} vs {before_exec:?} then {after_exec:?}");
    let expected = if expect_pt_reclaim() {
        for step in [&before_exec, &after_exec] {
            assert_eq!(step.expected_tables * 4, step.vmpte_drop_kib, "the kernel reclaimed what the step expects");
        }
        before_exec.expected_tables + after_exec.expected_tables
    } else {
        0
    };
    let per_miss = per_call(expected, 2);
    assert_exact_or_missed_by(counters.frees.reclaimed(), expected, skipped, per_miss, &what);
    // Positive control: the stack move did free tables (the new stack lies
    // at a random distance below the old one), counted as `other`.
    let randomized = std::fs::read_to_string("/proc/sys/kernel/randomize_va_space").is_ok_and(|v| v.trim() != "0");
    if kernel.frees_seen() && randomized {
        assert!(frees_of(&counters, Cause::Other) > 0, "the stack move's frees: {what}");
    }
}

#[test]
fn munmap_frees_are_counted_as_unmap() {
    let kernel = Kernel::attach();
    let (report, frees, skipped) = frees_of_munmap(&kernel, 64);
    let what = format!("{frees:?} during the munmap, {report:?}");
    if !kernel.frees_seen() {
        assert_eq!(frees.pages.iter().flatten().sum::<u64>(), 0, "no free probe, nothing counted: {what}");
        return;
    }
    let level = pte_level(&kernel);
    let pte = frees.get(Cause::Unmap, level);
    if level == Level::Unknown {
        // Every level is `unknown` here, so the upper-level tables the
        // munmap emptied (they depend on where the mapping landed) are among
        // them: at least the PTE tables; the VmPTE check below is exact.
        assert!(pte + skipped >= report.expected_tables, "{pte} of {} PTE tables: {what}", report.expected_tables);
    } else {
        assert_exact_or_missed(pte, report.expected_tables, skipped, &what);
    }
    // Every page-table page the munmap released, at any level, is counted.
    let unmap: u64 = frees.pages[Cause::Unmap.index()].iter().sum();
    assert_exact_or_missed(unmap * 4, report.vmpte_drop_kib, skipped * 4, &what);
    assert_eq!(frees.pages.iter().flatten().sum::<u64>(), unmap, "a munmap frees for `unmap` only: {what}");
}

/// Where the architecture names levels, PTE tables are `pte`; else `unknown`.
fn pte_level(kernel: &Kernel) -> Level {
    let limitations = &kernel.probes.plan().chosen().check.limitations;
    if limitations.contains(&Limitation::FreeLevelUnknown) {
        Level::Unknown
    } else {
        Level::Pte
    }
}

/// Frees counted in the unattributed slot (`OVERFLOW_COUNTERS` key
/// `UNATTRIBUTED_CGROUP`) so far.
fn unattributed(kernel: &Kernel) -> ProcessCounters {
    kernel.overflow().remove(&ptwatch_common::UNATTRIBUTED_CGROUP).unwrap_or_default()
}

/// An exit's tables are freed by whoever drops the last reference to the
/// address space: the exiting process, almost always, and then they are
/// its own; but when another task holds one at that moment (`khugepaged`
/// scanning it, a reader of `/proc/<pid>/stat`), the kernel has already
/// cleared `mm->owner` and nothing names the process any more: those frees
/// go to the unattributed slot (docs/kernel-support.md). Seen under
/// emulation, where such windows last long. Every table is counted either
/// way, in exactly one of the two.
#[test]
fn exit_frees_are_counted_as_exit_and_attributed_to_the_process() {
    let kernel = Kernel::attach();
    let before = unattributed(&kernel);
    let (report, _) = run_counted(&kernel, &["exit", "64"]);
    if !kernel.frees_seen() {
        return;
    }
    // No entry at all when every free went elsewhere.
    let counters = kernel.process_if_counted(report.pid).unwrap_or_default();
    let after = unattributed(&kernel);
    let level = pte_level(&kernel);
    let elsewhere_pte = after.frees.get(Cause::Exit, level) - before.frees.get(Cause::Exit, level);
    let elsewhere = frees_of(&after, Cause::Exit) - frees_of(&before, Cause::Exit);
    let what = format!("{counters:?}, {elsewhere} exit frees unattributed meanwhile, vs {report:?}");
    let exit_pte = counters.frees.get(Cause::Exit, level);
    assert!(
        exit_pte + elsewhere_pte >= report.expected_tables,
        "exit freed {exit_pte} PTE tables of {} ({elsewhere_pte} unattributed): {what}",
        report.expected_tables
    );
    // VmPTE at its peak counted every table of the process; exit frees them all.
    assert!((frees_of(&counters, Cause::Exit) + elsewhere) * 4 >= report.vmpte_peak_kib - 8, "{what}");
    if elsewhere == 0 {
        assert_eq!(comm(&counters), "ptwatch-workloa");
    } else {
        eprintln!("this exit was finished by another task: {what}");
    }
}

/// THP-backed anonymous memory: DONTNEED zaps its huge PMDs, and the kernel
/// frees the PTE table deposited with each THP (VmPTE drops by one table per
/// THP). That is cause `thp`, never PT_RECLAIM, on every architecture.
#[test]
fn thp_deposited_tables_are_counted_as_thp_not_reclaim() {
    let kernel = Kernel::attach();
    let (report, skipped) = run_counted(&kernel, &["thp", "16"]);
    assert_eq!(report.vmpte_drop_kib, report.expected_tables * 4, "one deposited table per THP: {report:?}");
    let counters = kernel.process(report.pid);
    match kernel.probes.accounting() {
        ReclaimAccounting::FreeClassification => {
            let thp = counters.frees.get(Cause::Thp, Level::Pte);
            assert_exact_or_missed(thp, report.expected_tables, skipped, &format!("{counters:?}"));
            assert_eq!(frees_of(&counters, Cause::Thp), thp, "{counters:?}");
            assert_eq!(counters.frees.reclaimed(), 0, "{counters:?}");
        }
        // The walk reads only PMDs that point to PTE tables: none here.
        ReclaimAccounting::PageTableWalk => assert_eq!(counters.frees.reclaimed(), 0, "{counters:?}"),
        // The fallback sees the VmPTE drop and cannot tell a deposited
        // table from a reclaimed one: documented as approximate. Without
        // PT_RECLAIM nothing is measured at all.
        ReclaimAccounting::PgtablesBytes { .. } => {
            let expected = if expect_pt_reclaim() { report.vmpte_drop_kib } else { 0 };
            assert_eq!(counters.frees.reclaimed() * 4, expected, "{counters:?}");
        }
    }
    assert_eq!(counters.dontneed_calls, 1);
}

/// Small-page shmem collapsed by MADV_COLLAPSE: the PTE tables of the
/// collapsed spans are retired through `pte_free_defer` (6.5+), cause
/// `collapse`, attributed to the process whose mm they belonged to.
#[test]
fn shmem_collapse_frees_are_counted_as_collapse() {
    let kernel = Kernel::attach();
    let collapse_hooked = kernel.probes.plan().causes().contains(&Cause::Collapse);
    if !kernel_at_least(6, 1) {
        // MADV_COLLAPSE exists from 6.1 on; before, nothing collapses and
        // no plan may claim to see it.
        assert!(!collapse_hooked, "no collapse before 6.1");
        return;
    }
    let (report, skipped) = run_counted(&kernel, &["collapse", "16"]);
    assert!(report.expected_tables > 0, "MADV_COLLAPSE mapped no span by a PMD: {report:?}");
    let counters = kernel.processes().into_iter().find(|(k, _)| k.tgid == report.pid).map(|(_, c)| c);
    let collapsed = counters.as_ref().map_or(0, |c| frees_of(c, Cause::Collapse));
    if collapse_hooked {
        assert_eq!(report.expected_tables * 4, report.vmpte_drop_kib, "{report:?}");
        assert_exact_or_missed(collapsed, report.expected_tables, skipped, &format!("{counters:?} vs {report:?}"));
    } else {
        // 6.1 frees them with an inline pte_free: nothing to hook, and the
        // plan says so (no `collapse` among its causes).
        assert_eq!(collapsed, 0, "{counters:?}");
    }
    // Not a DONTNEED: never reclaim.
    assert_eq!(counters.map_or(0, |c| c.frees.reclaimed()), 0);
}

/// A process is its tgid and its start time: the start time in the key is
/// the one `/proc/<pid>/stat` shows, so a recycled pid is a new key.
#[test]
fn processes_are_keyed_by_tgid_and_start_time() {
    let kernel = Kernel::attach();
    let held = Held::start(8);
    let keys: Vec<ProcessKey> = kernel.processes().into_keys().filter(|k| k.tgid == held.report.pid).collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", held.report.pid)).expect("stat");
    // Field 22, counted after the parenthesised comm (which may hold spaces).
    let after_comm = stat.rsplit_once(')').expect("comm").1;
    let start_ticks: u64 = after_comm.split_whitespace().nth(19).expect("starttime").parse().expect("number");
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert_eq!(keys[0].start_time_ns / (1_000_000_000 / ticks_per_second), start_ticks);
}

/// A cgroup v2 directory of this test, removed when dropped.
struct TestCgroup {
    dir: PathBuf,
}

impl TestCgroup {
    fn new(name: &str) -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let root = mountinfo
            .lines()
            .find(|line| line.split_once(" - ").is_some_and(|(_, rest)| rest.starts_with("cgroup2 ")))
            .and_then(|line| line.split_whitespace().nth(4))
            .map(PathBuf::from)
            .expect("a cgroup v2 mount (these tests need one)");
        let dir = root.join(format!("ptwatch-kernels-{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap_or_else(|err| panic!("mkdir {}: {err}", dir.display()));
        Self { dir }
    }

    /// The id the kernel reports for it (the inode of its directory).
    fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&self.dir).expect("cgroup dir").ino()
    }

    /// `ptwatch-workload ARGS` run from inside this cgroup.
    fn run_fleet(&self, args: &[&str]) -> FleetReport {
        let script = format!("echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"", self.dir.display());
        let output = Command::new("sh").arg("-c").arg(script).arg(workload_bin()).args(args).output().expect("sh");
        assert!(output.status.success(), "fleet: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("fleet report")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// With room for only 8 processes, 60 processes of one cgroup each reclaim
/// 2 tables: those without an entry of their own are counted in their
/// cgroup's overflow slot, so the cgroup's total is exact; the node total
/// counts everything; nothing is counted twice.
#[test]
fn a_full_process_map_overflows_into_the_cgroup_slot_exactly() {
    let (_alone, kernel) = Kernel::attach_alone(LoadOptions { max_tracked_processes: 8, ..LoadOptions::default() });
    let cgroup = TestCgroup::new("overflow");
    let before = kernel.node();
    let misses_before = kernel.recursion_misses();
    let fleet = cgroup.run_fleet(&["fleet", "60", "2", "4"]);
    let processes = kernel.processes();
    assert!(processes.len() <= 8, "the map holds at most its capacity: {}", processes.len());
    let own: ProcessCounters = processes.iter().filter(|(_, c)| c.cgroup_id == cgroup.id()).fold(
        ProcessCounters::default(),
        |mut sum, (_, c)| {
            sum.add_counts(c);
            sum
        },
    );
    let overflow = kernel.overflow().get(&cgroup.id()).copied().unwrap_or_default();
    let misses: Vec<_> = kernel
        .probes
        .program_stats()
        .into_iter()
        .filter(|s| s.recursion_misses > 0)
        .map(|s| (s.name, s.recursion_misses))
        .collect();
    let context = format!(
        "cgroup {}: own {own:?}\noverflow {:?}\nprocesses {processes:?}\nnode {:?}\nrecursion misses {misses:?}",
        cgroup.id(),
        kernel.overflow(),
        kernel.node()
    );
    let misses = kernel.recursion_misses() - misses_before;
    assert!(overflow.dontneed_calls > 0, "the map was full: some children overflowed\n{context}");
    let calls = own.dontneed_calls + overflow.dontneed_calls;
    assert_exact_or_missed(calls, fleet.calls, misses, &format!("requests\n{context}"));
    if calls == fleet.calls {
        assert_eq!(own.dontneed_bytes + overflow.dontneed_bytes, fleet.bytes);
    }
    let reclaimed = own.frees.reclaimed() + overflow.frees.reclaimed();
    if expect_pt_reclaim() {
        assert_eq!(fleet.expected_tables * 4, fleet.vmpte_drop_kib, "the kernel reclaimed what the fleet expects");
        // A skipped entry or exit of a child's DONTNEED loses that call's
        // tables.
        let per_miss = per_call(fleet.expected_tables, fleet.calls);
        assert_exact_or_missed_by(
            reclaimed,
            fleet.expected_tables,
            misses,
            per_miss,
            &format!("cgroup total\n{context}"),
        );
    } else {
        assert_eq!(reclaimed, 0);
    }
    let after = kernel.node();
    let misses = kernel.recursion_misses() - misses_before;
    assert!(
        after.dontneed_calls - before.dontneed_calls + misses >= fleet.calls,
        "node counts everything but the runs the kernel skipped ({misses})"
    );
    assert!(after.process_map_overflows > before.process_map_overflows, "overflows are counted");
}

/// Threads faulting, DONTNEEDing and unmapping their own regions of one
/// address space at the same time (on a preemptible kernel, programs
/// interleave on one CPU too): every free is counted once, under the right
/// cause, for the right process.
#[test]
fn concurrent_faults_dontneed_and_munmap_are_classified_exactly() {
    let kernel = Kernel::attach();
    let misses_before = kernel.node().context_exit_misses;
    let skipped_before = kernel.recursion_misses();
    let output = Command::new(workload_bin()).args(["churn", "4", "8", "30"]).output().expect("spawn churn");
    assert!(output.status.success(), "churn: {}", String::from_utf8_lossy(&output.stderr));
    let report: ChurnReport = serde_json::from_slice(&output.stdout).expect("churn report");
    let counters = kernel.process(report.pid);
    let skipped = kernel.recursion_misses() - skipped_before;
    // Every call is the workload's (its threads do not end before it does).
    // A run of an entry or exit program the kernel skipped (recursion
    // protection, counted by the kernel and exported) loses at most that
    // call.
    assert!(
        (report.dontneed_calls.saturating_sub(skipped)..=report.dontneed_calls).contains(&counters.dontneed_calls),
        "{counters:?} vs {report:?}; {skipped} program runs skipped, exit misses {}, node {:?}",
        kernel.node().context_exit_misses - misses_before,
        kernel.node()
    );
    let expected_reclaim = if expect_pt_reclaim() { report.reclaimable_tables } else { 0 };
    // One call, reclaim or munmap, covers one region's tables.
    let per_miss = per_call(report.unmapped_tables, report.dontneed_calls);
    let exact_reclaim = !matches!(kernel.probes.accounting(), ReclaimAccounting::PgtablesBytes { .. });
    if exact_reclaim {
        let what = format!("reclaim {counters:?}");
        assert_exact_or_missed_by(counters.frees.reclaimed(), expected_reclaim, skipped, per_miss, &what);
    }
    if kernel.frees_seen() {
        let what = format!("unmap {counters:?}");
        match pte_level(&kernel) {
            Level::Pte => {
                let unmapped = counters.frees.get(Cause::Unmap, Level::Pte);
                assert_exact_or_missed_by(unmapped, report.unmapped_tables, skipped, per_miss, &what);
            }
            // Levels not told apart (arm64, riscv64): the PTE tables plus
            // at most the three upper tables one munmap can empty.
            _ => {
                let unmapped = frees_of(&counters, Cause::Unmap);
                let most = report.unmapped_tables + 3 * report.dontneed_calls;
                assert!(unmapped <= most, "{what}: {unmapped} counted, more than the {most} possible");
                assert_exact_or_missed_by(
                    unmapped.min(report.unmapped_tables),
                    report.unmapped_tables,
                    skipped,
                    per_miss,
                    &what,
                );
            }
        }
        // The exec that started the workload moved its stack: at most one
        // table per level, cause `other`; and what skipped runs left
        // unclassified. Nothing else is unexplained.
        assert!(frees_of(&counters, Cause::Other) <= 5 + skipped * per_miss, "{counters:?}, {skipped} runs skipped");
    }
    let node = kernel.node();
    // An exit hook the kernel skipped leaves its context marked: the next
    // call on that thread counts it as missed.
    assert!(
        node.context_exit_misses - misses_before <= skipped,
        "exit hooks missed beyond the runs the kernel skipped ({skipped}): {node:?}"
    );
}
