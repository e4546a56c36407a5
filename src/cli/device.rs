//! The `--device` option shared by every command.

use crate::device::Device;
use crate::error::{Error, Result};

/// Resolves `--device`: `cpu`, `cuda`, `cuda:N`, or nothing for the best available. Training
/// and inference run their ops on the CPU until every op has a CUDA kernel; asking for CUDA
/// explicitly is then an error that says so, and the automatic choice says it fell back.
pub fn select(spec: Option<&str>) -> Result<Device> {
    match spec {
        Some("cpu") => Ok(Device::Cpu),
        Some(s) => {
            let device = Device::parse(s)?;
            Err(Error::Device(format!(
                "{device}: training and inference on CUDA need kernels for every op, and this build has CUDA \
                 kernels for convolution only; use --device cpu"
            )))
        }
        None => {
            let (device, why) = Device::best_available();
            match (&device, why) {
                (Device::Cuda(_), _) => eprintln!(
                    "note: {device} is available, but this build runs training ops on the CPU only; using the CPU"
                ),
                (Device::Cpu, Some(why)) => eprintln!("note: no usable CUDA device ({why}); using the CPU"),
                (Device::Cpu, None) => {}
            }
            Ok(Device::Cpu)
        }
    }
}
