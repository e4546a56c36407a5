//! Elastic deformation on the GPU: the host side of `kernels/elastic.cu`. The displacement noise
//! is drawn on the host from the CPU's generator and uploaded; the kernels smooth it and warp, so
//! the results equal the CPU's ([`crate::augment::elastic`]) bit for bit.

use bytemuck::{Pod, Zeroable};

use super::CudaStorage;
use super::call::{KernelCall, blocks_for};
use super::launch::dim;
use super::operand::{check_len, common_device};
use crate::error::{Error, Result};

const MODULE: &str = "elastic";
const THREADS: u32 = 256;

/// `ElasticSmoothParams` of `kernels/elastic.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct ElasticSmoothParams {
    pub input: u64,
    pub out: u64,
    pub taps: u64,
    pub planes: i32,
    pub h: i32,
    pub w: i32,
    pub radius: i32,
    pub scale: f32,
    pub reserved: i32,
}

const _: () = assert!(size_of::<ElasticSmoothParams>() == 48);
const _: () = assert!(std::mem::offset_of!(ElasticSmoothParams, planes) == 24);

/// `ElasticWarpParams` of `kernels/elastic.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ElasticWarpParams {
    pub image: u64,
    pub labels: u64,
    pub field: u64,
    pub out_image: u64,
    pub out_labels: u64,
    pub n: i32,
    pub h: i32,
    pub w: i32,
    pub reserved: i32,
}

const _: () = assert!(size_of::<ElasticWarpParams>() == 56);
const _: () = assert!(std::mem::offset_of!(ElasticWarpParams, n) == 40);

fn dims(op: &'static str, planes: usize, h: usize, w: usize) -> Result<(i32, i32, i32)> {
    dim(op, "pixels", planes * h * w)?;
    if planes > 65_535 {
        return Err(Error::shape(op, format!("{planes} planes exceed 65535 per call")));
    }
    Ok((dim(op, "planes", planes)?, dim(op, "height", h)?, dim(op, "width", w)?))
}

/// The launches that turn `n` images' raw noise (`noise`: n x 2 x h x w, each image's dy plane
/// then its dx plane) into displacement fields at `field` (same layout): separable smoothing with
/// the `taps` (2r + 1 values at `taps_addr`) and reflect boundaries, then times `alpha`.
/// `tmp` holds as many values as `noise`.
#[allow(clippy::too_many_arguments)]
pub fn field_calls(
    n: usize,
    h: usize,
    w: usize,
    taps: usize,
    alpha: f32,
    noise: u64,
    taps_addr: u64,
    tmp: u64,
    field: u64,
) -> Result<Vec<KernelCall>> {
    const OP: &str = "elastic field";
    let (planes, hi, wi) = dims(OP, 2 * n, h, w)?;
    if n == 0 || h * w == 0 {
        return Ok(Vec::new());
    }
    if taps.is_multiple_of(2) {
        return Err(Error::shape(OP, format!("{taps} smoothing taps are not 2 r + 1")));
    }
    let grid = (blocks_for(h * w, THREADS as usize), 2 * n, 1);
    let columns = ElasticSmoothParams {
        input: noise,
        out: tmp,
        taps: taps_addr,
        planes,
        h: hi,
        w: wi,
        radius: (taps / 2) as i32,
        scale: 1.0,
        reserved: 0,
    };
    let rows = ElasticSmoothParams {
        input: tmp,
        out: field,
        scale: alpha,
        ..columns
    };
    Ok(vec![
        KernelCall::new(MODULE, "elastic_smooth_columns", grid, THREADS, &columns),
        KernelCall::new(MODULE, "elastic_smooth_rows", grid, THREADS, &rows),
    ])
}

