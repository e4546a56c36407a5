//! Agreement of two clusterings of the same points: adjusted Rand index (ARI) and adjusted
//! mutual information (AMI), both computed from the contingency table.
//!
//! The definitions follow scikit-learn's `adjusted_rand_score` and `adjusted_mutual_info_score`
//! (default `average_method='arithmetic'`): natural logarithms, the exact expected mutual
//! information under the hypergeometric (permutation) model, and the same special cases, so
//! values agree with scikit-learn to rounding.

use std::collections::HashMap;
use std::hash::Hash;

use crate::error::{Error, Result};

/// The contingency table of two labelings: `n[i][j]` = points with truth class `i` and predicted
/// cluster `j`. Classes and clusters are numbered in order of first appearance; only non-zero
/// cells are stored.
#[derive(Clone, Debug)]
pub struct Contingency {
    n: u64,
    row_sums: Vec<u64>,
    col_sums: Vec<u64>,
    /// Non-zero cells `(row, col, count)`, sorted by row then column.
    cells: Vec<(u32, u32, u64)>,
}

/// Codes `0..K` for the labels, in order of first appearance.
fn encode<T: Copy + Eq + Hash>(labels: &[T]) -> (Vec<u32>, usize) {
    let mut codes = HashMap::new();
    let encoded = labels
        .iter()
        .map(|&l| {
            let next = codes.len() as u32;
            *codes.entry(l).or_insert(next)
        })
        .collect();
    (encoded, codes.len())
}

impl Contingency {
    /// Builds the table of two labelings of the same points (any hashable label type).
    pub fn new<A: Copy + Eq + Hash, B: Copy + Eq + Hash>(truth: &[A], pred: &[B]) -> Result<Self> {
        if truth.len() != pred.len() {
            return Err(Error::shape(
                "contingency",
                format!("{} truth labels but {} predicted labels", truth.len(), pred.len()),
            ));
        }
        let (rows, n_rows) = encode(truth);
        let (cols, n_cols) = encode(pred);
        let mut row_sums = vec![0u64; n_rows];
        let mut col_sums = vec![0u64; n_cols];
        let mut keys: Vec<u64> = rows
            .iter()
            .zip(&cols)
            .map(|(&r, &c)| {
                row_sums[r as usize] += 1;
                col_sums[c as usize] += 1;
                ((r as u64) << 32) | c as u64
            })
            .collect();
        keys.sort_unstable();
        let mut cells: Vec<(u32, u32, u64)> = Vec::new();
        for key in keys {
            let (r, c) = ((key >> 32) as u32, key as u32);
            match cells.last_mut() {
                Some(last) if last.0 == r && last.1 == c => last.2 += 1,
                _ => cells.push((r, c, 1)),
            }
        }
        Ok(Contingency {
            n: truth.len() as u64,
            row_sums,
            col_sums,
            cells,
        })
    }

    /// Number of points.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// Points per truth class.
    pub fn row_sums(&self) -> &[u64] {
        &self.row_sums
    }

    /// Points per predicted cluster.
    pub fn col_sums(&self) -> &[u64] {
        &self.col_sums
    }

    /// Non-zero cells `(row, col, count)`.
    pub fn cells(&self) -> &[(u32, u32, u64)] {
        &self.cells
    }

    /// Adjusted Rand index: the Rand index corrected for chance, `1` for identical partitions,
    /// `0` in expectation for independent ones, negative below chance.
    ///
    /// Pair counts are exact integers (`i128`), as scikit-learn's pair confusion matrix; two
    /// partitions that never split a pair differently (including two single-cluster or empty
    /// labelings) score `1`.
    pub fn adjusted_rand_index(&self) -> f64 {
        let n = self.n as i128;
        let sum_squares: i128 = self.cells.iter().map(|&(_, _, v)| (v as i128) * (v as i128)).sum();
        let weighted = |sums: &[u64], pick: fn(&(u32, u32, u64)) -> u32| -> i128 {
            self.cells
                .iter()
                .map(|cell| cell.2 as i128 * sums[pick(cell) as usize] as i128)
                .sum()
        };
        // Ordered pairs (i != j): together in the prediction only (fp), in the truth only (fn),
        // in both (tp), in neither (tn).
        let fp = weighted(&self.col_sums, |c| c.1) - sum_squares;
        let fnn = weighted(&self.row_sums, |c| c.0) - sum_squares;
        let tp = sum_squares - n;
        let tn = n * n - fp - fnn - sum_squares;
        if fnn == 0 && fp == 0 {
            return 1.0;
        }
        let numerator = 2 * (tp * tn - fnn * fp);
        let denominator = (tp + fnn) * (fnn + tn) + (tp + fp) * (fp + tn);
        numerator as f64 / denominator as f64
    }

