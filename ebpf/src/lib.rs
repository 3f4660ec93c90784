//! Empty library target: lets `agent/build.rs` declare a build-dependency on
//! this crate so cargo rebuilds the agent when the programs change. The
//! programs themselves are the `ptwatch` binary target (`src/main.rs`).
#![no_std]
