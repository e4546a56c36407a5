//! Class labels for the segmentation losses: one class index per position, from the host.
//!
//! A fine-tuning step feeds the same labels to Dice and to cross-entropy. [`Labels`] keeps the
//! copy the first CUDA loss made, so that the batch's labels cross to the device once per step;
//! plain slices work too and are copied by each loss that needs them on a device.

use std::cell::OnceCell;
use std::sync::Arc;

use crate::device::cuda::{CudaDevice, CudaStorage};
use crate::error::Result;

/// Labels a loss accepts: their host values, and a device copy on demand.
pub trait LabelSource {
    /// One class index per position.
    fn host(&self) -> &[u32];

    /// The labels on `device`; a fresh copy unless the source keeps one.
    fn on_device(&self, device: &Arc<CudaDevice>) -> Result<CudaStorage> {
        CudaStorage::from_host_u32(device, self.host())
    }
}

impl LabelSource for [u32] {
    fn host(&self) -> &[u32] {
        self
    }
}

impl<const N: usize> LabelSource for [u32; N] {
    fn host(&self) -> &[u32] {
        self
    }
}

impl LabelSource for Vec<u32> {
    fn host(&self) -> &[u32] {
        self
    }
}

/// Host labels that remember their device copy: the first loss on a device uploads them, later
/// losses of the same step share that copy.
pub struct Labels<'a> {
    host: &'a [u32],
    device: OnceCell<CudaStorage>,
}

impl<'a> Labels<'a> {
    pub fn new(host: &'a [u32]) -> Labels<'a> {
        Labels {
            host,
            device: OnceCell::new(),
        }
    }
}

impl LabelSource for Labels<'_> {
    fn host(&self) -> &[u32] {
        self.host
    }

    fn on_device(&self, device: &Arc<CudaDevice>) -> Result<CudaStorage> {
        if let Some(copy) = self.device.get() {
            if Arc::ptr_eq(&copy.device(), device) {
                return Ok(copy.clone());
            }
            // Another device: copy again, keep the first.
            return CudaStorage::from_host_u32(device, self.host);
        }
        let copy = CudaStorage::from_host_u32(device, self.host)?;
        Ok(self.device.get_or_init(|| copy).clone())
    }
}
