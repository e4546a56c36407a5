//! 2-D convolution (cross-correlation, as torch.nn.Conv2d), NCHW, weights OIHW.
//!
//! The CPU path lowers each sample to a GEMM through im2col; 1x1 stride-1 convolutions skip the
//! lowering. `im2col`/`col2im` are shared with the transposed convolution.

use rayon::prelude::*;

use super::gemm::gemm_into;
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};
use crate::with_cpu_dtype;

/// Geometry of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvGeom {
    pub fn h_out(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }
    pub fn w_out(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    /// Multiply-adds of the forward pass (each of the two backward passes costs the same).
    pub fn macs(&self) -> usize {
        self.n * self.c_out * self.h_out() * self.w_out() * self.c_in * self.kh * self.kw
    }

    pub fn of(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<ConvGeom> {
        let [n, c_in, h, wd] = x.dims4("conv2d")?;
        let [c_out, wc, kh, kw] = w.dims4("conv2d weight")?;
        if wc != c_in {
            return Err(Error::shape(
                "conv2d",
                format!("input has {c_in} channels, weight {:?} expects {wc}", w.shape()),
            ));
        }
        if stride == 0 || h + 2 * pad < kh || wd + 2 * pad < kw {
            return Err(Error::shape(
                "conv2d",
                format!("kernel {kh}x{kw} stride {stride} pad {pad} does not fit input {h}x{wd}"),
            ));
        }
        Ok(ConvGeom {
            n,
            c_in,
            h,
            w: wd,
            c_out,
            kh,
            kw,
            stride,
            pad,
        })
    }
}

/// Unfolds one (C, H, W) image into a (C*kh*kw, Ho*Wo) matrix of receptive fields.
#[allow(clippy::too_many_arguments)]
pub(crate) fn im2col<T: Element>(
    x: &[T],
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
    col: &mut [T],
) {
    for ci in 0..c {
        for ky in 0..kh {
            for kx in 0..kw {
                let row = (ci * kh + ky) * kw + kx;
                let dst = &mut col[row * ho * wo..(row + 1) * ho * wo];
                for oy in 0..ho {
                    let iy = (oy * stride + ky) as isize - pad as isize;
                    let line = &mut dst[oy * wo..(oy + 1) * wo];
                    if iy < 0 || iy >= h as isize {
                        line.fill(T::zero());
                        continue;
                    }
                    let src = &x[(ci * h + iy as usize) * w..(ci * h + iy as usize + 1) * w];
                    for (ox, v) in line.iter_mut().enumerate() {
                        let ix = (ox * stride + kx) as isize - pad as isize;
                        *v = if ix < 0 || ix >= w as isize {
                            T::zero()
                        } else {
                            src[ix as usize]
                        };
                    }
                }
            }
        }
    }
}

/// The adjoint of `im2col`: adds each column entry back into the (C, H, W) image.
#[allow(clippy::too_many_arguments)]
pub(crate) fn col2im<T: Element>(
    col: &[T],
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
    x: &mut [T],
) {
    for ci in 0..c {
        for ky in 0..kh {
            for kx in 0..kw {
                let row = (ci * kh + ky) * kw + kx;
                let src = &col[row * ho * wo..(row + 1) * ho * wo];
                for oy in 0..ho {
                    let iy = (oy * stride + ky) as isize - pad as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let dst = &mut x[(ci * h + iy as usize) * w..(ci * h + iy as usize + 1) * w];
                    for ox in 0..wo {
                        let ix = (ox * stride + kx) as isize - pad as isize;
                        if ix >= 0 && ix < w as isize {
                            dst[ix as usize] += src[oy * wo + ox];
                        }
                    }
                }
            }
        }
    }
}

/// Whether per-sample work should run in parallel (else the GEMM inside parallelises).
fn per_sample_parallel(n: usize) -> bool {
    n >= rayon::current_num_threads()
}

pub mod cpu {
    use super::*;

    pub fn forward<T: Element>(g: &ConvGeom, x: &[T], w: &[T], b: Option<&[T]>) -> Vec<T> {
        let (ho, wo) = (g.h_out(), g.w_out());
        let (k, hw) = (g.c_in * g.kh * g.kw, ho * wo);
        let mut y = vec![T::zero(); g.n * g.c_out * hw];
        let outer = per_sample_parallel(g.n);
        let run = |(i, yi): (usize, &mut [T])| {
            let xi = &x[i * g.c_in * g.h * g.w..(i + 1) * g.c_in * g.h * g.w];
            if g.is_pointwise() {
                gemm_into(g.c_out, hw, k, w, false, xi, false, yi, false, !outer);
            } else {
                T::with_scratch(k * hw, |col| {
                    im2col(xi, g.c_in, g.h, g.w, g.kh, g.kw, g.stride, g.pad, ho, wo, col);
                    gemm_into(g.c_out, hw, k, w, false, col, false, yi, false, !outer);
                });
            }
            if let Some(b) = b {
                for (co, plane) in yi.chunks_mut(hw).enumerate() {
                    plane.iter_mut().for_each(|v| *v += b[co]);
                }
            }
        };
        if outer {
            y.par_chunks_mut(g.c_out * hw).enumerate().for_each(run);
        } else {
            y.chunks_mut(g.c_out * hw).enumerate().for_each(run);
        }
        y
    }

    /// dL/dx from dL/dy.
    pub fn backward_data<T: Element>(g: &ConvGeom, dy: &[T], w: &[T]) -> Vec<T> {
        let (ho, wo) = (g.h_out(), g.w_out());
        let (k, hw) = (g.c_in * g.kh * g.kw, ho * wo);
        let plane = g.c_in * g.h * g.w;
        let mut dx = vec![T::zero(); g.n * plane];
        let outer = per_sample_parallel(g.n);
        let run = |(i, dxi): (usize, &mut [T])| {
            let dyi = &dy[i * g.c_out * hw..(i + 1) * g.c_out * hw];
            if g.is_pointwise() {
                gemm_into(k, hw, g.c_out, w, true, dyi, false, dxi, false, !outer);
            } else {
                T::with_scratch(k * hw, |col| {
                    gemm_into(k, hw, g.c_out, w, true, dyi, false, col, false, !outer);
                    col2im(col, g.c_in, g.h, g.w, g.kh, g.kw, g.stride, g.pad, ho, wo, dxi);
                });
            }
        };
        if outer {
            dx.par_chunks_mut(plane).enumerate().for_each(run);
        } else {
            dx.chunks_mut(plane).enumerate().for_each(run);
        }
        dx
    }

    /// dL/dw (OIHW) and dL/db from dL/dy.
    pub fn backward_weight<T: Element>(g: &ConvGeom, x: &[T], dy: &[T]) -> (Vec<T>, Vec<T>) {
        let (ho, wo) = (g.h_out(), g.w_out());
        let (k, hw) = (g.c_in * g.kh * g.kw, ho * wo);
        let per_sample = |i: usize, parallel_gemm: bool| -> Vec<T> {
            let xi = &x[i * g.c_in * g.h * g.w..(i + 1) * g.c_in * g.h * g.w];
            let dyi = &dy[i * g.c_out * hw..(i + 1) * g.c_out * hw];
            let mut dw = vec![T::zero(); g.c_out * k];
            if g.is_pointwise() {
                gemm_into(g.c_out, k, hw, dyi, false, xi, true, &mut dw, false, parallel_gemm);
            } else {
                T::with_scratch(k * hw, |col| {
                    im2col(xi, g.c_in, g.h, g.w, g.kh, g.kw, g.stride, g.pad, ho, wo, col);
                    gemm_into(g.c_out, k, hw, dyi, false, col, true, &mut dw, false, parallel_gemm);
                });
            }
            dw
        };
        // Per-sample partials summed in sample order: the result does not depend on how rayon
        // schedules the work, so CPU training is bitwise reproducible (and resumable).
        let partials: Vec<Vec<T>> = if per_sample_parallel(g.n) {
            (0..g.n).into_par_iter().map(|i| per_sample(i, false)).collect()
        } else {
            (0..g.n).map(|i| per_sample(i, true)).collect()
        };
        let mut dw = vec![T::zero(); g.c_out * k];
        for part in &partials {
            dw.iter_mut().zip(part).for_each(|(x, y)| *x += *y);
        }
        let mut db = vec![T::zero(); g.c_out];
        for i in 0..g.n {
            for (co, d) in db.iter_mut().enumerate() {
                let plane = &dy[(i * g.c_out + co) * hw..(i * g.c_out + co + 1) * hw];
                *d += plane.iter().copied().sum::<T>();
            }
        }
        (dw, db)
    }
}

pub fn forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, pad: usize) -> Result<Tensor> {
    let g = ConvGeom::of(x, w, stride, pad)?;
    if let Some(b) = b
        && b.shape() != [g.c_out]
    {
        return Err(Error::shape(
            "conv2d",
            format!("bias shape {:?}, expected [{}]", b.shape(), g.c_out),
        ));
    }
    if !x.is_cpu() {
        return cuda::forward(&g, x, w, b);
    }
    let out_shape = vec![g.n, g.c_out, g.h_out(), g.w_out()];
    with_cpu_dtype!("conv2d", [x, w], T => {
        let b = match b { Some(b) => Some(b.as_slice::<T>()?), None => None };
        Ok(Tensor::cpu(out_shape, cpu::forward(&g, x.as_slice::<T>()?, w.as_slice::<T>()?, b)))
    })
}

