//! Elementwise arithmetic and full reductions.

use crate::autograd::{Tape, Var};
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
        return Err(super::cuda_missing(op));
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
    if !a.is_cpu() {
        return Err(super::cuda_missing(op));
    }
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
    unary("scale", a, |x| x * factor)
}

/// `a + offset`.
pub fn add_scalar(a: &Tensor, offset: f64) -> Result<Tensor> {
    unary("add_scalar", a, |x| x + offset)
}

pub fn ones_like(a: &Tensor) -> Result<Tensor> {
    Tensor::full(a.shape().to_vec(), 1.0, a.dtype()).to_device(&a.device())
}

/// Sum of all elements, as a tensor of shape [1] (accumulated in f64).
pub fn sum_all(a: &Tensor) -> Result<Tensor> {
    if !a.is_cpu() {
        return Err(super::cuda_missing("sum"));
    }
    with_cpu_dtype!("sum", [a], T => {
        let s: f64 = a.as_slice::<T>()?.iter().map(|x| x.as_f64()).sum();
        Ok(Tensor::cpu(vec![1], vec![T::of(s)]))
    })
}

/// A tensor of `shape` filled with the single value of `scalar` (the backward of a reduction).
pub fn broadcast_scalar(scalar: &Tensor, shape: &[usize], factor: f64) -> Result<Tensor> {
    let v = scalar.scalar()? * factor;
    Tensor::full(shape.to_vec(), v, scalar.dtype()).to_device(&scalar.device())
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

    /// Sum of all elements, shape [1].
    pub fn sum(&mut self, a: Var) -> Result<Var> {
        let _range = crate::profile::range("sum");
        let out = sum_all(self.value(a))?;
        Ok(self.record("sum", out, &[a], |ctx| {
            Ok(vec![Some(broadcast_scalar(ctx.grad, ctx.input(0).shape(), 1.0)?)])
        }))
    }

    /// Mean of all elements, shape [1].
    pub fn mean(&mut self, a: Var) -> Result<Var> {
        let n = self.value(a).numel() as f64;
        let s = self.sum(a)?;
        self.scale(s, 1.0 / n)
    }
}
