//! The GPU clean-up (kernels/cleanup.cu) run by the CPU emulator through the launch plan the GPU
//! uses, against the CPU clean-up (`body_mask` then `clean_regions`) of every slice. The contract
//! is exact: the same body mask and the same labels, pixel for pixel (no tolerance: everything
//! is integer), with the first differing pixel reported. Cases, in batches of three or four slices
//! of one size (so per-slice offsets, keys and sorts are exercised): CT phantom slices at odd
//! sizes, 1 x 1, 1 x N and N x 1 slices, a slice without body, a body touching the border, bodies
//! with holes and with holes open to each border, a table joined by a thin bridge, two bodies of
//! the same size (the first in raster order wins), opening radii 0, 1, 2 and
//! one larger than the slice (no core: the fallback to the candidates), fill_holes on and off,
//! max_regions below the number of regions with ties in size (ties go to the smaller label),
//! min_region_pixels dropping some; segments from the CPU Felzenszwalb of each slice and random
//! segment maps (scattered labels anywhere below h * w, and equal-size tiles with permuted labels);
//! and the segmentation and clean-up plans chained on the device, as the pipeline runs them.

mod superpixel_support;

use lrc::device::cuda::cleanup::{CleanupBufferLens, CleanupBuffers, cleanup_calls, mask_address};
use lrc::device::cuda::felzenszwalb::{self as fz, SliceBatch};
use lrc::device::emu::{self, EmuMemory};
use lrc::rng::Rng;
use lrc::superpixel::cleanup::{CleanupConfig, body_mask, clean_regions};
use lrc::superpixel::felzenszwalb;
use lrc::superpixel::phantom::ct_phantom_slice;
use lrc::testing::assert_compiled_for_every_arch;
use superpixel_support::emu_fz_buffers;

/// What the emulated clean-up of a batch leaves: labels, body mask and the status word.
struct EmuResult {
    labels: Vec<u16>,
    body: Vec<u8>,
    status: u32,
}

fn emu_clean(images: &[f32], segments: &[u32], batch: SliceBatch, cfg: &CleanupConfig) -> EmuResult {
    let lens = CleanupBufferLens::new(batch);
    let mut mem = EmuMemory::new();
    let b = CleanupBuffers {
        images: mem.upload(images),
        segments: mem.upload(segments),
        masks: mem.alloc(lens.masks),
        parent: mem.alloc(lens.per_pixel),
        size: mem.alloc(lens.per_pixel),
        best: mem.alloc(lens.best),
        counts: mem.alloc(lens.per_pixel),
        first: mem.alloc(lens.per_pixel),
        keys: mem.alloc(lens.per_pixel),
        vals: mem.alloc(lens.per_pixel),
        sort_counts: mem.alloc(lens.sort_counts),
        new_label: mem.alloc(lens.per_pixel),
        labels: mem.alloc(lens.labels),
        status: mem.alloc(lens.status),
    };
    let calls = cleanup_calls(batch, cfg, &b).expect("plan");
    mem.run(&calls).unwrap_or_else(|e| panic!("{e}"));
    let pixels = batch.n * batch.pixels();
    EmuResult {
        labels: mem.read(b.labels, pixels),
        body: mem.read(mask_address(batch, b.masks, 3), pixels),
        status: mem.read::<u32>(b.status, 1)[0],
    }
}

/// The first pixel where `got` and `want` differ, as "slice s (y, x): got g, want w".
fn first_difference<T: PartialEq + std::fmt::Debug>(got: &[T], want: &[T], h: usize, w: usize) -> Option<String> {
    assert_eq!(got.len(), want.len());
    let i = got.iter().zip(want).position(|(a, b)| a != b)?;
    let plane = h * w;
    let (s, p) = (i / plane, i % plane);
    Some(format!(
        "slice {s} (y {}, x {}): got {:?}, want {:?}",
        p / w,
        p % w,
        got[i],
        want[i]
    ))
}

/// What a case exercised, summed over its slices (from the CPU's side).
#[derive(Debug, Default)]
struct Exercised {
    /// Regions kept.
    kept: usize,
    /// Labels present in the body but under min_region_pixels.
    below_min: usize,
    /// Labels that passed the minimum but fell to the max_regions cap.
    capped: usize,
}

