//! The CPU Felzenszwalb against scikit-image, label for label, on the fixtures written by
//! scripts/felzenszwalb_fixtures.py (format documented there and in docs/SUPERPIXELS.md).

use std::io::Read;
use std::path::{Path, PathBuf};

use lrc::superpixel::felzenszwalb::image_u8_as_f64;
use lrc::superpixel::{
    FelzenszwalbParams, SuperpixelConfig, felzenszwalb, felzenszwalb_batch, gaussian_filter_reflect, gaussian_kernel,
    volume_regions,
};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/felzenszwalb")
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("manifest.json")).expect("fixture manifest");
    serde_json::from_str(&text).expect("manifest is JSON")
}

fn read_gz(file: &str) -> Vec<u8> {
    let raw = std::fs::read(fixture_dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&raw[..])
        .read_to_end(&mut out)
        .expect("gzip");
    out
}

fn f64s(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn u32s(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

struct Image {
    h: usize,
    w: usize,
    /// The pixels as skimage sees them after `img_as_float64`.
    pixels: Vec<f64>,
}

fn load_image(m: &Value, name: &str) -> Image {
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
    let bytes = read_gz(entry["file"].as_str().unwrap());
    let pixels = match entry["dtype"].as_str().unwrap() {
        "f64" => f64s(&bytes),
        "f32" => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        "u8" => image_u8_as_f64(&bytes),
        other => panic!("unknown dtype {other}"),
    };
    assert_eq!(pixels.len(), h * w, "{name}");
    Image { h, w, pixels }
}

#[test]
fn gaussian_kernels_equal_scipy_bit_for_bit() {
    let m = manifest();
    for entry in m["kernels"].as_array().unwrap() {
        let sigma = entry["sigma"].as_f64().unwrap();
        let expected: Vec<u64> = entry["bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| u64::from_str_radix(b.as_str().unwrap(), 16).unwrap())
            .collect();
        let got: Vec<u64> = gaussian_kernel(sigma).iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, expected, "kernel for sigma {sigma}");
    }
}

#[test]
fn smoothing_equals_scipy_gaussian_filter_bit_for_bit() {
    let m = manifest();
    for entry in m["smoothed"].as_array().unwrap() {
        let name = entry["image"].as_str().unwrap();
        let sigma = entry["sigma"].as_f64().unwrap();
        let img = load_image(&m, name);
        let expected = f64s(&read_gz(entry["file"].as_str().unwrap()));
        let got = gaussian_filter_reflect(&img.pixels, img.h, img.w, sigma);
        let differing = got
            .iter()
            .zip(&expected)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differing, 0,
            "{name} sigma {sigma}: {differing} pixels differ from scipy"
        );
    }
}

#[test]
fn labels_equal_skimage_on_every_fixture() {
    let m = manifest();
    let cases = m["cases"].as_array().unwrap();
    assert!(cases.len() >= 100, "fixture set unexpectedly small: {}", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let name = case["image"].as_str().unwrap();
        let img = load_image(&m, name);
        let scale = case["scale"].as_f64().unwrap();
        let sigma = case["sigma"].as_f64().unwrap();
        let min_size = case["min_size"].as_u64().unwrap() as usize;
        let expected = u32s(&read_gz(case["labels"].as_str().unwrap()));
        let (labels, k) = felzenszwalb(&img.pixels, img.h, img.w, scale, sigma, min_size);
        let differing = labels.iter().zip(&expected).filter(|(a, b)| a != b).count();
        if differing != 0 || k as u64 != case["k"].as_u64().unwrap() {
            failures.push(format!(
                "{name} scale {scale} sigma {sigma} min_size {min_size}: {differing} pixels differ, k {k} vs {}",
                case["k"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn batch_equals_one_by_one() {
    let m = manifest();
    let img = load_image(&m, "ct_like_noise10");
    let other = load_image(&m, "ct_like_noise25");
    let params = FelzenszwalbParams {
        scale: 100.0,
        sigma: 0.8,
        min_size: 50,
    };
    let stack: Vec<f64> = [&img.pixels, &other.pixels, &img.pixels]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    let batch = felzenszwalb_batch(&stack, img.h, img.w, &params);
    assert_eq!(batch.len(), 3);
    for (i, src) in [&img.pixels, &other.pixels, &img.pixels].into_iter().enumerate() {
        assert_eq!(
            batch[i],
            felzenszwalb(src, img.h, img.w, params.scale, params.sigma, params.min_size)
        );
    }
}

/// The raw volume path of `lrc superpixels` is scikit-image on each f32 slice, labels + 1.
#[test]
fn raw_volume_regions_equal_skimage_per_slice() {
    let m = manifest();
    let names = ["ct_like_noise10", "ct_like_noise25"];
    let images: Vec<Image> = names.iter().map(|n| load_image(&m, n)).collect();
    let (h, w) = (images[0].h, images[0].w);
    // The fixtures store these slices as f32, so narrowing the widened pixels is exact.
    let volume: Vec<f32> = images.iter().flat_map(|i| i.pixels.iter().map(|&v| v as f32)).collect();
    let cfg = SuperpixelConfig {
        felzenszwalb: FelzenszwalbParams {
            scale: 100.0,
            sigma: 0.8,
            min_size: 50,
        },
        ..SuperpixelConfig::default()
    };
    let raw = volume_regions(&volume, [2, h, w], &cfg, true);
    for (z, name) in names.iter().enumerate() {
        let case = m["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["image"] == *name && c["scale"] == 100.0 && c["sigma"] == 0.8 && c["min_size"] == 50)
            .expect("fixture case");
        let expected: Vec<u32> = u32s(&read_gz(case["labels"].as_str().unwrap()))
            .iter()
            .map(|l| l + 1)
            .collect();
        assert_eq!(&raw[z * h * w..(z + 1) * h * w], &expected[..], "{name}");
    }
}

/// Properties that hold for any input: labels are 0..K-1 numbered by first pixel, segments are
/// 8-connected, and min_size is met whenever the image has more than one segment.
#[test]
fn labels_are_ordered_connected_and_respect_min_size() {
    let mut rng = lrc::rng::Rng::new(11);
    for trial in 0..20 {
        let (h, w) = (5 + rng.below(40) as usize, 5 + rng.below(40) as usize);
        let levels = 2 + rng.below(6);
        let img: Vec<f64> = (0..h * w).map(|_| rng.below(levels) as f64 / levels as f64).collect();
        let min_size = rng.below(30) as usize;
        let (labels, k) = felzenszwalb(&img, h, w, 50.0, 0.5, min_size);
        let mut next = 0u32;
        let mut sizes = vec![0usize; k];
        for &l in &labels {
            assert!(l <= next, "trial {trial}: label {l} before {next}");
            if l == next {
                next += 1;
            }
            sizes[l as usize] += 1;
        }
        assert_eq!(next as usize, k);
        if k > 1 {
            assert!(
                sizes.iter().all(|&s| s >= min_size),
                "trial {trial}: {sizes:?} < {min_size}"
            );
        }
        assert_eq!(count_8_connected_components(&labels, h, w), k, "trial {trial}");
    }
}

fn count_8_connected_components(labels: &[u32], h: usize, w: usize) -> usize {
    let mut seen = vec![false; h * w];
    let mut count = 0;
    for start in 0..h * w {
        if seen[start] {
            continue;
        }
        count += 1;
        seen[start] = true;
        let mut stack = vec![start];
        while let Some(p) = stack.pop() {
            let (y, x) = ((p / w) as isize, (p % w) as isize);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (ny, nx) = (y + dy, x + dx);
                    if ny < 0 || nx < 0 || ny >= h as isize || nx >= w as isize {
                        continue;
                    }
                    let q = ny as usize * w + nx as usize;
                    if !seen[q] && labels[q] == labels[p] {
                        seen[q] = true;
                        stack.push(q);
                    }
                }
            }
        }
    }
    count
}
