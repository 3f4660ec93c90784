//! Atomic add on map values.
//!
//! Rust's `bpfel-unknown-none` target declares no compare-and-swap, so
//! `AtomicU64` offers no `fetch_add`; the intrinsic lowers to the BPF atomic
//! add instruction directly. The result is unused, so no fetching variant
//! (BPF ISA v3) is needed.
use core::intrinsics::{atomic_xadd, AtomicOrdering};

/// `*field += value`, atomically: per-process values are shared by threads
/// on several CPUs, and even a per-CPU value can see two programs interleave
/// on a preemptible kernel.
#[inline(always)]
pub fn add(field: *mut u64, value: u64) {
    // SAFETY: callers pass pointers into live, 8-byte aligned map values.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, value) };
}
