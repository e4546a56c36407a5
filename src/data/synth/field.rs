//! Smooth random fields (lattice value noise) evaluated slice by slice, and CT-like noise.

use crate::rng::Rng;

/// C1-smooth interpolation weight.
fn smooth(t: f64) -> f64 {
    t * t * (3.0 - 2.0 * t)
}

/// Value noise on a regular lattice of random values in [-1, 1] over a box in mm,
/// interpolated with smoothstep weights.
pub struct ValueNoise {
    values: Vec<f32>,
    n: [usize; 3], // lattice points along x, y, z
    origin: [f64; 3],
    cell: f64,
}

impl ValueNoise {
    /// A field with lattice spacing `cell` mm covering `lo..hi` (x, y, z mm).
    pub fn new(rng: &mut Rng, lo: [f64; 3], hi: [f64; 3], cell: f64) -> ValueNoise {
        let n = [0, 1, 2].map(|a| ((hi[a] - lo[a]) / cell).ceil().max(0.0) as usize + 3);
        let values = (0..n[0] * n[1] * n[2]).map(|_| rng.range(-1.0, 1.0) as f32).collect();
        ValueNoise {
            values,
            n,
            origin: [lo[0] - cell, lo[1] - cell, lo[2] - cell],
            cell,
        }
    }

    /// Lattice index and weight of coordinate `v` along `axis`.
    fn tap(&self, axis: usize, v: f64) -> (usize, f32) {
        let t = ((v - self.origin[axis]) / self.cell).clamp(0.0, (self.n[axis] - 2) as f64);
        let i = (t.floor() as usize).min(self.n[axis] - 2);
        (i, smooth(t - i as f64) as f32)
    }

    /// The field on the pixel grid `xs` x `ys` at height `z`, row-major (y, x), into `out`.
    pub fn slice_into(&self, xs: &[f64], ys: &[f64], z: f64, out: &mut [f32]) {
        let (iz, wz) = self.tap(2, z);
        let [nx, ny, _] = self.n;
        // The z blend first: one 2-D lattice plane per slice.
        let plane: Vec<f32> = (0..nx * ny)
            .map(|p| {
                let a = self.values[iz * nx * ny + p];
                let b = self.values[(iz + 1) * nx * ny + p];
                a + wz * (b - a)
            })
            .collect();
        let tx: Vec<(usize, f32)> = xs.iter().map(|&x| self.tap(0, x)).collect();
        for (row, &y) in ys.iter().enumerate() {
            let (iy, wy) = self.tap(1, y);
            let r0 = &plane[iy * nx..(iy + 1) * nx];
            let r1 = &plane[(iy + 1) * nx..(iy + 2) * nx];
            let dst = &mut out[row * xs.len()..(row + 1) * xs.len()];
            for (d, &(ix, wx)) in dst.iter_mut().zip(&tx) {
                let a = r0[ix] + wx * (r0[ix + 1] - r0[ix]);
                let b = r1[ix] + wx * (r1[ix + 1] - r1[ix]);
                *d = a + wy * (b - a);
            }
        }
    }

    /// The field at one point.
    pub fn at(&self, p: [f64; 3]) -> f32 {
        let (ix, wx) = self.tap(0, p[0]);
        let (iy, wy) = self.tap(1, p[1]);
        let (iz, wz) = self.tap(2, p[2]);
        let [nx, ny, _] = self.n;
        let v = |x: usize, y: usize, z: usize| self.values[(z * ny + y) * nx + x];
        let lerp = |a: f32, b: f32, w: f32| a + w * (b - a);
        let c00 = lerp(v(ix, iy, iz), v(ix + 1, iy, iz), wx);
        let c10 = lerp(v(ix, iy + 1, iz), v(ix + 1, iy + 1, iz), wx);
        let c01 = lerp(v(ix, iy, iz + 1), v(ix + 1, iy, iz + 1), wx);
        let c11 = lerp(v(ix, iy + 1, iz + 1), v(ix + 1, iy + 1, iz + 1), wx);
        lerp(lerp(c00, c10, wy), lerp(c01, c11, wy), wz)
    }
}

