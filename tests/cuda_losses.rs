//! GPU parity of the losses - log-softmax, cross-entropy, InfoNCE (with its exclusion mask) and
//! soft Dice - through the public ops API on CUDA tensors, against the same ops on CPU f64
//! tensors holding the same f32 values, forward and backward on a tape; backward passes with an
//! upstream gradient other than 1 through the device API (the gradient read on the device); and
//! determinism (two runs agree bit for bit). Fresh device buffers are NaN-poisoned, so an
//! unwritten element fails.
//!
//! Tolerances, per element |got - want| <= atol + rtol |want| (derivations in
//! tests/emu_losses.rs; the GPU's expf/logf differ from the host's by an ulp or two, far inside):
//! - log-softmax: forward atol = 1e-5 (1 + max|x|), rtol = 1e-6; backward atol =
//!   2e-6 (1 + c max|dy|), rtol = 1e-5.
//! - cross-entropy: loss atol = rtol = 1e-5; gradient atol = 2e-6 |g| / M, rtol = 1e-5.
//! - InfoNCE (unit rows): loss atol = rtol = 1e-5; gradients atol = 2e-5 |g| / (n t), rtol = 1e-5.
//! - Dice: loss atol = rtol = 1e-5 for up to 2^20 positions (the per-block partial sums keep the
//!   f32 error of a sum of a million probabilities near 1e-6 relative); gradient atol =
//!   1e-5 |g| 4 / (min_k S_k C'), rtol = 1e-5.
//!
//! These tests need a CUDA GPU: `cargo test --release --test cuda_losses -- --include-ignored`.

use std::sync::Arc;

use lrc::autograd::Tape;
use lrc::device::Device;
use lrc::device::cuda::loss::{self as device_loss, ChannelShape, InfoNceShape};
use lrc::device::cuda::{ConvAlgo, CudaDevice, CudaStorage};
use lrc::ops::dice::{DiceConfig, cpu as dice_cpu};
use lrc::ops::infonce::cpu as nce_cpu;
use lrc::ops::labels::{Labels, arg_max_classes, cpu as labels_cpu};
use lrc::ops::softmax::cpu as sm_cpu;
use lrc::rng::Rng;
use lrc::tensor::{DType, Tensor};
use lrc::testing::{Tolerance, assert_close, max_abs, tied_logits, uniform, widen, worst};

mod cuda_common;
use cuda_common::{TestDevice, exclusive_device};

