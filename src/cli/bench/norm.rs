//! `lrc bench norm`: instance norm + ReLU alone, forward and backward, at the U-Net's layer
//! shapes (one per level: `batch x base*2^l x (size/2^l)^2`), timed with CUDA events; the median
//! of warm repeats and the achieved memory bandwidth next to the card's peak.
//!
//! Bytes counted: the forward reads x (twice when the chosen launch streams the plane twice) and
//! writes y; the backward reads x and dy (twice each when it streams) and writes dx. The
//! per-plane statistics and per-channel parameters are a few KiB and left out. `min_bytes`
//! counts one read of each input, the least any implementation moves; GB/s on it ("eff") is
//! what compares with PyTorch (`scripts/torch_bench.py --bench norm`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use cudarc::driver::sys::CUdevice_attribute;

use super::{median, random, time_runs};
use crate::device::cuda::norm::{NormGeom, NormPass, instance_norm_backward, instance_norm_forward, launch_for};
use crate::device::cuda::{CudaDevice, GpuTimer};
use crate::error::{Error, Result};
use crate::ops::instance_norm::{Activation, DEFAULT_EPS};
use crate::rng::Rng;

#[derive(Debug, Args)]
pub struct NormBenchArgs {
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
    /// Accepted so that `bench conv`'s command line serves; the norms do not depend on it.
    #[arg(long, default_value_t = 1, hide = true)]
    pub in_channels: usize,
    /// Accepted so that `bench conv`'s command line serves; the norms do not depend on it.
    #[arg(long, default_value_t = 14, hide = true)]
    pub classes: usize,
    /// Timed runs per pass; the median is reported.
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
    /// Untimed runs before them.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Where to write one JSON object per timed pass.
    #[arg(long, default_value = "bench-norm.jsonl")]
    pub json: PathBuf,
    /// Which GPU.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
    /// Print the layers and exit (needs no GPU).
    #[arg(long)]
    pub list: bool,
}

/// One instance norm of the benchmarked U-Net: `n x c x side x side`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormLayer {
    pub n: usize,
    pub c: usize,
    pub side: usize,
}

impl NormLayer {
    fn geom(&self) -> NormGeom {
        NormGeom {
            n: self.n,
            c: self.c,
            plane: self.side * self.side,
        }
    }

    fn shape(&self) -> String {
        format!("{}x{}x{}x{}", self.n, self.c, self.side, self.side)
    }
}

/// The distinct instance-norm shapes of a U-Net with `depth` levels: each level's norms (two in
/// the encoder, two in the decoder) share one.
pub fn unet_norms(batch: usize, size: usize, base: usize, depth: usize) -> Result<Vec<(String, NormLayer)>> {
    if depth == 0 || batch == 0 || base == 0 {
        return Err(Error::config("batch, base and depth must be positive"));
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
    Ok((0..depth)
        .map(|level| {
            let layer = NormLayer {
                n: batch,
                c: base << level,
                side: size >> level,
            };
            (format!("level{}", level + 1), layer)
        })
        .collect())
}

/// Peak memory bandwidth in bytes/s of the cards this project targets, by the name the driver
/// reports (the vendors' data sheets).
pub fn peak_bandwidth_by_name(name: &str) -> Option<f64> {
    let n = name.to_ascii_uppercase();
    let gb = if n.contains("H200") {
        4800.0
    } else if n.contains("H100") && n.contains("NVL") {
        3900.0
    } else if n.contains("H100") && n.contains("PCIE") {
        2000.0
    } else if n.contains("H100") {
        // SXM5 80 GB (the driver says "H100 80GB HBM3").
        3350.0
    } else if n.contains("A100") && n.contains("80GB") && n.contains("PCIE") {
        1935.0
    } else if n.contains("A100") && n.contains("80GB") {
        2039.0
    } else if n.contains("A100") {
        1555.0
    } else {
        return None;
    };
    Some(gb * 1e9)
}

/// Peak bandwidth in bytes/s from the memory clock (kHz) and bus width (bits): two transfers
/// per clock, as HBM and GDDR report their clocks.
pub fn peak_bandwidth_from_clock(clock_khz: i64, bus_bits: i64) -> Option<f64> {
    (clock_khz > 0 && bus_bits > 0).then(|| 2.0 * clock_khz as f64 * 1e3 * bus_bits as f64 / 8.0)
}

/// The device's peak bandwidth and where it came from.
fn peak_bandwidth(device: &CudaDevice) -> (Option<f64>, String) {
    if let Some(peak) = peak_bandwidth_by_name(device.name()) {
        return (Some(peak), format!("data sheet of the {}", device.name()));
    }
    let clock = device.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE);
    let bus = device.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH);
    match (clock, bus) {
        (Ok(clock), Ok(bus)) => match peak_bandwidth_from_clock(clock as i64, bus as i64) {
            Some(peak) => (Some(peak), format!("memory clock {} MHz x {bus}-bit bus", clock / 1000)),
            None => (None, "the driver reports no memory clock".into()),
        },
        _ => (None, "the driver reports no memory clock".into()),
    }
}