pub fn backward_data(g: &ConvGeom, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !dy.is_cpu() {
        return cuda::backward_data(g, dy, w);
    }
    with_cpu_dtype!("conv2d backward", [dy, w], T => {
        Ok(Tensor::cpu(vec![g.n, g.c_in, g.h, g.w], cpu::backward_data(g, dy.as_slice::<T>()?, w.as_slice::<T>()?)))
    })
}

pub fn backward_weight(g: &ConvGeom, x: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    if !dy.is_cpu() {
        return cuda::backward_weight(g, x, dy);
    }
    with_cpu_dtype!("conv2d backward", [x, dy], T => {
        let (dw, db) = cpu::backward_weight(g, x.as_slice::<T>()?, dy.as_slice::<T>()?);
        Ok((Tensor::cpu(vec![g.c_out, g.c_in, g.kh, g.kw], dw), Tensor::cpu(vec![g.c_out], db)))
    })
}

/// The CUDA branch: the kernels of `device::cuda::conv`, with the device's convolution algorithm.
pub(super) mod cuda {
    use super::ConvGeom;
    use crate::device::cuda::{CudaStorage, conv};
    use crate::error::{Error, Result};
    use crate::tensor::{Storage, Tensor};

    /// The CUDA storage of an operand, or an error naming the operand left on the CPU.
    pub(in crate::ops) fn storage<'a>(op: &'static str, what: &str, t: &'a Tensor) -> Result<&'a CudaStorage> {
        t.cuda_storage()
            .ok_or_else(|| Error::Device(format!("{op}: the {what} is on the CPU, the other operands on CUDA")))
    }

