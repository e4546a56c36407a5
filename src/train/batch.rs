//! Batches for the three training stages, drawn from a slice store.
//!
//! A batch depends only on (seed, step): image `i` of step `step` draws from
//! `Rng::new(seed).fork(step).fork(i)`. So a resumed run sees exactly the batches an
//! uninterrupted one would, the images of a batch are built in parallel, and batches can be built
//! ahead on a background thread ([`Prefetcher`]) without changing the result.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rayon::prelude::*;

use crate::augment::elastic::{ElasticParams, random_field, warp_bilinear, warp_nearest};
use crate::augment::intensity::{IntensityParams, jitter};
use crate::data::crop::random_crop;
use crate::data::store::{SliceStore, SliceView};
use crate::error::{Error, Result};
use crate::ops::local_contrast::RegionSamples;
use crate::rng::Rng;
use crate::superpixel::sampling::sample_regions;
use crate::tensor::Tensor;

/// Images `[B, 1, h, w]` plus what each stage needs beside them.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The query view (MoCo, LRC) or the input (fine-tuning).
    pub x: Tensor,
    /// The positive view (MoCo key, LRC transformed view).
    pub x_pos: Option<Tensor>,
    /// LRC: sampled pixel indices of the regions present in both views.
    pub samples: Vec<RegionSamples>,
    /// Fine-tuning: class per pixel, `B * h * w`.
    pub labels: Option<Vec<u32>>,
    /// The case (volume) index of each image.
    pub cases: Vec<i64>,
}

/// What to build, and from which slices.
#[derive(Clone, Debug)]
pub enum BatchKind {
    /// MoCo: query = jitter(crop), key = jitter(elastic(crop)).
    Moco {
        elastic: ElasticParams,
        intensity: IntensityParams,
    },
    /// LRC: query = crop, positive = elastic(crop) with its regions warped alike; `n` samples
    /// per region, at most `max_regions` regions per image.
    Lrc {
        elastic: ElasticParams,
        n: usize,
        max_regions: Option<usize>,
    },
    /// Both of the above from the same crops (one model trained on both losses).
    Joint {
        elastic: ElasticParams,
        intensity: IntensityParams,
        n: usize,
        max_regions: Option<usize>,
    },
    /// Fine-tuning: crop and labels.
    Segmentation,
}

#[derive(Clone, Debug)]
pub struct BatchSpec {
    pub kind: BatchKind,
    pub batch: usize,
    pub crop: (usize, usize),
    /// Slices to draw from (indices into the store).
    pub pool: Arc<Vec<usize>>,
    pub seed: u64,
}

impl BatchSpec {
    pub fn validate(&self, store: &SliceStore) -> Result<()> {
        if self.batch == 0 || self.crop.0 == 0 || self.crop.1 == 0 {
            return Err(Error::config("batch size and crop must be positive"));
        }
        if self.pool.is_empty() {
            return Err(Error::config(format!(
                "no slices to train on in {}",
                store.dir().display()
            )));
        }
        let needs_regions = matches!(self.kind, BatchKind::Lrc { .. } | BatchKind::Joint { .. });
        let needs_labels = matches!(self.kind, BatchKind::Segmentation);
        let first = store.slice(self.pool[0]);
        if needs_regions && first.regions.is_none() {
            return Err(Error::config(format!(
                "{} holds no superpixel regions: prepare it with regions (lrc prep --regions)",
                store.dir().display()
            )));
        }
        if needs_labels && first.labels.is_none() {
            return Err(Error::config(format!(
                "{} holds no labels to fine-tune on",
                store.dir().display()
            )));
        }
        Ok(())
    }
}

fn to_tensor(data: Vec<f32>, b: usize, (h, w): (usize, usize)) -> Result<Tensor> {
    Tensor::from_vec(vec![b, 1, h, w], data)
}

/// Draws per image before a crop with fewer than two regions is accepted anyway.
const MAX_DRAWS: usize = 16;

fn has_two_regions(regions: &[u16]) -> bool {
    let mut first = None;
    for &r in regions.iter().filter(|&&r| r > 0) {
        match first {
            None => first = Some(r),
            Some(f) if f != r => return true,
            Some(_) => {}
        }
    }
    false
}

/// One image of a batch and what goes with it.
struct Item {
    case: i64,
    x: Vec<f32>,
    pos: Vec<f32>,
    labels: Vec<u32>,
    samples: Option<RegionSamples>,
}

/// An error naming the store and case when `labels` (a crop of `view`) hold a value its case
/// record does not list: the store's label planes are damaged, and the class count the model
/// was built with (from the records) would not cover them.
fn check_declared_labels(store: &SliceStore, view: &SliceView, labels: &[u8]) -> Result<()> {
    let record = store.case_record(view.case);
    let mut declared = [false; 256];
    declared[0] = true;
    for &l in &record.labels_present {
        declared[l as usize] = true;
    }
    match labels.iter().find(|&&l| !declared[l as usize]) {
        None => Ok(()),
        Some(&bad) => Err(Error::format(
            store.dir(),
            format!(
                "slice {} of case {:?} holds label {bad}, which its record does not list ({:?}): \
                 the store's label planes are damaged; prepare it again",
                view.z, record.name, record.labels_present
            ),
        )),
    }
}

