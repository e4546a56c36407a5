//! Concatenation along the channel axis of NCHW tensors (the U-Net's skip connections).

use super::conv::cuda::{storage, tensor};
use crate::autograd::{Tape, Var};
use crate::device::cuda::concat as kernels;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::with_cpu_dtype;

/// `torch.cat([a, b], dim=1)` for `[N, Ca, ...]` and `[N, Cb, ...]` with equal trailing dims.
pub fn forward(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (sa, sb) = (a.shape(), b.shape());
    if sa.len() < 2 || sa.len() != sb.len() || sa[0] != sb[0] || sa[2..] != sb[2..] {
        return Err(Error::shape(
            "concat",
            format!("cannot concatenate {sa:?} and {sb:?} along channels"),
        ));
    }
    let inner: usize = sa[2..].iter().product();
    let (ca, cb) = (sa[1] * inner, sb[1] * inner);
    let mut shape = sa.to_vec();
    shape[1] += sb[1];
    if !a.is_cpu() || !b.is_cpu() {
        let (da, db) = (
            storage("concat", "first part", a)?,
            storage("concat", "second part", b)?,
        );
        return Ok(tensor(shape, kernels::concat(da, db, sa[0], ca, cb)?));
    }
    with_cpu_dtype!("concat", [a, b], T => {
        let (xa, xb) = (a.as_slice::<T>()?, b.as_slice::<T>()?);
        let mut out = Vec::with_capacity(xa.len() + xb.len());
        for n in 0..sa[0] {
            out.extend_from_slice(&xa[n * ca..(n + 1) * ca]);
            out.extend_from_slice(&xb[n * cb..(n + 1) * cb]);
        }
        Ok(Tensor::cpu(shape, out))
    })
}

/// Splits a channel-concatenated gradient back into the parts of `ca` and `cb` channels.
pub fn split(g: &Tensor, ca: usize, cb: usize) -> Result<(Tensor, Tensor)> {
    let s = g.shape();
    if s.len() < 2 || s[1] != ca + cb {
        return Err(Error::shape(
            "concat backward",
            format!("cannot split {s:?} into {ca} and {cb} channels"),
        ));
    }
    let inner: usize = s[2..].iter().product();
    let (la, lb) = (ca * inner, cb * inner);
    let mut shape_a = s.to_vec();
    shape_a[1] = ca;
    let mut shape_b = s.to_vec();
    shape_b[1] = cb;
    if let Some(dg) = g.cuda_storage() {
        let (ga, gb) = kernels::split(dg, s[0], la, lb)?;
        return Ok((tensor(shape_a, ga), tensor(shape_b, gb)));
    }
    with_cpu_dtype!("concat backward", [g], T => {
        let x = g.as_slice::<T>()?;
        let (mut ga, mut gb): (Vec<T>, Vec<T>) = (Vec::with_capacity(s[0] * la), Vec::with_capacity(s[0] * lb));
        for n in 0..s[0] {
            let row = &x[n * (la + lb)..(n + 1) * (la + lb)];
            ga.extend_from_slice(&row[..la]);
            gb.extend_from_slice(&row[la..]);
        }
        Ok((Tensor::cpu(shape_a, ga), Tensor::cpu(shape_b, gb)))
    })
}

impl Tape {
    /// Channel concatenation `[a, b]`.
    pub fn concat(&mut self, a: Var, b: Var) -> Result<Var> {
        let _range = crate::profile::range("concat");
        let out = forward(self.value(a), self.value(b))?;
        let (ca, cb) = (self.value(a).shape()[1], self.value(b).shape()[1]);
        Ok(self.record("concat", out, &[a, b], move |ctx| {
            let (ga, gb) = split(ctx.grad, ca, cb)?;
            Ok(vec![Some(ga), Some(gb)])
        }))
    }
}
