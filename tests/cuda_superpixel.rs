//! The superpixel steps on a CUDA GPU against the CPU, with every fresh device buffer poisoned
//! with NaN so that an element a kernel fails to write shows up:
//! - Felzenszwalb (approximate by design, kernels/felzenszwalb.cu): against the exact CPU
//!   segmentation, mean adjusted Rand index >= 0.9 and each region count within 15% (one region
//!   of slack below 7 regions, where 15% is less than one), on every scikit-image fixture and on
//!   CT-like slices of 256 x 256 and 512 x 512 in batches of 32; and label for label equal to its
//!   sequential CPU model (tests/superpixel_support), since the kernels' decisions do not depend
//!   on scheduling.
//! - The CT clean-up (kernels/cleanup.cu): on the GPU's segments of batches of 32 CT-like slices at
//!   256 and 512, equal to the CPU clean-up of the same segments label for label, with the
//!   default settings and with no opening, no hole filling, a binding cap and minimum; bad input
//!   as errors or the status word. The whole GPU pipeline (segmentation and clean-up) against the
//!   CPU pipeline: mean ARI >= 0.9 and region counts within 15%, as for the segments, and no region
//!   outside the CPU's body mask.
//! - The elastic transform: fields, warped images and warped labels equal to the CPU's bit for bit
//!   (the same float operations in the same order, the noise from the same generator).
//! - Region sampling: the CPU's regions, samples inside them, and uniform draws (chi-square, as
//!   tests/superpixel_sampling.rs does for the CPU).
//!
//! These tests need a CUDA GPU: `cargo test --release -- --include-ignored`.

mod superpixel_support;

use std::sync::Arc;

use rayon::prelude::*;

use lrc::augment::cuda::{elastic_batch_cuda, fields_to_host, random_fields_cuda};
use lrc::augment::elastic::{ElasticParams, random_field, warp_bilinear, warp_nearest};
use lrc::device::cuda::cleanup;
use lrc::device::cuda::felzenszwalb::{self as fz, DEFAULT_WINDOWS, SliceBatch};
use lrc::device::cuda::region_sampling::{self, SamplingGeom};
use lrc::device::cuda::{CudaDevice, CudaStorage};
use lrc::rng::Rng;
use lrc::superpixel::cleanup::{CleanupConfig, body_mask, clean_regions};
use lrc::superpixel::cuda::{felzenszwalb_batch_cuda, regions_for_stack_cuda, sample_regions_cuda};
use lrc::superpixel::phantom::ct_phantom_slice;
use lrc::superpixel::sampling::sample_regions;
use lrc::superpixel::{FelzenszwalbParams, SuperpixelConfig, regions_for_stack};
use superpixel_support::{
    Agreement, assert_numbered_by_first_pixel, check_agreement, cpu_segments, fixture_cases, model_felzenszwalb,
    synth_ct_slices,
};

