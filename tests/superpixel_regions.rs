//! From a normalised CT slice to training regions: body mask, clean-up, slice/stack/volume entry
//! points.

use lrc::rng::Rng;
use lrc::superpixel::cleanup::{CleanupConfig, body_mask, clean_regions};
use lrc::superpixel::phantom::ct_phantom_slice;
use lrc::superpixel::{
    FelzenszwalbParams, SuperpixelConfig, felzenszwalb, regions_for_slice, regions_for_stack, volume_regions,
};

/// Normalised value of a HU number in the default [-1000, 1000] window.
fn hu(v: f32) -> f32 {
    (v + 1000.0) / 2000.0
}

/// A 60 x 80 slice: a soft-tissue body ellipse holding an air pocket, a table below joined to
/// the body by a one-pixel bridge, a separate small blob, air elsewhere.
fn synthetic_slice() -> (Vec<f32>, usize, usize) {
    let (h, w) = (60, 80);
    let mut img = vec![hu(-1000.0); h * w];
    for y in 0..h {
        for x in 0..w {
            let (dy, dx) = ((y as f32 - 25.0) / 18.0, (x as f32 - 40.0) / 30.0);
            let p = y * w + x;
            if dy * dy + dx * dx < 1.0 {
                img[p] = hu(40.0);
            }
            if (20..26).contains(&y) && (35..45).contains(&x) {
                img[p] = hu(-950.0); // enclosed gas
            }
            if (50..54).contains(&y) && (5..75).contains(&x) {
                img[p] = hu(200.0); // table
            }
            if (43..50).contains(&y) && x == 40 {
                img[p] = hu(100.0); // a thin bridge (cable, sheet) from body to table
            }
            if (2..5).contains(&y) && (2..5).contains(&x) {
                img[p] = hu(300.0); // a marker outside the body
            }
        }
    }
    (img, h, w)
}

#[test]
fn body_mask_drops_table_and_outside_objects_and_fills_gas() {
    let (img, h, w) = synthetic_slice();
    let body = body_mask(&img, h, w, &CleanupConfig::default());
    let at = |y: usize, x: usize| body[y * w + x];
    assert!(at(25, 40), "enclosed gas is inside the body");
    assert!(at(10, 40) && at(25, 15));
    assert!(!at(52, 20) && !at(52, 60), "the table is not body");
    assert!(!at(3, 3), "the marker is not body");
    assert!(!at(0, 0) && !at(59, 79));
    // Without the opening the bridge connects the table to the body.
    let no_opening = CleanupConfig {
        body_opening_radius: 0,
        ..CleanupConfig::default()
    };
    assert!(body_mask(&img, h, w, &no_opening)[52 * w + 20]);
    // Without hole filling the gas stays outside.
    let no_fill = CleanupConfig {
        fill_holes: false,
        ..CleanupConfig::default()
    };
    assert!(!body_mask(&img, h, w, &no_fill)[25 * w + 40]);
}

#[test]
fn threshold_is_mapped_through_the_hu_window() {
    let cfg = CleanupConfig::default();
    assert_eq!(cfg.body_threshold(), 0.25);
    let narrow = CleanupConfig {
        hu_window: (-200.0, 300.0),
        body_threshold_hu: -100.0,
        ..cfg
    };
    assert!((narrow.body_threshold() - 0.2).abs() < 1e-7);
}

#[test]
fn clean_regions_masks_drops_small_caps_and_renumbers_by_first_pixel() {
    // Segments (any numbering) on a 4 x 6 image; the body excludes the last column.
    #[rustfmt::skip]
    let segments: [u32; 24] = [
        7, 7, 7, 3, 3, 9,
        7, 7, 5, 3, 3, 9,
        2, 2, 5, 3, 3, 9,
        2, 2, 2, 8, 3, 9,
    ];
    let body: Vec<bool> = (0..24).map(|i| i % 6 != 5).collect();
    let cfg = CleanupConfig {
        min_region_pixels: 2,
        max_regions: 10,
        ..CleanupConfig::default()
    };
    // Segment 9 lies outside the body, 8 is below min size; 7, 3, 5, 2 are numbered by their
    // first pixel: 7 -> 1, 3 -> 2, 5 -> 3, 2 -> 4.
    #[rustfmt::skip]
    let expected: [u16; 24] = [
        1, 1, 1, 2, 2, 0,
        1, 1, 3, 2, 2, 0,
        4, 4, 3, 2, 2, 0,
        4, 4, 4, 0, 2, 0,
    ];
    assert_eq!(clean_regions(&segments, &body, &cfg), expected);
    // A cap of 2 keeps the two largest: 3 (7 pixels), then of 7 and 2 (5 pixels each) the
    // smaller segment label, 2. Numbered by first pixel: 3 -> 1, 2 -> 2.
    let capped = clean_regions(&segments, &body, &CleanupConfig { max_regions: 2, ..cfg });
    #[rustfmt::skip]
    let expected_capped: [u16; 24] = [
        0, 0, 0, 1, 1, 0,
        0, 0, 0, 1, 1, 0,
        2, 2, 0, 1, 1, 0,
        2, 2, 2, 0, 1, 0,
    ];
    assert_eq!(capped, expected_capped);
}

