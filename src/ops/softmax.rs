//! Softmax over the class axis (dim 1) of [N, C] or [N, C, H, W], log-softmax and
//! cross-entropy against integer class targets.

use super::labels::LabelSource;
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};
use crate::with_cpu_dtype;

/// (outer, classes, inner) of a class-axis-1 tensor.
pub fn class_layout(op: &'static str, x: &Tensor) -> Result<(usize, usize, usize)> {
    let s = x.shape();
    if s.len() < 2 || s[1] == 0 {
        return Err(Error::shape(op, format!("needs [N, C, ...] with C > 0, got {s:?}")));
    }
    Ok((s[0], s[1], s[2..].iter().product()))
}

pub mod cpu {
    use super::*;
    use rayon::prelude::*;

    /// Pixels per block of the class-strided loops: a class's run of a block is contiguous, so
    /// the loops over classes read whole cache lines instead of one value per plane.
    pub(crate) const BLOCK: usize = 64;

    /// Softmax over the class axis, with the max shifted out for stability; images in parallel.
    pub fn softmax<T: Element>(x: &[T], c: usize, inner: usize) -> Vec<T> {
        let mut y = vec![T::zero(); x.len()];
        if c * inner > 0 {
            y.par_chunks_mut(c * inner)
                .zip(x.par_chunks(c * inner))
                .for_each(|(ys, xs)| softmax_image(xs, ys, c, inner, |_, _| {}));
        }
        y
    }

    /// Softmax of one image (`c` planes of `inner` values), block by block; `visit(start, ys)`
    /// runs after the block of pixels from `start` is written into `ys` (the whole image), while
    /// it is still in cache.
    pub(crate) fn softmax_image<T: Element>(
        xs: &[T],
        ys: &mut [T],
        c: usize,
        inner: usize,
        mut visit: impl FnMut(usize, &[T]),
    ) {
        let mut exps = vec![0.0f64; c * BLOCK];
        let (mut max, mut sum) = ([0.0f64; BLOCK], [0.0f64; BLOCK]);
        for start in (0..inner).step_by(BLOCK) {
            let len = BLOCK.min(inner - start);
            max[..len].fill(f64::NEG_INFINITY);
            for k in 0..c {
                for (m, v) in max.iter_mut().zip(&xs[k * inner + start..][..len]) {
                    *m = m.max(v.as_f64());
                }
            }
            sum[..len].fill(0.0);
            for (k, e) in exps.chunks_exact_mut(BLOCK).enumerate() {
                for (((e, z), m), v) in e
                    .iter_mut()
                    .zip(&mut sum)
                    .zip(&max)
                    .zip(&xs[k * inner + start..][..len])
                {
                    *e = (v.as_f64() - m).exp();
                    *z += *e;
                }
            }
            for (k, e) in exps.chunks_exact(BLOCK).enumerate() {
                for ((y, e), z) in ys[k * inner + start..][..len].iter_mut().zip(e).zip(&sum) {
                    *y = T::of(e / z);
                }
            }
            visit(start, &ys[..]);
        }
    }

    pub fn log_softmax<T: Element>(x: &[T], c: usize, inner: usize) -> Vec<T> {
        let mut y = vec![T::zero(); x.len()];
        for (ys, xs) in y.chunks_mut(c * inner).zip(x.chunks(c * inner)) {
            for i in 0..inner {
                let m = (0..c)
                    .map(|k| xs[k * inner + i].as_f64())
                    .fold(f64::NEG_INFINITY, f64::max);
                let lse = m + (0..c).map(|k| (xs[k * inner + i].as_f64() - m).exp()).sum::<f64>().ln();
                for k in 0..c {
                    ys[k * inner + i] = T::of(xs[k * inner + i].as_f64() - lse);
                }
            }
        }
        y
    }

