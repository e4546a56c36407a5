//! A whole U-Net training step on a CUDA GPU against the same step on the CPU in f64: the loss
//! and every parameter gradient of one forward + backward, then ten steps of each optimizer;
//! and a steady step's footprint: no device allocation and no host/device copy.
//!
//! The GPU runs the FP32 convolution kernels here (TF32 rounding would dominate the
//! comparison). Gradient tolerance per tensor: atol = 1e-4 * max|reference gradient|, rtol 1e-3;
//! for the biases before instance norm, whose gradient is zero in exact arithmetic (rounding
//! noise on both sides), atol = 1e-4 * the model's largest gradient.
//! f32 sums of up to ~2000 terms (weight gradients over 2 x 32 x 32 pixels, 576-term
//! convolutions, instance-norm statistics) carry relative errors of ~sqrt(n) * 2^-24 < 1e-5 of
//! their scale; ten layers deep, with instance norm dividing by per-plane deviations, that grows
//! by an order of magnitude at most, which leaves a factor of ten to the tolerance, while an
//! indexing or rule error is of the order of the scale itself.
//!
//! After ten optimizer steps the drift is bounded and printed: SGD within 1e-4 of the
//! parameters' scale; Adam and AdamW, whose update m / sqrt(v) has magnitude ~lr whatever the
//! gradient's size (so a gradient near zero can flip sign between f32 and f64), within
//! 2 * lr * steps at worst and, for 99% of the elements, 1e-5 or twice the drift of the same
//! steps on the CPU in f32 (the f32 twin), whichever is larger.
//!
//! These tests need a CUDA GPU: `cargo test --release -- --include-ignored`.

use lrc::autograd::Tape;
use lrc::device::Device;
use lrc::device::cuda::ConvAlgo;
use lrc::nn::{ParamStore, UNet, UNetConfig};
use lrc::optim::{Optimizer, OptimizerKind};
use lrc::rng::Rng;
use lrc::tensor::{DType, Tensor};
use lrc::testing::{Tolerance, assert_close};

mod cuda_common;
use cuda_common::{TestDevice, exclusive_device};

/// The device alone (the steady-step test counts its allocations and copies), with the FP32
/// convolution kernels.
fn gpu() -> TestDevice {
    exclusive_device(ConvAlgo::Fp32Tiled)
}

/// The bias of a convolution followed by instance norm cancels in the normalisation: its
/// gradient is zero in exact arithmetic, and both sides hold rounding noise there.
fn zero_in_exact_arithmetic(name: &str) -> bool {
    name.ends_with("conv1.bias") || name.ends_with("conv2.bias")
}

const CONFIG: UNetConfig = UNetConfig {
    in_channels: 1,
    base_width: 8,
    depth: 3,
    max_width: 512,
};

/// A U-Net, its parameters in f64 on the CPU, an input and output weights (so that every
/// output element has its own gradient).
struct Rig {
    unet: UNet,
    params: ParamStore,
    x: Tensor,
    r: Tensor,
}

fn rig() -> Rig {
    let mut rng = Rng::new(42);
    let mut params = ParamStore::new();
    let unet = UNet::new(&mut params, "unet", CONFIG, &mut rng).unwrap();
    let params = params.to_dtype(DType::F64).unwrap();
    let x = Tensor::uniform(vec![2, 1, 32, 32], 0.0, 1.0, DType::F64, &mut rng);
    let r = Tensor::uniform(vec![2, 8, 32, 32], -1.0, 1.0, DType::F64, &mut rng);
    Rig { unet, params, x, r }
}

