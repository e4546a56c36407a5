//! The CUDA device: one context and one stream per GPU (all work is ordered on that stream; only
//! explicit copies to the host wait for it), a caching allocator, lazily loaded kernel modules,
//! typed launches and event timers. Kernels come from `kernels/*.cu` compiled by build.rs; a
//! build without them answers every call with [`Error::NoKernels`].
//!
//! The driver library is loaded at run time, so the crate builds and runs without CUDA: opening
//! a device on a machine without a driver or a GPU is an error, never a panic.

mod alloc;
pub mod call;
pub mod cleanup;
pub mod concat;
mod context;
pub mod conv;
pub mod conv_sm90;
pub mod conv_tune;
pub mod elastic;
pub mod felzenszwalb;
pub mod gemm;
mod kernel_timer;
mod launch;
pub mod local_contrast;
pub mod loss;
mod module_cache;
pub mod norm;
mod operand;
pub mod optim;
pub mod params;
pub mod pointwise;
pub mod pool;
pub mod radix_sort;
mod readback;
pub mod region_sampling;
mod storage;
mod timer;
mod upload;

pub use alloc::{AllocStats, size_class};
pub use call::{KernelCall, blocks_for};
pub use context::{CudaDevice, Transfers};
pub use conv::{ConvAlgo, ConvLaunch, ConvPass, ConvTransposeGeom};
pub use kernel_timer::KernelTime;
pub use readback::ScalarReadback;
pub use storage::CudaStorage;
pub use timer::GpuTimer;
pub use upload::PinnedUpload;

use cudarc::driver::DriverError;

use crate::error::Error;

/// Maps a driver error to [`Error::Cuda`], naming what was being done.
pub(crate) fn driver_error(what: &'static str) -> impl Fn(DriverError) -> Error {
    move |e| Error::Cuda(format!("{what}: {e}"))
}
