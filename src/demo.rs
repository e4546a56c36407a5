//! `lrc demo`: the whole method on built-in synthetic CT, end to end.
//!
//! Synthesises unlabelled abdomen volumes for pre-training and labelled sets for abdomen,
//! thorax and head-and-neck; prepares slice stores (with Felzenszwalb regions for pre-training);
//! pre-trains MoCo (global) and LRC (local); scores the LRC embeddings against the regions
//! (thesis table 4.1); fine-tunes the combined model from random, MoCo, LRC and LRC+MoCo
//! initialisations with few and with more labelled cases, predicts the held-out test volumes in
//! their original geometry and scores them (table 4.2); writes tables, JSON, learning curves
//! (figure 4.6) and overlays (figure 4.7). Steps whose outputs exist are skipped, so an
//! interrupted demo continues where it stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::cli::eval_clusters::slice_embeddings;
use crate::cli::predict::predict_volume;
use crate::data::dataset::discover;
use crate::data::nifti::{read_labels, read_volume};
use crate::data::prep::PrepConfig;
use crate::data::store::{SliceStore, StoreOptions, write_store};
use crate::data::synth::{DatasetOptions, Region, SynthConfig, write_dataset};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::metrics::dice::{dice_per_class, mean_present};
use crate::metrics::eval_clusters::eval_clusters;
use crate::nn::{ContrastModel, ParamStore, UNetConfig};
use crate::plot::{Series, line_chart, overlay_image, panel, series_color};
use crate::rng::Rng;
use crate::superpixel::{SuperpixelConfig, regions_for_slice};
use crate::train::finetune::{FinetuneConfig, FinetuneOptions, FinetuneSummary, Init, Segmenter, finetune};
use crate::train::pretrain::{Method, PretrainConfig, PretrainState, RunOptions, pretrain};

/// Sizes of one demo run.
#[derive(Clone, Debug, Serialize)]
pub struct Preset {
    pub name: &'static str,
    /// Synthetic volumes: in-plane size and slices.
    pub size: usize,
    pub slices: usize,
    pub pretrain_cases: usize,
    /// Labelled cases per region: `more` for training at most, `val` and `test` held out.
    pub few: usize,
    pub more: usize,
    pub val: usize,
    pub test: usize,
    /// Prepared spacing (z, y, x) mm.
    pub spacing: [f64; 3],
    pub unet: UNetConfig,
    pub crop: usize,
    pub global_steps: u64,
    pub local_steps: u64,
    pub pretrain_batch: usize,
    pub queue: usize,
    pub samples: usize,
    pub epochs: usize,
    pub steps_per_epoch: usize,
    pub finetune_batch: usize,
    /// Fine-tuning learning rate (the thesis' 1e-4 needs far more steps than a quick run has).
    pub finetune_lr: f64,
    /// Body regions fine-tuned and evaluated.
    #[serde(serialize_with = "region_names")]
    pub regions: Vec<Region>,
    pub patience: usize,
    /// Slices of held-out pre-training volumes scored by k-means (table 4.1).
    pub cluster_slices: usize,
}

impl Preset {
    /// Sized to finish in under 10 minutes on 2 CPU cores: the abdomen only, coarse 3 mm
    /// pixels and 8 mm slices, a small U-Net, short runs.
    pub fn quick() -> Preset {
        Preset {
            name: "quick",
            size: 128,
            slices: 20,
            pretrain_cases: 8,
            few: 2,
            more: 5,
            val: 1,
            test: 2,
            spacing: [8.0, 3.0, 3.0],
            unet: UNetConfig {
                in_channels: 1,
                base_width: 8,
                depth: 4,
                max_width: 512,
            },
            crop: 64,
            global_steps: 200,
            local_steps: 200,
            pretrain_batch: 8,
            queue: 256,
            samples: 16,
            epochs: 40,
            steps_per_epoch: 15,
            finetune_batch: 4,
            finetune_lr: 2e-3,
            regions: vec![Region::Abdomen],
            patience: 10,
            cluster_slices: 6,
        }
    }

