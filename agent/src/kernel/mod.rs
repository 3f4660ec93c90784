//! What the running kernel offers: BTF layouts, privileges, PT_RECLAIM
//! support, and the /proc and /sys readings the agent needs.
pub mod btf;
pub mod kallsyms;
pub mod mapping;
pub mod procfs;
pub mod support;
pub mod tracefs;
