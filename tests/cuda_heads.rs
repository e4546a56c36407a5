//! GPU parity of the head ops - matmul, linear (forward, both gradients, the bias gradient) and
//! L2 normalisation - through the public ops API on CUDA tensors, against the same ops on CPU
//! f64 tensors holding the same f32 values; and the whole MoCo head (global features -> linear
//! to 128 -> L2 normalisation -> InfoNCE against a queue of 4096 at t = 0.07) forward and
//! backward on a tape. Fresh device buffers are NaN-poisoned, so an unwritten element fails.
//!
//! Tolerances, per element |got - want| <= atol + rtol |want|:
//! - FP32 products: atol = 1e-5 sqrt(k) max|a| max|b|, rtol = 1e-5 (f32 sums of k products err by
//!   about sqrt(k) 2^-24 of that scale in practice). TF32: atol = 4 * 2^-10 of it, rtol = 5e-3
//!   (operands rounded to 10 mantissa bits; see tests/cuda_conv.rs).
//! - Bias gradient: atol = 1e-6 sqrt(rows) max|g|, rtol = 1e-6.
//! - L2 normalisation: forward atol = 1e-6, rtol = 1e-5 (|y| <= 1); backward atol = 1e-6 of the
//!   largest (|dy| + |y . dy|) / norm, rtol = 1e-5.
//! - The MoCo head chains five ops; each adds its own f32 rounding (~1e-6 relative), and the
//!   logits' 1/t = 14 amplifies what the linear layer and the normalisation leave. atol = 1e-4
//!   of the largest reference value of each output, rtol = 1e-3: an indexing or a missing-term
//!   error is of the order of the values themselves.
//!
//! These tests need a CUDA GPU: `cargo test --release --test cuda_heads -- --include-ignored`.
//! The one test that is not ignored checks that every kernel the heads launch was compiled.

use std::sync::Arc;

use lrc::autograd::Tape;
use lrc::device::Device;
use lrc::device::cuda::gemm::{self, GemmAlgo, GemmShape};
use lrc::device::cuda::loss::{self as device_loss, ChannelShape};
use lrc::device::cuda::{CudaDevice, CudaStorage};
use lrc::kernels;
use lrc::ops::gemm::matmul_t;
use lrc::ops::linear;
use lrc::ops::normalize::{DEFAULT_EPS, cpu as l2cpu};
use lrc::rng::Rng;
use lrc::tensor::{DType, Tensor};
use lrc::testing::{Tolerance, assert_close, assert_compiled_for_every_arch, max_abs, uniform, widen, worst};

fn device() -> Arc<CudaDevice> {
    let device = CudaDevice::open(0).unwrap_or_else(|e| panic!("these tests need a CUDA GPU: {e}"));
    device.set_poison_fresh_buffers(true);
    device
}

/// The same f32 values as a CUDA tensor and as a CPU f64 tensor.
fn pair(dev: &Arc<CudaDevice>, shape: &[usize], data: &[f32]) -> (Tensor, Tensor) {
    let cpu = Tensor::from_vec(shape.to_vec(), data.to_vec()).expect("shape");
    let gpu = cpu.to_device(&Device::Cuda(dev.clone())).expect("copy to the device");
    (gpu, cpu.to_dtype(DType::F64).expect("widen"))
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_f32_vec().expect("copy to the host")
}

fn want(t: &Tensor) -> Vec<f64> {
    t.to_f64_vec().expect("cpu values")
}

fn check(what: &str, got: &Tensor, reference: &Tensor, tol: Tolerance) {
    assert!(!got.is_cpu(), "{what}: the CUDA op returned a CPU tensor");
    assert_eq!(got.shape(), reference.shape(), "{what}: shape");
    let (g, w) = (host(got), want(reference));
    println!("{what}: worst {:.3} x tolerance", worst(&g, &w, tol).ratio);
    assert_close(what, &g, &w, tol);
}

fn product_tolerance(k: usize, a: &[f32], b: &[f32]) -> Tolerance {
    Tolerance {
        atol: 1e-5 * (k.max(1) as f64).sqrt() * max_abs(a) * max_abs(b),
        rtol: 1e-5,
    }
}

