//! The Local Region Contrast loss (thesis section 3.1.2).

/// For one image: the regions present in both views and, per region, `n` sampled pixel
/// indices in each view (row-major `y * W + x` within the image), drawn with replacement.
/// Region `k` owns `q[k*n..(k+1)*n]` and `p[k*n..(k+1)*n]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionSamples {
    /// The region label of each kept region, in increasing order.
    pub labels: Vec<u32>,
    /// Samples per region.
    pub n: usize,
    /// Pixel indices in the query view, `labels.len() * n` of them.
    pub q: Vec<u32>,
    /// Pixel indices in the positive (transformed) view, `labels.len() * n` of them.
    pub p: Vec<u32>,
}

impl RegionSamples {
    pub fn regions(&self) -> usize {
        self.labels.len()
    }
}

use num_traits::Zero;

use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};
use crate::with_cpu_dtype;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LocalLossConfig {
    /// Temperature tau_l (0.07 in the thesis).
    pub temperature: f64,
    /// Rescale each region mean to unit length before the dot products. The thesis takes the
    /// plain mean of unit pixel embeddings (off); on makes the logits true cosines.
    pub renormalize_means: bool,
    /// Normalise each sampled pixel embedding to unit length inside the loss (as
    /// `ops::normalize`, eps 1e-12), so that `f_q`, `f_p` may be the raw embeddings and the
    /// separate normalisation pass over every pixel disappears. Off: the inputs are taken as
    /// they are (the models normalise them with `l2_normalize`), and normalising is not repeated.
    pub normalize_pixels: bool,
}

impl Default for LocalLossConfig {
    fn default() -> Self {
        LocalLossConfig {
            temperature: 0.07,
            renormalize_means: false,
            normalize_pixels: false,
        }
    }
}

/// Checks the samples against the embeddings' shape: one entry per image, indices in range.
pub fn check_samples(f: &Tensor, samples: &[RegionSamples]) -> Result<[usize; 4]> {
    let dims = f.dims4("local_contrast")?;
    let [b, _, h, w] = dims;
    if samples.len() != b {
        return Err(Error::shape(
            "local_contrast",
            format!("{} sample sets for a batch of {b}", samples.len()),
        ));
    }
    for (i, s) in samples.iter().enumerate() {
        let want = s.labels.len() * s.n;
        if s.q.len() != want || s.p.len() != want || (s.n == 0 && !s.labels.is_empty()) {
            return Err(Error::shape(
                "local_contrast",
                format!(
                    "image {i}: {} regions x {} samples but {} q and {} p indices",
                    s.labels.len(),
                    s.n,
                    s.q.len(),
                    s.p.len()
                ),
            ));
        }
        if let Some(&bad) = s.q.iter().chain(&s.p).find(|&&p| p as usize >= h * w) {
            return Err(Error::shape(
                "local_contrast",
                format!("image {i}: pixel index {bad} outside {h}x{w}"),
            ));
        }
    }
    Ok(dims)
}

pub mod cpu {
    use super::*;

    use crate::ops::normalize::DEFAULT_EPS;

    /// The length of the embedding of pixel `p` (`f`: [D, H*W]).
    fn pixel_norm<T: Element>(f: &[T], d: usize, hw: usize, p: usize) -> f64 {
        (0..d).map(|e| f[e * hw + p].as_f64().powi(2)).sum::<f64>().sqrt()
    }

    /// Region means `[K, D]` of the sampled pixel embeddings of one image (`f`: [D, H*W]), each
    /// embedding first scaled to unit length when `normalize`.
    fn region_means<T: Element>(
        f: &[T],
        d: usize,
        hw: usize,
        idx: &[u32],
        k: usize,
        n: usize,
        normalize: bool,
    ) -> Vec<f64> {
        let mut m = vec![0.0; k * d];
        for r in 0..k {
            for &p in &idx[r * n..(r + 1) * n] {
                let p = p as usize;
                let scale = if normalize {
                    1.0 / pixel_norm(f, d, hw, p).max(DEFAULT_EPS)
                } else {
                    1.0
                };
                for e in 0..d {
                    m[r * d + e] += f[e * hw + p].as_f64() * scale;
                }
            }
            m[r * d..(r + 1) * d].iter_mut().for_each(|v| *v /= n as f64);
        }
        m
    }

    /// Adds to the gradient `g` at pixel `p` the contribution `v` of one sample (the gradient of
    /// the sample's normalised or plain embedding), through the normalisation when `normalize`:
    /// `(v - y (y . v)) / |x|`, or `v / eps` where the norm is clamped (as `ops::normalize`).
    #[allow(clippy::too_many_arguments)]
    fn add_sample_grad<T: Element>(g: &mut [T], f: &[T], d: usize, hw: usize, p: usize, v: &[f64], normalize: bool) {
        if !normalize {
            for e in 0..d {
                g[e * hw + p] += T::of(v[e]);
            }
            return;
        }
        let norm = pixel_norm(f, d, hw, p);
        if norm > DEFAULT_EPS {
            let y = |e: usize| f[e * hw + p].as_f64() / norm;
            let dot: f64 = (0..d).map(|e| y(e) * v[e]).sum();
            for e in 0..d {
                g[e * hw + p] += T::of((v[e] - y(e) * dot) / norm);
            }
        } else {
            for e in 0..d {
                g[e * hw + p] += T::of(v[e] / DEFAULT_EPS);
            }
        }
    }

