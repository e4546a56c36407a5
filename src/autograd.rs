//! A tape-based reverse-mode autograd with no global state.
//!
//! A [`Tape`] owns the values of one forward pass. Ops append a value and, when gradients are
//! wanted, a backward closure; [`Tape::backward`] walks the tape in reverse. Model parameters
//! enter as leaves (see [`crate::nn::ParamStore::bind`]); a tape made by [`Tape::no_grad`]
//! records no closures at all (inference, the MoCo key encoder).

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A handle to a value on a tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(usize);

impl Var {
    pub fn index(self) -> usize {
        self.0
    }
}

/// What a backward closure sees: its inputs' and output's values and the output's gradient.
pub struct BackwardCtx<'a> {
    tape: &'a Tape,
    inputs: &'a [Var],
    output: Var,
    pub grad: &'a Tensor,
}

impl BackwardCtx<'_> {
    pub fn input(&self, i: usize) -> &Tensor {
        &self.tape.values[self.inputs[i].0]
    }

    pub fn output(&self) -> &Tensor {
        &self.tape.values[self.output.0]
    }

    pub fn input_count(&self) -> usize {
        self.inputs.len()
    }

    /// Whether input `i` needs a gradient; ops skip the work for those that do not.
    pub fn needs_grad(&self, i: usize) -> bool {
        self.tape.requires_grad[self.inputs[i].0]
    }
}

type BackwardFn = Box<dyn Fn(&BackwardCtx) -> Result<Vec<Option<Tensor>>>>;

struct Node {
    op: &'static str,
    inputs: Vec<Var>,
    backward: BackwardFn,
}

pub struct Tape {
    grad_enabled: bool,
    values: Vec<Tensor>,
    requires_grad: Vec<bool>,
    nodes: Vec<Option<Node>>,
}

impl Default for Tape {
    fn default() -> Self {
        Tape::new()
    }
}

impl Tape {
    /// A tape that records backward closures.
    pub fn new() -> Tape {
        Tape {
            grad_enabled: true,
            values: Vec::new(),
            requires_grad: Vec::new(),
            nodes: Vec::new(),
        }
    }

    /// A tape that only evaluates: no closures, no saved activations beyond the values.
    pub fn no_grad() -> Tape {
        Tape {
            grad_enabled: false,
            ..Tape::new()
        }
    }

    pub fn grad_enabled(&self) -> bool {
        self.grad_enabled
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// A value that never receives a gradient (inputs, targets).
    pub fn constant(&mut self, value: Tensor) -> Var {
        self.push(value, false, None)
    }

    /// A value whose gradient is wanted (parameters, or inputs under a gradient check).
    pub fn leaf(&mut self, value: Tensor) -> Var {
        let wants = self.grad_enabled;
        self.push(value, wants, None)
    }

    pub fn value(&self, v: Var) -> &Tensor {
        &self.values[v.0]
    }

    pub fn requires_grad(&self, v: Var) -> bool {
        self.requires_grad[v.0]
    }

    fn push(&mut self, value: Tensor, requires_grad: bool, node: Option<Node>) -> Var {
        self.values.push(value);
        self.requires_grad.push(requires_grad);
        self.nodes.push(node);
        Var(self.values.len() - 1)
    }

    /// Appends the result of op `op` (its name in profiles). `backward` returns one optional gradient per input and is
    /// kept only when some input needs a gradient.
    pub fn record(
        &mut self,
        op: &'static str,
        value: Tensor,
        inputs: &[Var],
        backward: impl Fn(&BackwardCtx) -> Result<Vec<Option<Tensor>>> + 'static,
    ) -> Var {
        let needs = self.grad_enabled && inputs.iter().any(|v| self.requires_grad[v.0]);
        let node = needs.then(|| Node {
            op,
            inputs: inputs.to_vec(),
            backward: Box::new(backward),
        });
        self.push(value, needs, node)
    }

    /// Reverse-mode gradients of the scalar `loss` with respect to every leaf.
    pub fn backward(&self, loss: Var) -> Result<Grads> {
        let loss_value = &self.values[loss.0];
        if loss_value.numel() != 1 {
            return Err(Error::shape(
                "backward",
                format!("loss must be a scalar, got {:?}", loss_value.shape()),
            ));
        }
        if !self.requires_grad[loss.0] {
            return Err(Error::config(
                "backward: the loss does not depend on any leaf that needs a gradient",
            ));
        }
        let mut grads: Vec<Option<Tensor>> = vec![None; self.values.len()];
        grads[loss.0] = Some(crate::ops::pointwise::ones_like(loss_value)?);
        for i in (0..=loss.0).rev() {
            let Some(node) = &self.nodes[i] else { continue };
            let Some(grad) = grads[i].take() else { continue };
            let ctx = BackwardCtx {
                tape: self,
                inputs: &node.inputs,
                output: Var(i),
                grad: &grad,
            };
            let input_grads = {
                let _range = crate::profile::backward_range(node.op);
                (node.backward)(&ctx)?
            };
            debug_assert_eq!(input_grads.len(), node.inputs.len());
            for (input, g) in node.inputs.iter().zip(input_grads) {
                let Some(g) = g else { continue };
                if !self.requires_grad[input.0] {
                    continue;
                }
                if g.shape() != self.values[input.0].shape() {
                    return Err(Error::shape(
                        "backward",
                        format!(
                            "gradient of shape {:?} for a value of shape {:?}",
                            g.shape(),
                            self.values[input.0].shape()
                        ),
                    ));
                }
                grads[input.0] = Some(match grads[input.0].take() {
                    None => g,
                    Some(acc) => crate::ops::pointwise::accumulate(acc, &g)?,
                });
            }
        }
        // Keep only leaf gradients: intermediate ones were consumed above.
        for (i, g) in grads.iter_mut().enumerate() {
            if self.nodes[i].is_some() {
                *g = None;
            }
        }
        Ok(Grads { grads })
    }
}

/// The gradients of the leaves of one tape.
pub struct Grads {
    grads: Vec<Option<Tensor>>,
}

impl Grads {
    pub fn get(&self, v: Var) -> Option<&Tensor> {
        self.grads.get(v.0).and_then(|g| g.as_ref())
    }

    pub fn take(&mut self, v: Var) -> Option<Tensor> {
        self.grads.get_mut(v.0).and_then(|g| g.take())
    }
}
