//! Parity of every instance-norm and activation kernel of `kernels/norm.cu` with the CPU twins
//! (`ops::instance_norm::cpu`, `ops::activation::cpu`, run in f64 on the same f32 inputs), on the
//! emulator (`lrc::device::emu`), launched as `lrc::device::cuda::norm` plans them: each launch
//! shape the planner can choose (warp per plane with 2 or 8 packs per lane; a block per plane
//! with part of the plane in shared memory; a block per plane reading twice), in packs of 4 and
//! of 1, on awkward shapes (one value per plane, lengths off every multiple of 4, 32 and the
//! block, planes longer than a block holds in registers, many planes with a partial last block,
//! a large mean, eps larger than the variance, constant planes) and every activation. Every output
//! starts as NaN, so an element a kernel fails to write fails the check.
//!
//! Tolerances follow the f32 error bounds of the sums involved. With K = (values a thread adds
//! in sequence) + log2(threads per plane) + 4 and eps32 = 2^-24, a sum of the plane's values has
//! an error of at most K * eps32 * sum|terms|, so:
//! - mean: atol = K eps32 max|x|.
//! - inv_std: rtol = K eps32 (2 + s), s = max|x| * inv_std: the variance adds non-negative terms
//!   (K eps32 relative), each squared deviation is off by 2 eps32, and Welford's merges (the
//!   streaming launch) carry the mean's error into the deviations, relative s * K eps32.
//! - y: atol = 2 K eps32 max|gamma| (1 + s)(1 + max|xhat|) (the mean's error times
//!   gamma * inv_std plus inv_std's relative error times |gamma * xhat|, with a factor 2 of
//!   margin), rtol = 4 eps32 (the last roundings of z and the activation).
//! - dx (statistics given): atol = 2 K eps32 max|gamma inv_std| max|g| (1 + max|xhat|^2), from
//!   the errors of mean(g) and mean(g xhat); rtol = 4 eps32.
//! - dgamma, dbeta: per-plane sums then a sum over the n images in order: atol =
//!   2 (K + n) eps32 * plane * n * max|g| * max|xhat| (dbeta without the xhat).
//!
//! An indexing or reduction error is of the order of the values themselves, far above these.
//! The backward's activation mask is the sign of z computed in f32 exactly as the kernel does
//! (`(x - mean).mul_add(gamma * inv_std, beta)` on the f32 statistics): a z within rounding of 0
//! could otherwise take the other branch in f64. The element-wise activations are compared bit
//! for bit with the f32 twin (one multiply each).

use lrc::device::cuda::KernelCall;
use lrc::device::cuda::norm::{
    NormBackwardOperands, NormForwardOperands, NormGeom, NormLaunch, NormPass, activation_backward_calls,
    activation_forward_calls, backward_calls, choose_launch, forward_calls,
};
use lrc::device::emu::{self, EmuMemory};
use lrc::ops::activation::cpu as act_cpu;
use lrc::ops::instance_norm::{Activation, DEFAULT_EPS, cpu};
use lrc::rng::Rng;
use lrc::testing::{Tolerance, assert_close, max_abs, uniform, widen, worst};

const EPS32: f64 = 1.0 / (1u64 << 24) as f64;
/// An H100's shared memory per block, for the planner's own choice.
const H100_SHARED: usize = 227 * 1024;

/// Whether the emulator can be built here; CI must be able to.
fn emulator_available() -> bool {
    if emu::compiler().is_some() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI must have a C++ compiler to emulate the kernels"
    );
    eprintln!("skipped: no C++ compiler (set CXX)");
    false
}

#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c: usize,
    plane: usize,
    act: Activation,
    eps: f64,
    /// x = offset + spread * U(-1, 1).
    offset: f64,
    spread: f64,
}

fn case(n: usize, c: usize, plane: usize, act: Activation) -> Case {
    Case {
        n,
        c,
        plane,
        act,
        eps: DEFAULT_EPS,
        offset: 0.0,
        spread: 1.0,
    }
}

