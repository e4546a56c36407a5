//! Emulator parity of the head kernels (`kernels/gemm.cu` and the L2 normalisation of
//! `kernels/loss.cu`), launched as the host planners plan them, against the CPU twins evaluated
//! in f64 on the same f32 inputs. Every output starts as NaN (EmuMemory::alloc), so an element a
//! kernel fails to write fails the check.
//!
//! Tolerances, per element |got - want| <= atol + rtol |want|:
//! - FP32 GEMM: atol = 1e-5 * scale + 1e-6 * (max|bias| + max|C before|), rtol = 1e-5, with
//!   scale = |alpha s| sqrt(k) max|a| max|b| the typical size of a sum of k products with random
//!   signs. f32 summation of k <= 1500 terms errs by about sqrt(k) 2^-24 of that scale in
//!   practice; the extra term covers the rounding of the bias and accumulator additions when they
//!   cancel. An indexing error is of the order of the scale itself.
//! - TF32 GEMM: atol = 4 * 2^-10 * scale (+ the same extra term), rtol = 5e-3: each operand is
//!   rounded to 10 mantissa bits (relative error <= 2^-11), the errors of k products with random
//!   signs add to about 2^-11 scale (std); 4 * 2^-10 is ~8 standard deviations.
//! - Column sums: atol = 1e-6 sqrt(rows) max|x|, rtol = 1e-6 (a fixed-order f32 sum of rows
//!   terms, at most 1 + rows/8 of them added in sequence).
//! - L2 normalisation forward: atol = 1e-6, rtol = 1e-5 (|y| <= 1; the norm's f32 sum of squares
//!   errs by < c 2^-24 relative, c <= 130). Backward: atol = 1e-6 * scale, rtol = 1e-5, scale =
//!   max over positions of (|dy| + |y . dy|) / norm, the size of the terms that cancel in
//!   dy - y (y . dy).

use lrc::device::cuda::gemm::{Epilogue, GemmAlgo, GemmShape, column_sum_calls, gemm_calls, gemm_plan};
use lrc::device::cuda::loss::{
    ChannelShape, PositionLayout, l2_normalize_backward_calls, l2_normalize_calls, position_layout,
};
use lrc::device::emu::{self, EmuMemory};
use lrc::ops::gemm::gemm_into;
use lrc::ops::normalize::{DEFAULT_EPS, cpu as l2cpu};
use lrc::rng::Rng;
use lrc::testing::{Tolerance, assert_close, max_abs, uniform, widen, worst};

/// The multiprocessors of an H100, so that plans split as they would there.
const SMS: usize = 132;

/// One product to check: shape, epilogue and whether C starts with values to accumulate onto.
struct Case {
    shape: GemmShape,
    alpha: f32,
    scale: Option<f32>,
    bias: bool,
    accumulate: bool,
}

fn case(m: usize, n: usize, k: usize, ta: bool, tb: bool) -> Case {
    Case {
        shape: GemmShape {
            m,
            n,
            k,
            trans_a: ta,
            trans_b: tb,
        },
        alpha: 1.0,
        scale: None,
        bias: false,
        accumulate: false,
    }
}

/// Sizes off every tile (1, 3, 33, 65, 67, 130), one-row and one-column products, the MoCo
/// head's (16 x 128 from 512) and its weight gradient (128 x 512 over 16), an empty reduction
/// (k = 0), and long reductions over one or two tiles that the planner splits.
fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        for (m, n, k) in [(1, 1, 1), (1, 70, 33), (65, 3, 17), (67, 130, 45), (5, 7, 1500)] {
            out.push(case(m, n, k, ta, tb));
        }
    }
    // The linear layer: x w^T + b, and its two gradients.
    out.push(Case {
        bias: true,
        ..case(16, 128, 512, false, true)
    });
    out.push(case(16, 512, 128, false, false));
    out.push(case(128, 512, 16, true, false));
    // Every epilogue term at once, unsplit and split.
    for (m, n, k) in [(33, 65, 40), (16, 128, 1100)] {
        out.push(Case {
            alpha: 0.25,
            scale: Some(-1.75),
            bias: true,
            accumulate: true,
            ..case(m, n, k, false, false)
        });
    }
    // k = 0: C = bias (+ C).
    out.push(Case {
        bias: true,
        accumulate: true,
        ..case(3, 4, 0, false, true)
    });
    out
}

/// `C = [C +] alpha s op(A) op(B) + bias` in f64.
fn reference(c: &Case, a: &[f32], b: &[f32], bias: &[f32], c0: &[f32]) -> Vec<f64> {
    let s = &c.shape;
    let mut prod = vec![0.0f64; s.m * s.n];
    gemm_into(
        s.m,
        s.n,
        s.k,
        &widen(a),
        s.trans_a,
        &widen(b),
        s.trans_b,
        &mut prod,
        false,
        false,
    );
    let factor = c.alpha as f64 * c.scale.unwrap_or(1.0) as f64;
    prod.iter()
        .enumerate()
        .map(|(i, &v)| {
            let mut r = factor * v;
            if c.bias {
                r += bias[i % s.n] as f64;
            }
            if c.accumulate {
                r += c0[i] as f64;
            }
            r
        })
        .collect()
}

