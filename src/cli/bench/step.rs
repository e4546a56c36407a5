//! `lrc bench step`: one whole U-Net training step on the GPU (forward, mean of the output,
//! backward, Adam), the step `scripts/torch_reference.py --bench step` times in PyTorch (eager
//! and torch.compile) on the same model, so the two compare directly. With `--method
//! global|local|joint`, a pre-training step instead, the one `lrc pretrain` queues
//! (`PretrainState::queue_step`) on a batch already on the device, which
//! `scripts/torch_reference.py --bench pretrain --method` times in PyTorch.
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

use super::lrc_loss::{LrcLossCase, grid_fits, grid_samples};
use super::unet_convs;
use crate::autograd::Tape;
use crate::device::Device;
use crate::device::cuda::{CudaDevice, GpuTimer};
use crate::error::{Error, Result};
use crate::nn::{ParamStore, UNet, UNetConfig};
use crate::ops::local_contrast::RegionSamples;
use crate::optim::{Optimizer, OptimizerKind};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use crate::train::pretrain::{Method, PretrainConfig, PretrainState, StepBatch};

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
    /// What the step trains: the U-Net on the mean of its output with Adam (supervised, the step
    /// `scripts/torch_reference.py --bench step` times), or a pre-training step as `lrc pretrain`
    /// queues it, with the thesis's settings, on a batch already on the device (`--bench
    /// pretrain --method` there).
    #[arg(long, value_enum, default_value_t = StepMethod::Supervised)]
    pub method: StepMethod,
    /// Regions per image for the local loss (local, joint): the cells of a grid, as `lrc bench
    /// lrc-loss` draws them.
    #[arg(long, default_value_t = 64)]
    pub regions: usize,
    /// Samples per region and view (local, joint).
    #[arg(long, default_value_t = 32)]
    pub samples: usize,
}

/// The benchmarked U-Net: one input channel, `--base` channels doubling per level up to 512.
fn unet_config(args: &StepBenchArgs) -> UNetConfig {
    UNetConfig {
        in_channels: 1,
        base_width: args.base,
        depth: args.depth,
        max_width: 512,
    }
}

/// What a benchmarked step trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StepMethod {
    /// The U-Net on the mean of its output, with Adam.
    Supervised,
    /// MoCo pre-training (`lrc pretrain global`).
    Global,
    /// LRC pre-training (`lrc pretrain local`).
    Local,
    /// Both losses on one network (`lrc pretrain joint`).
    Joint,
}

impl StepMethod {
    fn pretraining(self) -> Option<Method> {
        match self {
            StepMethod::Supervised => None,
            StepMethod::Global => Some(Method::Global),
            StepMethod::Local => Some(Method::Local),
            StepMethod::Joint => Some(Method::Joint),
        }
    }
}

/// A pre-training state and one batch for it on the device: both views, grid region samples,
/// a case per image.
struct PretrainRig {
    state: PretrainState,
    x: Tensor,
    x_pos: Tensor,
    samples: Vec<RegionSamples>,
    cases: Vec<i64>,
}

impl PretrainRig {
    fn new(args: &StepBenchArgs, device: &Device, method: Method) -> Result<PretrainRig> {
        if method.has_local() && !grid_fits(args.regions, args.size) {
            return Err(Error::config(format!(
                "{} regions, one grid cell each, do not fit {1} x {1} pixels",
                args.regions, args.size
            )));
        }
        let mut config = PretrainConfig::thesis(method);
        config.unet = unet_config(args);
        config.embed_dim = args.base;
        config.batch = args.batch;
        config.crop = args.size;
        config.samples = args.samples;
        config.unet.check_input(args.size, args.size)?;
        let mut state = PretrainState::new(config)?;
        state.to_device(device)?;
        let mut rng = Rng::new(0x5eed);
        let view = |rng: &mut Rng| {
            Tensor::uniform(vec![args.batch, 1, args.size, args.size], 0.0, 1.0, DType::F32, rng).to_device(device)
        };
        let (x, x_pos) = (view(&mut rng)?, view(&mut rng)?);
        let samples = if method.has_local() {
            let case = LrcLossCase {
                batch: args.batch,
                d: args.base,
                regions: args.regions,
                samples: args.samples,
                size: args.size,
                pixels: "unit",
            };
            grid_samples(&case, &mut rng)
        } else {
            Vec::new()
        };
        Ok(PretrainRig {
            state,
            x,
            x_pos,
            samples,
            cases: (0..args.batch as i64).collect(),
        })
    }

    /// One step queued on the device, as `lrc pretrain` queues it, without reading the loss.
    fn step(&mut self) -> Result<()> {
        let lr = self.state.config.lr;
        let batch = StepBatch {
            x: &self.x,
            x_pos: &self.x_pos,
            samples: &self.samples,
            cases: &self.cases,
        };
        self.state.queue_step(batch, lr, None)
    }
}