/// The device alone: `shared_labels_cross_once` counts its host-to-device copies.
fn device() -> TestDevice {
    exclusive_device(ConvAlgo::DEFAULT)
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

fn check(what: &str, got: &Tensor, reference: &Tensor, tol: Tolerance) {
    assert!(!got.is_cpu(), "{what}: the CUDA op returned a CPU tensor");
    assert_eq!(got.shape(), reference.shape(), "{what}: shape");
    let (g, w) = (host(got), reference.to_f64_vec().unwrap());
    println!("{what}: worst {:.3} x tolerance", worst(&g, &w, tol).ratio);
    assert_close(what, &g, &w, tol);
}

fn targets(rng: &mut Rng, positions: usize, classes: usize) -> Vec<u32> {
    (0..positions).map(|_| rng.below(classes as u64) as u32).collect()
}

/// [N, C] rows and [N, C, H, W] logits: 2 and 14 classes, C off the warp, the fine-tuning
/// batch's 16 x 14 x 256 x 256.
fn class_shapes() -> Vec<Vec<usize>> {
    vec![
        vec![5, 2],
        vec![17, 14],
        vec![9, 130],
        vec![2, 2, 30, 10],
        vec![3, 14, 13, 11],
        vec![16, 14, 256, 256],
    ]
}

fn split(shape: &[usize]) -> ChannelShape {
    ChannelShape {
        outer: shape[0],
        channels: shape[1],
        inner: shape[2..].iter().product(),
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn log_softmax_matches_the_cpu_twin() {
    let dev = device();
    let mut rng = Rng::new(71);
    for shape in class_shapes() {
        let s = split(&shape);
        let x = uniform(&mut rng, s.len(), -4.0, 4.0);
        let dy = uniform(&mut rng, s.len(), -1.0, 1.0);
        let (xg, xc) = pair(&dev, &shape, &x);
        let (mut gt, mut ct) = (Tape::new(), Tape::new());
        let (xgv, xcv) = (gt.constant(xg), ct.constant(xc));
        let yg = gt.log_softmax(xgv).unwrap();
        let yc = ct.log_softmax(xcv).unwrap();
        let fwd = Tolerance {
            atol: 1e-5 * (1.0 + max_abs(&x)),
            rtol: 1e-6,
        };
        check(&format!("log_softmax {shape:?}"), gt.value(yg), ct.value(yc), fwd);
        // The backward from the GPU's own output.
        let y = host(gt.value(yg));
        let dx_ref = sm_cpu::log_softmax_backward(&widen(&y), &widen(&dy), s.channels, s.inner);
        let dy_d = CudaStorage::from_host(&dev, &dy).unwrap();
        let dx = device_loss::log_softmax_backward(gt.value(yg).cuda_storage().unwrap(), &dy_d, &s)
            .unwrap()
            .to_host()
            .unwrap();
        let bwd = Tolerance {
            atol: 2e-6 * (1.0 + s.channels as f64 * max_abs(&dy)),
            rtol: 1e-5,
        };
        println!(
            "log_softmax backward {shape:?}: worst {:.3}",
            worst(&dx, &dx_ref, bwd).ratio
        );
        assert_close(&format!("log_softmax backward {shape:?}"), &dx, &dx_ref, bwd);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cross_entropy_matches_the_cpu_twin_on_a_tape() {
    let dev = device();
    let mut rng = Rng::new(72);
    for shape in class_shapes() {
        let s = split(&shape);
        let x = uniform(&mut rng, s.len(), -4.0, 4.0);
        let t = targets(&mut rng, s.positions(), s.channels);
        let run = |logits: Tensor| {
            let mut tape = Tape::new();
            let xv = tape.leaf(logits);
            let loss = tape.cross_entropy(xv, &t).unwrap();
            let grads = tape.backward(loss).unwrap();
            (tape.value(loss).clone(), grads.get(xv).unwrap().clone())
        };
        let (xg, xc) = pair(&dev, &shape, &x);
        let ((lg, dg), (lc, dc)) = (run(xg), run(xc));
        let what = format!("cross_entropy {shape:?}");
        check(&format!("{what} loss"), &lg, &lc, Tolerance { atol: 1e-5, rtol: 1e-5 });
        let grad_tol = Tolerance {
            atol: 2e-6 / s.positions() as f64,
            rtol: 1e-5,
        };
        check(&format!("{what} gradient"), &dg, &dc, grad_tol);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn loss_backwards_read_the_upstream_gradient_on_the_device() {
    let dev = device();
    let mut rng = Rng::new(73);
    let upstream_value = 0.37f32;
    let upstream = CudaStorage::from_host(&dev, &[upstream_value]).unwrap();
    let g = upstream_value as f64;

    // Cross-entropy.
    let s = ChannelShape {
        outer: 3,
        channels: 14,
        inner: 97,
    };
    let x = uniform(&mut rng, s.len(), -4.0, 4.0);
    let t = targets(&mut rng, s.positions(), s.channels);
    let (xd, td) = (
        CudaStorage::from_host(&dev, &x).unwrap(),
        CudaStorage::from_host_u32(&dev, &t).unwrap(),
    );
    let (_, lse) = device_loss::cross_entropy(&xd, &td, &s).unwrap();
    let dx = device_loss::cross_entropy_backward(&xd, &td, &lse, &upstream, &s)
        .unwrap()
        .to_host()
        .unwrap();
    let (_, grad) = sm_cpu::cross_entropy(&widen(&x), &t, s.channels, s.inner);
    let want: Vec<f64> = grad.iter().map(|v| v * g).collect();
    let tol = Tolerance {
        atol: 2e-6 * g / s.positions() as f64,
        rtol: 1e-5,
    };
    assert_close("cross_entropy backward x 0.37", &dx, &want, tol);

    // Dice.
    let cfg = DiceConfig::default();
    let (_, coef) = device_loss::dice_loss(&xd, &td, &s, &cfg).unwrap();
    let dx = device_loss::dice_loss_backward(&xd, &td, &coef, &upstream, &s, &cfg)
        .unwrap()
        .to_host()
        .unwrap();
    let (_, grad) = dice_cpu::dice_loss(&widen(&x), &t, s.channels, s.inner, &cfg);
    let want: Vec<f64> = grad.iter().map(|v| v * g).collect();
    let tol = Tolerance {
        atol: 1e-5 * dice_scale(&x, &t, &s, &cfg, g),
        rtol: 1e-5,
    };
    assert_close("dice backward x 0.37", &dx, &want, tol);

    // InfoNCE.
    let ns = InfoNceShape {
        rows: 16,
        queue_len: 4096,
        dim: 128,
    };
    let t_nce = 0.07;
    let q = unit_rows(&mut rng, ns.rows, ns.dim);
    let k = unit_rows(&mut rng, ns.rows, ns.dim);
    let queue = unit_rows(&mut rng, ns.queue_len, ns.dim);
    let up = |v: &[f32]| CudaStorage::from_host(&dev, v).unwrap();
    let (qd, kd, nd) = (up(&q), up(&k), up(&queue));
    let (_, saved) = device_loss::infonce(&qd, &kd, &nd, None, &ns, t_nce).unwrap();
    let [dq, dk, dqueue] =
        device_loss::infonce_backward(&qd, &kd, &nd, &saved, &upstream, &ns, t_nce, [true, true, true]).unwrap();
    let (_, probs) = nce_cpu::forward(&widen(&q), &widen(&k), &widen(&queue), ns.dim, t_nce, None);
    let want = nce_cpu::backward(&widen(&q), &widen(&k), &widen(&queue), ns.dim, t_nce, &probs, g);
    let tol = Tolerance {
        atol: 2e-5 * g / (ns.rows as f64 * t_nce),
        rtol: 1e-5,
    };
    assert_close("infonce dq x 0.37", &dq.unwrap().to_host().unwrap(), &want.dq, tol);
    assert_close("infonce dk x 0.37", &dk.unwrap().to_host().unwrap(), &want.dk, tol);
    assert_close(
        "infonce dqueue x 0.37",
        &dqueue.unwrap().to_host().unwrap(),
        &want.dqueue,
        tol,
    );
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
fn infonce_matches_the_cpu_twin_on_a_tape() {
    let dev = device();
    let mut rng = Rng::new(74);
    // MoCo's batch 16, d 128, queue 4096 at t = 0.07, with and without the same-case mask; a
    // queue off the block size with a row that keeps one negative and a row that keeps none.
    let cases: Vec<(usize, usize, usize, f64, bool)> = vec![
        (16, 128, 4096, 0.07, false),
        (16, 128, 4096, 0.07, true),
        (5, 33, 1000, 0.2, true),
    ];
    for (rows, d, queue_len, t, masked) in cases {
        let q = unit_rows(&mut rng, rows, d);
        let k = unit_rows(&mut rng, rows, d);
        let queue = unit_rows(&mut rng, queue_len, d);
        let mask = masked.then(|| {
            let mut m: Vec<bool> = (0..rows * queue_len).map(|_| rng.below(8) == 0).collect();
            for j in 0..queue_len {
                m[queue_len + j] = j != 3;
                m[2 * queue_len + j] = true;
            }
            m
        });
        let run = |on_gpu: bool| {
            let put = |shape: &[usize], data: &[f32]| {
                let (g, c) = pair(&dev, shape, data);
                if on_gpu { g } else { c }
            };
            let mut tape = Tape::new();
            let qv = tape.leaf(put(&[rows, d], &q));
            let kv = tape.leaf(put(&[rows, d], &k));
            let nv = tape.leaf(put(&[queue_len, d], &queue));
            let loss = tape.infonce_masked(qv, kv, nv, t, mask.clone()).unwrap();
            let grads = tape.backward(loss).unwrap();
            [
                tape.value(loss).clone(),
                grads.get(qv).unwrap().clone(),
                grads.get(kv).unwrap().clone(),
                grads.get(nv).unwrap().clone(),
            ]
        };
        let (gpu, cpu) = (run(true), run(false));
        let what = format!("infonce {rows} x {d}, queue {queue_len}, t {t}, masked {masked}");
        check(
            &format!("{what} loss"),
            &gpu[0],
            &cpu[0],
            Tolerance { atol: 1e-5, rtol: 1e-5 },
        );
        let tol = Tolerance {
            atol: 2e-5 / (rows as f64 * t),
            rtol: 1e-5,
        };
        for (i, name) in ["dq", "dk", "dqueue"].iter().enumerate() {
            check(&format!("{what} {name}"), &gpu[i + 1], &cpu[i + 1], tol);
        }
    }
}

/// |g| 4 / (min_k S_k C'), a bound on the size of dL/dp.
fn dice_scale(x: &[f32], t: &[u32], s: &ChannelShape, cfg: &DiceConfig, g: f64) -> f64 {
    let p = sm_cpu::softmax(&widen(x), s.channels, s.inner);
    let first = usize::from(cfg.skip_background);
    let mut sums = vec![cfg.eps; s.channels];
    for (pos, &label) in t.iter().enumerate() {
        let (o, i) = (pos / s.inner, pos % s.inner);
        for (c, sum) in sums.iter_mut().enumerate() {
            *sum += p[(o * s.channels + c) * s.inner + i];
        }
        sums[label as usize] += 1.0;
    }
    let min = sums[first..].iter().copied().fold(f64::INFINITY, f64::min);
    g.abs() * 4.0 / (min * (s.channels - first) as f64)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn dice_matches_the_cpu_twin_on_a_tape() {
    let dev = device();
    let mut rng = Rng::new(75);
    let cases = [
        (vec![16, 14, 256, 256], false),
        (vec![16, 14, 256, 256], true),
        (vec![2, 2, 30, 10], true),
        (vec![3, 14, 13, 11], false),
    ];
    for (shape, skip_background) in cases {
        let s = split(&shape);
        let cfg = DiceConfig {
            skip_background,
            ..DiceConfig::default()
        };
        let x = uniform(&mut rng, s.len(), -3.0, 3.0);
        let t = targets(&mut rng, s.positions(), s.channels);
        let run = |logits: Tensor| {
            let mut tape = Tape::new();
            let xv = tape.leaf(logits);
            let loss = tape.dice_loss(xv, &t, cfg).unwrap();
            let grads = tape.backward(loss).unwrap();
            (tape.value(loss).clone(), grads.get(xv).unwrap().clone())
        };
        let (xg, xc) = pair(&dev, &shape, &x);
        let ((lg, dg), (lc, dc)) = (run(xg), run(xc));
        let what = format!("dice {shape:?} skip background {skip_background}");
        check(&format!("{what} loss"), &lg, &lc, Tolerance { atol: 1e-5, rtol: 1e-5 });
        let tol = Tolerance {
            atol: 1e-5 * dice_scale(&x, &t, &s, &cfg, 1.0),
            rtol: 1e-5,
        };
        check(&format!("{what} gradient"), &dg, &dc, tol);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn losses_are_deterministic() {
    let dev = device();
    let mut rng = Rng::new(76);
    let shape = [16, 14, 64, 64];
    let s = split(&shape);
    let x = uniform(&mut rng, s.len(), -3.0, 3.0);
    let t = targets(&mut rng, s.positions(), s.channels);
    let (xg, _) = pair(&dev, &shape, &x);
    let q = unit_rows(&mut rng, 16, 128);
    let k = unit_rows(&mut rng, 16, 128);
    let queue = unit_rows(&mut rng, 4096, 128);
    let (qg, _) = pair(&dev, &[16, 128], &q);
    let (kg, _) = pair(&dev, &[16, 128], &k);
    let (ng, _) = pair(&dev, &[4096, 128], &queue);
    let run = || {
        let mut tape = Tape::new();
        let xv = tape.leaf(xg.clone());
        let dice = tape.dice_loss(xv, &t, DiceConfig::default()).unwrap();
        let ce = tape.cross_entropy(xv, &t).unwrap();
        let qv = tape.leaf(qg.clone());
        let kv = tape.leaf(kg.clone());
        let nv = tape.leaf(ng.clone());
        let nce = tape.infonce(qv, kv, nv, 0.07).unwrap();
        let mut out = Vec::new();
        for loss in [dice, ce, nce] {
            out.push(host(tape.value(loss)));
            let grads = tape.backward(loss).unwrap();
            for v in [xv, qv, kv, nv] {
                if let Some(g) = grads.get(v) {
                    out.push(host(g));
                }
            }
        }
        out
    };
    let (a, b) = (run(), run());
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "output {i} differs between two identical runs");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn mixed_devices_are_errors_not_panics() {
    let dev = device();
    let (xg, xc) = pair(&dev, &[4, 3], &[0.5; 12]);
    let (wg, wc) = pair(&dev, &[2, 3], &[0.25; 6]);
    assert!(lrc::ops::gemm::matmul_t(&xg, false, &wc, true).is_err());
    assert!(lrc::ops::linear::forward(&xc, &wg, None).is_err());
    let mut tape = Tape::new();
    let q = tape.leaf(xg);
    let k = tape.constant(xc);
    let n = tape.constant(wg);
    assert!(tape.infonce(q, k, n, 0.1).is_err());
}

/// Labels from logits on the device equal the CPU twin's, ties and NaNs included, for the
/// shapes above and the fine-tuning batch; one copy comes back, of one byte per pixel.
#[test]
#[ignore = "needs a CUDA GPU"]
fn class_arg_max_matches_the_cpu_twin() {
    let dev = device();
    let mut rng = Rng::new(78);
    for shape in class_shapes() {
        let s = split(&shape);
        let x = tied_logits(&mut rng, s.len());
        let want = labels_cpu::arg_max_classes(&x, s.channels, s.inner);
        let (xg, _) = pair(&dev, &shape, &x);
        let before = dev.transfers().to_host;
        let got = arg_max_classes(&xg).unwrap();
        assert_eq!(dev.transfers().to_host - before, 1, "{shape:?}: device-to-host copies");
        assert_eq!(got, want, "class arg-max {shape:?}");
    }
}

/// The batch's labels, given to Dice and cross-entropy as one `Labels`, cross to the device once,
/// and the losses equal those of plain label slices (each of which is copied by its loss).
#[test]
#[ignore = "needs a CUDA GPU"]
fn shared_labels_cross_once() {
    let dev = device();
    let mut rng = Rng::new(77);
    let shape = [2, 5, 9, 11];
    let s = split(&shape);
    let x = uniform(&mut rng, s.len(), -3.0, 3.0);
    let t = targets(&mut rng, s.positions(), s.channels);
    let (xg, _) = pair(&dev, &shape, &x);
    let losses = |shared: bool| {
        let mut tape = Tape::new();
        let xv = tape.leaf(xg.clone());
        let before = dev.transfers().to_device;
        let (dice, ce) = if shared {
            let labels = Labels::new(&t);
            let dice = tape.dice_loss(xv, &labels, DiceConfig::default()).unwrap();
            (dice, tape.cross_entropy(xv, &labels).unwrap())
        } else {
            let dice = tape.dice_loss(xv, &t, DiceConfig::default()).unwrap();
            (dice, tape.cross_entropy(xv, &t).unwrap())
        };
        let copies = dev.transfers().to_device - before;
        (copies, host(tape.value(dice)), host(tape.value(ce)))
    };
    let (shared_copies, dice_a, ce_a) = losses(true);
    let (plain_copies, dice_b, ce_b) = losses(false);
    assert_eq!(shared_copies, 1, "shared labels: host-to-device copies");
    assert_eq!(plain_copies, 2, "plain label slices: host-to-device copies");
    assert_eq!(dice_a, dice_b, "Dice with shared labels");
    assert_eq!(ce_a, ce_b, "cross-entropy with shared labels");
}
