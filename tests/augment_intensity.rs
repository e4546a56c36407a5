//! Intensity jitter.

use lrc::augment::intensity::{IntensityDraw, IntensityParams, jitter};
use lrc::rng::Rng;

fn slice() -> Vec<f32> {
    (0..64 * 64).map(|i| ((i * 7919) % 1000) as f32 / 999.0).collect()
}

#[test]
fn zero_bounds_are_the_identity() {
    let zero = IntensityParams {
        brightness: 0.0,
        contrast: 0.0,
        gamma: 0.0,
        noise_std: 0.0,
    };
    let img = slice();
    assert_eq!(jitter(&img, &zero, &mut Rng::new(1)), img);
}

#[test]
fn output_stays_in_unit_range_and_is_deterministic() {
    let strong = IntensityParams {
        brightness: 0.3,
        contrast: 0.5,
        gamma: 1.0,
        noise_std: 0.2,
    };
    let img = slice();
    for seed in 0..20 {
        let out = jitter(&img, &strong, &mut Rng::new(seed));
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(out, jitter(&img, &strong, &mut Rng::new(seed)));
    }
    assert_ne!(
        jitter(&img, &strong, &mut Rng::new(1)),
        jitter(&img, &strong, &mut Rng::new(2))
    );
}

#[test]
fn draws_stay_within_their_bounds() {
    let p = IntensityParams::default();
    let mut rng = Rng::new(4);
    for _ in 0..1000 {
        let d = IntensityDraw::sample(&p, &mut rng);
        assert!(d.brightness_shift.abs() <= p.brightness);
        assert!((d.contrast_factor - 1.0).abs() <= p.contrast + 1e-6);
        assert!(d.gamma >= 1.0 / (1.0 + p.gamma) - 1e-6 && d.gamma <= 1.0 + p.gamma + 1e-6);
        assert!((0.0..=p.noise_std).contains(&d.noise_std));
    }
}

#[test]
fn contrast_is_about_the_mean_and_brightness_shifts_it() {
    let img: Vec<f32> = (0..1000).map(|i| 0.3 + 0.4 * (i as f32 / 999.0)).collect();
    let mean = img.iter().sum::<f32>() / img.len() as f32;
    let draw = IntensityDraw {
        brightness_shift: 0.05,
        contrast_factor: 1.2,
        gamma: 1.0,
        noise_std: 0.0,
    };
    let out = draw.apply(&img, &mut Rng::new(0));
    for (v, o) in img.iter().zip(&out) {
        // f32 arithmetic on values below 1: a few ulps.
        assert!((o - ((v - mean) * 1.2 + mean + 0.05)).abs() < 1e-6);
    }
}

#[test]
fn gamma_bends_and_noise_has_the_drawn_std() {
    let flat = vec![0.5f32; 256 * 256];
    let gamma = IntensityDraw {
        brightness_shift: 0.0,
        contrast_factor: 1.0,
        gamma: 2.0,
        noise_std: 0.0,
    };
    assert!(
        gamma
            .apply(&flat, &mut Rng::new(0))
            .iter()
            .all(|&v| (v - 0.25).abs() < 1e-7)
    );

    let noise = IntensityDraw {
        gamma: 1.0,
        noise_std: 0.02,
        ..gamma
    };
    let out = noise.apply(&flat, &mut Rng::new(3));
    let n = out.len() as f64;
    let mean = out.iter().map(|&v| v as f64).sum::<f64>() / n;
    let std = (out.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    // 65536 samples: the std estimate has relative sd 1/sqrt(2n) = 0.28%, the mean sd 8e-5.
    // Values stay 25 sd from the clamp at 0 and 1, so clamping does not shrink the std.
    assert!((std / 0.02 - 1.0).abs() < 0.015, "std {std}");
    assert!((mean - 0.5).abs() < 5e-4, "mean {mean}");
}