    /// Sized for one GPU.
    pub fn full() -> Preset {
        Preset {
            name: "full",
            size: 256,
            slices: 48,
            pretrain_cases: 40,
            few: 3,
            more: 10,
            val: 2,
            test: 5,
            spacing: [2.5, 1.0, 1.0],
            unet: UNetConfig::default(),
            crop: 160,
            global_steps: 2000,
            local_steps: 2000,
            pretrain_batch: 16,
            queue: 4096,
            samples: 32,
            epochs: 30,
            steps_per_epoch: 40,
            finetune_batch: 8,
            finetune_lr: 1e-4,
            regions: REGIONS.to_vec(),
            patience: 8,
            cluster_slices: 10,
        }
    }
}

const REGIONS: [Region; 3] = [Region::Abdomen, Region::Thorax, Region::Head];
const INITS: [&str; 4] = ["random", "moco", "lrc", "lrc+moco"];

/// One fine-tuning result of table 4.2.
#[derive(Clone, Debug, Serialize)]
pub struct SegResult {
    pub region: String,
    pub regime: String,
    pub train_cases: usize,
    pub init: String,
    pub best_val_dice: f64,
    pub best_epoch: usize,
    /// Mean over test cases of the mean Dice over organs, in the original geometry.
    pub test_dice: f64,
    /// Mean Dice per organ over the test cases.
    pub per_organ: BTreeMap<String, f64>,
    pub curve: Vec<(usize, f64)>,
    pub seconds: f64,
}

/// One row of table 4.1.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterResult {
    pub model: String,
    pub ami: f64,
    pub ari: f64,
    pub slices: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct DemoReport {
    pub preset: Preset,
    pub clusters: Vec<ClusterResult>,
    pub segmentation: Vec<SegResult>,
    pub pretrain_seconds: f64,
    pub total_seconds: f64,
}

fn say(text: &str) {
    println!("[demo] {text}");
}

fn synth(dir: &Path, region: Region, cases: usize, unlabeled: bool, preset: &Preset, seed: u64) -> Result<()> {
    if dir.join("dataset.json").exists() {
        return Ok(());
    }
    let cfg = SynthConfig {
        region,
        slices: preset.slices,
        size: preset.size,
        seed,
    };
    let opts = DatasetOptions {
        cases,
        unlabeled,
        threads: 0,
        preview: false,
        progress: false,
    };
    write_dataset(&cfg, dir, &opts)
}

fn prep(src: &Path, dst: &Path, preset: &Preset, regions: bool) -> Result<SliceStore> {
    let dataset = discover(src)?;
    let mut cfg = PrepConfig {
        spacing: preset.spacing,
        ..PrepConfig::default()
    };
    if regions {
        let sp = SuperpixelConfig::default();
        cfg.regions = Some(Arc::new(move |img: &[f32], h: usize, w: usize| {
            regions_for_slice(img, h, w, &sp)
        }));
    }
    write_store(&dataset, dst, &cfg, &StoreOptions::default())?;
    SliceStore::open(dst)
}

fn pretrain_config(method: Method, preset: &Preset) -> PretrainConfig {
    let mut c = PretrainConfig::thesis(method);
    c.unet = preset.unet;
    c.steps = if method == Method::Global {
        preset.global_steps
    } else {
        preset.local_steps
    };
    c.batch = preset.pretrain_batch;
    c.crop = preset.crop;
    c.queue = preset.queue;
    c.embed_dim = preset.unet.base_width;
    c.samples = preset.samples;
    c.checkpoint_every = 50;
    c.log_every = 20;
    c
}

