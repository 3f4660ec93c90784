//! Start-up calibration of the page-table walk.
//!
//! The walk turns page-table entries (physical addresses) into readable
//! kernel addresses through the direct map, whose base is randomised at boot
//! (`page_offset_base`) and not exported to userspace on most kernels. The
//! agent finds it by experiment: it writes a random 16-byte pattern into a
//! page of its own, learns that page's physical address from
//! `/proc/self/pagemap`, and asks the `agent_request` program to look for
//! the pattern at each 1 GiB-aligned candidate base (the alignment KASLR
//! uses) of the top-level slot where the direct map begins, lowest first. Then it self-tests the walk on
//! a region with a known number of PTE tables. Any failure disables the walk
//! and says why; reclaim is then measured through `pgtables_bytes`.

use std::{fs::File, io, os::unix::fs::FileExt as _};

use aya::{
    maps::{Array, MapData},
    programs::TracePoint,
    Ebpf,
};
use ptwatch_common::{names, request, AgentRequest};

use super::plan::describe_error;
use crate::kernel::mapping::{AnonMapping, PTE_TABLE_SPAN};

const GIB: u64 = 1 << 30;
const SPAN: usize = PTE_TABLE_SPAN;
/// Lowest direct-map base with 4-level paging (`__PAGE_OFFSET_BASE_L4`).
const DIRECT_MAP_LOWEST_L4: u64 = 0xffff_8880_0000_0000;
/// Candidates the program checks per request (its `MAX_CANDIDATES`).
const CANDIDATES_PER_REQUEST: u64 = 1024;

/// Why the walk is not used; shown by the agent and in `check`.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("cannot read physical addresses from /proc/self/pagemap (needs CAP_SYS_ADMIN): {0}")]
    Pagemap(String),
    #[error("5-level paging (la57) is not supported by the page-table walk yet")]
    FiveLevel,
    #[error("the direct-map base was not found")]
    NotFound,
    #[error("the page-table walk self-test failed: {0}")]
    SelfTest(String),
    #[error("the agent_request program: {0}")]
    Program(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Holds a request program (`agent_request` for the calibration,
/// `walk_self_test` for the self-test) attached to `sys_enter_getppid`;
/// unloads it when dropped.
pub struct RequestChannel<'a> {
    ebpf: &'a mut Ebpf,
    program: &'static str,
}

impl<'a> RequestChannel<'a> {
    pub fn open(ebpf: &'a mut Ebpf, program: &'static str) -> Result<Self, CalibrationError> {
        let describe =
            |e: &dyn std::error::Error| CalibrationError::Program(format!("{program}: {}", describe_error(e)));
        let loaded: &mut TracePoint = ebpf
            .program_mut(program)
            .ok_or_else(|| CalibrationError::Program(format!("{program} is missing from the object")))?
            .try_into()
            .map_err(|e| describe(&e))?;
        loaded.load().map_err(|e| describe(&e))?;
        loaded.attach("syscalls", "sys_enter_getppid").map_err(|e| describe(&e))?;
        Ok(Self { ebpf, program })
    }

    /// Send one request and return the answer.
    pub fn ask(&mut self, op: u64, args: [u64; 6]) -> Result<AgentRequest, CalibrationError> {
        let map = self
            .ebpf
            .map_mut(names::AGENT_REQUEST)
            .ok_or_else(|| CalibrationError::Program("AGENT_REQUEST map missing".into()))?;
        let mut array: Array<&mut MapData, AgentRequest> =
            Array::try_from(map).map_err(|e| CalibrationError::Program(format!("{e}")))?;
        array
            .set(0, AgentRequest { op, args, result: 0, status: 0 }, 0)
            .map_err(|e| CalibrationError::Program(format!("{e}")))?;
        // SAFETY: getppid has no preconditions. glibc does not cache it, so
        // this enters the kernel and fires the tracepoint.
        unsafe { libc::getppid() };
        let answer = array.get(&0, 0).map_err(|e| CalibrationError::Program(format!("{e}")))?;
        if answer.op != request::IDLE {
            return Err(CalibrationError::Program(format!("{}: request was not answered", self.program)));
        }
        Ok(answer)
    }
}

impl Drop for RequestChannel<'_> {
    fn drop(&mut self) {
        let program: Option<&mut TracePoint> =
            self.ebpf.program_mut(self.program).and_then(|program| program.try_into().ok());
        if let Some(program) = program {
            // Unloading detaches it: nothing stays on sys_enter_getppid.
            let _ = program.unload();
        }
    }
}

