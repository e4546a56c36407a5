//! Mild intensity jitter for contrastive positives: contrast about the image mean, brightness
//! shift, gamma and additive Gaussian noise, on a slice normalised to [0, 1]. The result is
//! clamped to [0, 1].

use crate::rng::Rng;

/// The largest jitter of each kind; each draw is uniform up to it. Zero disables a kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IntensityParams {
    /// Brightness shift drawn from [-brightness, brightness] (normalised units; 0.05 = 100 HU
    /// for a [-1000, 1000] window).
    pub brightness: f32,
    /// Contrast factor drawn from [1 - contrast, 1 + contrast], applied about the image mean.
    pub contrast: f32,
    /// Gamma drawn log-uniformly from [1 / (1 + gamma), 1 + gamma].
    pub gamma: f32,
    /// Noise standard deviation drawn from [0, noise_std].
    pub noise_std: f32,
}

impl Default for IntensityParams {
    fn default() -> Self {
        IntensityParams {
            brightness: 0.05,
            contrast: 0.1,
            gamma: 0.15,
            noise_std: 0.01,
        }
    }
}

impl IntensityParams {
    /// Check that every bound is finite, non-negative and contrast below 1.
    pub fn validate(&self) -> crate::Result<()> {
        let all = [self.brightness, self.contrast, self.gamma, self.noise_std];
        if all.iter().any(|v| !(v.is_finite() && *v >= 0.0)) || self.contrast >= 1.0 {
            return Err(crate::Error::config(format!(
                "intensity jitter bounds must be finite, >= 0 and contrast < 1, got {self:?}"
            )));
        }
        Ok(())
    }
}

/// One draw of the jitter, applied as `clamp(noise + clamp(c * v + (1 - c) * mean + b)^gamma)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IntensityDraw {
    pub brightness_shift: f32,
    pub contrast_factor: f32,
    pub gamma: f32,
    pub noise_std: f32,
}

impl IntensityDraw {
    /// Draw brightness, contrast, gamma and noise level, in that order.
    ///
    /// # Panics
    /// If `params` fails [`IntensityParams::validate`].
    pub fn sample(params: &IntensityParams, rng: &mut Rng) -> Self {
        if let Err(e) = params.validate() {
            panic!("{e}");
        }
        let symmetric = |rng: &mut Rng, bound: f32| rng.range(-(bound as f64), bound as f64) as f32;
        let brightness_shift = symmetric(rng, params.brightness);
        let contrast_factor = 1.0 + symmetric(rng, params.contrast);
        let log_gamma = symmetric(rng, (1.0 + params.gamma).ln());
        let noise_std = rng.range(0.0, params.noise_std as f64) as f32;
        IntensityDraw {
            brightness_shift,
            contrast_factor,
            gamma: log_gamma.exp(),
            noise_std,
        }
    }

    /// Apply to a normalised slice; `rng` supplies the noise (untouched when `noise_std` is 0).
    pub fn apply(&self, img: &[f32], rng: &mut Rng) -> Vec<f32> {
        let mean = if img.is_empty() {
            0.0
        } else {
            (img.iter().map(|&v| v as f64).sum::<f64>() / img.len() as f64) as f32
        };
        let c = self.contrast_factor;
        // Written as c * v + offset so that c = 1, b = 0 leaves v unchanged exactly.
        let offset = (1.0 - c) * mean + self.brightness_shift;
        let mut out: Vec<f32> = img
            .iter()
            .map(|&v| {
                let v = (c * v + offset).clamp(0.0, 1.0);
                if self.gamma == 1.0 { v } else { v.powf(self.gamma) }
            })
            .collect();
        if self.noise_std > 0.0 {
            add_gaussian_noise(&mut out, self.noise_std, rng);
            for v in out.iter_mut() {
                *v = v.clamp(0.0, 1.0);
            }
        }
        out
    }
}

/// Draw a jitter and apply it.
pub fn jitter(img: &[f32], params: &IntensityParams, rng: &mut Rng) -> Vec<f32> {
    IntensityDraw::sample(params, rng).apply(img, rng)
}

/// Add N(0, std^2) noise by Marsaglia's polar method: a point drawn uniformly in the unit disc
/// (its square radius `s` in (0, 1)) gives two independent normals `u, v * sqrt(-2 ln s / s)`.
/// Both are used, one per pixel. Exact like Box-Muller, without its sine and cosine: half the
/// time per image (docs/PERFORMANCE.md, host batch building).
fn add_gaussian_noise(values: &mut [f32], std: f32, rng: &mut Rng) {
    for pair in values.chunks_mut(2) {
        let (u, v, s) = loop {
            let u = 2.0 * rng.uniform() - 1.0;
            let v = 2.0 * rng.uniform() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                break (u, v, s);
            }
        };
        let scale = (-2.0 * s.ln() / s).sqrt();
        pair[0] += std * (u * scale) as f32;
        if let Some(second) = pair.get_mut(1) {
            *second += std * (v * scale) as f32;
        }
    }
}
