//! The fused optimizer launches (`kernels/optim.cu`, planned by `device::cuda::optim`) on the
//! kernel emulator against the CPU optimizers (`lrc::optim`, torch.optim's rules) run in f64 on
//! the same f32 starting values and gradients: ten steps of SGD with momentum and weight decay,
//! Adam and AdamW, the momentum update, and the queue's ring-buffer write.
//!
//! Tensors of 1, 33, 4097 and 5000 values put tensor boundaries inside and across the kernel's
//! 4096-element chunks. Tolerance: atol 2e-6, rtol 2e-6 after ten steps. Values and gradients
//! are in [-1, 1); each f32 step rounds the new value (2^-24 relative) and its few products
//! (a few 2^-24 of the update, itself below lr * a few), so ten steps stay under ~1e-6; a wrong
//! rule (bias correction, decay, momentum) is off by more than lr * 1e-2 = 1e-5.

use lrc::device::cuda::optim::{StepRule, TensorSlot, multi_tensor_calls, queue_write_calls};
use lrc::device::emu::{self, EmuMemory};
use lrc::nn::ParamStore;
use lrc::optim::{Optimizer, OptimizerKind};
use lrc::rng::Rng;
use lrc::tensor::Tensor;
use lrc::testing::{Tolerance, assert_close, uniform, widen};

const LENS: [usize; 4] = [1, 33, 4097, 5000];
const STEPS: u64 = 10;
const TOL: Tolerance = Tolerance { atol: 2e-6, rtol: 2e-6 };

fn check_optimizer(kind: OptimizerKind, lr: f64) {
    let mut rng = Rng::new(7);
    let values: Vec<Vec<f32>> = LENS.iter().map(|&n| uniform(&mut rng, n, -1.0, 1.0)).collect();
    let mut store = ParamStore::new();
    for (i, v) in values.iter().enumerate() {
        store.add(format!("p{i}"), Tensor::from_vec(vec![v.len()], widen(v)).unwrap());
    }
    let mut cpu = Optimizer::new(kind);

    let mut mem = EmuMemory::new();
    let slots: Vec<TensorSlot> = values
        .iter()
        .map(|v| TensorSlot {
            param: mem.upload(v),
            grad: mem.alloc(v.len()),
            state1: mem.upload(&vec![0.0f32; v.len()]),
            state2: mem.upload(&vec![0.0f32; v.len()]),
            len: v.len(),
        })
        .collect();
    for step in 1..=STEPS {
        for (i, s) in slots.iter().enumerate() {
            let g = uniform(&mut rng, s.len, -1.0, 1.0);
            mem.write(s.grad, &g);
            store.params_mut()[i].grad = Some(Tensor::from_vec(vec![g.len()], widen(&g)).unwrap());
        }
        cpu.step(&mut store, lr).unwrap();
        let calls = multi_tensor_calls(&slots, &kind.step_rule(lr, step, step == 1)).unwrap();
        mem.run(&calls).unwrap_or_else(|e| panic!("{e}"));
    }
    for (i, s) in slots.iter().enumerate() {
        let got: Vec<f32> = mem.read(s.param, s.len);
        let want = store.params()[i].value.to_f64_vec().unwrap();
        assert_close(&format!("{kind:?} tensor {i} after {STEPS} steps"), &got, &want, TOL);
        let m: Vec<f32> = mem.read(s.state1, s.len);
        let want_m = cpu.state1[i].as_ref().unwrap().to_f64_vec().unwrap();
        assert_close(&format!("{kind:?} tensor {i} first state"), &m, &want_m, TOL);
    }
}

#[test]
fn sgd_with_momentum_and_weight_decay_matches_the_cpu() {
    if emu::available() {
        check_optimizer(OptimizerKind::sgd(0.9, 1e-4), 0.03);
    }
}

#[test]
fn adam_matches_the_cpu() {
    if emu::available() {
        check_optimizer(OptimizerKind::adam(1e-4), 1e-3);
    }
}

#[test]
fn adamw_matches_the_cpu() {
    if emu::available() {
        check_optimizer(OptimizerKind::adamw(1e-2), 1e-3);
    }
}

#[test]
fn momentum_update_mixes_in_one_launch() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(3);
    let mut mem = EmuMemory::new();
    let (keys, queries): (Vec<Vec<f32>>, Vec<Vec<f32>>) = LENS
        .iter()
        .map(|&n| (uniform(&mut rng, n, -1.0, 1.0), uniform(&mut rng, n, -1.0, 1.0)))
        .unzip();
    let slots: Vec<TensorSlot> = keys
        .iter()
        .zip(&queries)
        .map(|(k, q)| TensorSlot {
            param: mem.upload(k),
            grad: mem.upload(q),
            state1: 0,
            state2: 0,
            len: k.len(),
        })
        .collect();
    let m = 0.999;
    let calls = multi_tensor_calls(&slots, &StepRule::Lerp { m }).unwrap();
    assert_eq!(calls.len(), 1, "one launch for the whole model");
    mem.run(&calls).unwrap_or_else(|e| panic!("{e}"));
    for (i, s) in slots.iter().enumerate() {
        let want: Vec<f64> = keys[i]
            .iter()
            .zip(&queries[i])
            .map(|(&k, &q)| m * k as f64 + (1.0 - m) * q as f64)
            .collect();
        // Two f32 products and a sum: within 2 ulp of values below 1.
        let tol = Tolerance { atol: 3e-7, rtol: 3e-7 };
        assert_close(
            &format!("momentum update tensor {i}"),
            &mem.read(s.param, s.len),
            &want,
            tol,
        );
    }
}

#[test]
fn queue_write_wraps_around() {
    if !emu::available() {
        return;
    }
    let (capacity, dim, rows) = (7, 5, 3);
    let mut mem = EmuMemory::new();
    let queue = mem.upload(&vec![-1.0f32; capacity * dim]);
    let keys: Vec<f32> = (0..rows * dim).map(|i| i as f32).collect();
    let src = mem.upload(&keys);
    // Rows 5, 6 and then 0.
    mem.run(&queue_write_calls(queue, src, capacity, dim, rows, 5).unwrap())
        .unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<f32> = mem.read(queue, capacity * dim);
    for row in 0..capacity {
        let expect: Vec<f32> = match row {
            5 | 6 => keys[(row - 5) * dim..(row - 4) * dim].to_vec(),
            0 => keys[2 * dim..3 * dim].to_vec(),
            _ => vec![-1.0; dim],
        };
        assert_eq!(&got[row * dim..(row + 1) * dim], &expect[..], "row {row}");
    }
    assert!(queue_write_calls(queue, src, capacity, dim, 8, 0).is_err());
}