#[test]
fn every_kernel_the_heads_launch_was_compiled_for_every_architecture() {
    if !kernels::BUILT {
        return;
    }
    let gemm = gemm::kernel_names().into_iter().map(|name| ("gemm", name));
    assert_compiled_for_every_arch(gemm.chain(device_loss::kernel_names().into_iter().map(|name| ("loss", name))));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_matches_the_cpu_twin_for_every_transpose() {
    let dev = device();
    let mut rng = Rng::new(61);
    for (m, n, k) in [
        (1, 1, 1),
        (1, 70, 33),
        (65, 3, 17),
        (67, 130, 45),
        (5, 7, 1500),
        (16, 128, 4096),
        (300, 200, 100),
    ] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let a = uniform(&mut rng, m * k, -1.0, 1.0);
            let b = uniform(&mut rng, k * n, -1.0, 1.0);
            let a_shape = if ta { [k, m] } else { [m, k] };
            let b_shape = if tb { [n, k] } else { [k, n] };
            let (ag, ac) = pair(&dev, &a_shape, &a);
            let (bg, bc) = pair(&dev, &b_shape, &b);
            let reference = matmul_t(&ac, ta, &bc, tb).unwrap();
            let got = matmul_t(&ag, ta, &bg, tb).unwrap();
            let what = format!("matmul {m}x{n}x{k} ta {ta} tb {tb}");
            check(&what, &got, &reference, product_tolerance(k, &a, &b));
            // The tensor-core version beside it, through the device API.
            let s = GemmShape {
                m,
                n,
                k,
                trans_a: ta,
                trans_b: tb,
            };
            let tf32 = gemm::matmul(
                ag.cuda_storage().unwrap(),
                bg.cuda_storage().unwrap(),
                &s,
                GemmAlgo::Tf32Mma,
            )
            .unwrap()
            .to_host()
            .unwrap();
            let scale = (k as f64).sqrt() * max_abs(&a) * max_abs(&b);
            let tol = Tolerance {
                atol: 4.0 * (-10f64).exp2() * scale,
                rtol: 5e-3,
            };
            assert_close(&format!("{what} tf32"), &tf32, &want(&reference), tol);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn linear_and_its_gradients_match_the_cpu_twin() {
    let dev = device();
    let mut rng = Rng::new(62);
    // The MoCo projection (16 x 512 -> 128), odd sizes, one row.
    for (rows, d_in, d_out) in [(16, 512, 128), (3, 37, 65), (1, 5, 1)] {
        let x = uniform(&mut rng, rows * d_in, -1.0, 1.0);
        let w = uniform(&mut rng, d_out * d_in, -0.1, 0.1);
        let b = uniform(&mut rng, d_out, -1.0, 1.0);
        let g = uniform(&mut rng, rows * d_out, -1.0, 1.0);
        let (xg, xc) = pair(&dev, &[rows, d_in], &x);
        let (wg, wc) = pair(&dev, &[d_out, d_in], &w);
        let (bg, bc) = pair(&dev, &[d_out], &b);
        let (gg, gc) = pair(&dev, &[rows, d_out], &g);
        let what = format!("linear {rows} x {d_in} -> {d_out}");
        let mut tol = product_tolerance(d_in, &x, &w);
        tol.atol += 1e-6 * max_abs(&b);
        check(
            &what,
            &linear::forward(&xg, &wg, Some(&bg)).unwrap(),
            &linear::forward(&xc, &wc, Some(&bc)).unwrap(),
            tol,
        );
        check(
            &format!("{what} without bias"),
            &linear::forward(&xg, &wg, None).unwrap(),
            &linear::forward(&xc, &wc, None).unwrap(),
            product_tolerance(d_in, &x, &w),
        );
        // The backward's products and the bias gradient, as Tape::linear runs them.
        check(
            &format!("{what} dx"),
            &matmul_t(&gg, false, &wg, false).unwrap(),
            &matmul_t(&gc, false, &wc, false).unwrap(),
            product_tolerance(d_out, &g, &w),
        );
        check(
            &format!("{what} dw"),
            &matmul_t(&gg, true, &xg, false).unwrap(),
            &matmul_t(&gc, true, &xc, false).unwrap(),
            product_tolerance(rows, &g, &x),
        );
        let db_tol = Tolerance {
            atol: 1e-6 * (rows as f64).sqrt() * max_abs(&g),
            rtol: 1e-6,
        };
        check(
            &format!("{what} db"),
            &linear::sum_rows(&gg).unwrap(),
            &linear::sum_rows(&gc).unwrap(),
            db_tol,
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn l2_normalisation_matches_the_cpu_twin() {
    let dev = device();
    let mut rng = Rng::new(63);
    // MoCo's [16, 128] (a warp per vector) and LRC's per-pixel embeddings (a thread per pixel).
    for shape in [vec![16, 128], vec![2, 7], vec![4, 64, 96, 96], vec![3, 5, 13, 11]] {
        let len: usize = shape.iter().product();
        let (outer, channels) = (shape[0], shape[1]);
        let inner = len / (outer * channels);
        let x = uniform(&mut rng, len, -1.0, 1.0);
        let dy = uniform(&mut rng, len, -1.0, 1.0);
        let (xg, xc) = pair(&dev, &shape, &x);
        let (mut gpu_tape, mut cpu_tape) = (Tape::new(), Tape::new());
        let (xgv, xcv) = (gpu_tape.constant(xg.clone()), cpu_tape.constant(xc));
        let yg = gpu_tape.l2_normalize(xgv).unwrap();
        let yc = cpu_tape.l2_normalize(xcv).unwrap();
        let fwd = Tolerance { atol: 1e-6, rtol: 1e-5 };
        check(
            &format!("l2_normalize {shape:?}"),
            gpu_tape.value(yg),
            cpu_tape.value(yc),
            fwd,
        );
        // The backward from the GPU's own outputs, as the tape runs it.
        let s = ChannelShape { outer, channels, inner };
        let y_gpu = host(gpu_tape.value(yg));
        let (_, norms_ref) = l2cpu::forward(&widen(&x), channels, inner, DEFAULT_EPS);
        let n32: Vec<f32> = norms_ref.iter().map(|&v| v as f32).collect();
        let dx_ref = l2cpu::backward(&widen(&y_gpu), &widen(&dy), &widen(&n32), channels, inner, DEFAULT_EPS);
        let (_, norms) = device_loss::l2_normalize(xg.cuda_storage().unwrap(), &s, DEFAULT_EPS as f32).unwrap();
        let dy_d = CudaStorage::from_host(&dev, &dy).unwrap();
        let y_d = gpu_tape.value(yg).cuda_storage().unwrap();
        let dx = device_loss::l2_normalize_backward(y_d, &norms, &dy_d, &s, DEFAULT_EPS as f32)
            .unwrap()
            .to_host()
            .unwrap();
        let mut scale = 0.0f64;
        for (pos, &norm) in n32.iter().enumerate() {
            let (o, i) = (pos / inner, pos % inner);
            let at = |c: usize| (o * channels + c) * inner + i;
            let dot: f64 = (0..channels).map(|c| y_gpu[at(c)] as f64 * dy[at(c)] as f64).sum();
            let dmax = (0..channels).fold(0.0f64, |m, c| m.max(dy[at(c)].abs() as f64));
            scale = scale.max((dmax + dot.abs()) / norm as f64);
        }
        let bwd = Tolerance {
            atol: 1e-6 * scale,
            rtol: 1e-5,
        };
        println!(
            "l2_normalize backward {shape:?}: worst {:.3} x tolerance",
            worst(&dx, &dx_ref, bwd).ratio
        );
        assert_close(&format!("l2_normalize backward {shape:?}"), &dx, &dx_ref, bwd);
    }
}

/// Rows of unit vectors.
fn unit_rows(rng: &mut Rng, rows: usize, d: usize) -> Vec<f32> {
    let mut v = uniform(rng, rows * d, -1.0, 1.0);
    for row in v.chunks_mut(d) {
        let n = row.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        row.iter_mut().for_each(|x| *x = (*x as f64 / n) as f32);
    }
    v
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_moco_head_matches_the_cpu_forward_and_backward() {
    let dev = device();
    let mut rng = Rng::new(64);
    let (batch, features, d, queue_len, t) = (16, 512, 128, 4096, 0.07);
    let x = uniform(&mut rng, batch * features, 0.0, 2.0);
    let w = uniform(&mut rng, d * features, -0.05, 0.05);
    let b = uniform(&mut rng, d, -0.1, 0.1);
    let k = unit_rows(&mut rng, batch, d);
    let queue = unit_rows(&mut rng, queue_len, d);
    // Same-case negatives left out: about one in eight.
    let mask: Vec<bool> = (0..batch * queue_len).map(|_| rng.below(8) == 0).collect();
    let run = |on_gpu: bool| -> Vec<Tensor> {
        let put = |shape: &[usize], data: &[f32]| {
            let (g, c) = pair(&dev, shape, data);
            if on_gpu { g } else { c }
        };
        let mut tape = Tape::new();
        let xv = tape.leaf(put(&[batch, features], &x));
        let wv = tape.leaf(put(&[d, features], &w));
        let bv = tape.leaf(put(&[d], &b));
        let kv = tape.constant(put(&[batch, d], &k));
        let nv = tape.constant(put(&[queue_len, d], &queue));
        let z = tape.linear(xv, wv, Some(bv)).unwrap();
        let q = tape.l2_normalize(z).unwrap();
        let loss = tape.infonce_masked(q, kv, nv, t, Some(mask.clone())).unwrap();
        let grads = tape.backward(loss).unwrap();
        vec![
            tape.value(loss).clone(),
            tape.value(q).clone(),
            grads.get(xv).unwrap().clone(),
            grads.get(wv).unwrap().clone(),
            grads.get(bv).unwrap().clone(),
        ]
    };
    let (gpu, cpu) = (run(true), run(false));
    for (name, (g, c)) in ["loss", "q", "dx", "dw", "db"].iter().zip(gpu.iter().zip(&cpu)) {
        let reference = want(c);
        let biggest = reference.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let tol = Tolerance {
            atol: 1e-4 * biggest,
            rtol: 1e-3,
        };
        check(&format!("MoCo head {name}"), g, c, tol);
    }
}
