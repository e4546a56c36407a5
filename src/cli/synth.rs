//! `lrc synth`: write synthetic CT phantoms in the nnU-Net v2 layout.

use std::path::PathBuf;

use clap::Args;

use crate::data::synth::{DatasetOptions, Region, SynthConfig, write_dataset};
use crate::error::Result;

/// Options of `lrc synth`.
#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Output folder (imagesTr/, labelsTr/, dataset.json are written in it).
    #[arg(short, long)]
    pub out: PathBuf,
    /// Number of cases.
    #[arg(long, default_value_t = 8)]
    pub cases: usize,
    /// Body region: abdomen, thorax or head.
    #[arg(long, default_value = "abdomen", value_parser = parse_region)]
    pub region: Region,
    /// Master seed: the same seed gives the same cases.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write images only (no label maps).
    #[arg(long)]
    pub unlabeled: bool,
    /// Axial slices per case.
    #[arg(long, default_value_t = 64)]
    pub slices: usize,
    /// In-plane size in pixels (square slices).
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Worker threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Also write PNGs of each case's middle slice under preview/.
    #[arg(long)]
    pub preview: bool,
}

fn parse_region(s: &str) -> std::result::Result<Region, String> {
    s.parse().map_err(|e: crate::Error| e.to_string())
}

/// Runs `lrc synth`.
pub fn run(args: SynthArgs) -> Result<()> {
    let cfg = SynthConfig {
        region: args.region,
        slices: args.slices,
        size: args.size,
        seed: args.seed,
    };
    let opts = DatasetOptions {
        cases: args.cases,
        unlabeled: args.unlabeled,
        threads: args.threads,
        preview: args.preview,
        progress: true,
    };
    let start = std::time::Instant::now();
    write_dataset(&cfg, &args.out, &opts)?;
    println!(
        "synth: wrote {} {} case(s) of {} x {} x {} to {} in {:.1} s",
        args.cases,
        args.region,
        args.slices,
        args.size,
        args.size,
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