/// Table 4.1: k-means on pixel embeddings of held-out slices against their regions.
fn cluster_scores(
    store: &SliceStore,
    model_path: Option<&Path>,
    preset: &Preset,
    label: &str,
) -> Result<ClusterResult> {
    let (model, params) = match model_path {
        Some(p) => {
            let s = PretrainState::load(p)?;
            (s.model, s.params)
        }
        None => {
            let mut params = ParamStore::new();
            let m = ContrastModel::local(&mut params, preset.unet, preset.unet.base_width, &mut Rng::new(99))?;
            (m, params)
        }
    };
    // Slices from the last case (held out of nothing else, but it is the same for every model).
    let last = store.cases().len() - 1;
    let range = store.case_range(last);
    let picks: Vec<usize> = range
        .clone()
        .step_by((range.len() / preset.cluster_slices.max(1)).max(1))
        .collect();
    let (mut ari, mut ami, mut n) = (0.0, 0.0, 0usize);
    for &i in picks.iter().take(preset.cluster_slices) {
        let v = store.slice(i);
        let Some(regions) = v.regions else { continue };
        if regions.iter().filter(|&&r| r > 0).count() < 2 {
            continue;
        }
        let (emb, d) = slice_embeddings(&model, &params, &preset.unet, v.image, v.h, v.w, store.pad_value())?;
        let scores = eval_clusters(&emb, d, v.h, v.w, regions, 7)?;
        ari += scores.ari;
        ami += scores.ami;
        n += 1;
    }
    if n == 0 {
        return Err(Error::config("no held-out slice with regions to score"));
    }
    Ok(ClusterResult {
        model: label.to_string(),
        ami: ami / n as f64,
        ari: ari / n as f64,
        slices: n,
    })
}

/// Figure 4.7: the test slice with the most foreground, truth beside each model's prediction.
fn overlay_figure(data_dir: &Path, name: &str, models: &[(String, Segmenter)], out: &Path) -> Result<()> {
    let volume = read_volume(data_dir.join("imagesTr").join(format!("{name}_0000.nii.gz")))?;
    let truth = read_labels(data_dir.join("labelsTr").join(format!("{name}.nii.gz")))?;
    let [_, h, w] = volume.geometry.dims;
    let z = (0..volume.geometry.dims[0])
        .max_by_key(|&z| {
            truth.data[z * h * w..(z + 1) * h * w]
                .iter()
                .filter(|&&l| l > 0)
                .count()
        })
        .unwrap_or(0);
    let plane = z * h * w..(z + 1) * h * w;
    let gray = crate::data::png::window(&volume.data[plane.clone()], 40.0, 400.0);
    let mut images = vec![overlay_image(&gray, &truth.data[plane.clone()], h, w, 0.45)?];
    let mut captions = vec!["truth".to_string()];
    for (caption, seg) in models {
        let pred = predict_volume(seg, &volume, 8)?.data;
        images.push(overlay_image(&gray, &pred[plane.clone()], h, w, 0.45)?);
        captions.push(caption.clone());
    }
    let columns = images.len();
    panel(out, &images, columns, &captions)
}

/// Dice of a model on the test volumes, predicted and scored in their original geometry.
fn test_dice(seg: &Segmenter, data_dir: &Path, names: &[String]) -> Result<(f64, BTreeMap<String, f64>)> {
    let foreground: Vec<u32> = (1..seg.classes as u32).collect();
    let mut case_means = Vec::new();
    let mut per_organ: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for name in names {
        let img = data_dir.join("imagesTr").join(format!("{name}_0000.nii.gz"));
        let truth = read_labels(data_dir.join("labelsTr").join(format!("{name}.nii.gz")))?;
        let pred = predict_volume(seg, &read_volume(&img)?, 8)?.data;
        let scores = dice_per_class(&pred, &truth.data, &foreground)?;
        if let Some(m) = mean_present(&scores) {
            case_means.push(m);
        }
        for (c, s) in foreground.iter().zip(&scores) {
            if let Some(s) = s {
                let organ = seg
                    .label_names
                    .get(&(*c as u8))
                    .cloned()
                    .unwrap_or_else(|| format!("class {c}"));
                per_organ.entry(organ).or_default().push(*s);
            }
        }
    }
    let mean = |v: &[f64]| {
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    Ok((
        mean(&case_means),
        per_organ.into_iter().map(|(k, v)| (k, mean(&v))).collect(),
    ))
}

fn region_names<S: serde::Serializer>(regions: &[Region], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(regions.iter().map(|&r| region_name(r)))
}

fn region_name(r: Region) -> &'static str {
    match r {
        Region::Abdomen => "abdomen",
        Region::Thorax => "thorax",
        Region::Head => "head",
    }
}

