//! Elastic deformation (Simard, Steinkraus and Platt, 2003): a random displacement field, uniform
//! in [-1, 1] per pixel and component, smoothed by a Gaussian of standard deviation `sigma` and
//! scaled by `alpha` (both in pixels). The same field warps the image (bilinear) and its region
//! map (nearest neighbour), so that region `k` of the warped map covers the warped region `k`.
//!
//! The field maps backwards: output pixel (y, x) samples the input at (y + dy, x + dx).
//! Samples outside the image take the nearest edge pixel for the image (no artificial black
//! border that would read as an edge) and region 0 for the labels (nothing is sampled from
//! content that the deformation invented).

use rayon::prelude::*;

use crate::rng::Rng;

/// Strength and smoothness of the deformation, in pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ElasticParams {
    /// Scale of the smoothed field. The displacement of a pixel has a standard deviation of
    /// about `alpha / (2 * sqrt(3 * pi) * sigma)` pixels per axis (white noise of variance 1/3
    /// through a normalised 2-D Gaussian).
    pub alpha: f32,
    /// Standard deviation of the Gaussian smoothing the field; larger is smoother.
    pub sigma: f32,
}

impl Default for ElasticParams {
    /// A mild deformation for 1 mm slices: displacements of about 4 px (4 mm) standard
    /// deviation, varying over a few centimetres.
    fn default() -> Self {
        ElasticParams {
            alpha: 300.0,
            sigma: 12.0,
        }
    }
}

impl ElasticParams {
    /// Check that alpha and sigma are finite and non-negative, sigma at most
    /// [`MAX_SIGMA`](crate::superpixel::felzenszwalb::MAX_SIGMA) pixels (its kernel reaches 4
    /// sigma).
    pub fn validate(&self) -> crate::Result<()> {
        use crate::superpixel::felzenszwalb::MAX_SIGMA;
        if !(self.alpha.is_finite() && self.alpha >= 0.0 && self.sigma.is_finite() && self.sigma >= 0.0) {
            return Err(crate::Error::config(format!(
                "elastic alpha and sigma must be finite and >= 0, got {} and {}",
                self.alpha, self.sigma
            )));
        }
        if f64::from(self.sigma) > MAX_SIGMA {
            return Err(crate::Error::config(format!(
                "elastic sigma must be at most {MAX_SIGMA} pixels (the smoothing reaches 4 sigma), got {}",
                self.sigma
            )));
        }
        Ok(())
    }
}

/// A backward displacement field: output pixel `p = y * w + x` samples the input at
/// `(y + dy[p], x + dx[p])`.
#[derive(Clone, Debug, PartialEq)]
pub struct DisplacementField {
    pub h: usize,
    pub w: usize,
    pub dy: Vec<f32>,
    pub dx: Vec<f32>,
}

impl DisplacementField {
    /// The identity.
    pub fn zeros(h: usize, w: usize) -> Self {
        Self::constant(h, w, 0.0, 0.0)
    }

    /// The same displacement everywhere: a translation of the content by `(-dy, -dx)`.
    pub fn constant(h: usize, w: usize, dy: f32, dx: f32) -> Self {
        DisplacementField {
            h,
            w,
            dy: vec![dy; h * w],
            dx: vec![dx; h * w],
        }
    }

    fn check(&self, h: usize, w: usize, len: usize) {
        assert!(
            self.h == h && self.w == w,
            "field is {} x {}, image {h} x {w}",
            self.h,
            self.w
        );
        assert!(
            self.dy.len() == h * w && self.dx.len() == h * w,
            "field buffers do not hold {h} x {w}"
        );
        assert_eq!(len, h * w, "image of {len} values is not {h} x {w}");
    }
}

/// A random field for an `h x w` image, deterministic from `rng`: all `dy` noise is drawn
/// first, then all `dx` noise.
///
/// # Panics
/// If `params` fails [`ElasticParams::validate`].
pub fn random_field(h: usize, w: usize, params: &ElasticParams, rng: &mut Rng) -> DisplacementField {
    if let Err(e) = params.validate() {
        panic!("{e}");
    }
    let (mut dy, mut dx) = field_noise(h, w, rng);
    let kernel = gaussian_kernel_f32(params.sigma);
    rayon::join(
        || smooth_and_scale(&mut dy, h, w, &kernel, params.alpha),
        || smooth_and_scale(&mut dx, h, w, &kernel, params.alpha),
    );
    DisplacementField { h, w, dy, dx }
}

/// The raw noise of a field, uniform in [-1, 1): all `dy` values, then all `dx` values, drawn
/// in that order from `rng` (the GPU version draws the same on the host).
pub(crate) fn field_noise(h: usize, w: usize, rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
    let mut noise = || -> Vec<f32> { (0..h * w).map(|_| rng.range(-1.0, 1.0) as f32).collect() };
    let dy = noise();
    (dy, noise())
}

/// Warp an image with bilinear interpolation; outside samples take the nearest edge pixel.
///
/// # Panics
/// If the field and the image differ in size.
pub fn warp_bilinear(img: &[f32], h: usize, w: usize, field: &DisplacementField) -> Vec<f32> {
    field.check(h, w, img.len());
    let mut out = vec![0.0f32; img.len()];
    if img.is_empty() {
        return out;
    }
    let (ymax, xmax) = ((h - 1) as f32, (w - 1) as f32);
    out.par_chunks_mut(w).enumerate().with_min_len(16).for_each(|(y, row)| {
        for (x, o) in row.iter_mut().enumerate() {
            let p = y * w + x;
            let sy = (y as f32 + field.dy[p]).clamp(0.0, ymax);
            let sx = (x as f32 + field.dx[p]).clamp(0.0, xmax);
            // Truncation is floor for these non-negative values, and cheaper than floor().
            let (y0, x0) = (sy as usize, sx as usize);
            let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
            let (fy, fx) = (sy - y0 as f32, sx - x0 as f32);
            let top = (1.0 - fx) * img[y0 * w + x0] + fx * img[y0 * w + x1];
            let bottom = (1.0 - fx) * img[y1 * w + x0] + fx * img[y1 * w + x1];
            *o = (1.0 - fy) * top + fy * bottom;
        }
    });
    out
}

