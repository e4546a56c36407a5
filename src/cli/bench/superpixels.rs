//! `lrc bench superpixels`: slices per second of Felzenszwalb on batches of synthetic CT slices,
//! the exact CPU version (rayon over the slices) and the GPU version in the same run, with the
//! agreement of the two (mean adjusted Rand index, region counts); then the CT clean-up (body
//! mask, relabelling) on each side.
//!
//! The GPU is timed on the device with CUDA events (slices already on the GPU, labels left
//! there, as a data pipeline that keeps them would see it), the segmentation alone and followed
//! by the clean-up, and end to end from host slices to host labels (segmentation only). The CPU
//! clean-up is timed on the CPU's segments, rayon over the slices. The GPU clean-up of the GPU's
//! segments is compared with the CPU clean-up of the same segments, which must be equal. Without
//! a usable GPU the CPU columns are still measured and printed, and the command fails with the
//! reason the GPU columns are missing.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use rayon::prelude::*;

use crate::device::cuda::cleanup;
use crate::device::cuda::felzenszwalb::{self as fz, DEFAULT_WINDOWS, SliceBatch};
use crate::device::cuda::{CudaDevice, CudaStorage, GpuTimer};
use crate::error::{Error, Result};
use crate::metrics::adjusted_rand_index;
use crate::rng::Rng;
use crate::superpixel::cleanup::{body_mask, clean_regions};
use crate::superpixel::phantom::ct_phantom_slice;
use crate::superpixel::{SuperpixelConfig, felzenszwalb_batch};

#[derive(Debug, Args)]
pub struct SuperpixelBenchArgs {
    /// Slice sizes (square), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [256usize, 512])]
    pub sizes: Vec<usize>,
    /// Slices per batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Timed GPU runs per size; the median is reported.
    #[arg(long, default_value_t = 10)]
    pub repeats: usize,
    /// Untimed GPU runs before them.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed CPU runs per size (the exact version, on every core); the median is reported. 0
    /// leaves the CPU column (and the agreement) out.
    #[arg(long, default_value_t = 1)]
    pub cpu_repeats: usize,
    /// Windows per slice of the GPU merging pass (see kernels/felzenszwalb.cu).
    #[arg(long, default_value_t = DEFAULT_WINDOWS)]
    pub windows: usize,
    /// Felzenszwalb scale.
    #[arg(long, default_value_t = 100.0)]
    pub scale: f64,
    /// Felzenszwalb Gaussian pre-smoothing in pixels.
    #[arg(long, default_value_t = 0.8)]
    pub sigma: f64,
    /// Felzenszwalb minimum segment size in pixels.
    #[arg(long, default_value_t = 50)]
    pub min_size: usize,
    /// Where to write one JSON object per size.
    #[arg(long, default_value = "bench-superpixels.jsonl")]
    pub json: PathBuf,
    /// Which GPU.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
}

/// The GPU columns of one size.
struct GpuResult {
    device_ms: f64,
    /// Segmentation then clean-up, on the device.
    with_cleanup_ms: f64,
    end_to_end_ms: f64,
    mean_ari: Option<f64>,
    mean_k: f64,
    /// Whether the GPU clean-up of the GPU's segments equals the CPU clean-up of them.
    cleanup_equal: bool,
}

/// The CPU clean-up of a batch of `size x size` slices and their segments, slices in parallel.
fn cpu_cleanup(slices: &[f32], segments: &[u32], size: usize, cfg: &SuperpixelConfig) -> Vec<u16> {
    let plane = size * size;
    slices
        .par_chunks(plane)
        .zip(segments.par_chunks(plane))
        .flat_map_iter(|(img, seg)| clean_regions(seg, &body_mask(img, size, size, &cfg.cleanup), &cfg.cleanup))
        .collect()
}