/// Runs the whole demo into `out`.
pub fn run(out: &Path, preset: Preset, device: &Device) -> Result<DemoReport> {
    let start = Instant::now();
    let data = out.join("data");
    let stores = out.join("stores");
    let models = out.join("models");
    let results = out.join("results");
    std::fs::create_dir_all(&results).map_err(|e| Error::io(&results, e))?;

    say(&format!("preset {}: synthesising CT phantoms", preset.name));
    synth(
        &data.join("pretrain"),
        Region::Abdomen,
        preset.pretrain_cases,
        true,
        &preset,
        1000,
    )?;
    let labelled = preset.more + preset.val + preset.test;
    for (i, r) in preset.regions.iter().enumerate() {
        synth(
            &data.join(region_name(*r)),
            *r,
            labelled,
            false,
            &preset,
            2000 + i as u64,
        )?;
    }

    say("preparing slice stores (Felzenszwalb regions for pre-training)");
    let pre_store = Arc::new(prep(&data.join("pretrain"), &stores.join("pretrain"), &preset, true)?);
    let mut seg_stores = BTreeMap::new();
    for &r in &preset.regions {
        let name = region_name(r);
        seg_stores.insert(
            name,
            Arc::new(prep(&data.join(name), &stores.join(name), &preset, false)?),
        );
    }

    let t_pre = Instant::now();
    let mut ckpt = BTreeMap::new();
    for method in [Method::Global, Method::Local] {
        let path = models.join(format!(
            "pretrain-{}.safetensors",
            if method == Method::Global { "global" } else { "local" }
        ));
        let cfg = pretrain_config(method, &preset);
        let done = PretrainState::load(&path)
            .map(|s| s.step >= cfg.steps && s.config == cfg)
            .unwrap_or(false);
        if !done {
            say(&format!("pre-training {method:?} for {} steps", cfg.steps));
            let opts = RunOptions {
                out: path.clone(),
                resume: true,
                metrics: Some(results.join("metrics.jsonl")),
                quiet: false,
                stop_after: None,
                device: device.clone(),
            };
            let s = pretrain(pre_store.clone(), cfg, &opts)?;
            say(&format!(
                "  loss {:.4} -> {:.4} in {:.0}s",
                s.first_loss.unwrap_or(f64::NAN),
                s.last_loss,
                s.seconds
            ));
        }
        ckpt.insert(method, path);
    }
    let pretrain_seconds = t_pre.elapsed().as_secs_f64();

    say("scoring LRC embeddings against Felzenszwalb regions (table 4.1)");
    let clusters = vec![
        cluster_scores(&pre_store, None, &preset, "random init")?,
        cluster_scores(&pre_store, Some(&ckpt[&Method::Local]), &preset, "LRC")?,
    ];

    let mut segmentation = Vec::new();
    for &r in &preset.regions {
        let name = region_name(r);
        let store = &seg_stores[name];
        let mut cases: Vec<String> = store.cases().iter().map(|c| c.name.clone()).collect();
        cases.sort();
        let test_names: Vec<String> = cases[preset.more..preset.more + preset.test].to_vec();
        for (regime, n) in [("few", preset.few), ("more", preset.more)] {
            for init_name in INITS {
                let init = Init {
                    global: init_name.contains("moco").then(|| ckpt[&Method::Global].clone()),
                    local: init_name.contains("lrc").then(|| ckpt[&Method::Local].clone()),
                };
                let cfg = FinetuneConfig {
                    unet: preset.unet,
                    init,
                    train_cases: n,
                    val_cases: preset.val,
                    epochs: preset.epochs,
                    steps_per_epoch: preset.steps_per_epoch,
                    batch: preset.finetune_batch,
                    crop: preset.crop,
                    patience: preset.patience,
                    lr: preset.finetune_lr,
                    ..FinetuneConfig::thesis()
                };
                let path = models.join(format!("{name}-{regime}-{}.safetensors", init_name.replace('+', "-")));
                say(&format!("fine-tuning {name}, {n} labelled cases, init {init_name}"));
                let opts = FinetuneOptions {
                    out: path.clone(),
                    resume: true,
                    metrics: Some(results.join("metrics.jsonl")),
                    quiet: false,
                    stop_after: None,
                    device: device.clone(),
                };
                let summary: FinetuneSummary = finetune(store.clone(), cfg, &opts)?;
                let (seg, _) = Segmenter::load(&path)?;
                let (test, per_organ) = test_dice(&seg, &data.join(name), &test_names)?;
                segmentation.push(SegResult {
                    region: name.to_string(),
                    regime: regime.to_string(),
                    train_cases: n,
                    init: init_name.to_string(),
                    best_val_dice: summary.best_val_dice,
                    best_epoch: summary.best_epoch,
                    test_dice: test,
                    per_organ,
                    curve: summary.epochs.iter().map(|e| (e.epoch, e.val_dice)).collect(),
                    seconds: summary.seconds,
                });
            }
        }
        // Figure 4.6: validation Dice per epoch, more labelled cases, each initialisation.
        let series: Vec<Series> = segmentation
            .iter()
            .filter(|s| s.region == name && s.regime == "more")
            .enumerate()
            .map(|(i, s)| {
                Series::new(
                    s.init.clone(),
                    s.curve.iter().map(|&(e, d)| (e as f64, d)).collect(),
                    series_color(i),
                )
            })
            .collect();
        line_chart(
            results.join(format!("curves-{name}.png")),
            &format!("{name}: validation Dice, {} labelled cases", preset.more),
            "epoch",
            "Dice",
            &series,
        )?;
        let models_for_figure = ["random", "lrc+moco"]
            .iter()
            .map(|init| {
                let path = models.join(format!("{name}-more-{}.safetensors", init.replace('+', "-")));
                Ok((init.to_string(), Segmenter::load(&path)?.0))
            })
            .collect::<Result<Vec<_>>>()?;
        overlay_figure(
            &data.join(name),
            &test_names[0],
            &models_for_figure,
            &results.join(format!("overlay-{name}.png")),
        )?;
    }
    let report = DemoReport {
        preset,
        clusters,
        segmentation,
        pretrain_seconds,
        total_seconds: start.elapsed().as_secs_f64(),
    };
    write_report(&report, &results)?;
    Ok(report)
}

