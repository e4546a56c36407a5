//! Region sampling for the Local Region Contrast loss on the GPU: the host side of
//! `kernels/region_sampling.cu`, the twin of [`crate::superpixel::sampling::sample_regions`].
//!
//! The samples stay on the device, per image `max_label` rows of `samples` pixel indices of
//! which the first `region_counts[i]` are the kept regions ([`DeviceRegionSamples`]);
//! [`DeviceRegionSamples::to_host`] turns them into the [`RegionSamples`] the loss takes.

use bytemuck::{Pod, Zeroable};

use super::call::{KernelCall, blocks_for};
use super::launch::dim;
use super::operand::{check_len, common_device};
use super::{CudaStorage, radix_sort};
use crate::error::{Error, Result};
use crate::ops::local_contrast::RegionSamples;

const MODULE: &str = "region_sampling";
const THREADS: u32 = 256;
/// Rows per region record: label, q start, q count, p start, p count.
const FIELDS: usize = 5;

/// `RegionSampleParams` of `kernels/region_sampling.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RegionSampleParams {
    pub q_labels: u64,
    pub p_labels: u64,
    pub keys: u64,
    pub vals: u64,
    pub counts: u64,
    pub candidates: u64,
    pub regions: u64,
    pub region_counts: u64,
    pub q_out: u64,
    pub p_out: u64,
    pub error: u64,
    pub seed: u64,
    pub n: i32,
    pub pixels: i32,
    pub max_label: i32,
    pub samples: i32,
    pub max_regions: i32,
    pub reserved: i32,
}

const _: () = assert!(size_of::<RegionSampleParams>() == 120);
const _: () = assert!(std::mem::offset_of!(RegionSampleParams, seed) == 88);
const _: () = assert!(std::mem::offset_of!(RegionSampleParams, max_regions) == 112);

/// What to sample: `n` image pairs of `pixels` pixels with labels up to `max_label`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SamplingGeom {
    pub n: usize,
    pub pixels: usize,
    /// The largest label that may occur (at least 1); a larger one is reported as an error.
    pub max_label: usize,
    /// Pixels drawn per region and view.
    pub samples: usize,
    /// Keep a uniformly random subset of at most this many regions per image.
    pub max_regions: Option<usize>,
}

/// Device addresses of the buffers of one sampling run (32-bit words).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SamplingBuffers {
    pub q_labels: u64,
    pub p_labels: u64,
    pub keys: u64,
    pub vals: u64,
    pub keys_tmp: u64,
    pub vals_tmp: u64,
    pub sort_counts: u64,
    pub counts: u64,
    pub candidates: u64,
    pub regions: u64,
    pub region_counts: u64,
    pub q_out: u64,
    pub p_out: u64,
    pub error: u64,
}

/// Words each buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SamplingLens {
    /// Each label map.
    pub labels: usize,
    /// keys, vals, keys_tmp, vals_tmp.
    pub sort: usize,
    pub sort_counts: usize,
    pub counts: usize,
    /// candidates and regions.
    pub regions: usize,
    pub region_counts: usize,
    /// q_out and p_out.
    pub out: usize,
    pub error: usize,
}

impl SamplingGeom {
    /// Checks the sizes.
    pub fn check(&self) -> Result<()> {
        const OP: &str = "region sampling";
        if self.max_label == 0 || self.max_label > i32::MAX as usize / 2 {
            return Err(Error::shape(
                OP,
                format!("max_label {} must be 1 to 2^30", self.max_label),
            ));
        }
        if self.n > 32_767 {
            return Err(Error::shape(OP, format!("{} images exceed 32767 per call", self.n)));
        }
        dim(OP, "label map values", 2 * self.n * self.pixels)?;
        dim(OP, "samples", self.n * self.max_label * self.samples)?;
        dim(OP, "label counts", 2 * self.n * (self.max_label + 1))?;
        if let Some(m) = self.max_regions {
            dim(OP, "max_regions", m)?;
        }
        Ok(())
    }

