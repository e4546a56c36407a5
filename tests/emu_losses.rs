//! Emulator parity of the loss kernels of `kernels/loss.cu` (log-softmax, cross-entropy,
//! InfoNCE, soft Dice), launched as the host planners plan them, against the CPU twins evaluated
//! in f64 on the same f32 inputs. Every output starts as NaN (EmuMemory::alloc), so an element a
//! kernel fails to write fails the check. Backward passes read an upstream gradient that is not
//! 1 from a device buffer.
//!
//! Tolerances, per element |got - want| <= atol + rtol |want|:
//! - log-softmax forward: atol = 1e-5 (1 + max|x|), rtol = 1e-6. The log-sum-exp errs by the
//!   relative error of the f32 sum of c exponentials (< c 2^-24 = 8e-6 for c = 130, expf adds
//!   2 ulp) plus the rounding of |x| - lse.
//! - log-softmax backward: atol = 2e-6 (1 + c max|dy|), rtol = 1e-5: dy - exp(y) sum(dy) cancels
//!   terms as large as c max|dy|.
//! - cross-entropy loss: atol = 1e-5, rtol = 1e-5 (a mean of per-position errors ~1e-6 of
//!   log-sum-exps of logits in [-4, 4]). Gradient: atol = 2e-6 |g| / M, rtol = 1e-5: every
//!   element is g / M times a probability (minus 1 at the target) with ~1e-6 relative error.
//! - InfoNCE (unit q, k and queue rows, so logits are at most 1/t ~ 14 in size): loss atol =
//!   1e-5, rtol = 1e-5 (logit errors ~ sqrt(d) 2^-24 / t, a log-sum-exp over K + 1 terms summed
//!   16 per thread then by a tree). Gradients: atol = 2e-5 c, rtol = 1e-5 with c = |g| / (n t)
//!   the factor of every term: dq sums probabilities (total 1, each ~1e-5 relative error) times
//!   unit rows.
//! - class arg-max: exact (a comparison, no arithmetic), ties and NaNs included.
//! - Dice loss: atol = 1e-5, rtol = 1e-5 (sums of probabilities over <= 2100 positions in f32,
//!   relative error ~1e-6). Gradient: atol = 1e-5 * scale, rtol = 1e-5 with scale =
//!   |g| 4 / (min_k S_k C'), a bound on |dL/dp| (|a_k| <= |b_k| = 2 / (S_k C')).

use lrc::device::cuda::gemm::{GemmAlgo, gemm_plan};
use lrc::device::cuda::loss::{
    ChannelShape, InfoNceBackward, InfoNceForward, InfoNceShape, PositionLayout, class_arg_max_calls,
    cross_entropy_backward_calls, cross_entropy_calls, dice_backward_calls, dice_blocks, dice_calls,
    infonce_backward_calls, infonce_forward_calls, label_words, log_softmax_backward_calls, log_softmax_calls,
    pack_mask, position_blocks,
};
use lrc::device::emu::{self, EmuMemory};
use lrc::ops::dice::{DiceConfig, cpu as dice_cpu};
use lrc::ops::infonce::cpu as nce_cpu;
use lrc::ops::labels::cpu as labels_cpu;
use lrc::ops::softmax::cpu as sm_cpu;
use lrc::rng::Rng;
use lrc::testing::{Tolerance, assert_close, max_abs, tied_logits, uniform, widen, worst};

/// The multiprocessors of an H100, so that GEMM plans split as they would there.
const SMS: usize = 132;

/// The upstream gradient of every loss: not 1, so that a backward ignoring it fails.
const UPSTREAM: f32 = -0.625;

fn shape(outer: usize, channels: usize, inner: usize) -> ChannelShape {
    ChannelShape { outer, channels, inner }
}

/// Classification-like shapes: [N, C] rows (inner 1) with C off the warp and C = 2, one
/// position, segmentation logits with 2 and 14 classes whose inner extent spans several blocks.
fn class_shapes() -> Vec<ChannelShape> {
    vec![
        shape(1, 1, 1),
        shape(5, 2, 1),
        shape(17, 14, 1),
        shape(9, 130, 1),
        shape(2, 2, 300),
        shape(3, 14, 97),
        shape(1, 5, 33),
    ]
}

fn targets(rng: &mut Rng, positions: usize, classes: usize) -> Vec<u32> {
    (0..positions).map(|_| rng.below(classes as u64) as u32).collect()
}

fn report(what: &str, got: &[f32], want: &[f64], tol: Tolerance) {
    println!("{what}: worst {:.3} x tolerance", worst(got, want, tol).ratio);
    assert_close(what, got, want, tol);
}

