//! k-means clustering of the rows of an `[n, d]` f32 matrix.
//!
//! k-means++ seeding from the project [`Rng`], then Lloyd iterations accelerated with Hamerly's
//! bounds (a point whose distance to its own centre is below half the gap to the nearest other
//! centre, or below a lower bound on its distance to every other centre, cannot change cluster
//! and skips the scan over all `k` centres). The result is the Lloyd result; only the work
//! differs. Several restarts keep the lowest inertia. A cluster left empty is re-seeded with the
//! point farthest from its own centre. Work over points runs in parallel with rayon, in fixed
//! chunks whose partial sums are added in order, so results depend on the seed only, not on the
//! number of threads.

use rayon::prelude::*;

mod distance;

use distance::{CentroidBlocks, lower_to, nearest_two, sq_dist};

use crate::error::{Error, Result};
use crate::rng::Rng;

/// Settings of [`kmeans`].
#[derive(Clone, Debug, PartialEq)]
pub struct KMeansConfig {
    /// Number of clusters.
    pub k: usize,
    /// Most Lloyd iterations per restart.
    pub max_iter: usize,
    /// Stop when the summed squared centre movement of one iteration is at most `tol` times the
    /// mean per-feature variance of the data (scikit-learn's criterion); 0 = only when no point
    /// changes cluster.
    pub tol: f64,
    /// Independent k-means++ starts; the one with the lowest inertia is kept.
    pub restarts: usize,
    /// Fit on this many randomly chosen rows (without replacement), then assign every row;
    /// `None`, or a count of at least the number of rows, fits on all rows.
    pub subsample: Option<usize>,
    pub seed: u64,
}

impl KMeansConfig {
    /// `k` clusters with the defaults: 300 iterations, tol 1e-4, 3 restarts, no subsampling.
    pub fn new(k: usize, seed: u64) -> Self {
        KMeansConfig {
            k,
            max_iter: 300,
            tol: 1e-4,
            restarts: 3,
            subsample: None,
            seed,
        }
    }
}

/// A fitted k-means model.
#[derive(Clone, Debug)]
pub struct KMeans {
    pub k: usize,
    pub d: usize,
    /// Centres, row-major `[k, d]`.
    pub centroids: Vec<f32>,
    /// Cluster of every input row (all rows, also when fitted on a subsample).
    pub labels: Vec<u32>,
    /// Sum over all input rows of the squared distance to their centre.
    pub inertia: f64,
    /// Lloyd iterations of the kept restart.
    pub iterations: usize,
    /// Whether the kept restart met the stopping rule before `max_iter`.
    pub converged: bool,
    /// Inertia on the fitted rows after each assignment of the kept restart (first entry: the
    /// assignment to the k-means++ centres). Non-increasing, up to f32 rounding.
    pub inertia_history: Vec<f64>,
}

impl KMeans {
    /// Nearest centre of each row of `data` (`[m, d]`), and the summed squared distance.
    pub fn predict(&self, data: &[f32]) -> Result<(Vec<u32>, f64)> {
        check_matrix(data, self.d)?;
        Ok(assign_nearest(data, self.d, &self.centroids))
    }
}

/// Rows handled by one parallel task.
const CHUNK: usize = 2048;

fn check_matrix(data: &[f32], d: usize) -> Result<usize> {
    if d == 0 || !data.len().is_multiple_of(d) {
        return Err(Error::shape(
            "kmeans",
            format!("{} values do not form rows of width {d}", data.len()),
        ));
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::config(format!(
            "k-means input has a non-finite value at row {}, column {}",
            i / d,
            i % d
        )));
    }
    Ok(data.len() / d)
}

