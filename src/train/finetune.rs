//! Fine-tuning the thesis' combined model for multi-organ segmentation: the global encoder
//! with a fresh decoder beside the LRC U-Net, their last features concatenated, a 1x1
//! convolution to the classes; soft Dice loss (cross-entropy optional), Adam; validation Dice
//! on held-out cases every epoch, early stopping, the best model kept.
//!
//! Files: `out` holds the best model (kind `lrc-seg`, with everything `lrc predict` needs:
//! configuration, label names, preprocessing); `out` + `.state` holds the latest state
//! (weights, optimizer, epoch, best so far) so that `resume` continues a killed run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::batch::{BatchKind, BatchSpec, Prefetcher};
use super::infer::segment_slices;
use super::log::RunLog;
use super::readback::LossReader;
use super::upload::BatchUpload;
use crate::autograd::Tape;
use crate::checkpoint::{self, BackgroundWriter};
use crate::data::store::{SliceStore, StoredConfig};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::metrics::dice::{dice_per_class, mean_present};
use crate::nn::{Branches, ParamStore, SegModel, UNetConfig};
use crate::ops::dice::DiceConfig;
use crate::ops::labels::Labels;
use crate::optim::{Optimizer, OptimizerKind};
use crate::profile;
use crate::rng::Rng;
use crate::tensor::Tensor;

pub const MODEL_KIND: &str = "lrc-seg";
const STATE_KIND: &str = "lrc-seg-state";

/// Which pre-trained weights initialise the model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Init {
    /// A global (MoCo) or joint pre-training checkpoint: its encoder goes into `global.enc`.
    pub global: Option<PathBuf>,
    /// A local (LRC) or joint checkpoint: its encoder and decoder go into `local.*`.
    pub local: Option<PathBuf>,
}

