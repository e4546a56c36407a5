//! `lrc finetune`: the combined model fine-tuned with Dice loss on labelled cases.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::data::store::SliceStore;
use crate::error::Result;
use crate::nn::{Branches, UNetConfig};
use crate::train::finetune::{FinetuneConfig, FinetuneOptions, Init, finetune};

/// Options of `lrc finetune`.
#[derive(Args, Debug, Clone)]
pub struct FinetuneArgs {
    /// Slice store of labelled cases (written by `lrc prep`).
    #[arg(long)]
    pub data: PathBuf,
    /// Labelled cases used for training (the first N by name).
    #[arg(long)]
    pub train_cases: usize,
    /// Held-out cases for validation Dice and early stopping (the last N by name).
    #[arg(long, default_value_t = 2)]
    pub val_cases: usize,
    /// Global (MoCo) pre-training checkpoint for the global branch's encoder.
    #[arg(long)]
    pub global: Option<PathBuf>,
    /// Local (LRC) pre-training checkpoint for the local U-Net.
    #[arg(long)]
    pub local: Option<PathBuf>,
    /// Output: the best model (by validation Dice).
    #[arg(short, long)]
    pub out: PathBuf,
    /// Continue the run whose state is in OUT.state.
    #[arg(long)]
    pub resume: bool,
    /// Replace an existing OUT and OUT.state (without this, an existing one is an error).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// One U-Net instead of the two-branch combined model (no --global then).
    #[arg(long)]
    pub single_branch: bool,
    /// Epochs, each ending with validation.
    #[arg(long, default_value_t = 50)]
    pub epochs: usize,
    /// Optimizer steps per epoch.
    #[arg(long, default_value_t = 50)]
    pub steps_per_epoch: usize,
    /// Crops per step; also slices per validation forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Square crop side.
    #[arg(long, default_value_t = 256)]
    pub crop: usize,
    /// U-Net base width (doubling per level, capped at 512); that of the pre-trained checkpoints.
    #[arg(long, default_value_t = 32)]
    pub base: usize,
    /// U-Net levels; that of the pre-trained checkpoints.
    #[arg(long, default_value_t = 5)]
    pub depth: usize,
    /// Learning rate (Adam).
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Weight decay (L2, in the Adam update).
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Epochs without improvement before stopping.
    #[arg(long, default_value_t = 10)]
    pub patience: usize,
    /// Add cross-entropy with this weight to the Dice loss.
    #[arg(long, default_value_t = 0.0)]
    pub ce_weight: f64,
    /// Leave the background out of the Dice loss.
    #[arg(long)]
    pub skip_background: bool,
    /// Seed of the new weights and the crops.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Metrics as JSON lines (default: next to --out).
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// cpu, cuda or cuda:N (default: a usable GPU, else the CPU).
    #[arg(long)]
    pub device: Option<String>,
    /// Print a per-range time table at the end.
    #[arg(long)]
    pub profile: bool,
}

impl FinetuneArgs {
    pub fn config(&self) -> FinetuneConfig {
        FinetuneConfig {
            unet: UNetConfig {
                base_width: self.base,
                depth: self.depth,
                ..UNetConfig::default()
            },
            branches: if self.single_branch {
                Branches::Single
            } else {
                Branches::Combined
            },
            init: Init {
                global: self.global.clone(),
                local: self.local.clone(),
            },
            train_cases: self.train_cases,
            val_cases: self.val_cases,
            epochs: self.epochs,
            steps_per_epoch: self.steps_per_epoch,
            batch: self.batch,
            crop: self.crop,
            lr: self.lr,
            weight_decay: self.weight_decay,
            patience: self.patience,
            ce_weight: self.ce_weight,
            skip_background: self.skip_background,
            seed: self.seed,
        }
    }
}

/// Runs `lrc finetune`.
pub fn run(args: FinetuneArgs) -> Result<()> {
    let device = super::device::select(args.device.as_deref())?;
    crate::profile::enable_for(args.profile, &device);
    let state = crate::train::finetune::state_path(&args.out);
    crate::output::refuse_replacing_run(&[&args.out, &state], args.resume, args.overwrite)?;
    let store = Arc::new(SliceStore::open(&args.data)?);
    let opts = FinetuneOptions {
        out: args.out.clone(),
        resume: args.resume,
        metrics: Some(
            args.metrics
                .clone()
                .unwrap_or_else(|| super::pretrain::metrics_beside(&args.out)),
        ),
        quiet: false,
        stop_after: None,
        device: device.clone(),
    };
    let s = finetune(store, args.config(), &opts)?;
    let kept = if s.best_val_dice.is_nan() {
        format!(
            "no validation cases, so the model is the last epoch's ({} of {})",
            s.best_epoch,
            s.epochs.len()
        )
    } else {
        format!(
            "best validation Dice {:.4} at epoch {} of {}",
            s.best_val_dice,
            s.best_epoch,
            s.epochs.len()
        )
    };
    println!(
        "finetune {}: {kept} in {:.1}s; wrote {}",
        s.init,
        s.seconds,
        args.out.display()
    );
    crate::profile::print_training_table(&device);
    Ok(())
}