/// Nearest centre of every row, in parallel; the inertia is summed in chunk order.
fn assign_nearest(data: &[f32], d: usize, centroids: &[f32]) -> (Vec<u32>, f64) {
    let centres = CentroidBlocks::new(centroids, d);
    let mut labels = vec![0u32; data.len() / d];
    let partial: Vec<f64> = labels
        .par_chunks_mut(CHUNK)
        .zip(data.par_chunks(CHUNK * d))
        .map(|(labels, rows)| {
            let mut inertia = 0.0f64;
            for (label, x) in labels.iter_mut().zip(rows.chunks_exact(d)) {
                let (j, dist, _) = nearest_two(x, &centres);
                *label = j;
                inertia += dist as f64;
            }
            inertia
        })
        .collect();
    (labels, partial.iter().sum())
}

/// Clusters the rows of `data` (`[n, d]`, row-major).
///
/// Errors when the shape is inconsistent, a value is not finite, `k` is 0 or larger than the
/// number of rows fitted, or `restarts` is 0.
pub fn kmeans(data: &[f32], d: usize, config: &KMeansConfig) -> Result<KMeans> {
    let n = check_matrix(data, d)?;
    let k = config.k;
    if config.restarts == 0 {
        return Err(Error::config("k-means needs at least one restart"));
    }
    let root = Rng::new(config.seed);
    let fit_rows: Option<Vec<f32>> = match config.subsample {
        Some(m) if m < n => {
            let mut order: Vec<usize> = (0..n).collect();
            let mut rng = root.fork(u64::MAX);
            // Partial Fisher-Yates: the first m entries are a uniform sample without replacement.
            for i in 0..m {
                let j = i + rng.below((n - i) as u64) as usize;
                order.swap(i, j);
            }
            let mut chosen = order[..m].to_vec();
            chosen.sort_unstable();
            Some(
                chosen
                    .iter()
                    .flat_map(|&i| &data[i * d..(i + 1) * d])
                    .copied()
                    .collect(),
            )
        }
        _ => None,
    };
    let fit_data = fit_rows.as_deref().unwrap_or(data);
    let m = fit_data.len() / d;
    if k == 0 || k > m {
        return Err(Error::config(format!("k-means asked for {k} clusters of {m} rows")));
    }

    let tol_abs = config.tol * mean_feature_variance(fit_data, d);
    let mut best: Option<Fit> = None;
    for restart in 0..config.restarts {
        let mut rng = root.fork(restart as u64);
        let fit = lloyd(fit_data, d, k, config.max_iter, tol_abs, &mut rng);
        if best.as_ref().is_none_or(|b| fit.inertia() < b.inertia()) {
            best = Some(fit);
        }
    }
    let best = best.expect("at least one restart ran");
    let (labels, inertia) = if fit_rows.is_some() {
        assign_nearest(data, d, &best.centroids)
    } else {
        (best.labels, best.history.last().copied().unwrap_or(0.0))
    };
    Ok(KMeans {
        k,
        d,
        centroids: best.centroids,
        labels,
        inertia,
        iterations: best.iterations,
        converged: best.converged,
        inertia_history: best.history,
    })
}

fn mean_feature_variance(data: &[f32], d: usize) -> f64 {
    let n = (data.len() / d) as f64;
    let mut mean = vec![0.0f64; d];
    for row in data.chunks_exact(d) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = 0.0f64;
    for row in data.chunks_exact(d) {
        for (m, &v) in mean.iter().zip(row) {
            var += (v as f64 - m) * (v as f64 - m);
        }
    }
    var / (n * d as f64)
}

/// One restart's result.
struct Fit {
    centroids: Vec<f32>,
    labels: Vec<u32>,
    history: Vec<f64>,
    iterations: usize,
    converged: bool,
}

impl Fit {
    fn inertia(&self) -> f64 {
        self.history.last().copied().unwrap_or(f64::INFINITY)
    }
}