fn cases() -> Vec<Case> {
    use Activation::*;
    vec![
        // One value per plane: zero variance, y = beta.
        case(1, 1, 1, Relu),
        case(2, 3, 5, Identity),
        case(3, 2, 32, LeakyRelu(0.1)),
        case(2, 5, 100, Relu),
        case(1, 3, 16 * 16, LeakyRelu(0.01)),
        case(2, 2, 1000, Relu),
        case(1, 2, 1501, LeakyRelu(0.2)),
        // Longer than any of the tested blocks holds in registers.
        case(1, 1, 4100, Relu),
        // 63 planes: the last warp block is partly empty.
        case(7, 9, 12, Identity),
        // A large mean: a one-pass E[x^2] - E[x]^2 in f32 would lose the variance entirely.
        Case {
            offset: 1000.0,
            ..case(2, 2, 1024, Relu)
        },
        // eps larger than the variance.
        Case {
            eps: 0.5,
            spread: 0.01,
            ..case(2, 3, 64, LeakyRelu(0.3))
        },
        // Constant planes.
        Case {
            offset: 3.0,
            spread: 0.0,
            ..case(2, 2, 40, Relu)
        },
    ]
}

/// The launches to check for a case: both warp kernels where they fit, blocks of one warp and of
/// three (the plane in registers and shared memory), streaming blocks, and the planner's choice.
fn launches(pass: NormPass, plane: usize, vec: usize) -> Vec<NormLaunch> {
    let mut list = vec![
        NormLaunch::Block { threads: 32 },
        NormLaunch::Block { threads: 96 },
        NormLaunch::Stream { threads: 32 },
        NormLaunch::Stream { threads: 96 },
        choose_launch(pass, plane, vec, H100_SHARED),
        // As on a GPU with little shared memory: a block with a small tail or a stream.
        choose_launch(pass, plane, vec, 6 * 1024),
    ];
    for packs in [2, 8] {
        if plane <= 32 * packs * vec {
            list.push(NormLaunch::Warp { packs });
        }
    }
    list.sort_by_key(|l| format!("{l:?}"));
    list.dedup();
    list
}

fn threads_per_plane(launch: NormLaunch) -> usize {
    match launch {
        NormLaunch::Warp { .. } => 32,
        NormLaunch::Block { threads } | NormLaunch::Stream { threads } => threads,
    }
}

/// K of the module comment.
fn terms(plane: usize, launch: NormLaunch) -> f64 {
    let threads = threads_per_plane(launch);
    plane.div_ceil(threads) as f64 + (threads as f64).log2() + 4.0
}

struct Inputs {
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    dy: Vec<f32>,
}

fn inputs(k: &Case, seed: u64) -> Inputs {
    let mut rng = Rng::new(seed);
    let len = k.n * k.c * k.plane;
    let x = uniform(&mut rng, len, -1.0, 1.0)
        .into_iter()
        .map(|v| (k.offset + k.spread * v as f64) as f32)
        .collect();
    // Gammas of both signs, away from 0.
    let gamma = (0..k.c)
        .map(|i| {
            let g = rng.range(0.5, 1.5) as f32;
            if i % 3 == 2 { -g } else { g }
        })
        .collect();
    let beta = uniform(&mut rng, k.c, -0.5, 0.5);
    let dy = uniform(&mut rng, len, -1.0, 1.0);
    Inputs { x, gamma, beta, dy }
}

fn activate(v: f64, act: Activation) -> f64 {
    match act.slope() {
        Some(slope) if v <= 0.0 => v * slope,
        _ => v,
    }
}

/// Launch plans and the output addresses of one forward run.
struct ForwardRun {
    launch: NormLaunch,
    vec: usize,
    o: NormForwardOperands,
}

