//! Gaussian smoothing that reproduces `scipy.ndimage.gaussian_filter(img, sigma, mode="reflect",
//! truncate=4.0)` on a 2-D float64 image bit for bit: the same kernel (computed with numpy's
//! summation order), the same boundary extension and the same order of floating-point operations.

/// The normalised 1-D kernel of scipy's `_gaussian_kernel1d(sigma, 0, radius)` with
/// `radius = int(4 * sigma + 0.5)`; `2 * radius + 1` taps.
///
/// The taps are `exp(-0.5 / sigma^2 * x^2)` divided by their sum, the sum taken in numpy's
/// pairwise order. `exp` is the C library's, which is what numpy uses on CPUs without AVX-512.
pub fn gaussian_kernel(sigma: f64) -> Vec<f64> {
    let radius = kernel_radius(sigma) as i64;
    let c = -0.5 / (sigma * sigma);
    let phi: Vec<f64> = (-radius..=radius).map(|x| (c * (x * x) as f64).exp()).collect();
    let total = numpy_pairwise_sum(&phi);
    phi.iter().map(|p| p / total).collect()
}

/// scipy's kernel radius for truncate = 4: `int(4 * sigma + 0.5)`.
pub fn kernel_radius(sigma: f64) -> usize {
    (4.0 * sigma + 0.5) as usize
}

/// numpy's pairwise summation of float64 (`np.add.reduce` on a contiguous array): plain loop
/// below 8 elements, 8 interleaved accumulators up to 128, halving recursion above.
fn numpy_pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &v in a {
            res += v;
        }
        res
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        numpy_pairwise_sum(&a[..n2]) + numpy_pairwise_sum(&a[n2..])
    }
}

/// Index `i` (possibly outside `0..n`) under scipy's "reflect" extension
/// (`d c b a | a b c d | d c b a`), repeated as often as needed.
#[inline]
fn reflect_index(i: isize, n: usize) -> usize {
    let period = 2 * n as isize;
    let m = i.rem_euclid(period) as usize;
    if m < n { m } else { 2 * n - 1 - m }
}

/// Smooth a row-major `h x w` image as `scipy.ndimage.gaussian_filter(img, sigma,
/// mode="reflect")` does: along axis 0, then axis 1. A sigma of at most 1e-15 leaves the image
/// unchanged, as in scipy.
///
/// # Panics
/// If `img.len() != h * w` or `sigma` is negative or not finite.
pub fn gaussian_filter_reflect(img: &[f64], h: usize, w: usize, sigma: f64) -> Vec<f64> {
    let mut out = vec![0.0; img.len()];
    let mut tmp = Vec::new();
    let mut line = Vec::new();
    gaussian_filter_reflect_into(img, h, w, sigma, &mut out, &mut tmp, &mut line);
    out
}

/// As [`gaussian_filter_reflect`], writing into `out` and using `tmp`/`line` as scratch.
pub(crate) fn gaussian_filter_reflect_into(
    img: &[f64],
    h: usize,
    w: usize,
    sigma: f64,
    out: &mut [f64],
    tmp: &mut Vec<f64>,
    line: &mut Vec<f64>,
) {
    assert_eq!(img.len(), h * w, "image of {} pixels is not {h} x {w}", img.len());
    assert!(
        sigma.is_finite() && sigma >= 0.0,
        "sigma must be finite and >= 0, got {sigma}"
    );
    if sigma <= 1e-15 || img.is_empty() {
        out.copy_from_slice(img);
        return;
    }
    let kernel = gaussian_kernel(sigma);
    tmp.clear();
    tmp.resize(img.len(), 0.0);
    smooth_columns(img, h, w, &kernel, tmp);
    smooth_rows(tmp, h, w, &kernel, out, line);
}

/// Axis 0. Each output pixel is `x[i]*k[r]`, then `+= (x[i-j] + x[i+j]) * k[r-j]` for `j = r..1`,
/// the order of scipy's symmetric correlate1d; the loop over a row keeps it and vectorises.
fn smooth_columns(img: &[f64], h: usize, w: usize, kernel: &[f64], out: &mut [f64]) {
    let r = kernel.len() / 2;
    for y in 0..h {
        let dst = &mut out[y * w..(y + 1) * w];
        let centre = &img[y * w..(y + 1) * w];
        for (d, &c) in dst.iter_mut().zip(centre) {
            *d = c * kernel[r];
        }
        for j in (1..=r).rev() {
            let up = reflect_index(y as isize - j as isize, h);
            let down = reflect_index(y as isize + j as isize, h);
            let a = &img[up * w..(up + 1) * w];
            let b = &img[down * w..(down + 1) * w];
            let k = kernel[r - j];
            for ((d, &p), &q) in dst.iter_mut().zip(a).zip(b) {
                *d += (p + q) * k;
            }
        }
    }
}

/// Axis 1, the same operation order along each row, through a reflect-padded copy of the row.
fn smooth_rows(img: &[f64], h: usize, w: usize, kernel: &[f64], out: &mut [f64], line: &mut Vec<f64>) {
    let r = kernel.len() / 2;
    line.clear();
    line.resize(w + 2 * r, 0.0);
    let padded_index: Vec<usize> = (0..w + 2 * r)
        .map(|i| reflect_index(i as isize - r as isize, w))
        .collect();
    for y in 0..h {
        let src = &img[y * w..(y + 1) * w];
        for (v, &i) in line.iter_mut().zip(&padded_index) {
            *v = src[i];
        }
        let dst = &mut out[y * w..(y + 1) * w];
        for (d, &c) in dst.iter_mut().zip(&line[r..r + w]) {
            *d = c * kernel[r];
        }
        for j in (1..=r).rev() {
            let k = kernel[r - j];
            let left = &line[r - j..r - j + w];
            let right = &line[r + j..r + j + w];
            for ((d, &p), &q) in dst.iter_mut().zip(left).zip(right) {
                *d += (p + q) * k;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_index_matches_scipy_reflect() {
        // scipy reflect of [a b c], period 6: ... a b c c b a | a b c | c b a a b c ...
        let n = 3;
        let got: Vec<usize> = (-7..10).map(|i| reflect_index(i, n)).collect();
        assert_eq!(got, vec![0, 0, 1, 2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0, 1, 2, 2]);
        assert!((-5..5).all(|i| reflect_index(i, 1) == 0));
    }

    #[test]
    fn kernel_is_normalised_and_symmetric() {
        for sigma in [0.3, 0.8, 2.0, 40.0] {
            let k = gaussian_kernel(sigma);
            assert_eq!(k.len(), 2 * kernel_radius(sigma) + 1);
            let r = k.len() / 2;
            assert!((0..r).all(|j| k[j] == k[k.len() - 1 - j]));
            // A sum of at most a few hundred taps each rounded once: well within 1e-12.
            assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = vec![0.25; 7 * 5];
        let out = gaussian_filter_reflect(&img, 7, 5, 1.7);
        // Reflect extension keeps a constant; only rounding of the kernel sum can move it.
        assert!(out.iter().all(|v| (v - 0.25).abs() < 1e-15));
    }
}