/// k-means++ seeding: each new centre is a row drawn with probability proportional to its
/// squared distance to the nearest centre chosen so far.
fn kmeans_plus_plus(data: &[f32], d: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    let n = data.len() / d;
    let mut centroids = Vec::with_capacity(k * d);
    let mut nearest = vec![f32::INFINITY; n];
    let mut pick = rng.below(n as u64) as usize;
    for chosen in 1..=k {
        let c = &data[pick * d..(pick + 1) * d];
        centroids.extend_from_slice(c);
        if chosen == k {
            break;
        }
        // Sums per chunk, so that sampling can skip whole chunks.
        let chunk_sums: Vec<f64> = nearest
            .par_chunks_mut(CHUNK)
            .zip(data.par_chunks(CHUNK * d))
            .map(|(near, rows)| lower_to(near, rows, c))
            .collect();
        let total: f64 = chunk_sums.iter().sum();
        pick = if total > 0.0 {
            sample_proportional(&nearest, &chunk_sums, rng.uniform() * total)
        } else {
            // Every row coincides with a centre already: any choice is as good.
            rng.below(n as u64) as usize
        };
    }
    centroids
}

/// The row where the running sum of `weights` first exceeds `target`, walking whole chunks
/// by their sums first; only rows of positive weight are chosen.
fn sample_proportional(weights: &[f32], chunk_sums: &[f64], target: f64) -> usize {
    let mut cumulative = 0.0f64;
    for (chunk, &sum) in chunk_sums.iter().enumerate() {
        if cumulative + sum <= target {
            cumulative += sum;
            continue;
        }
        let start = chunk * CHUNK;
        for (i, &w) in weights[start..(start + CHUNK).min(weights.len())].iter().enumerate() {
            cumulative += w as f64;
            if w > 0.0 && cumulative > target {
                return start + i;
            }
        }
    }
    // Rounding can leave the running sum just short of the target: take the last positive row.
    weights
        .iter()
        .rposition(|&w| w > 0.0)
        .expect("a positive total has a positive weight")
}

/// Per-row state of Hamerly's algorithm.
#[derive(Clone, Copy, Debug)]
struct RowState {
    label: u32,
    /// Exact squared distance to the own centre at the last assignment.
    dist2: f32,
    /// Lower bound on the distance to every other centre.
    lower: f32,
}

/// Bounds are trusted only with this relative margin, which covers the f32 rounding of the
/// distances and of the centre shifts that move the bounds (a few ulp each, d <= ~1000).
const BOUND_MARGIN: f32 = 1e-5;

fn lloyd(data: &[f32], d: usize, k: usize, max_iter: usize, tol_abs: f64, rng: &mut Rng) -> Fit {
    let mut centroids = kmeans_plus_plus(data, d, k, rng);
    let centres = CentroidBlocks::new(&centroids, d);
    let mut state: Vec<RowState> = data
        .par_chunks(d)
        .map(|x| {
            let (label, dist2, second) = nearest_two(x, &centres);
            RowState {
                label,
                dist2,
                lower: second.sqrt(),
            }
        })
        .collect();
    let mut history = vec![chunked_sum(&state, |s| s.dist2 as f64)];
    let mut iterations = 0;
    let mut converged = false;
    while iterations < max_iter {
        iterations += 1;
        let new_centroids = update_centroids(data, d, k, &mut state);
        let shifts: Vec<f32> = centroids
            .chunks_exact(d)
            .zip(new_centroids.chunks_exact(d))
            .map(|(a, b)| sq_dist(a, b).sqrt())
            .collect();
        let total_shift: f64 = shifts.iter().map(|&s| s as f64 * s as f64).sum();
        if total_shift == 0.0 {
            converged = true;
            break;
        }
        centroids = new_centroids;
        let changed = hamerly_assign(data, d, &centroids, &shifts, &mut state);
        history.push(chunked_sum(&state, |s| s.dist2 as f64));
        if changed == 0 || total_shift <= tol_abs {
            converged = true;
            break;
        }
    }
    Fit {
        centroids,
        labels: state.iter().map(|s| s.label).collect(),
        history,
        iterations,
        converged,
    }
}

/// Sum over rows in fixed chunks added in order (deterministic whatever the thread count).
fn chunked_sum(state: &[RowState], f: impl Fn(&RowState) -> f64 + Sync) -> f64 {
    let partial: Vec<f64> = state.par_chunks(CHUNK).map(|c| c.iter().map(&f).sum()).collect();
    partial.iter().sum()
}

