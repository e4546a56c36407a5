//! Where tensors live: the CPU or one CUDA GPU.

pub mod cuda;
pub mod emu;

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};

#[derive(Clone)]
pub enum Device {
    Cpu,
    Cuda(Arc<cuda::CudaDevice>),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(d) => write!(f, "cuda:{}", d.ordinal()),
        }
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl PartialEq for Device {
    fn eq(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Cuda(a), Device::Cuda(b)) => a.ordinal() == b.ordinal(),
            _ => false,
        }
    }
}

impl Device {
    /// Parses `cpu`, `cuda` or `cuda:N` and opens the device.
    pub fn parse(spec: &str) -> Result<Device> {
        match spec {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(cuda::CudaDevice::open(0)?)),
            s if s.starts_with("cuda:") => {
                let ordinal: usize = s[5..]
                    .parse()
                    .map_err(|_| Error::config(format!("bad device '{spec}': expected cpu, cuda or cuda:N")))?;
                Ok(Device::Cuda(cuda::CudaDevice::open(ordinal)?))
            }
            _ => Err(Error::config(format!(
                "bad device '{spec}': expected cpu, cuda or cuda:N"
            ))),
        }
    }

    /// CUDA device 0 when it can be used, else the CPU together with the reason why not.
    pub fn best_available() -> (Device, Option<String>) {
        match cuda::CudaDevice::open(0) {
            Ok(d) => (Device::Cuda(d), None),
            Err(e) => (Device::Cpu, Some(e.to_string())),
        }
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}
