//! L2 normalisation along the channel axis (dim 1): per vector for [N, D], per pixel for
//! [N, D, H, W]; `x / max(||x||, eps)` as torch.nn.functional.normalize.

use rayon::prelude::*;

use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};
use crate::with_cpu_dtype;

pub const DEFAULT_EPS: f64 = 1e-12;

/// Splits a shape into (outer, channels, inner) around dim 1.
fn layout(x: &Tensor) -> Result<(usize, usize, usize)> {
    let s = x.shape();
    if s.len() < 2 {
        return Err(Error::shape(
            "l2_normalize",
            format!("needs at least 2 dims, got {s:?}"),
        ));
    }
    Ok((s[0], s[1], s[2..].iter().product()))
}

pub mod cpu {
    use super::*;

    /// Returns the normalised values and the clamped norm of each vector.
    pub fn forward<T: Element>(x: &[T], c: usize, inner: usize, eps: f64) -> (Vec<T>, Vec<T>) {
        let mut y = vec![T::zero(); x.len()];
        let mut norms = vec![T::zero(); x.len() / c];
        y.par_chunks_mut(c * inner)
            .zip(x.par_chunks(c * inner))
            .zip(norms.par_chunks_mut(inner))
            .for_each(|((ys, xs), ns)| {
                for i in 0..inner {
                    let sq: f64 = (0..c).map(|k| xs[k * inner + i].as_f64().powi(2)).sum();
                    let norm = sq.sqrt().max(eps);
                    ns[i] = T::of(norm);
                    for k in 0..c {
                        ys[k * inner + i] = T::of(xs[k * inner + i].as_f64() / norm);
                    }
                }
            });
        (y, norms)
    }

    /// `dx = (dy - y (y . dy)) / norm` where the norm was not clamped, `dy / eps` where it was.
    pub fn backward<T: Element>(y: &[T], dy: &[T], norms: &[T], c: usize, inner: usize, eps: f64) -> Vec<T> {
        let mut dx = vec![T::zero(); y.len()];
        dx.par_chunks_mut(c * inner)
            .zip(y.par_chunks(c * inner).zip(dy.par_chunks(c * inner)))
            .zip(norms.par_chunks(inner))
            .for_each(|((dxs, (ys, dys)), ns)| {
                for i in 0..inner {
                    let norm = ns[i].as_f64();
                    let dot: f64 = if norm > eps {
                        (0..c)
                            .map(|k| ys[k * inner + i].as_f64() * dys[k * inner + i].as_f64())
                            .sum()
                    } else {
                        0.0
                    };
                    for k in 0..c {
                        let j = k * inner + i;
                        dxs[j] = T::of((dys[j].as_f64() - ys[j].as_f64() * dot) / norm);
                    }
                }
            });
        dx
    }
}

/// The CUDA branch: `device::cuda::loss`, with the norms kept on the device for the backward.
mod cuda {
    use super::super::conv::cuda::{storage, tensor};
    use super::DEFAULT_EPS;
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

    pub(super) fn forward(x: &Tensor, c: usize, inner: usize) -> Result<(Tensor, CudaStorage)> {
        let xs = storage("l2_normalize", "input", x)?;
        let (y, norms) = loss::l2_normalize(xs, &shape(x, c, inner), DEFAULT_EPS as f32)?;
        Ok((tensor(x.shape().to_vec(), y), norms))
    }

    pub(super) fn backward(y: &Tensor, norms: &CudaStorage, dy: &Tensor, c: usize, inner: usize) -> Result<Tensor> {
        const OP: &str = "l2_normalize backward";
        let (ys, dys) = (storage(OP, "output", y)?, storage(OP, "output gradient", dy)?);
        let dx = loss::l2_normalize_backward(ys, norms, dys, &shape(y, c, inner), DEFAULT_EPS as f32)?;
        Ok(tensor(y.shape().to_vec(), dx))
    }
}

impl Tape {
    /// Unit vectors along dim 1.
    pub fn l2_normalize(&mut self, x: Var) -> Result<Var> {
        let _range = crate::profile::range("l2_normalize");
        let (_, c, inner) = layout(self.value(x))?;
        let xv = self.value(x);
        if !xv.is_cpu() {
            let (y, norms) = cuda::forward(xv, c, inner)?;
            return Ok(self.record("l2_normalize", y, &[x], move |ctx| {
                Ok(vec![Some(cuda::backward(ctx.output(), &norms, ctx.grad, c, inner)?)])
            }));
        }
        let (y, norms) = with_cpu_dtype!("l2_normalize", [xv], T => {
            let (y, n) = cpu::forward(xv.as_slice::<T>()?, c, inner, DEFAULT_EPS);
            (Tensor::cpu(xv.shape().to_vec(), y), Tensor::cpu(vec![n.len()], n))
        });
        Ok(self.record("l2_normalize", y, &[x], move |ctx| {
            let (y, dy) = (ctx.output(), ctx.grad);
            with_cpu_dtype!("l2_normalize backward", [y, dy], T => {
                let dx = cpu::backward(y.as_slice::<T>()?, dy.as_slice::<T>()?, norms.as_slice::<T>()?, c, inner, DEFAULT_EPS);
                Ok(vec![Some(Tensor::cpu(y.shape().to_vec(), dx))])
            })
        }))
    }
}