/// loss = mean(unet(x) * r); the parameters' gradients are left in `params`.
fn forward_backward(unet: &UNet, params: &mut ParamStore, x: &Tensor, r: &Tensor) -> f64 {
    let mut tape = Tape::new();
    let bound = params.bind(&mut tape);
    let xv = tape.constant(x.clone());
    let rv = tape.constant(r.clone());
    let y = unet.forward(&mut tape, &bound, xv).unwrap();
    let weighted = tape.mul(y, rv).unwrap();
    let loss = tape.mean(weighted).unwrap();
    let value = tape.value(loss).scalar().unwrap();
    let grads = tape.backward(loss).unwrap();
    params.zero_grad();
    params.accumulate_grads(&grads, &bound).unwrap();
    value
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn unet_forward_and_backward_on_the_gpu_match_the_cpu() {
    let gpu = gpu();
    let device = Device::Cuda(gpu.clone());
    let mut cpu = rig();
    let mut on_gpu = cpu.params.for_device(&device).unwrap();
    let (xg, rg) = (cpu.x.to_device(&device).unwrap(), cpu.r.to_device(&device).unwrap());
    let want = forward_backward(&cpu.unet, &mut cpu.params, &cpu.x, &cpu.r);
    let got = forward_backward(&cpu.unet, &mut on_gpu, &xg, &rg);
    assert!(
        (got - want).abs() <= 1e-5 * want.abs().max(1e-3),
        "loss: got {got} want {want}"
    );
    let largest = |c: &lrc::nn::Param| max_abs_f64(&c.grad.as_ref().unwrap().to_f64_vec().unwrap());
    let model_scale = cpu
        .params
        .params()
        .iter()
        .filter(|c| !zero_in_exact_arithmetic(&c.name))
        .fold(0.0f64, |m, c| m.max(largest(c)));
    for (g, c) in on_gpu.params().iter().zip(cpu.params.params()) {
        let want = c.grad.as_ref().unwrap().to_f64_vec().unwrap();
        let got = g.grad.as_ref().unwrap().to_f32_vec().unwrap();
        // A gradient that is zero in exact arithmetic has no scale of its own: the same 1e-4 of
        // a scale, the model's largest gradient, bounds its rounding noise.
        let tol = if zero_in_exact_arithmetic(&c.name) {
            Tolerance {
                atol: 1e-4 * model_scale,
                rtol: 0.0,
            }
        } else {
            Tolerance {
                atol: 1e-4 * largest(c),
                rtol: 1e-3,
            }
        };
        assert_close(&format!("gradient of {}", c.name), &got, &want, tol);
    }
}

fn max_abs_f64(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// Drift after ten steps, against the CPU in f64: (worst / parameter scale, 99th percentile).
struct Drift {
    worst_relative: f64,
    p99: f64,
}

/// The parameters after ten steps of `kind` from the rig's start, on `device` in `dtype`.
fn ten_steps(kind: OptimizerKind, lr: f64, device: &Device, dtype: DType) -> ParamStore {
    let rig = rig();
    let mut params = rig.params.to_dtype(dtype).unwrap().for_device(device).unwrap();
    let on = |t: &Tensor| t.to_dtype(dtype).unwrap().to_device(device).unwrap();
    let (x, r) = (on(&rig.x), on(&rig.r));
    let mut opt = Optimizer::new(kind);
    for _ in 0..10 {
        forward_backward(&rig.unet, &mut params, &x, &r);
        opt.step(&mut params, lr).unwrap();
    }
    params
}

/// How far every parameter of `run` lies from `reference` (the same steps on the CPU in f64).
fn drift(what: &str, run: &ParamStore, reference: &ParamStore) -> Drift {
    let mut errors = Vec::new();
    let mut scale = 0.0f64;
    for (g, c) in run.params().iter().zip(reference.params()) {
        let got = g.value.to_f64_vec().unwrap();
        let want = c.value.to_f64_vec().unwrap();
        scale = scale.max(max_abs_f64(&got));
        errors.extend(got.iter().zip(&want).map(|(&a, &b)| (a - b).abs()));
    }
    errors.sort_by(f64::total_cmp);
    let worst = *errors.last().unwrap();
    let p99 = errors[errors.len() * 99 / 100];
    println!("{what}: drift after 10 steps: worst {worst:.3e}, 99th percentile {p99:.3e}, parameter scale {scale:.3}");
    Drift {
        worst_relative: worst / scale,
        p99,
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn ten_sgd_steps_drift_within_bounds() {
    let gpu = gpu();
    let device = Device::Cuda(gpu.clone());
    let (kind, lr) = (OptimizerKind::sgd(0.9, 1e-4), 0.03);
    let reference = ten_steps(kind, lr, &Device::Cpu, DType::F64);
    let drift = drift("SGD on the GPU", &ten_steps(kind, lr, &device, DType::F32), &reference);
    assert!(
        drift.worst_relative <= 1e-4,
        "SGD drift {:.3e} of the parameter scale",
        drift.worst_relative
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn ten_adam_and_adamw_steps_drift_within_bounds() {
    let gpu = gpu();
    let device = Device::Cuda(gpu.clone());
    for kind in [OptimizerKind::adam(1e-4), OptimizerKind::adamw(1e-2)] {
        let lr = 1e-3;
        let reference = ten_steps(kind, lr, &Device::Cpu, DType::F64);
        let drift_of = |device: &Device, what: &str| {
            drift(
                &format!("{kind:?} {what}"),
                &ten_steps(kind, lr, device, DType::F32),
                &reference,
            )
        };
        let drift = drift_of(&device, "on the GPU");
        // The same steps on the CPU in f32: how far f32 arithmetic itself drifts. With AdamW's
        // decoupled decay nothing lifts a gradient above its rounding noise, and the elements
        // whose gradient is below it (the biases before instance norm, zero in exact arithmetic;
        // weights with tiny gradients) move by up to lr in a direction the noise sets, in any
        // f32 computation: more than 1% of this U-Net's elements. The GPU may drift as far as
        // the f32 twin, within a factor of 2 for another summation order's noise; a wrong rule
        // moves most elements by ~lr, 25 times the f32 twin's 99th percentile.
        let twin = drift_of(&Device::Cpu, "on the CPU in f32");
        let bound = 1e-5f64.max(2.0 * twin.p99);
        assert!(
            drift.p99 <= bound,
            "{kind:?}: 99% of the drift within {bound:.3e} (1e-5, or twice the f32 CPU twin's), got {:.3e}",
            drift.p99
        );
        // worst_relative is relative to a scale of order 1 (initial weights ~0.3..1).
        assert!(
            drift.worst_relative <= 2.0 * lr * 10.0,
            "{kind:?}: worst drift {:.3e}",
            drift.worst_relative
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_steady_step_allocates_nothing_and_copies_nothing() {
    let gpu = gpu();
    let device = Device::Cuda(gpu.clone());
    let cpu = rig();
    let mut params = cpu.params.for_device(&device).unwrap();
    let (x, r) = (cpu.x.to_device(&device).unwrap(), cpu.r.to_device(&device).unwrap());
    let mut opt = Optimizer::new(OptimizerKind::adam(1e-4));
    let step = |params: &mut ParamStore, opt: &mut Optimizer| {
        let mut tape = Tape::new();
        let bound = params.bind(&mut tape);
        let (xv, rv) = (tape.constant(x.clone()), tape.constant(r.clone()));
        let y = cpu.unet.forward(&mut tape, &bound, xv).unwrap();
        let weighted = tape.mul(y, rv).unwrap();
        let loss = tape.mean(weighted).unwrap();
        let grads = tape.backward(loss).unwrap();
        params.zero_grad();
        params.accumulate_grads(&grads, &bound).unwrap();
        drop(grads);
        drop(tape);
        opt.step(params, 1e-3).unwrap();
    };
    for _ in 0..3 {
        step(&mut params, &mut opt);
    }
    gpu.synchronize().unwrap();
    let (allocs, copies) = (gpu.alloc_stats(), gpu.transfers());
    for _ in 0..2 {
        step(&mut params, &mut opt);
    }
    gpu.synchronize().unwrap();
    let (allocs_after, copies_after) = (gpu.alloc_stats(), gpu.transfers());
    assert_eq!(
        allocs_after.device_allocations, allocs.device_allocations,
        "device allocations in steady steps"
    );
    assert_eq!(copies_after, copies, "host/device copies in steady steps");
}

/// The reference half of these tests runs anywhere: it keeps their set-up (shapes, loss) valid.
#[test]
fn the_cpu_reference_step_runs() {
    let mut cpu = rig();
    let loss = forward_backward(&cpu.unet, &mut cpu.params, &cpu.x, &cpu.r);
    assert!(loss.is_finite());
    assert!(cpu.params.params().iter().all(|p| p.grad.is_some()));
}
