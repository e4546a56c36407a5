//! The loss of each step, read back without stalling the GPU: queued right after the forward
//! pass and read once the rest of the step is queued (see `device::cuda::ScalarReadback`).

use crate::device::Device;
use crate::device::cuda::ScalarReadback;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub enum LossReader {
    Cpu(Option<f64>),
    Cuda(ScalarReadback),
}

impl LossReader {
    pub fn new(device: &Device) -> Result<LossReader> {
        Ok(match device {
            Device::Cpu => LossReader::Cpu(None),
            Device::Cuda(d) => LossReader::Cuda(ScalarReadback::new(d)?),
        })
    }

    /// Starts reading the one value of `loss`.
    pub fn queue(&mut self, loss: &Tensor) -> Result<()> {
        match self {
            LossReader::Cpu(slot) => *slot = Some(loss.scalar()?),
            LossReader::Cuda(readback) => readback.queue(
                loss.cuda_storage()
                    .ok_or_else(|| Error::Device("the loss is on the CPU, training on CUDA".into()))?,
            )?,
        }
        Ok(())
    }

    /// The value queued last.
    pub fn value(&mut self) -> Result<f64> {
        match self {
            LossReader::Cpu(slot) => slot
                .take()
                .ok_or_else(|| Error::config("no loss was queued for reading")),
            LossReader::Cuda(readback) => Ok(readback.wait()? as f64),
        }
    }
}
