//! Optimizers with exactly torch.optim's update rules, and a cosine schedule with warm-up.
//!
//! - SGD: `g = grad + wd p`; `buf = g` on the first step, else `buf = momentum buf + g`;
//!   `p -= lr buf` (dampening 0, no Nesterov, as the thesis' MoCo settings).
//! - Adam: `g = grad + wd p` (L2 added to the gradient, as torch.optim.Adam);
//!   `m = b1 m + (1-b1) g`, `v = b2 v + (1-b2) g^2`;
//!   `p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)`.
//! - AdamW: `p *= 1 - lr wd` first, then Adam with no weight decay in the gradient.

use serde::{Deserialize, Serialize};

use crate::device::cuda::CudaStorage;
use crate::device::cuda::optim::StepRule;
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::tensor::{Element, Storage, Tensor};
use crate::with_cpu_dtype;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum OptimizerKind {
    Sgd {
        momentum: f64,
        weight_decay: f64,
    },
    Adam {
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
    AdamW {
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
}

/// An error unless the learning rate is positive and the weight decay non-negative, both
/// finite: the checks every training configuration makes before any step.
pub fn check_rates(lr: f64, weight_decay: f64) -> Result<()> {
    if !(lr.is_finite() && lr > 0.0) {
        return Err(Error::config(format!("the learning rate must be positive, got {lr}")));
    }
    if !(weight_decay.is_finite() && weight_decay >= 0.0) {
        return Err(Error::config(format!("weight decay must be >= 0, got {weight_decay}")));
    }
    Ok(())
}

impl OptimizerKind {
    pub fn sgd(momentum: f64, weight_decay: f64) -> Self {
        OptimizerKind::Sgd { momentum, weight_decay }
    }
    pub fn adam(weight_decay: f64) -> Self {
        OptimizerKind::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }
    pub fn adamw(weight_decay: f64) -> Self {
        OptimizerKind::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }
}

impl OptimizerKind {
    /// What the fused CUDA launch applies at 1-based step `step` with rate `lr`; `first`: the
    /// state buffers are fresh (SGD's momentum buffer then starts as the update itself).
    pub fn step_rule(&self, lr: f64, step: u64, first: bool) -> StepRule {
        match *self {
            OptimizerKind::Sgd { momentum, weight_decay } => StepRule::Sgd {
                lr,
                momentum,
                weight_decay,
                first,
            },
            OptimizerKind::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
            }
            | OptimizerKind::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => StepRule::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled: matches!(self, OptimizerKind::AdamW { .. }),
                step,
            },
        }
    }
}

/// An optimizer and its per-parameter state (momentum buffers, moments), in store order.
#[derive(Clone, Debug)]
pub struct Optimizer {
    pub kind: OptimizerKind,
    pub step: u64,
    /// SGD: momentum buffer; Adam(W): first moment.
    pub state1: Vec<Option<Tensor>>,
    /// Adam(W): second moment.
    pub state2: Vec<Option<Tensor>>,
}

struct Hyper {
    lr: f64,
    kind: OptimizerKind,
    step: u64,
}

fn update<T: Element>(h: &Hyper, p: &mut [T], g: &[T], s1: &mut [T], s2: &mut [T], first: bool) {
    match h.kind {
        OptimizerKind::Sgd { momentum, weight_decay } => {
            for i in 0..p.len() {
                let mut d = g[i].as_f64() + weight_decay * p[i].as_f64();
                if momentum != 0.0 {
                    d = if first { d } else { momentum * s1[i].as_f64() + d };
                    s1[i] = T::of(d);
                }
                p[i] = T::of(p[i].as_f64() - h.lr * d);
            }
        }
        OptimizerKind::Adam {
            beta1,
            beta2,
            eps,
            weight_decay,
        }
        | OptimizerKind::AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
        } => {
            let decoupled = matches!(h.kind, OptimizerKind::AdamW { .. });
            let t = h.step as i32;
            let (bc1, bc2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
            for i in 0..p.len() {
                let mut pv = p[i].as_f64();
                let mut d = g[i].as_f64();
                if decoupled {
                    pv *= 1.0 - h.lr * weight_decay;
                } else {
                    d += weight_decay * pv;
                }
                let m = beta1 * s1[i].as_f64() + (1.0 - beta1) * d;
                let v = beta2 * s2[i].as_f64() + (1.0 - beta2) * d * d;
                s1[i] = T::of(m);
                s2[i] = T::of(v);
                p[i] = T::of(pv - h.lr / bc1 * m / (v.sqrt() / bc2.sqrt() + eps));
            }
        }
    }
}

