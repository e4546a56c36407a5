//! Training pipelines: MoCo and LRC pre-training, fine-tuning, and their shared machinery.

pub mod log;
pub mod moco;
