//! The guest tests of the arm64 and riscv64 guests in one executable
//! (`xtask/src/vmtest/matrix.rs` lists them; `binaries.rs` builds this):
//! each file of `agent/tests/` a module, run one module at a time with
//! a `<module>::` filter. Their own executables are what the host and the
//! x86_64 guests run; for a cross build in the release profile, one
//! executable is one thin-LTO link instead of five.

#[path = "../empty_tables.rs"]
mod empty_tables;
#[path = "../kernels.rs"]
mod kernels;
#[path = "../pid_reuse.rs"]
mod pid_reuse;
#[path = "../scan.rs"]
mod scan;
#[path = "../trace.rs"]
mod trace;
