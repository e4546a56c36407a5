//! The CT clean-up of Felzenszwalb segments on the GPU, batched over slices: the host side of
//! `kernels/cleanup.cu` (the steps, the connected components and why the result does not depend
//! on scheduling are explained at the top of that file).
//!
//! [`cleanup_calls`] plans the whole clean-up from device addresses; [`clean`] allocates the
//! buffers ([`CleanupBufferLens`]) on a device and queues it. The output equals
//! [`body_mask`](crate::superpixel::cleanup::body_mask) followed by
//! [`clean_regions`](crate::superpixel::cleanup::clean_regions) on every slice, label for label:
//! u16 labels `1..=K` inside the body, 0 elsewhere, stored two to a 32-bit word.

use bytemuck::{Pod, Zeroable};

use super::call::{KernelCall, blocks_for};
use super::felzenszwalb::SliceBatch;
use super::launch::dim;
use super::operand::{check_len, common_device};
use super::radix_sort;
use super::{CudaDevice, CudaStorage};
use crate::error::{Error, Result};
use crate::superpixel::CleanupConfig;

const MODULE: &str = "cleanup";
const OP: &str = "clean-up";
const THREADS: u32 = 256;

/// `CleanupParams` of `kernels/cleanup.cu`. Fields marked "per call" there differ between the
/// launches of one plan.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct CleanupParams {
    pub images: u64,
    pub segments: u64,
    pub src: u64,
    pub dst: u64,
    pub aux: u64,
    pub body: u64,
    pub parent: u64,
    pub size: u64,
    pub best: u64,
    pub counts: u64,
    pub first: u64,
    pub keys: u64,
    pub vals: u64,
    pub keys_out: u64,
    pub vals_out: u64,
    pub new_label: u64,
    pub labels: u64,
    pub status: u64,
    pub threshold: f32,
    pub n: i32,
    pub h: i32,
    pub w: i32,
    pub radius: i32,
    pub axis: i32,
    pub erode: i32,
    pub foreground: i32,
    pub pass: i32,
    pub border_flags: i32,
    pub reset_forest: i32,
    pub fill_holes: i32,
    pub min_region_pixels: i32,
    pub max_regions: i32,
}

const _: () = assert!(size_of::<CleanupParams>() == 200);
const _: () = assert!(std::mem::offset_of!(CleanupParams, threshold) == 144);
const _: () = assert!(std::mem::offset_of!(CleanupParams, radius) == 160);
const _: () = assert!(std::mem::offset_of!(CleanupParams, max_regions) == 196);

/// Device addresses of the buffers of one clean-up (lengths in [`CleanupBufferLens`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanupBuffers {
    /// Input: the normalised slices, f32.
    pub images: u64,
    /// Input: u32 segment labels, below h * w per slice (Felzenszwalb's).
    pub segments: u64,
    /// Four byte masks of n x h x w one after another: candidates, two work masks, the body.
    /// The body mask (1 inside) is left in the fourth after the run.
    pub masks: u64,
    pub parent: u64,
    pub size: u64,
    /// Two u64 per slice.
    pub best: u64,
    pub counts: u64,
    pub first: u64,
    pub keys: u64,
    pub vals: u64,
    pub sort_counts: u64,
    pub new_label: u64,
    /// Output: n x h x w u16 labels.
    pub labels: u64,
    /// Output: one word, 1 when a segment label is not below h * w.
    pub status: u64,
}

/// 32-bit words each buffer of [`CleanupBuffers`] holds for a batch (`per_pixel` for parent,
/// size, counts, first, keys, vals and new_label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CleanupBufferLens {
    pub images: usize,
    pub masks: usize,
    pub per_pixel: usize,
    pub best: usize,
    pub sort_counts: usize,
    pub labels: usize,
    pub status: usize,
}

impl CleanupBufferLens {
    pub fn new(batch: SliceBatch) -> CleanupBufferLens {
        let pixels = batch.n * batch.pixels();
        CleanupBufferLens {
            images: pixels,
            masks: pixels,
            per_pixel: pixels,
            best: 4 * batch.n,
            sort_counts: radix_sort::count_words(batch.n, batch.pixels()),
            labels: pixels.div_ceil(2),
            status: 1,
        }
    }
}

/// Address of byte mask `index` (0 candidates, 1 and 2 work masks, 3 the body) in `masks`.
pub fn mask_address(batch: SliceBatch, masks: u64, index: usize) -> u64 {
    masks + (index * batch.n * batch.pixels()) as u64
}