    fn normalize_rows(m: &mut [f64], d: usize) -> Vec<f64> {
        m.chunks_mut(d)
            .map(|row| {
                let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
                row.iter_mut().for_each(|v| *v /= norm);
                norm
            })
            .collect()
    }

    /// Backward of row normalisation: `dm = (du - u (u . du)) / norm`.
    fn normalize_rows_backward(u: &[f64], du: &mut [f64], norms: &[f64], d: usize) {
        for ((ur, dr), &norm) in u.chunks(d).zip(du.chunks_mut(d)).zip(norms) {
            let dot: f64 = ur.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
            dr.iter_mut().zip(ur).for_each(|(g, &uv)| *g = (*g - uv * dot) / norm);
        }
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// Loss of one image and, when `grads` is given, `scale * dL/df` added into it.
    #[allow(clippy::too_many_arguments)]
    pub fn image_loss<T: Element>(
        fq: &[T],
        fp: &[T],
        d: usize,
        hw: usize,
        s: &RegionSamples,
        cfg: &LocalLossConfig,
        scale: f64,
        grads: Option<(&mut [T], &mut [T])>,
    ) -> f64 {
        let (k, n, t) = (s.labels.len(), s.n, cfg.temperature);
        let mut a = region_means(fq, d, hw, &s.q, k, n, cfg.normalize_pixels);
        let mut b = region_means(fp, d, hw, &s.p, k, n, cfg.normalize_pixels);
        let (na, nb) = if cfg.renormalize_means {
            (normalize_rows(&mut a, d), normalize_rows(&mut b, d))
        } else {
            (Vec::new(), Vec::new())
        };
        let (row_a, row_b) = (|i: usize| &a[i * d..(i + 1) * d], |i: usize| &b[i * d..(i + 1) * d]);
        let mut loss = 0.0;
        // Softmax weights of every k1 over its 2K-1 denominator terms: [qq (k2 != k1) | qp].
        let mut w_qq = vec![0.0; k * k];
        let mut w_qp = vec![0.0; k * k];
        for k1 in 0..k {
            let mut m = f64::NEG_INFINITY;
            for k2 in 0..k {
                let lqp = dot(row_a(k1), row_b(k2)) / t;
                w_qp[k1 * k + k2] = lqp;
                m = m.max(lqp);
                if k2 != k1 {
                    let lqq = dot(row_a(k1), row_a(k2)) / t;
                    w_qq[k1 * k + k2] = lqq;
                    m = m.max(lqq);
                }
            }
            let mut z = 0.0;
            for k2 in 0..k {
                w_qp[k1 * k + k2] = (w_qp[k1 * k + k2] - m).exp();
                z += w_qp[k1 * k + k2];
                if k2 != k1 {
                    w_qq[k1 * k + k2] = (w_qq[k1 * k + k2] - m).exp();
                    z += w_qq[k1 * k + k2];
                }
            }
            let pos = dot(row_a(k1), row_b(k1)) / t;
            loss += m + z.ln() - pos;
            for k2 in 0..k {
                w_qp[k1 * k + k2] /= z;
                w_qq[k1 * k + k2] /= z;
            }
        }
        let loss = loss / k as f64;
        let Some((gq, gp)) = grads else { return loss };
        // dL/da and dL/db for the mean over k1 of the per-region losses.
        let c = scale / (k as f64 * t);
        let (mut da, mut db) = (vec![0.0; k * d], vec![0.0; k * d]);
        for k1 in 0..k {
            for k2 in 0..k {
                let wqp = w_qp[k1 * k + k2] - if k1 == k2 { 1.0 } else { 0.0 };
                let wqq = w_qq[k1 * k + k2];
                for e in 0..d {
                    da[k1 * d + e] += c * (wqp * b[k2 * d + e] + wqq * a[k2 * d + e]);
                    db[k2 * d + e] += c * wqp * a[k1 * d + e];
                    da[k2 * d + e] += c * wqq * a[k1 * d + e];
                }
            }
        }
        if cfg.renormalize_means {
            normalize_rows_backward(&a, &mut da, &na, d);
            normalize_rows_backward(&b, &mut db, &nb, d);
        }
        // Each sample contributes 1/N of its region mean; duplicates accumulate.
        let inv_n = 1.0 / n as f64;
        da.iter_mut().chain(db.iter_mut()).for_each(|v| *v *= inv_n);
        for r in 0..k {
            for j in 0..n {
                let (pq, pp) = (s.q[r * n + j] as usize, s.p[r * n + j] as usize);
                add_sample_grad(gq, fq, d, hw, pq, &da[r * d..(r + 1) * d], cfg.normalize_pixels);
                add_sample_grad(gp, fp, d, hw, pp, &db[r * d..(r + 1) * d], cfg.normalize_pixels);
            }
        }
        loss
    }
}

impl Tape {
    /// LRC's local contrastive loss of pixel embeddings `f_q`, `f_p` ([B, D, H, W], expected to
    /// be unit vectors per pixel unless `cfg.normalize_pixels`) over the sampled regions of each
    /// image, averaged over the regions of an image and then over the images that have at least
    /// one region. On CUDA tensors it runs the fused kernels of `kernels/local_contrast.cu`.
    pub fn local_contrast_loss(
        &mut self,
        fq: Var,
        fp: Var,
        samples: &[RegionSamples],
        cfg: LocalLossConfig,
    ) -> Result<Var> {
        let _range = crate::profile::range("local_contrast_loss");
        let (qv, pv) = (self.value(fq), self.value(fp));
        if qv.shape() != pv.shape() {
            return Err(Error::shape(
                "local_contrast",
                format!("f_q {:?} vs f_p {:?}", qv.shape(), pv.shape()),
            ));
        }
        let [_, d, h, w] = check_samples(qv, samples)?;
        if cfg.temperature.is_nan() || cfg.temperature <= 0.0 {
            return Err(Error::config(format!(
                "local loss temperature must be > 0, got {}",
                cfg.temperature
            )));
        }
        if !qv.is_cpu() {
            return cuda::record(self, fq, fp, [qv.shape()[0], d, h, w], samples, cfg);
        }
        let hw = h * w;
        let counted = samples.iter().filter(|s| !s.labels.is_empty()).count();
        let dtype = qv.dtype();
        let loss = with_cpu_dtype!("local_contrast", [qv, pv], T => {
            let (q, p) = (qv.as_slice::<T>()?, pv.as_slice::<T>()?);
            samples.iter().enumerate().filter(|(_, s)| !s.labels.is_empty()).map(|(i, s)| {
                let sl = i * d * hw..(i + 1) * d * hw;
                cpu::image_loss(&q[sl.clone()], &p[sl], d, hw, s, &cfg, 0.0, None)
            }).sum::<f64>() / counted.max(1) as f64
        });
        let samples = samples.to_vec();
        Ok(self.record("local_contrast_loss", Tensor::full(vec![1], loss, dtype), &[fq, fp], move |ctx| {
            let (q, p) = (ctx.input(0), ctx.input(1));
            let scale = ctx.grad.scalar()? / counted.max(1) as f64;
            with_cpu_dtype!("local_contrast backward", [q, p], T => {
                let (qs, ps) = (q.as_slice::<T>()?, p.as_slice::<T>()?);
                let mut gq = vec![T::zero(); qs.len()];
                let mut gp = vec![T::zero(); ps.len()];
                for (i, s) in samples.iter().enumerate().filter(|(_, s)| !s.labels.is_empty()) {
                    let sl = i * d * hw..(i + 1) * d * hw;
                    cpu::image_loss(&qs[sl.clone()], &ps[sl.clone()], d, hw, s, &cfg, scale, Some((&mut gq[sl.clone()], &mut gp[sl])));
                }
                Ok(vec![Some(Tensor::cpu(q.shape().to_vec(), gq)), Some(Tensor::cpu(p.shape().to_vec(), gp))])
            })
        }))
    }
}

/// The CUDA branch: the fused kernels of `device::cuda::local_contrast`.
mod cuda {
    use super::super::conv::cuda::{storage, tensor};
    use super::{LocalLossConfig, RegionSamples};
    use crate::autograd::{Tape, Var};
    use crate::device::cuda::local_contrast::{local_contrast_backward, local_contrast_forward};
    use crate::error::Result;

    pub(super) fn record(
        tape: &mut Tape,
        fq: Var,
        fp: Var,
        dims: [usize; 4],
        samples: &[RegionSamples],
        cfg: LocalLossConfig,
    ) -> Result<Var> {
        const OP: &str = "local_contrast";
        let qs = storage(OP, "f_q", tape.value(fq))?;
        let ps = storage(OP, "f_p", tape.value(fp))?;
        let (loss, saved) = local_contrast_forward(qs, ps, dims, samples, &cfg)?;
        let shape = dims.to_vec();
        Ok(
            tape.record("local_contrast_loss", tensor(vec![1], loss), &[fq, fp], move |ctx| {
                const BACKWARD: &str = "local_contrast backward";
                let qs = storage(BACKWARD, "f_q", ctx.input(0))?;
                let ps = storage(BACKWARD, "f_p", ctx.input(1))?;
                let gs = storage(BACKWARD, "loss gradient", ctx.grad)?;
                let (gq, gp) = local_contrast_backward(&saved, qs, ps, gs)?;
                Ok(vec![Some(tensor(shape.clone(), gq)), Some(tensor(shape.clone(), gp))])
            }),
        )
    }
}
