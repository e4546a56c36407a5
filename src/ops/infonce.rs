//! InfoNCE as MoCo computes it: logits `[q.k, q.queue^T] / t`, cross-entropy with target 0,
//! averaged over the batch. Fused: the [B, 1 + K] logits never leave the op.

use crate::autograd::{Tape, Var};
use crate::device::cuda::loss::InfoNceShape;
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};
use crate::with_cpu_dtype;

pub mod cpu {
    use super::*;

    pub struct InfoNceGrads<T> {
        pub dq: Vec<T>,
        pub dk: Vec<T>,
        pub dqueue: Vec<T>,
    }

    fn dot<T: Element>(a: &[T], b: &[T]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x.as_f64() * y.as_f64()).sum()
    }

    /// `q`, `k`: [B, D]; `queue`: [K, D]; `exclude`: optional [B, K] mask of negatives to leave
    /// out. Returns the loss and, per row, the softmax over [positive, negatives] that the
    /// backward needs (0 for excluded negatives).
    pub fn forward<T: Element>(
        q: &[T],
        k: &[T],
        queue: &[T],
        d: usize,
        t: f64,
        exclude: Option<&[bool]>,
    ) -> (f64, Vec<f64>) {
        let b = q.len() / d;
        let kq = queue.len() / d;
        let mut probs = vec![0.0; b * (1 + kq)];
        let mut loss = 0.0;
        for i in 0..b {
            let qi = &q[i * d..(i + 1) * d];
            let row = &mut probs[i * (1 + kq)..(i + 1) * (1 + kq)];
            row[0] = dot(qi, &k[i * d..(i + 1) * d]) / t;
            for j in 0..kq {
                row[1 + j] = if exclude.is_some_and(|m| m[i * kq + j]) {
                    f64::NEG_INFINITY
                } else {
                    dot(qi, &queue[j * d..(j + 1) * d]) / t
                };
            }
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.iter().map(|l| (l - m).exp()).sum();
            loss += m + z.ln() - row[0];
            row.iter_mut().for_each(|l| *l = (*l - m).exp() / z);
        }
        (loss / b as f64, probs)
    }

    /// Gradients scaled by `scale` (the upstream gradient of the loss).
    pub fn backward<T: Element>(
        q: &[T],
        k: &[T],
        queue: &[T],
        d: usize,
        t: f64,
        probs: &[f64],
        scale: f64,
    ) -> InfoNceGrads<T> {
        let b = q.len() / d;
        let kq = queue.len() / d;
        let (mut dq, mut dk, mut dqueue) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; queue.len()]);
        let c = scale / (b as f64 * t);
        for i in 0..b {
            let row = &probs[i * (1 + kq)..(i + 1) * (1 + kq)];
            let g0 = (row[0] - 1.0) * c;
            for e in 0..d {
                dq[i * d + e] += g0 * k[i * d + e].as_f64();
                dk[i * d + e] += g0 * q[i * d + e].as_f64();
            }
            for j in 0..kq {
                let gj = row[1 + j] * c;
                for e in 0..d {
                    dq[i * d + e] += gj * queue[j * d + e].as_f64();
                    dqueue[j * d + e] += gj * q[i * d + e].as_f64();
                }
            }
        }
        let cast = |v: Vec<f64>| v.into_iter().map(T::of).collect();
        InfoNceGrads {
            dq: cast(dq),
            dk: cast(dk),
            dqueue: cast(dqueue),
        }
    }
}

/// The CUDA branch: `device::cuda::loss`. The exclusion mask comes from the host per batch and
/// is uploaded packed, one bit per negative; the loss stays on the device and its backward
/// reads the upstream gradient there.
mod cuda {
    use super::super::conv::cuda::{storage, tensor};
    use crate::device::cuda::CudaStorage;
    use crate::device::cuda::loss::{self, InfoNceSaved, InfoNceShape};
    use crate::error::Result;
    use crate::tensor::Tensor;

    pub(super) fn forward(
        q: &Tensor,
        k: &Tensor,
        queue: &Tensor,
        exclude: Option<&[bool]>,
        s: &InfoNceShape,
        t: f64,
    ) -> Result<(Tensor, InfoNceSaved)> {
        const OP: &str = "infonce";
        let qs = storage(OP, "queries", q)?;
        let ks = storage(OP, "keys", k)?;
        let ns = storage(OP, "queue", queue)?;
        let mask = exclude
            .map(|m| CudaStorage::from_host_u32(&qs.device(), &loss::pack_mask(m, s.rows, s.queue_len)))
            .transpose()?;
        let (value, saved) = loss::infonce(qs, ks, ns, mask.as_ref(), s, t)?;
        Ok((tensor(vec![1], value), saved))
    }

