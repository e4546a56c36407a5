//! 2x2 max pooling (stride 2, floor on odd sizes as torch) and global average pooling.

use num_traits::Zero;
use rayon::prelude::*;

use crate::autograd::{Tape, Var};
use crate::device::cuda::CudaStorage;
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};
use crate::with_cpu_dtype;

/// Per output element of a 2x2 max pool, the flat input index of its maximum: on the host for
/// a CPU input, on the device (one u32 word per output element) for a CUDA input, so that the
/// backward of a CUDA pool needs no copy.
#[derive(Clone, Debug)]
pub enum PoolArgmax {
    Host(Vec<u32>),
    Cuda(CudaStorage),
}

impl PoolArgmax {
    /// The indices on the host (copied from the device for a CUDA pool).
    pub fn to_vec(&self) -> Result<Vec<u32>> {
        match self {
            PoolArgmax::Host(v) => Ok(v.clone()),
            // The words reinterpreted in memory, never moved through float registers.
            PoolArgmax::Cuda(s) => Ok(bytemuck::cast_slice::<f32, u32>(&s.to_host()?).to_vec()),
        }
    }
}

/// Returns the pooled tensor and, per output element, the flat input index of its maximum.
pub fn max_pool2x2(x: &Tensor) -> Result<(Tensor, PoolArgmax)> {
    let [n, c, h, w] = x.dims4("max_pool2d")?;
    if h < 2 || w < 2 {
        return Err(Error::shape(
            "max_pool2d",
            format!("input {h}x{w} is smaller than the 2x2 window"),
        ));
    }
    if !x.is_cpu() {
        return cuda::max_pool2x2(x);
    }
    let (ho, wo) = (h / 2, w / 2);
    with_cpu_dtype!("max_pool2d", [x], T => {
        let xs = x.as_slice::<T>()?;
        let mut y = vec![T::zero(); n * c * ho * wo];
        let mut arg = vec![0u32; n * c * ho * wo];
        // One plane per task: every output element reads its own window only.
        let planes = y.par_chunks_mut(ho * wo).zip(arg.par_chunks_mut(ho * wo));
        planes.enumerate().for_each(|(p, (y, arg))| {
            let plane = &xs[p * h * w..(p + 1) * h * w];
            for oy in 0..ho {
                let rows = [&plane[2 * oy * w..][..2 * wo], &plane[(2 * oy + 1) * w..][..2 * wo]];
                for ox in 0..wo {
                    let (mut best, mut at) = (rows[0][2 * ox], 2 * oy * w + 2 * ox);
                    for (dy, dx) in [(0, 1), (1, 0), (1, 1)] {
                        let v = rows[dy][2 * ox + dx];
                        // Strict comparison keeps the first maximum in raster order; NaN propagates.
                        if v > best || v.is_nan() {
                            (best, at) = (v, (2 * oy + dy) * w + 2 * ox + dx);
                        }
                    }
                    y[oy * wo + ox] = best;
                    arg[oy * wo + ox] = (p * h * w + at) as u32;
                }
            }
        });
        Ok((Tensor::cpu(vec![n, c, ho, wo], y), PoolArgmax::Host(arg)))
    })
}

/// The input gradient of [`max_pool2x2`]: each output gradient goes to its window's maximum.
pub fn max_pool2x2_backward(input_shape: &[usize], dy: &Tensor, argmax: &PoolArgmax) -> Result<Tensor> {
    let argmax = match argmax {
        PoolArgmax::Cuda(a) => return cuda::max_pool2x2_backward(input_shape, dy, a),
        PoolArgmax::Host(a) => a,
    };
    with_cpu_dtype!("max_pool2d backward", [dy], T => {
        let mut dx = vec![T::zero(); input_shape.iter().product()];
        for (&i, &g) in argmax.iter().zip(dy.as_slice::<T>()?) {
            dx[i as usize] += g;
        }
        Ok(Tensor::cpu(input_shape.to_vec(), dx))
    })
}