/// One case: a batch of slices, their segments and the settings; checks the emulated clean-up
/// against the CPU's, body mask first (the likelier culprit), then labels.
fn check_case(name: &str, images: &[f32], segments: &[u32], h: usize, w: usize, cfg: &CleanupConfig) -> Exercised {
    let plane = h * w;
    let n = images.len() / plane;
    assert_eq!(segments.len(), images.len());
    let got = emu_clean(images, segments, SliceBatch { n, h, w }, cfg);
    let mut want_body = Vec::with_capacity(images.len());
    let mut want_labels = Vec::with_capacity(images.len());
    let mut seen = Exercised::default();
    for (img, seg) in images.chunks(plane).zip(segments.chunks(plane)) {
        let body = body_mask(img, h, w, cfg);
        let labels = clean_regions(seg, &body, cfg);
        let mut counts = vec![0usize; plane];
        for (&s, &inside) in seg.iter().zip(&body) {
            counts[s as usize] += usize::from(inside);
        }
        let present = counts.iter().filter(|&&c| c > 0).count();
        let passing = counts.iter().filter(|&&c| c > 0 && c >= cfg.min_region_pixels).count();
        let kept = labels.iter().copied().max().unwrap_or(0) as usize;
        seen.kept += kept;
        seen.below_min += present - passing;
        seen.capped += passing - kept;
        want_labels.extend(labels);
        want_body.extend(body.iter().map(|&b| u8::from(b)));
    }
    assert_eq!(got.status, 0, "{name}: status raised for labels below h * w");
    if let Some(d) = first_difference(&got.body, &want_body, h, w) {
        panic!("{name}: body mask differs first at {d}");
    }
    if let Some(d) = first_difference(&got.labels, &want_labels, h, w) {
        panic!("{name}: labels differ first at {d}");
    }
    seen
}

fn cfg(radius: usize, fill_holes: bool, min_region_pixels: usize, max_regions: usize) -> CleanupConfig {
    CleanupConfig {
        body_opening_radius: radius,
        fill_holes,
        min_region_pixels,
        max_regions,
        ..CleanupConfig::default()
    }
}

/// The exact CPU Felzenszwalb of each slice (scale 100, sigma 0.8, min_size 8: many segments).
fn fz_segments(images: &[f32], h: usize, w: usize) -> Vec<u32> {
    images
        .chunks(h * w)
        .flat_map(|img| {
            let wide: Vec<f64> = img.iter().map(|&v| v as f64).collect();
            felzenszwalb(&wide, h, w, 100.0, 0.8, 8).0
        })
        .collect()
}

/// Labels drawn anywhere below h * w, `distinct` of them per slice, in patches so that regions
/// have a spread of sizes.
fn scattered_segments(n: usize, h: usize, w: usize, distinct: usize, rng: &mut Rng) -> Vec<u32> {
    let plane = h * w;
    let mut out = Vec::with_capacity(n * plane);
    for _ in 0..n {
        let labels: Vec<u32> = (0..distinct).map(|_| pick(rng, plane) as u32).collect();
        let patch = 1 + pick(rng, 4);
        out.extend((0..plane).map(|p| {
            let (y, x) = (p / w / patch, p % w / patch);
            labels[(y * 31 + x * 17 + pick(rng, 2)) % distinct]
        }));
    }
    out
}

/// Tiles of `tile x tile` pixels, each its own label, labels a random permutation of 0..tiles:
/// many regions of equal size, whose order by label is not their raster order.
fn tile_segments(n: usize, h: usize, w: usize, tile: usize, rng: &mut Rng) -> Vec<u32> {
    let (ty, tx) = (h.div_ceil(tile), w.div_ceil(tile));
    let mut out = Vec::with_capacity(n * h * w);
    for _ in 0..n {
        let mut perm: Vec<u32> = (0..(ty * tx) as u32).collect();
        for i in (1..perm.len()).rev() {
            perm.swap(i, pick(rng, i + 1));
        }
        out.extend((0..h * w).map(|p| perm[(p / w / tile) * tx + p % w / tile]));
    }
    out
}

/// A normalised slice drawn from ellipses `(cy, cx, ry, rx, value)` in fractions of the size, on
/// `background`, with a little noise.
fn ellipses(h: usize, w: usize, background: f32, shapes: &[(f32, f32, f32, f32, f32)], rng: &mut Rng) -> Vec<f32> {
    let mut img = vec![background; h * w];
    for &(cy, cx, ry, rx, v) in shapes {
        for y in 0..h {
            for x in 0..w {
                let dy = (y as f32 - cy * h as f32) / (ry * h as f32);
                let dx = (x as f32 - cx * w as f32) / (rx * w as f32);
                if dy * dy + dx * dx < 1.0 {
                    img[y * w + x] = v;
                }
            }
        }
    }
    for v in &mut img {
        *v = (*v + 0.01 * rng.normal() as f32).clamp(0.0, 1.0);
    }
    img
}

/// A uniform draw below `n`.
fn pick(rng: &mut Rng, n: usize) -> usize {
    rng.below(n as u64) as usize
}

const AIR: f32 = 0.0;
const TISSUE: f32 = 0.52;

#[test]
fn every_planned_kernel_was_compiled_for_every_architecture() {
    if !lrc::kernels::BUILT {
        return;
    }
    let calls = cleanup_calls(
        SliceBatch { n: 2, h: 30, w: 40 },
        &CleanupConfig::default(),
        &CleanupBuffers::default(),
    )
    .unwrap();
    assert_compiled_for_every_arch(calls.iter().map(|c| (c.module, c.kernel)));
}

