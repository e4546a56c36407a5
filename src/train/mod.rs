//! Training pipelines: MoCo and LRC pre-training, fine-tuning, and their shared machinery.

pub mod batch;
pub mod finetune;
pub mod infer;
pub mod log;
pub mod moco;
pub mod pretrain;
pub mod readback;
pub mod resume;