/// Checks a batch and the settings for the GPU clean-up.
pub fn check(batch: SliceBatch, cfg: &CleanupConfig) -> Result<()> {
    cfg.validate()?;
    if batch.n > 65_535 {
        return Err(Error::shape(OP, format!("{} slices exceed 65535 per call", batch.n)));
    }
    dim(OP, "pixels of the batch", batch.n * batch.pixels())?;
    Ok(())
}

/// The launches of a whole clean-up of `batch` with `cfg`, on the buffers at `b`.
pub fn cleanup_calls(batch: SliceBatch, cfg: &CleanupConfig, b: &CleanupBuffers) -> Result<Vec<KernelCall>> {
    check(batch, cfg)?;
    let (n, plane) = (batch.n, batch.pixels());
    if n == 0 || plane == 0 {
        return Ok(Vec::new());
    }
    let mask = |index| mask_address(batch, b.masks, index);
    let (candidates, work_a, work_b, body) = (mask(0), mask(1), mask(2), mask(3));
    // Windows are clipped at the border, so a radius beyond the slice acts as the slice's size.
    let radius = cfg.body_opening_radius.min(batch.h.max(batch.w));
    let base = CleanupParams {
        images: b.images,
        segments: b.segments,
        body,
        parent: b.parent,
        size: b.size,
        best: b.best,
        counts: b.counts,
        first: b.first,
        new_label: b.new_label,
        labels: b.labels,
        status: b.status,
        threshold: cfg.body_threshold(),
        n: dim(OP, "slices", n)?,
        h: dim(OP, "height", batch.h)?,
        w: dim(OP, "width", batch.w)?,
        radius: radius as i32,
        fill_holes: cfg.fill_holes as i32,
        // Counts never exceed the plane: a larger minimum keeps nothing, as it does on the CPU.
        // The kernel reads the field as unsigned.
        min_region_pixels: cfg.min_region_pixels.min(plane + 1) as u32 as i32,
        max_regions: cfg.max_regions as i32,
        ..CleanupParams::default()
    };
    let grid = (blocks_for(plane, THREADS as usize), n, 1);
    let call = |kernel: &'static str, p: CleanupParams| KernelCall::new(MODULE, kernel, grid, THREADS, &p);
    let square = |src, dst, axis, erode, reset_forest| {
        call(
            "cl_square_pass",
            CleanupParams {
                src,
                dst,
                axis,
                erode,
                reset_forest,
                ..base
            },
        )
    };
    // The largest 4-connected component of `src` (its key in best[slice][pass]) into `dst`.
    let largest_component = |calls: &mut Vec<KernelCall>, src, dst, pass, reset_after: bool| {
        let p = CleanupParams {
            src,
            foreground: 1,
            pass,
            ..base
        };
        calls.push(call("cl_union", p));
        calls.push(call("cl_flatten", p));
        calls.push(call("cl_largest", p));
        calls.push(call(
            "cl_select",
            CleanupParams {
                dst,
                reset_forest: reset_after as i32,
                ..p
            },
        ));
    };

    let mut calls = vec![call(
        "cl_threshold",
        CleanupParams {
            dst: candidates,
            reset_forest: (radius == 0) as i32,
            ..base
        },
    )];
    let fill = cfg.fill_holes;
    if radius > 0 {
        // Opening: erosion then dilation, each a pass along rows then one along columns.
        calls.push(square(candidates, work_a, 0, 1, 0));
        calls.push(square(work_a, work_b, 1, 1, 0));
        calls.push(square(work_b, work_a, 0, 0, 0));
        calls.push(square(work_a, work_b, 1, 0, 1));
        // The core, dilated back, within the candidates.
        largest_component(&mut calls, work_b, work_a, 0, false);
        calls.push(square(work_a, work_b, 0, 0, 0));
        calls.push(square(work_b, work_a, 1, 0, 0));
        calls.push(call(
            "cl_grow",
            CleanupParams {
                src: work_a,
                aux: candidates,
                dst: work_b,
                pass: 0,
                reset_forest: 1,
                ..base
            },
        ));
        largest_component(&mut calls, work_b, body, 1, fill);
    } else {
        largest_component(&mut calls, candidates, body, 1, fill);
    }
    if fill {
        // The background's components, flagged when they touch the border.
        let background = CleanupParams {
            src: body,
            foreground: 0,
            border_flags: 1,
            ..base
        };
        calls.push(call("cl_union", background));
        calls.push(call("cl_flatten", background));
    }
    calls.push(call("cl_body_counts", base));

    // Keep the largest regions: sort the labels by (count descending, label ascending).
    let key_bits = u32::BITS - (plane as u32).leading_zeros();
    let sort = |keys, vals, keys_tmp, vals_tmp| {
        radix_sort::segmented_sort_calls(n, plane, key_bits, keys, vals, keys_tmp, vals_tmp, b.sort_counts)
    };
    calls.push(call(
        "cl_rank_keys",
        CleanupParams {
            keys_out: b.keys,
            vals_out: b.vals,
            ..base
        },
    ));
    // The union-find buffers are free from here on: they hold the second sort.
    calls.extend(sort(b.keys, b.vals, b.parent, b.size)?);
    calls.push(call(
        "cl_order_keys",
        CleanupParams {
            keys: b.keys,
            vals: b.vals,
            keys_out: b.parent,
            vals_out: b.size,
            ..base
        },
    ));
    // Number the kept labels by first pixel: sort them by it.
    calls.extend(sort(b.parent, b.size, b.keys, b.vals)?);
    calls.push(call(
        "cl_number",
        CleanupParams {
            keys: b.parent,
            vals: b.size,
            ..base
        },
    ));
    calls.push(call("cl_write", base));
    Ok(calls)
}

