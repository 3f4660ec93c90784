//! Counting PTE tables under a user address range by walking the mm's page
//! tables (x86_64 4- and 5-level layouts; on other architectures the walk is
//! compiled out and the agent never enables it, `ptwatch check` says why).
//!
//! Only the upper levels are read: a PMD entry that is present and not a
//! huge mapping points to a PTE table. The agent calibrates the direct-map
//! base (to turn table physical addresses into readable addresses) and
//! self-tests this walk at start-up before enabling it.

/// Bytes mapped by one PTE table (one PMD entry).
pub const PMD_SPAN: u64 = 1 << 21;

#[derive(Clone, Copy)]
pub struct TableCount {
    pub tables: u64,
    /// The walk covered the whole range (false: a read failed or the range
    /// has more populated regions than `MAX_WALK_REGIONS`).
    pub complete: bool,
}

#[cfg(not(any(bpf_target_arch = "aarch64", bpf_target_arch = "riscv64")))]
pub use x86_64::count_pte_tables;

/// No walk on this architecture: the caller falls back to `pgtables_bytes`
/// (the agent does not enable the walk here; see `ptwatch check`).
#[cfg(any(bpf_target_arch = "aarch64", bpf_target_arch = "riscv64"))]
#[inline(always)]
pub fn count_pte_tables(_config: crate::kernel::Config, _mm: u64, _start: u64, _end: u64) -> Option<TableCount> {
    None
}

#[cfg(not(any(bpf_target_arch = "aarch64", bpf_target_arch = "riscv64")))]
mod x86_64 {
    use core::ffi::c_void;

    use aya_ebpf::{
        helpers::generated::{bpf_loop, bpf_probe_read_kernel},
        macros::map,
        maps::PerCpuArray,
    };
    use ptwatch_common::MAX_WALK_REGIONS;

    use crate::kernel::Config;

    use super::{TableCount, PMD_SPAN};
    use crate::kernel::read_kernel;

    const PMD_SHIFT: u64 = 21;
    const PUD_SHIFT: u64 = 30;
    const P4D_SHIFT: u64 = 39;
    const PUD_SPAN: u64 = 1 << PUD_SHIFT;
    const ENTRIES: u64 = 512;
    /// `_PAGE_PRESENT` and `_PAGE_PSE` (a huge mapping at PMD/PUD level).
    const PRESENT: u64 = 1;
    const PSE_SHIFT: u64 = 7;
    /// Physical address bits of an entry (bits 12..51). Memory-encryption
    /// bits would break this; the start-up self-test catches that case.
    const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

    /// One PMD table's entries, copied in a single read (a stack buffer of
    /// 4 KiB is not allowed).
    #[map(name = "PMD_BUFFER")]
    static PMD_BUFFER: PerCpuArray<[u64; ENTRIES as usize]> = PerCpuArray::with_max_entries(1, 0);

    #[inline(always)]
    fn present(entry: u64) -> bool {
        entry & PRESENT != 0
    }

    #[inline(always)]
    fn points_to_table(entry: u64) -> bool {
        present(entry) && (entry >> PSE_SHIFT) & 1 == 0
    }

    /// Start of the next `span`-aligned block after `addr`.
    #[inline(always)]
    fn next_boundary(addr: u64, span: u64) -> u64 {
        (addr | (span - 1)).wrapping_add(1)
    }

    /// State shared with the `bpf_loop` callbacks. The loops run in
    /// callbacks because the verifier checks a callback once, whatever the
    /// trip count; open-coded nested loops over 512 PMD entries per region
    /// exceed its instruction budget.
    #[repr(C)]
    struct Walk {
        direct_map_base: u64,
        pgd: u64,
        five_level: u64,
        /// Next address to look at; the walk is done when it reaches `last`.
        addr: u64,
        last: u64,
        tables: u64,
        /// Set when a read failed: the count is then unusable.
        failed: u64,
        /// Entries of the current PMD table copied into `PMD_BUFFER`.
        copied: u64,
    }

    impl Walk {
        #[inline(always)]
        fn table_address(&self, entry: u64) -> u64 {
            self.direct_map_base.wrapping_add(entry & ADDRESS_MASK)
        }
    }