    /// Backward of log-softmax from its output: `dx = dy - softmax * sum(dy)`.
    pub fn log_softmax_backward<T: Element>(y: &[T], dy: &[T], c: usize, inner: usize) -> Vec<T> {
        let mut dx = vec![T::zero(); y.len()];
        for ((dxs, ys), dys) in dx
            .chunks_mut(c * inner)
            .zip(y.chunks(c * inner))
            .zip(dy.chunks(c * inner))
        {
            for i in 0..inner {
                let s: f64 = (0..c).map(|k| dys[k * inner + i].as_f64()).sum();
                for k in 0..c {
                    let j = k * inner + i;
                    dxs[j] = T::of(dys[j].as_f64() - ys[j].as_f64().exp() * s);
                }
            }
        }
        dx
    }

    /// Mean over positions of `-log softmax(x)[target]`, and the gradient `(p - onehot) / M`.
    pub fn cross_entropy<T: Element>(x: &[T], targets: &[u32], c: usize, inner: usize) -> (f64, Vec<T>) {
        let p = softmax(x, c, inner);
        let positions = targets.len();
        let mut loss = 0.0;
        let mut grad: Vec<T> = p.iter().map(|&v| T::of(v.as_f64() / positions as f64)).collect();
        for (pos, &t) in targets.iter().enumerate() {
            let (n, i) = (pos / inner, pos % inner);
            let j = n * c * inner + t as usize * inner + i;
            loss -= p[j].as_f64().max(f64::MIN_POSITIVE).ln();
            grad[j] -= T::of(1.0 / positions as f64);
        }
        (loss / positions as f64, grad)
    }
}

/// Checks that `targets` holds one class index < C per position of `x`.
pub fn check_targets(op: &'static str, x: &Tensor, targets: &[u32]) -> Result<(usize, usize, usize)> {
    let (n, c, inner) = class_layout(op, x)?;
    if targets.len() != n * inner {
        return Err(Error::shape(
            op,
            format!("{} targets for input {:?}", targets.len(), x.shape()),
        ));
    }
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= c) {
        return Err(Error::shape(
            op,
            format!("target class {bad} out of range for {c} classes"),
        ));
    }
    Ok((n, c, inner))
}

/// The CUDA branch: `device::cuda::loss`. The targets come from the host (the batch's labels)
/// and cross to the device through their [`LabelSource`]; the loss stays on the device and its backward reads the
/// upstream gradient there.
mod cuda {
    use super::super::conv::cuda::{storage, tensor};
    use super::LabelSource;
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

    pub(super) fn log_softmax(x: &Tensor, c: usize, inner: usize) -> Result<Tensor> {
        let xs = storage("log_softmax", "input", x)?;
        Ok(tensor(x.shape().to_vec(), loss::log_softmax(xs, &shape(x, c, inner))?))
    }

    pub(super) fn log_softmax_backward(y: &Tensor, dy: &Tensor, c: usize, inner: usize) -> Result<Tensor> {
        const OP: &str = "log_softmax backward";
        let (ys, dys) = (storage(OP, "output", y)?, storage(OP, "output gradient", dy)?);
        Ok(tensor(
            y.shape().to_vec(),
            loss::log_softmax_backward(ys, dys, &shape(y, c, inner))?,
        ))
    }

    /// What the backward keeps: the targets on the device and the per-position log-sum-exp.
    pub(super) struct Saved {
        targets: CudaStorage,
        lse: CudaStorage,
    }

    pub(super) fn cross_entropy(
        x: &Tensor,
        targets: &(impl LabelSource + ?Sized),
        c: usize,
        inner: usize,
    ) -> Result<(Tensor, Saved)> {
        let xs = storage("cross_entropy", "logits", x)?;
        let targets = targets.on_device(&xs.device())?;
        let (loss, lse) = loss::cross_entropy(xs, &targets, &shape(x, c, inner))?;
        Ok((tensor(vec![1], loss), Saved { targets, lse }))
    }