#[test]
fn log_softmax_matches_the_cpu_twin_in_both_layouts() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(51);
    for s in class_shapes() {
        let x = uniform(&mut rng, s.len(), -4.0, 4.0);
        let dy = uniform(&mut rng, s.len(), -1.0, 1.0);
        let y_ref = sm_cpu::log_softmax(&widen(&x), s.channels, s.inner);
        let y32: Vec<f32> = y_ref.iter().map(|&v| v as f32).collect();
        let dx_ref = sm_cpu::log_softmax_backward(&widen(&y32), &widen(&dy), s.channels, s.inner);
        for layout in PositionLayout::ALL {
            let mut mem = EmuMemory::new();
            let (xa, dya, ya_in) = (mem.upload(&x), mem.upload(&dy), mem.upload(&y32));
            let (y, dx) = (mem.alloc(s.len()), mem.alloc(s.len()));
            let mut calls = log_softmax_calls(layout, &s, xa, y).expect("plan");
            calls.extend(log_softmax_backward_calls(layout, &s, ya_in, dya, dx).expect("plan"));
            mem.run(&calls).unwrap_or_else(|e| panic!("{e}"));
            let fwd = Tolerance {
                atol: 1e-5 * (1.0 + max_abs(&x)),
                rtol: 1e-6,
            };
            let bwd = Tolerance {
                atol: 2e-6 * (1.0 + s.channels as f64 * max_abs(&dy)),
                rtol: 1e-5,
            };
            report(
                &format!("log_softmax {s:?} {layout:?}"),
                &mem.read(y, s.len()),
                &y_ref,
                fwd,
            );
            report(
                &format!("log_softmax backward {s:?} {layout:?}"),
                &mem.read(dx, s.len()),
                &dx_ref,
                bwd,
            );
        }
    }
}

#[test]
fn cross_entropy_matches_the_cpu_twin_in_both_layouts() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(52);
    for s in class_shapes() {
        let x = uniform(&mut rng, s.len(), -4.0, 4.0);
        let t = targets(&mut rng, s.positions(), s.channels);
        let (loss_ref, grad_ref) = sm_cpu::cross_entropy(&widen(&x), &t, s.channels, s.inner);
        let dx_ref: Vec<f64> = grad_ref.iter().map(|&v| v * UPSTREAM as f64).collect();
        for layout in PositionLayout::ALL {
            let mut mem = EmuMemory::new();
            let (xa, ta, ga) = (mem.upload(&x), mem.upload(&t), mem.upload(&[UPSTREAM]));
            let lse = mem.alloc(s.positions());
            let partial = mem.alloc(position_blocks(layout, s.positions()));
            let (loss, dx) = (mem.alloc(1), mem.alloc(s.len()));
            let mut calls = cross_entropy_calls(layout, &s, xa, ta, lse, partial, loss).expect("plan");
            calls.extend(cross_entropy_backward_calls(layout, &s, xa, ta, lse, ga, dx).expect("plan"));
            mem.run(&calls).unwrap_or_else(|e| panic!("{e}"));
            let what = format!("cross_entropy {s:?} {layout:?}");
            let loss_tol = Tolerance { atol: 1e-5, rtol: 1e-5 };
            report(&format!("{what} loss"), &mem.read(loss, 1), &[loss_ref], loss_tol);
            let grad_tol = Tolerance {
                atol: 2e-6 * UPSTREAM.abs() as f64 / s.positions() as f64,
                rtol: 1e-5,
            };
            report(&format!("{what} gradient"), &mem.read(dx, s.len()), &dx_ref, grad_tol);
        }
    }
}

/// Rows of unit vectors, as MoCo feeds InfoNCE.
#[test]
fn class_arg_max_matches_the_cpu_twin() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(53);
    // Positions off the 4-byte word and the block; 1, 2, 14 and the most (256) classes.
    let shapes = [
        shape(1, 1, 5),
        shape(2, 2, 301),
        shape(3, 14, 97),
        shape(1, 256, 33),
        shape(4, 5, 1),
    ];
    for s in shapes {
        let x = tied_logits(&mut rng, s.len());
        let want = labels_cpu::arg_max_classes(&x, s.channels, s.inner);
        let mut mem = EmuMemory::new();
        let xa = mem.upload(&x);
        // 0xff in every byte: no label of these shapes but 255 of 256 classes, and a byte the
        // kernel fails to write stays 0xff.
        let words = label_words(s.positions());
        let out = mem.upload(&vec![u32::MAX; words]);
        mem.run(&class_arg_max_calls(&s, xa, out).expect("plan"))
            .unwrap_or_else(|e| panic!("{e}"));
        let bytes: Vec<u8> = mem
            .read::<u32>(out, words)
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        assert_eq!(&bytes[..s.positions()], &want[..], "class arg-max {s:?}");
        assert!(
            bytes[s.positions()..].iter().all(|&b| b == 0xff),
            "{s:?}: bytes past the labels written"
        );
        assert!(
            s.channels == 1 || want.iter().any(|&l| l > 0),
            "{s:?}: only class 0 won"
        );
    }
}

