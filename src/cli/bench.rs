//! `lrc bench`: timings of the CUDA kernels on the shapes the models use.
//!
//! `lrc bench conv` times every convolution of the default U-Net (forward, backward-data and
//! backward-weight) with CUDA events and prints the median of warm repeats and the achieved
//! TFLOP/s, as a table and as JSON lines; `scripts/torch_bench.py --bench conv` prints the same
//! for PyTorch (cuDNN, with TF32 and with BF16 operands) so that the two can be compared line by
//! line, each lrc version with cuDNN at its precision.
//!
//! `lrc bench norm` times instance norm + ReLU alone at the U-Net's layer shapes and reports the
//! achieved memory bandwidth (see [`norm`]); `lrc bench step` one whole training step
//! ([`step`]); `lrc bench lrc-loss` the fused local loss ([`lrc_loss`]);
//! `lrc bench superpixels` times Felzenszwalb on the CPU and the GPU (see [`superpixels`]).

pub mod batch;
pub mod lrc_loss;
pub mod norm;
pub mod step;
pub mod superpixels;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};

use crate::device::cuda::conv::{
    ConvLaunch, ConvPass, conv_transpose2d_backward_data, conv_transpose2d_backward_weight, conv_transpose2d_forward,
    conv2d_backward_data, conv2d_backward_weight, conv2d_forward, plan, transposed_plan,
};
use crate::device::cuda::{ConvAlgo, ConvTransposeGeom, CudaDevice, CudaStorage, GpuTimer};
use crate::error::{Error, Result};
use crate::ops::conv::ConvGeom;
use crate::rng::Rng;

#[derive(Debug, Subcommand)]
pub enum BenchWhat {
    /// Time every convolution of the default U-Net: forward, backward-data, backward-weight.
    Conv(ConvBenchArgs),
    /// Time one whole U-Net training step (forward, backward, Adam) on the GPU.
    Step(step::StepBenchArgs),
    /// Time instance norm + ReLU, forward and backward, at each level of the default U-Net.
    Norm(norm::NormBenchArgs),
    /// Time the fused LRC local loss, forward and forward + backward, and its memory.
    LrcLoss(lrc_loss::LrcLossBenchArgs),
    /// Slices per second of Felzenszwalb superpixels, exact CPU version and GPU version.
    Superpixels(superpixels::SuperpixelBenchArgs),
    /// Milliseconds per training batch built on the host, per stage, on one thread and on all.
    Batch(batch::BatchBenchArgs),
}

#[derive(Debug, Args)]
pub struct ConvBenchArgs {
    /// Images per batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Height and width of the input slices.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Channels of the first level; each level down doubles them.
    #[arg(long, default_value_t = 32)]
    pub base: usize,
    /// Levels of the U-Net, the bottleneck included.
    #[arg(long, default_value_t = 5)]
    pub depth: usize,
    /// Channels of the input images.
    #[arg(long, default_value_t = 1)]
    pub in_channels: usize,
    /// Output classes of the final 1x1 convolution.
    #[arg(long, default_value_t = 14)]
    pub classes: usize,
    /// fp32-tiled, tf32-mma, bf16-mma, tf32-wgmma, bf16-wgmma (compute capability 9.0 only), tf32-mma-tap, bf16-mma-tap, tf32-mma-wide, bf16-mma-wide, tf32-mma-halo, bf16-mma-halo, or all
    /// (every one the device runs); or a choice among them, tf32-fastest or bf16-fastest (timed per
    /// pass in the warm-up runs); default: the device's, LRC_CONV_ALGO or tf32-mma-halo.
    #[arg(long)]
    pub algo: Option<String>,
    /// Timed runs per pass; the median is reported.
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
    /// Untimed runs before them.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Where to write one JSON object per timed pass.
    #[arg(long, default_value = "bench-conv.jsonl")]
    pub json: PathBuf,
    /// Which GPU.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
    /// Print the convolutions and exit (needs no GPU).
    #[arg(long)]
    pub list: bool,
}

