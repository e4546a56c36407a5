//! Fully connected layer, as torch.nn.functional.linear: `y = x W^T + b`, W is [out, in].

use num_traits::Zero;

use super::gemm::{gemm_into, matmul_t};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::with_cpu_dtype;

pub fn forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let [n, d_in] = x.dims2("linear")?;
    let [d_out, wd_in] = w.dims2("linear weight")?;
    if wd_in != d_in {
        return Err(Error::shape(
            "linear",
            format!("input {:?} vs weight {:?}", x.shape(), w.shape()),
        ));
    }
    if let Some(b) = b
        && b.shape() != [d_out]
    {
        return Err(Error::shape(
            "linear",
            format!("bias {:?}, expected [{d_out}]", b.shape()),
        ));
    }
    if !x.is_cpu() {
        return cuda::forward(x, w, b, [n, d_in, d_out]);
    }
    with_cpu_dtype!("linear", [x, w], T => {
        let mut y = vec![T::zero(); n * d_out];
        if let Some(b) = b {
            let b = b.as_slice::<T>()?;
            y.chunks_mut(d_out).for_each(|row| row.copy_from_slice(b));
        }
        gemm_into(n, d_out, d_in, x.as_slice::<T>()?, false, w.as_slice::<T>()?, true, &mut y, true, true);
        Ok(Tensor::cpu(vec![n, d_out], y))
    })
}

/// Column sums of a [rows, cols] tensor (the bias gradient).
pub fn sum_rows(g: &Tensor) -> Result<Tensor> {
    let [rows, cols] = g.dims2("sum_rows")?;
    if !g.is_cpu() {
        return cuda::sum_rows(g, rows, cols);
    }
    with_cpu_dtype!("sum_rows", [g], T => {
        let mut s = vec![T::zero(); cols];
        for row in g.as_slice::<T>()?.chunks(cols) {
            s.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
        }
        Ok(Tensor::cpu(vec![cols], s))
    })
}

/// The CUDA branch: `device::cuda::gemm`.
mod cuda {
    use super::super::conv::cuda::{storage, tensor};
    use crate::device::cuda::gemm::{self, GemmAlgo};
    use crate::error::Result;
    use crate::tensor::Tensor;

    pub(super) fn forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>, [n, d_in, d_out]: [usize; 3]) -> Result<Tensor> {
        let xs = storage("linear", "input", x)?;
        let ws = storage("linear", "weight", w)?;
        let bs = b.map(|b| storage("linear", "bias", b)).transpose()?;
        let y = gemm::linear_forward(xs, ws, bs, n, d_in, d_out, GemmAlgo::DEFAULT)?;
        Ok(tensor(vec![n, d_out], y))
    }

    pub(super) fn sum_rows(g: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
        let gs = storage("sum_rows", "input", g)?;
        Ok(tensor(vec![cols], gemm::column_sums(gs, rows, cols)?))
    }
}

impl Tape {
    pub fn linear(&mut self, x: Var, w: Var, b: Option<Var>) -> Result<Var> {
        let _range = crate::profile::range("linear");
        let y = forward(self.value(x), self.value(w), b.map(|b| self.value(b)))?;
        let inputs: Vec<Var> = [Some(x), Some(w), b].into_iter().flatten().collect();
        Ok(self.record("linear", y, &inputs, |ctx| {
            let gx = if ctx.needs_grad(0) {
                Some(matmul_t(ctx.grad, false, ctx.input(1), false)?)
            } else {
                None
            };
            let gw = if ctx.needs_grad(1) {
                Some(matmul_t(ctx.grad, true, ctx.input(0), false)?)
            } else {
                None
            };
            let mut grads = vec![gx, gw];
            if ctx.input_count() == 3 {
                grads.push(Some(sum_rows(ctx.grad)?));
            }
            Ok(grads)
        }))
    }
}