    /// PTE tables under the 2 MiB spans that `[start, end)` covers
    /// completely: the only tables a DONTNEED of that range can reclaim.
    #[inline(always)]
    pub fn count_pte_tables(config: Config, mm: u64, start: u64, end: u64) -> Option<TableCount> {
        let first = next_boundary(start.wrapping_sub(1), PMD_SPAN);
        let last = end & !(PMD_SPAN - 1);
        if end <= start || first >= last {
            return Some(TableCount { tables: 0, complete: true });
        }
        let mut walk = Walk {
            direct_map_base: config.direct_map_base(),
            pgd: read_kernel(mm, config.mm_pgd_offset())?,
            five_level: u64::from(config.pgtable_levels() == 5),
            addr: first,
            last,
            tables: 0,
            failed: 0,
            copied: 0,
        };
        // SAFETY: the callback matches bpf_loop's contract and only touches
        // `walk`, which outlives the call.
        unsafe { bpf_loop(MAX_WALK_REGIONS, visit_region as *mut c_void, (&raw mut walk).cast(), 0) };
        Some(TableCount { tables: walk.tables, complete: walk.addr >= walk.last && walk.failed == 0 })
    }

    /// One step of the walk: the rest of the current 1 GiB region, or a
    /// whole empty upper-level block. Returns 1 to stop.
    #[inline(never)]
    extern "C" fn visit_region(_index: u64, ctx: *mut c_void) -> i64 {
        // SAFETY: `ctx` is the `Walk` passed to bpf_loop.
        let walk = unsafe { &mut *ctx.cast::<Walk>() };
        let addr = walk.addr;
        if addr >= walk.last {
            return 1;
        }
        let pgdir_shift = if walk.five_level == 1 { 48 } else { P4D_SHIFT };
        let Some(mut entry) = read_kernel::<u64>(walk.pgd, ((addr >> pgdir_shift) & (ENTRIES - 1)) * 8) else {
            walk.failed = 1;
            return 1;
        };
        if !present(entry) {
            walk.addr = next_boundary(addr, 1 << pgdir_shift);
            return 0;
        }
        if walk.five_level == 1 {
            let Some(p4d_entry) =
                read_kernel::<u64>(walk.table_address(entry), ((addr >> P4D_SHIFT) & (ENTRIES - 1)) * 8)
            else {
                walk.failed = 1;
                return 1;
            };
            if !present(p4d_entry) {
                walk.addr = next_boundary(addr, 1 << P4D_SHIFT);
                return 0;
            }
            entry = p4d_entry;
        }
        let Some(pud_entry) = read_kernel::<u64>(walk.table_address(entry), ((addr >> PUD_SHIFT) & (ENTRIES - 1)) * 8)
        else {
            walk.failed = 1;
            return 1;
        };
        let boundary = next_boundary(addr, PUD_SPAN);
        let region_end = if boundary < walk.last { boundary } else { walk.last };
        if points_to_table(pud_entry) {
            // The PMD entries of [addr, region_end), in one read.
            let first = (addr >> PMD_SHIFT) & (ENTRIES - 1);
            let count = (region_end - addr) >> PMD_SHIFT;
            // Bounds the verifier can see: at most one table, from `first`.
            let count = if count > ENTRIES - first { ENTRIES - first } else { count };
            let source = walk.table_address(pud_entry) + first * 8;
            let Some(buffer) = PMD_BUFFER.get_ptr_mut(0) else {
                walk.failed = 1;
                return 1;
            };
            // SAFETY: `buffer` is this CPU's 4 KiB map value and the size is
            // at most 4 KiB; the helper tolerates any source address.
            let read = unsafe { bpf_probe_read_kernel(buffer.cast(), (count * 8) as u32, source as *const c_void) };
            if read != 0 {
                walk.failed = 1;
                return 1;
            }
            walk.copied = count;
            // SAFETY: as in count_pte_tables.
            unsafe { bpf_loop(count as u32, count_entry as *mut c_void, ctx, 0) };
        }
        walk.addr = region_end;
        0
    }

    /// Count copied PMD entry `index` if it points to a PTE table.
    #[inline(never)]
    extern "C" fn count_entry(index: u64, ctx: *mut c_void) -> i64 {
        // SAFETY: `ctx` is the `Walk` passed to bpf_loop.
        let walk = unsafe { &mut *ctx.cast::<Walk>() };
        if index >= walk.copied || index >= ENTRIES {
            return 1;
        }
        let Some(buffer) = PMD_BUFFER.get_ptr(0) else {
            walk.failed = 1;
            return 1;
        };
        // SAFETY: this CPU's map value, filled by visit_region; index < ENTRIES.
        let entry = unsafe { (*buffer)[index as usize] };
        walk.tables += u64::from(points_to_table(entry));
        0
    }
}
