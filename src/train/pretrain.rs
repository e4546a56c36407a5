//! Self-supervised pre-training: MoCo global contrast, Local Region Contrast, or both at once
//! on one network (the thesis' proposed future work).
//!
//! One safetensors file is both the result and the resumable state: the network (`model/*`),
//! the MoCo key encoder (`key/*`) and queue (`queue/*`), the optimizer moments (`opt/*`) and, in
//! the metadata, the configuration and the step. It is rewritten atomically every
//! `checkpoint_every` steps, and `resume` continues from it; since every batch depends only on
//! (seed, step), a resumed run repeats an uninterrupted one step for step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::batch::{BatchKind, BatchSpec, Prefetcher};
use super::log::RunLog;
use super::moco::{KeyQueue, momentum_update};
use super::readback::LossReader;
use super::upload::BatchUpload;
use crate::augment::elastic::ElasticParams;
use crate::augment::intensity::IntensityParams;
use crate::autograd::Tape;
use crate::checkpoint::{self, BackgroundWriter};
use crate::data::store::SliceStore;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::{ContrastModel, ParamStore, UNetConfig};
use crate::ops::local_contrast::{LocalLossConfig, RegionSamples};
use crate::optim::{LrSchedule, Optimizer, OptimizerKind};
use crate::profile;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

pub const CHECKPOINT_KIND: &str = "lrc-pretrain";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// MoCo: encoder + GAP + projection, momentum key encoder, queue of negatives, InfoNCE.
    Global,
    /// LRC: U-Net pixel embeddings, region-sampled means, the local contrastive loss.
    Local,
    /// One network trained on the sum of both losses.
    Joint,
}

impl Method {
    pub fn has_global(self) -> bool {
        matches!(self, Method::Global | Method::Joint)
    }
    pub fn has_local(self) -> bool {
        matches!(self, Method::Local | Method::Joint)
    }
}

/// Largest MoCo queue (keys), feature size (projection or pixel embedding) and samples per region.
pub const MAX_QUEUE: usize = 1 << 20;
pub const MAX_FEATURES: usize = 4096;
pub const MAX_SAMPLES: usize = 4096;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    pub method: Method,
    pub unet: UNetConfig,
    pub steps: u64,
    pub batch: usize,
    /// Square training crop side.
    pub crop: usize,
    pub seed: u64,
    /// Learning rate; the thesis uses 0.03 (SGD) for global and 1e-4 (Adam) for local.
    pub lr: f64,
    pub weight_decay: f64,
    pub cosine: bool,
    pub warmup_steps: u64,
    pub temperature: f64,
    /// Global head: projection size, queue length, key encoder momentum.
    pub proj_dim: usize,
    pub queue: usize,
    pub key_momentum: f64,
    /// Leave negatives from the query's own volume out of InfoNCE.
    pub exclude_same_case: bool,
    /// Local head: embedding size D, samples per region N, cap on regions per image.
    pub embed_dim: usize,
    pub samples: usize,
    pub max_regions: Option<usize>,
    pub renormalize_means: bool,
    /// Normalise only the sampled pixels, inside the fused local loss, instead of every pixel
    /// before it (the same loss; it skips a pass over the embedding maps).
    #[serde(default)]
    pub fuse_pixel_normalization: bool,
    pub elastic_alpha: f32,
    pub elastic_sigma: f32,
    pub checkpoint_every: u64,
    pub log_every: u64,
}

