//! Elastic deformation of a slice and its region map.

use lrc::augment::elastic::{DisplacementField, ElasticParams, random_field, warp_bilinear, warp_nearest};
use lrc::rng::Rng;

fn pattern(h: usize, w: usize) -> Vec<f32> {
    (0..h * w).map(|i| ((i * 37) % 101) as f32 / 100.0).collect()
}

fn regions(h: usize, w: usize) -> Vec<u16> {
    (0..h * w)
        .map(|i| ((i / w) / 5 * 10 + (i % w) / 7 + 1) as u16)
        .collect()
}

#[test]
fn alpha_zero_is_the_identity() {
    let (h, w) = (40, 33);
    let field = random_field(h, w, &ElasticParams { alpha: 0.0, sigma: 4.0 }, &mut Rng::new(1));
    assert!(field.dx.iter().chain(&field.dy).all(|&d| d == 0.0));
    let img = pattern(h, w);
    assert_eq!(warp_bilinear(&img, h, w, &field), img);
    assert_eq!(warp_nearest(&regions(h, w), h, w, &field), regions(h, w));
}

#[test]
fn constant_field_translates() {
    let (h, w) = (20, 24);
    let img = pattern(h, w);
    let labels = regions(h, w);
    let (dy, dx) = (2isize, -3isize);
    let field = DisplacementField::constant(h, w, dy as f32, dx as f32);
    let warped = warp_bilinear(&img, h, w, &field);
    let warped_labels = warp_nearest(&labels, h, w, &field);
    for y in 0..h as isize {
        for x in 0..w as isize {
            let (sy, sx) = (y + dy, x + dx);
            let p = (y * w as isize + x) as usize;
            let inside = sy >= 0 && sx >= 0 && sy < h as isize && sx < w as isize;
            let (cy, cx) = (sy.clamp(0, h as isize - 1), sx.clamp(0, w as isize - 1));
            // Integer shifts interpolate with weights exactly 0 and 1.
            assert_eq!(warped[p], img[(cy * w as isize + cx) as usize], "image at ({y}, {x})");
            let expected = if inside {
                labels[(sy * w as isize + sx) as usize]
            } else {
                0
            };
            assert_eq!(warped_labels[p], expected, "labels at ({y}, {x})");
        }
    }
}

#[test]
fn fractional_shift_interpolates_a_ramp_linearly() {
    let (h, w) = (8, 10);
    let ramp: Vec<f32> = (0..h * w)
        .map(|i| (i / w) as f32 * 0.5 + (i % w) as f32 * 0.25)
        .collect();
    let field = DisplacementField::constant(h, w, 0.25, 0.5);
    let warped = warp_bilinear(&ramp, h, w, &field);
    for y in 0..h - 1 {
        for x in 0..w - 1 {
            let expected = (y as f32 + 0.25) * 0.5 + (x as f32 + 0.5) * 0.25;
            // A handful of f32 operations on values below 8: error within a few ulps of 8.
            assert!((warped[y * w + x] - expected).abs() < 1e-5, "({y}, {x})");
        }
    }
    // Nearest neighbour rounds half up: 0.5 moves to the next column, 0.25 stays.
    let nearest = warp_nearest(&regions(h, w), h, w, &field);
    assert_eq!(nearest[0], regions(h, w)[1]);
}

#[test]
fn warped_labels_are_a_subset_of_the_input_labels() {
    let (h, w) = (64, 64);
    let labels = regions(h, w);
    let field = random_field(
        h,
        w,
        &ElasticParams {
            alpha: 400.0,
            sigma: 4.0,
        },
        &mut Rng::new(5),
    );
    let moved = field.dx.iter().chain(&field.dy).filter(|d| d.abs() > 1.0).count();
    assert!(moved > h * w / 4, "the field barely moves anything ({moved})");
    let warped = warp_nearest(&labels, h, w, &field);
    assert_ne!(warped, labels);
    assert!(warped.iter().all(|l| *l == 0 || labels.contains(l)));
}

#[test]
fn field_is_deterministic_from_the_rng() {
    let p = ElasticParams::default();
    assert_eq!(
        random_field(50, 60, &p, &mut Rng::new(7)),
        random_field(50, 60, &p, &mut Rng::new(7))
    );
    assert_ne!(
        random_field(50, 60, &p, &mut Rng::new(7)),
        random_field(50, 60, &p, &mut Rng::new(8))
    );
}

/// Away from the border (where reflection folds noise onto itself), uniform noise of variance
/// 1/3 smoothed by a normalised Gaussian of sigma s has variance (1/3) / (4 pi s^2), so the
/// displacement std is alpha / (2 s sqrt(3 pi)). With s = 6 a 192 x 192 field holds about
/// (96 / 15)^2 = 40 independent patches in its centre crop; over 8 fields and both components
/// that is ~650 patches, a relative standard error of the std near 3%. 12% is 4 of them.
#[test]
fn displacement_magnitude_matches_theory() {
    let (h, w, sigma, alpha) = (192, 192, 6.0f32, 100.0f32);
    let params = ElasticParams { alpha, sigma };
    let mut rng = Rng::new(11);
    let (mut sum_sq, mut count) = (0.0f64, 0usize);
    for _ in 0..8 {
        let field = random_field(h, w, &params, &mut rng);
        for y in 48..144 {
            for x in 48..144 {
                for d in [field.dx[y * w + x], field.dy[y * w + x]] {
                    sum_sq += (d as f64).powi(2);
                    count += 1;
                }
            }
        }
    }
    let std = (sum_sq / count as f64).sqrt();
    let theory = alpha as f64 / (2.0 * sigma as f64 * (3.0 * std::f64::consts::PI).sqrt());
    assert!((std / theory - 1.0).abs() < 0.12, "std {std:.3} vs theory {theory:.3}");
}
