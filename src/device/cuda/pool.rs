//! 2x2 max pooling and global average pooling on the GPU: the host side of `kernels/pool.cu`.
//!
//! Max pooling keeps its argmax on the device (one u32 flat input index per output element, in
//! a [`CudaStorage`] of 32-bit words), so that the backward needs no host copy. Element loops are
//! 1-D grids of 256-thread blocks capped at [`MAX_BLOCKS`] with grid-stride loops; the average
//! pool gives each plane one warp.

use bytemuck::{Pod, Zeroable};

use super::call::{KernelCall, blocks_for};
use super::launch::dim;
use super::operand::{check_len, common_device};
use super::pointwise::{aligned16, grid_for};
use super::{CudaStorage, pointwise};
use crate::error::{Error, Result};

const MODULE: &str = "pool";

/// Threads per block of every kernel of `pool.cu`.
pub const THREADS: usize = 256;

/// The most blocks an element loop takes, as for the element-wise kernels.
pub const MAX_BLOCKS: usize = pointwise::MAX_BLOCKS;

/// Planes one block of `plane_mean_f32` averages: one per warp.
const PLANES_PER_BLOCK: usize = THREADS / 32;

/// `MaxPoolParams` of `kernels/pool.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct MaxPoolParams {
    pub x: u64,
    pub y: u64,
    pub argmax: u64,
    pub planes: i32,
    pub h: i32,
    pub w: i32,
    pub reserved: i32,
}
const _: () = assert!(size_of::<MaxPoolParams>() == 40);
const _: () = assert!(std::mem::offset_of!(MaxPoolParams, planes) == 24);

/// `MaxPoolBackwardParams` of `kernels/pool.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct MaxPoolBackwardParams {
    pub dy: u64,
    pub argmax: u64,
    pub dx: u64,
    pub planes: i32,
    pub h: i32,
    pub w: i32,
    pub reserved: i32,
}
const _: () = assert!(size_of::<MaxPoolBackwardParams>() == 40);
const _: () = assert!(std::mem::offset_of!(MaxPoolBackwardParams, planes) == 24);

/// `PlaneMeanParams` of `kernels/pool.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PlaneMeanParams {
    pub x: u64,
    pub out: u64,
    pub planes: i32,
    pub plane_len: i32,
}
const _: () = assert!(size_of::<PlaneMeanParams>() == 24);
const _: () = assert!(std::mem::offset_of!(PlaneMeanParams, planes) == 16);

/// `PlaneBroadcastParams` of `kernels/pool.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct PlaneBroadcastParams {
    pub dy: u64,
    pub dx: u64,
    pub scale: f32,
    pub planes: i32,
    pub plane_len: i32,
    pub vec4: i32,
}
const _: () = assert!(size_of::<PlaneBroadcastParams>() == 32);
const _: () = assert!(std::mem::offset_of!(PlaneBroadcastParams, scale) == 16);

fn call<P: Pod>(kernel: &'static str, blocks: usize, params: &P) -> KernelCall {
    KernelCall::new(MODULE, kernel, (blocks, 1, 1), THREADS as u32, params)
}

/// Checks a max-pool geometry: a whole window fits and the input length fits the kernels' i32
/// indices (so its flat indices fit the u32 argmax).
fn check_max_pool(planes: usize, h: usize, w: usize) -> Result<(i32, i32, i32)> {
    const OP: &str = "max_pool2d";
    if h < 2 || w < 2 {
        return Err(Error::shape(
            OP,
            format!("input {h}x{w} is smaller than the 2x2 window"),
        ));
    }
    let len = planes
        .checked_mul(h * w)
        .ok_or_else(|| Error::shape(OP, "the input is too large".to_string()))?;
    dim(OP, "input length", len)?;
    Ok((dim(OP, "planes", planes)?, dim(OP, "height", h)?, dim(OP, "width", w)?))
}

