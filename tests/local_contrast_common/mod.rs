//! What the local-loss parity tests share, on the emulator (emu_local_contrast.rs) and on a GPU
//! (cuda_local_contrast.rs): the test problems, their seeded inputs, the error bounds, whose
//! derivation is in emu_local_contrast.rs's comment, and the check of a result against the CPU
//! twin's.

#![allow(dead_code)]

use lrc::device::cuda::local_contrast::{EmbeddingType, MAX_CHANNELS};
use lrc::device::cuda::pointwise::bf16_round;
use lrc::ops::local_contrast::{LocalLossConfig, RegionSamples};
use lrc::ops::normalize;
use lrc::rng::Rng;
use lrc::testing::{Tolerance, assert_close, max_abs, uniform, worst};

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

    /// The same problem (name, counts, seed) on an h x w plane.
    pub fn on_plane(self, h: usize, w: usize) -> Case {
        Case { h, w, ..self }
    }

    /// The loss configuration of this case's temperature with the two options.
    pub fn config(&self, renormalize_means: bool, normalize_pixels: bool) -> LocalLossConfig {
        LocalLossConfig {
            temperature: self.temperature,
            renormalize_means,
            normalize_pixels,
        }
    }

    /// The logit error bound e.
    pub fn logit_error(&self) -> f64 {
        let n = *self.samples.iter().max().unwrap_or(&0) as f64;
        (2.0 * self.d as f64 + 2.0 * n + 8.0) * U / self.temperature
    }

    pub fn max_regions(&self) -> f64 {
        *self.regions.iter().max().unwrap_or(&0) as f64
    }

    /// The tolerances of the loss (atol 2e + 2K u) and of the gradients (atol 8 (e + K u) times
    /// the largest reference gradient).
    pub fn tolerances(&self, largest_grad: f64) -> (Tolerance, Tolerance) {
        let (e, k) = (self.logit_error(), self.max_regions());
        (
            Tolerance {
                atol: 2.0 * e + 2.0 * k * U,
                rtol: 1e-6,
            },
            Tolerance {
                atol: 8.0 * (e + k * U) * largest_grad,
                rtol: 1e-5,
            },
        )
    }
}

/// Every combination of the two options, pixel normalisation outermost.
pub fn all_options(case: &Case) -> impl Iterator<Item = LocalLossConfig> + '_ {
    [false, true].into_iter().flat_map(move |normalize_pixels| {
        [false, true]
            .into_iter()
            .map(move |renormalize_means| case.config(renormalize_means, normalize_pixels))
    })
}

/// K = 6, 1, 0: an image without regions and one with a single region, with duplicate samples
/// within and across regions; 3 x 19 x 35 = 1995 values per map (odd).
pub fn small_mixed_case() -> Case {
    Case {
        name: "K = 6, 1, 0",
        d: 19,
        h: 5,
        w: 7,
        regions: vec![6, 1, 0],
        samples: vec![5, 3, 4],
        temperature: 0.3,
        seed: 1,
    }
}

/// 33 regions (two 32-wide chunks in the row kernels), 32 (exactly one) and none; 33 samples
/// (two 32-sample chunks in the means kernel); 45 channels (two per lane, the second partial).
pub fn chunk_boundary_case() -> Case {
    Case {
        name: "K = 33, 32, 0; N = 33, 2, 1; D = 45",
        d: 45,
        h: 6,
        w: 6,
        regions: vec![33, 32, 0],
        samples: vec![33, 2, 1],
        temperature: 0.1,
        seed: 2,
    }
}

/// The small GPU cases: [`small_mixed_case`] and [`chunk_boundary_case`].
pub fn small_cases() -> [Case; 2] {
    [small_mixed_case(), chunk_boundary_case()]
}

/// A batch of the sizes training uses: 4 images, one without regions and one with a single one.
pub fn training_sized_case() -> Case {
    Case {
        name: "B = 4, D = 64, K = 64, 1, 0, 40, N = 32, 48 x 40",
        d: 64,
        h: 48,
        w: 40,
        regions: vec![64, 1, 0, 40],
        samples: vec![32, 7, 3, 33],
        temperature: 0.07,
        seed: 3,
    }
}

