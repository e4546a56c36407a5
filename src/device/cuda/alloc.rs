//! A caching device allocator: freed buffers go to free lists keyed by their size class and are
//! handed out again, so that a training step, which allocates the same sizes every time, performs
//! no `cuMemAlloc` after the first step.
//!
//! Reuse needs no synchronisation because all work runs on the device's single stream: a buffer
//! released while a kernel that reads it is still queued can only be written by work queued
//! after that kernel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::sys::{CUdeviceptr, CUresult};
use cudarc::driver::{CudaContext, CudaStream, DriverError, result};

use super::driver_error;
use crate::error::{Error, Result};

/// The smallest block handed out; smaller requests share its class.
const MIN_CLASS: usize = 512;

/// The byte size a request of `bytes` is rounded up to: four classes per power of two, so that
/// at most a quarter of a block is wasted.
pub fn size_class(bytes: usize) -> usize {
    if bytes == 0 {
        return 0;
    }
    if bytes <= MIN_CLASS {
        return MIN_CLASS;
    }
    let top = usize::BITS - 1 - (bytes - 1).leading_zeros();
    let step = 1usize << (top - 2);
    bytes.div_ceil(step) * step
}

/// Counters of the allocator since the device was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Blocks obtained from the driver (`cuMemAlloc`).
    pub device_allocations: u64,
    /// Requests served from the free lists.
    pub cache_hits: u64,
    /// Blocks given back to the driver (`cuMemFree`), on `empty_cache` or out of memory.
    pub device_frees: u64,
    /// Bytes (in whole size classes) held by live buffers.
    pub bytes_in_use: usize,
    /// The largest `bytes_in_use` seen.
    pub peak_bytes_in_use: usize,
    /// Bytes sitting in the free lists.
    pub bytes_cached: usize,
}

#[derive(Default)]
struct Pool {
    free: HashMap<usize, Vec<CUdeviceptr>>,
    stats: AllocStats,
}

pub(crate) struct CachingAllocator {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    pool: Mutex<Pool>,
}

impl CachingAllocator {
    pub(crate) fn new(ctx: Arc<CudaContext>, stream: Arc<CudaStream>) -> CachingAllocator {
        CachingAllocator {
            ctx,
            stream,
            pool: Mutex::new(Pool::default()),
        }
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        // The pool holds no invariant a panicking holder could break halfway.
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A block of at least `bytes` bytes: (device address, size class). Zero bytes give a null
    /// address that needs no release.
    pub(crate) fn alloc(&self, bytes: usize) -> Result<(CUdeviceptr, usize)> {
        let class = size_class(bytes);
        if class == 0 {
            return Ok((0, 0));
        }
        {
            let mut pool = self.pool();
            if let Some(ptr) = pool.free.get_mut(&class).and_then(|list| list.pop()) {
                pool.stats.cache_hits += 1;
                pool.stats.bytes_cached -= class;
                pool.stats.bytes_in_use += class;
                pool.stats.peak_bytes_in_use = pool.stats.peak_bytes_in_use.max(pool.stats.bytes_in_use);
                return Ok((ptr, class));
            }
        }
        let ptr = match self.device_alloc(class) {
            Err(DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY)) => {
                // Cached blocks of other sizes may be what stands in the way.
                self.empty_cache()?;
                self.device_alloc(class).map_err(|e| self.out_of_memory(bytes, e))?
            }
            other => other.map_err(driver_error("cuMemAlloc"))?,
        };
        let mut pool = self.pool();
        pool.stats.device_allocations += 1;
        pool.stats.bytes_in_use += class;
        pool.stats.peak_bytes_in_use = pool.stats.peak_bytes_in_use.max(pool.stats.bytes_in_use);
        Ok((ptr, class))
    }

    fn device_alloc(&self, class: usize) -> std::result::Result<CUdeviceptr, DriverError> {
        self.ctx.bind_to_thread()?;
        // SAFETY: the context is current; the block is owned by this allocator until freed.
        unsafe { result::malloc_sync(class) }
    }

    fn out_of_memory(&self, bytes: usize, e: DriverError) -> Error {
        let in_use = self.pool().stats.bytes_in_use;
        Error::Cuda(format!(
            "out of GPU memory: cannot allocate {bytes} bytes with {in_use} bytes held by tensors ({e})"
        ))
    }

    /// Returns a block from `alloc` to its free list.
    pub(crate) fn release(&self, ptr: CUdeviceptr, class: usize) {
        if class == 0 {
            return;
        }
        let mut pool = self.pool();
        pool.stats.bytes_in_use -= class;
        pool.stats.bytes_cached += class;
        pool.free.entry(class).or_default().push(ptr);
    }

    /// Gives every cached block back to the driver, after the queued work that may use them.
    pub(crate) fn empty_cache(&self) -> Result<()> {
        let blocks: Vec<(usize, CUdeviceptr)> = {
            let mut pool = self.pool();
            let blocks = pool
                .free
                .drain()
                .flat_map(|(class, list)| list.into_iter().map(move |p| (class, p)))
                .collect();
            pool.stats.bytes_cached = 0;
            blocks
        };
        if blocks.is_empty() {
            return Ok(());
        }
        self.stream
            .synchronize()
            .map_err(driver_error("synchronize before freeing"))?;
        self.ctx.bind_to_thread().map_err(driver_error("bind context"))?;
        let freed = blocks.len() as u64;
        for (_, ptr) in blocks {
            // SAFETY: the block came from cuMemAlloc, is in no free list any more and no queued
            // work uses it (the stream is synchronised).
            unsafe { result::free_sync(ptr) }.map_err(driver_error("cuMemFree"))?;
        }
        self.pool().stats.device_frees += freed;
        Ok(())
    }

    /// Starts a new peak: `peak_bytes_in_use` becomes what is in use now.
    pub(crate) fn reset_peak(&self) {
        let mut pool = self.pool();
        pool.stats.peak_bytes_in_use = pool.stats.bytes_in_use;
    }

    pub(crate) fn stats(&self) -> AllocStats {
        self.pool().stats
    }
}

impl Drop for CachingAllocator {
    fn drop(&mut self) {
        // Every buffer holds the device alive, so only cached blocks remain; errors cannot be
        // reported from here and the driver reclaims the memory at exit anyway.
        let _ = self.empty_cache();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_round_up_by_at_most_a_quarter() {
        assert_eq!(size_class(0), 0);
        assert_eq!(size_class(1), MIN_CLASS);
        assert_eq!(size_class(MIN_CLASS), MIN_CLASS);
        assert_eq!(size_class(513), 640);
        assert_eq!(size_class(1024), 1024);
        assert_eq!(size_class(1025), 1280);
        let mut previous = 0;
        for bytes in (1..200_000).step_by(37).chain([1 << 20, (1 << 30) + 3]) {
            let class = size_class(bytes);
            assert!(class >= bytes, "{bytes} -> {class}");
            assert!(
                class <= MIN_CLASS.max(bytes + bytes / 4),
                "{bytes} -> {class} wastes more than a quarter"
            );
            assert!(class >= previous, "classes must grow with the request");
            assert_eq!(size_class(class), class, "a class is its own class");
            previous = class;
        }
    }

    #[test]
    fn a_training_step_uses_few_classes() {
        // Sizes that differ by a few bytes share a class, so free lists get reused.
        assert_eq!(
            size_class(4 * 16 * 32 * 256 * 256),
            size_class(4 * 16 * 32 * 256 * 256 - 100)
        );
    }
}
