//! `lrc eval-clusters`: how well a Local Region Contrast model's pixel embeddings reproduce the
//! Felzenszwalb regions of CT slices (thesis section 4.3.1, table 4.1): k-means on the
//! embeddings of each slice with k = its number of regions, then AMI and ARI of the clusters
//! against the regions, averaged over slices; beside it the same for the model's random
//! initialisation.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use crate::autograd::Tape;
use crate::data::crop::{pad_to_multiple, unpad};
use crate::data::intensity::Normalization;
use crate::data::store::SliceStore;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::metrics::eval_clusters::eval_clusters;
use crate::nn::{ContrastModel, ParamStore, UNetConfig};
use crate::rng::Rng;
use crate::superpixel::{CleanupConfig, SuperpixelConfig, regions_for_slice};
use crate::tensor::Tensor;
use crate::train::pretrain::PretrainState;

/// The thesis' table 4.1 (50 slices of 5 Abdomen-1k validation volumes), for comparison.
pub const THESIS_AMI: f64 = 0.791;
pub const THESIS_ARI: f64 = 0.794;

/// Options of `lrc eval-clusters`.
#[derive(Args, Debug, Clone)]
pub struct EvalClustersArgs {
    /// Pre-training checkpoint with a local head (`lrc pretrain local` or `joint`).
    #[arg(short, long)]
    pub model: PathBuf,
    /// Slice store to draw slices from (its stored regions, or regions computed per slice).
    #[arg(long)]
    pub data: PathBuf,
    /// Number of slices, spread evenly over the cases (the thesis: 10 from each of 5 volumes).
    #[arg(long, default_value_t = 50)]
    pub slices: usize,
    /// Case names to draw from, comma-separated (default: every case of the store).
    #[arg(long, value_delimiter = ',')]
    pub cases: Vec<String>,
    /// Seed of the slice draw and of k-means.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Result JSON (default: beside the model, MODEL.clusters.json).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Skip the randomly initialised baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
}

/// Where the reference regions of the store's slices come from.
#[derive(Clone, Debug)]
pub enum RegionSource {
    /// The region maps stored with the slices.
    Stored,
    /// Computed per slice with this configuration (a store prepared without regions).
    Computed(SuperpixelConfig),
}

impl RegionSource {
    /// Stored regions when the store has them; otherwise the default superpixel configuration
    /// on the store's HU window, which needs the store's `ct` normalisation (a z-scored slice
    /// has no fixed HU scale for the clean-up's body threshold).
    pub fn for_store(store: &SliceStore) -> Result<RegionSource> {
        let config = store.config();
        if config.regions {
            return Ok(RegionSource::Stored);
        }
        match config.normalization {
            Normalization::Ct { lo, hi } => Ok(RegionSource::Computed(SuperpixelConfig {
                cleanup: CleanupConfig {
                    hu_window: (lo, hi),
                    ..CleanupConfig::default()
                },
                ..SuperpixelConfig::default()
            })),
            Normalization::ZScore { .. } => Err(Error::format(
                store.dir(),
                "the store has no region maps and its z-score normalisation does not allow computing \
                 them here; prepare it with regions or with --norm ct",
            )),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            RegionSource::Stored => "stored",
            RegionSource::Computed(_) => "computed",
        }
    }

    /// The region map of slice `i`.
    pub fn regions(&self, store: &SliceStore, i: usize) -> Result<Vec<u16>> {
        let view = store.slice(i);
        match self {
            RegionSource::Stored => view.regions.map(<[u16]>::to_vec).ok_or_else(|| {
                Error::format(
                    store.dir(),
                    format!("slice {i} has no region map although the store says it has"),
                )
            }),
            RegionSource::Computed(cfg) => Ok(regions_for_slice(view.image, view.h, view.w, cfg)),
        }
    }
}

/// A slice chosen for scoring, with its reference regions.
#[derive(Clone, Debug)]
pub struct ChosenSlice {
    /// Global index in the store.
    pub index: usize,
    pub case: String,
    /// Slice within its case.
    pub z: usize,
    pub regions: Vec<u16>,
    /// Number of distinct regions > 0: k of k-means.
    pub k: usize,
}

