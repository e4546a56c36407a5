//! Soft multi-class Dice loss on softmax probabilities:
//! `1 - (1/C') * sum_c 2 * sum(p_c * g_c) / (sum(p_c) + sum(g_c) + eps)`, sums over the whole
//! batch and all pixels ("batch Dice"), C' the classes counted (background optional).

use super::labels::LabelSource;
use super::softmax::check_targets;
use super::softmax::cpu::{BLOCK, softmax_image};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};
use crate::with_cpu_dtype;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DiceConfig {
    /// Leave class 0 (background) out of the average.
    pub skip_background: bool,
    pub eps: f64,
}

impl Default for DiceConfig {
    fn default() -> Self {
        DiceConfig {
            skip_background: false,
            eps: 1e-5,
        }
    }
}

pub mod cpu {
    use super::*;
    use rayon::prelude::*;

    /// Returns the loss and the gradient with respect to the logits. Images run in parallel;
    /// their sums are added in image order, so the result does not depend on the thread count.
    pub fn dice_loss<T: Element>(x: &[T], targets: &[u32], c: usize, inner: usize, cfg: &DiceConfig) -> (f64, Vec<T>) {
        let mut p = vec![T::zero(); x.len()];
        let image = c * inner;
        // Per image: sum(p_k), sum(p_k g_k) and sum(g_k), each a row of c.
        let partials: Vec<Vec<f64>> = if image == 0 {
            Vec::new()
        } else {
            p.par_chunks_mut(image)
                .zip(x.par_chunks(image))
                .zip(targets.par_chunks(inner))
                .map(|((ps, xs), ts)| {
                    let mut sums = vec![0.0f64; 3 * c];
                    softmax_image(xs, ps, c, inner, |start, ps| {
                        let ts = &ts[start..(start + BLOCK).min(inner)];
                        let (psum, rest) = sums.split_at_mut(c);
                        let (inter, gsum) = rest.split_at_mut(c);
                        for (k, s) in psum.iter_mut().enumerate() {
                            *s += ps[k * inner + start..][..ts.len()]
                                .iter()
                                .map(|v| v.as_f64())
                                .sum::<f64>();
                        }
                        for (i, &t) in ts.iter().enumerate() {
                            inter[t as usize] += ps[t as usize * inner + start + i].as_f64();
                            gsum[t as usize] += 1.0;
                        }
                    });
                    sums
                })
                .collect()
        };
        let mut sums = vec![0.0f64; 3 * c];
        for part in &partials {
            sums.iter_mut().zip(part).for_each(|(s, v)| *s += v);
        }
        let (psum, rest) = sums.split_at(c);
        let (inter, gsum) = rest.split_at(c);
        let first = usize::from(cfg.skip_background);
        let counted = (c - first) as f64;
        let mut loss = 1.0;
        // dL/dp_k at a pixel = a_k + b_k * g_k, with a_k = 2 I_k / S_k^2 / C', b_k = -2 / S_k / C'.
        let (mut a, mut b) = (vec![0.0; c], vec![0.0; c]);
        for k in first..c {
            let s = psum[k] + gsum[k] + cfg.eps;
            loss -= 2.0 * inter[k] / s / counted;
            a[k] = 2.0 * inter[k] / (s * s) / counted;
            b[k] = -2.0 / s / counted;
        }
        let mut grad = vec![T::zero(); x.len()];
        if image > 0 {
            grad.par_chunks_mut(image)
                .zip(p.par_chunks(image))
                .zip(targets.par_chunks(inner))
                .for_each(|((gs, ps), ts)| dice_gradient(gs, ps, ts, &a, &b, inner));
        }
        (loss, grad)
    }

