//! The eBPF object, embedded at build time by `agent/build.rs`.

/// The object's bytes; empty when the binary was built in stub mode.
pub fn bytes() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ptwatch"))
}
