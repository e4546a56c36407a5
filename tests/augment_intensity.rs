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

#[test]
fn noise_is_normal_in_its_shape_and_independent_within_a_pair() {
    let flat = vec![0.5f32; 256 * 256];
    let std = 0.02;
    let noise = IntensityDraw {
        brightness_shift: 0.0,
        contrast_factor: 1.0,
        gamma: 1.0,
        noise_std: std,
    };
    let z: Vec<f64> = noise
        .apply(&flat, &mut Rng::new(11))
        .iter()
        .map(|&v| (v as f64 - 0.5) / std as f64)
        .collect();
    let n = z.len() as f64;
    // The share within 1, 2 and 3 sd of a normal; a share p of n draws has sd sqrt(p (1 - p) / n)
    // (0.0018, 0.0008, 0.0002 here): each bound is about 4.5 of those.
    for (k, p, tol) in [
        (1.0, 0.682_689, 0.008),
        (2.0, 0.954_500, 0.004),
        (3.0, 0.997_300, 0.001),
    ] {
        let share = z.iter().filter(|v| v.abs() < k).count() as f64 / n;
        assert!((share - p).abs() < tol, "share within {k} sd: {share}, normal {p}");
    }
    // Fourth moment 3 (sd of the estimate sqrt(96 / n) = 0.04).
    let kurtosis = z.iter().map(|v| v.powi(4)).sum::<f64>() / n;
    assert!((kurtosis - 3.0).abs() < 0.17, "kurtosis {kurtosis}");
    // The two values of a pair come from one draw: uncorrelated (sd 1 / sqrt(n / 2) = 0.0055).
    let corr = z.chunks(2).map(|p| p[0] * p[1]).sum::<f64>() / (n / 2.0);
    assert!(corr.abs() < 0.025, "correlation within pairs {corr}");
}
