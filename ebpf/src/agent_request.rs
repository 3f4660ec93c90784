//! Start-up requests from the agent (calibration and self-test), answered
//! synchronously in the agent's own context. Attached only while the agent
//! starts, to `sys_enter_getppid`, a syscall the agent makes on purpose.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::bpf_loop,
    macros::{map, tracepoint},
    maps::Array,
    programs::TracePointContext,
};
use ptwatch_common::{request::op, AgentRequest};

use crate::{
    kernel::{config, current_mm, read_kernel, Config, CurrentTask},
    pagetable::count_pte_tables,
};

#[map(name = "AGENT_REQUEST")]
static AGENT_REQUEST: Array<AgentRequest> = Array::with_max_entries(1, 0);

/// Entries of a top-level page table.
const TOP_LEVEL_ENTRIES: u64 = 512;
/// Most candidates one FIND_DIRECT_MAP request may ask for.
const MAX_CANDIDATES: u64 = 4096;

/// State of a FIRST_KERNEL_SLOT or FIND_DIRECT_MAP loop (`bpf_loop`
/// callbacks are verified once, whatever the trip count).
#[repr(C)]
struct Search {
    base: u64,
    first: u64,
    step: u64,
    physical: u64,
    magic: [u64; 2],
    found: u64,
    hit: u64,
}

/// The pending request, when the running task is the agent (every other
/// process calling getppid meanwhile is ignored).
#[inline(always)]
fn pending_request(config: Config) -> Option<&'static mut AgentRequest> {
    if u64::from(CurrentTask::get().tgid) != config.agent_tgid() {
        return None;
    }
    let req = AGENT_REQUEST.get_ptr_mut(0)?;
    // SAFETY: the single entry of an array map; only the agent's thread
    // making the request runs this.
    Some(unsafe { &mut *req })
}

#[tracepoint(category = "syscalls", name = "sys_enter_getppid")]
pub fn agent_request(_ctx: TracePointContext) -> u32 {
    let config = config();
    let Some(req) = pending_request(config) else {
        return 0;
    };
    match req.op {
        op::FIRST_KERNEL_SLOT => {
            let [first, ..] = req.args;
            let pgd = current_mm(config).and_then(|mm| read_kernel::<u64>(mm, config.mm_pgd_offset()));
            req.status = 0;
            if let Some(pgd) = pgd {
                let mut search = Search { base: pgd, first, step: 0, physical: 0, magic: [0; 2], found: 0, hit: 0 };
                let slots = TOP_LEVEL_ENTRIES.saturating_sub(first) as u32;
                // SAFETY: the callback only touches `search`, which outlives the call.
                unsafe { bpf_loop(slots, present_slot as *mut c_void, (&raw mut search).cast(), 0) };
                req.result = search.found;
                req.status = search.hit;
            }
        }
        op::FIND_DIRECT_MAP => {
            let [physical, magic0, magic1, first, step, count] = req.args;
            let mut search = Search { base: 0, first, step, physical, magic: [magic0, magic1], found: 0, hit: 0 };
            let count = if count < MAX_CANDIDATES { count } else { MAX_CANDIDATES };
            // SAFETY: as above.
            unsafe { bpf_loop(count as u32, matching_candidate as *mut c_void, (&raw mut search).cast(), 0) };
            req.result = search.found;
            req.status = 1;
        }
        _ => return 0,
    }
    req.op = op::IDLE;
    0
}

/// COUNT_PTE_TABLES: the walk's self-test, in its own program so that the
/// calibration above loads even where the walk does not verify.
#[tracepoint(category = "syscalls", name = "sys_enter_getppid")]
pub fn walk_self_test(_ctx: TracePointContext) -> u32 {
    let config = config();
    let Some(req) = pending_request(config) else {
        return 0;
    };
    if req.op != op::COUNT_PTE_TABLES {
        return 0;
    }
    let [start, len, ..] = req.args;
    match current_mm(config).and_then(|mm| count_pte_tables(config, mm, start, start.wrapping_add(len))) {
        Some(count) => {
            req.result = count.tables;
            req.status = if count.complete { 1 } else { 2 };
        }
        None => req.status = 3,
    }
    req.op = op::IDLE;
    0
}

/// Is slot `first + index` of the top-level table at `base` present?
#[inline(never)]
extern "C" fn present_slot(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Search` passed to bpf_loop.
    let search = unsafe { &mut *ctx.cast::<Search>() };
    let slot = search.first + index;
    if read_kernel::<u64>(search.base, slot * 8).is_some_and(|entry| entry & 1 == 1) {
        search.found = slot;
        search.hit = 1;
        return 1;
    }
    0
}

/// Does candidate `first + index * step` map `physical` to the magic?
#[inline(never)]
extern "C" fn matching_candidate(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Search` passed to bpf_loop.
    let search = unsafe { &mut *ctx.cast::<Search>() };
    let candidate = search.first.wrapping_add(index.wrapping_mul(search.step));
    if read_kernel::<[u64; 2]>(candidate, search.physical) == Some(search.magic) {
        search.found = candidate;
        return 1;
    }
    0
}
