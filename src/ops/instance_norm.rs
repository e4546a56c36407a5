//! Instance normalisation with affine parameters, as torch.nn.InstanceNorm2d(affine=True):
//! per (sample, channel) plane, biased variance, eps inside the square root; alone or fused with
//! the activation that follows it ([`Tape::instance_norm_act`]).

use rayon::prelude::*;

use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};
use crate::with_cpu_dtype;

pub const DEFAULT_EPS: f64 = 1e-5;

/// The activation fused after the normalisation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    Identity,
    Relu,
    /// `torch.nn.functional.leaky_relu` with this negative slope.
    LeakyRelu(f64),
}

impl Activation {
    /// The slope of the negative side (0 for ReLU), or None for the identity.
    pub fn slope(self) -> Option<f64> {
        match self {
            Activation::Identity => None,
            Activation::Relu => Some(0.0),
            Activation::LeakyRelu(slope) => Some(slope),
        }
    }
}

pub mod cpu {
    use super::*;

    /// Independent running sums: a plane's sums are no longer one chain of dependent f64
    /// additions as long as the plane (the instance norm was bound by their latency).
    const LANES: usize = 8;

    /// Adds the lanes pairwise.
    fn fold_lanes(acc: [f64; LANES]) -> f64 {
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
    }

    /// The f64 sum of `f(v)` over `values`, element i going to lane i % LANES.
    pub(super) fn lane_sum<T: Copy>(values: &[T], f: impl Fn(T) -> f64) -> f64 {
        let mut acc = [0.0; LANES];
        let chunks = values.chunks_exact(LANES);
        let rest = chunks.remainder();
        for chunk in chunks {
            for (a, &v) in acc.iter_mut().zip(chunk) {
                *a += f(v);
            }
        }
        for (a, &v) in acc.iter_mut().zip(rest) {
            *a += f(v);
        }
        fold_lanes(acc)
    }

    /// The two f64 sums of `f(a[i], b[i])`, laned as [`lane_sum`].
    pub(super) fn lane_sums2<A: Copy, B: Copy>(a: &[A], b: &[B], f: impl Fn(A, B) -> (f64, f64)) -> (f64, f64) {
        let (mut acc0, mut acc1) = ([0.0; LANES], [0.0; LANES]);
        let (chunks_a, chunks_b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let (rest_a, rest_b) = (chunks_a.remainder(), chunks_b.remainder());
        let mut add = |lane: usize, x: A, y: B| {
            let (u, v) = f(x, y);
            acc0[lane] += u;
            acc1[lane] += v;
        };
        for (ca, cb) in chunks_a.zip(chunks_b) {
            for lane in 0..LANES {
                add(lane, ca[lane], cb[lane]);
            }
        }
        for (lane, (&x, &y)) in rest_a.iter().zip(rest_b).enumerate() {
            add(lane, x, y);
        }
        (fold_lanes(acc0), fold_lanes(acc1))
    }

    /// Returns `y` and, per plane, the mean and `1/sqrt(var + eps)` that the backward needs.
    pub fn forward<T: Element>(
        x: &[T],
        c: usize,
        hw: usize,
        gamma: &[T],
        beta: &[T],
        eps: f64,
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let planes = x.len() / hw;
        let mut y = vec![T::zero(); x.len()];
        let mut stats = vec![(T::zero(), T::zero()); planes];
        y.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .zip(stats.par_iter_mut())
            .enumerate()
            .for_each(|(p, ((yp, xp), st))| {
                // Two passes in f64: exact enough for f32 data and the f64 gradient checks.
                let mean = lane_sum(xp, |v| v.as_f64()) / hw as f64;
                let var = lane_sum(xp, |v| (v.as_f64() - mean).powi(2)) / hw as f64;
                let inv = 1.0 / (var + eps).sqrt();
                let (g, b) = (gamma[p % c].as_f64(), beta[p % c].as_f64());
                for (o, &v) in yp.iter_mut().zip(xp) {
                    *o = T::of(g * (v.as_f64() - mean) * inv + b);
                }
                *st = (T::of(mean), T::of(inv));
            });
        let (mean, inv) = stats.into_iter().unzip();
        (y, mean, inv)
    }

    /// Gradients with respect to x, gamma and beta.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Element>(
        x: &[T],
        dy: &[T],
        c: usize,
        hw: usize,
        gamma: &[T],
        mean: &[T],
        inv: &[T],
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let mut dx = vec![T::zero(); x.len()];
        let m = hw as f64;
        let per_plane: Vec<(f64, f64)> = dx
            .par_chunks_mut(hw)
            .zip(x.par_chunks(hw).zip(dy.par_chunks(hw)))
            .enumerate()
            .map(|(p, (dxp, (xp, dyp)))| {
                let (mu, iv, g) = (mean[p].as_f64(), inv[p].as_f64(), gamma[p % c].as_f64());
                let (sum_dy, sum_dy_xhat) = lane_sums2(xp, dyp, |xv, d| {
                    let xhat = (xv.as_f64() - mu) * iv;
                    (d.as_f64(), d.as_f64() * xhat)
                });
                for ((o, &xv), &d) in dxp.iter_mut().zip(xp).zip(dyp) {
                    let xhat = (xv.as_f64() - mu) * iv;
                    *o = T::of(g * iv / m * (m * d.as_f64() - sum_dy - xhat * sum_dy_xhat));
                }
                (sum_dy_xhat, sum_dy)
            })
            .collect();
        let mut dgamma = vec![0.0f64; c];
        let mut dbeta = vec![0.0f64; c];
        for (p, (dg, db)) in per_plane.into_iter().enumerate() {
            dgamma[p % c] += dg;
            dbeta[p % c] += db;
        }
        (
            dx,
            dgamma.into_iter().map(T::of).collect(),
            dbeta.into_iter().map(T::of).collect(),
        )
    }
}