    /// Mutual information (nats), clipped at 0 against rounding.
    pub fn mutual_info(&self) -> f64 {
        if self.row_sums.len() <= 1 || self.col_sums.len() <= 1 {
            return 0.0;
        }
        let n = self.n as f64;
        let log_n = n.ln();
        let mi: f64 = self
            .cells
            .iter()
            .map(|&(r, c, v)| {
                let p = v as f64 / n;
                let outer = (self.row_sums[r as usize] as f64) * (self.col_sums[c as usize] as f64);
                let term = p * ((v as f64).ln() - log_n) + p * (2.0 * log_n - outer.ln());
                if term.abs() < f64::EPSILON { 0.0 } else { term }
            })
            .sum();
        mi.max(0.0)
    }

    /// Entropy (nats) of the truth labeling.
    pub fn truth_entropy(&self) -> f64 {
        entropy(&self.row_sums, self.n)
    }

    /// Entropy (nats) of the predicted labeling.
    pub fn pred_entropy(&self) -> f64 {
        entropy(&self.col_sums, self.n)
    }

    /// Expected mutual information of two random labelings with these class and cluster sizes
    /// (hypergeometric model, Vinh, Epps & Bailey 2010), summed in log space.
    ///
    /// For each cell the sum over `n_ij` walks out from the mode of the hypergeometric
    /// distribution and stops on each side where the probability underflows to exactly 0 in
    /// f64 (the distribution is unimodal), so it equals the full sum while visiting only the
    /// terms that can contribute.
    pub fn expected_mutual_info(&self) -> f64 {
        let (a, b) = (&self.row_sums, &self.col_sums);
        if a.len() <= 1 || b.len() <= 1 {
            return 0.0;
        }
        let n = self.n;
        let nf = n as f64;
        let ln_fact = LnFactorial::new(n);
        let log_n = nf.ln();
        let largest = a.iter().chain(b).copied().max().unwrap_or(0);
        let ln_int: Vec<f64> = (0..=largest).map(|k| (k as f64).ln()).collect();
        let ln_n_fact = ln_fact.get(n);
        let mut emi = 0.0;
        for &ai in a {
            // ln[a! (N-a)! / N!], shared by every term of this row.
            let row_part = ln_fact.get(ai) + ln_fact.get(n - ai) - ln_n_fact;
            for &bj in b {
                let pair_part = row_part + ln_fact.get(bj) + ln_fact.get(n - bj);
                let log_ab = ln_int[ai as usize] + ln_int[bj as usize];
                // Term of n_ij: (n_ij / N) ln(N n_ij / (a b)) P(n_ij), with
                // P(n_ij) = a! b! (N-a)! (N-b)! / (N! n_ij! (a-n_ij)! (b-n_ij)! (N-a-b+n_ij)!).
                let term = |nij: u64| -> Option<f64> {
                    let ln_p = pair_part
                        - ln_fact.get(nij)
                        - ln_fact.get(ai - nij)
                        - ln_fact.get(bj - nij)
                        - ln_fact.get(n + nij - ai - bj);
                    (ln_p >= LN_UNDERFLOW).then(|| {
                        let nij_f = nij as f64;
                        nij_f / nf * (log_n + ln_int[nij as usize] - log_ab) * ln_p.exp()
                    })
                };
                let start = (ai + bj).saturating_sub(n).max(1);
                let end = ai.min(bj);
                if start > end {
                    continue;
                }
                let mode = ((ai + 1) as u128 * (bj + 1) as u128 / (n + 2) as u128) as u64;
                let mode = mode.clamp(start, end);
                let mut up = 0.0;
                for nij in mode..=end {
                    match term(nij) {
                        Some(t) => up += t,
                        None => break,
                    }
                }
                let mut down = 0.0;
                for nij in (start..mode).rev() {
                    match term(nij) {
                        Some(t) => down += t,
                        None => break,
                    }
                }
                emi += down + up;
            }
        }
        emi
    }