    /// One image's gradient through the softmax, `p_k (dp_k - sum_j p_j dp_j)`, block by block.
    fn dice_gradient<T: Element>(gs: &mut [T], ps: &[T], ts: &[u32], a: &[f64], b: &[f64], inner: usize) {
        let mut dot = [0.0f64; BLOCK];
        for start in (0..inner).step_by(BLOCK) {
            let ts = &ts[start..(start + BLOCK).min(inner)];
            let dot = &mut dot[..ts.len()];
            dot.fill(0.0);
            for (k, &ak) in a.iter().enumerate() {
                for (d, v) in dot.iter_mut().zip(&ps[k * inner + start..][..ts.len()]) {
                    *d += v.as_f64() * ak;
                }
            }
            for (i, (d, &t)) in dot.iter_mut().zip(ts).enumerate() {
                *d += ps[t as usize * inner + start + i].as_f64() * b[t as usize];
            }
            for (k, &ak) in a.iter().enumerate() {
                let base = k * inner + start;
                for (i, ((g, v), d)) in gs[base..][..ts.len()]
                    .iter_mut()
                    .zip(&ps[base..])
                    .zip(&*dot)
                    .enumerate()
                {
                    let dp = ak + if ts[i] as usize == k { b[k] } else { 0.0 };
                    *g = T::of(v.as_f64() * (dp - d));
                }
            }
        }
    }
}

/// The CUDA branch: `device::cuda::loss`. The labels are uploaded by the op (they come from the
/// host per batch); the loss stays on the device and its backward reads the upstream gradient
/// there.
mod cuda {
    use super::super::conv::cuda::{storage, tensor};
    use super::{DiceConfig, LabelSource};
    use crate::device::cuda::CudaStorage;
    use crate::device::cuda::loss::{self, ChannelShape};
    use crate::error::Result;
    use crate::tensor::Tensor;

    fn shape(x: &Tensor, channels: usize, inner: usize) -> ChannelShape {
        ChannelShape {
            outer: x.shape()[0],
            channels,
            inner,
        }
    }

    /// What the backward keeps: the labels on the device and the per-class coefficients.
    pub(super) struct Saved {
        targets: CudaStorage,
        coef: CudaStorage,
    }

    pub(super) fn forward(
        x: &Tensor,
        targets: &(impl LabelSource + ?Sized),
        c: usize,
        inner: usize,
        cfg: &DiceConfig,
    ) -> Result<(Tensor, Saved)> {
        let xs = storage("dice_loss", "logits", x)?;
        let targets = targets.on_device(&xs.device())?;
        let (value, coef) = loss::dice_loss(xs, &targets, &shape(x, c, inner), cfg)?;
        Ok((tensor(vec![1], value), Saved { targets, coef }))
    }

    pub(super) fn backward(
        x: &Tensor,
        saved: &Saved,
        upstream: &Tensor,
        c: usize,
        inner: usize,
        cfg: &DiceConfig,
    ) -> Result<Tensor> {
        const OP: &str = "dice_loss backward";
        let (xs, gs) = (storage(OP, "logits", x)?, storage(OP, "loss gradient", upstream)?);
        let dx = loss::dice_loss_backward(xs, &saved.targets, &saved.coef, gs, &shape(x, c, inner), cfg)?;
        Ok(tensor(x.shape().to_vec(), dx))
    }
}

