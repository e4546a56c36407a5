//! Instance normalisation with affine parameters, as torch.nn.InstanceNorm2d(affine=True):
//! per (sample, channel) plane, biased variance, eps inside the square root.

use rayon::prelude::*;

use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};
use crate::with_cpu_dtype;

pub const DEFAULT_EPS: f64 = 1e-5;

pub mod cpu {
    use super::*;

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
                let mean = xp.iter().map(|v| v.as_f64()).sum::<f64>() / hw as f64;
                let var = xp.iter().map(|v| (v.as_f64() - mean).powi(2)).sum::<f64>() / hw as f64;
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
                let (mut sum_dy, mut sum_dy_xhat) = (0.0, 0.0);
                for (&xv, &d) in xp.iter().zip(dyp) {
                    let xhat = (xv.as_f64() - mu) * iv;
                    sum_dy += d.as_f64();
                    sum_dy_xhat += d.as_f64() * xhat;
                }
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
    if !x.is_cpu() {
        return Err(super::cuda_missing("instance_norm"));
    }
    Ok(d)
}

/// Returns the normalised tensor and the saved per-plane statistics (mean, 1/std).
pub fn forward(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let [n, c, h, w] = check(x, gamma, beta)?;
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
    with_cpu_dtype!("instance_norm backward", [x, dy, gamma, mean, inv], T => {
        let (dx, dg, db) = cpu::backward(
            x.as_slice::<T>()?, dy.as_slice::<T>()?, c, h * w,
            gamma.as_slice::<T>()?, mean.as_slice::<T>()?, inv.as_slice::<T>()?,
        );
        Ok((Tensor::cpu(x.shape().to_vec(), dx), Tensor::cpu(vec![c], dg), Tensor::cpu(vec![c], db)))
    })
}

impl Tape {
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
