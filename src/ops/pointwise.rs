//! Elementwise arithmetic and full reductions.

use crate::autograd::{Tape, Var};
use crate::device::cuda::CudaStorage;
use crate::device::cuda::pointwise::{self as device_pointwise, UnaryOp};
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};
use crate::with_cpu_dtype;

fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(op, format!("{:?} vs {:?}", a.shape(), b.shape())));
    }
    Ok(())
}

fn zip_map<T: Element>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> Vec<T> {
    a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
}

#[derive(Clone, Copy)]
enum Binary {
    Add,
    Sub,
    Mul,
}

fn binary(op: &'static str, a: &Tensor, b: &Tensor, kind: Binary) -> Result<Tensor> {
    same_shape(op, a, b)?;
    if !a.is_cpu() || !b.is_cpu() {
        return cuda::binary(op, a, b, kind);
    }
    with_cpu_dtype!(op, [a, b], T => {
        let (xa, xb) = (a.as_slice::<T>()?, b.as_slice::<T>()?);
        let out = match kind {
            Binary::Add => zip_map(xa, xb, |x, y| x + y),
            Binary::Sub => zip_map(xa, xb, |x, y| x - y),
            Binary::Mul => zip_map(xa, xb, |x, y| x * y),
        };
        Ok(Tensor::cpu(a.shape().to_vec(), out))
    })
}

fn unary(op: &'static str, a: &Tensor, f: impl Fn(f64) -> f64) -> Result<Tensor> {
    with_cpu_dtype!(op, [a], T => {
        let out: Vec<T> = a.as_slice::<T>()?.iter().map(|&x| T::of(f(x.as_f64()))).collect();
        Ok(Tensor::cpu(a.shape().to_vec(), out))
    })
}

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("add", a, b, Binary::Add)
}

pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("sub", a, b, Binary::Sub)
}

pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("mul", a, b, Binary::Mul)
}

/// `a * factor`.
pub fn scale(a: &Tensor, factor: f64) -> Result<Tensor> {
    if !a.is_cpu() {
        return cuda::unary(UnaryOp::Scale, a, factor);
    }
    unary("scale", a, |x| x * factor)
}

/// `a + offset`.
pub fn add_scalar(a: &Tensor, offset: f64) -> Result<Tensor> {
    if !a.is_cpu() {
        return cuda::unary(UnaryOp::AddScalar, a, offset);
    }
    unary("add_scalar", a, |x| x + offset)
}

/// `acc + g`, reusing the storage of `acc` on CUDA (copied first if another tensor shares it):
/// how gradients of a value used more than once are added up.
pub fn accumulate(acc: Tensor, g: &Tensor) -> Result<Tensor> {
    if acc.is_cpu() && g.is_cpu() {
        return add(&acc, g);
    }
    same_shape("accumulate", &acc, g)?;
    cuda::accumulate(acc, g)
}

/// Ones with the shape, dtype and device of `a` (filled on the device, no copy).
pub fn ones_like(a: &Tensor) -> Result<Tensor> {
    match a.cuda_storage() {
        Some(s) => Ok(cuda::tensor(
            a.shape().to_vec(),
            CudaStorage::full(&s.device(), a.numel(), 1.0)?,
        )),
        None => Ok(Tensor::full(a.shape().to_vec(), 1.0, a.dtype())),
    }
}

/// Sum of all elements, as a tensor of shape `[1]` (accumulated in f64 on the CPU; on CUDA in f32
/// by a fixed-order two-pass reduction, deterministic).
pub fn sum_all(a: &Tensor) -> Result<Tensor> {
    if let Some(s) = a.cuda_storage() {
        return Ok(cuda::tensor(vec![1], device_pointwise::sum_all(s)?));
    }
    with_cpu_dtype!("sum", [a], T => {
        let s: f64 = a.as_slice::<T>()?.iter().map(|x| x.as_f64()).sum();
        Ok(Tensor::cpu(vec![1], vec![T::of(s)]))
    })
}

/// A tensor of `shape` filled with `factor` times the single value of `scalar` (the backward of a
/// reduction). On CUDA the value is read by the kernel, never copied to the host.
pub fn broadcast_scalar(scalar: &Tensor, shape: &[usize], factor: f64) -> Result<Tensor> {
    if let Some(s) = scalar.cuda_storage() {
        if scalar.numel() != 1 {
            return Err(Error::shape(
                "broadcast_scalar",
                format!("tensor of shape {:?} is not a scalar", scalar.shape()),
            ));
        }
        let out = device_pointwise::broadcast_scalar(s, crate::tensor::numel(shape), factor)?;
        return Ok(cuda::tensor(shape.to_vec(), out));
    }
    let v = scalar.scalar()? * factor;
    Tensor::full(shape.to_vec(), v, scalar.dtype()).to_device(&scalar.device())
}

