//! Transposed 2-D convolution (torch.nn.ConvTranspose2d), weights (C_in, C_out, kh, kw).
//!
//! A transposed convolution is the adjoint of a convolution, so the CPU path reuses the
//! convolution kernels on the "mirror" geometry: the convolution that maps the output shape
//! back to the input shape with the same weight tensor read as OIHW (O = C_in, I = C_out).

use num_traits::Zero;

use super::conv::{self, ConvGeom};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::with_cpu_dtype;

/// The convolution whose backward-data is this transposed convolution's forward.
pub fn mirror_geom(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<ConvGeom> {
    let [n, c_in, h, wd] = x.dims4("conv_transpose2d")?;
    let [wc_in, c_out, kh, kw] = w.dims4("conv_transpose2d weight")?;
    if wc_in != c_in {
        return Err(Error::shape(
            "conv_transpose2d",
            format!("input has {c_in} channels, weight {:?} expects {wc_in}", w.shape()),
        ));
    }
    if stride == 0 || (h - 1) * stride + kh <= 2 * pad || (wd - 1) * stride + kw <= 2 * pad {
        return Err(Error::shape(
            "conv_transpose2d",
            format!("stride {stride} pad {pad} kernel {kh}x{kw} on {h}x{wd}"),
        ));
    }
    let h_out = (h - 1) * stride + kh - 2 * pad;
    let w_out = (wd - 1) * stride + kw - 2 * pad;
    Ok(ConvGeom {
        n,
        c_in: c_out,
        h: h_out,
        w: w_out,
        c_out: c_in,
        kh,
        kw,
        stride,
        pad,
    })
}

pub fn forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, pad: usize) -> Result<Tensor> {
    let g = mirror_geom(x, w, stride, pad)?;
    if let Some(b) = b
        && b.shape() != [g.c_in]
    {
        return Err(Error::shape(
            "conv_transpose2d",
            format!("bias shape {:?}, expected [{}]", b.shape(), g.c_in),
        ));
    }
    if !x.is_cpu() {
        return cuda::forward(&g, x, w, b);
    }
    with_cpu_dtype!("conv_transpose2d", [x, w], T => {
        let mut y = conv::cpu::backward_data(&g, x.as_slice::<T>()?, w.as_slice::<T>()?);
        if let Some(b) = b {
            let b = b.as_slice::<T>()?;
            let hw = g.h * g.w;
            for (i, plane) in y.chunks_mut(hw).enumerate() {
                let v = b[i % g.c_in];
                plane.iter_mut().for_each(|y| *y += v);
            }
        }
        Ok(Tensor::cpu(vec![g.n, g.c_in, g.h, g.w], y))
    })
}

/// dL/dx: a plain convolution of dL/dy with the same weights.
pub fn backward_data(g: &ConvGeom, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !dy.is_cpu() {
        return cuda::backward_data(g, dy, w);
    }
    let shape = vec![g.n, g.c_out, g.h_out(), g.w_out()];
    with_cpu_dtype!("conv_transpose2d backward", [dy, w], T => {
        Ok(Tensor::cpu(shape, conv::cpu::forward(g, dy.as_slice::<T>()?, w.as_slice::<T>()?, None)))
    })
}

/// dL/dw (C_in, C_out, kh, kw) and dL/db (C_out).
pub fn backward_weight(g: &ConvGeom, x: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    if !dy.is_cpu() {
        return cuda::backward_weight(g, x, dy);
    }
    with_cpu_dtype!("conv_transpose2d backward", [x, dy], T => {
        let (dw, _) = conv::cpu::backward_weight(g, dy.as_slice::<T>()?, x.as_slice::<T>()?);
        let hw = g.h * g.w;
        let mut db = vec![T::zero(); g.c_in];
        for (i, plane) in dy.as_slice::<T>()?.chunks(hw).enumerate() {
            db[i % g.c_in] += plane.iter().copied().sum::<T>();
        }
        Ok((Tensor::cpu(vec![g.c_out, g.c_in, g.kh, g.kw], dw), Tensor::cpu(vec![g.c_in], db)))
    })
}

/// The CUDA branch: the transposed-convolution kernels of `device::cuda::conv`.
mod cuda {
    use super::super::conv::cuda::{storage, tensor};
    use super::ConvGeom;
    use crate::device::cuda::conv::{self, ConvTransposeGeom};
    use crate::error::Result;
    use crate::tensor::Tensor;

    /// The transposed convolution whose mirror convolution is `g`.
    fn geom(g: &ConvGeom) -> ConvTransposeGeom {
        ConvTransposeGeom {
            n: g.n,
            c_in: g.c_out,
            h: g.h_out(),
            w: g.w_out(),
            c_out: g.c_in,
            kh: g.kh,
            kw: g.kw,
            stride: g.stride,
            pad: g.pad,
        }
    }

    pub(super) fn forward(g: &ConvGeom, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        const OP: &str = "conv_transpose2d";
        let (xs, ws) = (storage(OP, "input", x)?, storage(OP, "weight", w)?);
        let bs = b.map(|b| storage(OP, "bias", b)).transpose()?;
        let y = conv::conv_transpose2d_forward(&geom(g), xs, ws, bs, xs.device().conv_algo())?;
        Ok(tensor(vec![g.n, g.c_in, g.h, g.w], y))
    }

    pub(super) fn backward_data(g: &ConvGeom, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
        const OP: &str = "conv_transpose2d backward";
        let (dys, ws) = (storage(OP, "output gradient", dy)?, storage(OP, "weight", w)?);
        let dx = conv::conv_transpose2d_backward_data(&geom(g), dys, ws, dys.device().conv_algo())?;
        Ok(tensor(vec![g.n, g.c_out, g.h_out(), g.w_out()], dx))
    }

    pub(super) fn backward_weight(g: &ConvGeom, x: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        const OP: &str = "conv_transpose2d backward";
        let (xs, dys) = (storage(OP, "input", x)?, storage(OP, "output gradient", dy)?);
        let (dw, db) = conv::conv_transpose2d_backward_weight(&geom(g), xs, dys, dys.device().conv_algo())?;
        Ok((tensor(vec![g.c_out, g.c_in, g.kh, g.kw], dw), tensor(vec![g.c_in], db)))
    }
}

impl Tape {
    /// `torch.nn.functional.conv_transpose2d(x, w, b, stride, padding)`.
    pub fn conv_transpose2d(&mut self, x: Var, w: Var, b: Option<Var>, stride: usize, pad: usize) -> Result<Var> {
        let _range = crate::profile::range("conv_transpose2d");
        let g = mirror_geom(self.value(x), self.value(w), stride, pad)?;
        let out = forward(self.value(x), self.value(w), b.map(|b| self.value(b)), stride, pad)?;
        let inputs: Vec<Var> = [Some(x), Some(w), b].into_iter().flatten().collect();
        Ok(self.record("conv_transpose2d", out, &inputs, move |ctx| {
            let gx = if ctx.needs_grad(0) {
                Some(backward_data(&g, ctx.grad, ctx.input(1))?)
            } else {
                None
            };
            let has_bias = ctx.input_count() == 3;
            let (gw, gb) = if ctx.needs_grad(1) || (has_bias && ctx.needs_grad(2)) {
                let (gw, gb) = backward_weight(&g, ctx.input(0), ctx.grad)?;
                (Some(gw), Some(gb))
            } else {
                (None, None)
            };
            let mut grads = vec![gx, gw];
            if has_bias {
                grads.push(gb);
            }
            Ok(grads)
        }))
    }
}