/// Runs every launch of the forward pass of `k` in one emulator job and checks each.
fn check_forward(k: &Case, inp: &Inputs) {
    let g = NormGeom {
        n: k.n,
        c: k.c,
        plane: k.plane,
    };
    let planes = g.planes();
    let (x64, gamma64, beta64) = (widen(&inp.x), widen(&inp.gamma), widen(&inp.beta));
    let (pre, mean, inv) = cpu::forward(&x64, k.c, k.plane, &gamma64, &beta64, k.eps);
    let y_want: Vec<f64> = pre.iter().map(|&v| activate(v, k.act)).collect();

    let mut mem = EmuMemory::new();
    let (xa, ga, ba) = (mem.upload(&inp.x), mem.upload(&inp.gamma), mem.upload(&inp.beta));
    let mut runs = Vec::new();
    let mut calls: Vec<KernelCall> = Vec::new();
    for vec in [1, 4] {
        if vec == 4 && k.plane % 4 != 0 {
            continue;
        }
        for launch in launches(NormPass::Forward, k.plane, vec) {
            let o = NormForwardOperands {
                x: xa,
                gamma: ga,
                beta: ba,
                y: mem.alloc(g.len()),
                mean: mem.alloc(planes),
                inv_std: mem.alloc(planes),
            };
            calls.extend(forward_calls(&g, k.act, k.eps, launch, vec, &o).expect("plan"));
            runs.push(ForwardRun { launch, vec, o });
        }
    }
    mem.run(&calls).unwrap_or_else(|e| panic!("{e}"));

    let max_x = max_abs(&inp.x);
    let max_inv = inv.iter().fold(0.0f64, |m, v| m.max(*v));
    let s = max_x * max_inv;
    let max_xhat = (0..g.len())
        .map(|i| ((x64[i] - mean[i / k.plane]) * inv[i / k.plane]).abs())
        .fold(0.0f64, f64::max);
    let max_gamma = max_abs(&inp.gamma);
    for r in &runs {
        let what = format!("forward {:?} v{} {k:?}", r.launch, r.vec);
        let kk = terms(k.plane, r.launch) * EPS32;
        let mean_got: Vec<f32> = mem.read(r.o.mean, planes);
        let inv_got: Vec<f32> = mem.read(r.o.inv_std, planes);
        let y_got: Vec<f32> = mem.read(r.o.y, g.len());
        let tol_mean = Tolerance {
            atol: kk * max_x + f64::MIN_POSITIVE,
            rtol: EPS32,
        };
        let tol_inv = Tolerance {
            atol: 0.0,
            rtol: kk * (2.0 + s),
        };
        let tol_y = Tolerance {
            atol: 2.0 * kk * max_gamma * (1.0 + s) * (1.0 + max_xhat),
            rtol: 4.0 * EPS32,
        };
        assert_close(&format!("mean, {what}"), &mean_got, &mean, tol_mean);
        assert_close(&format!("inv_std, {what}"), &inv_got, &inv, tol_inv);
        assert_close(&format!("y, {what}"), &y_got, &y_want, tol_y);
        println!(
            "{what}: worst/tolerance mean {:.3} inv_std {:.3} y {:.3}",
            worst(&mean_got, &mean, tol_mean).ratio,
            worst(&inv_got, &inv, tol_inv).ratio,
            worst(&y_got, &y_want, tol_y).ratio
        );
    }
}

struct BackwardRun {
    launch: NormLaunch,
    vec: usize,
    o: NormBackwardOperands,
}

