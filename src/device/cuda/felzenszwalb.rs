//! Felzenszwalb segmentation of a batch of slices on the GPU: the host side of
//! `kernels/felzenszwalb.cu` (the algorithm, and how it differs from the exact CPU version, is
//! explained at the top of that file).
//!
//! [`felzenszwalb_calls`] plans the whole run from device addresses; [`felzenszwalb`] allocates
//! the buffers ([`FzBufferLens`]) on a device and queues it. Labels come back as u32 words,
//! `0..K-1` per slice numbered by first pixel, as [`crate::superpixel::felzenszwalb()`] gives them.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::call::{KernelCall, blocks_for};
use super::launch::dim;
use super::operand::check_len;
use super::radix_sort;
use super::{CudaDevice, CudaStorage};
use crate::error::{Error, Result};
use crate::superpixel::{FelzenszwalbParams, gaussian_kernel};

const MODULE: &str = "felzenszwalb";
const THREADS: u32 = 256;
const BLOCK_THREADS: u32 = 1024;
/// Edges per window at most: window positions take 11 bits of an incidence key.
pub const MAX_WINDOW: usize = 2048;
const POS_BITS: u32 = 11;
/// Pixels per slice at most: a root index takes the other 21 bits of an incidence key.
pub const MAX_PIXELS: usize = (1 << (32 - POS_BITS)) - 1;
/// Windows the sorted edges of a slice are cut into by default (see felzenszwalb.cu): the more,
/// the closer to the exact result and the longer the sequential part of the merging pass.
pub const DEFAULT_WINDOWS: usize = 768;
/// Fixed-point rounds per window at most; they converge long before (2 to 3 are typical).
pub const MAX_ITERATIONS: usize = 64;

/// `FzSmoothParams` of `kernels/felzenszwalb.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FzSmoothParams {
    pub in_f32: u64,
    pub in_f64: u64,
    pub taps: u64,
    pub out: u64,
    pub n: i32,
    pub h: i32,
    pub w: i32,
    pub radius: i32,
}

const _: () = assert!(size_of::<FzSmoothParams>() == 48);
const _: () = assert!(std::mem::offset_of!(FzSmoothParams, n) == 32);

/// `FzEdgeParams` of `kernels/felzenszwalb.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FzEdgeParams {
    pub smoothed: u64,
    pub keys: u64,
    pub vals: u64,
    pub n: i32,
    pub h: i32,
    pub w: i32,
    pub edges: i32,
    pub high: i32,
    pub reserved: i32,
}

const _: () = assert!(size_of::<FzEdgeParams>() == 48);
const _: () = assert!(std::mem::offset_of!(FzEdgeParams, high) == 40);

/// `FzMergeParams` of `kernels/felzenszwalb.cu`: the union-find state and its passes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct FzMergeParams {
    pub smoothed: u64,
    pub order: u64,
    pub parent: u64,
    pub size: u64,
    pub threshold: u64,
    pub merged_max: u64,
    pub reserve: u64,
    pub claim: u64,
    pub list: u64,
    pub kept: u64,
    pub labels: u64,
    pub counts: u64,
    pub k: f64,
    pub initial_threshold: f32,
    pub n: i32,
    pub h: i32,
    pub w: i32,
    pub edges: i32,
    pub window: i32,
    pub max_iterations: i32,
    pub min_size: i32,
}

const _: () = assert!(size_of::<FzMergeParams>() == 136);
const _: () = assert!(std::mem::offset_of!(FzMergeParams, k) == 96);
const _: () = assert!(std::mem::offset_of!(FzMergeParams, min_size) == 132);

/// `n` slices of `h x w` pixels, stored one after another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceBatch {
    pub n: usize,
    pub h: usize,
    pub w: usize,
}

impl SliceBatch {
    /// Pixels per slice.
    pub fn pixels(&self) -> usize {
        self.h * self.w
    }

    /// 8-connected edges per slice.
    pub fn edges(&self) -> usize {
        let (h, w) = (self.h, self.w);
        if h == 0 || w == 0 {
            return 0;
        }
        h * (w - 1) + (h - 1) * w + 2 * (h - 1) * (w - 1)
    }
}

/// Device addresses of the buffers of one run, all 32-bit words (float64 values take two).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FzBuffers {
    /// The slices, f32.
    pub images: u64,
    /// The smoothing taps, f64.
    pub taps: u64,
    pub column_pass: u64,
    pub smoothed: u64,
    pub keys: u64,
    pub vals: u64,
    pub keys_tmp: u64,
    pub vals_tmp: u64,
    pub sort_counts: u64,
    pub parent: u64,
    pub size: u64,
    pub threshold: u64,
    pub merged_max: u64,
    pub reserve: u64,
    pub claim: u64,
    pub list: u64,
    pub kept: u64,
    /// Output: u32 labels, n x h x w.
    pub labels: u64,
    /// Output: u32 segment counts, n.
    pub counts: u64,
}

