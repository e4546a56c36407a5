//! HU clipping and normalisation, foreground statistics for the nnU-Net-style z-score, and a
//! plausibility check that an image holds CT intensities at all.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// Voxels above this HU count as body when no labels say where the foreground is.
pub const BODY_THRESHOLD_HU: f32 = -500.0;

/// Foreground voxels sampled per case when fitting the z-score statistics (as nnU-Net does).
pub const SAMPLES_PER_CASE: usize = 10_000;

/// How intensities are mapped before they are stored and fed to a network.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Normalization {
    /// Clip to [lo, hi] HU and map linearly to [0, 1].
    Ct { lo: f32, hi: f32 },
    /// nnU-Net's CT normalisation: clip to [lo, hi] (the 0.5 and 99.5 percentiles of the
    /// dataset's foreground), then subtract `mean` and divide by `std` (foreground statistics).
    ZScore { lo: f32, hi: f32, mean: f32, std: f32 },
}

impl Default for Normalization {
    /// Clip to [-1000, 1000] HU, map to [0, 1].
    fn default() -> Self {
        Normalization::Ct {
            lo: -1000.0,
            hi: 1000.0,
        }
    }
}

impl Normalization {
    /// The normalised value of one HU value.
    pub fn value(&self, hu: f32) -> f32 {
        match *self {
            Normalization::Ct { lo, hi } => (hu.clamp(lo, hi) - lo) / (hi - lo),
            Normalization::ZScore { lo, hi, mean, std } => (hu.clamp(lo, hi) - mean) / std.max(1e-8),
        }
    }

    /// Normalises in place.
    pub fn apply(&self, data: &mut [f32]) {
        match *self {
            Normalization::Ct { lo, hi } => {
                let inv = 1.0 / (hi - lo);
                for v in data {
                    *v = (v.clamp(lo, hi) - lo) * inv;
                }
            }
            Normalization::ZScore { lo, hi, mean, std } => {
                let inv = 1.0 / std.max(1e-8);
                for v in data {
                    *v = (v.clamp(lo, hi) - mean) * inv;
                }
            }
        }
    }

    /// The HU value a normalised value came from (within the clipping range).
    pub fn hu(&self, v: f32) -> f32 {
        match *self {
            Normalization::Ct { lo, hi } => lo + v * (hi - lo),
            Normalization::ZScore { mean, std, .. } => mean + v * std.max(1e-8),
        }
    }

    /// The normalised value of air (-1000 HU), used to pad slices.
    pub fn air(&self) -> f32 {
        self.value(-1000.0)
    }

    /// Checks the parameters (finite, lo < hi, std > 0).
    pub fn validate(&self) -> Result<(), String> {
        let (lo, hi, extra) = match *self {
            Normalization::Ct { lo, hi } => (lo, hi, true),
            Normalization::ZScore { lo, hi, mean, std } => (lo, hi, mean.is_finite() && std.is_finite() && std > 0.0),
        };
        if !(lo.is_finite() && hi.is_finite() && lo < hi && extra) {
            return Err(format!(
                "invalid normalisation {self:?}: needs finite lo < hi and std > 0"
            ));
        }
        Ok(())
    }
}

/// Checks that intensities look like CT in Hounsfield units: some voxels at or below -500 HU
/// (air around the body, in the lungs or bowel, or the scanner's padding value) and fewer
/// than 1% above 4000 HU. An MR image, or a CT whose rescale was never applied (air near 0),
/// fails with a message saying so.
pub fn check_ct(data: &[f32]) -> Result<(), String> {
    if data.is_empty() {
        return Err("empty volume".into());
    }
    let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
    let mut high = 0usize;
    for &v in data {
        min = min.min(v);
        max = max.max(v);
        high += (v > 4000.0) as usize;
    }
    if min > BODY_THRESHOLD_HU {
        return Err(format!(
            "intensities do not look like CT in Hounsfield units: the minimum is {min} (max {max}), \
             but CT has air at about -1000 HU; is this an MR image, or a CT stored without its \
             rescale slope/intercept? (lrc prep --allow-non-ct skips this check)"
        ));
    }
    if high * 100 > data.len() {
        return Err(format!(
            "intensities do not look like CT in Hounsfield units: {:.1}% of voxels are above 4000 \
             (max {max}); (lrc prep --allow-non-ct skips this check)",
            100.0 * high as f64 / data.len() as f64
        ));
    }
    Ok(())
}

