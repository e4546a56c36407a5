//! The `lrc` command line.

use clap::{Parser, Subcommand};
use lrc::cli::bench::BenchWhat;

#[derive(Parser)]
#[command(
    name = "lrc",
    version,
    about = "Self-supervised contrastive pre-training (MoCo + Local Region Contrast) of 2-D U-Nets for CT segmentation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks of the CUDA kernels.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

fn main() {
    let cli = Cli::parse();
    let result: lrc::Result<()> = match cli.command {
        Command::Bench { what } => lrc::cli::bench::run(what),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