/// Means of the clusters; an empty cluster takes over the row farthest from its centre (from a
/// cluster that keeps at least one row), and that row moves to it.
fn update_centroids(data: &[f32], d: usize, k: usize, state: &mut [RowState]) -> Vec<f32> {
    let partial: Vec<(Vec<f64>, Vec<u64>)> = state
        .par_chunks(CHUNK)
        .zip(data.par_chunks(CHUNK * d))
        .map(|(states, rows)| {
            let mut sums = vec![0.0f64; k * d];
            let mut counts = vec![0u64; k];
            for (s, x) in states.iter().zip(rows.chunks_exact(d)) {
                let j = s.label as usize;
                counts[j] += 1;
                for (acc, &v) in sums[j * d..(j + 1) * d].iter_mut().zip(x) {
                    *acc += v as f64;
                }
            }
            (sums, counts)
        })
        .collect();
    let mut sums = vec![0.0f64; k * d];
    let mut counts = vec![0u64; k];
    for (s, c) in partial {
        sums.iter_mut().zip(&s).for_each(|(a, b)| *a += b);
        counts.iter_mut().zip(&c).for_each(|(a, b)| *a += b);
    }

    let empty: Vec<usize> = (0..k).filter(|&j| counts[j] == 0).collect();
    if !empty.is_empty() {
        let mut far: Vec<usize> = (0..state.len()).collect();
        // Farthest first; ties by row index keep the choice deterministic.
        far.sort_by(|&a, &b| state[b].dist2.total_cmp(&state[a].dist2).then(a.cmp(&b)));
        let mut candidates = far.into_iter();
        for &j in &empty {
            // Some cluster always has >= 2 rows while one is empty, since rows >= k.
            let row = candidates
                .by_ref()
                .find(|&i| counts[state[i].label as usize] >= 2)
                .expect("a cluster with two rows exists while another is empty");
            let old = state[row].label as usize;
            let x = &data[row * d..(row + 1) * d];
            for (acc, &v) in sums[old * d..(old + 1) * d].iter_mut().zip(x) {
                *acc -= v as f64;
            }
            counts[old] -= 1;
            for (acc, &v) in sums[j * d..(j + 1) * d].iter_mut().zip(x) {
                *acc = v as f64;
            }
            counts[j] = 1;
            state[row] = RowState {
                label: j as u32,
                dist2: 0.0,
                lower: 0.0,
            };
        }
    }

    let mut centroids = vec![0.0f32; k * d];
    for j in 0..k {
        let inv = 1.0 / counts[j] as f64;
        for (c, &s) in centroids[j * d..(j + 1) * d].iter_mut().zip(&sums[j * d..(j + 1) * d]) {
            *c = (s * inv) as f32;
        }
    }
    centroids
}

