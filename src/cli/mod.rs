//! Command implementations behind the `lrc` CLI.

pub mod prep;
pub mod synth;
