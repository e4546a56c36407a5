//! Layers holding parameter ids, initialised as PyTorch's defaults.

use super::params::{Bound, ParamId, ParamStore};
use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::ops::instance_norm::{Activation, DEFAULT_EPS};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

/// PyTorch's default `kaiming_uniform_(a=sqrt(5))` and bias init both reduce to U(-b, b) with
/// `b = 1/sqrt(fan_in)`.
fn uniform_fan_in(shape: Vec<usize>, fan_in: usize, rng: &mut Rng) -> Tensor {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Tensor::uniform(shape, -bound, bound, DType::F32, rng)
}

/// `nn.Conv2d(c_in, c_out, k, stride, padding)`, weight `{prefix}.weight` (OIHW), bias `{prefix}.bias`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub weight: ParamId,
    pub bias: Option<ParamId>,
    pub stride: usize,
    pub pad: usize,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        bias: bool,
        rng: &mut Rng,
    ) -> Conv2d {
        let fan_in = c_in * k * k;
        let weight = store.add(
            format!("{prefix}.weight"),
            uniform_fan_in(vec![c_out, c_in, k, k], fan_in, rng),
        );
        let bias = bias.then(|| store.add(format!("{prefix}.bias"), uniform_fan_in(vec![c_out], fan_in, rng)));
        Conv2d {
            weight,
            bias,
            stride,
            pad,
        }
    }

    pub fn forward(&self, tape: &mut Tape, p: &Bound, x: Var) -> Result<Var> {
        tape.conv2d(x, p[self.weight], self.bias.map(|b| p[b]), self.stride, self.pad)
    }
}

/// `nn.ConvTranspose2d(c_in, c_out, k, stride)`, weight (C_in, C_out, k, k). PyTorch computes
/// its fan-in from dim 1 of the weight, so the bound is `1/sqrt(c_out * k * k)`.
#[derive(Clone, Debug)]
pub struct ConvTranspose2d {
    pub weight: ParamId,
    pub bias: ParamId,
    pub stride: usize,
}

impl ConvTranspose2d {
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        rng: &mut Rng,
    ) -> Self {
        let fan_in = c_out * k * k;
        let weight = store.add(
            format!("{prefix}.weight"),
            uniform_fan_in(vec![c_in, c_out, k, k], fan_in, rng),
        );
        let bias = store.add(format!("{prefix}.bias"), uniform_fan_in(vec![c_out], fan_in, rng));
        ConvTranspose2d { weight, bias, stride }
    }

    pub fn forward(&self, tape: &mut Tape, p: &Bound, x: Var) -> Result<Var> {
        tape.conv_transpose2d(x, p[self.weight], Some(p[self.bias]), self.stride, 0)
    }
}

/// `nn.InstanceNorm2d(c, affine=True)`: weight (gamma) 1, bias (beta) 0.
#[derive(Clone, Debug)]
pub struct InstanceNorm2d {
    pub weight: ParamId,
    pub bias: ParamId,
}

impl InstanceNorm2d {
    pub fn new(store: &mut ParamStore, prefix: &str, c: usize) -> Self {
        let weight = store.add(format!("{prefix}.weight"), Tensor::full(vec![c], 1.0, DType::F32));
        let bias = store.add(format!("{prefix}.bias"), Tensor::zeros(vec![c], DType::F32));
        InstanceNorm2d { weight, bias }
    }

    pub fn forward(&self, tape: &mut Tape, p: &Bound, x: Var) -> Result<Var> {
        tape.instance_norm(x, p[self.weight], p[self.bias], DEFAULT_EPS)
    }

    /// The normalisation followed by `act`, as one op.
    pub fn forward_act(&self, tape: &mut Tape, p: &Bound, x: Var, act: Activation) -> Result<Var> {
        tape.instance_norm_act(x, p[self.weight], p[self.bias], DEFAULT_EPS, act)
    }
}

/// `nn.Linear(d_in, d_out)`, weight [d_out, d_in].
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: ParamId,
    pub bias: ParamId,
}

impl Linear {
    pub fn new(store: &mut ParamStore, prefix: &str, d_in: usize, d_out: usize, rng: &mut Rng) -> Self {
        let weight = store.add(format!("{prefix}.weight"), uniform_fan_in(vec![d_out, d_in], d_in, rng));
        let bias = store.add(format!("{prefix}.bias"), uniform_fan_in(vec![d_out], d_in, rng));
        Linear { weight, bias }
    }

    pub fn forward(&self, tape: &mut Tape, p: &Bound, x: Var) -> Result<Var> {
        tape.linear(x, p[self.weight], Some(p[self.bias]))
    }
}