    pub(super) fn backward(
        [q, k, queue]: [&Tensor; 3],
        saved: &InfoNceSaved,
        upstream: &Tensor,
        s: &InfoNceShape,
        t: f64,
        want: [bool; 3],
    ) -> Result<Vec<Option<Tensor>>> {
        const OP: &str = "infonce backward";
        let qs = storage(OP, "queries", q)?;
        let ks = storage(OP, "keys", k)?;
        let ns = storage(OP, "queue", queue)?;
        let gs = storage(OP, "loss gradient", upstream)?;
        let grads = loss::infonce_backward(qs, ks, ns, saved, gs, s, t, want)?;
        let shapes = [q.shape(), k.shape(), queue.shape()];
        Ok(grads
            .into_iter()
            .zip(shapes)
            .map(|(g, shape)| g.map(|g| tensor(shape.to_vec(), g)))
            .collect())
    }
}

impl Tape {
    /// MoCo's InfoNCE loss of queries `q` [B, D] against positive keys `k` [B, D] and a queue of
    /// negatives [K, D] at temperature `t`.
    pub fn infonce(&mut self, q: Var, k: Var, queue: Var, t: f64) -> Result<Var> {
        self.infonce_masked(q, k, queue, t, None)
    }

    /// InfoNCE with some negatives left out per query: `exclude[i * K + j]` drops queue entry
    /// `j` from row `i` (MoCo on CT: neighbouring slices of the query's own volume are
    /// near-duplicates, not negatives).
    pub fn infonce_masked(&mut self, q: Var, k: Var, queue: Var, t: f64, exclude: Option<Vec<bool>>) -> Result<Var> {
        let _range = crate::profile::range("infonce_masked");
        let (qv, kv, nv) = (self.value(q), self.value(k), self.value(queue));
        let [b, d] = qv.dims2("infonce")?;
        let [_, dn] = nv.dims2("infonce queue")?;
        if kv.shape() != [b, d] || dn != d || b == 0 {
            return Err(Error::shape(
                "infonce",
                format!("q {:?}, k {:?}, queue {:?}", qv.shape(), kv.shape(), nv.shape()),
            ));
        }
        if t.is_nan() || t <= 0.0 {
            return Err(Error::config(format!("infonce temperature must be > 0, got {t}")));
        }
        if let Some(m) = &exclude
            && m.len() != b * nv.shape()[0]
        {
            return Err(Error::shape(
                "infonce",
                format!("exclusion mask of {} for {b} x {} logits", m.len(), nv.shape()[0]),
            ));
        }
        if !qv.is_cpu() {
            let shape = InfoNceShape {
                rows: b,
                queue_len: nv.shape()[0],
                dim: d,
            };
            let (loss, saved) = cuda::forward(qv, kv, nv, exclude.as_deref(), &shape, t)?;
            return Ok(self.record("infonce_masked", loss, &[q, k, queue], move |ctx| {
                let want = [ctx.needs_grad(0), ctx.needs_grad(1), ctx.needs_grad(2)];
                let inputs = [ctx.input(0), ctx.input(1), ctx.input(2)];
                cuda::backward(inputs, &saved, ctx.grad, &shape, t, want)
            }));
        }
        let dtype = qv.dtype();
        let (loss, probs) = with_cpu_dtype!("infonce", [qv, kv, nv], T => {
            cpu::forward(qv.as_slice::<T>()?, kv.as_slice::<T>()?, nv.as_slice::<T>()?, d, t, exclude.as_deref())
        });
        Ok(self.record("infonce_masked", Tensor::full(vec![1], loss, dtype), &[q, k, queue], move |ctx| {
            let (q, k, n) = (ctx.input(0), ctx.input(1), ctx.input(2));
            let scale = ctx.grad.scalar()?;
            with_cpu_dtype!("infonce backward", [q, k, n], T => {
                let g = cpu::backward(q.as_slice::<T>()?, k.as_slice::<T>()?, n.as_slice::<T>()?, d, t, &probs, scale);
                Ok(vec![
                    Some(Tensor::cpu(q.shape().to_vec(), g.dq)),
                    Some(Tensor::cpu(k.shape().to_vec(), g.dk)),
                    Some(Tensor::cpu(n.shape().to_vec(), g.dqueue)),
                ])
            })
        }))
    }
}