#[test]
fn phantom_slices_with_felzenszwalb_segments_equal_the_cpu() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(11);
    for (h, w) in [(37usize, 53usize), (64, 48)] {
        let images: Vec<f32> = (0..3).flat_map(|_| ct_phantom_slice(h, w, 20.0, &mut rng)).collect();
        let segments = fz_segments(&images, h, w);
        for c in [cfg(2, true, 5, 256), cfg(0, false, 1, 256), cfg(1, true, 20, 6)] {
            let name = format!(
                "phantom {h}x{w} r{} fill {} min {} max {}",
                c.body_opening_radius, c.fill_holes, c.min_region_pixels, c.max_regions
            );
            let seen = check_case(&name, &images, &segments, h, w, &c);
            assert!(seen.kept >= 9, "{name}: {seen:?}");
        }
    }
}

#[test]
fn random_segment_maps_equal_the_cpu() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(12);
    let (h, w) = (37, 53);
    let images: Vec<f32> = (0..3).flat_map(|_| ct_phantom_slice(h, w, 30.0, &mut rng)).collect();
    // Few labels over many scattered patches: regions of every size, some dropped by the minimum.
    let segments = scattered_segments(3, h, w, 40, &mut rng);
    let seen = check_case("scattered, min 12", &images, &segments, h, w, &cfg(2, true, 12, 256));
    assert!(seen.kept > 30 && seen.below_min > 0, "{seen:?}");
    // Many labels: the cap of 9 binds.
    let segments = scattered_segments(3, h, w, 300, &mut rng);
    let seen = check_case("scattered, max 9", &images, &segments, h, w, &cfg(0, true, 1, 9));
    assert!(seen.kept == 27 && seen.capped > 0, "{seen:?}");
}

#[test]
fn equal_sizes_keep_the_smaller_labels() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(13);
    let (h, w) = (48, 40);
    // The body covers most of the slice: many whole 4 x 4 tiles of 16 pixels, all tied.
    let images: Vec<f32> = (0..3)
        .flat_map(|_| ellipses(h, w, AIR, &[(0.5, 0.5, 0.45, 0.48, TISSUE)], &mut rng))
        .collect();
    let segments = tile_segments(3, h, w, 4, &mut rng);
    for (min, max) in [(16, 7), (10, 40), (1, 1)] {
        let name = format!("tiles min {min} max {max}");
        let seen = check_case(&name, &images, &segments, h, w, &cfg(2, true, min, max));
        assert!(seen.kept == 3 * max && seen.capped > 0, "{name}: {seen:?}");
    }
}

#[test]
fn degenerate_slices_equal_the_cpu() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(14);
    for (h, w) in [(1usize, 1usize), (1, 29), (23, 1)] {
        let plane = h * w;
        // Slice 0 all tissue, 1 all air, 2 random.
        let mut images = vec![TISSUE; plane];
        images.extend(vec![AIR; plane]);
        images.extend((0..plane).map(|_| if pick(&mut rng, 3) > 0 { TISSUE } else { AIR }));
        let segments: Vec<u32> = (0..3 * plane)
            .map(|i| ((pick(&mut rng, plane.min(4)) + i % plane / 5) % plane) as u32)
            .collect();
        for c in [cfg(0, true, 1, 256), cfg(2, true, 1, 2), cfg(1, false, 2, 256)] {
            check_case(
                &format!("{h}x{w} r{}", c.body_opening_radius),
                &images,
                &segments,
                h,
                w,
                &c,
            );
        }
    }
}

