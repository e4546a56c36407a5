//! `lrc demo`: the main job on built-in synthetic data.

use std::path::PathBuf;

use clap::Args;

use crate::demo::{Preset, run, tables};
use crate::device::Device;
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
}

/// Runs `lrc demo`.
pub fn run_args(args: DemoArgs) -> Result<()> {
    crate::profile::enable(args.profile);
    let preset = if args.quick {
        Preset::quick()
    } else if args.full {
        Preset::full()
    } else {
        match Device::best_available() {
            (Device::Cuda(d), _) => {
                println!(
                    "[demo] cuda:{} found, but training ops run on the CPU in this build: running the quick preset \
                     (--full forces the GPU-sized one)",
                    d.ordinal()
                );
                Preset::quick()
            }
            (Device::Cpu, why) => {
                println!(
                    "[demo] no usable GPU ({}): running the quick preset on the CPU (--full forces the GPU-sized one)",
                    why.unwrap_or_else(|| "none found".into())
                );
                Preset::quick()
            }
        }
    };
    let report = run(&args.out, preset)?;
    println!("\n{}", tables(&report));
    println!(
        "[demo] done in {:.0}s; results in {}",
        report.total_seconds,
        args.out.join("results").display()
    );
    crate::profile::print_training_table();
    Ok(())
}
