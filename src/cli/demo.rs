//! `lrc demo`: the main job on built-in synthetic data.

use std::path::PathBuf;

use clap::Args;

use crate::demo::{Preset, run, tables};
use crate::error::Result;

/// Options of `lrc demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Output folder (data, stores, models, results).
    #[arg(short, long, default_value = "lrc-demo")]
    pub out: PathBuf,
    /// The small preset (under 10 minutes on 2 CPU cores).
    #[arg(long)]
    pub quick: bool,
    /// The GPU-sized preset even without a usable GPU (slow on a CPU).
    #[arg(long, conflicts_with = "quick")]
    pub full: bool,
    /// Print a per-range time table at the end.
    #[arg(long)]
    pub profile: bool,
    /// cpu, cuda or cuda:N (default: a GPU when one can be used, else the CPU).
    #[arg(long)]
    pub device: Option<String>,
}

/// Runs `lrc demo`.
pub fn run_args(args: DemoArgs) -> Result<()> {
    let device = super::device::select(args.device.as_deref())?;
    crate::profile::enable_for(args.profile, &device);
    // The GPU-sized preset where a GPU trains, the quick one on the CPU, unless told otherwise.
    let preset = if args.quick {
        Preset::quick()
    } else if args.full || device.is_cuda() {
        Preset::full()
    } else {
        println!("[demo] training on the CPU: running the quick preset (--full forces the GPU-sized one)");
        Preset::quick()
    };
    println!("[demo] training on {device}");
    let report = run(&args.out, preset, &device)?;
    println!("\n{}", tables(&report));
    println!(
        "[demo] done in {:.0}s; results in {}",
        report.total_seconds,
        args.out.join("results").display()
    );
    crate::profile::print_training_table(&device);
    Ok(())
}