    pub fn lens(&self) -> SamplingLens {
        SamplingLens {
            labels: self.n * self.pixels,
            sort: 2 * self.n * self.pixels,
            sort_counts: radix_sort::count_words(2 * self.n, self.pixels),
            counts: 2 * self.n * (self.max_label + 1),
            regions: FIELDS * self.n * self.max_label,
            region_counts: self.n,
            out: self.n * self.max_label * self.samples,
            error: 1,
        }
    }
}

/// The launches of one sampling run with draws seeded by `seed`.
pub fn sampling_calls(g: &SamplingGeom, seed: u64, b: &SamplingBuffers) -> Result<Vec<KernelCall>> {
    const OP: &str = "region sampling";
    g.check()?;
    if g.n == 0 {
        return Ok(Vec::new());
    }
    let p = RegionSampleParams {
        q_labels: b.q_labels,
        p_labels: b.p_labels,
        keys: b.keys,
        vals: b.vals,
        counts: b.counts,
        candidates: b.candidates,
        regions: b.regions,
        region_counts: b.region_counts,
        q_out: b.q_out,
        p_out: b.p_out,
        error: b.error,
        seed,
        n: dim(OP, "images", g.n)?,
        pixels: dim(OP, "pixels", g.pixels)?,
        max_label: dim(OP, "max_label", g.max_label)?,
        samples: dim(OP, "samples", g.samples)?,
        max_regions: g.max_regions.map_or(-1, |m| m as i32),
        reserved: 0,
    };
    let mut calls = vec![KernelCall::new(
        MODULE,
        "rs_clear",
        (blocks_for(2 * (g.max_label + 1), THREADS as usize), g.n, 1),
        THREADS,
        &p,
    )];
    if g.pixels > 0 {
        calls.push(KernelCall::new(
            MODULE,
            "rs_prepare",
            (blocks_for(g.pixels, THREADS as usize), g.n, 1),
            THREADS,
            &p,
        ));
    }
    let key_bits = u32::BITS - (g.max_label as u32).leading_zeros();
    calls.extend(radix_sort::segmented_sort_calls(
        2 * g.n,
        g.pixels,
        key_bits,
        b.keys,
        b.vals,
        b.keys_tmp,
        b.vals_tmp,
        b.sort_counts,
    )?);
    let threads = radix_sort::block_threads(g.max_label + 1);
    calls.push(KernelCall::new(MODULE, "rs_select", (g.n, 1, 1), threads, &p));
    calls.push(KernelCall::new(
        MODULE,
        "rs_draw",
        (blocks_for(g.max_label * g.samples, THREADS as usize), g.n, 1),
        THREADS,
        &p,
    ));
    Ok(calls)
}

/// Samples on the device: see the module notes for the layout.
#[derive(Clone, Debug)]
pub struct DeviceRegionSamples {
    pub geom: SamplingGeom,
    /// Per image, `FIELDS` rows of `max_label` words: label, q start, q count, p start, p count
    /// of each kept region (the starts index the sorted pixel lists, which are not kept).
    pub regions: CudaStorage,
    /// Kept regions per image.
    pub region_counts: CudaStorage,
    /// Pixel indices in the query view, n x max_label x samples (rows past the kept regions 0).
    pub q: CudaStorage,
    /// Pixel indices in the positive view, same layout.
    pub p: CudaStorage,
    error: CudaStorage,
}

