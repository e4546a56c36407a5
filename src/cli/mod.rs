//! Command implementations behind the `lrc` CLI.

pub mod bench;
pub mod parity;
pub mod predict;
pub mod prep;
pub mod synth;
