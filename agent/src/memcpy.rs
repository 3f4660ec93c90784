//! The `memcpy` of the static x86_64 binary.
//!
//! musl's x86_64 `memcpy` copies with `rep movsq` after aligning the
//! destination one byte at a time (`movsb`), and ends the same way: right
//! for large blocks, slow for the short copies a scrape makes by the
//! hundred thousand (a label set of ~100 bytes, a number's digits).
//! Profiled at 10,000 series it was 28 % of the agent's CPU time, and the
//! static agent rendered in 3.7 ms where the same code linked with glibc
//! took 2.0 ms (docs/benchmarks.md, "The static x86_64 build's memcpy").
//!
//! [`copy`] is what glibc does for short copies: a fixed number of
//! unaligned loads and stores that may overlap each other (so any length
//! between two powers of two takes the same few instructions, with no
//! loop and no branch per byte), and `rep movsb` above 256 bytes, which
//! CPUs with ERMS (Intel since Ivy Bridge, recent AMD) run at full speed
//! for large blocks. The binary routes every call to `memcpy` here at
//! link time (`--wrap=memcpy`, set by `agent/build.rs`; `src/main.rs`
//! defines the wrapper; `cargo xtask build` fails if it is not linked in).
//! Nothing else changes: musl's other functions stay musl's.
//!
//! It must not call `memcpy` itself (which would now be itself): every
//! copy below has a constant size of at most 16 bytes, which the compiler
//! emits as plain moves, and the only loops have a constant count and are
//! unrolled (the built `__wrap_memcpy` calls nothing: checked in its
//! disassembly; a call to itself would crash every test at the first copy).

use std::ptr::{read_unaligned, write_unaligned};

/// Copy `len` bytes from `src` to `dst`, as C's `memcpy`.
///
/// # Safety
/// As `memcpy`: `src` readable and `dst` writable for `len` bytes, the two
/// ranges not overlapping (any pointers when `len` is 0).
#[inline]
pub unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: every access below lies within the first `len` bytes of
    // `src` or `dst` (each branch's smallest `len` covers its offsets),
    // which the caller guarantees.
    unsafe {
        match len {
            0 => {}
            1 => *dst = *src,
            2..=3 => both_ends::<u16>(dst, src, len),
            4..=7 => both_ends::<u32>(dst, src, len),
            8..=16 => both_ends::<u64>(dst, src, len),
            17..=32 => both_ends::<u128>(dst, src, len),
            33..=64 => {
                sixteens::<2>(dst, src, 0);
                sixteens::<2>(dst, src, len - 32);
            }
            65..=128 => {
                sixteens::<4>(dst, src, 0);
                sixteens::<4>(dst, src, len - 64);
            }
            129..=256 => {
                sixteens::<8>(dst, src, 0);
                sixteens::<8>(dst, src, len - 128);
            }
            _ => rep_movsb(dst, src, len),
        }
    }
}

/// The first and the last `size_of::<T>()` bytes (together all of them, for
/// `len` up to twice that): both loads before both stores.
#[inline(always)]
unsafe fn both_ends<T: Copy>(dst: *mut u8, src: *const u8, len: usize) {
    let tail = len - size_of::<T>();
    // SAFETY: `size_of::<T>() <= len`, so both ranges lie within `len`.
    unsafe {
        let first = read_unaligned(src.cast::<T>());
        let last = read_unaligned(src.add(tail).cast::<T>());
        write_unaligned(dst.cast::<T>(), first);
        write_unaligned(dst.add(tail).cast::<T>(), last);
    }
}

/// `N` 16-byte blocks from `offset` on, unrolled (`N` is a constant).
#[inline(always)]
unsafe fn sixteens<const N: usize>(dst: *mut u8, src: *const u8, offset: usize) {
    let mut blocks = [0u128; N];
    // SAFETY: the caller's offset leaves `16 * N` bytes within `len`.
    unsafe {
        for (index, block) in blocks.iter_mut().enumerate() {
            *block = read_unaligned(src.add(offset + 16 * index).cast::<u128>());
        }
        for (index, block) in blocks.iter().enumerate() {
            write_unaligned(dst.add(offset + 16 * index).cast::<u128>(), *block);
        }
    }
}

#[inline(always)]
unsafe fn rep_movsb(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: copies `len` bytes forward from `src` to `dst` (the direction
    // flag is clear, as the ABI requires at every call).
    unsafe {
        std::arch::asm!(
            "rep movsb",
            inout("rcx") len => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::copy;

    /// Every length to 600 (each branch and its edges, and `rep movsb`),
    /// at every source and destination misalignment, leaving the bytes
    /// around the copy untouched.
    #[test]
    fn copies_exactly_the_bytes_asked_for() {
        let source: Vec<u8> = (0..700u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..600 {
            for src_offset in 0..8 {
                for dst_offset in 0..8 {
                    let mut target = vec![0xa5u8; 700];
                    // SAFETY: both ranges are within their vectors (offset
                    // < 8, len < 600, 700 long) and the vectors are distinct.
                    unsafe { copy(target.as_mut_ptr().add(dst_offset), source.as_ptr().add(src_offset), len) };
                    assert!(target[..dst_offset].iter().all(|&byte| byte == 0xa5), "before, len {len}");
                    assert_eq!(
                        &target[dst_offset..dst_offset + len],
                        &source[src_offset..src_offset + len],
                        "len {len}, offsets {src_offset}/{dst_offset}"
                    );
                    assert!(target[dst_offset + len..].iter().all(|&byte| byte == 0xa5), "after, len {len}");
                }
            }
        }
    }
}