fn bench_gpu(
    device: &std::sync::Arc<CudaDevice>,
    args: &SuperpixelBenchArgs,
    cfg: &SuperpixelConfig,
    slices: &[f32],
    size: usize,
    cpu_labels: Option<&[(Vec<u32>, usize)]>,
) -> Result<GpuResult> {
    let p = &cfg.felzenszwalb;
    let batch = SliceBatch {
        n: args.batch,
        h: size,
        w: size,
    };
    let timer = GpuTimer::new(device)?;
    let input = CudaStorage::from_host(device, slices)?;
    for _ in 0..args.warmup {
        fz::felzenszwalb(&input, batch, p, args.windows)?;
    }
    device.synchronize()?;
    let mut device_ms = Vec::with_capacity(args.repeats);
    for _ in 0..args.repeats {
        timer.start()?;
        let out = fz::felzenszwalb(&input, batch, p, args.windows)?;
        timer.stop()?;
        device_ms.push(timer.elapsed_ms()? as f64);
        drop(out);
    }
    let mut with_cleanup_ms = Vec::with_capacity(args.repeats);
    for _ in 0..args.repeats {
        timer.start()?;
        let segments = fz::felzenszwalb(&input, batch, p, args.windows)?;
        let regions = cleanup::clean(&input, &segments.labels, batch, &cfg.cleanup)?;
        timer.stop()?;
        with_cleanup_ms.push(timer.elapsed_ms()? as f64);
        drop((segments, regions));
    }
    let mut end_to_end = Vec::with_capacity(args.repeats);
    let mut last = None;
    for _ in 0..args.repeats {
        let start = Instant::now();
        let input = CudaStorage::from_host(device, slices)?;
        let out = fz::felzenszwalb(&input, batch, p, args.windows)?;
        let labels: Vec<u32> = out.labels.to_host_pod()?;
        let counts: Vec<u32> = out.counts.to_host_pod()?;
        end_to_end.push(start.elapsed().as_secs_f64() * 1e3);
        last = Some((labels, counts));
    }
    let (labels, counts) = last.ok_or_else(|| Error::config("--repeats must be at least 1"))?;
    let plane = size * size;
    let segments = CudaStorage::from_host_pod(device, &labels)?;
    let gpu_regions = cleanup::clean(&input, &segments, batch, &cfg.cleanup)?.labels_to_host(labels.len())?;
    let cleanup_equal = gpu_regions == cpu_cleanup(slices, &labels, size, cfg);
    let mean_ari = cpu_labels
        .map(|cpu| -> Result<f64> {
            let mut sum = 0.0;
            for (i, (exact, _)) in cpu.iter().enumerate() {
                sum += adjusted_rand_index(exact, &labels[i * plane..(i + 1) * plane])?;
            }
            Ok(sum / cpu.len().max(1) as f64)
        })
        .transpose()?;
    Ok(GpuResult {
        device_ms: super::median(device_ms),
        with_cleanup_ms: super::median(with_cleanup_ms),
        end_to_end_ms: super::median(end_to_end),
        mean_ari,
        mean_k: counts.iter().map(|&k| k as f64).sum::<f64>() / counts.len().max(1) as f64,
        cleanup_equal,
    })
}

