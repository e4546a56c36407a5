//! The `lrc` command line.

use clap::{Parser, Subcommand};

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
    /// Write synthetic CT phantoms (images, label maps, dataset.json) in the nnU-Net v2 layout.
    Synth(lrc::cli::synth::SynthArgs),
    /// Preprocess a folder of CT volumes into a memory-mapped slice store.
    Prep(lrc::cli::prep::PrepArgs),
}

fn main() {
    let cli = Cli::parse();
    let result: lrc::Result<()> = match cli.command {
        Command::Synth(args) => lrc::cli::synth::run(args),
        Command::Prep(args) => lrc::cli::prep::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
