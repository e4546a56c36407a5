//! lrc: self-supervised contrastive pre-training (MoCo global contrast and Local Region
//! Contrast) of 2-D U-Nets on CT slices, and their fine-tuning for multi-organ segmentation.
//!
//! Layers, bottom up: [`tensor`] and [`device`]; [`ops`] (CPU reference kernels, CUDA
//! dispatch) recorded on an [`autograd::Tape`]; [`nn`] models; [`optim`]; [`data`],
//! [`superpixel`] and [`augment`] for CT; [`train`] pipelines; [`cli`] commands.

pub mod augment;
pub mod autograd;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod demo;
pub mod device;
pub mod error;
pub mod gradcheck;
pub mod kernels;
pub mod metrics;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod output;
pub mod plot;
pub mod profile;
pub mod rng;
pub mod superpixel;
pub mod tensor;
pub mod testing;
pub mod train;

pub use autograd::{Tape, Var};
pub use device::Device;
pub use error::{Error, Result};
pub use tensor::{DType, Tensor};