fn distinct_regions(regions: &[u16]) -> usize {
    let mut seen = vec![false; u16::MAX as usize + 1];
    let mut k = 0;
    for &r in regions {
        if r > 0 && !seen[r as usize] {
            seen[r as usize] = true;
            k += 1;
        }
    }
    k
}

/// Draws up to `n` slices with at least two regions from the named cases (all cases when
/// `case_names` is empty), spread evenly over them: each case's slices are shuffled with
/// `seed`, and the cases take turns giving their next slice until `n` are chosen or all are
/// used. Slices with fewer than two regions are passed over (one cluster agrees trivially).
/// The result is in store order.
pub fn choose_slices(
    store: &SliceStore,
    case_names: &[String],
    n: usize,
    seed: u64,
    source: &RegionSource,
) -> Result<Vec<ChosenSlice>> {
    let records = store.cases();
    let mut case_indices = Vec::new();
    if case_names.is_empty() {
        case_indices.extend(0..records.len());
    } else {
        for name in case_names {
            match records.iter().position(|r| &r.name == name) {
                Some(c) if !case_indices.contains(&c) => case_indices.push(c),
                Some(_) => {}
                None => {
                    let known: Vec<&str> = records.iter().take(10).map(|r| r.name.as_str()).collect();
                    return Err(Error::format(
                        store.dir(),
                        format!(
                            "no case named {name:?} in the store (cases: {}{})",
                            known.join(", "),
                            if records.len() > 10 { ", ..." } else { "" }
                        ),
                    ));
                }
            }
        }
    }
    let rng = Rng::new(seed);
    let mut queues: Vec<(usize, Vec<usize>)> = case_indices
        .iter()
        .map(|&c| {
            let mut order: Vec<usize> = store.case_range(c).collect();
            rng.fork(c as u64).shuffle(&mut order);
            // Popped from the back.
            order.reverse();
            (c, order)
        })
        .collect();
    let mut chosen = Vec::with_capacity(n);
    while chosen.len() < n && queues.iter().any(|(_, q)| !q.is_empty()) {
        for (c, queue) in queues.iter_mut() {
            if chosen.len() == n {
                break;
            }
            while let Some(i) = queue.pop() {
                let regions = source.regions(store, i)?;
                let k = distinct_regions(&regions);
                if k >= 2 {
                    chosen.push(ChosenSlice {
                        index: i,
                        case: records[*c].name.clone(),
                        z: i - store.case_range(*c).start,
                        regions,
                        k,
                    });
                    break;
                }
            }
        }
    }
    chosen.sort_by_key(|s| s.index);
    Ok(chosen)
}

/// Unit pixel embeddings `[D, h, w]` of one normalised slice: padded (with `pad_value`) to the
/// U-Net's size multiple, run through the local head without gradients, padding cut away.
pub fn slice_embeddings(
    model: &ContrastModel,
    params: &ParamStore,
    unet: &UNetConfig,
    image: &[f32],
    h: usize,
    w: usize,
    pad_value: f32,
) -> Result<(Vec<f32>, usize)> {
    let (padded, pad) = pad_to_multiple(image, h, w, unet.size_multiple(), pad_value);
    let mut tape = Tape::no_grad();
    let bound = params.bind_frozen(&mut tape);
    // The slice goes where the parameters are; the embeddings come back for clustering.
    let device = params.params().first().map_or(Device::Cpu, |p| p.value.device());
    let x = Tensor::from_vec(vec![1, 1, pad.padded_h, pad.padded_w], padded)?.to_device(&device)?;
    let x = tape.constant(x);
    let e = model.forward_local(&mut tape, &bound, x)?;
    let value = tape.value(e);
    let d = value.shape()[1];
    let all = value.to_f32_vec()?;
    let plane = pad.padded_h * pad.padded_w;
    let mut out = Vec::with_capacity(d * h * w);
    for channel in all.chunks_exact(plane) {
        out.extend(unpad(channel, &pad));
    }
    Ok((out, d))
}