/// Words each buffer of [`FzBuffers`] holds for a batch (same field names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FzBufferLens {
    pub images: usize,
    pub taps: usize,
    pub column_pass: usize,
    pub smoothed: usize,
    pub keys: usize,
    pub sort_counts: usize,
    pub per_pixel: usize,
    pub merged_max: usize,
    pub list: usize,
    pub kept: usize,
    pub counts: usize,
}

impl FzBufferLens {
    /// For `batch` and smoothing `taps` values.
    pub fn new(batch: SliceBatch, taps: usize) -> FzBufferLens {
        let (pixels, edges) = (batch.n * batch.pixels(), batch.n * batch.edges());
        FzBufferLens {
            images: pixels,
            taps: 2 * taps,
            column_pass: 2 * pixels,
            smoothed: 2 * pixels,
            keys: edges,
            sort_counts: radix_sort::count_words(batch.n, batch.edges()),
            per_pixel: pixels,
            merged_max: 2 * pixels,
            list: edges,
            kept: 3 * edges,
            counts: batch.n,
        }
    }
}

/// The smoothing taps the CPU uses for `sigma`: scipy's kernel, or the identity for a sigma of
/// at most 1e-15 (which scipy, and the CPU version, skip).
pub fn smoothing_taps(sigma: f64) -> Vec<f64> {
    if sigma <= 1e-15 {
        vec![1.0]
    } else {
        gaussian_kernel(sigma)
    }
}

/// Edges per window for `windows` windows over `edges` edges (at least 1, at most [`MAX_WINDOW`]).
pub fn window_len(edges: usize, windows: usize) -> usize {
    edges.div_ceil(windows.max(1)).clamp(1, MAX_WINDOW)
}

/// Threads and dynamic shared bytes of `fz_merge` for windows of `window` edges.
pub fn merge_launch(window: usize) -> (u32, usize) {
    let keys = (2 * window).next_power_of_two();
    let threads = (keys / 2).clamp(32, BLOCK_THREADS as usize) as u32;
    (threads, 40 * window + 4 * keys)
}

/// Checks a batch and the parameters for the GPU version.
pub fn check(batch: SliceBatch, params: &FelzenszwalbParams, windows: usize) -> Result<()> {
    const OP: &str = "felzenszwalb";
    params.validate()?;
    if windows == 0 {
        return Err(Error::config("felzenszwalb: windows must be at least 1"));
    }
    if batch.pixels() > MAX_PIXELS {
        return Err(Error::shape(
            OP,
            format!(
                "slices of {} x {} exceed the {MAX_PIXELS} pixels the GPU version handles",
                batch.h, batch.w
            ),
        ));
    }
    if batch.n > 65_535 {
        return Err(Error::shape(OP, format!("{} slices exceed 65535 per call", batch.n)));
    }
    dim(OP, "edges", batch.n * batch.edges())?;
    if params.min_size > i32::MAX as usize {
        return Err(Error::config(format!(
            "felzenszwalb: min_size {} is too large",
            params.min_size
        )));
    }
    Ok(())
}