/// Builds image `i` of a batch from its own generator (see [`build_batch`]).
fn build_item(store: &SliceStore, spec: &BatchSpec, mut rng: Rng) -> Result<Item> {
    let (ch, cw) = spec.crop;
    let pad = store.pad_value();
    let wants_regions = matches!(spec.kind, BatchKind::Lrc { .. } | BatchKind::Joint { .. });
    // A crop with fewer than two regions gives a local loss of exactly zero: draw again, a
    // bounded number of times (checked here per crop rather than by scanning the whole store up
    // front).
    let mut attempts = 0;
    let (view, crop) = loop {
        let index = spec.pool[rng.below(spec.pool.len() as u64) as usize];
        let view = store.slice(index);
        let crop = random_crop(&mut rng, &view, ch, cw, pad);
        attempts += 1;
        if !wants_regions || attempts >= MAX_DRAWS || crop.regions.as_deref().is_some_and(has_two_regions) {
            break (view, crop);
        }
    };
    let mut item = Item {
        case: view.case as i64,
        x: Vec::new(),
        pos: Vec::new(),
        labels: Vec::new(),
        samples: None,
    };
    match &spec.kind {
        BatchKind::Segmentation => {
            let l = crop
                .labels
                .as_ref()
                .ok_or_else(|| Error::config("slice without labels in a fine-tuning pool"))?;
            check_declared_labels(store, &view, l)?;
            item.labels = l.iter().map(|&v| v as u32).collect();
            item.x = crop.image;
        }
        BatchKind::Moco { elastic, intensity } => {
            let field = random_field(ch, cw, elastic, &mut rng);
            item.x = jitter(&crop.image, intensity, &mut rng);
            item.pos = jitter(&warp_bilinear(&crop.image, ch, cw, &field), intensity, &mut rng);
        }
        BatchKind::Lrc {
            elastic,
            n,
            max_regions,
        }
        | BatchKind::Joint {
            elastic,
            n,
            max_regions,
            ..
        } => {
            let regions = crop
                .regions
                .as_ref()
                .ok_or_else(|| Error::config("slice without regions in an LRC pool"))?;
            let field = random_field(ch, cw, elastic, &mut rng);
            let warped = warp_bilinear(&crop.image, ch, cw, &field);
            let warped_regions = warp_nearest(regions, ch, cw, &field);
            item.samples = Some(sample_regions(regions, &warped_regions, *n, *max_regions, &mut rng));
            if let BatchKind::Joint { intensity, .. } = &spec.kind {
                item.x = jitter(&crop.image, intensity, &mut rng);
                item.pos = jitter(&warped, intensity, &mut rng);
            } else {
                item.x = crop.image;
                item.pos = warped;
            }
        }
    }
    Ok(item)
}

/// Builds the batch of training step `step`. Image `i` draws from its own generator,
/// `Rng::new(seed).fork(step).fork(i)`, so the images are built in parallel (cropping, elastic
/// fields and warps are most of a step's host work) and the batch does not depend on the
/// number of threads.
pub fn build_batch(store: &SliceStore, spec: &BatchSpec, step: u64) -> Result<Batch> {
    let rng = Rng::new(spec.seed).fork(step);
    let items: Vec<Item> = (0..spec.batch as u64)
        .into_par_iter()
        .map(|i| build_item(store, spec, rng.fork(i)))
        .collect::<Result<_>>()?;
    let (mut xs, mut pos, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    let (mut samples, mut cases) = (Vec::new(), Vec::with_capacity(items.len()));
    for item in items {
        xs.extend(item.x);
        pos.extend(item.pos);
        labels.extend(item.labels);
        samples.extend(item.samples);
        cases.push(item.case);
    }
    let b = spec.batch;
    Ok(Batch {
        x: to_tensor(xs, b, spec.crop)?,
        x_pos: if pos.is_empty() {
            None
        } else {
            Some(to_tensor(pos, b, spec.crop)?)
        },
        samples,
        labels: if matches!(spec.kind, BatchKind::Segmentation) {
            Some(labels)
        } else {
            None
        },
        cases,
    })
}

/// Builds the batches of steps `start..end` on a background thread, a few ahead of the
/// training loop, so that the step never waits on cropping and augmentation.
pub struct Prefetcher {
    rx: Receiver<(u64, Result<Batch>)>,
    worker: Option<JoinHandle<()>>,
}

impl Prefetcher {
    pub fn new(store: Arc<SliceStore>, spec: BatchSpec, start: u64, end: u64, depth: usize) -> Prefetcher {
        let (tx, rx): (SyncSender<(u64, Result<Batch>)>, _) = sync_channel(depth.max(1));
        let worker = std::thread::Builder::new()
            .name("lrc-batches".into())
            .spawn(move || {
                for step in start..end {
                    let batch = {
                        let _range = crate::profile::range("phase.data.build");
                        build_batch(&store, &spec, step)
                    };
                    if tx.send((step, batch)).is_err() {
                        break; // the training loop ended early
                    }
                }
            })
            .expect("spawning the batch thread");
        Prefetcher {
            rx,
            worker: Some(worker),
        }
    }

    /// The batch of `step` (steps arrive in order).
    pub fn next(&mut self, step: u64) -> Result<Batch> {
        let _range = crate::profile::range("phase.data.wait");
        match self.rx.recv() {
            Ok((s, batch)) if s == step => batch,
            Ok((s, _)) => Err(Error::config(format!("batch of step {s} arrived for step {step}"))),
            Err(_) => Err(Error::config("the batch thread stopped")),
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Dropping the receiver first unblocks a worker waiting to send.
        let (_, rx) = sync_channel(1);
        drop(std::mem::replace(&mut self.rx, rx));
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
