//! Each step's batch to the training device: on a GPU through page-locked staging buffers
//! ([`PinnedUpload`]), so that the host queues the next step while the GPU runs this one.

use crate::device::Device;
use crate::device::cuda::PinnedUpload;
use crate::error::Result;
use crate::tensor::{Storage, Tensor};

/// Staging buffers in turn: two uploads a step (pre-training's two views) reuse a buffer two
/// steps later, long after its copy has landed.
const SLOTS: usize = 4;

pub enum BatchUpload {
    Cpu,
    Cuda(PinnedUpload),
}

impl BatchUpload {
    pub fn new(device: &Device) -> Result<BatchUpload> {
        Ok(match device {
            Device::Cpu => BatchUpload::Cpu,
            Device::Cuda(d) => BatchUpload::Cuda(PinnedUpload::new(d, SLOTS)?),
        })
    }

    /// `t`, a host tensor of the batch, on the training device (as f32).
    pub fn upload(&mut self, t: &Tensor) -> Result<Tensor> {
        match self {
            BatchUpload::Cpu => t.to_device(&Device::Cpu),
            BatchUpload::Cuda(pinned) => {
                let storage = match t.as_slice::<f32>() {
                    Ok(values) => pinned.upload(values)?,
                    Err(_) => pinned.upload(&t.to_f32_vec()?)?,
                };
                Ok(Tensor::from_storage(t.shape().to_vec(), Storage::Cuda(storage)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_the_cpu_the_batch_stays_as_it_is() {
        let t = Tensor::from_vec(vec![2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let mut upload = BatchUpload::new(&Device::Cpu).unwrap();
        let up = upload.upload(&t).unwrap();
        assert_eq!(up.shape(), &[2, 3]);
        assert_eq!(up.as_slice::<f32>().unwrap(), t.as_slice::<f32>().unwrap());
    }
}