/// Scores of one slice.
#[derive(Clone, Debug, Serialize)]
pub struct SliceScore {
    pub case: String,
    pub z: usize,
    pub k: usize,
    pub ami: f64,
    pub ari: f64,
}

/// Scores of one model over the chosen slices.
#[derive(Clone, Debug, Serialize)]
pub struct ModelScores {
    /// `lrc` (the checkpoint) or `random` (its initial weights).
    pub model: String,
    /// Optimisation steps behind the weights (0 for the random initialisation).
    pub step: u64,
    /// Means over slices.
    pub ami: f64,
    pub ari: f64,
    /// Standard deviations over slices (population).
    pub ami_std: f64,
    pub ari_std: f64,
    pub slices: Vec<SliceScore>,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// k-means (seeded with `seed`) on the embeddings of every chosen slice against its regions.
#[allow(clippy::too_many_arguments)]
pub fn score_model(
    name: &str,
    step: u64,
    model: &ContrastModel,
    params: &ParamStore,
    unet: &UNetConfig,
    store: &SliceStore,
    slices: &[ChosenSlice],
    seed: u64,
    progress: &indicatif::ProgressBar,
) -> Result<ModelScores> {
    let mut scores = Vec::with_capacity(slices.len());
    for s in slices {
        let view = store.slice(s.index);
        // Name what is damaged before k-means meets it: the store's image, or the model.
        let where_ = format!("case {} slice {}", s.case, s.z);
        if view.image.iter().any(|v| !v.is_finite()) {
            return Err(Error::format(
                store.dir(),
                format!("{where_}: the image holds a non-finite value; the store is damaged (prepare it again)"),
            ));
        }
        let (emb, d) = slice_embeddings(model, params, unet, view.image, view.h, view.w, store.pad_value())?;
        if emb.iter().any(|v| !v.is_finite()) {
            return Err(Error::config(format!(
                "{name}: non-finite pixel embeddings on {where_} of {}; its weights are damaged",
                store.dir().display()
            )));
        }
        let c = eval_clusters(&emb, d, view.h, view.w, &s.regions, seed)?;
        scores.push(SliceScore {
            case: s.case.clone(),
            z: s.z,
            k: c.k,
            ami: c.ami,
            ari: c.ari,
        });
        progress.inc(1);
    }
    let (ami, ami_std) = mean_std(&scores.iter().map(|s| s.ami).collect::<Vec<_>>());
    let (ari, ari_std) = mean_std(&scores.iter().map(|s| s.ari).collect::<Vec<_>>());
    Ok(ModelScores {
        model: name.to_string(),
        step,
        ami,
        ari,
        ami_std,
        ari_std,
        slices: scores,
    })
}

/// What `lrc eval-clusters` writes to its JSON file.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterReport {
    pub checkpoint: PathBuf,
    pub store: PathBuf,
    pub seed: u64,
    pub slices_requested: usize,
    pub slices_scored: usize,
    /// `stored` (the store's region maps) or `computed` (default superpixels per slice).
    pub regions: &'static str,
    /// The checkpoint first, then the random initialisation unless skipped.
    pub models: Vec<ModelScores>,
}

/// The JSON file: `--json`, else `MODEL.clusters.json` beside the checkpoint.
pub fn json_path(args: &EvalClustersArgs) -> PathBuf {
    args.json
        .clone()
        .unwrap_or_else(|| args.model.with_extension("clusters.json"))
}

fn progress_bar(len: usize) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len as u64);
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} eval-clusters [{bar:32}] {pos}/{len} slices, {elapsed} elapsed, eta {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    pb.set_style(style);
    pb
}