/// The launch that writes the 2x2 maxima of `planes` planes of `h x w` at `x` into `y`
/// (`planes x h/2 x w/2`) and their flat input indices into `argmax` (as many u32 words).
pub fn max_pool_calls(
    planes: usize,
    h: usize,
    w: usize,
    x: u64,
    y: u64,
    argmax: u64,
    max_blocks: usize,
) -> Result<Vec<KernelCall>> {
    let (p, hh, ww) = check_max_pool(planes, h, w)?;
    let outputs = planes * (h / 2) * (w / 2);
    if outputs == 0 {
        return Ok(Vec::new());
    }
    let params = MaxPoolParams {
        x,
        y,
        argmax,
        planes: p,
        h: hh,
        w: ww,
        reserved: 0,
    };
    Ok(vec![call(
        "max_pool2x2_f32",
        grid_for(outputs, false, max_blocks),
        &params,
    )])
}

/// The launch that writes the input gradient `dx` (`planes x h x w`) of a 2x2 max pool from the
/// output gradient `dy` and the forward's `argmax`; every element of `dx` is written. Even sizes
/// with `dx` 8-byte aligned (the U-Net's: every storage starts 256-byte aligned) take one thread
/// per window, its four gradients stored as two pairs; others one thread per element.
pub fn max_pool_backward_calls(
    planes: usize,
    h: usize,
    w: usize,
    dy: u64,
    argmax: u64,
    dx: u64,
    max_blocks: usize,
) -> Result<Vec<KernelCall>> {
    let (p, hh, ww) = check_max_pool(planes, h, w)?;
    let inputs = planes * h * w;
    if inputs == 0 {
        return Ok(Vec::new());
    }
    let by_window = h.is_multiple_of(2) && w.is_multiple_of(2) && dx.is_multiple_of(8);
    let (kernel, threads) = if by_window {
        ("max_pool2x2_backward_window_f32", inputs / 4)
    } else {
        ("max_pool2x2_backward_f32", inputs)
    };
    let params = MaxPoolBackwardParams {
        dy,
        argmax,
        dx,
        planes: p,
        h: hh,
        w: ww,
        reserved: 0,
    };
    Ok(vec![call(kernel, grid_for(threads, false, max_blocks), &params)])
}

/// The launch that writes the mean of each of the `planes` planes of `plane_len` values at `x`
/// into `out`.
pub fn plane_mean_calls(planes: usize, plane_len: usize, x: u64, out: u64) -> Result<Vec<KernelCall>> {
    const OP: &str = "global_avg_pool";
    if planes == 0 {
        return Ok(Vec::new());
    }
    let params = PlaneMeanParams {
        x,
        out,
        planes: dim(OP, "planes", planes)?,
        plane_len: dim(OP, "plane length", plane_len)?,
    };
    Ok(vec![call(
        "plane_mean_f32",
        blocks_for(planes, PLANES_PER_BLOCK),
        &params,
    )])
}

/// The launch that writes `dx[p][i] = dy[p] * scale` for `planes` planes of `plane_len` values.
pub fn plane_broadcast_calls(
    planes: usize,
    plane_len: usize,
    dy: u64,
    dx: u64,
    scale: f32,
    max_blocks: usize,
) -> Result<Vec<KernelCall>> {
    const OP: &str = "global_avg_pool backward";
    let len = planes
        .checked_mul(plane_len)
        .ok_or_else(|| Error::shape(OP, "the input is too large".to_string()))?;
    dim(OP, "input length", len)?;
    if len == 0 {
        return Ok(Vec::new());
    }
    let vec4 = plane_len.is_multiple_of(4) && aligned16(&[dx]);
    let params = PlaneBroadcastParams {
        dy,
        dx,
        scale,
        planes: dim(OP, "planes", planes)?,
        plane_len: dim(OP, "plane length", plane_len)?,
        vec4: vec4 as i32,
    };
    Ok(vec![call(
        "plane_broadcast_f32",
        grid_for(len, vec4, max_blocks),
        &params,
    )])
}