impl Tape {
    /// Soft Dice loss of logits `[N, C, H, W]` against a label map (one class per pixel).
    /// Labels passed as [`Labels`](super::labels::Labels) share one device copy with the other
    /// losses of the step.
    pub fn dice_loss(&mut self, logits: Var, targets: &(impl LabelSource + ?Sized), cfg: DiceConfig) -> Result<Var> {
        let _range = crate::profile::range("dice_loss");
        let xv = self.value(logits);
        let (_, c, inner) = check_targets("dice_loss", xv, targets.host())?;
        if cfg.skip_background && c < 2 {
            return Err(Error::config("dice_loss: skipping the background leaves no class"));
        }
        if !xv.is_cpu() {
            let (loss, saved) = cuda::forward(xv, targets, c, inner, &cfg)?;
            return Ok(self.record("dice_loss", loss, &[logits], move |ctx| {
                Ok(vec![Some(cuda::backward(
                    ctx.input(0),
                    &saved,
                    ctx.grad,
                    c,
                    inner,
                    &cfg,
                )?)])
            }));
        }
        let (loss, grad) = with_cpu_dtype!("dice_loss", [xv], T => {
            let (l, g) = cpu::dice_loss(xv.as_slice::<T>()?, targets.host(), c, inner, &cfg);
            (Tensor::full(vec![1], l, xv.dtype()), Tensor::cpu(xv.shape().to_vec(), g))
        });
        Ok(self.record("dice_loss", loss, &[logits], move |ctx| {
            Ok(vec![Some(super::pointwise::scale(&grad, ctx.grad.scalar()?)?)])
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The loss and gradient written out pixel by pixel from the formula, in f64.
    fn definition(x: &[f64], targets: &[u32], c: usize, inner: usize, cfg: &DiceConfig) -> (f64, Vec<f64>) {
        let at = |pos: usize, k: usize| (pos / inner * c + k) * inner + pos % inner;
        let p: Vec<Vec<f64>> = (0..targets.len())
            .map(|pos| {
                let e: Vec<f64> = (0..c).map(|k| x[at(pos, k)].exp()).collect();
                let z: f64 = e.iter().sum();
                e.iter().map(|v| v / z).collect()
            })
            .collect();
        let first = usize::from(cfg.skip_background);
        let counted = (c - first) as f64;
        let (mut loss, mut dp) = (1.0, vec![vec![0.0; c]; targets.len()]);
        for k in first..c {
            let inter: f64 = targets
                .iter()
                .zip(&p)
                .filter(|(t, _)| **t as usize == k)
                .map(|(_, p)| p[k])
                .sum();
            let s = p.iter().map(|p| p[k]).sum::<f64>()
                + targets.iter().filter(|t| **t as usize == k).count() as f64
                + cfg.eps;
            loss -= 2.0 * inter / s / counted;
            for (pos, d) in dp.iter_mut().enumerate() {
                let g = if targets[pos] as usize == k { 1.0 } else { 0.0 };
                d[k] = (2.0 * inter / (s * s) - 2.0 * g / s) / counted;
            }
        }
        let mut grad = vec![0.0; x.len()];
        for (pos, (p, d)) in p.iter().zip(&dp).enumerate() {
            let dot: f64 = p.iter().zip(d).map(|(p, d)| p * d).sum();
            for k in 0..c {
                grad[at(pos, k)] = p[k] * (d[k] - dot);
            }
        }
        (loss, grad)
    }

    fn case(n: usize, c: usize, inner: usize, seed: u64) -> (Vec<f64>, Vec<u32>) {
        let mut rng = Rng::new(seed);
        let x = (0..n * c * inner).map(|_| 3.0 * rng.normal()).collect();
        let t = (0..n * inner).map(|_| rng.below(c as u64) as u32).collect();
        (x, t)
    }

    #[test]
    fn blocked_loss_and_gradient_match_the_definition() {
        // Planes shorter than, equal to and not a multiple of a block; one class; a class with
        // no target pixel (c = 7 on 3 pixels).
        for (n, c, inner) in [(2, 5, 150), (3, 4, BLOCK), (1, 1, 70), (2, 7, 3), (1, 3, 1)] {
            for skip_background in [false, true] {
                if skip_background && c < 2 {
                    continue;
                }
                let cfg = DiceConfig {
                    skip_background,
                    ..DiceConfig::default()
                };
                let (x, t) = case(n, c, inner, (n * 100 + c * 10 + inner) as u64);
                let (loss, grad) = cpu::dice_loss(&x, &t, c, inner, &cfg);
                let (want, want_grad) = definition(&x, &t, c, inner, &cfg);
                // f64 sums of at most a few hundred terms in another order: 1e-12 relative to
                // the largest gradient is some thousand roundings of room.
                assert!((loss - want).abs() <= 1e-13, "{n}x{c}x{inner}: loss {loss} vs {want}");
                let scale = want_grad.iter().fold(0.0f64, |m, w| m.max(w.abs()));
                let (worst, at) = grad
                    .iter()
                    .zip(&want_grad)
                    .enumerate()
                    .map(|(i, (g, w))| ((g - w).abs(), i))
                    .fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a });
                assert!(
                    worst <= 1e-12 * scale,
                    "{n}x{c}x{inner}: gradient off by {worst} at {at} (largest {scale})"
                );
            }
        }
    }

    #[test]
    fn result_is_the_same_on_any_thread_count() {
        let (x, t) = case(5, 6, 200, 9);
        let x: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| cpu::dice_loss(&x, &t, 6, 200, &DiceConfig::default()))
        };
        let (loss, grad) = run(1);
        for threads in [2, 3, 5] {
            let (l, g) = run(threads);
            assert_eq!(l.to_bits(), loss.to_bits(), "{threads} threads");
            assert!(
                g.iter().zip(&grad).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{threads} threads"
            );
        }
    }
}
