//! The `--device` option shared by every command.

use crate::device::Device;
use crate::error::Result;

/// Resolves `--device`: `cpu`, `cuda`, `cuda:N`, or nothing for the best available (a GPU when
/// one can be used, else the CPU with a note saying why).
pub fn select(spec: Option<&str>) -> Result<Device> {
    match spec {
        Some(s) => Device::parse(s),
        None => {
            let (device, why) = Device::best_available();
            if let Some(why) = why {
                eprintln!("note: no usable CUDA device ({why}); using the CPU");
            }
            Ok(device)
        }
    }
}