/// The launches of a whole run: smoothing, edges, sort, merging, min_size pass, labels.
/// `taps` is the length of [`smoothing_taps`] for `params.sigma`, uploaded at `b.taps`.
pub fn felzenszwalb_calls(
    batch: SliceBatch,
    params: &FelzenszwalbParams,
    windows: usize,
    taps: usize,
    b: &FzBuffers,
) -> Result<Vec<KernelCall>> {
    const OP: &str = "felzenszwalb";
    check(batch, params, windows)?;
    let (n, pixels, edges) = (batch.n, batch.pixels(), batch.edges());
    if n == 0 || pixels == 0 {
        return Ok(Vec::new());
    }
    if taps.is_multiple_of(2) {
        return Err(Error::shape(OP, format!("{taps} smoothing taps are not 2 r + 1")));
    }
    let (ni, h, w) = (
        dim(OP, "slices", n)?,
        dim(OP, "height", batch.h)?,
        dim(OP, "width", batch.w)?,
    );
    let pixel_grid = (blocks_for(pixels, THREADS as usize), n, 1);
    let mut calls = Vec::new();

    let smooth = FzSmoothParams {
        in_f32: b.images,
        in_f64: 0,
        taps: b.taps,
        out: b.column_pass,
        n: ni,
        h,
        w,
        radius: (taps / 2) as i32,
    };
    calls.push(KernelCall::new(
        MODULE,
        "fz_smooth_columns",
        pixel_grid,
        THREADS,
        &smooth,
    ));
    let rows = FzSmoothParams {
        in_f32: 0,
        in_f64: b.column_pass,
        out: b.smoothed,
        ..smooth
    };
    calls.push(KernelCall::new(MODULE, "fz_smooth_rows", pixel_grid, THREADS, &rows));

    let k = params.scale / 255.0;
    let window = window_len(edges, windows);
    let merge = FzMergeParams {
        smoothed: b.smoothed,
        order: b.vals,
        parent: b.parent,
        size: b.size,
        threshold: b.threshold,
        merged_max: b.merged_max,
        reserve: b.reserve,
        claim: b.claim,
        list: b.list,
        kept: b.kept,
        labels: b.labels,
        counts: b.counts,
        k,
        initial_threshold: (0.0 + k / 1.0) as f32,
        n: ni,
        h,
        w,
        edges: dim(OP, "edges", edges)?,
        window: window as i32,
        max_iterations: MAX_ITERATIONS as i32,
        min_size: params.min_size as i32,
    };
    calls.push(KernelCall::new(MODULE, "fz_init", pixel_grid, THREADS, &merge));
    if edges > 0 {
        // The edges by weight: a stable sort by the low half of the order key, then by the high.
        for high in [0, 1] {
            let keys = FzEdgeParams {
                smoothed: b.smoothed,
                keys: b.keys,
                vals: b.vals,
                n: ni,
                h,
                w,
                edges: merge.edges,
                high,
                reserved: 0,
            };
            calls.push(KernelCall::new(
                MODULE,
                "fz_edge_keys",
                (blocks_for(edges, THREADS as usize), n, 1),
                THREADS,
                &keys,
            ));
            calls.extend(radix_sort::segmented_sort_calls(
                n,
                edges,
                32,
                b.keys,
                b.vals,
                b.keys_tmp,
                b.vals_tmp,
                b.sort_counts,
            )?);
        }
        let (threads, shared) = merge_launch(window);
        calls.push(KernelCall::new(MODULE, "fz_merge", (n, 1, 1), threads, &merge).with_shared(shared));
        // Sizes never fall below 1, so min_size <= 1 merges nothing.
        if params.min_size > 1 {
            let threads = radix_sort::block_threads(edges);
            calls.push(KernelCall::new(MODULE, "fz_min_size", (n, 1, 1), threads, &merge));
        }
    }
    let threads = radix_sort::block_threads(pixels);
    calls.push(KernelCall::new(MODULE, "fz_label", (n, 1, 1), threads, &merge));
    Ok(calls)
}

/// Segments of a batch: labels (u32 words, `0..K-1` per slice) and K per slice (u32 words).
#[derive(Clone, Debug)]
pub struct FzOutput {
    pub labels: CudaStorage,
    pub counts: CudaStorage,
}

/// Felzenszwalb segments of `batch` (f32 slices in `images`) with `windows` windows per slice
/// ([`DEFAULT_WINDOWS`] unless experimenting).
pub fn felzenszwalb(
    images: &CudaStorage,
    batch: SliceBatch,
    params: &FelzenszwalbParams,
    windows: usize,
) -> Result<FzOutput> {
    const OP: &str = "felzenszwalb";
    check(batch, params, windows)?;
    check_len(OP, "images", images, batch.n * batch.pixels())?;
    let device = images.device();
    let taps = smoothing_taps(params.sigma);
    let lens = FzBufferLens::new(batch, taps.len());
    let alloc = |len: usize| CudaStorage::alloc(&device, len);
    let taps_storage = CudaStorage::from_host_pod(&device, &taps)?;
    let scratch: Vec<CudaStorage> = [
        lens.column_pass,
        lens.smoothed,
        lens.keys,
        lens.keys,
        lens.keys,
        lens.keys,
        lens.sort_counts,
        lens.per_pixel,
        lens.per_pixel,
        lens.per_pixel,
        lens.merged_max,
        lens.per_pixel,
        lens.per_pixel,
        lens.list,
        lens.kept,
    ]
    .into_iter()
    .map(alloc)
    .collect::<Result<_>>()?;
    let out = FzOutput {
        labels: alloc(lens.per_pixel)?,
        counts: alloc(lens.counts)?,
    };
    let a = |i: usize| scratch[i].device_ptr();
    let buffers = FzBuffers {
        images: images.device_ptr(),
        taps: taps_storage.device_ptr(),
        column_pass: a(0),
        smoothed: a(1),
        keys: a(2),
        vals: a(3),
        keys_tmp: a(4),
        vals_tmp: a(5),
        sort_counts: a(6),
        parent: a(7),
        size: a(8),
        threshold: a(9),
        merged_max: a(10),
        reserve: a(11),
        claim: a(12),
        list: a(13),
        kept: a(14),
        labels: out.labels.device_ptr(),
        counts: out.counts.device_ptr(),
    };
    let calls = felzenszwalb_calls(batch, params, windows, taps.len(), &buffers)?;
    run(&device, &calls)?;
    Ok(out)
}