fn unit_rows(rng: &mut Rng, rows: usize, d: usize) -> Vec<f32> {
    let mut v = uniform(rng, rows * d, -1.0, 1.0);
    for row in v.chunks_mut(d) {
        let n = row.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        row.iter_mut().for_each(|x| *x = (*x as f64 / n) as f32);
    }
    v
}

struct NceCase {
    s: InfoNceShape,
    t: f64,
    /// Per row: which negatives are left out.
    mask: Option<Vec<bool>>,
}

/// A queue shorter than a block, one longer than the 256 threads of a row's block and not a
/// multiple of it, one whose dq product the planner splits (queue > 512), one row, d off the
/// warp, masks that leave out some negatives, all but one, and all of them, and MoCo's
/// batch 16, d 128, queue 4096 at t = 0.07.
fn nce_cases(rng: &mut Rng) -> Vec<NceCase> {
    let mut cases = Vec::new();
    let mut push = |rows, queue_len, dim, t, masked: bool, rng: &mut Rng| {
        let s = InfoNceShape { rows, queue_len, dim };
        let mask = masked.then(|| {
            let mut m: Vec<bool> = (0..rows * queue_len).map(|_| rng.below(4) == 0).collect();
            if rows >= 3 && queue_len >= 2 {
                // Row 1 keeps one negative, row 2 none.
                let keep = rng.below(queue_len as u64) as usize;
                for j in 0..queue_len {
                    m[queue_len + j] = j != keep;
                    m[2 * queue_len + j] = true;
                }
            }
            m
        });
        cases.push(NceCase { s, t, mask });
    };
    push(1, 7, 5, 0.2, false, rng);
    push(3, 300, 33, 0.07, false, rng);
    push(4, 300, 33, 0.07, true, rng);
    push(5, 1100, 24, 0.1, true, rng);
    push(2, 0, 8, 0.5, false, rng);
    push(16, 4096, 128, 0.07, true, rng);
    cases
}

#[test]
fn infonce_matches_the_cpu_twin() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(53);
    for case in nce_cases(&mut rng) {
        let (s, t) = (case.s, case.t);
        let q = unit_rows(&mut rng, s.rows, s.dim);
        let k = unit_rows(&mut rng, s.rows, s.dim);
        let queue = unit_rows(&mut rng, s.queue_len, s.dim);
        let (loss_ref, probs) =
            nce_cpu::forward(&widen(&q), &widen(&k), &widen(&queue), s.dim, t, case.mask.as_deref());
        let g = nce_cpu::backward(
            &widen(&q),
            &widen(&k),
            &widen(&queue),
            s.dim,
            t,
            &probs,
            UPSTREAM as f64,
        );

        let mut mem = EmuMemory::new();
        let (qa, ka, na, ga) = (
            mem.upload(&q),
            mem.upload(&k),
            mem.upload(&queue),
            mem.upload(&[UPSTREAM]),
        );
        let mask = case
            .mask
            .as_ref()
            .map_or(0, |m| mem.upload(&pack_mask(m, s.rows, s.queue_len)));
        let fwd = InfoNceForward {
            q: qa,
            k: ka,
            queue: na,
            mask,
            probs: mem.alloc(s.rows * s.queue_len),
            pos_probs: mem.alloc(s.rows),
            row_loss: mem.alloc(s.rows),
            loss: mem.alloc(1),
        };
        let logits_plan = gemm_plan(&s.logits_gemm(), GemmAlgo::DEFAULT, SMS);
        let dq_plan = gemm_plan(&s.dq_gemm(), GemmAlgo::DEFAULT, SMS);
        let dqueue_plan = gemm_plan(&s.dqueue_gemm(), GemmAlgo::DEFAULT, SMS);
        let scratch_len = [
            logits_plan.scratch_len(&s.logits_gemm()),
            dq_plan.scratch_len(&s.dq_gemm()),
            dqueue_plan.scratch_len(&s.dqueue_gemm()),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        let scratch = mem.alloc(scratch_len);
        let bwd = InfoNceBackward {
            q: qa,
            k: ka,
            queue: na,
            probs: fwd.probs,
            pos_probs: fwd.pos_probs,
            upstream: ga,
            dq: mem.alloc(s.rows * s.dim),
            dk: mem.alloc(s.rows * s.dim),
            dqueue: mem.alloc(s.queue_len * s.dim),
        };
        let mut calls = infonce_forward_calls(&s, t, &fwd, &logits_plan, scratch).expect("plan");
        calls.extend(infonce_backward_calls(&s, t, &bwd, &dq_plan, &dqueue_plan, scratch).expect("plan"));
        mem.run(&calls).unwrap_or_else(|e| panic!("{e}"));

        let what = format!(
            "infonce {s:?} t {t} masked {} (dq splits {})",
            case.mask.is_some(),
            dq_plan.splits
        );
        let loss_tol = Tolerance { atol: 1e-5, rtol: 1e-5 };
        report(&format!("{what} loss"), &mem.read(fwd.loss, 1), &[loss_ref], loss_tol);
        // The saved probabilities, positive first per row as the CPU keeps them.
        let (got_pos, got_neg): (Vec<f32>, Vec<f32>) = (
            mem.read(fwd.pos_probs, s.rows),
            mem.read(fwd.probs, s.rows * s.queue_len),
        );
        let want_pos: Vec<f64> = (0..s.rows).map(|i| probs[i * (1 + s.queue_len)]).collect();
        let want_neg: Vec<f64> = (0..s.rows)
            .flat_map(|i| probs[i * (1 + s.queue_len) + 1..(i + 1) * (1 + s.queue_len)].to_vec())
            .collect();
        let prob_tol = Tolerance { atol: 1e-6, rtol: 1e-4 };
        report(&format!("{what} positive probabilities"), &got_pos, &want_pos, prob_tol);
        report(&format!("{what} negative probabilities"), &got_neg, &want_neg, prob_tol);
        let c = UPSTREAM.abs() as f64 / (s.rows as f64 * t);
        let grad_tol = Tolerance {
            atol: 2e-5 * c,
            rtol: 1e-5,
        };
        report(
            &format!("{what} dq"),
            &mem.read(bwd.dq, s.rows * s.dim),
            &g.dq,
            grad_tol,
        );
        report(
            &format!("{what} dk"),
            &mem.read(bwd.dk, s.rows * s.dim),
            &g.dk,
            grad_tol,
        );
        report(
            &format!("{what} dqueue"),
            &mem.read(bwd.dqueue, s.queue_len * s.dim),
            &g.dqueue,
            grad_tol,
        );
    }
}

