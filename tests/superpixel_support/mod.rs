//! Shared by the superpixel GPU tests (emulated and on a GPU): the scikit-image fixtures, CT-like
//! slices, and the agreement check of an approximate segmentation with the exact one.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};

use lrc::device::cuda::felzenszwalb::{FzBufferLens, FzBuffers, SliceBatch, smoothing_taps};
use lrc::device::emu::EmuMemory;
use lrc::metrics::adjusted_rand_index;
use lrc::superpixel::FelzenszwalbParams;
use lrc::superpixel::felzenszwalb::image_u8_as_f64;
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/felzenszwalb")
}

fn read_gz(file: &str) -> Vec<u8> {
    let raw = std::fs::read(fixture_dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&raw[..])
        .read_to_end(&mut out)
        .expect("gzip");
    out
}

/// One fixture case: an image (as f32, what the GPU takes) and Felzenszwalb parameters.
pub struct Case {
    pub name: String,
    pub h: usize,
    pub w: usize,
    pub pixels: Vec<f32>,
    pub params: FelzenszwalbParams,
}

/// Every case of tests/fixtures/felzenszwalb whose image has at most `max_pixels` pixels.
pub fn fixture_cases(max_pixels: usize) -> Vec<Case> {
    let text = std::fs::read_to_string(fixture_dir().join("manifest.json")).expect("fixture manifest");
    let m: Value = serde_json::from_str(&text).expect("manifest is JSON");
    let mut out = Vec::new();
    for case in m["cases"].as_array().unwrap() {
        let name = case["image"].as_str().unwrap();
        let entry = m["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .expect("image entry");
        let (h, w) = (
            entry["h"].as_u64().unwrap() as usize,
            entry["w"].as_u64().unwrap() as usize,
        );
        if h * w > max_pixels {
            continue;
        }
        let bytes = read_gz(entry["file"].as_str().unwrap());
        let pixels: Vec<f32> = match entry["dtype"].as_str().unwrap() {
            "f64" => bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            "f32" => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            "u8" => image_u8_as_f64(&bytes).iter().map(|&v| v as f32).collect(),
            other => panic!("unknown dtype {other}"),
        };
        let params = FelzenszwalbParams {
            scale: case["scale"].as_f64().unwrap(),
            sigma: case["sigma"].as_f64().unwrap(),
            min_size: case["min_size"].as_u64().unwrap() as usize,
        };
        out.push(Case {
            name: format!("{name} s{} g{} m{}", params.scale, params.sigma, params.min_size),
            h,
            w,
            pixels,
            params,
        });
    }
    out
}

/// The exact CPU segmentation of an f32 image (widened exactly, as the GPU reads it).
pub fn cpu_segments(pixels: &[f32], h: usize, w: usize, p: &FelzenszwalbParams) -> (Vec<u32>, usize) {
    let img: Vec<f64> = pixels.iter().map(|&v| v as f64).collect();
    lrc::superpixel::felzenszwalb(&img, h, w, p.scale, p.sigma, p.min_size)
}

/// Labels are 0..K-1 numbered in the raster order of each segment's first pixel.
pub fn assert_numbered_by_first_pixel(name: &str, labels: &[u32], k: usize) {
    let mut next = 0u32;
    for (i, &l) in labels.iter().enumerate() {
        assert!(
            l <= next,
            "{name}: pixel {i} has label {l} before label {next} appeared"
        );
        if l == next {
            next += 1;
        }
    }
    assert_eq!(next as usize, k, "{name}: {next} labels but K = {k}");
}

/// Agreement of one GPU segmentation with the exact one.
pub struct Agreement {
    pub name: String,
    pub ari: f64,
    pub k_cpu: usize,
    pub k_gpu: usize,
}

impl Agreement {
    pub fn new(name: &str, exact: &[u32], got: &[u32], k_gpu: usize) -> Agreement {
        let k_cpu = exact.iter().copied().max().map_or(0, |m| m as usize + 1);
        Agreement {
            name: name.to_string(),
            ari: adjusted_rand_index(exact, got).expect("same length"),
            k_cpu,
            k_gpu,
        }
    }

    /// Region count within 15%, or within one region where 15% is less than one.
    pub fn count_ok(&self) -> bool {
        let diff = self.k_gpu.abs_diff(self.k_cpu) as f64;
        diff <= (0.15 * self.k_cpu as f64).max(1.0)
    }
}

/// The acceptance check: mean ARI >= 0.9 over the set and every region count within 15% (one
/// region of slack below 7 regions). Prints the table; returns the mean ARI.
pub fn check_agreement(set: &str, results: &[Agreement]) -> f64 {
    assert!(!results.is_empty(), "{set}: nothing compared");
    println!("{set}: {:<48} {:>7} {:>6} {:>6}", "case", "ARI", "K cpu", "K gpu");
    for r in results {
        println!(
            "{set}: {:<48} {:>7.4} {:>6} {:>6}{}",
            r.name,
            r.ari,
            r.k_cpu,
            r.k_gpu,
            if r.count_ok() { "" } else { "  <- count" }
        );
    }
    let mean = results.iter().map(|r| r.ari).sum::<f64>() / results.len() as f64;
    let worst = results.iter().map(|r| r.ari).fold(f64::INFINITY, f64::min);
    println!(
        "{set}: mean ARI {mean:.4} (worst {worst:.4}) over {} cases",
        results.len()
    );
    assert!(mean >= 0.9, "{set}: mean ARI {mean:.4} < 0.9");
    let bad: Vec<&str> = results
        .iter()
        .filter(|r| !r.count_ok())
        .map(|r| r.name.as_str())
        .collect();
    assert!(bad.is_empty(), "{set}: region counts off by more than 15%: {bad:?}");
    mean
}

/// A sequential CPU model of the GPU Felzenszwalb (kernels/felzenszwalb.cu), decision for
/// decision: the same windows of the sorted edges, the same Jacobi iteration within each window
/// (with the same cap), the same thresholds, then the exact min_size pass. The GPU's result must equal it
/// label for label (its parallel unions and reductions do not depend on scheduling).
pub fn model_felzenszwalb(
    pixels: &[f32],
    h: usize,
    w: usize,
    p: &FelzenszwalbParams,
    windows: usize,
) -> (Vec<u32>, usize) {
    const MAX_WINDOW: usize = 2048;
    const MAX_ITERATIONS: usize = 64;
    let n = h * w;
    if n == 0 {
        return (Vec::new(), 0);
    }
    let img: Vec<f64> = pixels.iter().map(|&v| v as f64).collect();
    let s = lrc::superpixel::gaussian_filter_reflect(&img, h, w, p.sigma);
    let mut edges: Vec<(u32, u32)> = Vec::new();
    for y in 0..h {
        for x in 0..w.saturating_sub(1) {
            edges.push(((y * w + x + 1) as u32, (y * w + x) as u32));
        }
    }
    for y in 0..h.saturating_sub(1) {
        for x in 0..w {
            edges.push((((y + 1) * w + x) as u32, (y * w + x) as u32));
        }
    }
    for y in 0..h.saturating_sub(1) {
        for x in 0..w.saturating_sub(1) {
            edges.push((((y + 1) * w + x + 1) as u32, (y * w + x) as u32));
        }
    }
    for y in 0..h.saturating_sub(1) {
        for x in 0..w.saturating_sub(1) {
            edges.push(((y * w + x + 1) as u32, ((y + 1) * w + x) as u32));
        }
    }
    let weight = |e: (u32, u32)| {
        let d = s[e.0 as usize] - s[e.1 as usize];
        (d * d).sqrt()
    };
    let order_key = |x: f64| if x.is_nan() { u64::MAX } else { x.to_bits() | (1 << 63) };
    let mut order: Vec<usize> = (0..edges.len()).collect();
    order.sort_by_key(|&e| order_key(weight(edges[e])));
    let k = p.scale / 255.0;
    let mut parent: Vec<u32> = (0..n as u32).collect();
    let mut size = vec![1u32; n];
    let mut thr = vec![(0.0 + k / 1.0) as f32; n];
    fn find(parent: &mut [u32], mut x: u32) -> u32 {
        while parent[x as usize] != x {
            let g = parent[parent[x as usize] as usize];
            parent[x as usize] = g;
            x = g;
        }
        x
    }
    fn unite(parent: &mut [u32], a: u32, b: u32) {
        let (a, b) = (find(parent, a), find(parent, b));
        if a != b {
            parent[a.max(b) as usize] = a.min(b);
        }
    }
    let window = edges.len().div_ceil(windows.max(1)).clamp(1, MAX_WINDOW);
    for start in (0..edges.len()).step_by(window) {
        let m = window.min(edges.len() - start);
        struct Slot {
            x: u32,
            y: u32,
            w: f64,
            tx: f32,
            ty: f32,
            pair: u32,
        }
        let slots: Vec<Slot> = (0..m)
            .map(|i| {
                let e = edges[order[start + i]];
                let (x, y) = (find(&mut parent, e.0), find(&mut parent, e.1));
                Slot {
                    x,
                    y,
                    w: weight(e),
                    tx: thr[x as usize],
                    ty: thr[y as usize],
                    pair: size[x as usize] + size[y as usize],
                }
            })
            .collect();
        let mut incidences: Vec<(u32, usize)> = Vec::new();
        for (i, sl) in slots.iter().enumerate() {
            if sl.x != sl.y {
                incidences.push((sl.x, i));
                incidences.push((sl.y, i));
            }
        }
        incidences.sort_unstable();
        let mut merges = vec![false; m];
        for _ in 0..MAX_ITERATIONS {
            // The latest merging edge before each incidence with the same root.
            let mut latest = vec![[-1i64; 2]; m];
            let mut last = -1i64;
            for (j, &(root, i)) in incidences.iter().enumerate() {
                if j == 0 || incidences[j - 1].0 != root {
                    last = -1;
                }
                latest[i][usize::from(slots[i].x != root)] = last;
                if merges[i] {
                    last = last.max(i as i64);
                }
            }
            let active = |l: i64, t0: f32, wgt: f64| {
                if l < 0 {
                    t0 as f64 > wgt
                } else {
                    let sl = &slots[l as usize];
                    wgt < sl.w + k / sl.pair as f64
                }
            };
            let next: Vec<bool> = (0..m)
                .map(|i| {
                    let sl = &slots[i];
                    sl.x != sl.y && active(latest[i][0], sl.tx, sl.w) && active(latest[i][1], sl.ty, sl.w)
                })
                .collect();
            if next == merges {
                break;
            }
            merges = next;
        }
        for (i, sl) in slots.iter().enumerate() {
            if merges[i] {
                unite(&mut parent, sl.x, sl.y);
            }
        }
        let mut roots: Vec<u32> = incidences.iter().map(|&(r, _)| r).collect();
        roots.dedup();
        for &r0 in &roots {
            let r = find(&mut parent, r0);
            if r != r0 {
                size[r as usize] += size[r0 as usize];
            }
        }
        let mut merged_max: std::collections::HashMap<u32, f64> = Default::default();
        for (i, sl) in slots.iter().enumerate() {
            if merges[i] {
                let r = find(&mut parent, sl.x);
                let e = merged_max.entry(r).or_insert(0.0);
                *e = e.max(sl.w);
            }
        }
        for (r, wmax) in merged_max {
            thr[r as usize] = (wmax + k / size[r as usize] as f64) as f32;
        }
    }
    if p.min_size > 1 {
        for &e in &order {
            let (a, b) = edges[e];
            let (x, y) = (find(&mut parent, a), find(&mut parent, b));
            if x != y && ((size[x as usize] as usize) < p.min_size || (size[y as usize] as usize) < p.min_size) {
                parent[x.max(y) as usize] = x.min(y);
                size[x.min(y) as usize] += size[x.max(y) as usize];
            }
        }
    }
    let mut labels = vec![0u32; n];
    let mut next = 0u32;
    for i in 0..n {
        let r = find(&mut parent, i as u32) as usize;
        if r == i {
            labels[i] = next;
            next += 1;
        } else {
            labels[i] = labels[r];
        }
    }
    (labels, next as usize)
}

/// CT-like slices of `size x size` from the synthetic phantoms of src/data/synth (abdomen,
/// thorax, head; `per_region` slices spread over an 8-slice case of each), normalised from
/// [-1000, 1000] HU to [0, 1] as `lrc superpixels` does.
pub fn synth_ct_slices(size: usize, per_region: usize) -> Vec<(String, Vec<f32>)> {
    use lrc::data::synth::{Region, SynthConfig, synth_case};
    let mut out = Vec::new();
    for (case, region) in [Region::Abdomen, Region::Thorax, Region::Head].into_iter().enumerate() {
        let cfg = SynthConfig {
            region,
            slices: 8,
            size,
            seed: 7,
        };
        let (volume, _, _) = synth_case(&cfg, case).expect("synthetic case");
        let [nz, ny, nx] = volume.geometry.dims;
        assert_eq!((ny, nx), (size, size), "synthetic slices are square");
        for z in (0..nz).step_by((nz / per_region.max(1)).max(1)).take(per_region) {
            let slice = &volume.data[z * ny * nx..(z + 1) * ny * nx];
            out.push((
                format!("{}_{size}_z{z}", region.name()),
                slice
                    .iter()
                    .map(|&v| (v.clamp(-1000.0, 1000.0) + 1000.0) / 2000.0)
                    .collect(),
            ));
        }
    }
    out
}

/// The buffers of the GPU Felzenszwalb of `batch` in an emulator image, the slices at `images`
/// (already there). The buffers the kernels fill in an order-dependent way are declared so.
pub fn emu_fz_buffers(mem: &mut EmuMemory, images: u64, batch: SliceBatch, sigma: f64) -> FzBuffers {
    let taps = smoothing_taps(sigma);
    let lens = FzBufferLens::new(batch, taps.len());
    FzBuffers {
        images,
        taps: mem.upload(&taps),
        column_pass: mem.alloc(lens.column_pass),
        smoothed: mem.alloc(lens.smoothed),
        keys: mem.alloc(lens.keys),
        vals: mem.alloc(lens.keys),
        keys_tmp: mem.alloc(lens.keys),
        vals_tmp: mem.alloc(lens.keys),
        sort_counts: mem.alloc(lens.sort_counts),
        // Union-find links made with atomicCAS in schedule order: the trees' shapes vary, their
        // roots (each segment's first pixel) and so the labels do not.
        parent: mem.alloc_unordered(lens.per_pixel),
        size: mem.alloc(lens.per_pixel),
        threshold: mem.alloc(lens.per_pixel),
        merged_max: mem.alloc(lens.merged_max),
        reserve: mem.alloc(lens.per_pixel),
        claim: mem.alloc(lens.per_pixel),
        // The min_size pass's candidate lists, compacted through atomicAdd slots: their order
        // varies, their membership does not, and every decision reads positions, not slots.
        list: mem.alloc_unordered(lens.list),
        kept: mem.alloc_unordered(lens.kept),
        labels: mem.alloc(lens.per_pixel),
        counts: mem.alloc(lens.counts),
    }
}
