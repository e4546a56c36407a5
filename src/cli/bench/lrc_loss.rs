//! `lrc bench lrc-loss`: the fused LRC local loss (`kernels/local_contrast.cu`) timed through
//! the op a training step calls (`Tape::local_contrast_loss` on CUDA tensors, the host's sample
//! table and its upload included), forward alone and forward + backward, with CUDA events; the
//! median of warm repeats and the peak of device memory beyond the inputs, as a table and as
//! JSON lines. `scripts/torch_reference.py --bench lrc-loss` times the same loss written plainly
//! in PyTorch (gather / mean / bmm / logsumexp / autograd) on the same cases, with the same
//! fields, so that the two can be compared line by line.
//!
//! Cases: every D of `--dims` x K of `--regions`, with `--samples` (N) samples per region in
//! each view, and two kinds of input: `raw` embeddings, normalised per sampled pixel inside the
//! loss (the fused path), and `unit` embeddings, already normalised (what pre-training passes
//! today). The regions are the cells of a grid over the image, so that the samples of a region
//! lie close together as a superpixel's do; a region's q and p samples are drawn independently
//! in its cell.
//!
//! Input element types (`--dtype f32|bf16|all`, default all, one row each): FP32 embeddings
//! through the op, and BF16 embeddings (packed, two per word) through the device-level
//! `local_contrast_bf16` / `local_contrast_forward_as`, since there is no BF16 tensor. The BF16
//! maps are rounded from the same FP32 values once, before timing: their producer will be the
//! BF16 activations of the model. The gradients are FP32 for both.
//!
//! Each pass is timed twice: through the op as above (`median_ms`: the sample table built on the
//! host and uploaded inside the timed region, as a training step does, where the GPU is still
//! busy with the model's forward pass and hides it), and with the table uploaded before timing
//! (`kernels_median_ms`: the fused kernels alone, as the PyTorch reference, whose index tensors
//! are on the device before its timed calls).
//!
//! Peak memory: the caching allocator's peak of bytes in use (whole size classes) during one
//! forward (+ backward) pass, minus what was in use before it: the sample table, the region
//! means and their gradients, and the two gradient maps of the backward pass (FP32 for either
//! input type). The inputs are the two embedding maps (half the bytes for BF16).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use clap::Args;

use super::{median, time_runs};
use crate::device::Device;
use crate::device::cuda::local_contrast::{
    EmbeddingType, UploadedSamples, local_contrast_backward, local_contrast_bf16, local_contrast_forward_as,
    local_contrast_forward_uploaded,
};
use crate::device::cuda::pointwise::bf16_from_f32;
use crate::device::cuda::{CudaDevice, CudaStorage, GpuTimer};
use crate::error::{Error, Result};
use crate::ops::local_contrast::{LocalLossConfig, RegionSamples};
use crate::ops::normalize;
use crate::rng::Rng;
use crate::{Tape, Tensor};

#[derive(Debug, Args)]
pub struct LrcLossBenchArgs {
    /// Images per batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Height and width of the embedding maps.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Embedding channels (D), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [32, 64])]
    pub dims: Vec<usize>,
    /// Regions per image (K), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [64, 256])]
    pub regions: Vec<usize>,
    /// Samples per region and view (N).
    #[arg(long, default_value_t = 32)]
    pub samples: usize,
    /// Temperature of the loss.
    #[arg(long, default_value_t = 0.07)]
    pub temperature: f64,
    /// Timed runs per case and pass; the median is reported.
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
    /// Untimed runs before them.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Where to write one JSON object per timed case and pass.
    #[arg(long, default_value = "bench-lrc-loss.jsonl")]
    pub json: PathBuf,
    /// Which GPU.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
    /// Element type of the embeddings: f32, bf16, or all (both, one row each); --dtypes, as
    /// scripts/torch_bench.py spells it, is the same option.
    #[arg(long, alias = "dtypes", default_value = "all")]
    pub dtype: String,
    /// Print the cases and exit (needs no GPU).
    #[arg(long)]
    pub list: bool,
}