/// Reassigns every row to its nearest centre after the centres moved by `shifts`, scanning all
/// centres only for rows whose bounds allow a change. Returns how many rows changed cluster.
fn hamerly_assign(data: &[f32], d: usize, centroids: &[f32], shifts: &[f32], state: &mut [RowState]) -> usize {
    let k = shifts.len();
    let centres = CentroidBlocks::new(centroids, d);
    // Half the distance from each centre to its nearest other centre.
    let half_gap: Vec<f32> = (0..k)
        .into_par_iter()
        .map(|j| {
            let cj = &centroids[j * d..(j + 1) * d];
            let nearest = (0..k)
                .filter(|&i| i != j)
                .map(|i| sq_dist(cj, &centroids[i * d..(i + 1) * d]))
                .fold(f32::INFINITY, f32::min);
            0.5 * nearest.sqrt()
        })
        .collect();
    // Largest shift among the other centres, per own centre.
    let (mut top, mut top_j, mut runner_up) = (0.0f32, usize::MAX, 0.0f32);
    for (j, &s) in shifts.iter().enumerate() {
        if s > top {
            runner_up = top;
            top = s;
            top_j = j;
        } else if s > runner_up {
            runner_up = s;
        }
    }
    let other_shift = |j: usize| if j == top_j { runner_up } else { top };

    let changed: Vec<usize> = state
        .par_chunks_mut(CHUNK)
        .zip(data.par_chunks(CHUNK * d))
        .map(|(states, rows)| {
            let mut changed = 0;
            for (s, x) in states.iter_mut().zip(rows.chunks_exact(d)) {
                let a = s.label as usize;
                let lower = s.lower - other_shift(a);
                let own = sq_dist(x, &centroids[a * d..(a + 1) * d]);
                let bound = half_gap[a].max(lower) * (1.0 - BOUND_MARGIN);
                if own.sqrt() <= bound {
                    *s = RowState {
                        label: a as u32,
                        dist2: own,
                        lower,
                    };
                } else {
                    let (j, best, second) = nearest_two(x, &centres);
                    changed += (j as usize != a) as usize;
                    *s = RowState {
                        label: j,
                        dist2: best,
                        lower: second.sqrt(),
                    };
                }
            }
            changed
        })
        .collect();
    changed.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_walks_chunks_like_a_flat_scan() {
        let mut rng = Rng::new(9);
        let n = 3 * CHUNK + 17;
        // A third of the weights are zero, as rows that coincide with a chosen centre.
        let weights: Vec<f32> = (0..n)
            .map(|_| if rng.below(3) == 0 { 0.0 } else { rng.uniform() as f32 })
            .collect();
        let chunk_sums: Vec<f64> = weights
            .chunks(CHUNK)
            .map(|c| c.iter().map(|&w| w as f64).sum())
            .collect();
        let total: f64 = chunk_sums.iter().sum();
        for _ in 0..200 {
            let target = rng.uniform() * total;
            let got = sample_proportional(&weights, &chunk_sums, target);
            assert!(weights[got] > 0.0);
            // The flat running sum reaches the target at `got`, up to the rounding of the
            // chunk-wise summation order (relative 1e-12 of the total for ~6000 terms).
            let before: f64 = weights[..got].iter().map(|&w| w as f64).sum();
            let slack = 1e-12 * total;
            assert!(before <= target + slack && before + weights[got] as f64 > target - slack);
        }
        let one_hot: Vec<f32> = (0..n).map(|i| if i == CHUNK + 5 { 2.0 } else { 0.0 }).collect();
        let sums: Vec<f64> = one_hot
            .chunks(CHUNK)
            .map(|c| c.iter().map(|&w| w as f64).sum())
            .collect();
        for target in [0.0, 1.0, 1.999, 2.0] {
            assert_eq!(sample_proportional(&one_hot, &sums, target), CHUNK + 5);
        }
    }

    #[test]
    fn empty_cluster_is_reseeded_from_farthest_row() {
        // Rows 0,1,2 on a line; all assigned to cluster 0, cluster 1 empty. Row 2 is farthest.
        let data = [0.0f32, 1.0, 10.0];
        let mut state: Vec<RowState> = [0.0f32, 1.0, 100.0]
            .iter()
            .map(|&dist2| RowState {
                label: 0,
                dist2,
                lower: 0.0,
            })
            .collect();
        let c = update_centroids(&data, 1, 2, &mut state);
        assert_eq!(c, vec![0.5, 10.0]);
        assert_eq!(state[2].label, 1);
    }

    #[test]
    fn invalid_inputs_are_errors() {
        let cfg = KMeansConfig::new(2, 0);
        assert!(kmeans(&[0.0; 5], 2, &cfg).is_err());
        assert!(kmeans(&[0.0; 2], 2, &cfg).is_err());
        assert!(kmeans(&[0.0, f32::NAN, 1.0, 1.0], 2, &cfg).is_err());
        assert!(kmeans(&[0.0; 4], 0, &cfg).is_err());
    }
}
