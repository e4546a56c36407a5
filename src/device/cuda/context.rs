//! Opening a GPU: driver checks, context, stream, allocator and module cache.

use std::collections::HashMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream};

use super::alloc::{AllocStats, CachingAllocator};
use super::conv::ConvAlgo;
use super::conv_tune::TuneKey;
use super::driver_error;
use super::kernel_timer::KernelTimer;
use super::module_cache::ModuleCache;
use crate::error::{Error, Result};
use crate::kernels;

/// One CUDA GPU. Opening the same ordinal twice gives the same device (while it is alive), so
/// that all its tensors share one stream.
pub struct CudaDevice {
    ordinal: usize,
    name: String,
    compute_capability: (i32, i32),
    multiprocessors: usize,
    total_memory: usize,
    max_shared_per_block: usize,
    stream: Arc<CudaStream>,
    allocator: CachingAllocator,
    modules: ModuleCache,
    conv_algo: AtomicU8,
    /// The versions `tf32-fastest` / `bf16-fastest` chose, by pass and geometry.
    conv_tuned: Mutex<HashMap<TuneKey, ConvAlgo>>,
    poison_fresh_buffers: AtomicBool,
    transfers: TransferCounters,
    pub(crate) kernel_timer: Mutex<Option<KernelTimer>>,
}

/// Copies between host and device since the device was opened: a training step should show one
/// upload (its batch) and one download (the logged loss), and nothing else.
#[derive(Default)]
struct TransferCounters {
    to_device: AtomicU64,
    to_host: AtomicU64,
}

/// What [`CudaDevice::transfers`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfers {
    /// Host-to-device copies.
    pub to_device: u64,
    /// Device-to-host copies (each one waits for the stream).
    pub to_host: u64,
}

impl fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cuda:{} ({})", self.ordinal, self.name)
    }
}

fn open_devices() -> &'static Mutex<HashMap<usize, Weak<CudaDevice>>> {
    static OPEN: OnceLock<Mutex<HashMap<usize, Weak<CudaDevice>>>> = OnceLock::new();
    OPEN.get_or_init(Default::default)
}

impl CudaDevice {
    /// Opens GPU `ordinal`, or says why it cannot be used: no kernels in this build, no driver,
    /// no such GPU, a GPU older than sm_80, or a driver failure.
    pub fn open(ordinal: usize) -> Result<Arc<CudaDevice>> {
        if !kernels::BUILT {
            return Err(Error::NoKernels);
        }
        let mut open = open_devices().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(device) = open.get(&ordinal).and_then(Weak::upgrade) {
            return Ok(device);
        }
        // cudarc panics where libcuda lacks a symbol it needs; keep that a plain error too.
        let device = catch_unwind(AssertUnwindSafe(|| CudaDevice::create(ordinal))).unwrap_or_else(|_| {
            Err(Error::Cuda(
                "the CUDA driver library failed to load (see the message above)".into(),
            ))
        })?;
        let device = Arc::new(device);
        open.insert(ordinal, Arc::downgrade(&device));
        Ok(device)
    }