    pub(super) fn cross_entropy_backward(
        x: &Tensor,
        saved: &Saved,
        upstream: &Tensor,
        c: usize,
        inner: usize,
    ) -> Result<Tensor> {
        const OP: &str = "cross_entropy backward";
        let (xs, gs) = (storage(OP, "logits", x)?, storage(OP, "loss gradient", upstream)?);
        let dx = loss::cross_entropy_backward(xs, &saved.targets, &saved.lse, gs, &shape(x, c, inner))?;
        Ok(tensor(x.shape().to_vec(), dx))
    }
}

impl Tape {
    pub fn log_softmax(&mut self, x: Var) -> Result<Var> {
        let _range = crate::profile::range("log_softmax");
        let (_, c, inner) = class_layout("log_softmax", self.value(x))?;
        let xv = self.value(x);
        if !xv.is_cpu() {
            let y = cuda::log_softmax(xv, c, inner)?;
            return Ok(self.record("log_softmax", y, &[x], move |ctx| {
                Ok(vec![Some(cuda::log_softmax_backward(
                    ctx.output(),
                    ctx.grad,
                    c,
                    inner,
                )?)])
            }));
        }
        let y = with_cpu_dtype!("log_softmax", [xv], T => Tensor::cpu(xv.shape().to_vec(), cpu::log_softmax(xv.as_slice::<T>()?, c, inner)));
        Ok(self.record("log_softmax", y, &[x], move |ctx| {
            let (y, dy) = (ctx.output(), ctx.grad);
            with_cpu_dtype!("log_softmax backward", [y, dy], T => {
                Ok(vec![Some(Tensor::cpu(y.shape().to_vec(), cpu::log_softmax_backward(y.as_slice::<T>()?, dy.as_slice::<T>()?, c, inner)))])
            })
        }))
    }

    /// Mean cross-entropy of logits `[N, C, ...]` against class indices, one per position.
    /// Labels passed as [`Labels`](super::labels::Labels) share one device copy with the other
    /// losses of the step.
    pub fn cross_entropy(&mut self, logits: Var, targets: &(impl LabelSource + ?Sized)) -> Result<Var> {
        let _range = crate::profile::range("cross_entropy");
        let xv = self.value(logits);
        let (_, c, inner) = check_targets("cross_entropy", xv, targets.host())?;
        if !xv.is_cpu() {
            let (loss, saved) = cuda::cross_entropy(xv, targets, c, inner)?;
            return Ok(self.record("cross_entropy", loss, &[logits], move |ctx| {
                Ok(vec![Some(cuda::cross_entropy_backward(
                    ctx.input(0),
                    &saved,
                    ctx.grad,
                    c,
                    inner,
                )?)])
            }));
        }
        let (loss, grad) = with_cpu_dtype!("cross_entropy", [xv], T => {
            let (l, g) = cpu::cross_entropy(xv.as_slice::<T>()?, targets.host(), c, inner);
            (Tensor::full(vec![1], l, xv.dtype()), Tensor::cpu(xv.shape().to_vec(), g))
        });
        Ok(self.record("cross_entropy", loss, &[logits], move |ctx| {
            Ok(vec![Some(super::pointwise::scale(&grad, ctx.grad.scalar()?)?)])
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::cpu::{BLOCK, softmax};
    use crate::rng::Rng;

    #[test]
    fn blocked_softmax_is_the_per_pixel_formula_bit_for_bit() {
        let mut rng = Rng::new(3);
        for (n, c, inner) in [(2, 5, 2 * BLOCK + 7), (1, 1, 9), (3, 14, BLOCK)] {
            let x: Vec<f32> = (0..n * c * inner).map(|_| (4.0 * rng.normal()) as f32).collect();
            let y = softmax(&x, c, inner);
            for pos in 0..n * inner {
                let at = |k: usize| (pos / inner * c + k) * inner + pos % inner;
                let m = (0..c).map(|k| x[at(k)] as f64).fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = (0..c).map(|k| (x[at(k)] as f64 - m).exp()).sum();
                for k in 0..c {
                    let want = ((x[at(k)] as f64 - m).exp() / z) as f32;
                    assert_eq!(y[at(k)].to_bits(), want.to_bits(), "{n}x{c}x{inner} at {}", at(k));
                }
            }
        }
    }
}
