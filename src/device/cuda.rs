//! The CUDA device. Stand-in until the CUDA backend lands: every call is an error.

use std::sync::Arc;

use crate::error::{Error, Result};

pub struct CudaDevice {
    ordinal: usize,
}

impl CudaDevice {
    pub fn open(_ordinal: usize) -> Result<Arc<CudaDevice>> {
        Err(Error::NoKernels)
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
}

/// f32 data on a CUDA device.
#[derive(Clone, Debug)]
pub struct CudaStorage {
    len: usize,
}

impl CudaStorage {
    pub fn from_host(_device: &Arc<CudaDevice>, _data: &[f32]) -> Result<CudaStorage> {
        Err(Error::NoKernels)
    }

    pub fn to_host(&self) -> Result<Vec<f32>> {
        Err(Error::NoKernels)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn device(&self) -> Arc<CudaDevice> {
        unreachable!("no CUDA storage can exist without a CUDA device")
    }
}
