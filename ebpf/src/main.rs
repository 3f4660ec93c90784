//! ptwatch's kernel programs.
//!
//! One object serves every kernel: struct offsets and other kernel facts come
//! from the agent through [`KernelConfig`] (see `kernel.rs`), set before load.
//! Programs aggregate into maps; per-event records go to userspace only in
//! `ptwatch trace`'s own instance (`events.rs`).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic RMW intrinsics (see atomic.rs); eBPF is built with RUSTC_BOOTSTRAP=1.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod agent_request;
#[cfg(target_arch = "bpf")]
mod atomic;
#[cfg(target_arch = "bpf")]
mod context;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod dontneed;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod frees;
#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod pagetable;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves that no panic path is reachable; this only satisfies
    // the no_std linker.
    loop {}
}

/// GPL-compatible licence: `bpf_probe_read_kernel` is GPL-only.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// The crate only means something for the BPF target; a host build (e.g.
/// `cargo check --workspace`) gets an empty binary.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
