//! `lrc prep`: turn a folder of CT volumes into a slice store.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};

use crate::data::dataset::discover;
use crate::data::intensity::Normalization;
use crate::data::prep::{PrepConfig, RegionFn};
use crate::data::store::{self, StoreOptions};
use crate::error::{Error, Result};
use crate::superpixel::{SuperpixelConfig, regions_for_slice};

/// Intensity normalisation of `lrc prep`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NormMode {
    /// Clip to --clip (default -1000..1000 HU), map to [0, 1].
    Ct,
    /// nnU-Net CT normalisation: clip to the 0.5/99.5 percentiles of the dataset's foreground,
    /// then z-score with the foreground mean and std.
    Zscore,
}

/// Options of `lrc prep`.
#[derive(Args, Debug)]
pub struct PrepArgs {
    /// Input folder: nnU-Net v2 layout (imagesTr/, labelsTr/, dataset.json) or plain .nii/.nii.gz files.
    #[arg(short, long)]
    pub input: PathBuf,
    /// Output slice store (created, or resumed when it exists).
    #[arg(short, long)]
    pub out: PathBuf,
    /// Target spacing z,y,x in mm.
    #[arg(long, default_value = "2.5,1,1", value_parser = parse_triple)]
    pub spacing: [f64; 3],
    /// Intensity normalisation.
    #[arg(long, value_enum, default_value_t = NormMode::Ct)]
    pub norm: NormMode,
    /// HU clipping range for --norm ct, as LO,HI.
    #[arg(long, default_value = "-1000,1000", value_parser = parse_pair, allow_hyphen_values = true)]
    pub clip: [f32; 2],
    /// Report and skip volumes that cannot be read instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
    /// Worker threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Accept images whose intensities do not look like CT in HU.
    #[arg(long)]
    pub allow_non_ct: bool,
    /// Store Felzenszwalb superpixel regions per slice (needed by LRC pre-training).
    #[arg(long)]
    pub regions: bool,
    /// Felzenszwalb scale (see docs/SUPERPIXELS.md for the defaults' reasons).
    #[arg(long)]
    pub scale: Option<f64>,
    /// Felzenszwalb Gaussian sigma.
    #[arg(long)]
    pub sigma: Option<f64>,
    /// Felzenszwalb minimum segment size in pixels.
    #[arg(long)]
    pub min_size: Option<usize>,
}

/// The region function of `--regions`: superpixels of each prepared slice, computed on the
/// slice mapped back to HU and then to [0, 1] over [-1000, 1000] HU (what the superpixel
/// parameters are tuned for), whatever the stored normalisation.
fn region_fn(args: &PrepArgs, normalization: Normalization) -> Result<Option<RegionFn>> {
    if !args.regions {
        return Ok(None);
    }
    let mut cfg = SuperpixelConfig::default();
    if let Some(v) = args.scale {
        cfg.felzenszwalb.scale = v;
    }
    if let Some(v) = args.sigma {
        cfg.felzenszwalb.sigma = v;
    }
    if let Some(v) = args.min_size {
        cfg.felzenszwalb.min_size = v;
    }
    cfg.validate()?;
    let ct = Normalization::default();
    Ok(Some(Arc::new(move |slice: &[f32], h: usize, w: usize| {
        let unit: Vec<f32> = slice.iter().map(|&v| ct.value(normalization.hu(v))).collect();
        regions_for_slice(&unit, h, w, &cfg)
    })))
}

fn parse_numbers(s: &str, n: usize) -> std::result::Result<Vec<f64>, String> {
    let v: std::result::Result<Vec<f64>, _> = s.split(',').map(|t| t.trim().parse::<f64>()).collect();
    match v {
        Ok(v) if v.len() == n => Ok(v),
        _ => Err(format!("expected {n} comma-separated numbers, got {s:?}")),
    }
}

fn parse_triple(s: &str) -> std::result::Result<[f64; 3], String> {
    let v = parse_numbers(s, 3)?;
    Ok([v[0], v[1], v[2]])
}

fn parse_pair(s: &str) -> std::result::Result<[f32; 2], String> {
    let v = parse_numbers(s, 2)?;
    Ok([v[0] as f32, v[1] as f32])
}

/// Runs `lrc prep`.
pub fn run(args: PrepArgs) -> Result<()> {
    let dataset = discover(&args.input)?;
    let opts = StoreOptions {
        threads: args.threads,
        skip_bad: args.skip_bad,
        progress: true,
    };
    let normalization = match args.norm {
        NormMode::Ct => Normalization::Ct {
            lo: args.clip[0],
            hi: args.clip[1],
        },
        NormMode::Zscore => match store::existing_config(&args.out)? {
            // A resumed store keeps the statistics it was started with.
            Some(c) if matches!(c.normalization, Normalization::ZScore { .. }) => c.normalization,
            _ => {
                let n = store::fit_zscore(&dataset, &opts)?;
                println!(
                    "prep: fitted {n:?} on the foreground of {} case(s)",
                    dataset.cases.len()
                );
                n
            }
        },
    };
    let cfg = PrepConfig {
        spacing: args.spacing,
        normalization,
        check_ct: !args.allow_non_ct,
        regions: region_fn(&args, normalization)?,
    };
    cfg.validate()?;
    let summary = match store::write_store(&dataset, &args.out, &cfg, &opts) {
        Ok(s) => s,
        Err(e) => {
            // The resume hint only where a store exists and a case failed (a settings error
            // or a foreign output folder is fixed otherwise).
            let case_error = matches!(e, Error::Format { .. } | Error::Io { .. });
            if case_error && args.out.join("cases.jsonl").is_file() {
                eprintln!(
                    "prep stopped: the store at {} keeps every case finished so far; fix or remove the \
                     file below (or pass --skip-bad) and rerun the same command to resume",
                    args.out.display()
                );
            }
            return Err(e);
        }
    };
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "prep: {} case(s) written ({} slices, {:.1} MB read, {:.1} MB written) in {:.1} s; {} already in the store",
        summary.written.len(),
        summary.slices,
        mb(summary.bytes_read),
        mb(summary.bytes_written),
        summary.seconds,
        summary.already_present
    );
    if !summary.skipped.is_empty() {
        println!("prep: skipped {} case(s):", summary.skipped.len());
        for (name, e) in &summary.skipped {
            println!("  {name}: {e}");
        }
    }
    if summary.written.is_empty() && summary.already_present == 0 {
        return Err(Error::config(format!(
            "no case could be prepared from {}",
            args.input.display()
        )));
    }
    Ok(())
}
