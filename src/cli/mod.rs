//! Command implementations behind the `lrc` CLI.

pub mod bench;
pub mod bench_superpixels;
pub mod demo;
pub mod device;
pub mod eval;
pub mod eval_clusters;
pub mod finetune;
pub mod parity;
pub mod predict;
pub mod prep;
pub mod pretrain;
pub mod superpixels;
pub mod synth;