fn random_u64() -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    File::open("/dev/urandom")?.read_exact_at(&mut bytes, 0).or_else(|_| {
        use std::io::Read as _;
        File::open("/dev/urandom")?.read_exact(&mut bytes)
    })?;
    Ok(u64::from_ne_bytes(bytes))
}

/// Physical address of the page holding `addr`, from `/proc/self/pagemap`.
fn physical_address(addr: usize) -> Result<u64, CalibrationError> {
    let pagemap = File::open("/proc/self/pagemap").map_err(|e| CalibrationError::Pagemap(e.to_string()))?;
    let mut entry = [0u8; 8];
    pagemap
        .read_exact_at(&mut entry, (addr / 4096 * 8) as u64)
        .map_err(|e| CalibrationError::Pagemap(e.to_string()))?;
    let entry = u64::from_ne_bytes(entry);
    let present = entry >> 63 == 1;
    let pfn = entry & ((1 << 55) - 1);
    if !present || pfn == 0 {
        return Err(CalibrationError::Pagemap("page frame numbers are hidden".into()));
    }
    Ok(pfn * 4096 + (addr % 4096) as u64)
}

/// Find the direct-map base. Returns the base and the paging levels.
pub fn find_direct_map(channel: &mut RequestChannel<'_>) -> Result<(u64, u64), CalibrationError> {
    if std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.split_whitespace().any(|w| w == "la57")) {
        // The CPU can do 5-level paging; the kernel may or may not use it.
        // Only the 4-level layout is calibrated; a miss below says so.
        tracing::debug!("CPU supports la57");
    }
    let page = AnonMapping::new(4096)?;
    let magic = [random_u64()?, random_u64()?];
    // SAFETY: writes inside our own page; this also faults it in.
    unsafe {
        page.base().cast::<u64>().write_volatile(magic[0]);
        page.base().cast::<u64>().add(1).write_volatile(magic[1]);
        // Keep the page where it is while the kernel searches for it.
        libc::mlock(page.base().cast(), 4096);
    }
    let physical = physical_address(page.base() as usize)?;
    // The direct map is the lowest randomised kernel region, so it begins in
    // the first present top-level slot at or above its lowest possible base;
    // KASLR aligns it to 1 GiB: at most 512 candidates in that slot. (A
    // linear scan of the whole randomisation range also works but faults on
    // every unmapped candidate, which takes minutes under emulation.)
    let lowest_slot = (DIRECT_MAP_LOWEST_L4 >> 39) & 511;
    let slot = channel.ask(request::FIRST_KERNEL_SLOT, [lowest_slot, 0, 0, 0, 0, 0])?;
    if slot.status != 1 {
        return Err(CalibrationError::NotFound);
    }
    let slot_base = 0xffff_0000_0000_0000 | (slot.result << 39);
    let mut first = slot_base.max(DIRECT_MAP_LOWEST_L4);
    let mut remaining = (slot_base + (512 * GIB) - first) / GIB;
    while remaining > 0 {
        let count = remaining.min(CANDIDATES_PER_REQUEST);
        let answer = channel.ask(request::FIND_DIRECT_MAP, [physical, magic[0], magic[1], first, GIB, count])?;
        if answer.result != 0 {
            return Ok((answer.result, 4));
        }
        first += count * GIB;
        remaining -= count;
    }
    if std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.split_whitespace().any(|w| w == "la57")) {
        return Err(CalibrationError::FiveLevel);
    }
    Err(CalibrationError::NotFound)
}

/// Check the walk against a region whose PTE tables the agent knows: of four
/// 2 MiB spans, three are touched (one table each) and one is not.
pub fn self_test(channel: &mut RequestChannel<'_>) -> Result<(), CalibrationError> {
    let mapping = AnonMapping::spans(4)?;
    let start = mapping.aligned_start() as usize;
    for span in [0, 1, 3] {
        mapping.touch(span * SPAN, 4096);
    }
    let cases: [(usize, usize, u64); 3] = [
        // Whole region: three tables.
        (start, 4 * SPAN, 3),
        // Half a span on each side: covers span 1 and 2 completely: one table.
        (start + SPAN / 2, 3 * SPAN, 1),
        // Less than one whole span: nothing can be reclaimed there.
        (start + SPAN / 2, SPAN, 0),
    ];
    for (from, len, expected) in cases {
        let answer = channel.ask(request::COUNT_PTE_TABLES, [from as u64, len as u64, 0, 0, 0, 0])?;
        if answer.status != 1 || answer.result != expected {
            return Err(CalibrationError::SelfTest(format!(
                "expected {expected} PTE tables, the walk found {} (status {})",
                answer.result, answer.status
            )));
        }
    }
    Ok(())
}
