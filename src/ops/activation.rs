//! ReLU and LeakyReLU.

use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::tensor::{Element, Tensor};
use crate::with_cpu_dtype;

pub mod cpu {
    use super::*;

    /// `max(x, 0)` for slope 0 (ReLU), else `x` if `x > 0` and `slope * x` otherwise.
    pub fn forward<T: Element>(x: &[T], slope: T) -> Vec<T> {
        x.iter().map(|&v| if v > T::zero() { v } else { v * slope }).collect()
    }

    /// The gradient is taken from the input's sign (PyTorch's choice at exactly 0: slope).
    pub fn backward<T: Element>(x: &[T], dy: &[T], slope: T) -> Vec<T> {
        x.iter()
            .zip(dy)
            .map(|(&v, &g)| if v > T::zero() { g } else { g * slope })
            .collect()
    }
}

pub fn forward(x: &Tensor, slope: f64) -> Result<Tensor> {
    if let Some(xs) = x.cuda_storage() {
        let y = crate::device::cuda::norm::activation_forward(xs, slope)?;
        return Ok(super::conv::cuda::tensor(x.shape().to_vec(), y));
    }
    with_cpu_dtype!("relu", [x], T => Ok(Tensor::cpu(x.shape().to_vec(), cpu::forward(x.as_slice::<T>()?, T::of(slope)))))
}

pub fn backward(x: &Tensor, dy: &Tensor, slope: f64) -> Result<Tensor> {
    if let Some(xs) = x.cuda_storage() {
        let dys = super::conv::cuda::storage("leaky_relu backward", "output gradient", dy)?;
        let dx = crate::device::cuda::norm::activation_backward(xs, dys, slope)?;
        return Ok(super::conv::cuda::tensor(x.shape().to_vec(), dx));
    }
    with_cpu_dtype!("relu backward", [x, dy], T => {
        Ok(Tensor::cpu(x.shape().to_vec(), cpu::backward(x.as_slice::<T>()?, dy.as_slice::<T>()?, T::of(slope))))
    })
}

impl Tape {
    pub fn relu(&mut self, x: Var) -> Result<Var> {
        self.leaky_relu(x, 0.0)
    }

    /// `torch.nn.functional.leaky_relu(x, slope)`; slope 0 is ReLU.
    pub fn leaky_relu(&mut self, x: Var, slope: f64) -> Result<Var> {
        let _range = crate::profile::range("leaky_relu");
        let out = forward(self.value(x), slope)?;
        Ok(self.record("leaky_relu", out, &[x], move |ctx| {
            Ok(vec![Some(backward(ctx.input(0), ctx.grad, slope)?)])
        }))
    }
}
