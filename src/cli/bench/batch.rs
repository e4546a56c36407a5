//! `lrc bench batch`: how fast the host builds training batches (crops, elastic fields and warps,
//! intensity jitter, region samples) for each training stage, on one thread and on all of them.
//!
//! A GPU step only runs at its own speed when the batch thread keeps up: compare the milliseconds
//! per batch here with `lrc bench step` on the same machine. The store is synthesised into a
//! temporary folder (abdomen phantoms of the crop's size, at least 64, prepared at the default
//! spacing, with Felzenszwalb regions).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;

use crate::data::dataset::discover;
use crate::data::prep::PrepConfig;
use crate::data::store::{SliceStore, StoreOptions, write_store};
use crate::data::synth::{DatasetOptions, Region, SynthConfig, write_dataset};
use crate::error::{Error, Result};
use crate::superpixel::{SuperpixelConfig, regions_for_slice};
use crate::train::batch::{BatchKind, BatchSpec, build_batch};
use crate::train::pretrain::{Method, PretrainConfig};

#[derive(Debug, Args)]
pub struct BatchBenchArgs {
    /// Images per batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Crop size (square); the phantoms are made large enough to hold it.
    #[arg(long, default_value_t = 256)]
    pub crop: usize,
    /// Synthetic cases in the store.
    #[arg(long, default_value_t = 2)]
    pub cases: usize,
    /// Axial slices per case before preparation (at least 8).
    #[arg(long, default_value_t = 24)]
    pub slices: usize,
    /// Thread counts to time, comma-separated; 0 means every core.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 0])]
    pub threads: Vec<usize>,
    /// Timed batches per stage and thread count; the median is reported.
    #[arg(long, default_value_t = 10)]
    pub repeats: usize,
    /// Where to write one JSON object per stage and thread count.
    #[arg(long, default_value = "bench-batch.jsonl")]
    pub json: PathBuf,
}

/// Synthesises a labelled store with regions under `dir`.
fn synthetic_store(dir: &std::path::Path, args: &BatchBenchArgs) -> Result<SliceStore> {
    let data = dir.join("abdomen");
    let cfg = SynthConfig {
        region: Region::Abdomen,
        slices: args.slices,
        // The smallest phantom is 64 x 64; smaller crops are cut from it.
        size: args.crop.max(64),
        seed: 2026,
    };
    let opts = DatasetOptions {
        cases: args.cases,
        unlabeled: false,
        threads: 0,
        preview: false,
        progress: false,
    };
    write_dataset(&cfg, &data, &opts)?;
    let sp = SuperpixelConfig::default();
    let prep = PrepConfig {
        regions: Some(Arc::new(move |img: &[f32], h: usize, w: usize| {
            regions_for_slice(img, h, w, &sp)
        })),
        ..PrepConfig::default()
    };
    let store_dir = dir.join("store");
    write_store(&discover(&data)?, &store_dir, &prep, &StoreOptions::default())?;
    SliceStore::open(&store_dir)
}

/// The batch kinds of the thesis' pre-training configurations, then fine-tuning.
fn stages() -> Vec<(&'static str, BatchKind)> {
    let mut out: Vec<(&'static str, BatchKind)> = [
        ("moco", Method::Global),
        ("lrc", Method::Local),
        ("joint", Method::Joint),
    ]
    .into_iter()
    .map(|(name, method)| (name, PretrainConfig::thesis(method).batch_kind()))
    .collect();
    out.push(("finetune", BatchKind::Segmentation));
    out
}

pub fn bench_batch(args: &BatchBenchArgs) -> Result<()> {
    if args.batch == 0 || args.crop == 0 || args.repeats == 0 || args.cases == 0 {
        return Err(Error::config("batch, crop, cases and repeats must be positive"));
    }
    if !(8..=1024).contains(&args.slices) || args.crop > 1024 {
        return Err(Error::config("--slices must be 8 to 1024 and --crop at most 1024"));
    }
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let store = synthetic_store(dir.path(), args)?;
    let first = store
        .get(0)
        .ok_or_else(|| Error::config("the synthetic store holds no slices"))?;
    let (sh, sw) = (first.h, first.w);
    let file = File::create(&args.json).map_err(|e| Error::io(&args.json, e))?;
    let mut json = BufWriter::new(file);
    println!(
        "host batches of {} crops of {c} x {c} from {} slices of {sh} x {sw}; median of {} batches",
        args.batch,
        store.len(),
        args.repeats,
        c = args.crop
    );
    println!("{:<10} {:>8} {:>12} {:>12}", "stage", "threads", "ms/batch", "images/s");
    // The slowest stage on the most threads timed: what a GPU step must not be faster than.
    let mut slowest: Option<(&str, usize, f64)> = None;
    for (name, kind) in stages() {
        let spec = BatchSpec {
            kind,
            batch: args.batch,
            crop: (args.crop, args.crop),
            pool: Arc::new((0..store.len()).collect()),
            seed: 1,
        };
        spec.validate(&store)?;
        for &threads in &args.threads {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| Error::config(format!("a pool of {threads} threads: {e}")))?;
            let used = pool.current_num_threads();
            let mut ms = Vec::with_capacity(args.repeats);
            pool.install(|| -> Result<()> {
                build_batch(&store, &spec, 0)?; // warm the page cache and the pool
                for step in 1..=args.repeats as u64 {
                    let start = Instant::now();
                    std::hint::black_box(build_batch(&store, &spec, step)?);
                    ms.push(start.elapsed().as_secs_f64() * 1e3);
                }
                Ok(())
            })?;
            let median = super::median(ms);
            let per_s = args.batch as f64 / (median * 1e-3);
            println!("{name:<10} {used:>8} {median:>12.2} {per_s:>12.1}");
            let most = slowest.is_none_or(|(_, t, ms)| used > t || (used == t && median > ms));
            if most {
                slowest = Some((name, used, median));
            }
            let record = serde_json::json!({
                "bench": "batch", "stage": name, "threads": used, "batch": args.batch,
                "crop": args.crop, "median_ms": median, "images_per_s": per_s,
            });
            writeln!(json, "{record}").map_err(|e| Error::io(&args.json, e))?;
        }
    }
    json.flush().map_err(|e| Error::io(&args.json, e))?;
    if let Some((name, threads, ms)) = slowest {
        println!(
            "batch: slowest stage on {threads} threads: {name}, {ms:.1} ms per batch of {}",
            args.batch
        );
    }
    Ok(())
}
