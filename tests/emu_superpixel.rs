//! The superpixel kernels (kernels/felzenszwalb.cu, radix_sort.cu, elastic.cu,
//! region_sampling.cu) run by the CPU emulator through the same launch plans the GPU uses, on
//! small images, against the CPU versions:
//! - the radix sort: sorted and stable, exactly;
//! - Felzenszwalb: exactly the labels of its sequential CPU model (tests/superpixel_support) for
//!   windows of 1 to 2048 edges, which exercises every path of the window merging (one thread
//!   per window up to the full 1024-thread block); exactly the exact CPU's labels when every
//!   window holds one edge (the parallel decisions then reduce to the sequential algorithm);
//!   with the default 768 windows, close to them: mean adjusted Rand index >= 0.9 and region
//!   counts within 15% (one region of slack below 7 regions, where 15% is less than one) on the
//!   small fixtures and on CT-like slices (at these sizes windows hold a few edges, so this is
//!   nearly exact; tests/superpixel_gpu_model.rs checks the approximation at full size);
//! - the elastic transform: fields and warped images and labels equal to the CPU's bit for bit
//!   (the same float operations in the same order; no tolerance is needed);
//! - region sampling: the CPU's regions, every sample inside its region, dropped regions absent,
//!   and uniform draws (chi-square, as tests/superpixel_sampling.rs).

mod superpixel_support;

use lrc::augment::elastic::{ElasticParams, gaussian_kernel_f32, random_field, warp_bilinear, warp_nearest};
use lrc::device::cuda::elastic::{field_calls, warp_calls};
use lrc::device::cuda::felzenszwalb::{DEFAULT_WINDOWS, FzBuffers, SliceBatch, felzenszwalb_calls, smoothing_taps};
use lrc::device::cuda::radix_sort::{count_words, segmented_sort_calls};
use lrc::device::cuda::region_sampling::{SamplingBuffers, SamplingGeom, sampling_calls};
use lrc::device::emu::{self, EmuMemory};
use lrc::rng::Rng;
use lrc::superpixel::FelzenszwalbParams;
use lrc::superpixel::phantom::ct_phantom_slice;
use lrc::superpixel::sampling::sample_regions;
use lrc::testing::assert_compiled_for_every_arch;
use superpixel_support::{
    Agreement, assert_numbered_by_first_pixel, check_agreement, cpu_segments, emu_fz_buffers, fixture_cases,
    model_felzenszwalb,
};

/// The emulated GPU Felzenszwalb of `n` slices: per slice, labels and K.
fn emu_felzenszwalb(
    images: &[f32],
    n: usize,
    h: usize,
    w: usize,
    params: &FelzenszwalbParams,
    windows: usize,
) -> Vec<(Vec<u32>, usize)> {
    let batch = SliceBatch { n, h, w };
    let mut mem = EmuMemory::new();
    let images_at = mem.upload(images);
    let b = emu_fz_buffers(&mut mem, images_at, batch, params.sigma);
    let taps = smoothing_taps(params.sigma);
    let calls = felzenszwalb_calls(batch, params, windows, taps.len(), &b).expect("plan");
    mem.run(&calls).unwrap_or_else(|e| panic!("{e}"));
    let labels: Vec<u32> = mem.read(b.labels, n * h * w);
    let counts: Vec<u32> = mem.read(b.counts, n);
    labels
        .chunks(h * w)
        .zip(counts)
        .map(|(l, k)| (l.to_vec(), k as usize))
        .collect()
}

/// Every kernel the superpixel planners launch is compiled, for every architecture of the build,
/// in the module the launch names.
#[test]
fn every_planned_kernel_was_compiled_for_every_architecture() {
    if !lrc::kernels::BUILT {
        return;
    }
    let p = FelzenszwalbParams {
        scale: 100.0,
        sigma: 0.8,
        min_size: 20,
    };
    let mut calls = felzenszwalb_calls(SliceBatch { n: 2, h: 30, w: 40 }, &p, 64, 7, &FzBuffers::default()).unwrap();
    let g = SamplingGeom {
        n: 2,
        pixels: 100,
        max_label: 9,
        samples: 4,
        max_regions: Some(3),
    };
    calls.extend(sampling_calls(&g, 1, &SamplingBuffers::default()).unwrap());
    calls.extend(field_calls(2, 10, 10, 5, 1.0, 1, 2, 3, 4).unwrap());
    calls.extend(warp_calls(2, 10, 10, 1, 2, 3, 4, 5).unwrap());
    assert_compiled_for_every_arch(calls.iter().map(|c| (c.module, c.kernel)));
}

