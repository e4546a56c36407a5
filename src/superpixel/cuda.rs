//! The superpixel steps on a CUDA GPU, with host slices in and host results out:
//! - [`felzenszwalb_batch_cuda`]: Felzenszwalb batched over slices, close to the exact CPU
//!   [`felzenszwalb_batch`](super::felzenszwalb_batch) but not equal (kernels/felzenszwalb.cu
//!   explains the difference);
//! - [`regions_for_stack_cuda`], [`volume_regions_cuda`]: CT regions, segmentation and clean-up
//!   (body mask, relabelling) both on the GPU ([`regions_on_device`]); the clean-up equals the
//!   CPU's on the same segments, label for label, and only the final u16 labels come back;
//! - [`sample_regions_cuda`]: the region sampling of the LRC loss, as
//!   [`sample_regions`](super::sampling::sample_regions) in distribution.
//!
//! The device-level versions, which keep everything on the GPU, are in
//! [`crate::device::cuda::felzenszwalb`], [`crate::device::cuda::cleanup`] and
//! [`crate::device::cuda::region_sampling`].

use std::sync::Arc;

use super::{FelzenszwalbParams, SuperpixelConfig};
use crate::device::cuda::cleanup::{self, CleanupOutput};
use crate::device::cuda::felzenszwalb::{self as fz, SliceBatch};
use crate::device::cuda::region_sampling::{self, SamplingGeom};
use crate::device::cuda::{CudaDevice, CudaStorage};
use crate::error::{Error, Result};
use crate::ops::local_contrast::RegionSamples;

/// The fewest slices segmented per GPU call by the helpers here, when that many are given.
pub const SLICES_PER_CALL: usize = 32;

/// Scratch bytes per pixel of a segmentation call: 8 words per edge (about 4 edges a pixel, the
/// 8-connected ones) and 13 per pixel; the clean-up's 8.5 words per pixel reuse that memory.
const SCRATCH_BYTES_PER_PIXEL: usize = (8 * 4 + 13) * 4;

/// Slices per GPU call for `h x w` slices: one per multiprocessor, at least [`SLICES_PER_CALL`],
/// since the merging passes run one block per slice and fewer slices leave multiprocessors idle
/// (32 fill a quarter of an H100's 132); and at most what keeps the scratch within a quarter of
/// the device's memory (about 47 MB a slice at 512 x 512, 6.2 GB for 132 slices).
pub fn slices_per_call(multiprocessors: usize, total_memory: usize, h: usize, w: usize) -> usize {
    let per_slice = (h * w).max(1) * SCRATCH_BYTES_PER_PIXEL;
    multiprocessors
        .max(SLICES_PER_CALL)
        .min(total_memory / 4 / per_slice)
        .max(1)
}

fn device_slices_per_call(device: &CudaDevice, h: usize, w: usize) -> usize {
    slices_per_call(device.multiprocessors(), device.total_memory(), h, w)
}

fn whole_slices(op: &'static str, len: usize, h: usize, w: usize) -> Result<usize> {
    let plane = h * w;
    if plane == 0 {
        return if len == 0 {
            Ok(0)
        } else {
            Err(Error::shape(op, format!("{len} values for slices of 0 pixels")))
        };
    }
    if !len.is_multiple_of(plane) {
        return Err(Error::shape(op, format!("{len} values are not whole {h} x {w} slices")));
    }
    Ok(len / plane)
}

/// Felzenszwalb segments of the `h x w` slices stored one after another in `images`, on the GPU:
/// per slice, labels `0..K-1` numbered by first pixel and K.
pub fn felzenszwalb_batch_cuda(
    device: &Arc<CudaDevice>,
    images: &[f32],
    h: usize,
    w: usize,
    params: &FelzenszwalbParams,
) -> Result<Vec<(Vec<u32>, usize)>> {
    let n = whole_slices("felzenszwalb", images.len(), h, w)?;
    let plane = h * w;
    let mut out = Vec::with_capacity(n);
    for chunk in images.chunks((device_slices_per_call(device, h, w) * plane).max(1)) {
        let batch = SliceBatch {
            n: chunk.len() / plane,
            h,
            w,
        };
        let input = CudaStorage::from_host(device, chunk)?;
        let result = fz::felzenszwalb(&input, batch, params, fz::DEFAULT_WINDOWS)?;
        let labels: Vec<u32> = result.labels.to_host_pod()?;
        let counts: Vec<u32> = result.counts.to_host_pod()?;
        out.extend(labels.chunks(plane).zip(counts).map(|(l, k)| (l.to_vec(), k as usize)));
    }
    Ok(out)
}