/// The f32 factor of the average pool's backward, rounded as the CPU twin rounds it.
pub fn mean_scale(plane_len: usize) -> f32 {
    (1.0 / plane_len as f64) as f32
}

/// 2x2 max pooling of `planes` planes of `h x w`: the pooled values and, per output element, the
/// flat input index of its maximum (u32 words).
pub fn max_pool2x2(x: &CudaStorage, planes: usize, h: usize, w: usize) -> Result<(CudaStorage, CudaStorage)> {
    check_len("max_pool2d", "input", x, planes * h * w)?;
    let device = x.device();
    let outputs = planes * (h / 2) * (w / 2);
    let y = CudaStorage::alloc(&device, outputs)?;
    let argmax = CudaStorage::alloc(&device, outputs)?;
    let calls = max_pool_calls(
        planes,
        h,
        w,
        x.device_ptr(),
        y.device_ptr(),
        argmax.device_ptr(),
        MAX_BLOCKS,
    )?;
    // SAFETY: x holds planes*h*w values (checked above), y and argmax planes*(h/2)*(w/2) words
    // each; all stay alive until the kernel has run (a freed block is only reused by later work
    // on the same stream).
    unsafe { device.run(&calls) }?;
    Ok((y, argmax))
}

/// The input gradient of [`max_pool2x2`] from the output gradient and the argmax it returned.
pub fn max_pool2x2_backward(
    dy: &CudaStorage,
    argmax: &CudaStorage,
    planes: usize,
    h: usize,
    w: usize,
) -> Result<CudaStorage> {
    const OP: &str = "max_pool2d backward";
    let outputs = planes * (h / 2) * (w / 2);
    check_len(OP, "output gradient", dy, outputs)?;
    check_len(OP, "argmax", argmax, outputs)?;
    let device = common_device(OP, &[dy, argmax])?;
    let dx = CudaStorage::alloc(&device, planes * h * w)?;
    let calls = max_pool_backward_calls(
        planes,
        h,
        w,
        dy.device_ptr(),
        argmax.device_ptr(),
        dx.device_ptr(),
        MAX_BLOCKS,
    )?;
    // SAFETY: dy and argmax hold planes*(h/2)*(w/2) values (checked above), dx planes*h*w; the
    // argmax entries are flat indices below planes*h*w written by the forward kernel, and the
    // backward kernel only compares them, never dereferences them.
    unsafe { device.run(&calls) }?;
    Ok(dx)
}

/// The mean of each of `planes` planes of `plane_len` values.
pub fn global_avg_pool(x: &CudaStorage, planes: usize, plane_len: usize) -> Result<CudaStorage> {
    check_len("global_avg_pool", "input", x, planes * plane_len)?;
    let device = x.device();
    let out = CudaStorage::alloc(&device, planes)?;
    let calls = plane_mean_calls(planes, plane_len, x.device_ptr(), out.device_ptr())?;
    // SAFETY: x holds planes*plane_len values (checked above), out `planes`.
    unsafe { device.run(&calls) }?;
    Ok(out)
}

/// The input gradient of [`global_avg_pool`]: each plane filled with its gradient / plane_len.
pub fn global_avg_pool_backward(dy: &CudaStorage, planes: usize, plane_len: usize) -> Result<CudaStorage> {
    check_len("global_avg_pool backward", "output gradient", dy, planes)?;
    let device = dy.device();
    let dx = CudaStorage::alloc(&device, planes * plane_len)?;
    let calls = plane_broadcast_calls(
        planes,
        plane_len,
        dy.device_ptr(),
        dx.device_ptr(),
        mean_scale(plane_len),
        MAX_BLOCKS,
    )?;
    // SAFETY: dy holds `planes` values (checked above), dx planes*plane_len.
    unsafe { device.run(&calls) }?;
    Ok(dx)
}