#[test]
fn radix_sort_orders_keys_and_keeps_ties_in_input_order() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(4);
    // Segments longer than a tile (2048) so that several tiles and their offsets take part; few
    // distinct keys (many ties) in the first, the full 32-bit range in the second.
    let len = 2049 + 700;
    let segments = 2;
    let keys: Vec<u32> = (0..segments * len)
        .map(|i| {
            if i < len {
                rng.below(5) as u32 * 0x0101_0101
            } else {
                rng.next_u64() as u32
            }
        })
        .collect();
    let vals: Vec<u32> = (0..segments * len).map(|i| i as u32).collect();
    let mut mem = EmuMemory::new();
    let (k, v) = (mem.upload(&keys), mem.upload(&vals));
    let (kt, vt, counts) = (
        mem.alloc(keys.len()),
        mem.alloc(keys.len()),
        mem.alloc(count_words(segments, len)),
    );
    let calls = segmented_sort_calls(segments, len, 32, k, v, kt, vt, counts).unwrap();
    mem.run(&calls).unwrap_or_else(|e| panic!("{e}"));
    let (got_k, got_v): (Vec<u32>, Vec<u32>) = (mem.read(k, keys.len()), mem.read(v, keys.len()));
    for s in 0..segments {
        let mut want: Vec<(u32, u32)> = (s * len..(s + 1) * len).map(|i| (keys[i], vals[i])).collect();
        want.sort_by_key(|&(key, _)| key); // stable
        let got: Vec<(u32, u32)> = (s * len..(s + 1) * len).map(|i| (got_k[i], got_v[i])).collect();
        assert_eq!(got, want, "segment {s}");
    }
}

/// Small images: random quantised levels (exact ties), values k/255, a CT-like slice.
fn small_images(rng: &mut Rng) -> Vec<(String, usize, usize, Vec<f32>)> {
    let (h, w) = (9, 13);
    let levels = 3 + rng.below(5);
    let quantised = (0..h * w).map(|_| rng.below(levels) as f32 / levels as f32).collect();
    let u8_values = (0..h * w).map(|_| (rng.below(256) as f64 / 255.0) as f32).collect();
    vec![
        (format!("levels{levels}_{h}x{w}"), h, w, quantised),
        (format!("u8_{h}x{w}"), h, w, u8_values),
        ("ct_like_14x17".into(), 14, 17, ct_phantom_slice(14, 17, 15.0, rng)),
    ]
}

#[test]
fn one_edge_per_window_reproduces_the_cpu_labels_exactly() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(21);
    let params = [
        FelzenszwalbParams {
            scale: 20.0,
            sigma: 0.0,
            min_size: 4,
        },
        FelzenszwalbParams {
            scale: 100.0,
            sigma: 0.5,
            min_size: 10,
        },
    ];
    for (name, h, w, img) in small_images(&mut rng) {
        for p in &params {
            let edges = SliceBatch { n: 1, h, w }.edges();
            let (labels, k) = emu_felzenszwalb(&img, 1, h, w, p, edges).remove(0);
            let (exact, k_exact) = cpu_segments(&img, h, w, p);
            assert_eq!(k, k_exact, "{name} {p:?}: K");
            assert_eq!(labels, exact, "{name} {p:?}: labels");
        }
    }
}