/// Tables shaped like thesis tables 4.1 and 4.2, as Markdown.
pub fn tables(report: &DemoReport) -> String {
    let mut t = String::new();
    t += "Table 4.1 - k-means on pixel embeddings vs Felzenszwalb regions (held-out slices)\n\n";
    t += "| model | AMI | ARI | slices |\n|---|---|---|---|\n";
    for c in &report.clusters {
        t += &format!("| {} | {:.4} | {:.4} | {} |\n", c.model, c.ami, c.ari, c.slices);
    }
    t += "\nTable 4.2 - test Dice (mean over organs, then cases) by initialisation\n\n";
    t += "| region | labelled cases |";
    for i in INITS {
        t += &format!(" {i} |");
    }
    t += "\n|---|---|";
    t += &"---|".repeat(INITS.len());
    t += "\n";
    let mut rows: Vec<(String, String, usize)> = report
        .segmentation
        .iter()
        .map(|s| (s.region.clone(), s.regime.clone(), s.train_cases))
        .collect();
    rows.dedup();
    for (region, regime, n) in rows {
        t += &format!("| {region} | {n} ({regime}) |");
        for i in INITS {
            let v = report
                .segmentation
                .iter()
                .find(|s| s.region == region && s.regime == regime && s.init == i);
            t += &match v {
                Some(s) => format!(" {:.4} |", s.test_dice),
                None => " - |".to_string(),
            };
        }
        t += "\n";
    }
    t
}

fn write_report(report: &DemoReport, dir: &Path) -> Result<PathBuf> {
    let json = dir.join("results.json");
    let text = serde_json::to_string_pretty(report).expect("report serialises");
    crate::checkpoint::write_atomic(&json, text.as_bytes())?;
    let md = dir.join("tables.md");
    crate::checkpoint::write_atomic(&md, tables(report).as_bytes())?;
    Ok(md)
}