    pub(in crate::ops) fn tensor(shape: Vec<usize>, s: CudaStorage) -> Tensor {
        Tensor::from_storage(shape, Storage::Cuda(s))
    }

    pub(super) fn forward(g: &ConvGeom, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let xs = storage("conv2d", "input", x)?;
        let ws = storage("conv2d", "weight", w)?;
        let bs = b.map(|b| storage("conv2d", "bias", b)).transpose()?;
        let y = conv::conv2d_forward(g, xs, ws, bs, xs.device().conv_algo())?;
        Ok(tensor(vec![g.n, g.c_out, g.h_out(), g.w_out()], y))
    }

    pub(super) fn backward_data(g: &ConvGeom, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
        let dys = storage("conv2d backward", "output gradient", dy)?;
        let ws = storage("conv2d backward", "weight", w)?;
        let dx = conv::conv2d_backward_data(g, dys, ws, dys.device().conv_algo())?;
        Ok(tensor(vec![g.n, g.c_in, g.h, g.w], dx))
    }

    pub(super) fn backward_weight(g: &ConvGeom, x: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        let xs = storage("conv2d backward", "input", x)?;
        let dys = storage("conv2d backward", "output gradient", dy)?;
        let (dw, db) = conv::conv2d_backward_weight(g, xs, dys, dys.device().conv_algo())?;
        Ok((tensor(vec![g.c_out, g.c_in, g.kh, g.kw], dw), tensor(vec![g.c_out], db)))
    }
}

impl Tape {
    /// `torch.nn.functional.conv2d(x, w, b, stride, padding)`.
    pub fn conv2d(&mut self, x: Var, w: Var, b: Option<Var>, stride: usize, pad: usize) -> Result<Var> {
        let _range = crate::profile::range("conv2d");
        let g = ConvGeom::of(self.value(x), self.value(w), stride, pad)?;
        let out = forward(self.value(x), self.value(w), b.map(|b| self.value(b)), stride, pad)?;
        let inputs: Vec<Var> = [Some(x), Some(w), b].into_iter().flatten().collect();
        Ok(self.record("conv2d", out, &inputs, move |ctx| {
            let gx = if ctx.needs_grad(0) {
                Some(backward_data(&g, ctx.grad, ctx.input(1))?)
            } else {
                None
            };
            let wants_w = ctx.needs_grad(1) || (ctx.input_count() == 3 && ctx.needs_grad(2));
            let (gw, gb) = if wants_w {
                let (gw, gb) = backward_weight(&g, ctx.input(0), ctx.grad)?;
                (Some(gw), Some(gb))
            } else {
                (None, None)
            };
            let mut grads = vec![gx, gw];
            if ctx.input_count() == 3 {
                grads.push(gb);
            }
            Ok(grads)
        }))
    }
}