/// Device buffers of one layer.
struct Operands {
    x: crate::device::cuda::CudaStorage,
    dy: crate::device::cuda::CudaStorage,
    gamma: crate::device::cuda::CudaStorage,
    beta: crate::device::cuda::CudaStorage,
}

fn operands(device: &Arc<CudaDevice>, layer: &NormLayer, rng: &mut Rng) -> Result<Operands> {
    let g = layer.geom();
    Ok(Operands {
        x: random(device, g.len(), rng)?,
        dy: random(device, g.len(), rng)?,
        gamma: random(device, g.c, rng)?,
        beta: random(device, g.c, rng)?,
    })
}

pub(super) fn bench_norm(args: &NormBenchArgs) -> Result<()> {
    let layers = unet_norms(args.batch, args.size, args.base, args.depth)?;
    if args.list {
        for (name, layer) in &layers {
            println!("{name:<8} instance_norm+relu {}", layer.shape());
        }
        return Ok(());
    }
    if args.repeats == 0 {
        return Err(Error::config("--repeats must be at least 1"));
    }
    let device = CudaDevice::open(args.gpu)?;
    let (peak, peak_source) = peak_bandwidth(&device);
    let file = File::create(&args.json).map_err(|e| Error::io(&args.json, e))?;
    let mut json = BufWriter::new(file);
    let timer = GpuTimer::new(&device)?;
    let mut rng = Rng::new(0x00c0_ffee);
    println!(
        "{} (sm_{}{}), batch {} size {} base {} depth {}, instance norm + ReLU, median of {} runs",
        device.name(),
        device.compute_capability().0,
        device.compute_capability().1,
        args.batch,
        args.size,
        args.base,
        args.depth,
        args.repeats
    );
    match peak {
        Some(p) => println!("peak memory bandwidth {:.0} GB/s ({peak_source})", p / 1e9),
        None => println!("peak memory bandwidth unknown ({peak_source})"),
    }
    println!(
        "{:<8} {:<9} {:<18} {:<14} {:>10} {:>9} {:>9} {:>7}",
        "layer", "pass", "shape", "launch", "ms", "GB/s", "eff GB/s", "% peak"
    );
    let act = Activation::Relu;
    let mut total = 0.0;
    for (name, layer) in &layers {
        let o = operands(&device, layer, &mut rng)?;
        let g = layer.geom();
        let (_, mean, inv_std) = instance_norm_forward(&g, &o.x, &o.gamma, &o.beta, DEFAULT_EPS, act)?;
        for pass in [NormPass::Forward, NormPass::Backward] {
            let (launch, vec) = launch_for(&device, pass, g.plane);
            let values = 4.0 * g.len() as f64;
            // Bytes per value moved: inputs read `reads` times, one output written.
            let (bytes, min_bytes) = match pass {
                NormPass::Forward => (values * (launch.reads() + 1) as f64, values * 2.0),
                NormPass::Backward => (values * (2 * launch.reads() + 1) as f64, values * 3.0),
            };
            let times = time_runs(&timer, args.warmup, args.repeats, || match pass {
                NormPass::Forward => instance_norm_forward(&g, &o.x, &o.gamma, &o.beta, DEFAULT_EPS, act).map(drop),
                NormPass::Backward => {
                    instance_norm_backward(&g, &o.x, &o.dy, &o.gamma, Some(&o.beta), &mean, &inv_std, act).map(drop)
                }
            })?;
            let min_ms = times.iter().copied().fold(f64::INFINITY, f64::min);
            let ms = median(times);
            total += ms;
            let gbps = bytes / (ms * 1e-3) / 1e9;
            let eff_gbps = min_bytes / (ms * 1e-3) / 1e9;
            let pct = peak.map(|p| 100.0 * gbps * 1e9 / p);
            let pass_name = match pass {
                NormPass::Forward => "forward",
                NormPass::Backward => "backward",
            };
            let launch_name = format!("{}-v{vec}", launch.name());
            println!(
                "{name:<8} {pass_name:<9} {:<18} {launch_name:<14} {ms:>10.4} {gbps:>9.1} {eff_gbps:>9.1} {:>7}",
                layer.shape(),
                pct.map_or("?".to_string(), |p| format!("{p:.1}"))
            );
            let line = serde_json::json!({
                "bench": "norm",
                "engine": "lrc",
                "device": device.name(),
                "layer": name,
                "pass": pass_name,
                "algo": launch_name,
                "act": "relu",
                "n": g.n, "c": g.c, "h": layer.side, "w": layer.side,
                "bytes": bytes,
                "min_bytes": min_bytes,
                "median_ms": ms,
                "min_ms": min_ms,
                "gbps": gbps,
                "eff_gbps": eff_gbps,
                "peak_gbps": peak.map(|p| p / 1e9),
                "pct_peak": pct,
                "repeats": args.repeats,
            });
            writeln!(json, "{line}").map_err(|e| Error::io(&args.json, e))?;
        }
    }
    json.flush().map_err(|e| Error::io(&args.json, e))?;
    println!("total norm {total:>10.3} ms");
    println!("JSON lines written to {}", args.json.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_unet_has_one_norm_shape_per_level() {
        let layers = unet_norms(16, 256, 32, 5).unwrap();
        let shapes: Vec<String> = layers.iter().map(|(_, l)| l.shape()).collect();
        assert_eq!(
            shapes,
            [
                "16x32x256x256",
                "16x64x128x128",
                "16x128x64x64",
                "16x256x32x32",
                "16x512x16x16"
            ]
        );
        assert!(unet_norms(1, 100, 32, 5).is_err());
        assert!(unet_norms(0, 256, 32, 5).is_err());
    }

    #[test]
    fn peak_bandwidths() {
        assert_eq!(peak_bandwidth_by_name("NVIDIA H100 80GB HBM3"), Some(3.35e12));
        assert_eq!(peak_bandwidth_by_name("NVIDIA H100 PCIe"), Some(2.0e12));
        assert_eq!(peak_bandwidth_by_name("NVIDIA H200"), Some(4.8e12));
        assert_eq!(peak_bandwidth_by_name("NVIDIA A100-SXM4-80GB"), Some(2.039e12));
        assert_eq!(peak_bandwidth_by_name("NVIDIA GeForce RTX 4090"), None);
        // H100 SXM: 2619 MHz x 5120 bits, two transfers a clock.
        let from_clock = peak_bandwidth_from_clock(2_619_000, 5120).unwrap();
        assert!((from_clock / 3.35e12 - 1.0).abs() < 0.01, "{from_clock}");
        assert_eq!(peak_bandwidth_from_clock(0, 5120), None);
    }
}
