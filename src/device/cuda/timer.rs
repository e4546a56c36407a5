//! Timing of device work with CUDA events recorded on the device's stream.

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaStream};

use super::{CudaDevice, driver_error};
use crate::error::Result;

/// Measures the device time between `start` and `stop`.
pub struct GpuTimer {
    start: CudaEvent,
    stop: CudaEvent,
    stream: Arc<CudaStream>,
}

impl GpuTimer {
    /// Two events on `device`'s stream.
    pub fn new(device: &CudaDevice) -> Result<GpuTimer> {
        let ctx = device.stream().context();
        let event = || {
            ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(driver_error("create event"))
        };
        Ok(GpuTimer {
            start: event()?,
            stop: event()?,
            stream: device.stream().clone(),
        })
    }

    /// Marks the start, after the work queued so far.
    pub fn start(&self) -> Result<()> {
        self.start.record(&self.stream).map_err(driver_error("record event"))
    }

    /// Marks the end, after the work queued so far.
    pub fn stop(&self) -> Result<()> {
        self.stop.record(&self.stream).map_err(driver_error("record event"))
    }

    /// Milliseconds between the marks; waits until the device has reached `stop`.
    pub fn elapsed_ms(&self) -> Result<f32> {
        self.start.elapsed_ms(&self.stop).map_err(driver_error("event timing"))
    }
}
