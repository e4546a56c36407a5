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
//! Tolerances (computed in tests/norm_common) follow the f32 error bounds of the sums involved. With K = (values a thread adds
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

mod norm_common;

use lrc::device::cuda::KernelCall;
use lrc::device::cuda::norm::{
    NormBackwardOperands, NormForwardOperands, NormGeom, NormLaunch, NormPass, activation_backward_calls,
    activation_forward_calls, backward_calls, choose_launch, forward_calls,
};
use lrc::device::emu::{self, EmuMemory};
use lrc::ops::activation::cpu as act_cpu;
use lrc::ops::instance_norm::Activation;
use lrc::rng::Rng;
use lrc::testing::{assert_close, assert_compiled_for_every_arch, uniform, widen, worst};
use norm_common::{BackwardReference, Case, ForwardReference, Inputs, case, inputs};

/// An H100's shared memory per block, for the planner's own choice.
const H100_SHARED: usize = 227 * 1024;

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
    let want = ForwardReference::new(k, inp);
    let mut mem = EmuMemory::new();
    let (xa, ga, ba) = (mem.upload(&inp.x), mem.upload(&inp.gamma), mem.upload(&inp.beta));
    let mut runs = Vec::new();
    let mut calls: Vec<KernelCall> = Vec::new();
    for vec in [1, 4] {
        if vec == 4 && !k.plane.is_multiple_of(4) {
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
    for r in &runs {
        let what = format!("forward {:?} v{} {k:?}", r.launch, r.vec);
        let [tol_mean, tol_inv, tol_y] = want.tolerances(k.plane, threads_per_plane(r.launch));
        let mean: Vec<f32> = mem.read(r.o.mean, planes);
        let inv_std: Vec<f32> = mem.read(r.o.inv_std, planes);
        let y: Vec<f32> = mem.read(r.o.y, g.len());
        assert_close(&format!("mean, {what}"), &mean, &want.mean, tol_mean);
        assert_close(&format!("inv_std, {what}"), &inv_std, &want.inv_std, tol_inv);
        assert_close(&format!("y, {what}"), &y, &want.y, tol_y);
        println!(
            "{what}: worst/tolerance mean {:.3} inv_std {:.3} y {:.3}",
            worst(&mean, &want.mean, tol_mean).ratio,
            worst(&inv_std, &want.inv_std, tol_inv).ratio,
            worst(&y, &want.y, tol_y).ratio
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
    // The statistics the kernel is given: the f64 twin's, rounded to f32.
    let stats = ForwardReference::new(k, inp);
    let mean32: Vec<f32> = stats.mean.iter().map(|&v| v as f32).collect();
    let inv32: Vec<f32> = stats.inv_std.iter().map(|&v| v as f32).collect();
    let want = BackwardReference::new(k, inp, &mean32, &inv32);

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
        if vec == 4 && !k.plane.is_multiple_of(4) {
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
    for r in &runs {
        let what = format!("backward {:?} v{} {k:?}", r.launch, r.vec);
        let [tol_dx, tol_dgamma, tol_dbeta] = want.tolerances(k.plane, threads_per_plane(r.launch));
        let dx: Vec<f32> = mem.read(r.o.dx, g.len());
        let dgamma: Vec<f32> = mem.read(r.o.dgamma, k.c);
        let dbeta: Vec<f32> = mem.read(r.o.dbeta, k.c);
        assert_close(&format!("dx, {what}"), &dx, &want.dx, tol_dx);
        assert_close(&format!("dgamma, {what}"), &dgamma, &want.dgamma, tol_dgamma);
        assert_close(&format!("dbeta, {what}"), &dbeta, &want.dbeta, tol_dbeta);
        println!(
            "{what}: worst/tolerance dx {:.3} dgamma {:.3} dbeta {:.3}",
            worst(&dx, &want.dx, tol_dx).ratio,
            worst(&dgamma, &want.dgamma, tol_dgamma).ratio,
            worst(&dbeta, &want.dbeta, tol_dbeta).ratio
        );
    }
}

#[test]
fn forward_matches_the_cpu_twin_for_every_launch() {
    if !emu::available() {
        return;
    }
    for (i, k) in cases().iter().enumerate() {
        check_forward(k, &inputs(k, 100 + i as u64));
    }
}

#[test]
fn backward_matches_the_cpu_twin_for_every_launch() {
    if !emu::available() {
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
    if !emu::available() {
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

#[test]
fn every_norm_kernel_is_compiled_for_every_architecture_and_registered() {
    if !lrc::kernels::BUILT {
        return;
    }
    assert_compiled_for_every_arch(
        lrc::device::cuda::norm::kernel_names()
            .into_iter()
            .map(|name| ("norm", name)),
    );
    if emu::available() {
        let registered = emu::registered_kernels().unwrap_or_else(|e| panic!("{e}"));
        for name in lrc::device::cuda::norm::kernel_names() {
            assert!(registered.iter().any(|(n, _)| n == name), "{name} is not registered");
        }
    }
}