#[test]
fn bodies_at_the_border_with_holes_and_bridges_equal_the_cpu() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(15);
    let (h, w) = (33, 37);
    let slices = [
        // No body at all: every label 0.
        ellipses(h, w, AIR, &[], &mut rng),
        // Tissue to every border, an enclosed air hole and an air bay open to each border alone.
        ellipses(
            h,
            w,
            TISSUE,
            &[
                (0.5, 0.6, 0.15, 0.15, AIR),
                (0.3, 0.0, 0.1, 0.3, AIR),
                (0.75, 1.0, 0.08, 0.2, AIR),
                (1.0, 0.3, 0.12, 0.08, AIR),
                (0.0, 0.8, 0.12, 0.08, AIR),
            ],
            &mut rng,
        ),
        // A ring (a hole inside) and a table below joined to it by a bridge 2 pixels wide, which
        // an opening of radius 2 cuts and one of radius 0 keeps.
        {
            let mut img = ellipses(
                h,
                w,
                AIR,
                &[
                    (0.42, 0.5, 0.34, 0.4, TISSUE),
                    (0.42, 0.5, 0.15, 0.18, AIR),
                    (0.92, 0.5, 0.04, 0.45, 0.6),
                ],
                &mut rng,
            );
            for y in (0.7 * h as f32) as usize..(0.92 * h as f32) as usize {
                img[y * w + w / 2] = 0.6;
                img[y * w + w / 2 + 1] = 0.6;
            }
            img
        },
        // Two bodies of the same size: the first in raster order (the right one, which starts a
        // row higher) is the largest component, before and after the opening.
        {
            let mut img = vec![AIR; h * w];
            for (top, left) in [(8, 3), (5, 20)] {
                for y in top..top + 10 {
                    img[y * w + left..y * w + left + 10].fill(TISSUE);
                }
            }
            img
        },
    ]
    .concat();
    let fz = fz_segments(&slices, h, w);
    let mut rng2 = Rng::new(16);
    let scattered = scattered_segments(4, h, w, 25, &mut rng2);
    for segments in [&fz, &scattered] {
        for c in [
            cfg(2, true, 3, 256),
            cfg(0, false, 1, 5),
            // Larger than the slice: the erosion empties it, so the body is the largest
            // component of the candidates themselves.
            cfg(60, true, 1, 256),
        ] {
            let name = format!(
                "border/holes r{} fill {} max {}",
                c.body_opening_radius, c.fill_holes, c.max_regions
            );
            check_case(&name, &slices, segments, h, w, &c);
        }
    }
}

#[test]
fn labels_outside_the_plane_raise_the_status_and_get_no_region() {
    if !emu::available() {
        return;
    }
    let (h, w) = (6, 7);
    let images = vec![TISSUE; h * w];
    let mut segments = vec![3u32; h * w];
    segments[10] = (h * w) as u32;
    let got = emu_clean(&images, &segments, SliceBatch { n: 1, h, w }, &cfg(0, true, 1, 256));
    assert_eq!(got.status, 1);
    assert_eq!(got.labels[10], 0);
    assert!(got.labels.iter().enumerate().all(|(i, &l)| i == 10 || l == 1));
}

/// The two plans of `superpixel::cuda::regions_on_device` in one run: the emulated GPU
/// Felzenszwalb's labels feed the clean-up on the device, which equals the CPU clean-up of them.
#[test]
fn segmentation_and_cleanup_chain_on_the_device() {
    if !emu::available() {
        return;
    }
    let (n, h, w) = (2, 24, 31);
    let mut rng = Rng::new(17);
    let images: Vec<f32> = (0..n).flat_map(|_| ct_phantom_slice(h, w, 15.0, &mut rng)).collect();
    let params = lrc::superpixel::FelzenszwalbParams {
        scale: 100.0,
        sigma: 0.8,
        min_size: 10,
    };
    let batch = SliceBatch { n, h, w };
    let taps = fz::smoothing_taps(params.sigma);
    let cl = CleanupBufferLens::new(batch);
    let mut mem = EmuMemory::new();
    let images_at = mem.upload(&images);
    let f = emu_fz_buffers(&mut mem, images_at, batch, params.sigma);
    let c = CleanupBuffers {
        images: images_at,
        segments: f.labels,
        masks: mem.alloc(cl.masks),
        parent: mem.alloc(cl.per_pixel),
        size: mem.alloc(cl.per_pixel),
        best: mem.alloc(cl.best),
        counts: mem.alloc(cl.per_pixel),
        first: mem.alloc(cl.per_pixel),
        keys: mem.alloc(cl.per_pixel),
        vals: mem.alloc(cl.per_pixel),
        sort_counts: mem.alloc(cl.sort_counts),
        new_label: mem.alloc(cl.per_pixel),
        labels: mem.alloc(cl.labels),
        status: mem.alloc(cl.status),
    };
    let cfg = CleanupConfig {
        min_region_pixels: 5,
        ..CleanupConfig::default()
    };
    let mut calls = fz::felzenszwalb_calls(batch, &params, fz::DEFAULT_WINDOWS, taps.len(), &f).unwrap();
    calls.extend(cleanup_calls(batch, &cfg, &c).unwrap());
    mem.run(&calls).unwrap_or_else(|e| panic!("{e}"));
    let segments: Vec<u32> = mem.read(f.labels, n * h * w);
    let got: Vec<u16> = mem.read(c.labels, n * h * w);
    let want: Vec<u16> = images
        .chunks(h * w)
        .zip(segments.chunks(h * w))
        .flat_map(|(img, seg)| clean_regions(seg, &body_mask(img, h, w, &cfg), &cfg))
        .collect();
    if let Some(d) = first_difference(&got, &want, h, w) {
        panic!("chained clean-up differs first at {d}");
    }
    assert!(
        want.chunks(h * w).all(|l| l.iter().any(|&v| v > 2)),
        "a few regions per slice"
    );
}