/// The element types of `--dtype`: `f32`, `bf16`, a comma-separated list of them, or `all`
/// (both, FP32 first).
pub fn dtypes(arg: &str) -> Result<Vec<EmbeddingType>> {
    if arg == "all" {
        return Ok(EmbeddingType::ALL.to_vec());
    }
    let mut out = Vec::new();
    for name in arg.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let t: EmbeddingType = name.parse()?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.is_empty() {
        return Err(Error::config("--dtype needs f32, bf16 or all"));
    }
    Ok(out)
}

/// The passes timed per case.
pub const PASSES: [&str; 2] = ["forward", "forward_backward"];

/// The two kinds of input: raw embeddings normalised inside the loss, or unit embeddings.
pub const PIXELS: [&str; 2] = ["raw", "unit"];

/// One benchmarked problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LrcLossCase {
    pub batch: usize,
    pub d: usize,
    pub regions: usize,
    pub samples: usize,
    pub size: usize,
    /// `raw` or `unit`.
    pub pixels: &'static str,
}

impl LrcLossCase {
    /// A short name shared with scripts/torch_bench.py, e.g. `d64-k256-raw`.
    pub fn name(&self) -> String {
        format!("d{}-k{}-{}", self.d, self.regions, self.pixels)
    }

    /// Bytes of the two embedding maps in FP32.
    pub fn input_bytes(&self) -> usize {
        self.input_bytes_as(EmbeddingType::F32)
    }

    /// Bytes of the two embedding maps in element type `dtype`.
    pub fn input_bytes_as(&self, dtype: EmbeddingType) -> usize {
        2 * dtype.bytes(self.batch * self.d * self.size * self.size)
    }

    pub fn dims(&self) -> [usize; 4] {
        [self.batch, self.d, self.size, self.size]
    }
}

/// Every case of the arguments, checked.
pub fn cases(args: &LrcLossBenchArgs) -> Result<Vec<LrcLossCase>> {
    if args.batch == 0 || args.samples == 0 || args.size == 0 || args.dims.is_empty() || args.regions.is_empty() {
        return Err(Error::config(
            "batch, size and samples must be positive, and --dims and --regions non-empty",
        ));
    }
    let mut out = Vec::new();
    for &d in &args.dims {
        for &regions in &args.regions {
            let (rows, cols) = grid(regions);
            if d == 0 || !grid_fits(regions, args.size) {
                return Err(Error::config(format!(
                    "D = {d} and K = {regions} must be positive, and a {rows} x {cols} grid of regions must fit {0} x {0} pixels",
                    args.size
                )));
            }
            for pixels in PIXELS {
                out.push(LrcLossCase {
                    batch: args.batch,
                    d,
                    regions,
                    samples: args.samples,
                    size: args.size,
                    pixels,
                });
            }
        }
    }
    Ok(out)
}

/// Whether `k` regions, one grid cell each, fit a `size` x `size` image: every cell at least one
/// pixel.
pub fn grid_fits(k: usize, size: usize) -> bool {
    let (rows, cols) = grid(k);
    k > 0 && rows <= size && cols <= size
}

/// Rows and columns of the grid of cells that holds `k` regions: ceil(sqrt(k)) columns.
fn grid(k: usize) -> (usize, usize) {
    let cols = (1..=k).find(|c| c * c >= k).unwrap_or(1);
    (k.div_ceil(cols), cols)
}

/// Region `r` of an image: cell (r / cols, r % cols) of the grid; N pixels drawn uniformly in it
/// per view.
pub fn grid_samples(case: &LrcLossCase, rng: &mut Rng) -> Vec<RegionSamples> {
    let (rows, cols) = grid(case.regions);
    let s = case.size;
    let (n, k) = (case.samples, case.regions);
    (0..case.batch)
        .map(|_| {
            let view = |rng: &mut Rng| {
                let mut idx = Vec::with_capacity(k * n);
                for r in 0..k {
                    let (y0, y1) = ((r / cols) * s / rows, (r / cols + 1) * s / rows);
                    let (x0, x1) = ((r % cols) * s / cols, (r % cols + 1) * s / cols);
                    for _ in 0..n {
                        let y = y0 + rng.below((y1 - y0) as u64) as usize;
                        let x = x0 + rng.below((x1 - x0) as u64) as usize;
                        idx.push((y * s + x) as u32);
                    }
                }
                idx
            };
            let q = view(rng);
            let p = view(rng);
            RegionSamples {
                labels: (1..=k as u32).collect(),
                n,
                q,
                p,
            }
        })
        .collect()
}