#[test]
fn window_merging_equals_its_sequential_model_for_any_window_size() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(99);
    let p = FelzenszwalbParams {
        scale: 100.0,
        sigma: 0.8,
        min_size: 20,
    };
    let (h, w) = (32, 32);
    let slices: Vec<f32> = (0..2).flat_map(|_| ct_phantom_slice(h, w, 25.0, &mut rng)).collect();
    let edges = SliceBatch { n: 1, h, w }.edges();
    // Windows of 1953 edges (4 keys per thread of a 1024-thread block), 62, and 6 (the default
    // 768 windows).
    let mut approximate = false;
    for windows in [2, 64, DEFAULT_WINDOWS] {
        let got = emu_felzenszwalb(&slices, 2, h, w, &p, windows);
        for (i, (labels, k)) in got.iter().enumerate() {
            let slice = &slices[i * h * w..(i + 1) * h * w];
            let (want, k_want) = model_felzenszwalb(slice, h, w, &p, windows);
            assert_eq!(*k, k_want, "slice {i}, {windows} windows of {edges} edges: K");
            assert_eq!(labels, &want, "slice {i}, {windows} windows: labels");
            approximate |= *labels != cpu_segments(slice, h, w, &p).0;
        }
    }
    assert!(approximate, "the large windows should exercise the approximation");
}

#[test]
fn default_windows_stay_close_to_the_cpu_on_small_fixtures() {
    if !emu::available() {
        return;
    }
    let mut results = Vec::new();
    // Three of the eight parameter sets: many small segments, the CT default's neighbourhood,
    // strong smoothing.
    let chosen = [(1.0, 0.8, 20), (100.0, 0.5, 20), (10.0, 1.5, 5)];
    for case in fixture_cases(24 * 24)
        .into_iter()
        .filter(|c| chosen.contains(&(c.params.scale, c.params.sigma, c.params.min_size)))
    {
        let (labels, k) = emu_felzenszwalb(&case.pixels, 1, case.h, case.w, &case.params, DEFAULT_WINDOWS).remove(0);
        assert_numbered_by_first_pixel(&case.name, &labels, k);
        let (exact, _) = cpu_segments(&case.pixels, case.h, case.w, &case.params);
        results.push(Agreement::new(&case.name, &exact, &labels, k));
    }
    check_agreement("fixtures (emulated)", &results);
}

#[test]
fn default_windows_stay_close_to_the_cpu_on_ct_like_slices() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(2026);
    let many_regions = FelzenszwalbParams {
        scale: 10.0,
        sigma: 0.8,
        min_size: 5,
    };
    let ct_default_like = FelzenszwalbParams {
        scale: 100.0,
        sigma: 0.8,
        min_size: 20,
    };
    let mut results = Vec::new();
    for (h, w, p) in [(24usize, 31usize, many_regions), (40, 40, ct_default_like)] {
        let n = 2;
        let slices: Vec<f32> = (0..n).flat_map(|_| ct_phantom_slice(h, w, 15.0, &mut rng)).collect();
        let got = emu_felzenszwalb(&slices, n, h, w, &p, DEFAULT_WINDOWS);
        for (i, (labels, k)) in got.iter().enumerate() {
            let name = format!("ct_like_{h}x{w}#{i} s{} m{}", p.scale, p.min_size);
            assert_numbered_by_first_pixel(&name, labels, *k);
            let (exact, _) = cpu_segments(&slices[i * h * w..(i + 1) * h * w], h, w, &p);
            results.push(Agreement::new(&name, &exact, labels, *k));
        }
    }
    check_agreement("CT-like (emulated)", &results);
}