impl Optimizer {
    pub fn new(kind: OptimizerKind) -> Optimizer {
        Optimizer {
            kind,
            step: 0,
            state1: Vec::new(),
            state2: Vec::new(),
        }
    }

    /// One update of every parameter that has a gradient, at learning rate `lr`.
    pub fn step(&mut self, store: &mut ParamStore, lr: f64) -> Result<()> {
        let n = store.len();
        if self.state1.is_empty() {
            self.state1 = vec![None; n];
            self.state2 = vec![None; n];
        }
        if self.state1.len() != n {
            return Err(Error::config(format!(
                "optimizer state holds {} parameters, the model {n}",
                self.state1.len()
            )));
        }
        self.step += 1;
        if store.params().iter().any(|p| !p.value.is_cpu()) {
            return self.step_cuda(store, lr);
        }
        let h = Hyper {
            lr,
            kind: self.kind,
            step: self.step,
        };
        for (i, param) in store.params_mut().iter_mut().enumerate() {
            let Some(grad) = &param.grad else { continue };
            let first = self.state1[i].is_none();
            let s1 =
                self.state1[i].get_or_insert_with(|| Tensor::zeros(param.value.shape().to_vec(), param.value.dtype()));
            // SGD keeps one buffer; Adam(W) a second moment as well.
            let mut s2 = match self.kind {
                OptimizerKind::Sgd { .. } => None,
                _ => Some(
                    self.state2[i]
                        .get_or_insert_with(|| Tensor::zeros(param.value.shape().to_vec(), param.value.dtype())),
                ),
            };
            let value = &mut param.value;
            with_cpu_dtype!("optimizer step", [grad], T => {
                let g = grad.as_slice::<T>()?;
                let s2 = match s2.as_mut() {
                    Some(t) => t.data_mut::<T>()?,
                    None => &mut [],
                };
                update::<T>(&h, value.data_mut::<T>()?, g, s1.data_mut::<T>()?, s2, first);
            });
        }
        Ok(())
    }
}

impl Optimizer {
    /// The same optimizer with its state on `device` (the parameters' device).
    pub fn to_device(&self, device: &crate::device::Device) -> Result<Optimizer> {
        let move_all = |states: &[Option<Tensor>]| -> Result<Vec<Option<Tensor>>> {
            states
                .iter()
                .map(|t| t.as_ref().map(|t| t.to_device(device)).transpose())
                .collect()
        };
        Ok(Optimizer {
            kind: self.kind,
            step: self.step,
            state1: move_all(&self.state1)?,
            state2: move_all(&self.state2)?,
        })
    }

    /// The CUDA step: every parameter with a gradient updated by fused multi-tensor launches
    /// (`kernels/optim.cu`), state buffers allocated on the device at the first step.
    fn step_cuda(&mut self, store: &mut ParamStore, lr: f64) -> Result<()> {
        use crate::device::cuda::optim::{TensorSlot, multi_tensor_calls};

        let two_moments = !matches!(self.kind, OptimizerKind::Sgd { .. });
        // SGD's momentum buffers start as the first update: fresh ones go in launches of their own.
        let mut fresh = Vec::new();
        let mut warm = Vec::new();
        let mut device = None;
        for (i, param) in store.params_mut().iter_mut().enumerate() {
            let Some(grad) = &param.grad else { continue };
            let g = cuda_operand(&param.name, "gradient", grad)?;
            let first = self.state1[i].is_none();
            let dev = g.device();
            let zeros = || -> Result<Tensor> {
                Ok(Tensor::from_storage(
                    param.value.shape().to_vec(),
                    Storage::Cuda(CudaStorage::zeros(&dev, param.value.numel())?),
                ))
            };
            if first {
                self.state1[i] = Some(zeros()?);
                if two_moments {
                    self.state2[i] = Some(zeros()?);
                }
            }
            let state_ptr = |t: &mut Option<Tensor>| -> Result<u64> {
                match t.as_mut().and_then(Tensor::cuda_storage_mut) {
                    Some(s) => s.device_ptr_mut(),
                    None => Ok(0),
                }
            };
            let slot = TensorSlot {
                grad: g.device_ptr(),
                len: param.value.numel(),
                state1: state_ptr(&mut self.state1[i])?,
                state2: state_ptr(&mut self.state2[i])?,
                param: param
                    .value
                    .cuda_storage_mut()
                    .ok_or_else(|| {
                        Error::Device(format!(
                            "{}: the parameter is on the CPU, its gradient on CUDA",
                            param.name
                        ))
                    })?
                    .device_ptr_mut()?,
            };
            if grad.shape() != param.value.shape() {
                return Err(Error::shape(
                    "optimizer step",
                    format!(
                        "{}: gradient {:?} for a parameter {:?}",
                        param.name,
                        grad.shape(),
                        param.value.shape()
                    ),
                ));
            }
            if first {
                fresh.push(slot)
            } else {
                warm.push(slot)
            };
            device.get_or_insert(dev);
        }
        let Some(device) = device else { return Ok(()) };
        let mut calls = Vec::new();
        for (slots, first) in [(&fresh, true), (&warm, false)] {
            let rule = self.kind.step_rule(lr, self.step, first);
            calls.extend(multi_tensor_calls(slots, &rule)?);
        }
        // SAFETY: every address belongs to a CUDA tensor of the store or of this optimizer,
        // holding `len` values (shapes checked above), alive until the stream runs the launches
        // because the store and the optimizer keep them.
        unsafe { device.run(&calls) }
    }
}