/// The launch that warps `n` images (and their label maps when `labels` is not 0) with the
/// fields at `field` into `out_image` (and `out_labels`).
#[allow(clippy::too_many_arguments)]
pub fn warp_calls(
    n: usize,
    h: usize,
    w: usize,
    image: u64,
    labels: u64,
    field: u64,
    out_image: u64,
    out_labels: u64,
) -> Result<Vec<KernelCall>> {
    const OP: &str = "elastic warp";
    let (ni, hi, wi) = dims(OP, n, h, w)?;
    if n == 0 || h * w == 0 {
        return Ok(Vec::new());
    }
    let p = ElasticWarpParams {
        image,
        labels,
        field,
        out_image,
        out_labels: if labels == 0 { 0 } else { out_labels },
        n: ni,
        h: hi,
        w: wi,
        reserved: 0,
    };
    Ok(vec![KernelCall::new(
        MODULE,
        "elastic_warp",
        (blocks_for(h * w, THREADS as usize), n, 1),
        THREADS,
        &p,
    )])
}

/// Displacement fields (n x 2 x h x w: dy plane, dx plane per image) from uploaded raw noise of
/// the same layout, smoothed with `taps` (f32, 2r + 1 of them) and scaled by `alpha`.
pub fn fields(
    noise: &CudaStorage,
    taps: &CudaStorage,
    n: usize,
    h: usize,
    w: usize,
    alpha: f32,
) -> Result<CudaStorage> {
    const OP: &str = "elastic field";
    check_len(OP, "noise", noise, 2 * n * h * w)?;
    let device = common_device(OP, &[noise, taps])?;
    let tmp = CudaStorage::alloc(&device, noise.len())?;
    let field = CudaStorage::alloc(&device, noise.len())?;
    let calls = field_calls(
        n,
        h,
        w,
        taps.len(),
        alpha,
        noise.device_ptr(),
        taps.device_ptr(),
        tmp.device_ptr(),
        field.device_ptr(),
    )?;
    // SAFETY: noise, tmp and field hold 2n planes of h x w values and taps its 2r + 1 values,
    // which is what the planned grids read and write; tmp returns to the cache behind them.
    unsafe { device.run(&calls) }?;
    Ok(field)
}

/// `images` (n x h x w f32) warped bilinearly with `field`, and `labels` (n x h x w u32 words)
/// by nearest neighbour when given.
pub fn warp(
    field: &CudaStorage,
    images: &CudaStorage,
    labels: Option<&CudaStorage>,
    n: usize,
    h: usize,
    w: usize,
) -> Result<(CudaStorage, Option<CudaStorage>)> {
    const OP: &str = "elastic warp";
    check_len(OP, "field", field, 2 * n * h * w)?;
    check_len(OP, "images", images, n * h * w)?;
    let mut operands = vec![field, images];
    if let Some(l) = labels {
        check_len(OP, "labels", l, n * h * w)?;
        operands.push(l);
    }
    let device = common_device(OP, &operands)?;
    let out_image = CudaStorage::alloc(&device, n * h * w)?;
    let out_labels = labels.map(|_| CudaStorage::alloc(&device, n * h * w)).transpose()?;
    let calls = warp_calls(
        n,
        h,
        w,
        images.device_ptr(),
        labels.map_or(0, CudaStorage::device_ptr),
        field.device_ptr(),
        out_image.device_ptr(),
        out_labels.as_ref().map_or(0, CudaStorage::device_ptr),
    )?;
    // SAFETY: every operand holds n images of h x w values (the field two planes per image),
    // checked above, which is what the planned grid reads and writes.
    unsafe { device.run(&calls) }?;
    Ok((out_image, out_labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        let f = field_calls(3, 10, 7, 9, 2.0, 1, 2, 3, 4).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].grid, (1, 6, 1));
        assert!(field_calls(3, 10, 7, 8, 2.0, 1, 2, 3, 4).is_err());
        assert!(field_calls(0, 10, 7, 9, 2.0, 1, 2, 3, 4).unwrap().is_empty());
        let w = warp_calls(2, 300, 1, 1, 0, 3, 4, 5).unwrap();
        assert_eq!(w[0].grid, (2, 2, 1));
        assert!(warp_calls(70_000, 2, 2, 1, 0, 3, 4, 5).is_err());
    }
}
