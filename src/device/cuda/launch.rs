//! Typed kernel launches: one `#[repr(C)]` parameter struct per kernel, passed by value.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::CudaDevice;
use super::call::{KernelCall, ParamBlock};
use crate::error::{Error, Result};

/// Grid and block of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Launch {
    pub grid: (usize, usize, usize),
    pub block: u32,
}

impl Launch {
    fn config(&self, kernel: &str) -> Result<LaunchConfig> {
        let (x, y, z) = self.grid;
        // The hardware limits: 2^31 - 1 blocks along x, 65535 along y and z.
        if x == 0 || y == 0 || z == 0 || x > i32::MAX as usize || y > 65_535 || z > 65_535 {
            return Err(Error::Cuda(format!(
                "{kernel}: grid {x} x {y} x {z} is outside the launch limits"
            )));
        }
        Ok(LaunchConfig {
            grid_dim: (x as u32, y as u32, z as u32),
            block_dim: (self.block, 1, 1),
            shared_mem_bytes: 0,
        })
    }
}

impl CudaDevice {
    /// Queues `kernel` of `kernels/<module>.cu` on the device's stream with `params` as its one
    /// argument.
    ///
    /// # Safety
    /// `P` must be the parameter struct the kernel is declared with, and every device address
    /// in it must point at a live block large enough for what the kernel reads and writes under
    /// the given grid.
    pub(crate) unsafe fn launch<P: DeviceRepr>(
        &self,
        module: &'static str,
        kernel: &'static str,
        launch: Launch,
        params: &P,
    ) -> Result<()> {
        let cfg = launch.config(kernel)?;
        let function = self.function(module, kernel, cfg.shared_mem_bytes)?;
        self.timed_launch(kernel, || {
            let mut builder = self.stream().launch_builder(&function);
            builder.arg(params);
            // SAFETY: upheld by the caller as documented.
            unsafe { builder.launch(cfg) }.map_err(|e| Error::Cuda(format!("launch {kernel}: {e}")))?;
            Ok(())
        })
    }
}

/// Converts a dimension for a kernel parameter, or says that it is too large.
pub(crate) fn dim(op: &'static str, what: &str, value: usize) -> Result<i32> {
    i32::try_from(value).map_err(|_| Error::shape(op, format!("{what} = {value} exceeds what the CUDA kernels index")))
}

// SAFETY: a plain byte array; the kernel reads as many bytes as its parameter struct has, which
// `KernelCall::new` copied in.
unsafe impl DeviceRepr for ParamBlock {}

impl CudaDevice {
    /// Queues `calls` in order on the device's stream. Returns without waiting for them.
    ///
    /// # Safety
    /// Each call's parameter struct must be the one its kernel is declared with, and every device
    /// address in it must point at a live block large enough for what the kernel reads and writes
    /// under the call's grid, until the stream has run the call.
    pub(crate) unsafe fn run(&self, calls: &[KernelCall]) -> Result<()> {
        for call in calls {
            call.validate()?;
            let function = self.function(call.module, call.kernel, call.shared_bytes)?;
            let (x, y, z) = call.grid;
            let cfg = LaunchConfig {
                grid_dim: (x as u32, y as u32, z as u32),
                block_dim: (call.block, 1, 1),
                shared_mem_bytes: call.shared_bytes,
            };
            self.timed_launch(call.kernel, || {
                let mut builder = self.stream().launch_builder(&function);
                builder.arg(call.param_block());
                // SAFETY: upheld by the caller as documented.
                unsafe { builder.launch(cfg) }.map_err(|e| Error::Cuda(format!("launch {}: {e}", call.kernel)))?;
                Ok(())
            })?;
        }
        Ok(())
    }
}
