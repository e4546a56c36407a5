//! What the local-loss parity tests share, on the emulator (emu_local_contrast.rs) and on a GPU
//! (cuda_local_contrast.rs): the test problems, their seeded samples and the error bound of the
//! logits, whose derivation is in emu_local_contrast.rs's comment.

#![allow(dead_code)]

use lrc::ops::local_contrast::RegionSamples;
use lrc::rng::Rng;

/// The unit roundoff of f32.
pub const U: f64 = 1.0 / (1u64 << 24) as f64;

/// One test problem: `regions[i]` regions of `samples[i]` samples in image i.
pub struct Case {
    pub name: &'static str,
    pub d: usize,
    pub h: usize,
    pub w: usize,
    pub regions: Vec<usize>,
    pub samples: Vec<usize>,
    pub temperature: f64,
    pub seed: u64,
}

impl Case {
    pub fn dims(&self) -> [usize; 4] {
        [self.regions.len(), self.d, self.h, self.w]
    }

    pub fn len(&self) -> usize {
        self.regions.len() * self.d * self.h * self.w
    }

    /// The logit error bound e.
    pub fn logit_error(&self) -> f64 {
        let n = *self.samples.iter().max().unwrap_or(&0) as f64;
        (2.0 * self.d as f64 + 2.0 * n + 8.0) * U / self.temperature
    }

    pub fn max_regions(&self) -> f64 {
        *self.regions.iter().max().unwrap_or(&0) as f64
    }
}

/// Random samples of one image with duplicates inside a region and across regions.
pub fn draw(rng: &mut Rng, k: usize, n: usize, hw: usize) -> RegionSamples {
    let mut view = || {
        let mut idx: Vec<u32> = (0..k * n).map(|_| rng.below(hw as u64) as u32).collect();
        if k > 0 && n > 1 {
            idx[1] = idx[0];
        }
        if k > 1 {
            idx[n] = idx[0];
        }
        idx
    };
    let (q, p) = (view(), view());
    RegionSamples {
        labels: (1..=k as u32).collect(),
        n,
        q,
        p,
    }
}

/// Which elements of an embedding map (q view or p view) some sample reads.
pub fn sampled_mask(case: &Case, samples: &[RegionSamples], q_view: bool) -> Vec<bool> {
    let hw = case.h * case.w;
    let mut mask = vec![false; case.len()];
    for (img, s) in samples.iter().enumerate() {
        for &px in if q_view { &s.q } else { &s.p } {
            for e in 0..case.d {
                mask[(img * case.d + e) * hw + px as usize] = true;
            }
        }
    }
    mask
}