fn run(device: &Arc<CudaDevice>, calls: &[KernelCall]) -> Result<()> {
    // SAFETY: every address in the plan is one of the blocks allocated above with the lengths of
    // FzBufferLens, which are what the kernels index under this plan's grids; the scratch blocks
    // return to the cache when dropped, and later users of them queue behind these kernels on
    // the same stream.
    unsafe { device.run(calls) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_counts_follow_the_four_blocks() {
        let e = |h, w| SliceBatch { n: 1, h, w }.edges();
        assert_eq!(e(2, 3), 11);
        assert_eq!(e(1, 1), 0);
        assert_eq!(e(1, 17), 16);
        assert_eq!(e(13, 1), 12);
        assert_eq!(e(0, 5), 0);
        assert_eq!(e(512, 512), 512 * 511 * 2 + 2 * 511 * 511);
    }

    #[test]
    fn windows_and_merge_launch() {
        assert_eq!(window_len(1_045_506, 512), 2043);
        assert_eq!(window_len(1_045_506, DEFAULT_WINDOWS), 1362);
        assert_eq!(window_len(10, 512), 1);
        assert_eq!(window_len(10_000_000, 512), MAX_WINDOW);
        assert_eq!(merge_launch(2042), (1024, 40 * 2042 + 4 * 4096));
        assert_eq!(merge_launch(1), (32, 40 + 8));
        assert_eq!(merge_launch(100), (128, 4000 + 1024));
    }

    #[test]
    fn plans_every_stage_and_refuses_what_it_cannot_do() {
        let p = FelzenszwalbParams {
            scale: 100.0,
            sigma: 0.8,
            min_size: 50,
        };
        let batch = SliceBatch { n: 2, h: 40, w: 30 };
        let b = FzBuffers::default();
        let calls = felzenszwalb_calls(batch, &p, 512, 7, &b).unwrap();
        let names: Vec<&str> = calls.iter().map(|c| c.kernel).collect();
        assert_eq!(
            names[..4],
            ["fz_smooth_columns", "fz_smooth_rows", "fz_init", "fz_edge_keys"]
        );
        assert_eq!(names[names.len() - 3..], ["fz_merge", "fz_min_size", "fz_label"]);
        let no_min = FelzenszwalbParams { min_size: 1, ..p };
        assert!(
            !felzenszwalb_calls(batch, &no_min, 512, 7, &b)
                .unwrap()
                .iter()
                .any(|c| c.kernel == "fz_min_size")
        );
        let one_pixel = felzenszwalb_calls(SliceBatch { n: 3, h: 1, w: 1 }, &p, 512, 7, &b).unwrap();
        assert_eq!(
            one_pixel.iter().map(|c| c.kernel).collect::<Vec<_>>(),
            ["fz_smooth_columns", "fz_smooth_rows", "fz_init", "fz_label"]
        );
        assert!(
            felzenszwalb_calls(SliceBatch { n: 0, h: 4, w: 4 }, &p, 512, 7, &b)
                .unwrap()
                .is_empty()
        );
        assert!(felzenszwalb_calls(batch, &p, 0, 7, &b).is_err());
        assert!(felzenszwalb_calls(batch, &p, 512, 6, &b).is_err());
        assert!(felzenszwalb_calls(SliceBatch { n: 1, h: 2048, w: 2048 }, &p, 512, 7, &b).is_err());
        let nan = FelzenszwalbParams { scale: f64::NAN, ..p };
        assert!(felzenszwalb_calls(batch, &nan, 512, 7, &b).is_err());
    }

    #[test]
    fn taps_are_the_cpu_kernel_or_the_identity() {
        assert_eq!(smoothing_taps(0.0), vec![1.0]);
        assert_eq!(smoothing_taps(0.8), gaussian_kernel(0.8));
    }
}
