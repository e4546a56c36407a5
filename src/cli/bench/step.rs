//! `lrc bench step`: one whole U-Net training step on the GPU (forward, mean of the output,
//! backward, Adam), the step `scripts/torch_reference.py --bench step` times in PyTorch (eager
//! and torch.compile) on the same model, so the two compare directly.
//!
//! Reported: the median and fastest of the timed steps (CUDA events around each), the achieved
//! TFLOP/s of the step's convolutions (forward, backward-data and backward-weight: 6 x the
//! multiply-adds), the device allocations and host/device copies made in the timed steps (a
//! steady step makes none: its batch is already on the device and nothing is read back), and the
//! allocator's peak bytes in use.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::unet_convs;
use crate::autograd::Tape;
use crate::device::Device;
use crate::device::cuda::{CudaDevice, GpuTimer};
use crate::error::{Error, Result};
use crate::nn::{ParamStore, UNet, UNetConfig};
use crate::optim::{Optimizer, OptimizerKind};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

#[derive(Debug, Args)]
pub struct StepBenchArgs {
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
    /// Timed steps; the median is reported.
    #[arg(long, default_value_t = 10)]
    pub repeats: usize,
    /// Untimed steps before them (the first allocates the caching allocator's blocks).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Where to append one JSON object with the result.
    #[arg(long, default_value = "bench-step.jsonl")]
    pub json: PathBuf,
    /// Which GPU.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
    /// Print the per-range host table and the per-kernel GPU times of the timed steps (each
    /// launch is then bracketed by CUDA events, which slows the step slightly).
    #[arg(long)]
    pub profile: bool,
}

/// The model, its parameters on the device, the optimizer and the batch of one benchmark.
struct StepRig {
    unet: UNet,
    params: ParamStore,
    optimizer: Optimizer,
    x: Tensor,
}

impl StepRig {
    fn new(args: &StepBenchArgs, device: &Device) -> Result<StepRig> {
        let mut rng = Rng::new(0x5eed);
        let config = UNetConfig {
            in_channels: 1,
            base_width: args.base,
            depth: args.depth,
            max_width: 512,
        };
        config.check_input(args.size, args.size)?;
        let mut store = ParamStore::new();
        let unet = UNet::new(&mut store, "unet", config, &mut rng)?;
        let x = Tensor::uniform(
            vec![args.batch, 1, args.size, args.size],
            0.0,
            1.0,
            DType::F32,
            &mut rng,
        );
        Ok(StepRig {
            unet,
            params: store.for_device(device)?,
            // As the PyTorch reference: Adam, lr 1e-4, no weight decay.
            optimizer: Optimizer::new(OptimizerKind::adam(0.0)),
            x: x.to_device(device)?,
        })
    }

    /// One training step, queued on the device; nothing is read back.
    fn step(&mut self) -> Result<()> {
        let mut tape = Tape::new();
        let bound = self.params.bind(&mut tape);
        let x = tape.constant(self.x.clone());
        let y = self.unet.forward(&mut tape, &bound, x)?;
        let loss = tape.mean(y)?;
        let grads = tape.backward(loss)?;
        self.params.zero_grad();
        self.params.accumulate_grads(&grads, &bound)?;
        drop(grads);
        drop(tape);
        self.optimizer.step(&mut self.params, 1e-4)
    }
}

pub fn bench_step(args: &StepBenchArgs) -> Result<()> {
    if args.repeats == 0 {
        return Err(Error::config("--repeats must be at least 1"));
    }
    // The convolutions of the U-Net without the classification head, which the step lacks.
    let macs: usize = unet_convs(args.batch, args.size, args.base, args.depth, 1, 1)?
        .iter()
        .filter(|(name, _)| name != "head")
        .map(|(_, layer)| layer.macs())
        .sum();
    let gpu = CudaDevice::open(args.gpu)?;
    let device = Device::Cuda(gpu.clone());
    let mut rig = StepRig::new(args, &device)?;
    let timer = GpuTimer::new(&gpu)?;
    for _ in 0..args.warmup {
        rig.step()?;
    }
    gpu.synchronize()?;
    crate::profile::take_table();
    crate::profile::enable_for(args.profile, &device);
    let before = gpu.alloc_stats();
    let copies_before = gpu.transfers();
    let mut times = Vec::with_capacity(args.repeats);
    for _ in 0..args.repeats {
        timer.start()?;
        {
            let _step = crate::profile::range("phase.step");
            rig.step()?;
        }
        timer.stop()?;
        times.push(timer.elapsed_ms()? as f64);
    }
    let after = gpu.alloc_stats();
    let copies = gpu.transfers();
    let (uploads, downloads) = (
        copies.to_device - copies_before.to_device,
        copies.to_host - copies_before.to_host,
    );
    let fastest = times.iter().copied().fold(f64::INFINITY, f64::min);
    // The mean of the two middle steps for an even count, as Python's statistics.median.
    let median = super::median(times);
    let tflops = 6.0 * macs as f64 / (median * 1e-3) / 1e12;
    let allocations = after.device_allocations - before.device_allocations;
    println!(
        "{} (sm_{}{}): U-Net training step, batch {} 1x{}x{} base {} depth {}, Adam",
        gpu.name(),
        gpu.compute_capability().0,
        gpu.compute_capability().1,
        args.batch,
        args.size,
        args.size,
        args.base,
        args.depth
    );
    println!(
        "median {median:.2} ms, fastest {fastest:.2} ms over {} steps; convolutions {tflops:.1} TFLOP/s; \
         {allocations} device allocations and {uploads} uploads / {downloads} downloads in the timed steps; \
         peak {:.0} MiB in use",
        args.repeats,
        after.peak_bytes_in_use as f64 / (1 << 20) as f64
    );
    // What a choice of version (tf32-fastest, bf16-fastest) chose: passes per version.
    let mut chosen = std::collections::BTreeMap::<&str, usize>::new();
    for (_, version) in gpu.tuned_convs() {
        *chosen.entry(version.name()).or_default() += 1;
    }
    if !chosen.is_empty() {
        let list: Vec<String> = chosen.iter().map(|(v, n)| format!("{v} {n}")).collect();
        println!(
            "{} chose per pass and geometry: {}",
            gpu.conv_algo().name(),
            list.join(", ")
        );
    }
    let line = serde_json::json!({
        "bench": "step",
        "impl": "lrc",
        "device": gpu.name(),
        "batch": args.batch,
        "size": args.size,
        "base": args.base,
        "depth": args.depth,
        "median_ms": median,
        "fastest_ms": fastest,
        "conv_tflops": tflops,
        "allocations_after_warmup": allocations,
        "uploads": uploads,
        "downloads": downloads,
        "peak_bytes": after.peak_bytes_in_use,
        "conv_algo": gpu.conv_algo().name(),
        "conv_versions_chosen": chosen,
    });
    crate::profile::print_training_table(&device);
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.json)
        .map_err(|e| Error::io(&args.json, e))?;
    writeln!(file, "{line}").map_err(|e| Error::io(&args.json, e))?;
    Ok(())
}
