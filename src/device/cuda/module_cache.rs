//! Kernel modules loaded lazily from the embedded fatbins, and their functions, kept for the
//! life of the device.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;

use super::driver_error;
use crate::error::{Error, Result};
use crate::kernels;

#[derive(Default)]
pub(crate) struct ModuleCache {
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
}

impl ModuleCache {
    /// Kernel `name` of the module compiled from `kernels/<module>.cu`.
    pub(crate) fn function(
        &self,
        ctx: &Arc<CudaContext>,
        module: &'static str,
        name: &'static str,
    ) -> Result<CudaFunction> {
        let mut functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = functions.get(&(module, name)) {
            return Ok(f.clone());
        }
        let loaded = self.module(ctx, module)?;
        let f = loaded
            .load_function(name)
            .map_err(|e| Error::Cuda(format!("kernel {name} is not in module {module}: {e}")))?;
        functions.insert((module, name), f.clone());
        Ok(f)
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