impl DeviceRegionSamples {
    /// One [`RegionSamples`] per image, copied from the device (waits for the sampling).
    pub fn to_host(&self) -> Result<Vec<RegionSamples>> {
        let g = self.geom;
        if self.error.to_host_pod::<u32>()?.first().copied().unwrap_or(0) != 0 {
            return Err(Error::shape(
                "region sampling",
                format!("a label exceeds max_label = {}", g.max_label),
            ));
        }
        let counts: Vec<u32> = self.region_counts.to_host_pod()?;
        let regions: Vec<u32> = self.regions.to_host_pod()?;
        let (q, p): (Vec<u32>, Vec<u32>) = (self.q.to_host_pod()?, self.p.to_host_pod()?);
        let (cap, n) = (g.max_label, g.samples);
        Ok((0..g.n)
            .map(|i| {
                let k = counts[i] as usize;
                let rows = &regions[i * FIELDS * cap..];
                let out = |v: &[u32]| v[i * cap * n..i * cap * n + k * n].to_vec();
                RegionSamples {
                    labels: rows[..k].to_vec(),
                    n,
                    q: out(&q),
                    p: out(&p),
                }
            })
            .collect())
    }
}

/// Samples of `g.n` image pairs: `q_labels` and `p_labels` hold u32 label words, n x pixels.
pub fn sample(
    q_labels: &CudaStorage,
    p_labels: &CudaStorage,
    g: &SamplingGeom,
    seed: u64,
) -> Result<DeviceRegionSamples> {
    const OP: &str = "region sampling";
    g.check()?;
    check_len(OP, "query labels", q_labels, g.n * g.pixels)?;
    check_len(OP, "positive labels", p_labels, g.n * g.pixels)?;
    let device = common_device(OP, &[q_labels, p_labels])?;
    let lens = g.lens();
    let alloc = |len: usize| CudaStorage::alloc(&device, len);
    let sort: Vec<CudaStorage> = (0..4).map(|_| alloc(lens.sort)).collect::<Result<_>>()?;
    let (sort_counts, counts, candidates) = (alloc(lens.sort_counts)?, alloc(lens.counts)?, alloc(lens.regions)?);
    let out = DeviceRegionSamples {
        geom: *g,
        regions: alloc(lens.regions)?,
        region_counts: alloc(lens.region_counts)?,
        q: alloc(lens.out)?,
        p: alloc(lens.out)?,
        error: alloc(lens.error)?,
    };
    let b = SamplingBuffers {
        q_labels: q_labels.device_ptr(),
        p_labels: p_labels.device_ptr(),
        keys: sort[0].device_ptr(),
        vals: sort[1].device_ptr(),
        keys_tmp: sort[2].device_ptr(),
        vals_tmp: sort[3].device_ptr(),
        sort_counts: sort_counts.device_ptr(),
        counts: counts.device_ptr(),
        candidates: candidates.device_ptr(),
        regions: out.regions.device_ptr(),
        region_counts: out.region_counts.device_ptr(),
        q_out: out.q.device_ptr(),
        p_out: out.p.device_ptr(),
        error: out.error.device_ptr(),
    };
    let calls = sampling_calls(g, seed, &b)?;
    // SAFETY: every buffer was allocated above with the lengths of SamplingGeom::lens (the label
    // maps checked against them), which is what the planned grids index; scratch returns to the
    // cache behind these kernels on the same stream.
    unsafe { device.run(&calls) }?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_and_checks() {
        let g = SamplingGeom {
            n: 2,
            pixels: 5000,
            max_label: 300,
            samples: 32,
            max_regions: None,
        };
        let calls = sampling_calls(&g, 7, &SamplingBuffers::default()).unwrap();
        let names: Vec<&str> = calls.iter().map(|c| c.kernel).collect();
        assert_eq!(names[..2], ["rs_clear", "rs_prepare"]);
        assert_eq!(names.len(), 2 + 6 + 2, "two 8-bit passes sort 9-bit labels");
        assert_eq!(names[names.len() - 2..], ["rs_select", "rs_draw"]);
        assert!(SamplingGeom { max_label: 0, ..g }.check().is_err());
        assert!(
            sampling_calls(&SamplingGeom { n: 0, ..g }, 7, &SamplingBuffers::default())
                .unwrap()
                .is_empty()
        );
        assert_eq!(g.lens().regions, 5 * 2 * 300);
    }
}