impl Init {
    pub fn name(&self) -> &'static str {
        match (&self.global, &self.local) {
            (None, None) => "random",
            (Some(_), None) => "moco",
            (None, Some(_)) => "lrc",
            (Some(_), Some(_)) => "lrc+moco",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneConfig {
    pub unet: UNetConfig,
    pub branches: Branches,
    pub init: Init,
    /// The first `train_cases` labelled cases (by name) train; the last `val_cases` validate.
    pub train_cases: usize,
    pub val_cases: usize,
    pub epochs: usize,
    pub steps_per_epoch: usize,
    pub batch: usize,
    pub crop: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Epochs without a better validation Dice before stopping.
    pub patience: usize,
    /// Weight of the cross-entropy added to the Dice loss (0: Dice only, as the thesis).
    pub ce_weight: f64,
    pub skip_background: bool,
    pub seed: u64,
}

impl FinetuneConfig {
    pub fn thesis() -> FinetuneConfig {
        FinetuneConfig {
            unet: UNetConfig::default(),
            branches: Branches::Combined,
            init: Init::default(),
            train_cases: 10,
            val_cases: 5,
            epochs: 50,
            steps_per_epoch: 50,
            batch: 8,
            crop: 256,
            lr: 1e-4,
            weight_decay: 1e-4,
            patience: 10,
            ce_weight: 0.0,
            skip_background: false,
            seed: 0,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.unet.validate()?;
        if self.epochs == 0 || self.steps_per_epoch == 0 || self.batch == 0 || self.train_cases == 0 {
            return Err(Error::config(
                "epochs, steps per epoch, batch and training cases must be positive",
            ));
        }
        if !self.crop.is_multiple_of(self.unet.size_multiple()) || self.crop == 0 {
            return Err(Error::config(format!(
                "crop {} must be a multiple of {}",
                self.crop,
                self.unet.size_multiple()
            )));
        }
        crate::optim::check_rates(self.lr, self.weight_decay)?;
        if !(self.ce_weight.is_finite() && self.ce_weight >= 0.0) {
            return Err(Error::config(format!(
                "the cross-entropy weight must be >= 0, got {}",
                self.ce_weight
            )));
        }
        Ok(())
    }
}

/// The labelled cases of a store split into (training, validation) case indices.
pub fn split_cases(store: &SliceStore, train: usize, val: usize) -> Result<(Vec<usize>, Vec<usize>)> {
    let mut labelled: Vec<(String, usize)> = store
        .cases()
        .iter()
        .enumerate()
        .filter(|(_, c)| c.labels.is_some())
        .map(|(i, c)| (c.name.clone(), i))
        .collect();
    labelled.sort();
    if train + val > labelled.len() {
        return Err(Error::config(format!(
            "{} holds {} labelled cases; {train} for training and {val} for validation do not fit",
            store.dir().display(),
            labelled.len()
        )));
    }
    let ids: Vec<usize> = labelled.into_iter().map(|(_, i)| i).collect();
    Ok((ids[..train].to_vec(), ids[ids.len() - val..].to_vec()))
}

/// A model with its weights and the metadata `lrc predict` needs.
pub struct Segmenter {
    pub config: FinetuneConfig,
    pub model: SegModel,
    pub params: ParamStore,
    pub classes: usize,
    pub label_names: BTreeMap<u8, String>,
    pub prep: StoredConfig,
}

impl Segmenter {
    fn build(
        config: FinetuneConfig,
        classes: usize,
        label_names: BTreeMap<u8, String>,
        prep: StoredConfig,
    ) -> Result<Self> {
        let mut params = ParamStore::new();
        let model = SegModel::new(
            &mut params,
            config.unet,
            config.branches,
            classes,
            &mut Rng::new(config.seed),
        )?;
        Ok(Segmenter {
            config,
            model,
            params,
            classes,
            label_names,
            prep,
        })
    }

    fn metadata(&self, kind: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("kind".to_string(), kind.to_string()),
            (
                "config".to_string(),
                serde_json::to_string(&self.config).expect("serialises"),
            ),
            ("classes".to_string(), self.classes.to_string()),
            (
                "label_names".to_string(),
                serde_json::to_string(&self.label_names).expect("serialises"),
            ),
            (
                "prep".to_string(),
                serde_json::to_string(&self.prep).expect("serialises"),
            ),
        ])
    }

    fn tensors(&self) -> Vec<(String, Tensor)> {
        self.params
            .params()
            .iter()
            .map(|p| (format!("model/{}", p.name), p.value.clone()))
            .collect()
    }

    pub fn save(&self, path: &Path, extra: &[(&str, String)]) -> Result<()> {
        checkpoint::save(path, &self.tensors(), &self.model_metadata(extra))
    }

    /// [`Segmenter::save`] through a background writer.
    pub fn save_with(&self, writer: &mut BackgroundWriter, path: &Path, extra: &[(&str, String)]) -> Result<()> {
        writer.save(path, &self.tensors(), &self.model_metadata(extra))
    }

    fn model_metadata(&self, extra: &[(&str, String)]) -> checkpoint::Metadata {
        let mut meta = self.metadata(MODEL_KIND);
        meta.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        meta
    }

    /// Loads a model written by `lrc finetune`; anything else is an error naming the file.
    pub fn load(path: &Path) -> Result<(Segmenter, BTreeMap<String, String>)> {
        let (tensors, meta) = checkpoint::load(path)?;
        Segmenter::from_parts(path, &tensors, meta, MODEL_KIND)
    }

    fn from_parts(
        path: &Path,
        tensors: &BTreeMap<String, Tensor>,
        meta: BTreeMap<String, String>,
        kind: &str,
    ) -> Result<(Segmenter, BTreeMap<String, String>)> {
        let bad = |msg: String| Error::Checkpoint { path: path.into(), msg };
        if meta.get("kind").map(String::as_str) != Some(kind) {
            return Err(bad(format!(
                "is not a segmentation model (kind {:?}, expected {kind})",
                meta.get("kind")
            )));
        }
        let field = |k: &str| meta.get(k).ok_or_else(|| bad(format!("metadata lacks {k}")));
        let parse_err = |k: &str, e: serde_json::Error| bad(format!("unreadable {k}: {e}"));
        let config: FinetuneConfig = serde_json::from_str(field("config")?).map_err(|e| parse_err("config", e))?;
        let classes: usize = field("classes")?.parse().map_err(|_| bad("bad class count".into()))?;
        let label_names = serde_json::from_str(field("label_names")?).map_err(|e| parse_err("label_names", e))?;
        let prep: StoredConfig = serde_json::from_str(field("prep")?).map_err(|e| parse_err("prep", e))?;
        prep.validate()
            .map_err(|e| bad(format!("its preprocessing record is unusable: {e}")))?;
        let mut seg = Segmenter::build(config, classes, label_names, prep).map_err(|e| bad(e.to_string()))?;
        super::pretrain::fill(&mut seg.params, tensors, "model/").map_err(|e| bad(e.to_string()))?;
        Ok((seg, meta))
    }

    /// Labels of whole slices (each `h * w`, normalised as `self.prep` says).
    pub fn segment(&self, slices: &[&[f32]], h: usize, w: usize, batch: usize) -> Result<Vec<Vec<u8>>> {
        let pad = self.prep.normalization.air();
        segment_slices(&self.model, &self.params, slices, h, w, batch, pad)
    }
}

/// A pre-trained checkpoint whose tensors do not fit the model being fine-tuned.
fn init_mismatch(path: &Path, e: Error) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        msg: format!("{e}: fine-tune with the U-Net options (--base, --depth) it was pre-trained with"),
    }
}