impl PretrainConfig {
    /// The thesis' settings for `method`.
    pub fn thesis(method: Method) -> PretrainConfig {
        let unet = UNetConfig::default();
        let elastic = ElasticParams::default();
        PretrainConfig {
            method,
            unet,
            steps: 10_000,
            batch: 16,
            crop: 256,
            seed: 0,
            lr: if method == Method::Global { 0.03 } else { 1e-4 },
            weight_decay: 1e-4,
            cosine: false,
            warmup_steps: 0,
            temperature: 0.07,
            proj_dim: 128,
            queue: 4096,
            key_momentum: 0.999,
            exclude_same_case: false,
            embed_dim: unet.base_width,
            samples: 32,
            max_regions: None,
            renormalize_means: false,
            fuse_pixel_normalization: false,
            elastic_alpha: elastic.alpha,
            elastic_sigma: elastic.sigma,
            checkpoint_every: 500,
            log_every: 50,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.unet.validate()?;
        if self.steps == 0 || self.batch == 0 || self.crop == 0 {
            return Err(Error::config("steps, batch and crop must be positive"));
        }
        crate::optim::check_rates(self.lr, self.weight_decay)?;
        // Caps far above any useful setting, so that a mistyped size is an error rather than
        // an allocation the machine cannot make.
        for (name, value, most) in [
            ("--queue", self.queue, MAX_QUEUE),
            ("the projection size", self.proj_dim, MAX_FEATURES),
            ("--embed-dim", self.embed_dim, MAX_FEATURES),
            ("--samples", self.samples, MAX_SAMPLES),
        ] {
            if value > most {
                return Err(Error::config(format!(
                    "{name} {value} is more than the {most} supported"
                )));
            }
        }
        if self.max_regions.is_some_and(|k| k < 2) {
            return Err(Error::config(
                "--max-regions must be at least 2: the local loss contrasts each region with the others",
            ));
        }
        if !self.crop.is_multiple_of(self.unet.size_multiple()) {
            return Err(Error::config(format!(
                "crop {} must be a multiple of {} for a U-Net of depth {}",
                self.crop,
                self.unet.size_multiple(),
                self.unet.depth
            )));
        }
        if self.method.has_global() && (self.queue == 0 || !self.queue.is_multiple_of(self.batch)) {
            return Err(Error::config(format!(
                "the MoCo queue ({}) must be a positive multiple of the batch size ({})",
                self.queue, self.batch
            )));
        }
        if self.method.has_local() && (self.samples == 0 || self.embed_dim == 0) {
            return Err(Error::config("samples per region and embedding size must be positive"));
        }
        if !(0.0..=1.0).contains(&self.key_momentum) || self.temperature <= 0.0 {
            return Err(Error::config(
                "key momentum must lie in [0, 1] and the temperature be positive",
            ));
        }
        ElasticParams {
            alpha: self.elastic_alpha,
            sigma: self.elastic_sigma,
        }
        .validate()
    }

    fn optimizer(&self) -> OptimizerKind {
        match self.method {
            Method::Global => OptimizerKind::sgd(0.9, self.weight_decay),
            Method::Local | Method::Joint => OptimizerKind::adam(self.weight_decay),
        }
    }

    fn schedule(&self) -> LrSchedule {
        if self.cosine {
            LrSchedule::cosine(self.lr, self.warmup_steps, self.steps)
        } else {
            LrSchedule {
                warmup_steps: self.warmup_steps,
                ..LrSchedule::constant(self.lr)
            }
        }
    }

    /// What each pre-training batch holds for this configuration.
    pub fn batch_kind(&self) -> BatchKind {
        let elastic = ElasticParams {
            alpha: self.elastic_alpha,
            sigma: self.elastic_sigma,
        };
        let intensity = IntensityParams::default();
        match self.method {
            Method::Global => BatchKind::Moco { elastic, intensity },
            Method::Local => BatchKind::Lrc {
                elastic,
                n: self.samples,
                max_regions: self.max_regions,
            },
            Method::Joint => BatchKind::Joint {
                elastic,
                intensity,
                n: self.samples,
                max_regions: self.max_regions,
            },
        }
    }
}

/// One step's input: both views on the training device, the region samples (LRC) and each
/// image's case (MoCo's same-volume exclusion).
pub struct StepBatch<'a> {
    pub x: &'a Tensor,
    pub x_pos: &'a Tensor,
    pub samples: &'a [RegionSamples],
    pub cases: &'a [i64],
}

