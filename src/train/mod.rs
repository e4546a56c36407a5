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
