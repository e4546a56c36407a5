//! The approximation of the GPU Felzenszwalb at full size, without a GPU: its sequential CPU
//! model (tests/superpixel_support, which the emulated kernels match label for label in
//! tests/emu_superpixel.rs) against the exact CPU segmentation, with the default 768 windows,
//! on every scikit-image fixture and on CT-like slices of 256 and 512 pixels (synthetic
//! abdomen, thorax and head phantoms, and the noisy ellipse phantom). Acceptance as on the GPU:
//! mean adjusted Rand index >= 0.9 and each region count within 15% (one region of slack below
//! 7 regions, where 15% is less than one).

mod superpixel_support;

use lrc::device::cuda::felzenszwalb::DEFAULT_WINDOWS;
use lrc::rng::Rng;
use lrc::superpixel::SuperpixelConfig;
use lrc::superpixel::phantom::ct_phantom_slice;
use superpixel_support::{
    Agreement, check_agreement, cpu_segments, fixture_cases, model_felzenszwalb, synth_ct_slices,
};

#[test]
fn model_stays_close_to_the_exact_segmentation_on_every_fixture() {
    let results: Vec<Agreement> = fixture_cases(usize::MAX)
        .iter()
        .map(|c| {
            let (exact, _) = cpu_segments(&c.pixels, c.h, c.w, &c.params);
            let (got, k) = model_felzenszwalb(&c.pixels, c.h, c.w, &c.params, DEFAULT_WINDOWS);
            Agreement::new(&c.name, &exact, &got, k)
        })
        .collect();
    assert_eq!(results.len(), 144);
    check_agreement("fixtures (model)", &results);
}

#[test]
fn model_stays_close_to_the_exact_segmentation_on_ct_like_slices() {
    let p = SuperpixelConfig::default().felzenszwalb;
    let mut rng = Rng::new(2026);
    let mut results = Vec::new();
    for size in [256, 512] {
        let mut slices = synth_ct_slices(size, 2);
        slices.push((format!("ellipses_{size}"), ct_phantom_slice(size, size, 15.0, &mut rng)));
        for (name, img) in &slices {
            let (exact, _) = cpu_segments(img, size, size, &p);
            let (got, k) = model_felzenszwalb(img, size, size, &p, DEFAULT_WINDOWS);
            results.push(Agreement::new(name, &exact, &got, k));
        }
    }
    let mean = check_agreement("CT-like (model)", &results);
    // Far from the bound: the approximation should stay nearly exact on CT.
    assert!(mean >= 0.99, "mean ARI {mean:.4}");
}