#[test]
fn default_config_gives_tens_of_regions_inside_the_body_of_a_phantom() {
    let (h, w) = (256, 256);
    let mut rng = Rng::new(42);
    let cfg = SuperpixelConfig::default();
    cfg.validate().unwrap();
    for noise in [10.0, 20.0] {
        let img = ct_phantom_slice(h, w, noise, &mut rng);
        let regions = regions_for_slice(&img, h, w, &cfg);
        let k = *regions.iter().max().unwrap() as usize;
        assert!((15..=300).contains(&k), "{k} regions");
        // Labels 1..=K all used, numbered by first pixel.
        let mut next = 1u16;
        for &l in regions.iter().filter(|&&l| l > 0) {
            assert!(l <= next);
            if l == next {
                next += 1;
            }
        }
        assert_eq!(next as usize, k + 1);
        // Air corners and the table (row 0.9 h) are region 0.
        assert_eq!(regions[0], 0);
        assert_eq!(regions[(230) * w + w / 2], 0, "table must be dropped");
        let body = body_mask(&img, h, w, &cfg.cleanup);
        assert!(regions.iter().zip(&body).all(|(&r, &b)| b || r == 0));
    }
}

#[test]
fn stack_and_volume_entry_points_agree_with_the_single_slice() {
    let (h, w) = (48, 40);
    let mut rng = Rng::new(3);
    let slices: Vec<Vec<f32>> = (0..3).map(|_| ct_phantom_slice(h, w, 15.0, &mut rng)).collect();
    let volume: Vec<f32> = slices.concat();
    let cfg = SuperpixelConfig {
        felzenszwalb: FelzenszwalbParams {
            scale: 100.0,
            sigma: 0.8,
            min_size: 10,
        },
        ..SuperpixelConfig::default()
    };
    let per_slice: Vec<u16> = slices.iter().flat_map(|s| regions_for_slice(s, h, w, &cfg)).collect();
    assert_eq!(regions_for_stack(&volume, h, w, &cfg), per_slice);
    let cleaned = volume_regions(&volume, [3, h, w], &cfg, false);
    assert_eq!(cleaned, per_slice.iter().map(|&l| l as u32).collect::<Vec<_>>());
    let raw = volume_regions(&volume, [3, h, w], &cfg, true);
    for (z, s) in slices.iter().enumerate() {
        let img64: Vec<f64> = s.iter().map(|&v| v as f64).collect();
        let (labels, _) = felzenszwalb(&img64, h, w, 100.0, 0.8, 10);
        let expected: Vec<u32> = labels.iter().map(|l| l + 1).collect();
        assert_eq!(&raw[z * h * w..(z + 1) * h * w], &expected[..], "slice {z}");
    }
}

#[test]
fn regions_for_slice_fits_the_slice_store_prep_signature() {
    fn prep_with<F: Fn(&[f32], usize, usize) -> Vec<u16>>(f: F) -> Vec<u16> {
        f(&[0.5; 12], 3, 4)
    }
    let cfg = SuperpixelConfig::default();
    let out = prep_with(|img, h, w| regions_for_slice(img, h, w, &cfg));
    assert_eq!(out.len(), 12);
}

#[test]
fn bad_settings_are_config_errors() {
    let mut cfg = SuperpixelConfig::default();
    cfg.felzenszwalb.sigma = -1.0;
    assert!(matches!(cfg.validate(), Err(lrc::Error::Config(_))));
    let mut cfg = SuperpixelConfig::default();
    cfg.cleanup.max_regions = 70_000;
    assert!(matches!(cfg.validate(), Err(lrc::Error::Config(_))));
    let mut cfg = SuperpixelConfig::default();
    cfg.cleanup.hu_window = (100.0, -100.0);
    assert!(matches!(cfg.validate(), Err(lrc::Error::Config(_))));
}
