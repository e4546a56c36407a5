//! Command implementations behind the `lrc` CLI.

pub mod bench;
pub mod parity;