/// |g| 4 / (min_k S_k C'), a bound on the size of dL/dp (see the module comment).
fn dice_scale(x: &[f32], t: &[u32], s: &ChannelShape, cfg: &DiceConfig) -> f64 {
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
    UPSTREAM.abs() as f64 * 4.0 / (min * (s.channels - first) as f64)
}

#[test]
fn dice_matches_the_cpu_twin() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(54);
    // 2 and 14 classes, positions spanning several blocks of 1024 and ending mid-block, one
    // position, one class, and a class absent from the labels.
    let cases = [
        (shape(2, 14, 700), false),
        (shape(2, 14, 700), true),
        (shape(3, 2, 701), true),
        (shape(1, 2, 50), false),
        (shape(1, 1, 1), false),
        (shape(4, 5, 33), false),
    ];
    for (s, skip_background) in cases {
        let cfg = DiceConfig {
            skip_background,
            ..DiceConfig::default()
        };
        let x = uniform(&mut rng, s.len(), -3.0, 3.0);
        // The last class never appears in the labels when there are several.
        let label_classes = if s.channels > 2 { s.channels - 1 } else { s.channels };
        let t = targets(&mut rng, s.positions(), label_classes);
        let (loss_ref, grad_ref) = dice_cpu::dice_loss(&widen(&x), &t, s.channels, s.inner, &cfg);
        let dx_ref: Vec<f64> = grad_ref.iter().map(|&v| v * UPSTREAM as f64).collect();

        let mut mem = EmuMemory::new();
        let (xa, ta, ga) = (mem.upload(&x), mem.upload(&t), mem.upload(&[UPSTREAM]));
        let partial = mem.alloc(dice_blocks(s.positions()) * 3 * s.channels);
        let (coef, loss, dx) = (mem.alloc(2 * s.channels), mem.alloc(1), mem.alloc(s.len()));
        let mut calls = dice_calls(&s, &cfg, xa, ta, partial, coef, loss).expect("plan");
        calls.extend(dice_backward_calls(&s, &cfg, xa, ta, coef, ga, dx).expect("plan"));
        mem.run(&calls).unwrap_or_else(|e| panic!("{e}"));

        let what = format!(
            "dice {s:?} skip background {skip_background} ({} blocks)",
            dice_blocks(s.positions())
        );
        let loss_tol = Tolerance { atol: 1e-5, rtol: 1e-5 };
        report(&format!("{what} loss"), &mem.read(loss, 1), &[loss_ref], loss_tol);
        let grad_tol = Tolerance {
            atol: 1e-5 * dice_scale(&x, &t, &s, &cfg),
            rtol: 1e-5,
        };
        report(&format!("{what} gradient"), &mem.read(dx, s.len()), &dx_ref, grad_tol);
    }
}
