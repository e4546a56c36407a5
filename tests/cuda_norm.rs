//! Instance normalisation fused with its activation, and the activations alone, on a GPU through
//! the public ops API (`ops::instance_norm::{forward_act, backward_act, forward, backward}`,
//! `ops::activation::{forward, backward}`) on CUDA tensors, against the same ops on CPU f64
//! tensors: awkward shapes (as in emu_norm.rs) and the U-Net's levels at batch 2 (planes of
//! 256x256 down to 16x16 with 32 to 512 channels), so that every launch the planner picks on the
//! card runs, with fresh buffers poisoned with NaN.
//!
//! Tolerances are those of emu_norm.rs (derived there; computed in tests/norm_common) for the
//! launch the planner chose on this GPU. The backward is given the statistics the GPU forward
//! saved, and its reference takes the activation's mask from z computed in f32 as the kernel
//! does, since a z within rounding of 0 may take either branch.
//!
//! The tests marked ignored need a CUDA GPU: `cargo test --release --test cuda_norm --
//! --include-ignored`. The others check, on any machine, that `lrc bench norm` fails cleanly
//! without one.

mod norm_common;

use std::process::Command;
use std::sync::Arc;

use lrc::device::cuda::CudaDevice;
use lrc::device::cuda::norm::{NormLaunch, NormPass, launch_for};
use lrc::ops::activation;
use lrc::ops::instance_norm::{self, Activation};
use lrc::testing::{assert_close, widen, worst};
use lrc::{Device, Tensor};
use norm_common::{BackwardReference, Case, ForwardReference, case, inputs};

fn device() -> Arc<CudaDevice> {
    let device = CudaDevice::open(0).unwrap_or_else(|e| panic!("these tests need a CUDA GPU: {e}"));
    device.set_poison_fresh_buffers(true);
    device
}

fn gpu(device: &Arc<CudaDevice>, shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_vec(shape.to_vec(), data.to_vec())
        .unwrap()
        .to_device(&Device::Cuda(device.clone()))
        .unwrap()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_f32_vec().unwrap()
}

fn threads_per_plane(launch: NormLaunch) -> usize {
    match launch {
        NormLaunch::Warp { .. } => 32,
        NormLaunch::Block { threads } | NormLaunch::Stream { threads } => threads,
    }
}

/// Awkward shapes, then the U-Net's levels at batch 2.
fn cases() -> Vec<Case> {
    use Activation::*;
    let mut list = vec![
        case(1, 1, 1, Relu),
        case(2, 3, 5, Identity),
        case(3, 2, 7 * 9, LeakyRelu(0.1)),
        case(2, 5, 100, Relu),
        case(1, 2, 1501, LeakyRelu(0.2)),
        case(7, 9, 12, Identity),
        case(1, 3, 300 * 301, Relu),
        Case {
            offset: 1000.0,
            ..case(2, 2, 1024, Relu)
        },
        Case {
            eps: 0.5,
            spread: 0.01,
            ..case(2, 3, 64, LeakyRelu(0.3))
        },
    ];
    for level in 0..5 {
        let side = 256 >> level;
        list.push(case(2, 32 << level, side * side, Relu));
    }
    list
}