fn device() -> Arc<CudaDevice> {
    let device = CudaDevice::open(0).unwrap_or_else(|e| panic!("these tests need a CUDA GPU: {e}"));
    device.set_poison_fresh_buffers(true);
    device
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn felzenszwalb_is_close_to_the_cpu_on_every_fixture_and_equals_its_model() {
    let device = device();
    let mut results = Vec::new();
    for case in fixture_cases(usize::MAX) {
        let (labels, k) = felzenszwalb_batch_cuda(&device, &case.pixels, case.h, case.w, &case.params)
            .expect("GPU Felzenszwalb")
            .remove(0);
        assert_numbered_by_first_pixel(&case.name, &labels, k);
        let (model, k_model) = model_felzenszwalb(&case.pixels, case.h, case.w, &case.params, DEFAULT_WINDOWS);
        assert_eq!(
            (k, &labels),
            (k_model, &model),
            "{}: GPU differs from its model",
            case.name
        );
        let (exact, _) = cpu_segments(&case.pixels, case.h, case.w, &case.params);
        results.push(Agreement::new(&case.name, &exact, &labels, k));
    }
    assert_eq!(results.len(), 144);
    check_agreement("fixtures (GPU)", &results);
}

/// 32 CT-like slices: 8 from each synthetic phantom region and 8 noisy ellipse phantoms.
fn ct_batch(size: usize) -> Vec<(String, Vec<f32>)> {
    let mut slices = synth_ct_slices(size, 8);
    let mut rng = Rng::new(size as u64);
    while slices.len() < 32 {
        let i = slices.len();
        slices.push((
            format!("ellipses_{size}#{i}"),
            ct_phantom_slice(size, size, 15.0, &mut rng),
        ));
    }
    slices.truncate(32);
    slices
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn felzenszwalb_is_close_to_the_cpu_on_ct_batches_of_32_at_256_and_512() {
    let device = device();
    let p = SuperpixelConfig::default().felzenszwalb;
    for size in [256, 512] {
        check_gpu_segments(&device, &ct_batch(size), size, &p);
    }
}

/// Segments square `size` x `size` slices on the GPU and checks each against its model (equal)
/// and against the exact CPU segmentation (close, by ARI and region count).
fn check_gpu_segments(device: &Arc<CudaDevice>, slices: &[(String, Vec<f32>)], size: usize, p: &FelzenszwalbParams) {
    let stack: Vec<f32> = slices.iter().flat_map(|(_, s)| s.iter().copied()).collect();
    let input = CudaStorage::from_host(device, &stack).unwrap();
    let batch = SliceBatch {
        n: slices.len(),
        h: size,
        w: size,
    };
    let out = fz::felzenszwalb(&input, batch, p, DEFAULT_WINDOWS).expect("GPU Felzenszwalb");
    let labels: Vec<u32> = out.labels.to_host_pod().unwrap();
    let counts: Vec<u32> = out.counts.to_host_pod().unwrap();
    // The model and the exact segmentation of each slice, in parallel (a few seconds each at 512).
    let results: Vec<Agreement> = slices
        .par_iter()
        .enumerate()
        .map(|(i, (name, img))| {
            let got = &labels[i * size * size..(i + 1) * size * size];
            assert_numbered_by_first_pixel(name, got, counts[i] as usize);
            let (model, _) = model_felzenszwalb(img, size, size, p, DEFAULT_WINDOWS);
            assert_eq!(got, &model[..], "{name}: GPU differs from its model");
            let (exact, _) = cpu_segments(img, size, size, p);
            Agreement::new(name, &exact, got, counts[i] as usize)
        })
        .collect();
    check_agreement(&format!("CT-like {size} x {size} (GPU)"), &results);
}

/// `fz_merge` declares 272 bytes of static shared memory (ptxas report), so windows whose
/// dynamic shared memory falls within 256 bytes under 48 KiB need the opt-in as well (static and
/// dynamic together may not pass 48 KiB without it): the first square slice size that asks for
/// that (443 x 443 with the default windows), against the CPU as above.
#[test]
#[ignore = "needs a CUDA GPU"]
fn felzenszwalb_runs_with_merge_windows_just_under_48_kib_of_shared_memory() {
    let device = device();
    let p = SuperpixelConfig::default().felzenszwalb;
    let limit = 48 * 1024;
    let merge_shared = |size: usize| {
        let batch = SliceBatch { n: 1, h: size, w: size };
        fz::merge_launch(fz::window_len(batch.edges(), DEFAULT_WINDOWS)).1
    };
    let size = (64..1024)
        .find(|&size| (limit - 256 + 1..=limit).contains(&merge_shared(size)))
        .expect("a slice size whose merge windows ask for just under 48 KiB");
    println!(
        "{size} x {size}: {} bytes of dynamic shared memory per merge block",
        merge_shared(size)
    );
    let mut rng = Rng::new(443);
    let slices: Vec<(String, Vec<f32>)> = (0..4)
        .map(|i| {
            (
                format!("ellipses_{size}#{i}"),
                ct_phantom_slice(size, size, 15.0, &mut rng),
            )
        })
        .collect();
    check_gpu_segments(&device, &slices, size, &p);
}

/// The first pixel where two batches of label maps differ, as "slice s (y, x): got g, want w".
fn first_difference(got: &[u16], want: &[u16], size: usize) -> Option<String> {
    let i = got.iter().zip(want).position(|(a, b)| a != b)?;
    let (s, p) = (i / (size * size), i % (size * size));
    Some(format!(
        "slice {s} (y {}, x {}): got {}, want {}",
        p / size,
        p % size,
        got[i],
        want[i]
    ))
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_cleanup_equals_the_cpu_cleanup_on_ct_batches_at_256_and_512() {
    let device = device();
    let default = SuperpixelConfig::default();
    let variants = [
        default.cleanup.clone(),
        // No opening, no hole filling, a cap that binds and a minimum that drops regions.
        CleanupConfig {
            body_opening_radius: 0,
            fill_holes: false,
            min_region_pixels: 80,
            max_regions: 12,
            ..default.cleanup.clone()
        },
    ];
    for size in [256, 512] {
        let slices = ct_batch(size);
        let stack: Vec<f32> = slices.iter().flat_map(|(_, s)| s.iter().copied()).collect();
        let batch = SliceBatch {
            n: slices.len(),
            h: size,
            w: size,
        };
        let images = CudaStorage::from_host(&device, &stack).unwrap();
        // The GPU's own segments, as the pipeline feeds them.
        let segments = fz::felzenszwalb(&images, batch, &default.felzenszwalb, DEFAULT_WINDOWS).unwrap();
        let segments_host: Vec<u32> = segments.labels.to_host_pod().unwrap();
        let plane = size * size;
        for cfg in &variants {
            let out = cleanup::clean(&images, &segments.labels, batch, cfg).expect("GPU clean-up");
            assert_eq!(out.status.to_host_pod::<u32>().unwrap(), [0], "labels below h * w");
            let gpu = out.labels_to_host(stack.len()).unwrap();
            let cpu: Vec<u16> = stack
                .par_chunks(plane)
                .zip(segments_host.par_chunks(plane))
                .flat_map_iter(|(img, seg)| clean_regions(seg, &body_mask(img, size, size, cfg), cfg))
                .collect();
            if let Some(d) = first_difference(&gpu, &cpu, size) {
                panic!("{size} x {size}, {cfg:?}: GPU clean-up differs first at {d}");
            }
            let regions: usize = cpu.chunks(plane).map(|l| *l.iter().max().unwrap() as usize).sum();
            println!(
                "clean-up {size} x {size} r{} fill {}: equal, {regions} regions over {} slices",
                cfg.body_opening_radius,
                cfg.fill_holes,
                slices.len()
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_regions_are_close_to_the_cpu_regions_at_256_and_512() {
    let device = device();
    let cfg = SuperpixelConfig::default();
    for size in [256, 512] {
        let slices = ct_batch(size);
        let stack: Vec<f32> = slices.iter().flat_map(|(_, s)| s.iter().copied()).collect();
        // Segmentation and clean-up on the GPU, against both on the CPU.
        let gpu = regions_for_stack_cuda(&device, &stack, size, size, &cfg).unwrap();
        let cpu = regions_for_stack(&stack, size, size, &cfg);
        let plane = size * size;
        let wide = |l: &[u16]| l.iter().map(|&v| u32::from(v)).collect::<Vec<u32>>();
        let results: Vec<Agreement> = slices
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let (c, g) = (&cpu[i * plane..(i + 1) * plane], &gpu[i * plane..(i + 1) * plane]);
                let k_gpu = *g.iter().max().unwrap() as usize + 1;
                Agreement::new(name, &wide(c), &wide(g), k_gpu)
            })
            .collect();
        check_agreement(&format!("CT regions {size} x {size} (GPU)"), &results);
        // The body mask is the CPU's exactly, so outside it every label is 0.
        for (i, (name, img)) in slices.iter().enumerate() {
            let body = body_mask(img, size, size, &cfg.cleanup);
            assert!(
                (0..plane).all(|j| body[j] || gpu[i * plane + j] == 0),
                "{name}: a region outside the body"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_cleanup_reports_bad_input_as_errors() {
    let device = device();
    let cfg = CleanupConfig::default();
    let images = CudaStorage::from_host(&device, &[0.5; 12]).unwrap();
    let segments = CudaStorage::from_host_u32(&device, &[0; 12]).unwrap();
    let batch = SliceBatch { n: 1, h: 3, w: 4 };
    assert!(cleanup::clean(&images, &segments, SliceBatch { n: 2, ..batch }, &cfg).is_err());
    let capless = CleanupConfig {
        max_regions: 0,
        ..cfg.clone()
    };
    assert!(cleanup::clean(&images, &segments, batch, &capless).is_err());
    // A label not below h * w raises the status word, its pixel gets no region, and copying the
    // labels back is an error.
    let mut labels = [0u32; 12];
    labels[5] = 12;
    let segments = CudaStorage::from_host_u32(&device, &labels).unwrap();
    let plain = CleanupConfig {
        body_opening_radius: 0,
        min_region_pixels: 1,
        ..cfg
    };
    let out = cleanup::clean(&images, &segments, batch, &plain).unwrap();
    assert_eq!(out.status.to_host_pod::<u32>().unwrap(), [1]);
    let err = out.labels_to_host(12).unwrap_err().to_string();
    assert!(err.contains("not below the slice's pixel count"), "{err}");
    let got: Vec<u16> = out.labels.to_host_pod().unwrap();
    assert_eq!(got[5], 0);
    assert!(got.iter().enumerate().all(|(i, &l)| i == 5 || l == 1), "{got:?}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn felzenszwalb_reports_bad_input_as_errors() {
    let device = device();
    let p = FelzenszwalbParams::default();
    assert!(felzenszwalb_batch_cuda(&device, &[0.5; 10], 3, 3, &p).is_err());
    let input = CudaStorage::from_host(&device, &[0.5; 9]).unwrap();
    assert!(fz::felzenszwalb(&input, SliceBatch { n: 2, h: 3, w: 3 }, &p, DEFAULT_WINDOWS).is_err());
    let bad = FelzenszwalbParams { sigma: -1.0, ..p };
    assert!(felzenszwalb_batch_cuda(&device, &[0.5; 9], 3, 3, &bad).is_err());
    assert!(felzenszwalb_batch_cuda(&device, &[], 0, 3, &p).unwrap().is_empty());
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn elastic_fields_and_warps_equal_the_cpu_bit_for_bit() {
    let device = device();
    let (n, h, w) = (4, 256, 192);
    let params = ElasticParams::default();
    let mut rng = Rng::new(31);
    let images: Vec<f32> = (0..n).flat_map(|_| ct_phantom_slice(h, w, 15.0, &mut rng)).collect();
    let labels: Vec<u16> = (0..n * h * w)
        .map(|i| ((i % w) / 16 + (i / w % h) / 16 * 12) as u16)
        .collect();

    let fields = random_fields_cuda(&device, n, h, w, &params, &mut Rng::new(9)).unwrap();
    let gpu_fields = fields_to_host(&fields, n, h, w).unwrap();
    let mut cpu_rng = Rng::new(9);
    for (i, f) in gpu_fields.iter().enumerate() {
        let want = random_field(h, w, &params, &mut cpu_rng);
        assert_eq!(bits(&f.dy), bits(&want.dy), "field {i}: dy");
        assert_eq!(bits(&f.dx), bits(&want.dx), "field {i}: dx");
    }

    let got = elastic_batch_cuda(&device, &images, Some(&labels), n, h, w, &params, &mut Rng::new(9)).unwrap();
    let mut cpu_rng = Rng::new(9);
    let plane = h * w;
    for i in 0..n {
        let field = random_field(h, w, &params, &mut cpu_rng);
        let img = &images[i * plane..(i + 1) * plane];
        let lab = &labels[i * plane..(i + 1) * plane];
        assert_eq!(
            bits(&got.images[i * plane..(i + 1) * plane]),
            bits(&warp_bilinear(img, h, w, &field)),
            "image {i}"
        );
        assert_eq!(
            &got.labels.as_ref().unwrap()[i * plane..(i + 1) * plane],
            &warp_nearest(lab, h, w, &field)[..],
            "labels {i}"
        );
    }
    // alpha = 0 is the identity.
    let still = ElasticParams { alpha: 0.0, ..params };
    let same = elastic_batch_cuda(&device, &images, Some(&labels), n, h, w, &still, &mut Rng::new(1)).unwrap();
    assert_eq!(bits(&same.images), bits(&images));
    assert_eq!(same.labels.unwrap(), labels);
    assert!(elastic_batch_cuda(&device, &images[1..], None, n, h, w, &params, &mut Rng::new(1)).is_err());
}

/// The 4 x 6 maps of tests/superpixel_sampling.rs: regions 1 and 2 in both views, 3 only in the
/// query, 4 only in the positive view.
const Q: [u16; 24] = [
    0, 1, 1, 1, 2, 2, //
    0, 1, 1, 3, 2, 2, //
    0, 1, 1, 3, 0, 0, //
    0, 0, 0, 0, 0, 0, //
];
const P: [u16; 24] = [
    0, 0, 1, 1, 1, 0, //
    0, 2, 1, 1, 0, 4, //
    2, 2, 2, 2, 2, 4, //
    0, 0, 0, 0, 0, 0, //
];

/// Each pixel of a region drawn equally often: the Pearson statistic over the four (view,
/// region) groups has 18 degrees of freedom; 42.31 is its 0.999 quantile (as the CPU test).
#[test]
#[ignore = "needs a CUDA GPU"]
fn sampling_draws_uniformly_inside_the_regions_of_both_views() {
    let device = device();
    let n = 20_000;
    let s = sample_regions_cuda(&device, &Q, &P, 24, n, None, 2026)
        .unwrap()
        .remove(0);
    assert_eq!(s.labels, vec![1, 2]);
    assert_eq!(s.labels, sample_regions(&Q, &P, n, None, &mut Rng::new(1)).labels);
    let mut statistic = 0.0;
    let mut dof = 0;
    for (k, &label) in s.labels.iter().enumerate() {
        for (map, draws) in [(&Q, &s.q), (&P, &s.p)] {
            let draws = &draws[k * n..(k + 1) * n];
            assert!(draws.iter().all(|&i| u32::from(map[i as usize]) == label));
            let pixels: Vec<usize> = (0..map.len()).filter(|&i| u32::from(map[i]) == label).collect();
            let expected = n as f64 / pixels.len() as f64;
            for &px in &pixels {
                let observed = draws.iter().filter(|&&i| i as usize == px).count() as f64;
                statistic += (observed - expected).powi(2) / expected;
            }
            dof += pixels.len() - 1;
        }
    }
    assert_eq!(dof, 18);
    assert!(statistic < 42.31, "chi-square {statistic:.2} with {dof} dof");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn sampling_of_ct_regions_keeps_the_cpu_regions_for_a_batch() {
    let device = device();
    let cfg = SuperpixelConfig::default();
    let (n, size) = (8, 256);
    let mut rng = Rng::new(5);
    let slices: Vec<f32> = (0..n)
        .flat_map(|_| ct_phantom_slice(size, size, 15.0, &mut rng))
        .collect();
    let q = regions_for_stack(&slices, size, size, &cfg);
    let params = ElasticParams::default();
    let warped = elastic_batch_cuda(&device, &slices, Some(&q), n, size, size, &params, &mut rng).unwrap();
    let p = warped.labels.unwrap();
    let plane = size * size;
    let got = sample_regions_cuda(&device, &q, &p, plane, 32, None, 7).unwrap();
    for (i, s) in got.iter().enumerate() {
        let (qi, pi) = (&q[i * plane..(i + 1) * plane], &p[i * plane..(i + 1) * plane]);
        let cpu = sample_regions(qi, pi, 32, None, &mut Rng::new(1));
        assert_eq!(s.labels, cpu.labels, "image {i}");
        assert!(s.regions() > 10, "image {i}: {} regions", s.regions());
        for (k, &l) in s.labels.iter().enumerate() {
            assert!(
                s.q[k * 32..(k + 1) * 32]
                    .iter()
                    .all(|&px| u32::from(qi[px as usize]) == l)
            );
            assert!(
                s.p[k * 32..(k + 1) * 32]
                    .iter()
                    .all(|&px| u32::from(pi[px as usize]) == l)
            );
        }
    }
    // A subset: at most 8 regions, a subset of the full list, in label order.
    let sub = sample_regions_cuda(&device, &q, &p, plane, 32, Some(8), 7).unwrap();
    for (s, full) in sub.iter().zip(&got) {
        assert_eq!(s.regions(), 8.min(full.regions()));
        assert!(s.labels.windows(2).all(|w| w[0] < w[1]));
        assert!(s.labels.iter().all(|l| full.labels.contains(l)));
    }
    // A label above the declared maximum is an error, not a silent drop.
    let words: Vec<u32> = q[..plane].iter().map(|&l| u32::from(l)).collect();
    let maps = CudaStorage::from_host_pod(&device, &words).unwrap();
    let g = SamplingGeom {
        n: 1,
        pixels: plane,
        max_label: 3,
        samples: 4,
        max_regions: None,
    };
    let samples = region_sampling::sample(&maps, &maps, &g, 1).unwrap();
    assert!(samples.to_host().is_err());
}
