//! The `lrc` command line: argument definitions and dispatch only.

use std::path::PathBuf;

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
    /// The whole method on built-in synthetic CT: synthesise, pre-train, fine-tune, evaluate.
    Demo(lrc::cli::demo::DemoArgs),
    /// Self-supervised pre-training: global (MoCo), local (LRC) or joint.
    Pretrain(lrc::cli::pretrain::PretrainArgs),
    /// Fine-tune the combined model with Dice loss, from random or pre-trained weights.
    Finetune(lrc::cli::finetune::FinetuneArgs),
    /// Segment CT volumes with a fine-tuned model; masks keep the input's geometry.
    Predict(lrc::cli::predict::PredictArgs),
    /// Benchmarks of the CUDA kernels.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Write the engine's outputs and gradients on fixed weights for scripts/torch_reference.py --check.
    Parity {
        /// Output safetensors file.
        #[arg(short, long, default_value = "parity.safetensors")]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Write synthetic CT phantoms (images, label maps, dataset.json) in the nnU-Net v2 layout.
    Synth(lrc::cli::synth::SynthArgs),
    /// Preprocess a folder of CT volumes into a memory-mapped slice store.
    Prep(lrc::cli::prep::PrepArgs),
    /// Dice per organ of predicted masks against reference masks, paired by case name.
    Eval(lrc::cli::eval::EvalArgs),
    /// AMI/ARI of k-means on LRC pixel embeddings against Felzenszwalb regions (thesis table 4.1).
    EvalClusters(lrc::cli::eval_clusters::EvalClustersArgs),
    /// Felzenszwalb superpixels of a CT volume's axial slices, written in the volume's geometry.
    Superpixels(lrc::cli::superpixels::SuperpixelsArgs),
}

fn main() {
    // Behave like other command-line tools when the reader of stdout goes away (`lrc ... | head`):
    // end quietly instead of panicking in println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    lrc::cli::keep_freed_memory();
    let cli = Cli::parse();
    let result: lrc::Result<()> = match cli.command {
        Command::Demo(args) => lrc::cli::demo::run_args(args),
        Command::Pretrain(args) => lrc::cli::pretrain::run(args),
        Command::Finetune(args) => lrc::cli::finetune::run(args),
        Command::Predict(args) => lrc::cli::predict::run_args(args),
        Command::Bench { what } => lrc::cli::bench::run(what),
        Command::Parity { out, seed } => lrc::cli::parity::export(&out, seed).map(|()| {
            println!(
                "wrote {}; check it with: python3 scripts/torch_reference.py --check {}",
                out.display(),
                out.display()
            )
        }),
        Command::Synth(args) => lrc::cli::synth::run(args),
        Command::Prep(args) => lrc::cli::prep::run(args),
        Command::Eval(args) => lrc::cli::eval::run(args),
        Command::EvalClusters(args) => lrc::cli::eval_clusters::run(args),
        Command::Superpixels(args) => lrc::cli::superpixels::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