/// Regions of a batch of normalised slices already on the device: Felzenszwalb segments, then
/// the CT clean-up, both on the GPU. The labels stay on the device (u16, 1..=K inside the body,
/// 0 elsewhere, two to a word; [`CleanupOutput::labels_to_host`] copies them back).
pub fn regions_on_device(images: &CudaStorage, batch: SliceBatch, cfg: &SuperpixelConfig) -> Result<CleanupOutput> {
    cfg.validate()?;
    let segments = fz::felzenszwalb(images, batch, &cfg.felzenszwalb, fz::DEFAULT_WINDOWS)?;
    cleanup::clean(images, &segments.labels, batch, &cfg.cleanup)
}

/// [`regions_for_stack`](super::regions_for_stack) on the GPU, segmentation and clean-up: labels
/// 1..=K inside the body, 0 elsewhere, per slice. One copy back per call of
/// [`slices_per_call`] slices: the final labels.
pub fn regions_for_stack_cuda(
    device: &Arc<CudaDevice>,
    slices: &[f32],
    h: usize,
    w: usize,
    cfg: &SuperpixelConfig,
) -> Result<Vec<u16>> {
    cfg.validate()?;
    let n = whole_slices("superpixels", slices.len(), h, w)?;
    let plane = h * w;
    let mut out = Vec::with_capacity(slices.len());
    if n == 0 {
        return Ok(out);
    }
    for chunk in slices.chunks((device_slices_per_call(device, h, w) * plane).max(1)) {
        let batch = SliceBatch {
            n: chunk.len() / plane,
            h,
            w,
        };
        let input = CudaStorage::from_host(device, chunk)?;
        out.extend(regions_on_device(&input, batch, cfg)?.labels_to_host(chunk.len())?);
    }
    Ok(out)
}

/// [`volume_regions`](super::volume_regions) on the GPU (segmentation and, unless `raw`, the
/// clean-up).
pub fn volume_regions_cuda(
    device: &Arc<CudaDevice>,
    volume_zyx: &[f32],
    dims: [usize; 3],
    cfg: &SuperpixelConfig,
    raw: bool,
) -> Result<Vec<u32>> {
    let [_, h, w] = dims;
    if volume_zyx.len() != dims.iter().product::<usize>() {
        return Err(Error::shape(
            "superpixels",
            format!("{} values for a volume of {dims:?}", volume_zyx.len()),
        ));
    }
    if raw {
        cfg.felzenszwalb.validate()?;
        let segments = felzenszwalb_batch_cuda(device, volume_zyx, h, w, &cfg.felzenszwalb)?;
        return Ok(segments
            .into_iter()
            .flat_map(|(labels, _)| labels.into_iter().map(|l| l + 1))
            .collect());
    }
    Ok(regions_for_stack_cuda(device, volume_zyx, h, w, cfg)?
        .into_iter()
        .map(u32::from)
        .collect())
}

/// [`sample_regions`](super::sampling::sample_regions) for `q_labels.len() / pixels` image pairs
/// at once on the GPU, draws seeded by `seed`: the same regions (without `max_regions`), pixels
/// drawn from the same distribution (a counter-based generator, not the CPU's stream).
pub fn sample_regions_cuda(
    device: &Arc<CudaDevice>,
    q_labels: &[u16],
    p_labels: &[u16],
    pixels: usize,
    samples: usize,
    max_regions: Option<usize>,
    seed: u64,
) -> Result<Vec<RegionSamples>> {
    const OP: &str = "region sampling";
    if q_labels.len() != p_labels.len() {
        return Err(Error::shape(
            OP,
            format!(
                "query maps hold {} labels, positive maps {}",
                q_labels.len(),
                p_labels.len()
            ),
        ));
    }
    let n = whole_slices(OP, q_labels.len(), pixels, 1)?;
    let max_label = q_labels.iter().chain(p_labels).copied().max().unwrap_or(0).max(1) as usize;
    let geom = SamplingGeom {
        n,
        pixels,
        max_label,
        samples,
        max_regions,
    };
    let upload = |m: &[u16]| {
        let words: Vec<u32> = m.iter().map(|&l| u32::from(l)).collect();
        CudaStorage::from_host_pod(device, &words)
    };
    let (q, p) = (upload(q_labels)?, upload(p_labels)?);
    region_sampling::sample(&q, &p, &geom, seed)?.to_host()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: usize = 1 << 30;

    #[test]
    fn a_call_takes_a_slice_per_multiprocessor_within_a_quarter_of_the_memory() {
        // H100: 132 multiprocessors, 80 GB; 512 x 512 slices take 47 MB of scratch each.
        assert_eq!(slices_per_call(132, 80 * GIB, 512, 512), 132);
        // Fewer multiprocessors still segment 32 slices a call.
        assert_eq!(slices_per_call(16, 80 * GIB, 256, 256), SLICES_PER_CALL);
        // An 8 GB card holds a quarter's worth: 2 GiB / (512 * 512 * 180 B) = 45 slices.
        assert_eq!(slices_per_call(132, 8 * GIB, 512, 512), 45);
        // A slice too large for the quarter still goes, alone.
        assert_eq!(slices_per_call(132, GIB, 4096, 4096), 1);
    }
}
