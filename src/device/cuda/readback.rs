//! Reading a scalar (the logged loss) back from the device without stalling it: the copy goes
//! into pinned host memory, queued on the stream right after the value is computed, with an
//! event behind it. Waiting for that event waits for the value only, so the work queued after it
//! (the backward pass, the optimizer) keeps the GPU busy while the host reads.

use std::sync::Arc;

use cudarc::driver::CudaEvent;
use cudarc::driver::result;
use cudarc::driver::sys::CUevent_flags;

use super::{CudaDevice, CudaStorage, driver_error};
use crate::error::{Error, Result};

/// One page-locked f32 and the event recorded after the copy into it.
pub struct ScalarReadback {
    host: *mut f32,
    event: CudaEvent,
    device: Arc<CudaDevice>,
    pending: bool,
}

// SAFETY: the pinned word is only touched through &mut self, after its event has completed.
unsafe impl Send for ScalarReadback {}

impl ScalarReadback {
    pub fn new(device: &Arc<CudaDevice>) -> Result<ScalarReadback> {
        let ctx = device.stream().context();
        ctx.bind_to_thread().map_err(driver_error("bind context"))?;
        // SAFETY: a fresh 4-byte page-locked allocation, freed in Drop.
        let host = unsafe { result::malloc_host(4, 0) }.map_err(driver_error("allocate pinned memory"))? as *mut f32;
        let event = ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING))
            .map_err(driver_error("create event"))?;
        Ok(ScalarReadback {
            host,
            event,
            device: device.clone(),
            pending: false,
        })
    }

    /// Queues the copy of the one value of `value` to the host.
    pub fn queue(&mut self, value: &CudaStorage) -> Result<()> {
        if value.len() != 1 {
            return Err(Error::shape(
                "scalar readback",
                format!("{} values, not one", value.len()),
            ));
        }
        if self.pending {
            // The previous copy must land before the word is reused.
            self.event.synchronize().map_err(driver_error("wait for a readback"))?;
        }
        let stream = self.device.stream();
        stream
            .context()
            .bind_to_thread()
            .map_err(driver_error("bind context"))?;
        self.device.count_transfer(true);
        // SAFETY: `host` is one pinned f32 that nothing else reads until the event completes;
        // `value` holds one f32 and the copy is ordered on the stream after the work writing it.
        unsafe {
            let dst = std::slice::from_raw_parts_mut(self.host, 1);
            result::memcpy_dtoh_async(dst, value.device_ptr(), stream.cu_stream())
        }
        .map_err(driver_error("copy to host"))?;
        self.event.record(stream).map_err(driver_error("record event"))?;
        self.pending = true;
        Ok(())
    }

    /// The value last queued, once its copy has landed.
    pub fn wait(&mut self) -> Result<f32> {
        if !self.pending {
            return Err(Error::Cuda("scalar readback: nothing was queued".into()));
        }
        self.event.synchronize().map_err(driver_error("wait for a readback"))?;
        self.pending = false;
        // SAFETY: the copy into the word has completed.
        Ok(unsafe { *self.host })
    }
}

impl Drop for ScalarReadback {
    fn drop(&mut self) {
        let _ = self.event.synchronize();
        // SAFETY: allocated by malloc_host in `new`; no copy into it is outstanding.
        let _ = unsafe { result::free_host(self.host as _) };
    }
}