fn gemm_tolerance(algo: GemmAlgo, c: &Case, a: &[f32], b: &[f32], bias: &[f32], c0: &[f32]) -> Tolerance {
    let factor = (c.alpha * c.scale.unwrap_or(1.0)).abs() as f64;
    let scale = factor * (c.shape.k.max(1) as f64).sqrt() * max_abs(a) * max_abs(b);
    let extra = 1e-6 * (if c.bias { max_abs(bias) } else { 0.0 } + if c.accumulate { max_abs(c0) } else { 0.0 });
    match algo {
        GemmAlgo::Fp32Tiled => Tolerance {
            atol: 1e-5 * scale + extra,
            rtol: 1e-5,
        },
        GemmAlgo::Tf32Mma => Tolerance {
            atol: 4.0 * (-10f64).exp2() * scale + extra,
            rtol: 5e-3,
        },
    }
}

#[test]
fn every_gemm_version_matches_the_cpu_twin() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(41);
    for algo in GemmAlgo::ALL {
        let cases = cases();
        // Every product of this algorithm in one emulator run.
        let mut mem = EmuMemory::new();
        let mut calls = Vec::new();
        let mut checks = Vec::new();
        let mut split_seen = false;
        for c in &cases {
            let s = &c.shape;
            let a = uniform(&mut rng, s.m * s.k, -1.0, 1.0);
            let b = uniform(&mut rng, s.k * s.n, -1.0, 1.0);
            let bias = uniform(&mut rng, s.n, -1.0, 1.0);
            let c0 = uniform(&mut rng, s.m * s.n, -2.0, 2.0);
            let plan = gemm_plan(s, algo, SMS);
            split_seen |= plan.splits > 1;
            let (a_d, b_d) = (mem.upload(&a), mem.upload(&b));
            let out = if c.accumulate {
                mem.upload(&c0)
            } else {
                mem.alloc(s.m * s.n)
            };
            let epi = Epilogue {
                alpha: c.alpha,
                scale: c.scale.map_or(0, |v| mem.upload(&[v])),
                bias: if c.bias { mem.upload(&bias) } else { 0 },
                accumulate: c.accumulate,
            };
            let scratch = mem.alloc(plan.scratch_len(s));
            calls.extend(gemm_calls(s, &plan, &epi, a_d, b_d, out, scratch).expect("plan"));
            let want = reference(c, &a, &b, &bias, &c0);
            let tol = gemm_tolerance(algo, c, &a, &b, &bias, &c0);
            checks.push((format!("{algo} {s:?} (splits {})", plan.splits), out, want, tol));
        }
        assert!(split_seen, "no case exercised a split reduction");
        mem.run(&calls).unwrap_or_else(|e| panic!("{e}"));
        for (what, out, want, tol) in checks {
            let got: Vec<f32> = mem.read(out, want.len());
            let w = worst(&got, &want, tol);
            println!("{what}: worst {:.3} x tolerance", w.ratio);
            assert_close(&what, &got, &want, tol);
        }
    }
}

#[test]
fn column_sums_match_the_cpu_twin() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(42);
    let mut mem = EmuMemory::new();
    let mut calls = Vec::new();
    let mut checks = Vec::new();
    // One row, rows off the 8 row groups, columns off the 32 of a block, several blocks, and
    // the MoCo head's 16 x 128.
    for (rows, cols) in [(1, 1), (16, 128), (37, 33), (300, 5), (9, 97), (0, 3)] {
        let x = uniform(&mut rng, rows * cols, -1.0, 1.0);
        let xa = mem.upload(&x);
        let out = mem.alloc(cols);
        calls.extend(column_sum_calls(rows, cols, xa, out).expect("plan"));
        let want: Vec<f64> = (0..cols)
            .map(|j| (0..rows).map(|r| x[r * cols + j] as f64).sum())
            .collect();
        let tol = Tolerance {
            atol: 1e-6 * (rows.max(1) as f64).sqrt() * max_abs(&x).max(1e-30),
            rtol: 1e-6,
        };
        checks.push((format!("column sums {rows} x {cols}"), out, want, tol));
    }
    mem.run(&calls).unwrap_or_else(|e| panic!("{e}"));
    for (what, out, want, tol) in checks {
        let got: Vec<f32> = mem.read(out, want.len());
        println!("{what}: worst {:.3} x tolerance", worst(&got, &want, tol).ratio);
        assert_close(&what, &got, &want, tol);
    }
}

/// (outer, channels, inner): MoCo's [16, 128] rows, one-element and short vectors, more
/// positions than one block holds in either layout, channels off the warp, and pixel
/// embeddings (inner spanning several blocks of 256).
fn l2_shapes() -> Vec<ChannelShape> {
    [
        (16, 128, 1),
        (1, 1, 1),
        (3, 5, 1),
        (20, 33, 1),
        (2, 7, 300),
        (1, 40, 33),
        (3, 16, 97),
    ]
    .into_iter()
    .map(|(outer, channels, inner)| ChannelShape { outer, channels, inner })
    .collect()
}