/// Copies pre-trained weights into the segmentation model as `init` says.
fn initialise(seg: &mut Segmenter, init: &Init) -> Result<()> {
    if let Some(path) = &init.global {
        if seg.config.branches != Branches::Combined {
            return Err(Error::config(
                "a global initialisation needs the combined model (two branches)",
            ));
        }
        let (tensors, _) = checkpoint::load(path)?;
        let n = seg
            .params
            .load_named(
                tensors.iter().map(|(k, v)| (k.as_str(), v)),
                "model/enc.",
                "global.enc.",
            )
            .map_err(|e| init_mismatch(path, e))?;
        if n == 0 {
            return Err(Error::Checkpoint {
                path: path.clone(),
                msg: "holds no encoder weights (model/enc.*)".into(),
            });
        }
    }
    if let Some(path) = &init.local {
        let (tensors, _) = checkpoint::load(path)?;
        let named = || tensors.iter().map(|(k, v)| (k.as_str(), v));
        let n = seg
            .params
            .load_named(named(), "model/enc.", "local.enc.")
            .and_then(|a| Ok(a + seg.params.load_named(named(), "model/dec.", "local.dec.")?))
            .map_err(|e| init_mismatch(path, e))?;
        if !tensors.keys().any(|k| k.starts_with("model/dec.")) || n == 0 {
            return Err(Error::Checkpoint {
                path: path.clone(),
                msg: "holds no U-Net decoder (model/dec.*): use a local (LRC) or joint pre-training checkpoint".into(),
            });
        }
    }
    Ok(())
}

/// The per-epoch record of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_dice: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FinetuneSummary {
    pub init: String,
    pub epochs: Vec<EpochRecord>,
    pub best_epoch: usize,
    pub best_val_dice: f64,
    pub seconds: f64,
}

pub struct FinetuneOptions {
    pub out: PathBuf,
    pub resume: bool,
    pub metrics: Option<PathBuf>,
    pub quiet: bool,
    /// Stop after this many epochs of this invocation (tests of resumption).
    pub stop_after: Option<usize>,
    /// Where the steps run.
    pub device: Device,
}

/// Where a run writing `out` keeps its resumable state: `OUT.state`.
pub fn state_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".state");
    PathBuf::from(s)
}

/// Mean over validation cases of the mean Dice over foreground classes present in the case's
/// truth or prediction, computed on the prepared grid.
pub fn validation_dice(seg: &Segmenter, store: &SliceStore, cases: &[usize], batch: usize) -> Result<f64> {
    let _range = profile::range("phase.validation");
    let foreground: Vec<u32> = (1..seg.classes as u32).collect();
    let mut per_case = Vec::new();
    for &case in cases {
        let range = store.case_range(case);
        let views: Vec<_> = range.map(|i| store.slice(i)).collect();
        let Some(first) = views.first() else { continue };
        let (h, w) = (first.h, first.w);
        let images: Vec<&[f32]> = views.iter().map(|v| v.image).collect();
        let pred: Vec<u8> = seg.segment(&images, h, w, batch)?.concat();
        let truth: Vec<u8> = views
            .iter()
            .flat_map(|v| v.labels.unwrap_or(&[]).iter().copied())
            .collect();
        if truth.len() != pred.len() {
            return Err(Error::config(format!("validation case {case} has no labels")));
        }
        let scores = dice_per_class(&pred, &truth, &foreground)?;
        if let Some(mean) = mean_present(&scores) {
            per_case.push(mean);
        }
    }
    Ok(if per_case.is_empty() {
        0.0
    } else {
        per_case.iter().sum::<f64>() / per_case.len() as f64
    })
}

