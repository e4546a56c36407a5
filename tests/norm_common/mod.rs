//! What the instance-norm parity tests share, on the emulator (emu_norm.rs) and on a GPU
//! (cuda_norm.rs): seeded inputs, the f64 references and the tolerances, whose derivation is in
//! emu_norm.rs's comment.

#![allow(dead_code)]

use lrc::ops::instance_norm::{Activation, cpu};
use lrc::rng::Rng;
use lrc::testing::{Tolerance, max_abs, uniform, widen};

pub const EPS32: f64 = 1.0 / (1u64 << 24) as f64;

/// An `n x c x plane` input, x = offset + spread * U(-1, 1).
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub n: usize,
    pub c: usize,
    pub plane: usize,
    pub act: Activation,
    pub eps: f64,
    pub offset: f64,
    pub spread: f64,
}

pub fn case(n: usize, c: usize, plane: usize, act: Activation) -> Case {
    Case {
        n,
        c,
        plane,
        act,
        eps: lrc::ops::instance_norm::DEFAULT_EPS,
        offset: 0.0,
        spread: 1.0,
    }
}

pub struct Inputs {
    pub x: Vec<f32>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub dy: Vec<f32>,
}

pub fn inputs(k: &Case, seed: u64) -> Inputs {
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

/// K of emu_norm.rs's comment for planes of `plane` values shared by `threads` threads.
pub fn terms(plane: usize, threads: usize) -> f64 {
    plane.div_ceil(threads) as f64 + (threads as f64).log2() + 4.0
}

/// The f64 forward and its tolerances.
pub struct ForwardReference {
    pub y: Vec<f64>,
    pub mean: Vec<f64>,
    pub inv_std: Vec<f64>,
    max_x: f64,
    s: f64,
    max_xhat: f64,
    max_gamma: f64,
}

impl ForwardReference {
    pub fn new(k: &Case, inp: &Inputs) -> ForwardReference {
        let x64 = widen(&inp.x);
        let (pre, mean, inv_std) = cpu::forward(&x64, k.c, k.plane, &widen(&inp.gamma), &widen(&inp.beta), k.eps);
        let y = pre.iter().map(|&v| activate(v, k.act)).collect();
        let max_x = max_abs(&inp.x);
        let max_inv = inv_std.iter().fold(0.0f64, |m, v| m.max(*v));
        let max_xhat = (0..x64.len())
            .map(|i| ((x64[i] - mean[i / k.plane]) * inv_std[i / k.plane]).abs())
            .fold(0.0f64, f64::max);
        ForwardReference {
            y,
            mean,
            inv_std,
            max_x,
            s: max_x * max_inv,
            max_xhat,
            max_gamma: max_abs(&inp.gamma),
        }
    }

    /// Tolerances of (mean, inv_std, y) for planes shared by `threads` threads.
    pub fn tolerances(&self, plane: usize, threads: usize) -> [Tolerance; 3] {
        let kk = terms(plane, threads) * EPS32;
        [
            Tolerance {
                atol: kk * self.max_x + f64::MIN_POSITIVE,
                rtol: EPS32,
            },
            Tolerance {
                atol: 0.0,
                rtol: kk * (2.0 + self.s),
            },
            Tolerance {
                atol: 2.0 * kk * self.max_gamma * (1.0 + self.s) * (1.0 + self.max_xhat),
                rtol: 4.0 * EPS32,
            },
        ]
    }
}

/// The f64 backward given the f32 statistics the kernel uses, and its tolerances.
pub struct BackwardReference {
    pub dx: Vec<f64>,
    pub dgamma: Vec<f64>,
    pub dbeta: Vec<f64>,
    max_g: f64,
    max_xhat: f64,
    max_scale: f64,
    n: usize,
}

impl BackwardReference {
    pub fn new(k: &Case, inp: &Inputs, mean32: &[f32], inv32: &[f32]) -> BackwardReference {
        let len = inp.x.len();
        // The gradient reaching the normalisation: dy through the activation, its mask from z
        // computed as the kernel computes it.
        let g_in: Vec<f64> = (0..len)
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
        let (x64, gamma64) = (widen(&inp.x), widen(&inp.gamma));
        let (dx, dgamma, dbeta) = cpu::backward(&x64, &g_in, k.c, k.plane, &gamma64, &widen(mean32), &widen(inv32));
        let planes = k.n * k.c;
        BackwardReference {
            dx,
            dgamma,
            dbeta,
            max_g: g_in.iter().fold(0.0f64, |m, v| m.max(v.abs())),
            max_xhat: (0..len)
                .map(|i| ((x64[i] - mean32[i / k.plane] as f64) * inv32[i / k.plane] as f64).abs())
                .fold(0.0f64, f64::max),
            max_scale: (0..planes)
                .map(|p| (gamma64[p % k.c] * inv32[p] as f64).abs())
                .fold(0.0f64, f64::max),
            n: k.n,
        }
    }

    /// Tolerances of (dx, dgamma, dbeta) for planes shared by `threads` threads.
    pub fn tolerances(&self, plane: usize, threads: usize) -> [Tolerance; 3] {
        let kk = terms(plane, threads) * EPS32;
        let sum_bound = 2.0 * (kk + self.n as f64 * EPS32) * (plane * self.n) as f64 * self.max_g;
        [
            Tolerance {
                atol: 2.0 * kk * self.max_scale * self.max_g * (1.0 + self.max_xhat * self.max_xhat)
                    + f64::MIN_POSITIVE,
                rtol: 4.0 * EPS32,
            },
            Tolerance {
                atol: sum_bound * self.max_xhat + f64::MIN_POSITIVE,
                rtol: 0.0,
            },
            Tolerance {
                atol: sum_bound + f64::MIN_POSITIVE,
                rtol: 0.0,
            },
        ]
    }
}