/// Runs every launch of the backward pass of `k` (statistics given) and checks each.
fn check_backward(k: &Case, inp: &Inputs) {
    let g = NormGeom {
        n: k.n,
        c: k.c,
        plane: k.plane,
    };
    let planes = g.planes();
    let (x64, gamma64, beta64) = (widen(&inp.x), widen(&inp.gamma), widen(&inp.beta));
    // The statistics the kernel is given: the f64 twin's, rounded to f32.
    let (_, mean, inv) = cpu::forward(&x64, k.c, k.plane, &gamma64, &beta64, k.eps);
    let mean32: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
    let inv32: Vec<f32> = inv.iter().map(|&v| v as f32).collect();
    // The gradient reaching the normalisation: dy through the activation, its mask from z as the
    // kernel computes it.
    let g_in: Vec<f64> = (0..g.len())
        .map(|i| {
            let p = i / k.plane;
            let ch = p % k.c;
            let z = (inp.x[i] - mean32[p]).mul_add(inp.gamma[ch] * inv32[p], inp.beta[ch]);
            let d = inp.dy[i] as f64;
            match k.act.slope() {
                Some(slope) if z <= 0.0 => d * slope,
                _ => d,
            }
        })
        .collect();
    let (dx_want, dgamma_want, dbeta_want) =
        cpu::backward(&x64, &g_in, k.c, k.plane, &gamma64, &widen(&mean32), &widen(&inv32));

    let mut mem = EmuMemory::new();
    let xa = mem.upload(&inp.x);
    let dya = mem.upload(&inp.dy);
    let ga = mem.upload(&inp.gamma);
    let ba = mem.upload(&inp.beta);
    let ma = mem.upload(&mean32);
    let ia = mem.upload(&inv32);
    let mut runs = Vec::new();
    let mut calls: Vec<KernelCall> = Vec::new();
    for vec in [1, 4] {
        if vec == 4 && k.plane % 4 != 0 {
            continue;
        }
        for launch in launches(NormPass::Backward, k.plane, vec) {
            let o = NormBackwardOperands {
                x: xa,
                dy: dya,
                gamma: ga,
                // With the identity the kernel must not need beta.
                beta: if k.act.slope().is_some() { ba } else { 0 },
                mean: ma,
                inv_std: ia,
                dx: mem.alloc(g.len()),
                dgamma_part: mem.alloc(planes),
                dbeta_part: mem.alloc(planes),
                dgamma: mem.alloc(k.c),
                dbeta: mem.alloc(k.c),
            };
            calls.extend(backward_calls(&g, k.act, launch, vec, &o).expect("plan"));
            runs.push(BackwardRun { launch, vec, o });
        }
    }
    mem.run(&calls).unwrap_or_else(|e| panic!("{e}"));

    let max_g = g_in.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let max_xhat = (0..g.len())
        .map(|i| ((x64[i] - mean32[i / k.plane] as f64) * inv32[i / k.plane] as f64).abs())
        .fold(0.0f64, f64::max);
    let max_scale = (0..planes)
        .map(|p| (gamma64[p % k.c] * inv32[p] as f64).abs())
        .fold(0.0f64, f64::max);
    for r in &runs {
        let what = format!("backward {:?} v{} {k:?}", r.launch, r.vec);
        let kk = terms(k.plane, r.launch) * EPS32;
        let dx_got: Vec<f32> = mem.read(r.o.dx, g.len());
        let dgamma_got: Vec<f32> = mem.read(r.o.dgamma, k.c);
        let dbeta_got: Vec<f32> = mem.read(r.o.dbeta, k.c);
        let tol_dx = Tolerance {
            atol: 2.0 * kk * max_scale * max_g * (1.0 + max_xhat * max_xhat) + f64::MIN_POSITIVE,
            rtol: 4.0 * EPS32,
        };
        let sum_bound = 2.0 * (kk + k.n as f64 * EPS32) * (k.plane * k.n) as f64 * max_g;
        let tol_dgamma = Tolerance {
            atol: sum_bound * max_xhat + f64::MIN_POSITIVE,
            rtol: 0.0,
        };
        let tol_dbeta = Tolerance {
            atol: sum_bound + f64::MIN_POSITIVE,
            rtol: 0.0,
        };
        assert_close(&format!("dx, {what}"), &dx_got, &dx_want, tol_dx);
        assert_close(&format!("dgamma, {what}"), &dgamma_got, &dgamma_want, tol_dgamma);
        assert_close(&format!("dbeta, {what}"), &dbeta_got, &dbeta_want, tol_dbeta);
        println!(
            "{what}: worst/tolerance dx {:.3} dgamma {:.3} dbeta {:.3}",
            worst(&dx_got, &dx_want, tol_dx).ratio,
            worst(&dgamma_got, &dgamma_want, tol_dgamma).ratio,
            worst(&dbeta_got, &dbeta_want, tol_dbeta).ratio
        );
    }
}