/// `[N, C, H, W] -> [N, C]`, the mean over each plane.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let [n, c, h, w] = x.dims4("global_avg_pool")?;
    if let Some(s) = x.cuda_storage() {
        let out = crate::device::cuda::pool::global_avg_pool(s, n * c, h * w)?;
        return Ok(cuda::tensor(vec![n, c], out));
    }
    with_cpu_dtype!("global_avg_pool", [x], T => {
        let y: Vec<T> = x.as_slice::<T>()?.chunks(h * w).map(|p| p.iter().copied().sum::<T>() / T::of((h * w) as f64)).collect();
        Ok(Tensor::cpu(vec![n, c], y))
    })
}

/// The input gradient of [`global_avg_pool`]: each plane filled with its gradient / (H * W).
pub fn global_avg_pool_backward(input_shape: &[usize], dy: &Tensor) -> Result<Tensor> {
    let [n, c, h, w] = dims4_of("global_avg_pool backward", input_shape)?;
    let hw = h * w;
    if let Some(s) = dy.cuda_storage() {
        let dx = crate::device::cuda::pool::global_avg_pool_backward(s, n * c, hw)?;
        return Ok(cuda::tensor(input_shape.to_vec(), dx));
    }
    with_cpu_dtype!("global_avg_pool backward", [dy], T => {
        let scale = T::of(1.0 / hw as f64);
        let dx: Vec<T> = dy.as_slice::<T>()?.iter().flat_map(|&g| std::iter::repeat_n(g * scale, hw)).collect();
        Ok(Tensor::cpu(input_shape.to_vec(), dx))
    })
}

fn dims4_of(op: &'static str, shape: &[usize]) -> Result<[usize; 4]> {
    match *shape {
        [n, c, h, w] => Ok([n, c, h, w]),
        _ => Err(Error::shape(op, format!("expected an NCHW shape, got {shape:?}"))),
    }
}

/// The CUDA branch: the kernels of `device::cuda::pool`.
mod cuda {
    use super::{PoolArgmax, dims4_of};
    use crate::device::cuda::{CudaStorage, pool as kernels};
    use crate::error::Result;
    pub(super) use crate::ops::conv::cuda::{storage, tensor};
    use crate::tensor::Tensor;

    pub(super) fn max_pool2x2(x: &Tensor) -> Result<(Tensor, PoolArgmax)> {
        let [n, c, h, w] = x.dims4("max_pool2d")?;
        let s = storage("max_pool2d", "input", x)?;
        let (y, argmax) = kernels::max_pool2x2(s, n * c, h, w)?;
        Ok((tensor(vec![n, c, h / 2, w / 2], y), PoolArgmax::Cuda(argmax)))
    }

    pub(super) fn max_pool2x2_backward(input_shape: &[usize], dy: &Tensor, argmax: &CudaStorage) -> Result<Tensor> {
        const OP: &str = "max_pool2d backward";
        let [n, c, h, w] = dims4_of(OP, input_shape)?;
        let s = storage(OP, "output gradient", dy)?;
        let dx = kernels::max_pool2x2_backward(s, argmax, n * c, h, w)?;
        Ok(tensor(input_shape.to_vec(), dx))
    }
}

impl Tape {
    /// `torch.nn.functional.max_pool2d(x, 2)`.
    pub fn max_pool2x2(&mut self, x: Var) -> Result<Var> {
        let _range = crate::profile::range("max_pool2x2");
        let (y, argmax) = max_pool2x2(self.value(x))?;
        let shape = self.value(x).shape().to_vec();
        Ok(self.record("max_pool2x2", y, &[x], move |ctx| {
            Ok(vec![Some(max_pool2x2_backward(&shape, ctx.grad, &argmax)?)])
        }))
    }

    /// Mean over H and W: `[N, C, H, W] -> [N, C]`.
    pub fn global_avg_pool(&mut self, x: Var) -> Result<Var> {
        let _range = crate::profile::range("global_avg_pool");
        let y = global_avg_pool(self.value(x))?;
        let shape = self.value(x).shape().to_vec();
        Ok(self.record("global_avg_pool", y, &[x], move |ctx| {
            Ok(vec![Some(global_avg_pool_backward(&shape, ctx.grad)?)])
        }))
    }
}
