//! GPU parity of 2x2 max pooling, global average pooling and channel concatenation
//! (kernels/pool.cu, kernels/concat.cu) through the ops API on CUDA tensors, against the same ops
//! on CPU f64 tensors. Every fresh buffer is NaN-poisoned, so an element a kernel fails to write
//! fails the check.
//!
//! Tolerances (u = 2^-24), as in tests/emu_pool.rs: max pooling, concat and split move values
//! (exact, argmax index for index); the average pool sums L values along a tree of depth
//! ceil(L / 32) + 5 and divides once (atol (ceil(L / 32) + 5) u max mean|x|, rtol u); its backward
//! multiplies by the reciprocal rounded to f32 (rtol 2u).
//!
//! These tests need a CUDA GPU: `cargo test --release -- --include-ignored`.

use std::sync::Arc;

use lrc::device::cuda::CudaDevice;
use lrc::ops::pool::PoolArgmax;
use lrc::ops::{concat, pool};
use lrc::rng::Rng;
use lrc::testing::{Tolerance, assert_close, uniform, widen};
use lrc::{Device, Tensor};

const U: f64 = 1.0 / 16_777_216.0;
const EXACT: Tolerance = Tolerance { atol: 0.0, rtol: 0.0 };

fn device() -> Device {
    let device: Arc<CudaDevice> = CudaDevice::open(0).unwrap_or_else(|e| panic!("these tests need a CUDA GPU: {e}"));
    device.set_poison_fresh_buffers(true);
    Device::Cuda(device)
}

fn f64_tensor(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_vec(shape.to_vec(), widen(v)).unwrap()
}

