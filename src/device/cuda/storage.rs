//! `CudaStorage`: f32 data in a block of the device's caching allocator.

use std::fmt;
use std::sync::Arc;

use cudarc::driver::result;
use cudarc::driver::sys::{self, CUdeviceptr};

use super::{CudaDevice, driver_error};
use crate::error::{Error, Result};

/// The quiet-NaN bit pattern that poisoned buffers are filled with.
const NAN_BITS: u32 = 0x7fc0_0000;

/// A device block; returns to the allocator's free lists when the last storage using it drops.
struct DeviceBuffer {
    ptr: CUdeviceptr,
    class: usize,
    device: Arc<CudaDevice>,
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        self.device.allocator().release(self.ptr, self.class);
    }
}

/// f32 data on a CUDA device. Cloning shares the block; [`CudaStorage::device_ptr_mut`] copies it
/// first when it is shared, so writes never show through another clone.
#[derive(Clone)]
pub struct CudaStorage {
    buffer: Arc<DeviceBuffer>,
    len: usize,
}

impl fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CudaStorage({} x f32 on cuda:{})",
            self.len,
            self.buffer.device.ordinal()
        )
    }
}

impl CudaStorage {
    /// `len` elements with undefined contents (NaN when the device poisons fresh buffers).
    pub fn alloc(device: &Arc<CudaDevice>, len: usize) -> Result<CudaStorage> {
        let bytes = len
            .checked_mul(4)
            .ok_or_else(|| Error::Cuda(format!("a buffer of {len} f32 values is too large")))?;
        let (ptr, class) = device.allocator().alloc(bytes)?;
        let storage = CudaStorage {
            buffer: Arc::new(DeviceBuffer {
                ptr,
                class,
                device: device.clone(),
            }),
            len,
        };
        if device.poisons_fresh_buffers() {
            storage.fill_bits(NAN_BITS)?;
        }
        Ok(storage)
    }

    /// `len` copies of `value`.
    pub fn full(device: &Arc<CudaDevice>, len: usize, value: f32) -> Result<CudaStorage> {
        let storage = CudaStorage::alloc(device, len)?;
        storage.fill_bits(value.to_bits())?;
        Ok(storage)
    }

    /// `len` zeros.
    pub fn zeros(device: &Arc<CudaDevice>, len: usize) -> Result<CudaStorage> {
        CudaStorage::full(device, len, 0.0)
    }

    /// A copy of `data` on the device. Returns once `data` has been read.
    pub fn from_host(device: &Arc<CudaDevice>, data: &[f32]) -> Result<CudaStorage> {
        let storage = CudaStorage::alloc(device, data.len())?;
        if !data.is_empty() {
            device.count_transfer(false);
            device
                .stream()
                .context()
                .bind_to_thread()
                .map_err(driver_error("bind context"))?;
            // SAFETY: the block holds data.len() f32 values; a copy from pageable memory returns
            // only after the source has been staged, so `data` may be dropped afterwards.
            unsafe { result::memcpy_htod_async(storage.buffer.ptr, data, device.stream().cu_stream()) }
                .map_err(driver_error("copy to device"))?;
        }
        Ok(storage)
    }

    /// A copy of 32-bit integer data (class labels, bit masks, indices, offsets) on the device,
    /// held as its bit patterns: kernels read the block as `const uint32_t*`. Returns once `data`
    /// has been read.
    pub fn from_host_u32(device: &Arc<CudaDevice>, data: &[u32]) -> Result<CudaStorage> {
        CudaStorage::from_host(device, bytemuck::cast_slice(data))
    }

    /// A copy of `data` stored as its 32-bit words: integer data (labels, indices as u32) or
    /// float64 values (two words each). `T` must be a whole number of words.
    pub fn from_host_pod<T: bytemuck::Pod>(device: &Arc<CudaDevice>, data: &[T]) -> Result<CudaStorage> {
        let words: &[f32] = bytemuck::try_cast_slice(data).map_err(|e| {
            Error::Cuda(format!(
                "{} is not a whole number of 32-bit words: {e}",
                std::any::type_name::<T>()
            ))
        })?;
        CudaStorage::from_host(device, words)
    }

    /// The words copied to the host and read as `T` values (see [`CudaStorage::from_host_pod`]);
    /// waits for the work queued before it.
    pub fn to_host_pod<T: bytemuck::Pod>(&self) -> Result<Vec<T>> {
        if !(self.len * 4).is_multiple_of(size_of::<T>().max(1)) {
            return Err(Error::Cuda(format!(
                "{} words do not make whole {} values",
                self.len,
                std::any::type_name::<T>()
            )));
        }
        let host = self.to_host()?;
        let mut out = vec![<T as bytemuck::Zeroable>::zeroed(); self.len * 4 / size_of::<T>().max(1)];
        bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(bytemuck::cast_slice::<f32, u8>(&host));
        Ok(out)
    }

    /// The data copied to the host; waits for the work queued before it.
    pub fn to_host(&self) -> Result<Vec<f32>> {
        let mut host = vec![0.0f32; self.len];
        if self.len > 0 {
            self.buffer.device.count_transfer(true);
            let stream = self.buffer.device.stream();
            stream
                .context()
                .bind_to_thread()
                .map_err(driver_error("bind context"))?;
            // SAFETY: the block holds self.len f32 values and `host` as many.
            unsafe { result::memcpy_dtoh_async(&mut host, self.buffer.ptr, stream.cu_stream()) }
                .map_err(driver_error("copy to host"))?;
            stream
                .synchronize()
                .map_err(driver_error("synchronize after copy to host"))?;
        }
        Ok(host)
    }

    /// The number of f32 values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device holding the data.
    pub fn device(&self) -> Arc<CudaDevice> {
        self.buffer.device.clone()
    }

    /// The device address, for kernels that read the data.
    pub fn device_ptr(&self) -> CUdeviceptr {
        self.buffer.ptr
    }

    /// The device address for kernels that write the data, after copying the block if another
    /// storage shares it.
    pub fn device_ptr_mut(&mut self) -> Result<CUdeviceptr> {
        if Arc::strong_count(&self.buffer) > 1 {
            let device = self.device();
            let copy = CudaStorage::alloc(&device, self.len)?;
            if self.len > 0 {
                device
                    .stream()
                    .context()
                    .bind_to_thread()
                    .map_err(driver_error("bind context"))?;
                // SAFETY: both blocks hold self.len f32 values; the copy is ordered on the stream.
                unsafe {
                    result::memcpy_dtod_async(
                        copy.buffer.ptr,
                        self.buffer.ptr,
                        self.len * 4,
                        device.stream().cu_stream(),
                    )
                }
                .map_err(driver_error("copy on device"))?;
            }
            *self = copy;
        }
        Ok(self.buffer.ptr)
    }

    /// Whether both storages use one device block.
    pub fn shares_buffer(&self, other: &CudaStorage) -> bool {
        Arc::ptr_eq(&self.buffer, &other.buffer)
    }

    fn fill_bits(&self, bits: u32) -> Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let stream = self.buffer.device.stream();
        stream
            .context()
            .bind_to_thread()
            .map_err(driver_error("bind context"))?;
        // SAFETY: the block holds self.len 32-bit words; the memset is ordered on the stream.
        unsafe { sys::cuMemsetD32Async(self.buffer.ptr, bits, self.len, stream.cu_stream()) }
            .result()
            .map_err(driver_error("memset"))
    }
}