/// The cleaned labels of a batch and the status word.
#[derive(Clone, Debug)]
pub struct CleanupOutput {
    /// n x h x w u16 labels, two to a word (the first in the low half), the last half-word of an
    /// odd count undefined.
    pub labels: CudaStorage,
    /// One word: 1 when a segment label was not below h * w (such pixels get 0).
    pub status: CudaStorage,
}

impl CleanupOutput {
    /// The labels copied to the host: `pixels` u16 values (n x h x w). An error when the kernels
    /// met a segment label out of range (the status word), rather than labels with holes.
    pub fn labels_to_host(&self, pixels: usize) -> Result<Vec<u16>> {
        let mut labels: Vec<u16> = self.labels.to_host_pod()?;
        let status: Vec<u32> = self.status.to_host_pod()?;
        if status.first().copied().unwrap_or(0) != 0 {
            return Err(Error::Cuda(format!(
                "{OP}: a segment label was not below the slice's pixel count (status {}); the \
                 segmentation fed to the clean-up is broken",
                status[0]
            )));
        }
        if labels.len() < pixels {
            return Err(Error::shape(
                OP,
                format!("{} labels stored, {pixels} asked for", labels.len()),
            ));
        }
        labels.truncate(pixels);
        Ok(labels)
    }
}

/// The clean-up of `batch`: `images` the normalised f32 slices, `segments` their u32 segment
/// labels (below h * w per slice, as [`super::felzenszwalb::felzenszwalb`] gives them).
pub fn clean(
    images: &CudaStorage,
    segments: &CudaStorage,
    batch: SliceBatch,
    cfg: &CleanupConfig,
) -> Result<CleanupOutput> {
    check(batch, cfg)?;
    let pixels = batch.n * batch.pixels();
    check_len(OP, "images", images, pixels)?;
    check_len(OP, "segments", segments, pixels)?;
    let device = common_device(OP, &[images, segments])?;
    let lens = CleanupBufferLens::new(batch);
    let alloc = |len: usize| CudaStorage::alloc(&device, len);
    let scratch: Vec<CudaStorage> = [
        lens.masks,
        lens.per_pixel,
        lens.per_pixel,
        lens.best,
        lens.per_pixel,
        lens.per_pixel,
        lens.per_pixel,
        lens.per_pixel,
        lens.sort_counts,
        lens.per_pixel,
    ]
    .into_iter()
    .map(alloc)
    .collect::<Result<_>>()?;
    let out = CleanupOutput {
        labels: alloc(lens.labels)?,
        status: alloc(lens.status)?,
    };
    let a = |i: usize| scratch[i].device_ptr();
    let buffers = CleanupBuffers {
        images: images.device_ptr(),
        segments: segments.device_ptr(),
        masks: a(0),
        parent: a(1),
        size: a(2),
        best: a(3),
        counts: a(4),
        first: a(5),
        keys: a(6),
        vals: a(7),
        sort_counts: a(8),
        new_label: a(9),
        labels: out.labels.device_ptr(),
        status: out.status.device_ptr(),
    };
    let calls = cleanup_calls(batch, cfg, &buffers)?;
    run(&device, &calls)?;
    Ok(out)
}

