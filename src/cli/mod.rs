//! Command implementations behind the `lrc` CLI.
