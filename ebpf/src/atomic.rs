//! Atomic read-modify-write on map values.
//!
//! Rust's `bpfel-unknown-none` target declares no compare-and-swap, so
//! `AtomicU64` offers no `fetch_add`/`swap`; the intrinsics below lower to the
//! BPF atomic instructions directly (`lock xadd`, and with `--cpu=v3`, the
//! fetching `BPF_ADD|BPF_FETCH` and `BPF_XCHG`; kernel 5.12+).
use core::intrinsics::{atomic_xadd, atomic_xchg, atomic_xsub, AtomicOrdering};

/// `*field += value`, returning the previous value.
#[inline(always)]
pub fn fetch_add(field: *mut u64, value: u64) -> u64 {
    // SAFETY: callers pass pointers into live, 8-byte aligned map values.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, value) }
}

/// `*field -= value`, returning the previous value.
#[inline(always)]
pub fn fetch_sub(field: *mut u64, value: u64) -> u64 {
    // SAFETY: as for `fetch_add`.
    unsafe { atomic_xsub::<u64, u64, { AtomicOrdering::Relaxed }>(field, value) }
}

/// `*field = value`, returning the previous value.
#[inline(always)]
pub fn swap(field: *mut u64, value: u64) -> u64 {
    // SAFETY: as for `fetch_add`.
    unsafe { atomic_xchg::<u64, { AtomicOrdering::Relaxed }>(field, value) }
}
