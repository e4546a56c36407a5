//! Named parameters and their gradients.

use std::collections::HashMap;
use std::ops::Index;

use crate::autograd::{Grads, Tape, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Index of a parameter in its [`ParamStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(usize);

impl ParamId {
    pub fn index(self) -> usize {
        self.0
    }
}

#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub value: Tensor,
    pub grad: Option<Tensor>,
}

/// The parameters of one model, in creation order, with PyTorch-style dotted names.
#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    params: Vec<Param>,
    by_name: HashMap<String, usize>,
}

/// The tape variables of a store's parameters for one forward pass.
pub struct Bound(Vec<Var>);

impl Index<ParamId> for Bound {
    type Output = Var;
    fn index(&self, id: ParamId) -> &Var {
        &self.0[id.0]
    }
}

impl Bound {
    pub fn vars(&self) -> &[Var] {
        &self.0
    }
}

impl ParamStore {
    pub fn new() -> ParamStore {
        ParamStore::default()
    }

    /// Registers a parameter. Names are unique: models build them from fixed prefixes.
    pub fn add(&mut self, name: impl Into<String>, value: Tensor) -> ParamId {
        let name = name.into();
        assert!(!self.by_name.contains_key(&name), "duplicate parameter name {name}");
        self.by_name.insert(name.clone(), self.params.len());
        self.params.push(Param {
            name,
            value,
            grad: None,
        });
        ParamId(self.params.len() - 1)
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    pub fn params_mut(&mut self) -> &mut [Param] {
        &mut self.params
    }

    pub fn value(&self, id: ParamId) -> &Tensor {
        &self.params[id.0].value
    }

    pub fn id(&self, name: &str) -> Option<ParamId> {
        self.by_name.get(name).map(|&i| ParamId(i))
    }

    pub fn get(&self, name: &str) -> Option<&Param> {
        self.by_name.get(name).map(|&i| &self.params[i])
    }

    /// Total number of scalars.
    pub fn num_elements(&self) -> usize {
        self.params.iter().map(|p| p.value.numel()).sum()
    }

    /// Puts every parameter on the tape as a leaf that receives a gradient.
    pub fn bind(&self, tape: &mut Tape) -> Bound {
        Bound(self.params.iter().map(|p| tape.leaf(p.value.clone())).collect())
    }

    /// Puts every parameter on the tape as a constant (frozen weights, momentum encoders).
    pub fn bind_frozen(&self, tape: &mut Tape) -> Bound {
        Bound(self.params.iter().map(|p| tape.constant(p.value.clone())).collect())
    }

    /// Adds the gradients of one backward pass to the stored gradients.
    pub fn accumulate_grads(&mut self, grads: &Grads, bound: &Bound) -> Result<()> {
        for (p, &v) in self.params.iter_mut().zip(&bound.0) {
            if let Some(g) = grads.get(v) {
                p.grad = Some(match p.grad.take() {
                    None => g.clone(),
                    Some(acc) => crate::ops::pointwise::accumulate(acc, g)?,
                });
            }
        }
        Ok(())
    }

    pub fn zero_grad(&mut self) {
        self.params.iter_mut().for_each(|p| p.grad = None);
    }

    /// A copy with every parameter converted (f64 for gradient checks).
    pub fn to_dtype(&self, dtype: DType) -> Result<ParamStore> {
        let mut out = self.clone();
        for p in &mut out.params {
            p.value = p.value.to_dtype(dtype)?;
            p.grad = None;
        }
        Ok(out)
    }

    pub fn to_device(&self, device: &Device) -> Result<ParamStore> {
        let mut out = self.clone();
        for p in &mut out.params {
            p.value = p.value.to_device(device)?;
            p.grad = None;
        }
        Ok(out)
    }

    /// A copy on `device` for training there: CUDA parameters hold f32, the CPU keeps the dtype.
    pub fn for_device(&self, device: &Device) -> Result<ParamStore> {
        match device {
            Device::Cpu => self.to_device(device),
            Device::Cuda(_) => self.to_dtype(DType::F32)?.to_device(device),
        }
    }

    /// Copies values from `other` for every parameter whose name, after replacing the prefix
    /// `from` by `to`, exists here; shapes must agree. Returns how many were copied.
    pub fn load_matching(&mut self, other: &ParamStore, from: &str, to: &str) -> Result<usize> {
        self.load_named(other.params.iter().map(|p| (p.name.as_str(), &p.value)), from, to)
    }

    /// Like [`ParamStore::load_matching`] from any named tensors (e.g. a checkpoint).
    pub fn load_named<'a>(
        &mut self,
        tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
        from: &str,
        to: &str,
    ) -> Result<usize> {
        let mut copied = 0;
        for (src_name, src) in tensors {
            let Some(rest) = src_name.strip_prefix(from) else {
                continue;
            };
            let name = format!("{to}{rest}");
            let Some(&i) = self.by_name.get(&name) else { continue };
            let dst = &mut self.params[i];
            if dst.value.shape() != src.shape() {
                return Err(Error::shape(
                    "load",
                    format!(
                        "{name}: shape {:?} here, {:?} in the source",
                        dst.value.shape(),
                        src.shape()
                    ),
                ));
            }
            dst.value = src.to_dtype(dst.value.dtype())?.to_device(&dst.value.device())?;
            copied += 1;
        }
        Ok(copied)
    }
}

/// A [`Bound`] over variables already on a tape, in store order (gradient checks make the
/// parameters leaves themselves).
pub fn bound_from_vars(vars: Vec<Var>) -> Bound {
    Bound(vars)
}
