//! Training pipelines: MoCo and LRC pre-training, fine-tuning, and their shared machinery.

pub mod batch;
pub mod finetune;
pub mod infer;
pub mod log;
pub mod moco;
pub mod pretrain;
pub mod readback;
pub mod resume;
pub mod upload;

/// An error when a training loss stops being finite, at `step` (counted from 1): training on
/// would only spread NaN through the weights and save them.
pub(crate) fn check_loss(value: f64, step: u64) -> crate::Result<()> {
    if value.is_finite() {
        return Ok(());
    }
    Err(crate::Error::config(format!(
        "the loss became {value} at step {step}: lower the learning rate, or look for non-finite \
         values in the store's images"
    )))
}

/// The second half of a training step, queued: the backward pass of `loss`, the gradients of
/// the parameters `bound` to `tape` into `params`, and the optimizer's update at `lr`. Takes the
/// tape, which shares the parameters' storage: dropped before the update, it lets the optimizer
/// update them in place instead of copying each one first.
pub(crate) fn backward_and_update(
    tape: crate::autograd::Tape,
    loss: crate::autograd::Var,
    bound: &crate::nn::Bound,
    params: &mut crate::nn::ParamStore,
    optimizer: &mut crate::optim::Optimizer,
    lr: f64,
) -> crate::Result<()> {
    {
        let _r = crate::profile::range("phase.backward");
        let grads = tape.backward(loss)?;
        params.zero_grad();
        params.accumulate_grads(&grads, bound)?;
    }
    drop(tape);
    let _r = crate::profile::range("phase.optimizer");
    optimizer.step(params, lr)
}