/// The CUDA branch: the kernels of `device::cuda::pointwise`.
mod cuda {
    use super::Binary;
    use crate::device::cuda::pointwise::{self as kernels, BinaryOp, UnaryOp};
    use crate::error::{Error, Result};
    pub(super) use crate::ops::conv::cuda::{storage, tensor};
    use crate::tensor::Tensor;

    pub(super) fn binary(op: &'static str, a: &Tensor, b: &Tensor, kind: Binary) -> Result<Tensor> {
        let sa = storage(op, "first operand", a)?;
        let sb = storage(op, "second operand", b)?;
        let kind = match kind {
            Binary::Add => BinaryOp::Add,
            Binary::Sub => BinaryOp::Sub,
            Binary::Mul => BinaryOp::Mul,
        };
        Ok(tensor(a.shape().to_vec(), kernels::binary(kind, sa, sb)?))
    }

    pub(super) fn unary(op: UnaryOp, a: &Tensor, alpha: f64) -> Result<Tensor> {
        let s = storage(op.name(), "operand", a)?;
        Ok(tensor(a.shape().to_vec(), kernels::unary(op, s, alpha)?))
    }

    pub(super) fn accumulate(mut acc: Tensor, g: &Tensor) -> Result<Tensor> {
        let sg = storage("accumulate", "addend", g)?;
        let sacc = acc
            .cuda_storage_mut()
            .ok_or_else(|| Error::Device("accumulate: the sum is on the CPU, the addend on CUDA".into()))?;
        kernels::add_assign(sacc, sg)?;
        Ok(acc)
    }
}

impl Tape {
    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        let _range = crate::profile::range("add");
        let out = add(self.value(a), self.value(b))?;
        Ok(self.record("add", out, &[a, b], |ctx| {
            Ok(vec![Some(ctx.grad.clone()), Some(ctx.grad.clone())])
        }))
    }

    pub fn sub(&mut self, a: Var, b: Var) -> Result<Var> {
        let _range = crate::profile::range("sub");
        let out = sub(self.value(a), self.value(b))?;
        Ok(self.record("sub", out, &[a, b], |ctx| {
            Ok(vec![Some(ctx.grad.clone()), Some(scale(ctx.grad, -1.0)?)])
        }))
    }

    pub fn mul(&mut self, a: Var, b: Var) -> Result<Var> {
        let _range = crate::profile::range("mul");
        let out = mul(self.value(a), self.value(b))?;
        Ok(self.record("mul", out, &[a, b], |ctx| {
            let ga = if ctx.needs_grad(0) {
                Some(mul(ctx.grad, ctx.input(1))?)
            } else {
                None
            };
            let gb = if ctx.needs_grad(1) {
                Some(mul(ctx.grad, ctx.input(0))?)
            } else {
                None
            };
            Ok(vec![ga, gb])
        }))
    }

    pub fn scale(&mut self, a: Var, factor: f64) -> Result<Var> {
        let _range = crate::profile::range("scale");
        let out = scale(self.value(a), factor)?;
        Ok(self.record("scale", out, &[a], move |ctx| Ok(vec![Some(scale(ctx.grad, factor)?)])))
    }

    pub fn add_scalar(&mut self, a: Var, offset: f64) -> Result<Var> {
        let _range = crate::profile::range("add_scalar");
        let out = add_scalar(self.value(a), offset)?;
        Ok(self.record("add_scalar", out, &[a], |ctx| Ok(vec![Some(ctx.grad.clone())])))
    }

    /// Sum of all elements, shape `[1]`.
    pub fn sum(&mut self, a: Var) -> Result<Var> {
        let _range = crate::profile::range("sum");
        let out = sum_all(self.value(a))?;
        Ok(self.record("sum", out, &[a], |ctx| {
            Ok(vec![Some(broadcast_scalar(ctx.grad, ctx.input(0).shape(), 1.0)?)])
        }))
    }

    /// Mean of all elements, shape `[1]`.
    pub fn mean(&mut self, a: Var) -> Result<Var> {
        let n = self.value(a).numel() as f64;
        let s = self.sum(a)?;
        self.scale(s, 1.0 / n)
    }
}