    fn create(ordinal: usize) -> Result<CudaDevice> {
        // SAFETY: only probes whether the driver library can be loaded.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::Device(
                "no CUDA driver on this machine (libcuda.so was not found)".into(),
            ));
        }
        let count = CudaContext::device_count().map_err(driver_error("cuInit / cuDeviceGetCount"))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::Device(format!(
                "cuda:{ordinal} does not exist: this machine has {count} CUDA device(s)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_error("create context"))?;
        let compute_capability = ctx.compute_capability().map_err(driver_error("compute capability"))?;
        if compute_capability.0 < 8 {
            return Err(Error::Device(format!(
                "cuda:{ordinal} has compute capability {}.{}; the kernels need 8.0 or newer",
                compute_capability.0, compute_capability.1
            )));
        }
        let name = ctx.name().map_err(driver_error("device name"))?;
        let multiprocessors = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver_error("multiprocessor count"))?
            .max(1) as usize;
        let total_memory = ctx.total_mem().map_err(driver_error("total memory"))?;
        let max_shared_per_block = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(driver_error("shared memory per block"))?
            .max(0) as usize;
        let stream = ctx.new_stream().map_err(driver_error("create stream"))?;
        let conv_algo = ConvAlgo::from_env()?.unwrap_or(ConvAlgo::DEFAULT);
        if !conv_algo.runs_on(compute_capability) {
            return Err(Error::config(format!(
                "{}={conv_algo} needs a compute capability 9.0 GPU (sm_90a); {name} is {}.{}",
                ConvAlgo::ENV,
                compute_capability.0,
                compute_capability.1
            )));
        }
        Ok(CudaDevice {
            ordinal,
            name,
            compute_capability,
            multiprocessors,
            total_memory,
            max_shared_per_block,
            allocator: CachingAllocator::new(ctx.clone(), stream.clone()),
            stream,
            modules: ModuleCache::default(),
            conv_algo: AtomicU8::new(conv_algo as u8),
            conv_tuned: Mutex::default(),
            poison_fresh_buffers: AtomicBool::new(false),
            transfers: TransferCounters::default(),
            kernel_timer: Mutex::new(None),
        })
    }

    /// The CUDA device index.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The GPU's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// (major, minor), e.g. (9, 0) for Hopper.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// Streaming multiprocessors; sizes the backward-weight split.
    pub fn multiprocessors(&self) -> usize {
        self.multiprocessors
    }

    /// The device's memory in bytes; sizes the batches of work that may use much of it.
    pub fn total_memory(&self) -> usize {
        self.total_memory
    }

    /// The shared memory a block may use (static and dynamic together) once a kernel opts in:
    /// 227 KiB on Hopper; sizes the kernels that keep data in shared memory.
    pub fn max_shared_per_block(&self) -> usize {
        self.max_shared_per_block
    }

    /// A device attribute (memory clock, bus width, ...), as the driver reports it.
    pub fn attribute(&self, attribute: CUdevice_attribute) -> Result<i32> {
        self.stream
            .context()
            .attribute(attribute)
            .map_err(driver_error("device attribute"))
    }

    /// The stream all work of this device runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits until all queued work has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver_error("synchronize"))
    }

    /// The convolution kernels ops use: `LRC_CONV_ALGO` at open, else [`ConvAlgo::DEFAULT`].
    pub fn conv_algo(&self) -> ConvAlgo {
        ConvAlgo::from_index(self.conv_algo.load(Ordering::Relaxed))
    }

    /// Chooses the convolution kernels for the ops that run on this device from now on.
    /// The version a convolution choice made for `key`, if it has.
    pub(crate) fn tuned_conv(&self, key: &TuneKey) -> Option<ConvAlgo> {
        self.conv_tuned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    pub(crate) fn remember_conv(&self, key: TuneKey, version: ConvAlgo) {
        self.conv_tuned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, version);
    }

    /// Every choice `tf32-fastest` / `bf16-fastest` has made on this device, with its version.
    pub fn tuned_convs(&self) -> Vec<(TuneKey, ConvAlgo)> {
        let tuned = self.conv_tuned.lock().unwrap_or_else(|p| p.into_inner());
        tuned.iter().map(|(k, v)| (*k, *v)).collect()
    }

    pub fn set_conv_algo(&self, algo: ConvAlgo) {
        self.conv_algo.store(algo as u8, Ordering::Relaxed);
    }

    /// When set, every buffer allocated for an op's output is filled with NaN first, so that an
    /// element a kernel fails to write shows up. For tests; it costs a memset per allocation.
    pub fn set_poison_fresh_buffers(&self, on: bool) {
        self.poison_fresh_buffers.store(on, Ordering::Relaxed);
    }

    pub(crate) fn poisons_fresh_buffers(&self) -> bool {
        self.poison_fresh_buffers.load(Ordering::Relaxed)
    }

    /// The caching allocator's counters.
    pub fn alloc_stats(&self) -> AllocStats {
        self.allocator.stats()
    }

    /// Host/device copies so far.
    pub fn transfers(&self) -> Transfers {
        Transfers {
            to_device: self.transfers.to_device.load(Ordering::Relaxed),
            to_host: self.transfers.to_host.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn count_transfer(&self, to_host: bool) {
        let counter = if to_host {
            &self.transfers.to_host
        } else {
            &self.transfers.to_device
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Restarts the allocator's peak (`AllocStats::peak_bytes_in_use`) from what is in use now,
    /// so that the peak of one piece of work can be measured.
    pub fn reset_peak_memory(&self) {
        self.allocator.reset_peak();
    }

    /// Gives cached free blocks back to the driver.
    pub fn empty_cache(&self) -> Result<()> {
        self.allocator.empty_cache()
    }

    pub(crate) fn allocator(&self) -> &CachingAllocator {
        &self.allocator
    }

    /// Kernel `name` of `kernels/<module>.cu`, loaded on first use, ready to launch with
    /// `dynamic_shared` bytes of dynamic shared memory (opting in when it needs to).
    pub(crate) fn function(
        &self,
        module: &'static str,
        name: &'static str,
        dynamic_shared: u32,
    ) -> Result<CudaFunction> {
        self.modules
            .function(self.stream.context(), module, name, dynamic_shared)
    }
}
