//! Host-to-device copies of each training step's batch through page-locked staging buffers.
//!
//! A copy from pageable memory goes through the driver's own staging buffers, and one of several
//! megabytes (a batch of 16 crops of 256 x 256 is 4 MiB per view) can wait for the stream to
//! reach it: for the previous step to finish, so that the host could not queue the next step
//! while the GPU still runs this one. From page-locked memory the copy is queued and the host
//! goes on. The buffers are used in turn, each again only once the copy out of it has landed
//! (an event recorded behind each copy), `slots` uploads later.

use std::sync::Arc;

use cudarc::driver::CudaEvent;
use cudarc::driver::result;
use cudarc::driver::sys::CUevent_flags;

use super::{CudaDevice, CudaStorage, driver_error};
use crate::error::Result;

/// One page-locked buffer and the event behind the last copy out of it.
struct StagingSlot {
    host: *mut f32,
    /// f32 values the buffer holds.
    capacity: usize,
    event: CudaEvent,
    pending: bool,
}

impl StagingSlot {
    /// Waits for the last copy out of the buffer, if any.
    fn wait(&mut self) -> Result<()> {
        if self.pending {
            self.event.synchronize().map_err(driver_error("wait for an upload"))?;
            self.pending = false;
        }
        Ok(())
    }

    fn release(&mut self) {
        if !self.host.is_null() {
            // SAFETY: allocated by malloc_host; the caller waited for the copy out of it.
            let _ = unsafe { result::free_host(self.host as _) };
            self.host = std::ptr::null_mut();
            self.capacity = 0;
        }
    }
}

/// A ring of page-locked staging buffers for uploads queued on one device's stream.
pub struct PinnedUpload {
    device: Arc<CudaDevice>,
    slots: Vec<StagingSlot>,
    next: usize,
}

// SAFETY: the buffers are only touched through &mut self, each after its last copy has landed.
unsafe impl Send for PinnedUpload {}

impl PinnedUpload {
    /// `slots` staging buffers (at least one), each allocated at the size of its first upload
    /// and grown when a larger one comes.
    pub fn new(device: &Arc<CudaDevice>, slots: usize) -> Result<PinnedUpload> {
        let ctx = device.stream().context();
        ctx.bind_to_thread().map_err(driver_error("bind context"))?;
        let slots = (0..slots.max(1))
            .map(|_| {
                let event = ctx
                    .new_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING))
                    .map_err(driver_error("create event"))?;
                Ok(StagingSlot {
                    host: std::ptr::null_mut(),
                    capacity: 0,
                    event,
                    pending: false,
                })
            })
            .collect::<Result<_>>()?;
        Ok(PinnedUpload {
            device: device.clone(),
            slots,
            next: 0,
        })
    }

    /// A copy of `data` on the device, queued on its stream. Returns once `data` has been copied
    /// into a staging buffer; waits only if that buffer's previous copy (`slots` uploads ago)
    /// has not landed yet.
    pub fn upload(&mut self, data: &[f32]) -> Result<CudaStorage> {
        let mut storage = CudaStorage::alloc(&self.device, data.len())?;
        if data.is_empty() {
            return Ok(storage);
        }
        let stream = self.device.stream();
        stream
            .context()
            .bind_to_thread()
            .map_err(driver_error("bind context"))?;
        let index = self.next;
        self.next = (index + 1) % self.slots.len();
        let slot = &mut self.slots[index];
        slot.wait()?;
        if slot.capacity < data.len() {
            slot.release();
            // SAFETY: a fresh page-locked allocation of data.len() f32 values, freed in
            // `release` (on growth or drop) once no copy out of it is outstanding.
            slot.host = unsafe { result::malloc_host(std::mem::size_of_val(data), 0) }
                .map_err(driver_error("allocate pinned memory"))? as *mut f32;
            slot.capacity = data.len();
        }
        // SAFETY: the buffer holds at least data.len() values, and no copy out of it is
        // outstanding (waited for above).
        let staged = unsafe { std::slice::from_raw_parts_mut(slot.host, data.len()) };
        staged.copy_from_slice(data);
        let dst = storage.device_ptr_mut()?;
        self.device.count_transfer(false);
        // SAFETY: `dst` holds data.len() f32 values; the staging buffer stays untouched until
        // the event recorded behind this copy completes.
        unsafe { result::memcpy_htod_async(dst, &*staged, stream.cu_stream()) }
            .map_err(driver_error("copy to device"))?;
        slot.event.record(stream).map_err(driver_error("record event"))?;
        slot.pending = true;
        Ok(storage)
    }
}

impl Drop for PinnedUpload {
    fn drop(&mut self) {
        for slot in &mut self.slots {
            let _ = slot.wait();
            slot.release();
        }
    }
}
