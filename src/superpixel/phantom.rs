//! A synthetic abdomen-like CT slice, for tests, benchmarks and demonstrations where no real CT
//! is at hand. It is a caricature (ellipses of typical HU plus noise), not anatomy.

use crate::rng::Rng;

/// The HU window used to normalise slices: HU clipped to [-1000, 1000], mapped to [0, 1].
pub const HU_WINDOW: (f32, f32) = (-1000.0, 1000.0);

/// A row-major `h x w` abdomen-like slice, already normalised (HU window [-1000, 1000] mapped to
/// [0, 1]): air, a patient table, subcutaneous fat, muscle, liver, spleen, kidneys, vertebra,
/// aorta, bowel with gas, a smooth tissue texture and Gaussian noise of `noise_hu` HU.
pub fn ct_phantom_slice(h: usize, w: usize, noise_hu: f32, rng: &mut Rng) -> Vec<f32> {
    let (hf, wf) = (h as f32, w as f32);
    let (cy, cx) = (0.47 * hf, 0.5 * wf);
    let mut hu = vec![-1000.0f32; h * w];
    let mut ellipse = |y0: f32, x0: f32, ry: f32, rx: f32, value: f32| {
        for y in 0..h {
            let dy = (y as f32 - y0) / ry;
            for x in 0..w {
                let dx = (x as f32 - x0) / rx;
                if dy * dy + dx * dx < 1.0 {
                    hu[y * w + x] = value;
                }
            }
        }
    };
    ellipse(0.9 * hf, cx, 0.035 * hf, 0.46 * wf, 150.0); // table
    ellipse(cy, cx, 0.36 * hf, 0.44 * wf, -100.0); // subcutaneous fat
    ellipse(cy, cx, 0.325 * hf, 0.405 * wf, 45.0); // muscle wall
    ellipse(cy, cx, 0.3 * hf, 0.38 * wf, -60.0); // visceral fat
    ellipse(cy - 0.05 * hf, cx - 0.17 * wf, 0.19 * hf, 0.18 * wf, 60.0); // liver
    ellipse(cy - 0.08 * hf, cx + 0.22 * wf, 0.08 * hf, 0.08 * wf, 50.0); // spleen
    for side in [-1.0f32, 1.0] {
        ellipse(cy + 0.1 * hf, cx + side * 0.14 * wf, 0.065 * hf, 0.05 * wf, 160.0); // kidney cortex
        ellipse(cy + 0.1 * hf, cx + side * 0.14 * wf, 0.03 * hf, 0.022 * wf, 30.0); // renal pelvis
        ellipse(cy + 0.12 * hf, cx + side * 0.06 * wf, 0.05 * hf, 0.03 * wf, 55.0); // psoas
    }
    ellipse(cy + 0.19 * hf, cx, 0.065 * hf, 0.065 * wf, 900.0); // vertebral cortex
    ellipse(cy + 0.19 * hf, cx, 0.05 * hf, 0.05 * wf, 250.0); // cancellous bone
    ellipse(cy + 0.07 * hf, cx + 0.03 * wf, 0.028 * hf, 0.028 * wf, 200.0); // aorta
    ellipse(cy + 0.07 * hf, cx - 0.04 * wf, 0.03 * hf, 0.022 * wf, 120.0); // vena cava
    for _ in 0..6 {
        let (y0, x0) = (
            cy + rng.range(-0.12, 0.1) as f32 * hf,
            cx + rng.range(-0.02, 0.22) as f32 * wf,
        );
        let (ry, rx) = (rng.range(0.03, 0.06) as f32 * hf, rng.range(0.03, 0.06) as f32 * wf);
        ellipse(y0, x0, ry, rx, 20.0); // bowel wall and content
        ellipse(
            y0,
            x0,
            0.5 * ry,
            0.5 * rx,
            if rng.below(2) == 0 { -950.0 } else { 180.0 },
        ); // gas or contrast
    }
    // A smooth texture of a few HU inside tissue (a sum of random plane waves), then noise.
    let waves: Vec<[f32; 4]> = (0..6)
        .map(|_| {
            let angle = rng.range(0.0, std::f64::consts::TAU) as f32;
            let freq = rng.range(0.02, 0.12) as f32;
            [
                angle.cos() * freq,
                angle.sin() * freq,
                rng.range(0.0, 6.3) as f32,
                rng.range(2.0, 6.0) as f32,
            ]
        })
        .collect();
    let (lo, hi) = HU_WINDOW;
    for y in 0..h {
        for x in 0..w {
            let v = &mut hu[y * w + x];
            if *v > -500.0 {
                *v += waves
                    .iter()
                    .map(|[fy, fx, ph, amp]| amp * (fy * y as f32 + fx * x as f32 + ph).sin())
                    .sum::<f32>();
            }
            *v += noise_hu * rng.normal() as f32;
            *v = (v.clamp(lo, hi) - lo) / (hi - lo);
        }
    }
    hu
}