#[test]
fn elastic_fields_and_warps_equal_the_cpu_bit_for_bit() {
    if !emu::available() {
        return;
    }
    let (n, h, w) = (3, 17, 23);
    // sigma 3 gives a radius of 12, more than half the height: reflection wraps more than once.
    let params = ElasticParams {
        alpha: 40.0,
        sigma: 3.0,
    };
    let mut rng = Rng::new(77);
    let images: Vec<f32> = (0..n * h * w).map(|_| rng.range(0.0, 1.0) as f32).collect();
    let labels: Vec<u16> = (0..n * h * w).map(|i| ((i % w) / 4 + (i / w % h) / 5) as u16).collect();

    // The host draws the noise exactly as random_field does, one field per image in order.
    let mut draw = Rng::new(5);
    let mut noise = Vec::new();
    for _ in 0..n {
        noise.extend((0..2 * h * w).map(|_| draw.range(-1.0, 1.0) as f32));
    }
    let mut cpu_rng = Rng::new(5);
    let cpu_fields: Vec<_> = (0..n).map(|_| random_field(h, w, &params, &mut cpu_rng)).collect();

    let taps = gaussian_kernel_f32(params.sigma);
    let mut mem = EmuMemory::new();
    let noise_a = mem.upload(&noise);
    let taps_a = mem.upload(&taps);
    let tmp = mem.alloc(noise.len());
    let field = mem.alloc(noise.len());
    let img_a = mem.upload(&images);
    let lab_a = mem.upload(&labels.iter().map(|&l| u32::from(l)).collect::<Vec<u32>>());
    let (out_img, out_lab) = (mem.alloc(n * h * w), mem.alloc(n * h * w));
    let mut calls = field_calls(n, h, w, taps.len(), params.alpha, noise_a, taps_a, tmp, field).unwrap();
    calls.extend(warp_calls(n, h, w, img_a, lab_a, field, out_img, out_lab).unwrap());
    mem.run(&calls).unwrap_or_else(|e| panic!("{e}"));

    let got_field: Vec<f32> = mem.read(field, noise.len());
    let got_img: Vec<f32> = mem.read(out_img, n * h * w);
    let got_lab: Vec<u32> = mem.read(out_lab, n * h * w);
    for (i, f) in cpu_fields.iter().enumerate() {
        let plane = h * w;
        let (dy, dx) = (
            &got_field[2 * i * plane..(2 * i + 1) * plane],
            &got_field[(2 * i + 1) * plane..(2 * i + 2) * plane],
        );
        assert_eq!(bits(dy), bits(&f.dy), "image {i}: dy");
        assert_eq!(bits(dx), bits(&f.dx), "image {i}: dx");
        let img = &images[i * plane..(i + 1) * plane];
        let lab = &labels[i * plane..(i + 1) * plane];
        assert_eq!(
            bits(&got_img[i * plane..(i + 1) * plane]),
            bits(&warp_bilinear(img, h, w, f)),
            "image {i}: bilinear warp"
        );
        let want: Vec<u32> = warp_nearest(lab, h, w, f).iter().map(|&l| u32::from(l)).collect();
        assert_eq!(
            &got_lab[i * plane..(i + 1) * plane],
            &want[..],
            "image {i}: nearest warp"
        );
    }
    // The deformation is not trivial: some pixels move by more than one pixel.
    assert!(got_field.iter().any(|v| v.abs() > 1.0));
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
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

/// Emulated sampling of `n` image pairs; returns per image (labels, q, p).
fn emu_sample(q: &[u16], p: &[u16], g: &SamplingGeom, seed: u64) -> Vec<(Vec<u32>, Vec<u32>, Vec<u32>)> {
    let lens = g.lens();
    let mut mem = EmuMemory::new();
    let words = |m: &[u16]| m.iter().map(|&l| u32::from(l)).collect::<Vec<u32>>();
    let b = SamplingBuffers {
        q_labels: mem.upload(&words(q)),
        p_labels: mem.upload(&words(p)),
        keys: mem.alloc(lens.sort),
        vals: mem.alloc(lens.sort),
        keys_tmp: mem.alloc(lens.sort),
        vals_tmp: mem.alloc(lens.sort),
        sort_counts: mem.alloc(lens.sort_counts),
        counts: mem.alloc(lens.counts),
        candidates: mem.alloc(lens.regions),
        regions: mem.alloc(lens.regions),
        region_counts: mem.alloc(lens.region_counts),
        q_out: mem.alloc(lens.out),
        p_out: mem.alloc(lens.out),
        error: mem.alloc(lens.error),
    };
    mem.run(&sampling_calls(g, seed, &b).unwrap())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(mem.read::<u32>(b.error, 1), vec![0], "no label exceeds max_label");
    let counts: Vec<u32> = mem.read(b.region_counts, g.n);
    let regions: Vec<u32> = mem.read(b.regions, lens.regions);
    let (qo, po): (Vec<u32>, Vec<u32>) = (mem.read(b.q_out, lens.out), mem.read(b.p_out, lens.out));
    let (cap, s) = (g.max_label, g.samples);
    (0..g.n)
        .map(|i| {
            let k = counts[i] as usize;
            let labels = regions[i * 5 * cap..i * 5 * cap + k].to_vec();
            let out = |v: &[u32]| v[i * cap * s..i * cap * s + k * s].to_vec();
            assert!(
                qo[i * cap * s + k * s..(i + 1) * cap * s].iter().all(|&v| v == 0),
                "rows past the kept regions are zeroed"
            );
            (labels, out(&qo), out(&po))
        })
        .collect()
}

#[test]
fn sampling_keeps_the_cpu_regions_and_draws_inside_them_uniformly() {
    if !emu::available() {
        return;
    }
    // Image 0: the maps above; image 1: the views swapped (regions 3 and 4 trade places).
    let q: Vec<u16> = Q.iter().chain(&P).copied().collect();
    let p: Vec<u16> = P.iter().chain(&Q).copied().collect();
    let n = 4000;
    let g = SamplingGeom {
        n: 2,
        pixels: 24,
        max_label: 6,
        samples: n,
        max_regions: None,
    };
    let got = emu_sample(&q, &p, &g, 2026);
    let mut statistic = 0.0;
    let mut dof = 0;
    for (i, (labels, qs, ps)) in got.iter().enumerate() {
        let (qm, pm) = (&q[i * 24..(i + 1) * 24], &p[i * 24..(i + 1) * 24]);
        let cpu = sample_regions(qm, pm, 3, None, &mut Rng::new(1));
        assert_eq!(labels, &cpu.labels, "image {i}: regions present in both views");
        assert_eq!(labels, &vec![1, 2]);
        for (k, &label) in labels.iter().enumerate() {
            for (map, draws) in [(qm, qs), (pm, ps)] {
                let draws = &draws[k * n..(k + 1) * n];
                assert!(draws.iter().all(|&px| u32::from(map[px as usize]) == label));
                let pixels: Vec<usize> = (0..map.len()).filter(|&px| u32::from(map[px]) == label).collect();
                let expected = n as f64 / pixels.len() as f64;
                for &px in &pixels {
                    let observed = draws.iter().filter(|&&d| d as usize == px).count() as f64;
                    statistic += (observed - expected).powi(2) / expected;
                }
                dof += pixels.len() - 1;
            }
        }
    }
    // Twice the 18 degrees of freedom of the CPU test (two images); 66.62 is the 0.999 quantile
    // of chi-square with 36 degrees of freedom.
    assert_eq!(dof, 36);
    assert!(statistic < 66.62, "chi-square {statistic:.2} with {dof} dof");
}

#[test]
fn sampling_subset_is_at_most_max_regions_in_label_order() {
    if !emu::available() {
        return;
    }
    // Nine regions present in both views (3 x 3 blocks of a 9 x 9 map), keep at most four.
    let map: Vec<u16> = (0..81).map(|i| ((i / 9) / 3 * 3 + (i % 9) / 3 + 1) as u16).collect();
    let g = SamplingGeom {
        n: 1,
        pixels: 81,
        max_label: 9,
        samples: 5,
        max_regions: Some(4),
    };
    let mut chosen = std::collections::BTreeSet::new();
    for seed in 0..12 {
        let (labels, qs, ps) = emu_sample(&map, &map, &g, seed).remove(0);
        assert_eq!(labels.len(), 4, "seed {seed}");
        assert!(labels.windows(2).all(|p| p[0] < p[1]), "label order: {labels:?}");
        for (k, &l) in labels.iter().enumerate() {
            assert!(
                qs[k * 5..(k + 1) * 5]
                    .iter()
                    .all(|&px| u32::from(map[px as usize]) == l)
            );
            assert!(
                ps[k * 5..(k + 1) * 5]
                    .iter()
                    .all(|&px| u32::from(map[px as usize]) == l)
            );
        }
        chosen.extend(labels);
    }
    assert!(chosen.len() > 4, "different seeds choose different subsets: {chosen:?}");
    let all = emu_sample(
        &map,
        &map,
        &SamplingGeom {
            max_regions: Some(9),
            ..g
        },
        3,
    )
    .remove(0);
    assert_eq!(all.0, (1..=9).collect::<Vec<u32>>());
}