impl PretrainState {
    /// Queues one optimizer step on `batch` at learning rate `lr`: MoCo's momentum update and
    /// keys, the loss of the configured method, its backward pass, the update and the queue's
    /// new keys; the loss's value is queued for `loss_reader`, if given, right after the forward
    /// pass. Waits for nothing on a GPU. Does not advance `step`.
    pub fn queue_step(&mut self, batch: StepBatch, lr: f64, loss_reader: Option<&mut LossReader>) -> Result<()> {
        let method = self.config.method;
        let lcfg = LocalLossConfig {
            temperature: self.config.temperature,
            renormalize_means: self.config.renormalize_means,
            normalize_pixels: self.config.fuse_pixel_normalization,
        };
        // The per-pixel normalisation runs before the loss unless the loss does it on the samples.
        let normalize = !self.config.fuse_pixel_normalization;
        // MoCo: keys from the momentum encoder, updated before use as in the reference code.
        let keys = if let (Some(key), Some(_)) = (&mut self.key, &self.queue) {
            let _r = profile::range("phase.keys");
            momentum_update(key, &self.params, self.config.key_momentum)?;
            let mut kt = Tape::no_grad();
            let kp = key.bind_frozen(&mut kt);
            let xk = kt.constant(batch.x_pos.clone());
            let k = self.model.forward_global(&mut kt, &kp, xk)?;
            let k = kt.l2_normalize(k)?;
            Some(kt.value(k).clone())
        } else {
            None
        };
        let mut tape = Tape::new();
        let bound = self.params.bind(&mut tape);
        let loss = {
            let _r = profile::range("phase.forward");
            let xq = tape.constant(batch.x.clone());
            let global_loss = |tape: &mut Tape, q| -> Result<_> {
                let (keys, queue) = (keys.as_ref().expect("keys"), self.queue.as_ref().expect("queue"));
                let q = tape.l2_normalize(q)?;
                let k = tape.constant(keys.clone());
                let negatives = tape.constant(queue.negatives()?);
                let mask = self.config.exclude_same_case.then(|| queue.same_case_mask(batch.cases));
                tape.infonce_masked(q, k, negatives, self.config.temperature, mask)
            };
            match method {
                Method::Global => {
                    let q = self.model.forward_global(&mut tape, &bound, xq)?;
                    global_loss(&mut tape, q)?
                }
                Method::Local => {
                    let xp = tape.constant(batch.x_pos.clone());
                    let fq = self.model.forward_local_with(&mut tape, &bound, xq, normalize)?;
                    let fp = self.model.forward_local_with(&mut tape, &bound, xp, normalize)?;
                    tape.local_contrast_loss(fq, fp, batch.samples, lcfg)?
                }
                Method::Joint => {
                    let xp = tape.constant(batch.x_pos.clone());
                    let (q, fq) = self.model.forward_both_with(&mut tape, &bound, xq, normalize)?;
                    let fp = self.model.forward_local_with(&mut tape, &bound, xp, normalize)?;
                    let lg = global_loss(&mut tape, q)?;
                    let ll = tape.local_contrast_loss(fq, fp, batch.samples, lcfg)?;
                    tape.add(lg, ll)?
                }
            }
        };
        if let Some(reader) = loss_reader {
            reader.queue(tape.value(loss))?;
        }
        super::backward_and_update(tape, loss, &bound, &mut self.params, &mut self.optimizer, lr)?;
        if let (Some(queue), Some(k)) = (&mut self.queue, &keys) {
            queue.enqueue(k, batch.cases)?;
        }
        Ok(())
    }
}

/// Where a run stands: everything a checkpoint holds.
pub struct PretrainState {
    pub config: PretrainConfig,
    pub model: ContrastModel,
    pub params: ParamStore,
    pub key: Option<ParamStore>,
    pub queue: Option<KeyQueue>,
    pub optimizer: Optimizer,
    pub step: u64,
}

impl PretrainState {
    pub fn new(config: PretrainConfig) -> Result<PretrainState> {
        config.validate()?;
        let mut rng = Rng::new(config.seed);
        let mut params = ParamStore::new();
        let model = ContrastModel::new(
            &mut params,
            config.unet,
            config.method.has_global().then_some(config.proj_dim),
            config.method.has_local().then_some(config.embed_dim),
            &mut rng,
        )?;
        let (key, queue) = if config.method.has_global() {
            // MoCo starts its queue with random unit keys, tagged with no case.
            let mut queue = KeyQueue::new(config.queue, config.proj_dim)?;
            let mut qrng = rng.fork(1);
            for _ in 0..config.queue / config.batch {
                let keys = random_unit_rows(config.batch, config.proj_dim, &mut qrng);
                let keys = Tensor::from_vec(vec![config.batch, config.proj_dim], keys)?;
                queue.enqueue(&keys, &vec![-1; config.batch])?;
            }
            (Some(params.clone()), Some(queue))
        } else {
            (None, None)
        };
        let optimizer = Optimizer::new(config.optimizer());
        Ok(PretrainState {
            config,
            model,
            params,
            key,
            queue,
            optimizer,
            step: 0,
        })
    }

    /// Moves the model, key encoder, queue and optimizer state to `device`, where training runs.
    /// CUDA tensors hold f32.
    pub fn to_device(&mut self, device: &Device) -> Result<()> {
        self.params = self.params.for_device(device)?;
        if let Some(key) = &self.key {
            self.key = Some(key.for_device(device)?);
        }
        if let Some(queue) = &self.queue {
            self.queue = Some(queue.to_device(device)?);
        }
        self.optimizer = self.optimizer.to_device(device)?;
        Ok(())
    }