/// Loads the checkpoint, draws the slices and scores the model and (unless `no_baseline`) its
/// random initialisation: the weights `PretrainState::new` gives for the checkpoint's own
/// configuration and seed, i.e. where its training started.
pub fn evaluate(args: &EvalClustersArgs) -> Result<ClusterReport> {
    if args.slices == 0 {
        return Err(Error::config("--slices must be at least 1"));
    }
    let device = super::device::select(args.device.as_deref())?;
    let state = PretrainState::load(&args.model)?;
    if state.model.embed.is_none() {
        return Err(Error::Checkpoint {
            path: args.model.clone(),
            msg: "a global (MoCo) pre-training checkpoint has no local head, so no pixel embeddings to \
                  cluster; use one from `lrc pretrain local` or `lrc pretrain joint`"
                .to_string(),
        });
    }
    let store = SliceStore::open(&args.data)?;
    let source = RegionSource::for_store(&store)?;
    let slices = choose_slices(&store, &args.cases, args.slices, args.seed, &source)?;
    if slices.is_empty() {
        return Err(Error::format(
            &args.data,
            "no slice of the chosen cases has two or more regions to cluster",
        ));
    }
    if slices.len() < args.slices {
        eprintln!(
            "note: only {} slice(s) with two or more regions are available; scoring those",
            slices.len()
        );
    }
    let unet = state.config.unet;
    let runs = if args.no_baseline { 1 } else { 2 };
    let progress = progress_bar(slices.len() * runs);
    let mut models = vec![score_model(
        "lrc",
        state.step,
        &state.model,
        &state.params.for_device(&device)?,
        &unet,
        &store,
        &slices,
        args.seed,
        &progress,
    )?];
    if !args.no_baseline {
        let init = PretrainState::new(state.config.clone())?;
        models.push(score_model(
            "random",
            0,
            &init.model,
            &init.params.for_device(&device)?,
            &unet,
            &store,
            &slices,
            args.seed,
            &progress,
        )?);
    }
    progress.finish_and_clear();
    Ok(ClusterReport {
        checkpoint: args.model.clone(),
        store: args.data.clone(),
        seed: args.seed,
        slices_requested: args.slices,
        slices_scored: slices.len(),
        regions: source.name(),
        models,
    })
}

/// The table printed by `lrc eval-clusters`.
pub fn table_text(report: &ClusterReport) -> String {
    let mut out = format!(
        "{:<26}  {:>6}  {:>15}  {:>15}\n",
        "model", "slices", "AMI (std)", "ARI (std)"
    );
    out.push_str(&"-".repeat(68));
    out.push('\n');
    for m in &report.models {
        let name = match m.model.as_str() {
            "lrc" => format!("LRC (step {})", m.step),
            _ => "random init. (same config)".to_string(),
        };
        out.push_str(&format!(
            "{name:<26}  {:>6}  {:>6.4} ({:.4})  {:>6.4} ({:.4})\n",
            m.slices.len(),
            m.ami,
            m.ami_std,
            m.ari,
            m.ari_std
        ));
    }
    out
}

fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Runs `lrc eval-clusters`.
pub fn run(args: EvalClustersArgs) -> Result<()> {
    let start = std::time::Instant::now();
    let path = json_path(&args);
    crate::output::refuse_overwriting_input(
        &path,
        &[
            &args.model,
            &args.data,
            &args.data.join("store.json"),
            &args.data.join("cases.jsonl"),
        ],
    )?;
    crate::output::check_writable(&path)?;
    let report = evaluate(&args)?;
    // The file first: printing can fail (a closed pipe), the result must not be lost with it.
    let text = serde_json::to_string_pretty(&report).map_err(|e| Error::format(&path, e.to_string()))?;
    std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))?;
    println!(
        "eval-clusters: {} on {} slice(s) of {} ({} regions), k-means seed {}",
        display_name(&args.model),
        report.slices_scored,
        args.data.display(),
        report.regions,
        args.seed
    );
    print!("{}", table_text(&report));
    println!("(thesis table 4.1, 50 Abdomen-1k slices: AMI {THESIS_AMI:.3}, ARI {THESIS_ARI:.3})");
    println!(
        "eval-clusters: wrote {} in {:.1} s",
        path.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
