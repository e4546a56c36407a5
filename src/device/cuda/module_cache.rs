//! Kernel modules loaded lazily from the embedded fatbins, and their functions, kept for the
//! life of the device.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;

use super::driver_error;
use crate::error::{Error, Result};
use crate::kernels;

/// Shared memory a block may use without opting in: static and dynamic together.
const DEFAULT_SHARED_LIMIT: u32 = 48 * 1024;

/// A loaded kernel and the dynamic shared memory it may be launched with so far.
struct CachedKernel {
    function: CudaFunction,
    /// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` as last set (48 KiB less the kernel's
    /// static shared memory until then). Only ever raised: two threads launching one kernel
    /// with different sizes must not lower it under each other.
    dynamic_shared_limit: u32,
}

#[derive(Default)]
pub(crate) struct ModuleCache {
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, &'static str), CachedKernel>>,
}

impl ModuleCache {
    /// Kernel `name` of the module compiled from `kernels/<module>.cu`, ready to launch with
    /// `dynamic_shared` bytes of dynamic shared memory: without opting in, a block may use 48 KiB
    /// of static and dynamic shared memory together, so a request above 48 KiB less the kernel's
    /// static size (not above 48 KiB alone) needs `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`
    /// raised first. Binds the context to the calling thread: the driver calls made here do not
    /// bind it themselves, and a thread's first device work may be a launch on cached buffers.
    pub(crate) fn function(
        &self,
        ctx: &Arc<CudaContext>,
        module: &'static str,
        name: &'static str,
        dynamic_shared: u32,
    ) -> Result<CudaFunction> {
        ctx.bind_to_thread()
            .map_err(driver_error("bind the context to this thread"))?;
        let mut functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        let kernel = match functions.entry((module, name)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let loaded = self.module(ctx, module)?;
                let function = loaded
                    .load_function(name)
                    .map_err(|e| Error::Cuda(format!("kernel {name} is not in module {module}: {e}")))?;
                let static_shared = function
                    .shared_size_bytes()
                    .map_err(|e| Error::Cuda(format!("{name}: static shared memory size: {e}")))?;
                e.insert(CachedKernel {
                    function,
                    dynamic_shared_limit: DEFAULT_SHARED_LIMIT.saturating_sub(static_shared.max(0) as u32),
                })
            }
        };
        if dynamic_shared > kernel.dynamic_shared_limit {
            let value = i32::try_from(dynamic_shared)
                .map_err(|_| Error::Cuda(format!("{name}: {dynamic_shared} bytes of shared memory")))?;
            kernel
                .function
                .set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    value,
                )
                .map_err(|e| Error::Cuda(format!("{name}: shared memory opt-in for {dynamic_shared} bytes: {e}")))?;
            kernel.dynamic_shared_limit = dynamic_shared;
        }
        Ok(kernel.function.clone())
    }

    fn module(&self, ctx: &Arc<CudaContext>, module: &'static str) -> Result<Arc<CudaModule>> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = modules.get(module) {
            return Ok(m.clone());
        }
        let image = kernels::module_image(module).ok_or(Error::NoKernels)?.to_vec();
        // cuModuleLoadData reads the fatbin header in place, which needs 8-byte alignment; the
        // system allocator gives at least that for a buffer this size.
        if image.as_ptr().align_offset(8) != 0 {
            return Err(Error::Cuda(format!(
                "the {module} kernel image is misaligned in host memory"
            )));
        }
        let loaded = ctx
            .load_module(Ptx::from_binary(image))
            .map_err(driver_error("load kernel module"))?;
        modules.insert(module, loaded.clone());
        Ok(loaded)
    }
}