/// Adds spatially correlated Gaussian-like noise of standard deviation `sigma` to a slice:
/// white noise (sum of four uniforms) smoothed by a [1 2 1] kernel in x and y, which gives the
/// fine grain of filtered-back-projection CT noise.
pub fn add_ct_noise(rng: &mut Rng, slice: &mut [f32], h: usize, w: usize, sigma: f32) {
    // Four 16-bit uniforms per draw: mean 2, variance 4/12. The [1 2 1]/4 kernel in x and y
    // scales the standard deviation by 6/16 = 0.375.
    let scale = sigma / 0.375 * (3.0f32).sqrt() / 65536.0;
    let mut white = vec![0f32; h * w];
    for v in &mut white {
        let r = rng.next_u64();
        let s = (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
        *v = (s as f32 - 2.0 * 65535.0) * scale;
    }
    let mut tmp = vec![0f32; h * w];
    for y in 0..h {
        let row = &white[y * w..(y + 1) * w];
        for x in 0..w {
            let l = row[x.saturating_sub(1)];
            let r = row[(x + 1).min(w - 1)];
            tmp[y * w + x] = 0.25 * l + 0.5 * row[x] + 0.25 * r;
        }
    }
    for y in 0..h {
        let up = y.saturating_sub(1) * w;
        let dn = (y + 1).min(h - 1) * w;
        for x in 0..w {
            slice[y * w + x] += 0.25 * tmp[up + x] + 0.5 * tmp[y * w + x] + 0.25 * tmp[dn + x];
        }
    }
}

/// Smooths a (z, y, x) volume in place with the separable kernel [1 2 1] / 4 along the axes
/// whose flag is set (edges replicate): the point spread of reconstruction and slice profile.
pub fn blur121(data: &mut [f32], dims: [usize; 3], axes: [bool; 3]) {
    let [nz, ny, nx] = dims;
    // Along an axis of stride `s` and length `n`: out[i] = (src[i-s] + 2 src[i] + src[i+s]) / 4.
    for (axis, &on) in axes.iter().enumerate() {
        let (n, s) = [(nz, ny * nx), (ny, nx), (nx, 1)][axis];
        if !on || n < 2 {
            continue;
        }
        let src = data.to_vec();
        let block = n * s; // one block holds every line along this axis through it
        for (dst, src) in data.chunks_exact_mut(block).zip(src.chunks_exact(block)) {
            for i in 0..n {
                let (lo, hi) = (i.saturating_sub(1), (i + 1).min(n - 1));
                let (a, b, c) = (
                    &src[lo * s..lo * s + s],
                    &src[i * s..i * s + s],
                    &src[hi * s..hi * s + s],
                );
                for (((d, &a), &b), &c) in dst[i * s..i * s + s].iter_mut().zip(a).zip(b).zip(c) {
                    *d = 0.25 * a + 0.5 * b + 0.25 * c;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_noise_has_the_requested_sigma() {
        let mut rng = Rng::new(11);
        let (h, w) = (200, 200);
        let mut s = vec![0f32; h * w];
        add_ct_noise(&mut rng, &mut s, h, w, 15.0);
        let n = s.len() as f64;
        let mean = s.iter().map(|&v| v as f64).sum::<f64>() / n;
        let sd = (s.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        // 40000 samples correlated over ~7 px (1 / sum of squared kernel weights): about 5700
        // independent ones, so the mean has a standard error of ~0.2 HU and the sd ~1%.
        // Allow 5 standard errors.
        assert!((sd - 15.0).abs() < 1.0, "sd {sd}");
        assert!(mean.abs() < 1.0, "mean {mean}");
    }

    #[test]
    fn blur_keeps_constants_and_spreads_a_spike() {
        let dims = [3, 4, 5];
        let mut c = vec![7.0f32; 60];
        blur121(&mut c, dims, [true; 3]);
        assert!(c.iter().all(|&v| (v - 7.0).abs() < 1e-6));
        let mut s = vec![0.0f32; 60];
        s[(4 + 2) * 5 + 2] = 64.0; // (z, y, x) = (1, 2, 2)
        blur121(&mut s, dims, [true; 3]);
        assert_eq!(s[(4 + 2) * 5 + 2], 8.0); // 64 * (1/2)^3
        assert_eq!(s[(4 + 2) * 5 + 3], 4.0);
        assert_eq!(s[(8 + 2) * 5 + 2], 4.0);
        assert!((s.iter().sum::<f32>() - 64.0).abs() < 1e-4);
    }

    #[test]
    fn slice_evaluation_matches_point_evaluation() {
        let mut rng = Rng::new(2);
        let f = ValueNoise::new(&mut rng, [-50.0, -40.0, 0.0], [50.0, 40.0, 30.0], 7.0);
        let xs: Vec<f64> = (0..20).map(|i| -50.0 + i as f64 * 5.1).collect();
        let ys: Vec<f64> = (0..15).map(|i| -40.0 + i as f64 * 5.3).collect();
        let mut out = vec![0f32; 300];
        f.slice_into(&xs, &ys, 12.3, &mut out);
        for (r, &y) in ys.iter().enumerate() {
            for (c, &x) in xs.iter().enumerate() {
                assert!((out[r * 20 + c] - f.at([x, y, 12.3])).abs() < 1e-5);
            }
        }
    }
}
