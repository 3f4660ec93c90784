//! Start-up requests from the agent (calibration and self-test), answered
//! synchronously in the agent's own context. Attached only while the agent
//! starts, to `sys_enter_getppid`, a syscall the agent makes on purpose.

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::Array,
    programs::TracePointContext,
};
use ptwatch_common::{request, AgentRequest};

use crate::{
    kernel::{config, current_mm, read_kernel, CurrentTask},
    pagetable::count_pte_tables,
};

#[map(name = "AGENT_REQUEST")]
static AGENT_REQUEST: Array<AgentRequest> = Array::with_max_entries(1, 0);

/// Candidates tried per FIND_DIRECT_MAP request (the agent sends several).
const CANDIDATES_PER_REQUEST: u32 = 1024;

#[tracepoint(category = "syscalls", name = "sys_enter_getppid")]
pub fn agent_request(_ctx: TracePointContext) -> u32 {
    let config = config();
    if u64::from(CurrentTask::get().tgid) != config.agent_tgid {
        return 0;
    }
    let Some(req) = AGENT_REQUEST.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the single entry of an array map; only the agent's thread
    // making the request runs this.
    let req = unsafe { &mut *req };
    match req.op {
        request::FIND_DIRECT_MAP => {
            let [physical, magic0, magic1, first, step, count] = req.args;
            req.result = 0;
            for i in 0..CANDIDATES_PER_REQUEST {
                if u64::from(i) >= count {
                    break;
                }
                let candidate = first.wrapping_add(u64::from(i).wrapping_mul(step));
                if let Some([a, b]) = read_kernel::<[u64; 2]>(candidate, physical) {
                    if a == magic0 && b == magic1 {
                        req.result = candidate;
                        break;
                    }
                }
            }
            req.status = 1;
        }
        request::COUNT_PTE_TABLES => {
            let [start, len, ..] = req.args;
            let count =
                current_mm(&config).and_then(|mm| count_pte_tables(&config, mm, start, start.wrapping_add(len)));
            match count {
                Some(count) => {
                    req.result = count.tables;
                    req.status = if count.complete { 1 } else { 2 };
                }
                None => req.status = 3,
            }
        }
        _ => {}
    }
    req.op = request::IDLE;
    0
}