#[test]
fn forward_matches_the_cpu_twin_for_every_launch() {
    if !emulator_available() {
        return;
    }
    for (i, k) in cases().iter().enumerate() {
        check_forward(k, &inputs(k, 100 + i as u64));
    }
}

#[test]
fn backward_matches_the_cpu_twin_for_every_launch() {
    if !emulator_available() {
        return;
    }
    for (i, k) in cases().iter().enumerate() {
        check_backward(k, &inputs(k, 200 + i as u64));
    }
}

#[test]
fn a_naive_one_pass_variance_would_fail_the_large_mean_case() {
    // The check above is strict enough to tell: E[x^2] - E[x]^2 in f32 on x = 1000 + U(-1, 1)
    // loses the variance (1/3) in the rounding of E[x^2] (about 1e6, spacing 0.06).
    let mut rng = Rng::new(7);
    let x: Vec<f32> = uniform(&mut rng, 1024, -1.0, 1.0).iter().map(|v| 1000.0 + v).collect();
    let (s, s2) = x.iter().fold((0.0f32, 0.0f32), |(a, b), &v| (a + v, b + v * v));
    let m = s / 1024.0;
    let naive_var = s2 / 1024.0 - m * m;
    let x64 = widen(&x);
    let mean = x64.iter().sum::<f64>() / 1024.0;
    let var = x64.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 1024.0;
    assert!(
        ((naive_var as f64) - var).abs() > 0.1 * var,
        "naive {naive_var} exact {var}"
    );
}

#[test]
fn activations_alone_match_the_cpu_twin_bit_for_bit() {
    if !emulator_available() {
        return;
    }
    let mut rng = Rng::new(31);
    for len in [1usize, 3, 4, 5, 255, 1027] {
        for slope in [0.0, 0.01, -0.5] {
            // Aligned, then one value in: the float4 body is off and the scalar loop runs.
            for misalign in [0usize, 1] {
                let x = uniform(&mut rng, len + misalign, -1.0, 1.0);
                let dy = uniform(&mut rng, len + misalign, -1.0, 1.0);
                let mut mem = EmuMemory::new();
                let (xa, dya) = (mem.upload(&x), mem.upload(&dy));
                let off = 4 * misalign as u64;
                let (ya, dxa) = (mem.alloc(len + misalign), mem.alloc(len + misalign));
                let mut calls = activation_forward_calls(len, slope, xa + off, ya + off).unwrap();
                calls.extend(activation_backward_calls(len, slope, xa + off, dya + off, dxa + off).unwrap());
                mem.run(&calls).unwrap_or_else(|e| panic!("{e}"));
                let y: Vec<f32> = mem.read(ya + off, len);
                let dx: Vec<f32> = mem.read(dxa + off, len);
                let xs = &x[misalign..];
                let want_y = act_cpu::forward(xs, slope as f32);
                let want_dx = act_cpu::backward(xs, &dy[misalign..], slope as f32);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&y),
                    bits(&want_y),
                    "forward len {len} slope {slope} misalign {misalign}"
                );
                assert_eq!(
                    bits(&dx),
                    bits(&want_dx),
                    "backward len {len} slope {slope} misalign {misalign}"
                );
            }
        }
    }
}

#[test]
fn the_unet_planes_are_planned_with_float4_packs_and_one_read_where_they_fit() {
    // Planner choices at the U-Net's levels (256x256 .. 16x16) on an H100; the launches
    // themselves are emulated above on smaller planes.
    for (pass, side, reads) in [
        (NormPass::Forward, 256, 1),
        (NormPass::Forward, 128, 1),
        (NormPass::Forward, 16, 1),
        (NormPass::Backward, 256, 2),
        (NormPass::Backward, 128, 1),
        (NormPass::Backward, 16, 1),
    ] {
        let launch = choose_launch(pass, side * side, 4, H100_SHARED);
        assert_eq!(launch.reads(), reads, "{pass:?} {side}: {launch:?}");
    }
}
