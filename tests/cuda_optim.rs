//! The optimizers and the momentum update on a CUDA GPU, through `Optimizer::step` and
//! `moco::momentum_update` on CUDA parameter stores, against the same calls on f64 CPU stores:
//! ten steps each, on a store with tensors of 1, 33, 4097, 5000 and 70000 values (several
//! chunks, boundaries inside chunks). Tolerances as tests/emu_optim.rs (atol = rtol = 2e-6 after
//! ten f32 steps). The drift after ten steps is what this bounds.
//!
//! These tests need a CUDA GPU: `cargo test --release -- --include-ignored`.

use lrc::device::Device;
use lrc::device::cuda::CudaDevice;
use lrc::nn::ParamStore;
use lrc::optim::{Optimizer, OptimizerKind};
use lrc::rng::Rng;
use lrc::tensor::{DType, Tensor};
use lrc::testing::{Tolerance, assert_close, uniform, widen};
use lrc::train::moco::momentum_update;

const LENS: [usize; 5] = [1, 33, 4097, 5000, 70_000];
const TOL: Tolerance = Tolerance { atol: 2e-6, rtol: 2e-6 };

fn device() -> Device {
    let d = CudaDevice::open(0).unwrap_or_else(|e| panic!("these tests need a CUDA GPU: {e}"));
    d.set_poison_fresh_buffers(true);
    Device::Cuda(d)
}

fn store(rng: &mut Rng) -> ParamStore {
    let mut s = ParamStore::new();
    for (i, &n) in LENS.iter().enumerate() {
        s.add(
            format!("p{i}"),
            Tensor::from_vec(vec![n], widen(&uniform(rng, n, -1.0, 1.0))).unwrap(),
        );
    }
    s
}

fn check(kind: OptimizerKind, lr: f64) {
    let dev = device();
    let mut rng = Rng::new(11);
    let mut cpu = store(&mut rng);
    let mut gpu = cpu.to_dtype(DType::F32).unwrap().to_device(&dev).unwrap();
    let (mut cpu_opt, mut gpu_opt) = (Optimizer::new(kind), Optimizer::new(kind));
    for _ in 0..10 {
        for (i, &n) in LENS.iter().enumerate() {
            let g = uniform(&mut rng, n, -1.0, 1.0);
            cpu.params_mut()[i].grad = Some(Tensor::from_vec(vec![g.len()], widen(&g)).unwrap());
            gpu.params_mut()[i].grad = Some(Tensor::from_vec(vec![g.len()], g).unwrap().to_device(&dev).unwrap());
        }
        cpu_opt.step(&mut cpu, lr).unwrap();
        gpu_opt.step(&mut gpu, lr).unwrap();
    }
    for i in 0..LENS.len() {
        let got = gpu.params()[i].value.to_f32_vec().unwrap();
        let want = cpu.params()[i].value.to_f64_vec().unwrap();
        assert_close(&format!("{kind:?} p{i}"), &got, &want, TOL);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn sgd_on_the_gpu_matches_the_cpu() {
    check(OptimizerKind::sgd(0.9, 1e-4), 0.03);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn adam_on_the_gpu_matches_the_cpu() {
    check(OptimizerKind::adam(1e-4), 1e-3);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn adamw_on_the_gpu_matches_the_cpu() {
    check(OptimizerKind::adamw(1e-2), 1e-3);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn momentum_update_on_the_gpu_matches_the_cpu() {
    let dev = device();
    let mut rng = Rng::new(5);
    let query = store(&mut rng);
    let mut key = store(&mut rng);
    let gpu_query = query.to_dtype(DType::F32).unwrap().to_device(&dev).unwrap();
    let mut gpu_key = key.to_dtype(DType::F32).unwrap().to_device(&dev).unwrap();
    for _ in 0..10 {
        momentum_update(&mut key, &query, 0.99).unwrap();
        momentum_update(&mut gpu_key, &gpu_query, 0.99).unwrap();
    }
    for i in 0..LENS.len() {
        let got = gpu_key.params()[i].value.to_f32_vec().unwrap();
        let want = key.params()[i].value.to_f64_vec().unwrap();
        assert_close(&format!("momentum p{i}"), &got, &want, TOL);
    }
}
