//! Checks of kernel operands shared by every op's host code.

use std::sync::Arc;

use super::{CudaDevice, CudaStorage};
use crate::error::{Error, Result};

/// That `s` holds exactly `want` values.
pub(crate) fn check_len(op: &'static str, what: &str, s: &CudaStorage, want: usize) -> Result<()> {
    if s.len() != want {
        return Err(Error::shape(
            op,
            format!("{what} holds {} values, the geometry needs {want}", s.len()),
        ));
    }
    Ok(())
}

/// The one device all operands live on.
pub(crate) fn common_device(op: &'static str, operands: &[&CudaStorage]) -> Result<Arc<CudaDevice>> {
    let device = operands[0].device();
    if operands.iter().any(|s| !Arc::ptr_eq(&s.device(), &device)) {
        return Err(Error::Device(format!("{op}: operands on different CUDA devices")));
    }
    Ok(device)
}
