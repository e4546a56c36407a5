//! Distance kernels of k-means. Each is written once, portably, and also compiled for AVX2,
//! chosen at run time; both builds do the same arithmetic in the same order, so results are
//! bit-identical on every x86-64 CPU.

/// Centres per block of the transposed layout (one AVX2 register of f32).
const LANES: usize = 8;

/// Centres stored as blocks of `LANES` centres, transposed within the block (`[block][dim][lane]`),
/// so that one row is compared with eight centres at once without horizontal sums. Missing
/// centres of the last block are at infinity and never win.
pub(super) struct CentroidBlocks {
    d: usize,
    data: Vec<f32>,
}

impl CentroidBlocks {
    pub(super) fn new(centroids: &[f32], d: usize) -> Self {
        let k = centroids.len() / d;
        let blocks = k.div_ceil(LANES);
        let mut data = vec![f32::INFINITY; blocks * d * LANES];
        for (j, c) in centroids.chunks_exact(d).enumerate() {
            let (b, lane) = (j / LANES, j % LANES);
            for (i, &v) in c.iter().enumerate() {
                data[(b * d + i) * LANES + lane] = v;
            }
        }
        CentroidBlocks { d, data }
    }
}

/// Squared Euclidean distance; eight independent accumulators let the compiler vectorise.
#[inline(always)]
fn sq_dist_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (a8.remainder(), b8.remainder());
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            let t = x[l] - y[l];
            acc[l] += t * t;
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ra.iter().zip(rb) {
        let t = x - y;
        tail += t * t;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Index and squared distance of the nearest and the second-nearest centre (lowest index on
/// ties).
#[inline(always)]
fn nearest_two_portable(x: &[f32], centres: &CentroidBlocks) -> (u32, f32, f32) {
    let d = centres.d;
    let (mut best, mut best_d, mut second_d) = (0u32, f32::INFINITY, f32::INFINITY);
    let (x4, x_rest) = x.as_chunks::<4>();
    for (b, block) in centres.data.chunks_exact(d * LANES).enumerate() {
        let (rows, _) = block.as_chunks::<LANES>();
        let (quads, rows_rest) = rows.as_chunks::<4>();
        // Dimensions i = 4m + u go to accumulator u: four independent dependency chains.
        let mut acc = [[0.0f32; LANES]; 4];
        for (xq, rq) in x4.iter().zip(quads) {
            for u in 0..4 {
                for l in 0..LANES {
                    let t = xq[u] - rq[u][l];
                    acc[u][l] += t * t;
                }
            }
        }
        for (&xi, row) in x_rest.iter().zip(rows_rest) {
            for l in 0..LANES {
                let t = xi - row[l];
                acc[0][l] += t * t;
            }
        }
        let dists: [f32; LANES] = std::array::from_fn(|l| (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]));
        for (l, &dist) in dists.iter().enumerate() {
            if dist < best_d {
                second_d = best_d;
                best_d = dist;
                best = (b * LANES + l) as u32;
            } else if dist < second_d {
                second_d = dist;
            }
        }
    }
    (best, best_d, second_d)
}

/// `nearest[i] = min(nearest[i], |row_i - c|^2)` over the rows of `rows`; returns the new sum.
#[inline(always)]
fn lower_to_portable(nearest: &mut [f32], rows: &[f32], c: &[f32]) -> f64 {
    let mut sum = 0.0f64;
    for (near, x) in nearest.iter_mut().zip(rows.chunks_exact(c.len())) {
        *near = near.min(sq_dist_portable(x, c));
        sum += *near as f64;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::CentroidBlocks;

    #[target_feature(enable = "avx2")]
    pub fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
        super::sq_dist_portable(a, b)
    }

    #[target_feature(enable = "avx2")]
    pub fn nearest_two(x: &[f32], centres: &CentroidBlocks) -> (u32, f32, f32) {
        super::nearest_two_portable(x, centres)
    }

    #[target_feature(enable = "avx2")]
    pub fn lower_to(nearest: &mut [f32], rows: &[f32], c: &[f32]) -> f64 {
        super::lower_to_portable(nearest, rows, c)
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2"))
}

/// Squared Euclidean distance of two rows.
#[inline]
pub(super) fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        return unsafe { avx2::sq_dist(a, b) };
    }
    sq_dist_portable(a, b)
}

/// Index and squared distance of the nearest centre, and the squared distance of the second.
/// The sums run over dimensions in order, so they may differ from [`sq_dist`] in the last bits.
#[inline]
pub(super) fn nearest_two(x: &[f32], centres: &CentroidBlocks) -> (u32, f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        return unsafe { avx2::nearest_two(x, centres) };
    }
    nearest_two_portable(x, centres)
}

/// Lowers each row's squared distance to the nearest centre so far with centre `c`, and
/// returns the sum of the lowered distances (in f64, in row order).
pub(super) fn lower_to(nearest: &mut [f32], rows: &[f32], c: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        return unsafe { avx2::lower_to(nearest, rows, c) };
    }
    lower_to_portable(nearest, rows, c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    #[test]
    fn sq_dist_matches_f64_and_portable_bits() {
        let mut rng = Rng::new(5);
        for d in [1usize, 7, 8, 9, 32, 33] {
            let (a, b) = (random(d, &mut rng), random(d, &mut rng));
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
            // A sum of d positive f32 terms: relative error below d * 2^-24.
            assert!(
                (sq_dist(&a, &b) as f64 - exact).abs() <= exact * d as f64 * 6e-8,
                "d={d}"
            );
            assert_eq!(sq_dist(&a, &b).to_bits(), sq_dist_portable(&a, &b).to_bits());
        }
    }

    #[test]
    fn nearest_two_matches_brute_force() {
        let mut rng = Rng::new(6);
        for (k, d) in [(1usize, 3usize), (7, 5), (8, 32), (13, 32), (50, 17)] {
            let centroids = random(k * d, &mut rng);
            let blocks = CentroidBlocks::new(&centroids, d);
            for _ in 0..50 {
                let x = random(d, &mut rng);
                let mut dists: Vec<(f64, usize)> = centroids
                    .chunks_exact(d)
                    .enumerate()
                    .map(|(j, c)| (x.iter().zip(c).map(|(a, b)| ((a - b) as f64).powi(2)).sum(), j))
                    .collect();
                dists.sort_by(|a, b| a.0.total_cmp(&b.0));
                let (j, best, second) = nearest_two(&x, &blocks);
                // Near-ties (within the f32 error) may order either way.
                let tol = |v: f64| v * d as f64 * 6e-8 + 1e-30;
                assert!((best as f64 - dists[0].0).abs() <= tol(dists[0].0));
                assert!(j as usize == dists[0].1 || (dists[1].0 - dists[0].0) <= 2.0 * tol(dists[1].0));
                let want_second = if k > 1 { dists[1].0 } else { f64::INFINITY };
                assert!(second as f64 == want_second || (second as f64 - want_second).abs() <= tol(want_second));
                assert_eq!((j, best, second), nearest_two_portable(&x, &blocks));
            }
        }
    }
}