/// Runs the fused op forward and backward on the GPU and checks both; returns the worst ratios.
fn check_case(device: &Arc<CudaDevice>, k: &Case, seed: u64) -> [f64; 6] {
    let inp = inputs(k, seed);
    let shape = [k.n, k.c, 1, k.plane];
    let (x, gamma, beta, dy) = (
        gpu(device, &shape, &inp.x),
        gpu(device, &[k.c], &inp.gamma),
        gpu(device, &[k.c], &inp.beta),
        gpu(device, &shape, &inp.dy),
    );
    let (y, saved) = instance_norm::forward_act(&x, &gamma, &beta, k.eps, k.act).unwrap();
    let (dx, dgamma, dbeta) = instance_norm::backward_act(&x, &dy, &gamma, &beta, &saved, k.act).unwrap();
    let (y, mean, inv_std) = (host(&y), host(&saved.mean), host(&saved.inv_std));
    let (dx, dgamma, dbeta) = (host(&dx), host(&dgamma), host(&dbeta));

    let forward_launch = launch_for(device, NormPass::Forward, k.plane).0;
    let backward_launch = launch_for(device, NormPass::Backward, k.plane).0;
    let what = format!("{k:?} on {forward_launch:?} / {backward_launch:?}");
    let fwd = ForwardReference::new(k, &inp);
    let [tm, ti, ty] = fwd.tolerances(k.plane, threads_per_plane(forward_launch));
    assert_close(&format!("mean, {what}"), &mean, &fwd.mean, tm);
    assert_close(&format!("inv_std, {what}"), &inv_std, &fwd.inv_std, ti);
    assert_close(&format!("y, {what}"), &y, &fwd.y, ty);
    let bwd = BackwardReference::new(k, &inp, &mean, &inv_std);
    let [tdx, tdg, tdb] = bwd.tolerances(k.plane, threads_per_plane(backward_launch));
    assert_close(&format!("dx, {what}"), &dx, &bwd.dx, tdx);
    assert_close(&format!("dgamma, {what}"), &dgamma, &bwd.dgamma, tdg);
    assert_close(&format!("dbeta, {what}"), &dbeta, &bwd.dbeta, tdb);
    let ratios = [
        worst(&mean, &fwd.mean, tm).ratio,
        worst(&inv_std, &fwd.inv_std, ti).ratio,
        worst(&y, &fwd.y, ty).ratio,
        worst(&dx, &bwd.dx, tdx).ratio,
        worst(&dgamma, &bwd.dgamma, tdg).ratio,
        worst(&dbeta, &bwd.dbeta, tdb).ratio,
    ];
    println!(
        "{what}: worst/tolerance mean {:.3} inv_std {:.3} y {:.3} dx {:.3} dgamma {:.3} dbeta {:.3}",
        ratios[0], ratios[1], ratios[2], ratios[3], ratios[4], ratios[5]
    );
    ratios
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn fused_norm_and_activation_match_the_cpu_twin() {
    let device = device();
    for (i, k) in cases().iter().enumerate() {
        check_case(&device, k, 300 + i as u64);
    }
}

/// Without opting in, a block may use 48 KiB of static and dynamic shared memory together, so a
/// block kernel (which declares some static scratch) asked for a little under 48 KiB of dynamic
/// memory needs the opt-in too; a launch that only opted in above 48 KiB fails on the hardware.
#[test]
#[ignore = "needs a CUDA GPU"]
fn block_launches_with_just_under_48_kib_of_dynamic_shared_memory_run() {
    let device = device();
    let limit = 48 * 1024;
    for pass in [NormPass::Forward, NormPass::Backward] {
        // The first plane length (a multiple of 4, so read in packs of 4) whose block launch
        // asks for dynamic shared memory within 128 bytes below 48 KiB: more than 48 KiB less
        // the block kernels' static scratch (128 bytes forward, 256 backward; ptxas report).
        let plane = (1024..200_000)
            .step_by(4)
            .find(|&len| {
                let (launch, vec) = launch_for(&device, pass, len);
                let shared = launch.shared_bytes(pass, len, vec);
                matches!(launch, NormLaunch::Block { .. }) && shared > limit - 128 && shared <= limit
            })
            .unwrap_or_else(|| panic!("no {pass:?} plane asks for just under 48 KiB"));
        let (launch, vec) = launch_for(&device, pass, plane);
        println!(
            "{pass:?}: plane of {plane} on {launch:?}, {} bytes of dynamic shared memory",
            launch.shared_bytes(pass, plane, vec)
        );
        check_case(&device, &case(1, 2, plane, Activation::Relu), 40);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn results_are_deterministic() {
    let device = device();
    let k = case(2, 32, 256 * 256, Activation::Relu);
    let inp = inputs(&k, 9);
    let shape = [k.n, k.c, 256, 256];
    let (x, gamma, beta, dy) = (
        gpu(&device, &shape, &inp.x),
        gpu(&device, &[k.c], &inp.gamma),
        gpu(&device, &[k.c], &inp.beta),
        gpu(&device, &shape, &inp.dy),
    );
    let run = || {
        let (y, saved) = instance_norm::forward_act(&x, &gamma, &beta, k.eps, k.act).unwrap();
        let (dx, dg, db) = instance_norm::backward_act(&x, &dy, &gamma, &beta, &saved, k.act).unwrap();
        [y, saved.mean, saved.inv_std, dx, dg, db].map(|t| host(&t).iter().map(|v| v.to_bits()).collect::<Vec<_>>())
    };
    assert!(run() == run(), "two runs differ");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_unfused_ops_run_on_the_gpu() {
    let device = device();
    let k = case(3, 4, 17 * 19, Activation::Identity);
    let inp = inputs(&k, 21);
    let shape = [k.n, k.c, 17, 19];
    let cpu = |d: &[f32], s: &[usize]| Tensor::from_vec(s.to_vec(), widen(d)).unwrap();
    let (x, gamma, beta, dy) = (
        gpu(&device, &shape, &inp.x),
        gpu(&device, &[k.c], &inp.gamma),
        gpu(&device, &[k.c], &inp.beta),
        gpu(&device, &shape, &inp.dy),
    );
    // instance_norm alone.
    let (y, mean, inv) = instance_norm::forward(&x, &gamma, &beta, k.eps).unwrap();
    let fwd = ForwardReference::new(&k, &inp);
    let [tm, ti, ty] = fwd.tolerances(
        k.plane,
        threads_per_plane(launch_for(&device, NormPass::Forward, k.plane).0),
    );
    assert_close("instance_norm mean", &host(&mean), &fwd.mean, tm);
    assert_close("instance_norm inv_std", &host(&inv), &fwd.inv_std, ti);
    assert_close("instance_norm y", &host(&y), &fwd.y, ty);
    let (dx, dg, db) = instance_norm::backward(&x, &dy, &gamma, &mean, &inv).unwrap();
    let bwd = BackwardReference::new(&k, &inp, &host(&mean), &host(&inv));
    let [tdx, tdg, tdb] = bwd.tolerances(
        k.plane,
        threads_per_plane(launch_for(&device, NormPass::Backward, k.plane).0),
    );
    assert_close("instance_norm dx", &host(&dx), &bwd.dx, tdx);
    assert_close("instance_norm dgamma", &host(&dg), &bwd.dgamma, tdg);
    assert_close("instance_norm dbeta", &host(&db), &bwd.dbeta, tdb);
    // The activations alone: one f32 multiply by the slope as f32 each. The f64 twin given that
    // same slope forms the exact product (two 24-bit significands), so rounding it to f32 gives
    // the kernel's correctly rounded result: equal. (With the slope in f64, a product that lies
    // near the midpoint of two f32 values may round the other way: 0.01 is not an f32.)
    for slope in [0.0, 0.01] {
        let y = host(&activation::forward(&x, slope).unwrap());
        let dx = host(&activation::backward(&x, &dy, slope).unwrap());
        let slope_f32 = f64::from(slope as f32);
        let want_y = host(&activation::forward(&cpu(&inp.x, &shape), slope_f32).unwrap());
        let want_dx = host(&activation::backward(&cpu(&inp.x, &shape), &cpu(&inp.dy, &shape), slope_f32).unwrap());
        let exact = lrc::testing::Tolerance {
            atol: 0.0,
            rtol: norm_common::EPS32,
        };
        assert_close(&format!("leaky_relu {slope}"), &y, &widen(&want_y), exact);
        assert_close(&format!("leaky_relu backward {slope}"), &dx, &widen(&want_dx), exact);
    }
    // Mixed devices are errors, not panics.
    let x_cpu = cpu(&inp.x, &shape);
    assert!(instance_norm::forward(&x, &cpu(&inp.gamma, &[k.c]), &beta, k.eps).is_err());
    assert!(instance_norm::forward_act(&x_cpu, &gamma, &beta, k.eps, Activation::Relu).is_err());
    assert!(activation::backward(&x, &x_cpu, 0.0).is_err());
}

fn machine_has_driver() -> bool {
    // SAFETY: only probes whether the driver library can be loaded.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

#[test]
fn bench_norm_without_a_gpu_is_a_clear_error() {
    if machine_has_driver() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_lrc"))
        .args(["bench", "norm", "--repeats", "1", "--json"])
        .arg(&json)
        .output()
        .expect("run lrc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.starts_with("error: "), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

#[test]
fn bench_norm_lists_its_layers_without_a_gpu() {
    let out = Command::new(env!("CARGO_BIN_EXE_lrc"))
        .args(["bench", "norm", "--list"])
        .output()
        .expect("run lrc");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    // One line per U-Net level: 256x256 with 32 channels down to 16x16 with 512.
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(
        text.contains("16x32x256x256") && text.contains("16x512x16x16"),
        "{text}"
    );
}