/// Warp a region map by nearest neighbour (rounding half up); outside samples get region 0.
///
/// # Panics
/// If the field and the map differ in size.
pub fn warp_nearest(labels: &[u16], h: usize, w: usize, field: &DisplacementField) -> Vec<u16> {
    field.check(h, w, labels.len());
    let mut out = vec![0u16; labels.len()];
    if labels.is_empty() {
        return out;
    }
    out.par_chunks_mut(w).enumerate().with_min_len(16).for_each(|(y, row)| {
        for (x, o) in row.iter_mut().enumerate() {
            let p = y * w + x;
            let sy = y as f32 + field.dy[p] + 0.5;
            let sx = x as f32 + field.dx[p] + 0.5;
            // Inside iff 0 <= floor(s) < n; for s >= 0 truncation is floor.
            if sy >= 0.0 && sx >= 0.0 && sy < h as f32 && sx < w as f32 {
                *o = labels[sy as usize * w + sx as usize];
            }
        }
    });
    out
}

/// The taps that smooth a field: a normalised Gaussian of radius `int(4 * sigma + 0.5)` (summed
/// in f64, narrowed to f32); `[1.0]` for sigma 0.
pub fn gaussian_kernel_f32(sigma: f32) -> Vec<f32> {
    if sigma <= 0.0 {
        return vec![1.0];
    }
    let r = (4.0 * sigma + 0.5) as i64;
    let c = -0.5 / (sigma as f64 * sigma as f64);
    let taps: Vec<f64> = (-r..=r).map(|x| (c * (x * x) as f64).exp()).collect();
    let total: f64 = taps.iter().sum();
    taps.iter().map(|t| (t / total) as f32).collect()
}

/// Separable smoothing with reflect boundaries (`d c b a | a b c d`), then scaling by `alpha`.
fn smooth_and_scale(values: &mut [f32], h: usize, w: usize, kernel: &[f32], alpha: f32) {
    if values.is_empty() {
        return;
    }
    let r = kernel.len() / 2;
    // Columns: each output row is a weighted sum of whole input rows, reflected at the borders
    // through a table (a reflection costs a division, which each row would pay per tap and
    // block).
    let mut tmp = vec![0.0f32; values.len()];
    let padded_row: Vec<usize> = (0..h + 2 * r).map(|i| reflect(i as isize - r as isize, h)).collect();
    for y in 0..h {
        let row = |yy: usize| &values[yy * w..(yy + 1) * w];
        symmetric_taps(&mut tmp[y * w..(y + 1) * w], kernel, row(y), |j| {
            (row(padded_row[y + r - j]), row(padded_row[y + r + j]))
        });
    }
    // Rows: through a reflect-padded copy of each row.
    let padded_index: Vec<usize> = (0..w + 2 * r).map(|i| reflect(i as isize - r as isize, w)).collect();
    let mut line = vec![0.0f32; w + 2 * r];
    for y in 0..h {
        let src = &tmp[y * w..(y + 1) * w];
        for (v, &i) in line.iter_mut().zip(&padded_index) {
            *v = src[i];
        }
        let dst = &mut values[y * w..(y + 1) * w];
        symmetric_taps(dst, kernel, &line[r..r + w], |j| {
            (&line[r - j..r - j + w], &line[r + j..r + j + w])
        });
        for d in dst.iter_mut() {
            *d *= alpha;
        }
    }
}

/// `dst = k[r] * centre + sum_j k[r-j] * (before(j) + after(j))` for `j = 1..=r`, where
/// `before(j)` and `after(j)` are the inputs `j` taps away on either side, as slices aligned
/// with `dst`. Works on blocks of `BLOCK` outputs held in registers across all taps, so that
/// `dst` is written once rather than once per tap.
fn symmetric_taps<'a>(
    dst: &mut [f32],
    kernel: &[f32],
    centre: &[f32],
    sides: impl Fn(usize) -> (&'a [f32], &'a [f32]),
) {
    const BLOCK: usize = 32;
    let r = kernel.len() / 2;
    let n = dst.len();
    let mut x0 = 0;
    while x0 + BLOCK <= n {
        let mut acc = [0.0f32; BLOCK];
        for (a, &c) in acc.iter_mut().zip(&centre[x0..x0 + BLOCK]) {
            *a = kernel[r] * c;
        }
        for j in 1..=r {
            let (before, after) = sides(j);
            let (before, after) = (&before[x0..x0 + BLOCK], &after[x0..x0 + BLOCK]);
            let k = kernel[r - j];
            for i in 0..BLOCK {
                acc[i] += k * (before[i] + after[i]);
            }
        }
        dst[x0..x0 + BLOCK].copy_from_slice(&acc);
        x0 += BLOCK;
    }
    for x in x0..n {
        let mut acc = kernel[r] * centre[x];
        for j in 1..=r {
            let (before, after) = sides(j);
            acc += kernel[r - j] * (before[x] + after[x]);
        }
        dst[x] = acc;
    }
}

#[inline]
fn reflect(i: isize, n: usize) -> usize {
    let period = 2 * n as isize;
    let m = i.rem_euclid(period) as usize;
    if m < n { m } else { 2 * n - 1 - m }
}
