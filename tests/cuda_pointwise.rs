//! GPU parity of the element-wise ops and reductions of `lrc::ops::pointwise` on CUDA tensors
//! (kernels/pointwise.cu) against the same ops on CPU tensors: f64 for the values, f32 where the
//! kernels promise bit-identical results. Every fresh buffer is NaN-poisoned, so an element a
//! kernel fails to write fails the check. Lengths: 1, a few, several blocks, and enough values
//! for the grid-stride loops to turn at the planners' block cap.
//!
//! Tolerances (u = 2^-24), as in tests/emu_pointwise.rs:
//! - add, sub, mul, scale, add_scalar, broadcast_scalar, accumulate: one rounding to f32 of the
//!   exact (or f64) result, so |got - want| <= (u + 2^-52) |want|, and bit-identical to the CPU
//!   twin on f32 tensors.
//! - sum: the fixed two-pass tree adds at most k = len / (threads of the first pass) + 2 + 8 +
//!   (partials / 256) + 8 terms along one path, so |error| <= k u sum|x|; the mean adds one
//!   rounding (rtol u). The sum must also give the same bits on every run.
//!
//! - bf16_from_f32 (the FP32 -> BF16 conversion): bit-exact against `pointwise::pack_bf16`
//!   (round to nearest even, NaN to the canonical 0x7fff), padding half included.
//!
//! These tests need a CUDA GPU: `cargo test --release -- --include-ignored`.

use std::sync::Arc;

use lrc::device::cuda::CudaDevice;
use lrc::device::cuda::CudaStorage;
use lrc::device::cuda::pointwise::{SUM_MAX_BLOCKS, THREADS, bf16_from_f32, pack_bf16, sum_calls};
use lrc::ops::pointwise as ops;
use lrc::rng::Rng;
use lrc::testing::{Tolerance, assert_close, bf16_probe_values, uniform, widen};
use lrc::{Device, Tape, Tensor};

const U: f64 = 1.0 / 16_777_216.0;

const ROUNDED_ONCE: Tolerance = Tolerance {
    atol: 0.0,
    rtol: U + 1.0 / 4_503_599_627_370_496.0,
};

fn device() -> Arc<CudaDevice> {
    let device = CudaDevice::open(0).unwrap_or_else(|e| panic!("these tests need a CUDA GPU: {e}"));
    device.set_poison_fresh_buffers(true);
    device
}

/// 1 value, a few, around a block, several blocks, and past the grid cap (loops turn).
const LENGTHS: [usize; 7] = [1, 3, 7, 1029, 70_001, (1 << 21) + 5, (1 << 23) + 3];

fn f64_tensor(v: &[f32]) -> Tensor {
    Tensor::from_vec(vec![v.len()], widen(v)).unwrap()
}

fn f32_tensor(v: &[f32]) -> Tensor {
    Tensor::from_vec(vec![v.len()], v.to_vec()).unwrap()
}

fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}: element {i} is {} where the CPU twin on f32 gives {}",
            got[i], want[i]
        );
    }
}