/// Runs `lrc bench superpixels`.
pub fn bench_superpixels(args: &SuperpixelBenchArgs) -> Result<()> {
    if args.batch == 0 || args.repeats == 0 || args.sizes.is_empty() || args.sizes.contains(&0) {
        return Err(Error::config("--batch, --repeats and every size must be positive"));
    }
    let mut cfg = SuperpixelConfig::default();
    cfg.felzenszwalb.scale = args.scale;
    cfg.felzenszwalb.sigma = args.sigma;
    cfg.felzenszwalb.min_size = args.min_size;
    cfg.validate()?;
    let gpu = CudaDevice::open(args.gpu);
    let (device_name, gpu_why) = match &gpu {
        Ok(d) => (d.name().to_string(), String::new()),
        Err(e) => ("none".to_string(), e.to_string()),
    };
    let file = File::create(&args.json).map_err(|e| Error::io(&args.json, e))?;
    let mut json = BufWriter::new(file);
    println!(
        "Felzenszwalb scale {} sigma {} min_size {}, batches of {} synthetic CT slices; CPU: exact, {} threads; \
         GPU: {device_name}, {} windows, median of {} runs",
        args.scale,
        args.sigma,
        args.min_size,
        args.batch,
        rayon::current_num_threads(),
        args.windows,
        args.repeats
    );
    println!(
        "{:<10} {:>10} {:>12} {:>12} {:>12} {:>12} {:>9} {:>8} {:>7} {:>7} {:>13} {:>13} {:>9}",
        "size",
        "cpu ms",
        "cpu slice/s",
        "gpu ms",
        "gpu slice/s",
        "e2e slice/s",
        "gpu/cpu",
        "ARI",
        "K cpu",
        "K gpu",
        "gpu+clean ms",
        "cpu clean ms",
        "clean=cpu"
    );
    let mut gpu_error = None;
    for &size in &args.sizes {
        let mut rng = Rng::new(2026);
        let slices: Vec<f32> = (0..args.batch)
            .flat_map(|_| ct_phantom_slice(size, size, 15.0, &mut rng))
            .collect();
        let wide: Vec<f64> = slices.iter().map(|&v| v as f64).collect();
        let mut cpu_ms = Vec::with_capacity(args.cpu_repeats);
        let mut cpu_cleanup_ms = Vec::with_capacity(args.cpu_repeats);
        let mut cpu_labels = None;
        for _ in 0..args.cpu_repeats {
            let start = Instant::now();
            let labels = felzenszwalb_batch(&wide, size, size, &cfg.felzenszwalb);
            cpu_ms.push(start.elapsed().as_secs_f64() * 1e3);
            let segments: Vec<u32> = labels.iter().flat_map(|(l, _)| l.iter().copied()).collect();
            let start = Instant::now();
            let regions = cpu_cleanup(&slices, &segments, size, &cfg);
            cpu_cleanup_ms.push(start.elapsed().as_secs_f64() * 1e3);
            drop(regions);
            cpu_labels = Some(labels);
        }
        let cpu_ms = (!cpu_ms.is_empty()).then(|| super::median(cpu_ms));
        let cpu_cleanup_ms = (!cpu_cleanup_ms.is_empty()).then(|| super::median(cpu_cleanup_ms));
        let cpu_k = cpu_labels
            .as_ref()
            .map(|l| l.iter().map(|(_, k)| *k as f64).sum::<f64>() / l.len() as f64);
        let result = match &gpu {
            Ok(device) => bench_gpu(device, args, &cfg, &slices, size, cpu_labels.as_deref()).map_err(Some),
            Err(_) => Err(None),
        };
        let per_s = |ms: f64| args.batch as f64 / (ms * 1e-3);
        let opt = |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
        let label = format!("{size}x{size}");
        let gpu_why = match &result {
            Err(Some(e)) => e.to_string(),
            _ => gpu_why.clone(),
        };
        match &result {
            Ok(g) => println!(
                "{label:<10} {:>10} {:>12} {:>12.3} {:>12.1} {:>12.1} {:>9} {:>8} {:>7} {:>7.1} {:>13.3} {:>13} {:>9}",
                opt(cpu_ms, 1),
                opt(cpu_ms.map(per_s), 1),
                g.device_ms,
                per_s(g.device_ms),
                per_s(g.end_to_end_ms),
                opt(cpu_ms.map(|c| c / g.device_ms), 1),
                opt(g.mean_ari, 4),
                opt(cpu_k, 1),
                g.mean_k,
                g.with_cleanup_ms,
                opt(cpu_cleanup_ms, 1),
                if g.cleanup_equal { "yes" } else { "NO" }
            ),
            Err(_) => println!(
                "{label:<10} {:>10} {:>12}  GPU not measured: {gpu_why}; cpu clean-up {} ms",
                opt(cpu_ms, 1),
                opt(cpu_ms.map(per_s), 1),
                opt(cpu_cleanup_ms, 1)
            ),
        }
        if let Ok(g) = &result {
            println!(
                "superpixels {label}: gpu {:.1} slices/s ({:.1} end to end, {:.1} with clean-up), cpu {} slices/s, \
                 ARI {}, clean-up gpu {:.3} ms cpu {} ms per batch{}",
                per_s(g.device_ms),
                per_s(g.end_to_end_ms),
                per_s(g.with_cleanup_ms),
                opt(cpu_ms.map(per_s), 1),
                opt(g.mean_ari, 4),
                g.with_cleanup_ms - g.device_ms,
                opt(cpu_cleanup_ms, 1),
                if g.cleanup_equal {
                    ""
                } else {
                    ", GPU CLEAN-UP DIFFERS FROM THE CPU"
                }
            );
        }
        let gpu_fields = result.as_ref().ok();
        let line = serde_json::json!({
            "bench": "superpixels",
            "device": device_name,
            "size": size,
            "batch": args.batch,
            "windows": args.windows,
            "scale": args.scale, "sigma": args.sigma, "min_size": args.min_size,
            "cpu_threads": rayon::current_num_threads(),
            "cpu_median_ms": cpu_ms,
            "cpu_slices_per_s": cpu_ms.map(per_s),
            "gpu_median_ms": gpu_fields.map(|g| g.device_ms),
            "gpu_slices_per_s": gpu_fields.map(|g| per_s(g.device_ms)),
            "gpu_end_to_end_ms": gpu_fields.map(|g| g.end_to_end_ms),
            "gpu_end_to_end_slices_per_s": gpu_fields.map(|g| per_s(g.end_to_end_ms)),
            "gpu_with_cleanup_median_ms": gpu_fields.map(|g| g.with_cleanup_ms),
            "gpu_with_cleanup_slices_per_s": gpu_fields.map(|g| per_s(g.with_cleanup_ms)),
            "gpu_cleanup_ms": gpu_fields.map(|g| g.with_cleanup_ms - g.device_ms),
            "cpu_cleanup_median_ms": cpu_cleanup_ms,
            "cleanup_equal_to_cpu": gpu_fields.map(|g| g.cleanup_equal),
            "mean_ari_vs_cpu": gpu_fields.and_then(|g| g.mean_ari),
            "mean_regions_cpu": cpu_k,
            "mean_regions_gpu": gpu_fields.map(|g| g.mean_k),
            "gpu_error": result.as_ref().err().map(|_| gpu_why.clone()),
        });
        writeln!(json, "{line}").map_err(|e| Error::io(&args.json, e))?;
        match result {
            Err(Some(e)) => {
                gpu_error.get_or_insert(e);
            }
            Ok(g) if !g.cleanup_equal => {
                gpu_error.get_or_insert(Error::Cuda(format!(
                    "{label}: the GPU clean-up differs from the CPU clean-up of the same segments"
                )));
            }
            _ => {}
        }
    }
    json.flush().map_err(|e| Error::io(&args.json, e))?;
    println!("JSON lines written to {}", args.json.display());
    match (gpu, gpu_error) {
        (Err(e), _) | (Ok(_), Some(e)) => Err(e),
        (Ok(_), None) => Ok(()),
    }
}