fn check(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Result<[usize; 4]> {
    let d = x.dims4("instance_norm")?;
    if gamma.shape() != [d[1]] || beta.shape() != [d[1]] {
        return Err(Error::shape(
            "instance_norm",
            format!(
                "{} channels but gamma {:?}, beta {:?}",
                d[1],
                gamma.shape(),
                beta.shape()
            ),
        ));
    }
    if d[2] * d[3] == 0 {
        return Err(Error::shape(
            "instance_norm",
            format!("planes of {}x{} have no statistics", d[2], d[3]),
        ));
    }
    Ok(d)
}

/// Returns the normalised tensor and the saved per-plane statistics (mean, 1/std).
pub fn forward(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let [n, c, h, w] = check(x, gamma, beta)?;
    if !x.is_cpu() {
        return cuda::forward(x, gamma, beta, eps, Activation::Identity);
    }
    with_cpu_dtype!("instance_norm", [x, gamma, beta], T => {
        let (y, mean, inv) = cpu::forward(x.as_slice::<T>()?, c, h * w, gamma.as_slice::<T>()?, beta.as_slice::<T>()?, eps);
        Ok((Tensor::cpu(x.shape().to_vec(), y), Tensor::cpu(vec![n * c], mean), Tensor::cpu(vec![n * c], inv)))
    })
}

pub fn backward(
    x: &Tensor,
    dy: &Tensor,
    gamma: &Tensor,
    mean: &Tensor,
    inv: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let [_, c, h, w] = x.dims4("instance_norm backward")?;
    if !x.is_cpu() {
        return cuda::backward(x, dy, gamma, None, mean, inv, Activation::Identity);
    }
    with_cpu_dtype!("instance_norm backward", [x, dy, gamma, mean, inv], T => {
        let (dx, dg, db) = cpu::backward(
            x.as_slice::<T>()?, dy.as_slice::<T>()?, c, h * w,
            gamma.as_slice::<T>()?, mean.as_slice::<T>()?, inv.as_slice::<T>()?,
        );
        Ok((Tensor::cpu(x.shape().to_vec(), dx), Tensor::cpu(vec![c], dg), Tensor::cpu(vec![c], db)))
    })
}

/// What the fused op's backward needs besides its inputs.
#[derive(Clone, Debug)]
pub struct NormSaved {
    pub mean: Tensor,
    pub inv_std: Tensor,
    /// On the CPU, the activation's input (the normalised values), so that its gradient is taken
    /// exactly as the separate activation op takes it; the CUDA kernel recomputes it from x and
    /// the statistics instead. None for the identity.
    pub pre_activation: Option<Tensor>,
}

/// `act(instance_norm(x, gamma, beta, eps))` and what its backward needs. On the CPU this is the
/// separate ops one after the other, so results are bit for bit those of the unfused ops.
pub fn forward_act(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Activation,
) -> Result<(Tensor, NormSaved)> {
    check(x, gamma, beta)?;
    if !x.is_cpu() {
        let (y, mean, inv_std) = cuda::forward(x, gamma, beta, eps, act)?;
        let saved = NormSaved {
            mean,
            inv_std,
            pre_activation: None,
        };
        return Ok((y, saved));
    }
    let (pre, mean, inv_std) = forward(x, gamma, beta, eps)?;
    let (y, pre_activation) = match act.slope() {
        None => (pre, None),
        Some(slope) => (super::activation::forward(&pre, slope)?, Some(pre)),
    };
    let saved = NormSaved {
        mean,
        inv_std,
        pre_activation,
    };
    Ok((y, saved))
}

/// `(dx, dgamma, dbeta)` of [`forward_act`] from the gradient `dy` of its activated output.
pub fn backward_act(
    x: &Tensor,
    dy: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    saved: &NormSaved,
    act: Activation,
) -> Result<(Tensor, Tensor, Tensor)> {
    if !x.is_cpu() {
        return cuda::backward(x, dy, gamma, Some(beta), &saved.mean, &saved.inv_std, act);
    }
    let g = match (act.slope(), &saved.pre_activation) {
        (None, _) => dy.clone(),
        (Some(slope), Some(pre)) => super::activation::backward(pre, dy, slope)?,
        (Some(_), None) => {
            return Err(Error::Device(
                "instance_norm_act backward: the saved values come from another device".into(),
            ));
        }
    };
    backward(x, &g, gamma, &saved.mean, &saved.inv_std)
}

/// The CUDA branch: the kernels of `device::cuda::norm`.
mod cuda {
    use super::Activation;
    use crate::device::cuda::norm::{self, NormGeom};
    use crate::error::Result;
    use crate::ops::conv::cuda::{storage, tensor};
    use crate::tensor::Tensor;

    fn geom(op: &'static str, x: &Tensor) -> Result<NormGeom> {
        let [n, c, h, w] = x.dims4(op)?;
        Ok(NormGeom { n, c, plane: h * w })
    }

    pub(super) fn forward(
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
        act: Activation,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        const OP: &str = "instance_norm";
        let g = geom(OP, x)?;
        let (y, mean, inv_std) = norm::instance_norm_forward(
            &g,
            storage(OP, "input", x)?,
            storage(OP, "gamma", gamma)?,
            storage(OP, "beta", beta)?,
            eps,
            act,
        )?;
        Ok((
            tensor(x.shape().to_vec(), y),
            tensor(vec![g.planes()], mean),
            tensor(vec![g.planes()], inv_std),
        ))
    }

    pub(super) fn backward(
        x: &Tensor,
        dy: &Tensor,
        gamma: &Tensor,
        beta: Option<&Tensor>,
        mean: &Tensor,
        inv_std: &Tensor,
        act: Activation,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        const OP: &str = "instance_norm backward";
        let g = geom(OP, x)?;
        let beta = beta.map(|b| storage(OP, "beta", b)).transpose()?;
        let (dx, dgamma, dbeta) = norm::instance_norm_backward(
            &g,
            storage(OP, "input", x)?,
            storage(OP, "output gradient", dy)?,
            storage(OP, "gamma", gamma)?,
            beta,
            storage(OP, "mean", mean)?,
            storage(OP, "inv_std", inv_std)?,
            act,
        )?;
        Ok((
            tensor(x.shape().to_vec(), dx),
            tensor(vec![g.c], dgamma),
            tensor(vec![g.c], dbeta),
        ))
    }
}

impl Tape {
    /// `act(torch.nn.functional.instance_norm(x, weight=gamma, bias=beta, eps=eps))` as one op:
    /// on CUDA one kernel each way (the activation's mask recomputed in the backward), on the CPU
    /// the unfused ops' results exactly.
    pub fn instance_norm_act(&mut self, x: Var, gamma: Var, beta: Var, eps: f64, act: Activation) -> Result<Var> {
        let _range = crate::profile::range("instance_norm_act");
        let (y, saved) = forward_act(self.value(x), self.value(gamma), self.value(beta), eps, act)?;
        Ok(self.record("instance_norm_act", y, &[x, gamma, beta], move |ctx| {
            let (dx, dg, db) = backward_act(ctx.input(0), ctx.grad, ctx.input(1), ctx.input(2), &saved, act)?;
            Ok(vec![Some(dx), Some(dg), Some(db)])
        }))
    }

    /// `torch.nn.functional.instance_norm(x, weight=gamma, bias=beta, eps=eps)`.
    pub fn instance_norm(&mut self, x: Var, gamma: Var, beta: Var, eps: f64) -> Result<Var> {
        let _range = crate::profile::range("instance_norm");
        let (y, mean, inv) = forward(self.value(x), self.value(gamma), self.value(beta), eps)?;
        Ok(self.record("instance_norm", y, &[x, gamma, beta], move |ctx| {
            let (dx, dg, db) = backward(ctx.input(0), ctx.grad, ctx.input(1), &mean, &inv)?;
            Ok(vec![Some(dx), Some(dg), Some(db)])
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::tensor::DType;

    fn bits(t: &Tensor) -> Vec<u32> {
        t.as_slice::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
    }

    /// The fused op on the CPU gives the unfused ops' values and gradients bit for bit, so that
    /// checkpoints resume exactly and the PyTorch parity of the U-Net is unchanged.
    #[test]
    fn the_fused_op_is_the_unfused_ops_bit_for_bit() {
        let mut rng = Rng::new(5);
        let x = Tensor::uniform(vec![2, 3, 6, 5], -2.0, 2.0, DType::F32, &mut rng);
        let gamma = Tensor::uniform(vec![3], 0.5, 1.5, DType::F32, &mut rng);
        let beta = Tensor::uniform(vec![3], -0.5, 0.5, DType::F32, &mut rng);
        let weights = Tensor::uniform(vec![2, 3, 6, 5], -1.0, 1.0, DType::F32, &mut rng);
        for act in [Activation::Identity, Activation::Relu, Activation::LeakyRelu(0.2)] {
            let run = |fused: bool| -> Vec<Vec<u32>> {
                let mut tape = Tape::new();
                let (xv, gv, bv) = (tape.leaf(x.clone()), tape.leaf(gamma.clone()), tape.leaf(beta.clone()));
                let y = if fused {
                    tape.instance_norm_act(xv, gv, bv, DEFAULT_EPS, act).unwrap()
                } else {
                    let y = tape.instance_norm(xv, gv, bv, DEFAULT_EPS).unwrap();
                    match act.slope() {
                        None => y,
                        Some(slope) => tape.leaky_relu(y, slope).unwrap(),
                    }
                };
                let w = tape.constant(weights.clone());
                let prod = tape.mul(y, w).unwrap();
                let loss = tape.sum(prod).unwrap();
                let grads = tape.backward(loss).unwrap();
                let mut out = vec![bits(tape.value(y))];
                out.extend([xv, gv, bv].iter().map(|v| bits(grads.get(*v).unwrap())));
                out
            };
            assert_eq!(run(true), run(false), "{act:?}");
        }
    }

    /// Every element reaches exactly one lane, remainders included: the laned sums of exact
    /// small integers (no rounding anywhere) equal the plain sums.
    #[test]
    fn lane_sums_add_every_element_once() {
        for len in [0, 1, 7, 8, 9, 16, 17, 63, 1000] {
            let a: Vec<f32> = (0..len).map(|i| (i * 7 % 13) as f32 - 6.0).collect();
            let b: Vec<f32> = (0..len).map(|i| (i * 5 % 11) as f32).collect();
            let plain: f64 = a.iter().map(|&v| v as f64).sum();
            assert_eq!(cpu::lane_sum(&a, |v| v as f64), plain, "length {len}");
            let plain_ab: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let (s0, s1) = cpu::lane_sums2(&a, &b, |x, y| (y as f64, x as f64 * y as f64));
            assert_eq!(s0, b.iter().map(|&v| v as f64).sum::<f64>(), "length {len}");
            assert_eq!(s1, plain_ab, "length {len}");
        }
    }

    #[test]
    fn empty_planes_are_an_error() {
        let x = Tensor::zeros(vec![1, 2, 0, 3], DType::F32);
        let gamma = Tensor::zeros(vec![2], DType::F32);
        assert!(forward(&x, &gamma, &gamma, DEFAULT_EPS).is_err());
        assert!(forward_act(&x, &gamma, &gamma, DEFAULT_EPS, Activation::Relu).is_err());
    }
}