/// The CUDA storage of an optimizer operand, or an error naming the parameter.
fn cuda_operand<'a>(name: &str, what: &str, t: &'a Tensor) -> Result<&'a CudaStorage> {
    t.cuda_storage()
        .ok_or_else(|| Error::Device(format!("{name}: the {what} is on the CPU, the parameter on CUDA")))
}

/// Learning rate per step: linear warm-up from `base/warmup` to `base`, then constant or a
/// cosine decay to `min_lr` at `total_steps`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub base_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub min_lr: f64,
    pub cosine: bool,
}

impl LrSchedule {
    pub fn constant(base_lr: f64) -> Self {
        LrSchedule {
            base_lr,
            warmup_steps: 0,
            total_steps: 0,
            min_lr: 0.0,
            cosine: false,
        }
    }

    pub fn cosine(base_lr: f64, warmup_steps: u64, total_steps: u64) -> Self {
        LrSchedule {
            base_lr,
            warmup_steps,
            total_steps,
            min_lr: 0.0,
            cosine: true,
        }
    }

    /// The rate for 0-based step `step`.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        if !self.cosine || self.total_steps <= self.warmup_steps {
            return self.base_lr;
        }
        let progress = ((step - self.warmup_steps) as f64 / (self.total_steps - self.warmup_steps) as f64).min(1.0);
        self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

impl Optimizer {
    /// The state as named tensors (`{prefix}m/{param}`, `{prefix}v/{param}`) for a checkpoint;
    /// the step count goes in the metadata.
    pub fn state_tensors(&self, store: &ParamStore, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, p) in store.params().iter().enumerate() {
            if let Some(Some(t)) = self.state1.get(i) {
                out.push((format!("{prefix}m/{}", p.name), t.clone()));
            }
            if let Some(Some(t)) = self.state2.get(i) {
                out.push((format!("{prefix}v/{}", p.name), t.clone()));
            }
        }
        out
    }

    /// Restores the state written by [`Optimizer::state_tensors`] for the parameters of `store`.
    pub fn load_state(
        &mut self,
        store: &ParamStore,
        tensors: &std::collections::BTreeMap<String, Tensor>,
        prefix: &str,
        step: u64,
    ) -> Result<()> {
        self.step = step;
        self.state1 = vec![None; store.len()];
        self.state2 = vec![None; store.len()];
        for (i, p) in store.params().iter().enumerate() {
            for (slot, key) in [(&mut self.state1, "m"), (&mut self.state2, "v")] {
                if let Some(t) = tensors.get(&format!("{prefix}{key}/{}", p.name)) {
                    if t.shape() != p.value.shape() {
                        return Err(Error::config(format!(
                            "optimizer state {key}/{} has shape {:?}, the parameter {:?}",
                            p.name,
                            t.shape(),
                            p.value.shape()
                        )));
                    }
                    slot[i] = Some(t.to_device(&p.value.device())?);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_min() {
        let s = LrSchedule::cosine(1.0, 4, 14);
        assert!((s.lr(0) - 0.25).abs() < 1e-12);
        assert!((s.lr(3) - 1.0).abs() < 1e-12);
        assert!((s.lr(4) - 1.0).abs() < 1e-12);
        assert!((s.lr(9) - 0.5).abs() < 1e-12);
        assert!(s.lr(14).abs() < 1e-12);
        assert!(s.lr(100).abs() < 1e-12);
    }
}