/// The GPU result of `f`, compared with `f` on f64 (within one rounding) and on f32 (bit for bit).
fn check(what: &str, gpu: &Device, inputs: &[&[f32]], f: impl Fn(&[Tensor]) -> lrc::Result<Tensor>) {
    let on_gpu: Vec<Tensor> = inputs.iter().map(|v| f32_tensor(v).to_device(gpu).unwrap()).collect();
    let got = f(&on_gpu).unwrap();
    assert!(got.device().is_cuda(), "{what}: the result left the GPU");
    let got = got.to_f32_vec().unwrap();
    let want = f(&inputs.iter().map(|v| f64_tensor(v)).collect::<Vec<_>>()).unwrap();
    assert_close(what, &got, &want.to_f64_vec().unwrap(), ROUNDED_ONCE);
    let want32 = f(&inputs.iter().map(|v| f32_tensor(v)).collect::<Vec<_>>()).unwrap();
    assert_bits(what, &got, &want32.to_f32_vec().unwrap());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn element_wise_ops_match_the_cpu_twin() {
    let gpu = Device::Cuda(device());
    let mut rng = Rng::new(31);
    for len in LENGTHS {
        let a = uniform(&mut rng, len, -2.0, 2.0);
        let b = uniform(&mut rng, len, -2.0, 2.0);
        check(&format!("add {len}"), &gpu, &[&a, &b], |t| ops::add(&t[0], &t[1]));
        check(&format!("sub {len}"), &gpu, &[&a, &b], |t| ops::sub(&t[0], &t[1]));
        check(&format!("mul {len}"), &gpu, &[&a, &b], |t| ops::mul(&t[0], &t[1]));
        check(&format!("scale {len}"), &gpu, &[&a], |t| ops::scale(&t[0], -1.0 / 3.0));
        check(&format!("add_scalar {len}"), &gpu, &[&a], |t| {
            ops::add_scalar(&t[0], 0.1)
        });
        check(&format!("accumulate {len}"), &gpu, &[&a, &b], |t| {
            ops::accumulate(t[0].clone(), &t[1])
        });
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn broadcast_scalar_ones_and_zeros_stay_on_the_device() {
    let gpu = Device::Cuda(device());
    for (len, value, factor) in [(1, 0.7f32, 1.0), (5, -1.25, 1.0 / 3.0), (70_001, 3e-3, -1.0 / 4099.0)] {
        check(&format!("broadcast_scalar {len}"), &gpu, &[&[value]], |t| {
            ops::broadcast_scalar(&t[0], &[len], factor)
        });
        let like = Tensor::zeros(vec![len], lrc::DType::F32).to_device(&gpu).unwrap();
        let ones = ops::ones_like(&like).unwrap();
        assert!(ones.device().is_cuda());
        assert!(ones.to_f32_vec().unwrap().iter().all(|&v| v == 1.0));
        let zeros = ones.zeros_like().unwrap();
        assert!(zeros.device().is_cuda());
        assert!(zeros.to_f32_vec().unwrap().iter().all(|&v| v == 0.0));
    }
    // A scalar must have one element.
    let two = f32_tensor(&[1.0, 2.0]).to_device(&gpu).unwrap();
    assert!(ops::broadcast_scalar(&two, &[4], 1.0).is_err());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn accumulate_adds_in_place_unless_the_storage_is_shared() {
    let gpu = Device::Cuda(device());
    let a = f32_tensor(&[1.0, 2.0, 3.0, 4.0, 5.0]).to_device(&gpu).unwrap();
    let b = f32_tensor(&[0.5; 5]).to_device(&gpu).unwrap();
    let ptr = |t: &Tensor| t.cuda_storage().unwrap().device_ptr();
    // Unshared: the sum lands in the same block.
    let before = ptr(&a);
    let sum = ops::accumulate(a, &b).unwrap();
    assert_eq!(ptr(&sum), before, "an unshared accumulator is updated in place");
    assert_eq!(sum.to_f32_vec().unwrap(), vec![1.5, 2.5, 3.5, 4.5, 5.5]);
    // Shared: the other holder keeps its values.
    let keep = sum.clone();
    let again = ops::accumulate(sum, &b).unwrap();
    assert_eq!(again.to_f32_vec().unwrap(), vec![2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(keep.to_f32_vec().unwrap(), vec![1.5, 2.5, 3.5, 4.5, 5.5]);
    // Adding a tensor to itself.
    let twice = ops::accumulate(keep.clone(), &keep).unwrap();
    assert_eq!(twice.to_f32_vec().unwrap(), vec![3.0, 5.0, 7.0, 9.0, 11.0]);
    // Mixed devices and shapes are errors.
    assert!(ops::accumulate(twice.clone(), &f32_tensor(&[0.0; 5])).is_err());
    assert!(ops::add(&twice, &f32_tensor(&[0.0; 5])).is_err());
    assert!(ops::add(&twice, &b.reshape([5, 1]).unwrap()).is_err());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn sum_and_mean_are_within_their_bound_and_deterministic() {
    let gpu = Device::Cuda(device());
    let mut rng = Rng::new(32);
    for len in LENGTHS {
        let x = uniform(&mut rng, len, -1.0, 1.0);
        let t = f32_tensor(&x).to_device(&gpu).unwrap();
        let got = ops::sum_all(&t).unwrap();
        assert_eq!(got.shape(), [1]);
        assert!(got.device().is_cuda());
        let got = got.to_f32_vec().unwrap();
        let again = ops::sum_all(&t).unwrap().to_f32_vec().unwrap();
        assert_eq!(got[0].to_bits(), again[0].to_bits(), "sum of {len}: not deterministic");
        let planned = sum_calls(len, 0x100, 0x200, 0x300, SUM_MAX_BLOCKS).unwrap();
        let partials = if planned.len() == 2 { planned[0].grid.0 } else { 0 };
        let depth = len.div_ceil(planned[0].grid.0 * THREADS) + 2 + 8 + partials.div_ceil(THREADS) + 8;
        let abs_sum: f64 = x.iter().map(|v| v.abs() as f64).sum();
        let want = ops::sum_all(&f64_tensor(&x)).unwrap().to_f64_vec().unwrap();
        let bound = depth as f64 * U * abs_sum;
        assert_close(
            &format!("sum of {len}"),
            &got,
            &want,
            Tolerance { atol: bound, rtol: 0.0 },
        );
        // The mean through the tape (sum, then scale by 1/len).
        let mut tape = Tape::new();
        let v = tape.leaf(t.clone());
        let m = tape.mean(v).unwrap();
        let got = tape.value(m).to_f32_vec().unwrap();
        assert_close(
            &format!("mean of {len}"),
            &got,
            &[want[0] / len as f64],
            Tolerance {
                atol: bound / len as f64,
                rtol: 2.0 * U,
            },
        );
        // Its gradient: 1/len everywhere, from the device scalar.
        let grads = tape.backward(m).unwrap();
        let g = grads.get(v).unwrap();
        assert!(g.device().is_cuda());
        let want_g = vec![1.0 / len as f64; len];
        assert_close(
            &format!("mean gradient {len}"),
            &g.to_f32_vec().unwrap(),
            &want_g,
            ROUNDED_ONCE,
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_from_f32_rounds_as_the_cpu_bit_for_bit() {
    let gpu = device();
    let mut rng = Rng::new(43);
    for len in LENGTHS {
        let values = bf16_probe_values(&mut rng, len);
        let x = CudaStorage::from_host(&gpu, &values).unwrap();
        let got: Vec<u32> = bf16_from_f32(&x).unwrap().to_host_pod().unwrap();
        let want = pack_bf16(&values);
        assert_eq!(got.len(), want.len(), "len {len}");
        if let Some(w) = (0..want.len()).find(|&w| got[w] != want[w]) {
            panic!("len {len}: word {w} is {:#010x}, want {:#010x}", got[w], want[w]);
        }
    }
}