fn gpu_tensor(gpu: &Device, shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_vec(shape.to_vec(), v.to_vec())
        .unwrap()
        .to_device(gpu)
        .unwrap()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn max_pool_matches_the_cpu_twin() {
    let gpu = device();
    let mut rng = Rng::new(41);
    let shapes = [
        [1, 1, 2, 2],
        [2, 3, 5, 7],
        [3, 1, 6, 6],
        [4, 16, 65, 63],
        [2, 32, 128, 128],
    ];
    for shape in shapes {
        for with_ties in [false, true] {
            let len: usize = shape.iter().product();
            let x: Vec<f32> = if with_ties {
                (0..len).map(|_| rng.below(3) as f32).collect()
            } else {
                uniform(&mut rng, len, -1.0, 1.0)
            };
            let what = format!("max_pool {shape:?} ties {with_ties}");
            let (y, arg) = pool::max_pool2x2(&gpu_tensor(&gpu, &shape, &x)).unwrap();
            assert!(matches!(arg, PoolArgmax::Cuda(_)), "{what}: the argmax left the GPU");
            let (want_y, want_arg) = pool::max_pool2x2(&f64_tensor(&shape, &x)).unwrap();
            assert_eq!(y.shape(), want_y.shape());
            assert_close(&what, &y.to_f32_vec().unwrap(), &want_y.to_f64_vec().unwrap(), EXACT);
            assert_eq!(arg.to_vec().unwrap(), want_arg.to_vec().unwrap(), "{what}: argmax");
            let dy = uniform(&mut rng, y.numel(), -1.0, 1.0);
            let dx = pool::max_pool2x2_backward(&shape, &gpu_tensor(&gpu, y.shape(), &dy), &arg).unwrap();
            assert!(dx.device().is_cuda());
            let want_dx = pool::max_pool2x2_backward(&shape, &f64_tensor(y.shape(), &dy), &want_arg).unwrap();
            assert_close(
                &format!("{what} backward"),
                &dx.to_f32_vec().unwrap(),
                &want_dx.to_f64_vec().unwrap(),
                EXACT,
            );
            // A host argmax with a device gradient (or the reverse) is an error, not a crash.
            assert!(pool::max_pool2x2_backward(&shape, &gpu_tensor(&gpu, y.shape(), &dy), &want_arg).is_err());
            assert!(pool::max_pool2x2_backward(&shape, &f64_tensor(y.shape(), &dy), &arg).is_err());
        }
    }
    assert!(pool::max_pool2x2(&gpu_tensor(&gpu, &[1, 1, 1, 4], &[0.0; 4])).is_err());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn global_avg_pool_matches_the_cpu_twin() {
    let gpu = device();
    let mut rng = Rng::new(42);
    for shape in [
        [1, 1, 1, 1],
        [2, 3, 5, 7],
        [16, 512, 8, 8],
        [3, 9, 33, 31],
        [2, 4, 256, 256],
    ] {
        let [n, c, h, w] = shape;
        let len = h * w;
        let x = uniform(&mut rng, n * c * len, -1.0, 1.0);
        let what = format!("global_avg_pool {shape:?}");
        let got = pool::global_avg_pool(&gpu_tensor(&gpu, &shape, &x)).unwrap();
        assert!(got.device().is_cuda());
        let want = pool::global_avg_pool(&f64_tensor(&shape, &x)).unwrap();
        assert_eq!(got.shape(), want.shape());
        let max_abs_mean = x
            .chunks(len)
            .map(|p| p.iter().map(|v| v.abs() as f64).sum::<f64>() / len as f64)
            .fold(0.0, f64::max);
        let tol = Tolerance {
            atol: (len.div_ceil(32) + 5) as f64 * U * max_abs_mean,
            rtol: U,
        };
        assert_close(&what, &got.to_f32_vec().unwrap(), &want.to_f64_vec().unwrap(), tol);
        let dy = uniform(&mut rng, n * c, -1.0, 1.0);
        let dx = pool::global_avg_pool_backward(&shape, &gpu_tensor(&gpu, &[n, c], &dy)).unwrap();
        assert!(dx.device().is_cuda());
        let want_dx = pool::global_avg_pool_backward(&shape, &f64_tensor(&[n, c], &dy)).unwrap();
        assert_close(
            &format!("{what} backward"),
            &dx.to_f32_vec().unwrap(),
            &want_dx.to_f64_vec().unwrap(),
            Tolerance {
                atol: 0.0,
                rtol: 2.0 * U,
            },
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn concat_and_split_match_the_cpu_twin() {
    let gpu = device();
    let mut rng = Rng::new(43);
    // (n, ca, cb, h, w): unequal channels, odd planes (no float4), U-Net skip shapes (float4).
    for (n, ca, cb, h, w) in [
        (1, 1, 2, 1, 1),
        (2, 3, 5, 7, 3),
        (3, 16, 32, 64, 64),
        (2, 64, 64, 33, 17),
    ] {
        let a = uniform(&mut rng, n * ca * h * w, -1.0, 1.0);
        let b = uniform(&mut rng, n * cb * h * w, -1.0, 1.0);
        let what = format!("concat [{n}, {ca} + {cb}, {h}, {w}]");
        let got = concat::forward(
            &gpu_tensor(&gpu, &[n, ca, h, w], &a),
            &gpu_tensor(&gpu, &[n, cb, h, w], &b),
        )
        .unwrap();
        assert!(got.device().is_cuda());
        let want = concat::forward(&f64_tensor(&[n, ca, h, w], &a), &f64_tensor(&[n, cb, h, w], &b)).unwrap();
        assert_eq!(got.shape(), want.shape());
        assert_close(&what, &got.to_f32_vec().unwrap(), &want.to_f64_vec().unwrap(), EXACT);
        let g = uniform(&mut rng, got.numel(), -1.0, 1.0);
        let (ga, gb) = concat::split(&gpu_tensor(&gpu, got.shape(), &g), ca, cb).unwrap();
        let (wa, wb) = concat::split(&f64_tensor(got.shape(), &g), ca, cb).unwrap();
        assert_eq!((ga.shape(), gb.shape()), (wa.shape(), wb.shape()));
        assert_close(
            &format!("{what} split a"),
            &ga.to_f32_vec().unwrap(),
            &wa.to_f64_vec().unwrap(),
            EXACT,
        );
        assert_close(
            &format!("{what} split b"),
            &gb.to_f32_vec().unwrap(),
            &wb.to_f64_vec().unwrap(),
            EXACT,
        );
    }
    // Mixed devices are an error, not a crash.
    let a = gpu_tensor(&gpu, &[1, 1, 2, 2], &[0.0; 4]);
    assert!(concat::forward(&a, &f64_tensor(&[1, 1, 2, 2], &[0.0; 4])).is_err());
}