    /// Adjusted mutual information with the arithmetic-mean normaliser:
    /// `(MI - E[MI]) / ((H(truth) + H(pred)) / 2 - E[MI])`.
    ///
    /// Special cases as scikit-learn: both labelings a single cluster (or empty) gives `1`; only
    /// one of them a single cluster gives `0`. The denominator keeps its sign but is held at
    /// least `f64::EPSILON` in size, so a perfect match whose expectation equals its maximum
    /// does not divide zero by zero.
    pub fn adjusted_mutual_info(&self) -> f64 {
        let (classes, clusters) = (self.row_sums.len(), self.col_sums.len());
        if classes == clusters && classes <= 1 {
            return 1.0;
        }
        if classes == 1 || clusters == 1 {
            return 0.0;
        }
        let mi = self.mutual_info();
        let emi = self.expected_mutual_info();
        let normaliser = 0.5 * (self.truth_entropy() + self.pred_entropy());
        let mut denominator = normaliser - emi;
        denominator = if denominator < 0.0 {
            denominator.min(-f64::EPSILON)
        } else {
            denominator.max(f64::EPSILON)
        };
        (mi - emi) / denominator
    }
}

/// Below this, `exp` returns exactly 0 in f64 (it rounds to 0 under half the smallest
/// subnormal, about e^-745.13).
const LN_UNDERFLOW: f64 = -746.0;

/// Entropy of a labeling with these class sizes; a single class has zero entropy.
fn entropy(sizes: &[u64], n: u64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    if sizes.len() == 1 {
        return 0.0;
    }
    let log_n = (n as f64).ln();
    -sizes
        .iter()
        .map(|&s| {
            let s = s as f64;
            (s / n as f64) * (s.ln() - log_n)
        })
        .sum::<f64>()
}

/// `ln(k!)` for `k = 0..=n`, tabulated with compensated summation so that every entry is
/// within a few ulp of the true value (plain summation drifts by ~sqrt(n) ulp).
struct LnFactorial {
    table: Vec<f64>,
}

impl LnFactorial {
    fn new(n: u64) -> Self {
        let mut table = Vec::with_capacity(n as usize + 1);
        let (mut sum, mut carry) = (0.0f64, 0.0f64);
        table.push(0.0);
        for k in 1..=n {
            // Kahan summation of ln(k).
            let y = (k as f64).ln() - carry;
            let t = sum + y;
            carry = (t - sum) - y;
            sum = t;
            table.push(sum);
        }
        LnFactorial { table }
    }

    fn get(&self, k: u64) -> f64 {
        self.table[k as usize]
    }
}

/// Adjusted Rand index of two labelings; see [`Contingency::adjusted_rand_index`].
pub fn adjusted_rand_index<A: Copy + Eq + Hash, B: Copy + Eq + Hash>(truth: &[A], pred: &[B]) -> Result<f64> {
    Ok(Contingency::new(truth, pred)?.adjusted_rand_index())
}

/// Adjusted mutual information of two labelings; see [`Contingency::adjusted_mutual_info`].
pub fn adjusted_mutual_info<A: Copy + Eq + Hash, B: Copy + Eq + Hash>(truth: &[A], pred: &[B]) -> Result<f64> {
    Ok(Contingency::new(truth, pred)?.adjusted_mutual_info())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contingency_counts() {
        let t = Contingency::new(&[5, 5, 7, 7, 7], &['a', 'b', 'b', 'b', 'a']).unwrap();
        assert_eq!(t.n(), 5);
        assert_eq!(t.row_sums(), &[2, 3]);
        assert_eq!(t.col_sums(), &[2, 3]);
        assert_eq!(t.cells(), &[(0, 0, 1), (0, 1, 1), (1, 0, 1), (1, 1, 2)]);
        assert!(Contingency::new(&[1, 2], &[1]).is_err());
    }

    #[test]
    fn ln_factorial_matches_products() {
        let t = LnFactorial::new(20);
        let mut fact = 1.0f64;
        for k in 1..=20u64 {
            fact *= k as f64;
            // 20! < 2^62 is exact in f64 up to 18!; compare in relative terms (4 ulp).
            assert!((t.get(k) - fact.ln()).abs() <= 4.0 * f64::EPSILON * fact.ln().max(1.0));
        }
    }

    #[test]
    fn orthogonal_halves_score_minus_half() {
        // Hand computation: MI = 0, E[MI] = ln2/3, H = ln2 each => AMI = -1/2;
        // pair counts give ARI = (0 - 2/3) / (2 - 2/3) = -1/2.
        let t = Contingency::new(&[0, 0, 1, 1], &[0, 1, 0, 1]).unwrap();
        assert!((t.expected_mutual_info() - std::f64::consts::LN_2 / 3.0).abs() < 1e-15);
        assert!((t.adjusted_mutual_info() + 0.5).abs() < 1e-14);
        assert!((t.adjusted_rand_index() + 0.5).abs() < 1e-15);
    }
}
