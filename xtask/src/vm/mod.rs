//! Real Debian kernels of several architectures in throw-away VMs, for
//! what this host cannot test: fentry/fexit and kprobes, older and newer
//! kernels, arm64 and riscv64.
//!
//! - `debian`: index formats and version order (pure);
//! - `arch`: architectures, boot methods, pinned CPU models and their
//!   page-table geometry;
//! - `kernel`: the kernel lines (arch × series) and the choice of the newest
//!   complete kernel of a line (pure);
//! - `apt`: a private apt state per architecture and suites;
//! - `fetch`: resolve, download, unpack and cache a kernel line;
//! - `tools`: host tools per architecture (qemu, virtme-ng, virtiofsd);
//! - `guest`: the in-guest runner (steps → framed stream → parsed log);
//! - `boot`: boot a prepared kernel and run the steps (virtme-ng for
//!   x86_64, qemu with an initramfs for arm64 and riscv64);
//! - `cli`: `cargo xtask vm …`.
//!
//! See docs/vm-testing.md.

pub mod apt;
pub mod arch;
pub mod boot;
pub mod cli;
pub mod debian;
pub mod fetch;
pub mod guest;
pub mod kernel;
pub mod process;
pub mod tools;

pub use arch::{Arch, BootMethod, Cpu};
pub use boot::{run_steps, GuestRun, VmOptions, GUEST_FILES_DIR};
pub use cli::{run, VmCommand};
pub use fetch::{default_cache_dir, fetch_kernel, PreparedKernel};
pub use guest::Step;
pub use kernel::{KernelLine, Series};
pub use tools::ensure_vm_tools;