/// Fine-tunes on `store` and returns the learning curve.
pub fn finetune(store: Arc<SliceStore>, config: FinetuneConfig, opts: &FinetuneOptions) -> Result<FinetuneSummary> {
    config.validate()?;
    let inits: Vec<&Path> = [&config.init.global, &config.init.local]
        .into_iter()
        .flatten()
        .map(PathBuf::as_path)
        .collect();
    crate::output::refuse_overwriting_input(&opts.out, &inits)?;
    crate::output::check_writable(&opts.out)?;
    let (train, val) = split_cases(&store, config.train_cases, config.val_cases)?;
    let classes = store
        .label_names()
        .keys()
        .copied()
        .max()
        .map_or(0, |m| m as usize + 1)
        .max(
            store
                .cases()
                .iter()
                .flat_map(|c| c.labels_present.iter().copied())
                .max()
                .map_or(0, |m| m as usize + 1),
        );
    if classes < 2 {
        return Err(Error::config(format!(
            "{} holds no foreground labels",
            store.dir().display()
        )));
    }
    let mut seg = Segmenter::build(
        config.clone(),
        classes,
        store.label_names().clone(),
        store.config().clone(),
    )?;
    let mut optimizer = Optimizer::new(OptimizerKind::adam(config.weight_decay));
    let mut records: Vec<EpochRecord> = Vec::new();
    // Each epoch's saves are written behind the next epoch's steps.
    let mut writer = BackgroundWriter::new();
    let (mut best, mut best_epoch, mut epoch0) = (f64::NEG_INFINITY, 0usize, 0usize);
    let state_file = state_path(&opts.out);
    if opts.resume && !state_file.exists() && opts.out.exists() {
        return Err(Error::Checkpoint {
            path: opts.out.clone(),
            msg: format!(
                "exists, but its run state {} does not, so there is nothing to resume; \
                 replace it with --overwrite, or write elsewhere",
                state_file.display()
            ),
        });
    }
    if opts.resume && state_file.exists() {
        let (tensors, meta) = checkpoint::load(&state_file)?;
        let (s, meta) = Segmenter::from_parts(&state_file, &tensors, meta, STATE_KIND)?;
        if s.config != config {
            return Err(Error::Checkpoint {
                path: state_file,
                msg: super::resume::refused(&super::resume::differences(&s.config, &config)),
            });
        }
        seg = s;
        let get = |k: &str| meta.get(k).cloned().unwrap_or_default();
        epoch0 = get("epoch").parse().unwrap_or(0);
        records = serde_json::from_str(&get("records")).unwrap_or_default();
        best = get("best").parse().unwrap_or(f64::NEG_INFINITY);
        best_epoch = get("best_epoch").parse().unwrap_or(0);
        optimizer.load_state(&seg.params, &tensors, "opt/", get("opt_step").parse().unwrap_or(0))?;
    } else {
        initialise(&mut seg, &config.init)?;
    }
    seg.params = seg.params.for_device(&opts.device)?;
    optimizer = optimizer.to_device(&opts.device)?;
    let pool: Vec<usize> = train.iter().flat_map(|&c| store.case_range(c)).collect();
    let spec = BatchSpec {
        kind: BatchKind::Segmentation,
        batch: config.batch,
        crop: (config.crop, config.crop),
        pool: Arc::new(pool),
        seed: config.seed,
    };
    spec.validate(&store)?;
    let name = format!("finetune-{}", config.init.name());
    let total = (config.epochs * config.steps_per_epoch) as u64;
    let mut log = RunLog::new(&name, total, opts.metrics.as_deref(), opts.quiet)?;
    let dice_cfg = DiceConfig {
        skip_background: config.skip_background,
        ..DiceConfig::default()
    };
    let last_epoch = opts
        .stop_after
        .map_or(config.epochs, |n| (epoch0 + n).min(config.epochs));
    let first_step = (epoch0 * config.steps_per_epoch) as u64;
    let mut batches = Prefetcher::new(
        store.clone(),
        spec,
        first_step,
        (last_epoch * config.steps_per_epoch) as u64,
        3,
    );
    let mut upload = BatchUpload::new(&opts.device)?;
    let mut loss_reader = LossReader::new(&opts.device)?;
    for epoch in epoch0..last_epoch {
        if best_epoch > 0 && epoch >= best_epoch + config.patience {
            log.line(&format!(
                "{name}: no better validation Dice for {} epochs; stopping",
                config.patience
            ));
            break;
        }
        let mut loss_sum = 0.0;
        for s in 0..config.steps_per_epoch {
            let step = (epoch * config.steps_per_epoch + s) as u64;
            let _step_range = profile::range("phase.step");
            let batch = batches.next(step)?;
            let labels = Labels::new(
                batch
                    .labels
                    .as_ref()
                    .ok_or_else(|| Error::config("fine-tuning batch without labels"))?,
            );
            let mut tape = Tape::new();
            let bound = seg.params.bind(&mut tape);
            let loss = {
                let _r = profile::range("phase.forward");
                // The batch's copies to the device: the images here, the labels once, by the
                // first loss (the others share that copy).
                let x = tape.constant(upload.upload(&batch.x)?);
                let logits = seg.model.forward(&mut tape, &bound, x)?;
                let dice = tape.dice_loss(logits, &labels, dice_cfg)?;
                if config.ce_weight > 0.0 {
                    let ce = tape.cross_entropy(logits, &labels)?;
                    let ce = tape.scale(ce, config.ce_weight)?;
                    tape.add(dice, ce)?
                } else {
                    dice
                }
            };
            loss_reader.queue(tape.value(loss))?;
            super::backward_and_update(tape, loss, &bound, &mut seg.params, &mut optimizer, config.lr)?;
            // Read once the whole step is queued: the GPU keeps working meanwhile.
            let value = loss_reader.value()?;
            super::check_loss(value, step + 1)?;
            loss_sum += value;
            log.step(step + 1, &format!("loss {value:.4}"));
            log.record("step", &[("step", (step + 1).into()), ("loss", value.into())])?;
        }
        let train_loss = loss_sum / config.steps_per_epoch as f64;
        let val_dice = if val.is_empty() {
            f64::NAN
        } else {
            validation_dice(&seg, &store, &val, config.batch)?
        };
        let improved = val.is_empty() || val_dice > best;
        let checkpoint_range = profile::range("phase.checkpoint");
        if improved {
            best = val_dice;
            best_epoch = epoch + 1;
            seg.save_with(
                &mut writer,
                &opts.out,
                &[("epoch", (epoch + 1).to_string()), ("val_dice", val_dice.to_string())],
            )?;
        }
        records.push(EpochRecord {
            epoch: epoch + 1,
            train_loss,
            val_dice,
        });
        log.record(
            "epoch",
            &[
                ("epoch", (epoch + 1).into()),
                ("train_loss", train_loss.into()),
                ("val_dice", val_dice.into()),
            ],
        )?;
        let validation = if val.is_empty() {
            "no validation cases: keeping the latest epoch".to_string()
        } else {
            format!("val dice {val_dice:.4} (best {best:.4} @ {best_epoch})")
        };
        log.line(&format!(
            "{name} epoch {}/{} loss {train_loss:.4} {validation} {:.1}s",
            epoch + 1,
            config.epochs,
            log.elapsed_s()
        ));
        let mut tensors: Vec<(String, Tensor)> = seg.tensors();
        tensors.extend(optimizer.state_tensors(&seg.params, "opt/"));
        let mut meta = seg.metadata(STATE_KIND);
        meta.insert("epoch".into(), (epoch + 1).to_string());
        meta.insert("best".into(), best.to_string());
        meta.insert("best_epoch".into(), best_epoch.to_string());
        meta.insert("opt_step".into(), optimizer.step.to_string());
        meta.insert("records".into(), serde_json::to_string(&records).expect("serialises"));
        writer.save(&state_file, &tensors, &meta)?;
        drop(checkpoint_range);
    }
    writer.wait()?;
    log.finish();
    if !opts.out.exists() {
        return Err(Error::Checkpoint {
            path: opts.out.clone(),
            msg: format!(
                "is missing, though its run state {} says the run is done (best epoch {best_epoch}); \
                 the best model cannot be rebuilt from the state: remove the state to train again",
                state_file.display()
            ),
        });
    }
    Ok(FinetuneSummary {
        init: config.init.name().to_string(),
        epochs: records,
        best_epoch,
        best_val_dice: best,
        seconds: log.elapsed_s(),
    })
}