    /// Writes the state atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let (tensors, meta) = self.contents()?;
        checkpoint::save(path, &tensors, &meta)
    }

    /// [`PretrainState::save`] through a background writer.
    pub fn save_with(&self, writer: &mut BackgroundWriter, path: &Path) -> Result<()> {
        let (tensors, meta) = self.contents()?;
        writer.save(path, &tensors, &meta)
    }

    /// The tensors and metadata of the checkpoint.
    fn contents(&self) -> Result<(Vec<(String, Tensor)>, checkpoint::Metadata)> {
        let mut tensors: Vec<(String, Tensor)> = self
            .params
            .params()
            .iter()
            .map(|p| (format!("model/{}", p.name), p.value.clone()))
            .collect();
        if let Some(key) = &self.key {
            tensors.extend(
                key.params()
                    .iter()
                    .map(|p| (format!("key/{}", p.name), p.value.clone())),
            );
        }
        if let Some(queue) = &self.queue {
            let (keys, meta) = queue.state()?;
            tensors.push(("queue/keys".into(), keys));
            tensors.push(("queue/meta".into(), meta));
        }
        tensors.extend(self.optimizer.state_tensors(&self.params, "opt/"));
        let meta = BTreeMap::from([
            ("kind".to_string(), CHECKPOINT_KIND.to_string()),
            (
                "config".to_string(),
                serde_json::to_string(&self.config).expect("config serialises"),
            ),
            ("step".to_string(), self.step.to_string()),
        ]);
        Ok((tensors, meta))
    }

    /// Reads a state written by [`PretrainState::save`].
    pub fn load(path: &Path) -> Result<PretrainState> {
        let (tensors, meta) = checkpoint::load(path)?;
        let bad = |msg: String| Error::Checkpoint { path: path.into(), msg };
        if meta.get("kind").map(String::as_str) != Some(CHECKPOINT_KIND) {
            return Err(bad(format!(
                "not a pre-training checkpoint (kind {:?})",
                meta.get("kind")
            )));
        }
        let config: PretrainConfig = serde_json::from_str(meta.get("config").ok_or_else(|| bad("no config".into()))?)
            .map_err(|e| bad(format!("unreadable config: {e}")))?;
        let step: u64 = meta
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no step".into()))?;
        let mut state = PretrainState::new(config).map_err(|e| bad(e.to_string()))?;
        fill(&mut state.params, &tensors, "model/").map_err(|e| bad(e.to_string()))?;
        if let Some(key) = &mut state.key {
            fill(key, &tensors, "key/").map_err(|e| bad(e.to_string()))?;
        }
        if let Some(queue) = &mut state.queue {
            let (k, m) = (tensors.get("queue/keys"), tensors.get("queue/meta"));
            let (Some(k), Some(m)) = (k, m) else {
                return Err(bad("the MoCo queue is missing".into()));
            };
            queue.restore(k, m)?;
        }
        state.optimizer.load_state(&state.params, &tensors, "opt/", step)?;
        state.step = step;
        Ok(state)
    }
}

/// Copies `{prefix}{name}` into every parameter of `store`; all must be present with the same
/// shape.
pub fn fill(store: &mut ParamStore, tensors: &BTreeMap<String, Tensor>, prefix: &str) -> Result<()> {
    for p in store.params_mut() {
        let key = format!("{prefix}{}", p.name);
        let t = tensors
            .get(&key)
            .ok_or_else(|| Error::config(format!("{key} is missing")))?;
        if t.shape() != p.value.shape() {
            return Err(Error::config(format!(
                "{key} has shape {:?}, expected {:?}",
                t.shape(),
                p.value.shape()
            )));
        }
        p.value = t.to_dtype(DType::F32)?;
    }
    Ok(())
}

fn random_unit_rows(rows: usize, dim: usize, rng: &mut Rng) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * dim);
    for _ in 0..rows {
        let v: Vec<f64> = (0..dim).map(|_| rng.normal()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        out.extend(v.iter().map(|x| (x / norm) as f32));
    }
    out
}

/// What a finished run reports.
#[derive(Clone, Debug, Serialize)]
pub struct PretrainSummary {
    pub steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: f64,
    pub losses: Vec<(u64, f64)>,
    pub seconds: f64,
}