/// Runs `lrc bench <what>`.
pub fn run(what: BenchWhat) -> Result<()> {
    match what {
        BenchWhat::Conv(args) => bench_conv(&args),
        BenchWhat::Step(args) => step::bench_step(&args),
        BenchWhat::Norm(args) => norm::bench_norm(&args),
        BenchWhat::LrcLoss(args) => lrc_loss::run(&args),
        BenchWhat::Superpixels(args) => superpixels::bench_superpixels(&args),
        BenchWhat::Batch(args) => batch::bench_batch(&args),
    }
}

/// A convolution layer of the benchmarked U-Net.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    Conv(ConvGeom),
    Transposed(ConvTransposeGeom),
}

impl Layer {
    /// Multiply-adds of the forward pass (each backward pass costs the same).
    pub fn macs(&self) -> usize {
        match self {
            Layer::Conv(g) => g.macs(),
            Layer::Transposed(g) => g.macs(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Layer::Conv(_) => "conv",
            Layer::Transposed(_) => "conv_transpose",
        }
    }

    /// (n, c_in, h, w, c_out, kh, kw, stride, pad, h_out, w_out)
    fn dims(&self) -> [usize; 11] {
        match self {
            Layer::Conv(g) => [
                g.n,
                g.c_in,
                g.h,
                g.w,
                g.c_out,
                g.kh,
                g.kw,
                g.stride,
                g.pad,
                g.h_out(),
                g.w_out(),
            ],
            Layer::Transposed(g) => [
                g.n,
                g.c_in,
                g.h,
                g.w,
                g.c_out,
                g.kh,
                g.kw,
                g.stride,
                g.pad,
                g.h_out(),
                g.w_out(),
            ],
        }
    }
}

/// Every convolution of a U-Net with `depth` levels: per encoder level a 3x3 convolution into
/// the level's channels and one within them (2x2 pooling between levels); per decoder level a
/// 2x2 stride-2 transposed convolution up, then 3x3 convolutions on the concatenation (2C -> C)
/// and C -> C; a final 1x1 convolution to the classes.
pub fn unet_convs(
    batch: usize,
    size: usize,
    base: usize,
    depth: usize,
    in_channels: usize,
    classes: usize,
) -> Result<Vec<(String, Layer)>> {
    if depth == 0 || batch == 0 || base == 0 || in_channels == 0 || classes == 0 {
        return Err(Error::config(
            "batch, base, depth, in-channels and classes must be positive",
        ));
    }
    1usize
        .checked_shl(depth as u32 - 1)
        .filter(|d| *d <= size && size.is_multiple_of(*d))
        .ok_or_else(|| {
            Error::config(format!(
                "size {size} must be a positive multiple of 2^(depth-1) = 2^{}",
                depth - 1
            ))
        })?;
    let conv = |c_in, c_out, s, k: usize| {
        Layer::Conv(ConvGeom {
            n: batch,
            c_in,
            h: s,
            w: s,
            c_out,
            kh: k,
            kw: k,
            stride: 1,
            pad: k / 2,
        })
    };
    let mut layers = Vec::new();
    for level in 0..depth {
        let (s, c) = (size >> level, base << level);
        let c_in = if level == 0 { in_channels } else { c / 2 };
        layers.push((format!("enc{}.conv1", level + 1), conv(c_in, c, s, 3)));
        layers.push((format!("enc{}.conv2", level + 1), conv(c, c, s, 3)));
    }
    for level in (0..depth - 1).rev() {
        let (s, c) = (size >> level, base << level);
        let up = ConvTransposeGeom {
            n: batch,
            c_in: 2 * c,
            h: s / 2,
            w: s / 2,
            c_out: c,
            kh: 2,
            kw: 2,
            stride: 2,
            pad: 0,
        };
        layers.push((format!("dec{}.up", level + 1), Layer::Transposed(up)));
        layers.push((format!("dec{}.conv1", level + 1), conv(2 * c, c, s, 3)));
        layers.push((format!("dec{}.conv2", level + 1), conv(c, c, s, 3)));
    }
    layers.push(("head".to_string(), conv(base, classes, size, 1)));
    Ok(layers)
}

const PASSES: [&str; 3] = ["forward", "backward_data", "backward_weight"];

/// Device buffers of one layer: input, weight, bias, output gradient.
struct Operands {
    x: CudaStorage,
    w: CudaStorage,
    b: CudaStorage,
    dy: CudaStorage,
}

fn random(device: &Arc<CudaDevice>, len: usize, rng: &mut Rng) -> Result<CudaStorage> {
    let host: Vec<f32> = (0..len).map(|_| rng.range(-1.0, 1.0) as f32).collect();
    CudaStorage::from_host(device, &host)
}

fn operands(device: &Arc<CudaDevice>, layer: &Layer, rng: &mut Rng) -> Result<Operands> {
    let [n, c_in, h, w, c_out, kh, kw, _, _, h_out, w_out] = layer.dims();
    Ok(Operands {
        x: random(device, n * c_in * h * w, rng)?,
        w: random(device, c_in * c_out * kh * kw, rng)?,
        b: random(device, c_out, rng)?,
        dy: random(device, n * c_out * h_out * w_out, rng)?,
    })
}

fn run_pass(layer: &Layer, pass: &str, o: &Operands, algo: ConvAlgo) -> Result<()> {
    match (layer, pass) {
        (Layer::Conv(g), "forward") => conv2d_forward(g, &o.x, &o.w, Some(&o.b), algo).map(drop),
        (Layer::Conv(g), "backward_data") => conv2d_backward_data(g, &o.dy, &o.w, algo).map(drop),
        (Layer::Conv(g), _) => conv2d_backward_weight(g, &o.x, &o.dy, algo).map(drop),
        (Layer::Transposed(g), "forward") => conv_transpose2d_forward(g, &o.x, &o.w, Some(&o.b), algo).map(drop),
        (Layer::Transposed(g), "backward_data") => conv_transpose2d_backward_data(g, &o.dy, &o.w, algo).map(drop),
        (Layer::Transposed(g), _) => conv_transpose2d_backward_weight(g, &o.x, &o.dy, algo).map(drop),
    }
}

/// The launch a version plans for `pass` of `layer` on a device with `multiprocessors` (its
/// kernel, and the splits of its reduction), for the record; None for a choice, which picks a
/// version when it first meets the pass.
fn planned(layer: &Layer, pass: &str, algo: ConvAlgo, multiprocessors: usize) -> Option<ConvLaunch> {
    if ConvAlgo::CHOICES.contains(&algo) {
        return None;
    }
    let pass = match pass {
        "forward" => ConvPass::Forward,
        "backward_data" => ConvPass::BackwardData,
        _ => ConvPass::BackwardWeight,
    };
    Some(match layer {
        Layer::Conv(g) => plan(pass, g, algo, multiprocessors),
        Layer::Transposed(g) => transposed_plan(pass, g, algo, multiprocessors),
    })
}

/// A launch as a line of the table names it: its kernel, and its splits where it splits.
fn launch_label(launch: ConvLaunch) -> String {
    match launch.splits {
        1 => launch.kernel.to_string(),
        splits => format!("{} x{splits} splits", launch.kernel),
    }
}

/// Milliseconds of each timed run, measured on the device with events.
pub(super) fn time_runs(
    timer: &GpuTimer,
    warmup: usize,
    repeats: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        timer.start()?;
        f()?;
        timer.stop()?;
        times.push(timer.elapsed_ms()? as f64);
    }
    Ok(times)
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn bench_conv(args: &ConvBenchArgs) -> Result<()> {
    let layers = unet_convs(
        args.batch,
        args.size,
        args.base,
        args.depth,
        args.in_channels,
        args.classes,
    )?;
    if args.list {
        for (name, layer) in &layers {
            println!("{name:<12} {:<14} {:?}", layer.kind(), layer.dims());
        }
        return Ok(());
    }
    if args.repeats == 0 {
        return Err(Error::config("--repeats must be at least 1"));
    }
    let device = CudaDevice::open(args.gpu)?;
    let algos: Vec<ConvAlgo> = match args.algo.as_deref() {
        // Every version this device runs: the wgmma ones need compute capability 9.0.
        Some("all") => ConvAlgo::ALL
            .into_iter()
            .filter(|algo| {
                let runs = algo.runs_on(device.compute_capability());
                if !runs {
                    println!("skipping {algo}: it needs a compute capability 9.0 GPU (sm_90a)");
                }
                runs
            })
            .collect(),
        Some(name) => {
            let algo: ConvAlgo = name.parse()?;
            algo.check_device(&device)?;
            vec![algo]
        }
        None => vec![device.conv_algo()],
    };
    let file = File::create(&args.json).map_err(|e| Error::io(&args.json, e))?;
    let mut json = BufWriter::new(file);
    let timer = GpuTimer::new(&device)?;
    let mut rng = Rng::new(0x00c0_ffee);
    println!(
        "{} (sm_{}{}), batch {} size {} base {} depth {}, median of {} runs",
        device.name(),
        device.compute_capability().0,
        device.compute_capability().1,
        args.batch,
        args.size,
        args.base,
        args.depth,
        args.repeats
    );
    println!(
        "{:<12} {:<15} {:<22} {:<10} {:>10} {:>9}  kernel",
        "layer", "pass", "shape", "algo", "ms", "TFLOP/s"
    );
    let mut totals = vec![0.0f64; algos.len()];
    for (name, layer) in &layers {
        let o = operands(&device, layer, &mut rng)?;
        let [n, c_in, h, w, c_out, kh, kw, stride, pad, h_out, w_out] = layer.dims();
        let shape = format!("{n}x{c_in}x{h}x{w}>{c_out} k{kh}");
        for pass in PASSES {
            for (ai, &algo) in algos.iter().enumerate() {
                let times = time_runs(&timer, args.warmup, args.repeats, || run_pass(layer, pass, &o, algo))?;
                let min_ms = times.iter().copied().fold(f64::INFINITY, f64::min);
                let ms = median(times);
                totals[ai] += ms;
                let flop = 2.0 * layer.macs() as f64;
                let tflops = flop / (ms * 1e-3) / 1e12;
                let launch = planned(layer, pass, algo, device.multiprocessors());
                println!(
                    "{name:<12} {pass:<15} {shape:<22} {:<10} {ms:>10.4} {tflops:>9.2}  {}",
                    algo.name(),
                    launch.map_or("(chosen per pass)".to_string(), launch_label)
                );
                let line = serde_json::json!({
                    "bench": "conv",
                    "engine": "lrc",
                    "device": device.name(),
                    "layer": name,
                    "kind": layer.kind(),
                    "pass": pass,
                    "algo": algo.name(),
                    "n": n, "c_in": c_in, "h": h, "w": w, "c_out": c_out,
                    "kh": kh, "kw": kw, "stride": stride, "pad": pad, "h_out": h_out, "w_out": w_out,
                    "gflop": flop / 1e9,
                    "median_ms": ms,
                    "min_ms": min_ms,
                    "tflops": tflops,
                    "kernel": launch.map(|l| l.kernel),
                    "splits": launch.map(|l| l.splits),
                    "repeats": args.repeats,
                });
                writeln!(json, "{line}").map_err(|e| Error::io(&args.json, e))?;
            }
        }
    }
    json.flush().map_err(|e| Error::io(&args.json, e))?;
    for (algo, total) in algos.iter().zip(&totals) {
        println!("total {:<10} {total:>10.3} ms", algo.name());
    }
    let stats = device.alloc_stats();
    println!(
        "allocator: {} device allocations, {} cache hits, peak {:.1} MiB in use",
        stats.device_allocations,
        stats.cache_hits,
        stats.peak_bytes_in_use as f64 / (1 << 20) as f64
    );
    println!("JSON lines written to {}", args.json.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_unet_has_every_convolution() {
        let layers = unet_convs(16, 256, 32, 5, 1, 14).unwrap();
        // 5 encoder levels x 2, 4 decoder levels x 3, the head.
        assert_eq!(layers.len(), 10 + 12 + 1);
        let find = |n: &str| layers.iter().find(|(name, _)| name == n).unwrap().1;
        assert_eq!(find("enc1.conv1").dims()[..5], [16, 1, 256, 256, 32]);
        assert_eq!(find("enc5.conv2").dims()[..5], [16, 512, 16, 16, 512]);
        assert_eq!(find("dec4.up").dims(), [16, 512, 16, 16, 256, 2, 2, 2, 0, 32, 32]);
        assert_eq!(find("dec1.conv1").dims()[..5], [16, 64, 256, 256, 32]);
        assert_eq!(find("head").dims(), [16, 32, 256, 256, 14, 1, 1, 1, 0, 256, 256]);
        // Every 3x3 convolution keeps the spatial size.
        for (_, layer) in &layers {
            if let Layer::Conv(g) = layer {
                assert_eq!((g.h_out(), g.w_out()), (g.h, g.w));
            }
        }
    }

    #[test]
    fn the_benchmarked_up_convolutions_run_forward_by_tap() {
        let layers = unet_convs(16, 256, 32, 5, 1, 14).unwrap();
        let mut ups = 0;
        for (name, layer) in &layers {
            if let Layer::Transposed(g) = layer {
                for algo in ConvAlgo::ALL {
                    let kernel = transposed_plan(ConvPass::Forward, g, algo, 132).kernel;
                    assert!(kernel.starts_with("conv_tfwd_"), "{name} {algo}: {kernel}");
                }
                ups += 1;
            }
        }
        assert_eq!(ups, 4);
    }

    #[test]
    fn the_record_names_each_versions_kernel() {
        let layers = unet_convs(16, 256, 32, 5, 1, 14).unwrap();
        let find = |n: &str| &layers.iter().find(|(name, _)| name == n).unwrap().1;
        let launch = |layer, pass, algo| planned(layer, pass, algo, 132).map(|l| l.kernel);
        let dec1 = find("dec1.conv1");
        assert_eq!(
            launch(dec1, "backward_weight", ConvAlgo::Tf32MmaHalo),
            Some("conv_bwd_weight_tf32_k3h_m32_w32")
        );
        assert_eq!(
            launch(find("enc5.conv2"), "backward_weight", ConvAlgo::Bf16MmaHalo),
            Some("conv_bwd_weight_bf16_k3h_m64_w16")
        );
        assert_eq!(launch(dec1, "forward", ConvAlgo::Tf32Mma), Some("conv_fwd_tf32_k3_n32"));
        assert_eq!(
            launch(find("dec4.up"), "forward", ConvAlgo::Tf32MmaHalo),
            Some("conv_tfwd_tf32_k2s2_n64")
        );
        assert_eq!(launch(dec1, "forward", ConvAlgo::Tf32Fastest), None);
        // The deepest level's forward pass splits its depth: 128 wide tiles for 264 slots.
        let enc5 = planned(find("enc5.conv2"), "forward", ConvAlgo::Tf32MmaWide, 132).unwrap();
        assert_eq!(launch_label(enc5), "conv_fwd_tf32_k3t_n128 x2 splits");
        let dec1_launch = planned(dec1, "forward", ConvAlgo::Tf32MmaWide, 132).unwrap();
        assert_eq!(launch_label(dec1_launch), "conv_fwd_tf32_k3t_n32");
    }

    #[test]
    fn sizes_that_do_not_halve_cleanly_are_refused() {
        assert!(unet_convs(1, 100, 32, 5, 1, 2).is_err());
        assert!(unet_convs(1, 8, 32, 5, 1, 2).is_err());
        assert!(unet_convs(1, 16, 32, 5, 1, 2).is_ok());
    }
}