/// Embeddings in [-1, 1), or those normalised per pixel for `unit` cases.
fn embeddings(case: &LrcLossCase, rng: &mut Rng) -> Vec<f32> {
    let hw = case.size * case.size;
    let f: Vec<f32> = (0..case.batch * case.d * hw)
        .map(|_| rng.range(-1.0, 1.0) as f32)
        .collect();
    if case.pixels == "unit" {
        normalize::cpu::forward(&f, case.d, hw, normalize::DEFAULT_EPS).0
    } else {
        f
    }
}

/// One map of a case on the device, as the benchmarked pass of `dtype` takes it.
enum Map {
    F32(Tensor),
    Bf16(CudaStorage),
}

fn upload(gpu: &std::sync::Arc<CudaDevice>, case: &LrcLossCase, f: &[f32], dtype: EmbeddingType) -> Result<Map> {
    Ok(match dtype {
        EmbeddingType::F32 => {
            Map::F32(Tensor::from_vec(case.dims().to_vec(), f.to_vec())?.to_device(&Device::Cuda(gpu.clone()))?)
        }
        EmbeddingType::Bf16 => Map::Bf16(bf16_from_f32(&CudaStorage::from_host(gpu, f)?)?),
    })
}

/// One pass: FP32 maps as a training step runs it (a tape, the loss and, for
/// `forward_backward`, the gradients of both embedding maps); BF16 maps through the device-level
/// functions, the upstream gradient `one` read on the device as the tape's would be.
fn run_pass_on(
    pass: &str,
    maps: (&Map, &Map),
    dims: [usize; 4],
    samples: &[RegionSamples],
    cfg: LocalLossConfig,
    one: &CudaStorage,
) -> Result<()> {
    match maps {
        (Map::F32(q), Map::F32(p)) => run_pass(pass, q, p, samples, cfg),
        (Map::Bf16(q), Map::Bf16(p)) => {
            if pass == "forward_backward" {
                local_contrast_bf16(q, p, dims, samples, &cfg, one)?;
            } else {
                local_contrast_forward_as(EmbeddingType::Bf16, q, p, dims, samples, &cfg)?;
            }
            Ok(())
        }
        _ => Err(Error::config("lrc-loss bench: maps of two element types")),
    }
}

/// One pass through the device-level functions with the samples already uploaded: the fused
/// kernels alone.
fn run_kernels(
    pass: &str,
    maps: (&Map, &Map),
    dims: [usize; 4],
    samples: &UploadedSamples,
    cfg: LocalLossConfig,
    one: &CudaStorage,
) -> Result<()> {
    let storage = |m: &Map| -> Result<(EmbeddingType, CudaStorage)> {
        Ok(match m {
            Map::F32(t) => (
                EmbeddingType::F32,
                t.cuda_storage()
                    .cloned()
                    .ok_or_else(|| Error::config("lrc-loss bench: a map off the GPU"))?,
            ),
            Map::Bf16(s) => (EmbeddingType::Bf16, s.clone()),
        })
    };
    let ((tq, q), (tp, p)) = (storage(maps.0)?, storage(maps.1)?);
    if tq != tp {
        return Err(Error::config("lrc-loss bench: maps of two element types"));
    }
    let (_, saved) = local_contrast_forward_uploaded(tq, &q, &p, dims, samples, &cfg)?;
    if pass == "forward_backward" {
        local_contrast_backward(&saved, &q, &p, one)?;
    }
    Ok(())
}