/// Options of one run that are not part of the model's configuration.
pub struct RunOptions {
    pub out: PathBuf,
    pub resume: bool,
    pub metrics: Option<PathBuf>,
    pub quiet: bool,
    /// Stop after this many steps of this invocation (tests of resumption).
    pub stop_after: Option<u64>,
    /// Where the steps run.
    pub device: Device,
}

/// Trains until `config.steps` (or from the checkpoint at `opts.out` when resuming).
pub fn pretrain(store: Arc<SliceStore>, config: PretrainConfig, opts: &RunOptions) -> Result<PretrainSummary> {
    crate::output::check_writable(&opts.out)?;
    let mut state = if opts.resume && opts.out.exists() {
        let mut s = PretrainState::load(&opts.out)?;
        // How often the run logs and saves does not change what it computes.
        s.config.log_every = config.log_every;
        s.config.checkpoint_every = config.checkpoint_every;
        if s.config != config {
            return Err(Error::Checkpoint {
                path: opts.out.clone(),
                msg: super::resume::refused(&super::resume::differences(&s.config, &config)),
            });
        }
        s
    } else {
        PretrainState::new(config)?
    };
    state.to_device(&opts.device)?;
    let device = opts.device.clone();
    let cfg = state.config.clone();
    let pool: Vec<usize> = (0..store.len()).collect();
    let spec = BatchSpec {
        kind: cfg.batch_kind(),
        batch: cfg.batch,
        crop: (cfg.crop, cfg.crop),
        pool: Arc::new(pool),
        seed: cfg.seed,
    };
    spec.validate(&store)?;
    let name = format!(
        "pretrain-{}",
        serde_json::to_value(cfg.method).expect("enum").as_str().unwrap_or("?")
    );
    let mut log = RunLog::new(&name, cfg.steps, opts.metrics.as_deref(), opts.quiet)?;
    log.set_position(state.step);
    let end = opts.stop_after.map_or(cfg.steps, |n| (state.step + n).min(cfg.steps));
    let mut batches = Prefetcher::new(store.clone(), spec, state.step, end, 3);
    let schedule = cfg.schedule();
    let mut summary = PretrainSummary {
        steps: 0,
        first_loss: None,
        last_loss: f64::NAN,
        losses: Vec::new(),
        seconds: 0.0,
    };
    let (mut window_sum, mut window_n) = (0.0, 0u64);
    let mut loss_reader = LossReader::new(&device)?;
    let mut upload = BatchUpload::new(&device)?;
    // Checkpoints are written behind the following steps.
    let mut writer = BackgroundWriter::new();
    while state.step < end {
        let step = state.step;
        let _step_range = profile::range("phase.step");
        let batch = batches.next(step)?;
        // The batch's one copy to the device.
        let x = upload.upload(&batch.x)?;
        let x_pos = upload.upload(
            batch
                .x_pos
                .as_ref()
                .ok_or_else(|| Error::config("pre-training batch without a positive view"))?,
        )?;
        state.queue_step(
            StepBatch {
                x: &x,
                x_pos: &x_pos,
                samples: &batch.samples,
                cases: &batch.cases,
            },
            schedule.lr(step),
            Some(&mut loss_reader),
        )?;
        // Read once the whole step is queued: the GPU keeps working meanwhile.
        let loss_value = loss_reader.value()?;
        super::check_loss(loss_value, step + 1)?;
        state.step += 1;
        summary.steps += 1;
        summary.first_loss.get_or_insert(loss_value);
        summary.last_loss = loss_value;
        window_sum += loss_value;
        window_n += 1;
        log.step(state.step, &format!("loss {loss_value:.4}"));
        log.record(
            "step",
            &[
                ("step", state.step.into()),
                ("loss", loss_value.into()),
                ("lr", schedule.lr(step).into()),
            ],
        )?;
        if state.step % cfg.log_every.max(1) == 0 || state.step == end {
            let mean = window_sum / window_n as f64;
            summary.losses.push((state.step, mean));
            log.line(&format!(
                "{name} step {}/{} loss {mean:.4} lr {:.2e} {:.1}s",
                state.step,
                cfg.steps,
                schedule.lr(step),
                log.elapsed_s()
            ));
            (window_sum, window_n) = (0.0, 0);
        }
        if state.step % cfg.checkpoint_every.max(1) == 0 || state.step == end {
            let _r = profile::range("phase.checkpoint");
            state.save_with(&mut writer, &opts.out)?;
        }
    }
    writer.wait()?;
    log.finish();
    summary.seconds = log.elapsed_s();
    Ok(summary)
}