/// Up to `n` foreground intensities drawn uniformly (with replacement) from one volume:
/// voxels with a nonzero label when labels are given, else voxels above
/// [`BODY_THRESHOLD_HU`].
pub fn sample_foreground(data: &[f32], labels: Option<&[u8]>, n: usize, rng: &mut Rng) -> Vec<f32> {
    let fg: Vec<u32> = match labels {
        Some(l) => (0..data.len() as u32).filter(|&i| l[i as usize] != 0).collect(),
        None => (0..data.len() as u32)
            .filter(|&i| data[i as usize] > BODY_THRESHOLD_HU)
            .collect(),
    };
    if fg.is_empty() {
        return Vec::new();
    }
    (0..n)
        .map(|_| data[fg[rng.below(fg.len() as u64) as usize] as usize])
        .collect()
}

/// nnU-Net's CT normalisation from pooled foreground samples: clip bounds at the 0.5 and 99.5
/// percentiles, mean and standard deviation of the (unclipped) samples.
pub fn fit_zscore(samples: &mut [f32]) -> Result<Normalization, String> {
    if samples.is_empty() {
        return Err("no foreground voxels to fit the z-score normalisation on".into());
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        // Linear interpolation between order statistics, as numpy's default percentile.
        let pos = p / 100.0 * (samples.len() - 1) as f64;
        let i = pos.floor() as usize;
        let j = (i + 1).min(samples.len() - 1);
        let w = (pos - i as f64) as f32;
        samples[i] + w * (samples[j] - samples[i])
    };
    let (lo, hi) = (pct(0.5), pct(99.5));
    let n = samples.len() as f64;
    let mean = samples.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = samples.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let norm = Normalization::ZScore {
        lo,
        hi: if hi > lo { hi } else { lo + 1.0 },
        mean: mean as f32,
        std: (var.sqrt() as f32).max(1e-3),
    };
    norm.validate()?;
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_window_maps_to_unit_interval() {
        let n = Normalization::default();
        let mut v = vec![-3000.0, -1000.0, 0.0, 1000.0, 2500.0];
        n.apply(&mut v);
        assert_eq!(v, vec![0.0, 0.0, 0.5, 1.0, 1.0]);
        assert_eq!(n.air(), 0.0);
        assert_eq!(n.hu(0.5), 0.0);
    }

    #[test]
    fn zscore_fit_matches_definition() {
        let mut s: Vec<f32> = (0..1001).map(|i| i as f32).collect();
        let Normalization::ZScore { lo, hi, mean, std } = fit_zscore(&mut s).unwrap() else {
            panic!("not a z-score")
        };
        assert_eq!(lo, 5.0);
        assert_eq!(hi, 995.0);
        assert_eq!(mean, 500.0);
        // Population std of 0..=1000 is sqrt((1001^2 - 1) / 12) = 288.964.
        assert!((std - 288.964).abs() < 1e-3, "{std}");
    }

    #[test]
    fn mr_like_intensities_are_rejected() {
        let mr: Vec<f32> = (0..1000).map(|i| (i % 800) as f32).collect();
        let e = check_ct(&mr).unwrap_err();
        assert!(e.contains("do not look like CT"), "{e}");
        let ct: Vec<f32> = (0..1000).map(|i| i as f32 * 2.0 - 1024.0).collect();
        check_ct(&ct).unwrap();
    }
}
