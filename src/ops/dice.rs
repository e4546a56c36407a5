//! Soft multi-class Dice loss on softmax probabilities:
//! `1 - (1/C') * sum_c 2 * sum(p_c * g_c) / (sum(p_c) + sum(g_c) + eps)`, sums over the whole
//! batch and all pixels ("batch Dice"), C' the classes counted (background optional).

use super::labels::LabelSource;
use super::softmax::{check_targets, cpu::softmax};
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

    /// Returns the loss and the gradient with respect to the logits.
    pub fn dice_loss<T: Element>(x: &[T], targets: &[u32], c: usize, inner: usize, cfg: &DiceConfig) -> (f64, Vec<T>) {
        let p = softmax(x, c, inner);
        let (mut inter, mut psum, mut gsum) = (vec![0.0f64; c], vec![0.0f64; c], vec![0.0f64; c]);
        for (pos, &t) in targets.iter().enumerate() {
            let (n, i) = (pos / inner, pos % inner);
            for k in 0..c {
                psum[k] += p[(n * c + k) * inner + i].as_f64();
            }
            inter[t as usize] += p[(n * c + t as usize) * inner + i].as_f64();
            gsum[t as usize] += 1.0;
        }
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
        for (pos, &t) in targets.iter().enumerate() {
            let (n, i) = (pos / inner, pos % inner);
            let dp = |k: usize| a[k] + if k == t as usize { b[k] } else { 0.0 };
            let dot: f64 = (0..c).map(|k| p[(n * c + k) * inner + i].as_f64() * dp(k)).sum();
            for k in 0..c {
                let j = (n * c + k) * inner + i;
                grad[j] = T::of(p[j].as_f64() * (dp(k) - dot));
            }
        }
        (loss, grad)
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