#[test]
fn l2_normalisation_matches_the_cpu_twin_in_both_layouts() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(43);
    let eps = DEFAULT_EPS as f32;
    for s in l2_shapes() {
        let mut x = uniform(&mut rng, s.len(), -1.0, 1.0);
        let dy = uniform(&mut rng, s.len(), -1.0, 1.0);
        if s.positions() > 1 {
            // A zero vector: its norm is clamped to eps and its gradient is dy / eps.
            let (o, i) = (s.outer - 1, s.inner / 2);
            for c in 0..s.channels {
                x[(o * s.channels + c) * s.inner + i] = 0.0;
            }
        }
        let (y_ref, norms_ref) = l2cpu::forward(&widen(&x), s.channels, s.inner, DEFAULT_EPS);
        // The backward as the op runs it: from the forward's f32 outputs.
        let y32: Vec<f32> = y_ref.iter().map(|&v| v as f32).collect();
        let n32: Vec<f32> = norms_ref.iter().map(|&v| v as f32).collect();
        let dx_ref = l2cpu::backward(
            &widen(&y32),
            &widen(&dy),
            &widen(&n32),
            s.channels,
            s.inner,
            DEFAULT_EPS,
        );
        for layout in PositionLayout::ALL {
            let mut mem = EmuMemory::new();
            let (xa, dya) = (mem.upload(&x), mem.upload(&dy));
            let (y, norms) = (mem.alloc(s.len()), mem.alloc(s.positions()));
            let (y_in, n_in) = (mem.upload(&y32), mem.upload(&n32));
            let dx = mem.alloc(s.len());
            let mut calls = l2_normalize_calls(layout, &s, eps, xa, y, norms).expect("plan");
            calls.extend(l2_normalize_backward_calls(layout, &s, eps, y_in, n_in, dya, dx).expect("plan"));
            mem.run(&calls).unwrap_or_else(|e| panic!("{e}"));
            let chosen = if position_layout(s.channels, s.inner) == layout {
                " (chosen)"
            } else {
                ""
            };
            let what = format!("{s:?} {layout:?}{chosen}");
            let fwd = Tolerance { atol: 1e-6, rtol: 1e-5 };
            let got_y: Vec<f32> = mem.read(y, s.len());
            let got_n: Vec<f32> = mem.read(norms, s.positions());
            assert_close(&format!("l2 forward {what}"), &got_y, &y_ref, fwd);
            assert_close(&format!("l2 norms {what}"), &got_n, &norms_ref, fwd);
            // Clamped vectors (dx = dy / eps, ~1e12) are checked apart, each group with the scale
            // of its own terms.
            let got_dx: Vec<f32> = mem.read(dx, s.len());
            for clamped in [false, true] {
                let keep = |e: usize| (n32[position_of(&s, e)] as f64 <= DEFAULT_EPS) == clamped;
                let idx: Vec<usize> = (0..s.len()).filter(|&e| keep(e)).collect();
                if idx.is_empty() {
                    continue;
                }
                let got: Vec<f32> = idx.iter().map(|&e| got_dx[e]).collect();
                let want: Vec<f64> = idx.iter().map(|&e| dx_ref[e]).collect();
                let scale = backward_scale(&s, &y32, &dy, &n32, clamped);
                let bwd = Tolerance {
                    atol: 1e-6 * scale,
                    rtol: 1e-5,
                };
                println!(
                    "l2 {what} (clamped {clamped}): forward {:.3}, backward {:.3} x tolerance",
                    worst(&got_y, &y_ref, fwd).ratio,
                    worst(&got, &want, bwd).ratio
                );
                assert_close(&format!("l2 backward {what} clamped {clamped}"), &got, &want, bwd);
            }
        }
    }
}

fn position_of(s: &ChannelShape, e: usize) -> usize {
    let (o, i) = (e / (s.channels * s.inner), e % s.inner);
    o * s.inner + i
}

/// max over the positions whose norm is (or is not) clamped of (max|dy| + |y . dy|) / norm.
fn backward_scale(s: &ChannelShape, y: &[f32], dy: &[f32], norms: &[f32], clamped: bool) -> f64 {
    let mut scale = 0.0f64;
    for (pos, &norm) in norms.iter().enumerate() {
        if (norm as f64 <= DEFAULT_EPS) != clamped {
            continue;
        }
        let (o, i) = (pos / s.inner, pos % s.inner);
        let at = |c: usize| (o * s.channels + c) * s.inner + i;
        let dot: f64 = (0..s.channels).map(|c| y[at(c)] as f64 * dy[at(c)] as f64).sum();
        let dmax = (0..s.channels).fold(0.0f64, |m, c| m.max(dy[at(c)].abs() as f64));
        scale = scale.max((dmax + dot.abs()) / norm as f64);
    }
    scale
}