/// One pass as a training step runs it: a tape, the loss and, for `forward_backward`, the
/// gradients of both embedding maps.
fn run_pass(pass: &str, fq: &Tensor, fp: &Tensor, samples: &[RegionSamples], cfg: LocalLossConfig) -> Result<()> {
    let mut tape = Tape::new();
    let q = tape.leaf(fq.clone());
    let p = tape.leaf(fp.clone());
    let loss = tape.local_contrast_loss(q, p, samples, cfg)?;
    if pass == "forward_backward" {
        tape.backward(loss)?;
    }
    Ok(())
}

const MIB: f64 = (1 << 20) as f64;

/// Runs `lrc bench lrc-loss`.
pub fn run(args: &LrcLossBenchArgs) -> Result<()> {
    let cases = cases(args)?;
    let dtypes = dtypes(&args.dtype)?;
    let dtype_names: Vec<&str> = dtypes.iter().map(|t| t.name()).collect();
    if args.list {
        for c in &cases {
            println!(
                "{:<16} batch {} D {} K {} N {} {}x{} {} pixels, {}",
                c.name(),
                c.batch,
                c.d,
                c.regions,
                c.samples,
                c.size,
                c.size,
                c.pixels,
                dtype_names.join(" and ")
            );
        }
        return Ok(());
    }
    if args.repeats == 0 {
        return Err(Error::config("--repeats must be at least 1"));
    }
    let gpu = CudaDevice::open(args.gpu)?;
    let file = File::create(&args.json).map_err(|e| Error::io(&args.json, e))?;
    let mut json = BufWriter::new(file);
    let timer = GpuTimer::new(&gpu)?;
    let mut rng = Rng::new(0x00c0_ffee);
    println!(
        "{} (sm_{}{}), batch {}, {}x{} pixels, N = {}, t = {}, median of {} runs",
        gpu.name(),
        gpu.compute_capability().0,
        gpu.compute_capability().1,
        args.batch,
        args.size,
        args.size,
        args.samples,
        args.temperature,
        args.repeats
    );
    println!(
        "{:<16} {:<17} {:<6} {:<8} {:>10} {:>10} {:>10} {:>10}",
        "case", "pass", "dtype", "algo", "ms", "kernels ms", "peak MiB", "input MiB"
    );
    let one = CudaStorage::full(&gpu, 1, 1.0)?;
    for case in &cases {
        let samples = grid_samples(case, &mut rng);
        let fq = embeddings(case, &mut rng);
        let fp = embeddings(case, &mut rng);
        let cfg = LocalLossConfig {
            temperature: args.temperature,
            renormalize_means: false,
            normalize_pixels: case.pixels == "raw",
        };
        let uploaded = UploadedSamples::new(&gpu, &samples, case.size * case.size)?;
        for &dtype in &dtypes {
            let q = upload(&gpu, case, &fq, dtype)?;
            let p = upload(&gpu, case, &fp, dtype)?;
            for pass in PASSES {
                let mut kernels = || run_kernels(pass, (&q, &p), case.dims(), &uploaded, cfg, &one);
                let kernel_ms = median(time_runs(&timer, args.warmup, args.repeats, &mut kernels)?);
                let mut once = || run_pass_on(pass, (&q, &p), case.dims(), &samples, cfg, &one);
                let times = time_runs(&timer, args.warmup, args.repeats, &mut once)?;
                gpu.synchronize()?;
                gpu.reset_peak_memory();
                let before = gpu.alloc_stats().bytes_in_use;
                once()?;
                gpu.synchronize()?;
                let peak = gpu.alloc_stats().peak_bytes_in_use.saturating_sub(before) as f64 / MIB;
                let inputs = case.input_bytes_as(dtype) as f64 / MIB;
                let min_ms = times.iter().copied().fold(f64::INFINITY, f64::min);
                let ms = median(times);
                println!(
                    "{:<16} {pass:<17} {:<6} {:<8} {ms:>10.4} {kernel_ms:>10.4} {peak:>10.1} {inputs:>10.1}",
                    case.name(),
                    dtype.name(),
                    "fused"
                );
                let line = serde_json::json!({
                    "bench": "lrc-loss",
                    "engine": "lrc",
                    "device": gpu.name(),
                    "case": case.name(),
                    "pass": pass,
                    "dtype": dtype.name(),
                    "algo": "fused",
                    "batch": case.batch,
                    "d": case.d,
                    "regions": case.regions,
                    "samples": case.samples,
                    "h": case.size,
                    "w": case.size,
                    "pixels": case.pixels,
                    "temperature": args.temperature,
                    "median_ms": ms,
                    "min_ms": min_ms,
                    "kernels_median_ms": kernel_ms,
                    "repeats": args.repeats,
                    "peak_mib": peak,
                    "inputs_mib": inputs,
                });
                writeln!(json, "{line}").map_err(|e| Error::io(&args.json, e))?;
            }
        }
    }
    json.flush().map_err(|e| Error::io(&args.json, e))?;
    println!("JSON lines written to {}", args.json.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> LrcLossBenchArgs {
        LrcLossBenchArgs {
            batch: 16,
            size: 256,
            dims: vec![32, 64],
            regions: vec![64, 256],
            samples: 32,
            temperature: 0.07,
            repeats: 20,
            warmup: 3,
            json: PathBuf::from("x.jsonl"),
            gpu: 0,
            dtype: "all".into(),
            list: true,
        }
    }

    #[test]
    fn the_default_cases_are_those_of_the_issue() {
        let cases = cases(&args()).unwrap();
        assert_eq!(cases.len(), 8);
        let names: Vec<String> = cases.iter().map(LrcLossCase::name).collect();
        assert_eq!(names[0], "d32-k64-raw");
        assert_eq!(names[7], "d64-k256-unit");
        assert!(cases.iter().all(|c| c.batch == 16 && c.samples == 32 && c.size == 256));
        assert_eq!(cases[0].input_bytes(), 2 * 16 * 32 * 256 * 256 * 4);
    }

    #[test]
    fn grid_samples_stay_in_their_cells() {
        for k in [1, 5, 64, 256] {
            let case = LrcLossCase {
                batch: 2,
                d: 4,
                regions: k,
                samples: 8,
                size: 64,
                pixels: "raw",
            };
            let (rows, cols) = grid(k);
            assert!(rows * cols >= k && (rows - 1) * cols < k, "{k}: {rows} x {cols}");
            let sets = grid_samples(&case, &mut Rng::new(1));
            assert_eq!(sets.len(), 2);
            for s in &sets {
                assert_eq!((s.regions(), s.q.len(), s.p.len()), (k, k * 8, k * 8));
                for (i, &px) in s.q.iter().chain(&s.p).enumerate() {
                    let r = (i % (k * 8)) / 8;
                    let (y, x) = (px as usize / 64, px as usize % 64);
                    let (cy, cx) = (r / cols, r % cols);
                    assert!(cy * 64 / rows <= y && y < (cy + 1) * 64 / rows, "k {k} px {px}");
                    assert!(cx * 64 / cols <= x && x < (cx + 1) * 64 / cols, "k {k} px {px}");
                }
            }
        }
    }

    #[test]
    fn dtype_all_is_fp32_then_bf16_and_halves_the_input_bytes() {
        assert_eq!(dtypes("all").unwrap(), [EmbeddingType::F32, EmbeddingType::Bf16]);
        assert_eq!(dtypes("bf16").unwrap(), [EmbeddingType::Bf16]);
        assert_eq!(dtypes("bf16,f32").unwrap(), [EmbeddingType::Bf16, EmbeddingType::F32]);
        assert!(dtypes("").is_err());
        assert!(dtypes("f16").is_err());
        let case = cases(&args()).unwrap()[0];
        assert_eq!(2 * case.input_bytes_as(EmbeddingType::Bf16), case.input_bytes());
    }

    #[test]
    fn impossible_cases_are_refused() {
        let mut a = args();
        a.regions = vec![0];
        assert!(cases(&a).is_err());
        let mut a = args();
        a.size = 8;
        a.regions = vec![100];
        assert!(cases(&a).is_err());
    }
}
