//! The superpixel steps on a CUDA GPU against the CPU, with every fresh device buffer poisoned
//! with NaN so that an element a kernel fails to write shows up:
//! - Felzenszwalb (approximate by design, kernels/felzenszwalb.cu): against the exact CPU
//!   segmentation, mean adjusted Rand index >= 0.9 and each region count within 15% (one region
//!   of slack below 7 regions, where 15% is less than one), on every scikit-image fixture and on
//!   CT-like slices of 256 x 256 and 512 x 512 in batches of 32; and label for label equal to its
//!   sequential CPU model (tests/superpixel_support), since the kernels' decisions do not depend
//!   on scheduling. CT regions (GPU segments, host clean-up) close to the CPU's regions.
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
use lrc::device::cuda::felzenszwalb::{self as fz, DEFAULT_WINDOWS, SliceBatch};
use lrc::device::cuda::region_sampling::{self, SamplingGeom};
use lrc::device::cuda::{CudaDevice, CudaStorage};
use lrc::metrics::adjusted_rand_index;
use lrc::rng::Rng;
use lrc::superpixel::cleanup::body_mask;
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
        let slices = ct_batch(size);
        let stack: Vec<f32> = slices.iter().flat_map(|(_, s)| s.iter().copied()).collect();
        let input = CudaStorage::from_host(&device, &stack).unwrap();
        let batch = SliceBatch {
            n: slices.len(),
            h: size,
            w: size,
        };
        let out = fz::felzenszwalb(&input, batch, &p, DEFAULT_WINDOWS).expect("GPU Felzenszwalb");
        let labels: Vec<u32> = out.labels.to_host_pod().unwrap();
        let counts: Vec<u32> = out.counts.to_host_pod().unwrap();
        // The model and the exact segmentation of each slice, in parallel (a few seconds each at 512).
        let results: Vec<Agreement> = slices
            .par_iter()
            .enumerate()
            .map(|(i, (name, img))| {
                let got = &labels[i * size * size..(i + 1) * size * size];
                assert_numbered_by_first_pixel(name, got, counts[i] as usize);
                let (model, _) = model_felzenszwalb(img, size, size, &p, DEFAULT_WINDOWS);
                assert_eq!(got, &model[..], "{name}: GPU differs from its model");
                let (exact, _) = cpu_segments(img, size, size, &p);
                Agreement::new(name, &exact, got, counts[i] as usize)
            })
            .collect();
        check_agreement(&format!("CT-like {size} x {size} (GPU)"), &results);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn ct_regions_with_gpu_segments_are_close_to_the_cpu_regions() {
    let device = device();
    let cfg = SuperpixelConfig::default();
    let size = 256;
    let slices = ct_batch(size);
    let stack: Vec<f32> = slices.iter().flat_map(|(_, s)| s.iter().copied()).collect();
    let gpu = regions_for_stack_cuda(&device, &stack, size, size, &cfg).unwrap();
    let cpu = regions_for_stack(&stack, size, size, &cfg);
    let plane = size * size;
    let aris: Vec<f64> = (0..slices.len())
        .map(|i| adjusted_rand_index(&cpu[i * plane..(i + 1) * plane], &gpu[i * plane..(i + 1) * plane]).unwrap())
        .collect();
    let mean = aris.iter().sum::<f64>() / aris.len() as f64;
    println!("regions: mean ARI {mean:.4} over {} slices", aris.len());
    assert!(mean >= 0.9, "mean ARI {mean:.4} of the cleaned regions");
    // Outside the body (the mask is computed on the host either way) every label is 0.
    for (i, (name, img)) in slices.iter().enumerate() {
        let body = body_mask(img, size, size, &cfg.cleanup);
        assert!(
            (0..plane).all(|j| body[j] || gpu[i * plane + j] == 0),
            "{name}: a region outside the body"
        );
    }
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