/// The benchmarked step of either kind.
enum Rig {
    Supervised(Box<StepRig>),
    Pretrain(Box<PretrainRig>),
}

impl Rig {
    fn step(&mut self) -> Result<()> {
        match self {
            Rig::Supervised(rig) => rig.step(),
            Rig::Pretrain(rig) => rig.step(),
        }
    }
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
        let config = unet_config(args);
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
    let mut rig = match args.method.pretraining() {
        None => Rig::Supervised(Box::new(StepRig::new(args, &device)?)),
        Some(method) => Rig::Pretrain(Box::new(PretrainRig::new(args, &device, method)?)),
    };
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
    let method_name = format!("{:?}", args.method).to_lowercase();
    let what = match &rig {
        Rig::Supervised(_) => "U-Net training step (Adam)".to_string(),
        Rig::Pretrain(rig) => {
            let c = &rig.state.config;
            let global = c.method.has_global().then(|| format!(", queue {}", c.queue));
            let local = c
                .method
                .has_local()
                .then(|| format!(", {} regions of {} samples", args.regions, c.samples));
            format!(
                "pre-training step (lrc pretrain {method_name}{}{})",
                global.unwrap_or_default(),
                local.unwrap_or_default()
            )
        }
    };
    println!(
        "{} (sm_{}{}): {what}, batch {} 1x{}x{} base {} depth {}",
        gpu.name(),
        gpu.compute_capability().0,
        gpu.compute_capability().1,
        args.batch,
        args.size,
        args.size,
        args.base,
        args.depth
    );
    // The convolutions' rate for the supervised step alone, whose convolutions `macs` counts.
    let rate = if args.method == StepMethod::Supervised {
        format!("; convolutions {tflops:.1} TFLOP/s")
    } else {
        String::new()
    };
    println!(
        "median {median:.2} ms, fastest {fastest:.2} ms over {} steps{rate}; \
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
        // Pre-training steps apart, so that the supervised step's tables keep their one kind.
        "bench": if args.method == StepMethod::Supervised { "step" } else { "pretrain-step" },
        "method": method_name,
        "regions": args.regions,
        "samples": args.samples,
        "impl": "lrc",
        "device": gpu.name(),
        "batch": args.batch,
        "size": args.size,
        "base": args.base,
        "depth": args.depth,
        "median_ms": median,
        "fastest_ms": fastest,
        // Counted for the supervised step's convolutions alone.
        "conv_tflops": (args.method == StepMethod::Supervised).then_some(tflops),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(method: StepMethod) -> StepBenchArgs {
        StepBenchArgs {
            batch: 2,
            size: 32,
            base: 4,
            depth: 3,
            repeats: 1,
            warmup: 0,
            json: PathBuf::from("unused.jsonl"),
            gpu: 0,
            profile: false,
            method,
            regions: 9,
            samples: 3,
        }
    }

    /// The pre-training rigs run their steps anywhere (the benchmark times them on a GPU): the
    /// state follows the arguments, the local loss gets its grid samples, and a step changes the
    /// weights.
    #[test]
    fn pretraining_rigs_queue_the_steps_lrc_pretrain_takes() {
        for method in [StepMethod::Global, StepMethod::Local, StepMethod::Joint] {
            let a = args(method);
            let m = method.pretraining().unwrap();
            let mut rig = PretrainRig::new(&a, &Device::Cpu, m).unwrap();
            assert_eq!(rig.state.config.method, m);
            assert_eq!((rig.state.config.batch, rig.state.config.crop), (2, 32));
            assert_eq!(rig.x.shape(), &[2, 1, 32, 32]);
            if m.has_local() {
                assert_eq!(rig.samples.len(), 2);
                assert!(
                    rig.samples
                        .iter()
                        .all(|s| s.labels.len() == 9 && s.q.len() == 27 && s.p.len() == 27)
                );
            } else {
                assert!(rig.samples.is_empty());
            }
            let before = rig.state.params.params()[0].value.to_f32_vec().unwrap();
            rig.step().unwrap();
            rig.step().unwrap();
            let after = rig.state.params.params()[0].value.to_f32_vec().unwrap();
            assert_ne!(
                before, after,
                "{method:?}: two steps left the first weights as they were"
            );
        }
        assert_eq!(StepMethod::Supervised.pretraining(), None);
        // 1089 regions need a 33 x 33 grid: more cells than a 32 x 32 image has pixels per side.
        let too_many = StepBenchArgs {
            regions: 1089,
            ..args(StepMethod::Local)
        };
        assert!(PretrainRig::new(&too_many, &Device::Cpu, Method::Local).is_err());
        assert!(PretrainRig::new(&too_many, &Device::Cpu, Method::Global).is_ok());
    }
}
