//! `lrc pretrain global|local|joint`: self-supervised pre-training on a slice store.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::data::store::SliceStore;
use crate::error::Result;
use crate::nn::UNetConfig;
use crate::train::pretrain::{Method, PretrainConfig, RunOptions, pretrain};

/// Options of `lrc pretrain`.
#[derive(Args, Debug, Clone)]
pub struct PretrainArgs {
    /// global (MoCo), local (LRC) or joint (both losses on one network).
    #[arg(value_enum)]
    pub method: Method,
    /// Slice store written by `lrc prep` (with --regions for local and joint).
    #[arg(long)]
    pub data: PathBuf,
    /// Output checkpoint; also the resumable state of the run.
    #[arg(short, long)]
    pub out: PathBuf,
    /// Continue the run saved in --out.
    #[arg(long)]
    pub resume: bool,
    /// Replace an existing --out (without this, an existing one is an error).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Optimizer steps.
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    /// Crops per step (global: queries, each with its key).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Square crop side.
    #[arg(long, default_value_t = 256)]
    pub crop: usize,
    /// U-Net base width (doubling per level, capped at 512).
    #[arg(long, default_value_t = 32)]
    pub base: usize,
    /// U-Net levels.
    #[arg(long, default_value_t = 5)]
    pub depth: usize,
    /// Learning rate (default: 0.03 for global with SGD, 1e-4 for local and joint with Adam).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Weight decay (L2, in the SGD or Adam update).
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Cosine learning-rate decay over the run.
    #[arg(long)]
    pub cosine: bool,
    /// Steps of linear learning-rate warm-up.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// Temperature of the contrastive losses (InfoNCE and the local loss).
    #[arg(long, default_value_t = 0.07)]
    pub temperature: f64,
    /// MoCo queue length (a multiple of the batch).
    #[arg(long, default_value_t = 4096)]
    pub queue: usize,
    /// Momentum of MoCo's key encoder.
    #[arg(long, default_value_t = 0.999)]
    pub key_momentum: f64,
    /// Leave negatives from the query's own volume out (neighbouring slices look alike).
    #[arg(long)]
    pub exclude_same_volume: bool,
    /// LRC pixel embedding size (default: the base width).
    #[arg(long)]
    pub embed_dim: Option<usize>,
    /// LRC samples per region.
    #[arg(long, default_value_t = 32)]
    pub samples: usize,
    /// LRC cap on regions per image.
    #[arg(long)]
    pub max_regions: Option<usize>,
    /// Renormalise LRC region means to unit length.
    #[arg(long)]
    pub renormalize_means: bool,
    /// Normalise only the sampled pixels, inside the fused local loss (the same loss, one pass
    /// over the embedding maps less).
    #[arg(long)]
    pub fuse_pixel_normalization: bool,
    /// Seed of the weights, crops, augmentation and sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Steps between saves of --out and its resumable state.
    #[arg(long, default_value_t = 200)]
    pub checkpoint_every: u64,
    /// Steps between log lines.
    #[arg(long, default_value_t = 50)]
    pub log_every: u64,
    /// Metrics as JSON lines (default: next to --out).
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// Print a per-range time table at the end.
    #[arg(long)]
    pub profile: bool,
}

impl PretrainArgs {
    pub fn config(&self) -> PretrainConfig {
        let mut c = PretrainConfig::thesis(self.method);
        c.unet = UNetConfig {
            base_width: self.base,
            depth: self.depth,
            ..UNetConfig::default()
        };
        c.steps = self.steps;
        c.batch = self.batch;
        c.crop = self.crop;
        c.seed = self.seed;
        if let Some(lr) = self.lr {
            c.lr = lr;
        }
        c.weight_decay = self.weight_decay;
        c.cosine = self.cosine;
        c.warmup_steps = self.warmup;
        c.temperature = self.temperature;
        c.queue = self.queue;
        c.key_momentum = self.key_momentum;
        c.exclude_same_case = self.exclude_same_volume;
        c.embed_dim = self.embed_dim.unwrap_or(self.base);
        c.samples = self.samples;
        c.max_regions = self.max_regions;
        c.renormalize_means = self.renormalize_means;
        c.fuse_pixel_normalization = self.fuse_pixel_normalization;
        c.checkpoint_every = self.checkpoint_every;
        c.log_every = self.log_every;
        c
    }
}

/// The metrics file beside an output: `out.safetensors` -> `out.metrics.jsonl`.
pub fn metrics_beside(out: &std::path::Path) -> PathBuf {
    out.with_extension("metrics.jsonl")
}

/// Runs `lrc pretrain`.
pub fn run(args: PretrainArgs) -> Result<()> {
    let device = super::device::select(args.device.as_deref())?;
    crate::profile::enable_for(args.profile, &device);
    crate::output::refuse_replacing_run(&[&args.out], args.resume, args.overwrite)?;
    let store = Arc::new(SliceStore::open(&args.data)?);
    let opts = RunOptions {
        out: args.out.clone(),
        resume: args.resume,
        metrics: Some(args.metrics.clone().unwrap_or_else(|| metrics_beside(&args.out))),
        quiet: false,
        stop_after: None,
        device: device.clone(),
    };
    let summary = pretrain(store, args.config(), &opts)?;
    if summary.steps == 0 {
        println!(
            "pretrain {:?}: {} has run all {} steps already; nothing to do",
            args.method,
            args.out.display(),
            args.steps
        );
        return Ok(());
    }
    println!(
        "pretrain {:?}: {} steps in {:.1}s, loss {:.4} -> {:.4}; wrote {}",
        args.method,
        summary.steps,
        summary.seconds,
        summary.first_loss.unwrap_or(f64::NAN),
        summary.last_loss,
        args.out.display()
    );
    crate::profile::print_training_table(&device);
    Ok(())
}