fn run(device: &std::sync::Arc<CudaDevice>, calls: &[KernelCall]) -> Result<()> {
    // SAFETY: every address in the plan is an operand checked above to hold n x h x w values, or
    // one of the blocks allocated above with the lengths of CleanupBufferLens, which are what the
    // kernels index under this plan's grids; the scratch blocks return to the cache when dropped,
    // and later users of them queue behind these kernels on the same stream.
    unsafe { device.run(calls) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(calls: &[KernelCall]) -> Vec<&str> {
        calls.iter().map(|c| c.kernel).collect()
    }

    #[test]
    fn plans_follow_the_settings() {
        let batch = SliceBatch { n: 3, h: 37, w: 53 };
        let b = CleanupBuffers::default();
        let cfg = CleanupConfig::default();
        let full = cleanup_calls(batch, &cfg, &b).unwrap();
        let n = names(&full);
        assert_eq!(n[0], "cl_threshold");
        assert_eq!(n.iter().filter(|&&k| k == "cl_square_pass").count(), 6);
        assert_eq!(n.iter().filter(|&&k| k == "cl_union").count(), 3);
        assert_eq!(n.iter().filter(|&&k| k.starts_with("cl_")).count(), 23);
        // 1961 pixels: keys of 11 bits, two 8-bit passes per sort.
        assert_eq!(n.iter().filter(|&&k| k == "radix_scatter").count(), 4);
        assert_eq!(n[n.len() - 2..], ["cl_number", "cl_write"]);
        assert!(full.iter().all(|c| c.grid.1 == 3));

        let plain = CleanupConfig {
            body_opening_radius: 0,
            fill_holes: false,
            ..cfg.clone()
        };
        let plain_calls = cleanup_calls(batch, &plain, &b).unwrap();
        let n: Vec<&str> = names(&plain_calls)
            .into_iter()
            .filter(|k| k.starts_with("cl_"))
            .collect();
        assert_eq!(
            n,
            [
                "cl_threshold",
                "cl_union",
                "cl_flatten",
                "cl_largest",
                "cl_select",
                "cl_body_counts",
                "cl_rank_keys",
                "cl_order_keys",
                "cl_number",
                "cl_write"
            ]
        );
        // One pixel: nothing to sort.
        let one = cleanup_calls(SliceBatch { n: 2, h: 1, w: 1 }, &plain, &b).unwrap();
        assert!(!names(&one).iter().any(|k| k.starts_with("radix")));
        assert!(
            cleanup_calls(SliceBatch { n: 0, h: 4, w: 4 }, &cfg, &b)
                .unwrap()
                .is_empty()
        );
        assert!(
            cleanup_calls(SliceBatch { n: 1, h: 0, w: 4 }, &cfg, &b)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let b = CleanupBuffers::default();
        let batch = SliceBatch { n: 1, h: 8, w: 8 };
        let no_regions = CleanupConfig {
            max_regions: 0,
            ..CleanupConfig::default()
        };
        assert!(cleanup_calls(batch, &no_regions, &b).is_err());
        assert!(cleanup_calls(SliceBatch { n: 70_000, h: 2, w: 2 }, &CleanupConfig::default(), &b).is_err());
        assert!(
            cleanup_calls(
                SliceBatch {
                    n: 4,
                    h: 40_000,
                    w: 40_000
                },
                &CleanupConfig::default(),
                &b
            )
            .is_err()
        );
    }

    #[test]
    fn settings_reach_the_kernels() {
        let b = CleanupBuffers {
            masks: 1000,
            ..CleanupBuffers::default()
        };
        let batch = SliceBatch { n: 2, h: 5, w: 7 };
        let cfg = CleanupConfig {
            body_opening_radius: 50,
            min_region_pixels: 1_000_000,
            max_regions: 9,
            ..CleanupConfig::default()
        };
        let calls = cleanup_calls(batch, &cfg, &b).unwrap();
        let p: CleanupParams = bytemuck::pod_read_unaligned(calls[0].param_bytes());
        assert_eq!(p.threshold, cfg.body_threshold());
        assert_eq!(p.radius, 7, "clipped to the slice");
        assert_eq!(p.min_region_pixels, 36);
        assert_eq!(p.max_regions, 9);
        assert_eq!(p.body, 1000 + 3 * 70);
        assert_eq!(p.dst, 1000, "candidates in the first mask");
    }
}