/// K = 512 and D = 128 (the sizes the issue names) on a 64 x 64 plane.
pub fn limit_case() -> Case {
    Case {
        name: "K = 512, 300; D = 128",
        d: MAX_CHANNELS,
        h: 64,
        w: 64,
        regions: vec![512, 300],
        samples: vec![16, 5],
        temperature: 0.07,
        seed: 4,
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

/// The seeded inputs of a case: the samples of every image, then f_q and f_p, embeddings in
/// [-1, 1), or unit vectors per pixel (rounded to f32) when the loss does not normalise them
/// itself.
pub fn inputs(case: &Case, unit: bool) -> (Vec<RegionSamples>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(case.seed);
    let hw = case.h * case.w;
    let samples = case
        .regions
        .iter()
        .zip(&case.samples)
        .map(|(&k, &n)| draw(&mut rng, k, n, hw))
        .collect();
    let mut embeddings = || {
        let f = uniform(&mut rng, case.len(), -1.0, 1.0);
        if unit {
            normalize::cpu::forward(&f, case.d, hw, normalize::DEFAULT_EPS).0
        } else {
            f
        }
    };
    let fq = embeddings();
    let fp = embeddings();
    (samples, fq, fp)
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

/// What a check of `case` with `cfg` on embeddings of type `input` is called in its messages.
pub fn describe(case: &Case, input: EmbeddingType, cfg: LocalLossConfig) -> String {
    format!(
        "{} {} (normalize_pixels {}, renormalize_means {})",
        case.name,
        input.name(),
        cfg.normalize_pixels,
        cfg.renormalize_means
    )
}

/// Loss and gradients (q, p) computed in f32 by the kernels.
pub type Got = (f32, Vec<f32>, Vec<f32>);
/// Loss and gradients (q, p) of the CPU twin in f64.
pub type Want = (f64, Vec<f64>, Vec<f64>);

/// Checks the kernels' loss and gradients against the CPU twin's with the case's tolerances,
/// and that every pixel no sample hits has a gradient of exactly 0; returns the worst ratios to
/// tolerance (loss, gradients).
pub fn assert_matches(what: &str, case: &Case, samples: &[RegionSamples], got: &Got, want: &Want) -> (f64, f64) {
    let ((got_loss, got_q, got_p), (want_loss, want_q, want_p)) = (got, want);
    let largest = want_q.iter().chain(want_p).fold(0.0f64, |m, x| m.max(x.abs()));
    let (loss_tol, grad_tol) = case.tolerances(largest);
    assert_close(&format!("{what}: loss"), &[*got_loss], &[*want_loss], loss_tol);
    for (view, got, want) in [("q", got_q, want_q), ("p", got_p, want_p)] {
        assert_close(&format!("{what}: grad_{view}"), got, want, grad_tol);
        let mask = sampled_mask(case, samples, view == "q");
        for (i, (&g, &m)) in got.iter().zip(&mask).enumerate() {
            assert!(
                m || g == 0.0,
                "{what}: grad_{view}[{i}] = {g} at a pixel no sample hits"
            );
        }
    }
    let ratios = (
        worst(&[*got_loss], &[*want_loss], loss_tol).ratio,
        worst(got_q, want_q, grad_tol)
            .ratio
            .max(worst(got_p, want_p, grad_tol).ratio),
    );
    println!(
        "{what}: loss {got_loss} (want {want_loss:.7}), worst ratio to tolerance: loss {:.1e}, gradients {:.1e} (largest |grad| {largest:.3e}, max |got| {:.3e})",
        ratios.0,
        ratios.1,
        max_abs(got_q).max(max_abs(got_p))
    );
    ratios
}

/// The values a BF16 map holds, widened back to FP32.
pub fn rounded(f: &[f32]) -> Vec<f32> {
    f.iter().map(|&x| bf16_round(x)).collect()
}

/// The values the kernels of `input` load from `f` (FP32 as they are, BF16 rounded): the
/// inputs of the CPU twin.
pub fn as_loaded(input: EmbeddingType, f: &[f32]) -> Vec<f32> {
    match input {
        EmbeddingType::F32 => f.to_vec(),
        EmbeddingType::Bf16 => rounded(f),
    }
}
