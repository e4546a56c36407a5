//! [`KernelCall`]: one kernel launch described completely (kernel, grid, block, shared memory and
//! the bytes of its parameter struct). Host code plans its launches as lists of these from device
//! addresses and shapes alone; the device queues them (`CudaDevice::run`) and the CPU
//! emulator runs the very same list ([`crate::device::emu`]), so the launch plans are checked
//! without a GPU.

use bytemuck::Pod;

use crate::error::{Error, Result};

/// The largest parameter struct a call carries (4 KiB, the limit CUDA guarantees on every driver).
pub const MAX_PARAM_BYTES: usize = 4096;

/// The parameter struct's bytes, aligned as the kernel's argument buffer expects.
#[repr(C, align(16))]
#[derive(Clone, Copy)]
pub struct ParamBlock(pub [u8; MAX_PARAM_BYTES]);

/// One kernel launch.
#[derive(Clone)]
pub struct KernelCall {
    /// The kernel file, `kernels/<module>.cu`.
    pub module: &'static str,
    pub kernel: &'static str,
    pub grid: (usize, usize, usize),
    /// Threads per block (1-D blocks only).
    pub block: u32,
    /// Dynamic shared memory in bytes.
    pub shared_bytes: u32,
    params: ParamBlock,
    param_len: usize,
}

impl KernelCall {
    /// A launch of `kernel` with `params`, the `#[repr(C)]` mirror of its parameter struct.
    pub fn new<P: Pod>(
        module: &'static str,
        kernel: &'static str,
        grid: (usize, usize, usize),
        block: u32,
        params: &P,
    ) -> KernelCall {
        const { assert!(size_of::<P>() <= MAX_PARAM_BYTES, "parameter struct too large") };
        let mut block_bytes = [0u8; MAX_PARAM_BYTES];
        block_bytes[..size_of::<P>()].copy_from_slice(bytemuck::bytes_of(params));
        KernelCall {
            module,
            kernel,
            grid,
            block,
            shared_bytes: 0,
            params: ParamBlock(block_bytes),
            param_len: size_of::<P>(),
        }
    }

    /// The same launch with `bytes` of dynamic shared memory.
    pub fn with_shared(mut self, bytes: usize) -> KernelCall {
        self.shared_bytes = bytes as u32;
        self
    }

    /// The bytes of the parameter struct.
    pub fn param_bytes(&self) -> &[u8] {
        &self.params.0[..self.param_len]
    }

    pub(crate) fn param_block(&self) -> &ParamBlock {
        &self.params
    }

    /// Checks the grid and block against the hardware limits (2^31 - 1 blocks along x, 65535
    /// along y and z, 1024 threads of whole warps, 227 KiB of shared memory on Hopper).
    pub fn validate(&self) -> Result<()> {
        let (x, y, z) = self.grid;
        if x == 0 || y == 0 || z == 0 || x > i32::MAX as usize || y > 65_535 || z > 65_535 {
            return Err(Error::Cuda(format!(
                "{}: grid {x} x {y} x {z} is outside the launch limits",
                self.kernel
            )));
        }
        if self.block == 0 || self.block > 1024 || !self.block.is_multiple_of(32) {
            return Err(Error::Cuda(format!(
                "{}: a block of {} threads is not 1 to 32 whole warps",
                self.kernel, self.block
            )));
        }
        if self.shared_bytes as usize > 227 * 1024 {
            return Err(Error::Cuda(format!(
                "{}: {} bytes of shared memory exceed the 227 KiB a block may have",
                self.kernel, self.shared_bytes
            )));
        }
        Ok(())
    }
}

impl std::fmt::Debug for KernelCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}::{}<<<({}, {}, {}), {}, {}>>>",
            self.module, self.kernel, self.grid.0, self.grid.1, self.grid.2, self.block, self.shared_bytes
        )
    }
}

/// Blocks of `per_block` covering `n` items, at least one.
pub fn blocks_for(n: usize, per_block: usize) -> usize {
    n.div_ceil(per_block).max(1)
}
