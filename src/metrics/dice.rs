//! Per-class Dice overlap of hard label maps, and its aggregation over organs and cases.
//!
//! `Dice(c) = 2 |P_c ∩ T_c| / (|P_c| + |T_c|)` where `P_c`, `T_c` are the pixels (voxels) that the
//! prediction and the truth label `c`.
//!
//! **Empty classes.** A class that appears in neither map has `0 / 0`. The default convention,
//! [`EmptyClass::Exclude`], reports it as `None` and leaves it out of every mean (the usual
//! practice: a case without an organ says nothing about how well that organ is segmented).
//! [`EmptyClass::CountAsOne`] reports it as a perfect `1.0` instead (a correct "nothing there").
//! A class present in only one of the two maps is a genuine miss and scores `0.0` either way.

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};

/// A label value in a segmentation map (`u8`, `u16` or `u32`).
pub trait Label: Copy + Send + Sync {
    fn value(self) -> u32;
}

impl Label for u8 {
    fn value(self) -> u32 {
        self as u32
    }
}

impl Label for u16 {
    fn value(self) -> u32 {
        self as u32
    }
}

impl Label for u32 {
    fn value(self) -> u32 {
        self
    }
}

/// What Dice reports for a class that is absent from both prediction and truth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EmptyClass {
    /// `None`: the class is left out of means (default).
    #[default]
    Exclude,
    /// `Some(1.0)`: an agreed absence counts as a perfect score.
    CountAsOne,
}

/// The largest class value accepted, so that the class lookup table stays small.
const MAX_CLASS_VALUE: u32 = 1 << 20;

/// Pixel counts behind Dice for a fixed list of classes, accumulated over any number of label-map
/// pairs (e.g. the slices of one volume, to get the Dice of the volume).
#[derive(Clone, Debug)]
pub struct OverlapCounts {
    classes: Vec<u32>,
    /// `lookup[label]` = position of `label` in `classes`, or `NOT_SCORED`.
    lookup: Vec<u32>,
    pred: Vec<u64>,
    truth: Vec<u64>,
    both: Vec<u64>,
}

const NOT_SCORED: u32 = u32::MAX;

/// Pairs above this size are counted in parallel chunks.
const PARALLEL_CHUNK: usize = 1 << 16;

impl OverlapCounts {
    /// Counts for the given class values (e.g. `1..=13` for 13 organs; include 0 to score
    /// background). Labels not in `classes` are not scored.
    pub fn new(classes: &[u32]) -> Result<Self> {
        let max = classes.iter().copied().max().unwrap_or(0);
        if max > MAX_CLASS_VALUE {
            return Err(Error::config(format!(
                "Dice class value {max} is too large (at most {MAX_CLASS_VALUE})"
            )));
        }
        let mut lookup = vec![NOT_SCORED; max as usize + 1];
        for (i, &c) in classes.iter().enumerate() {
            if lookup[c as usize] != NOT_SCORED {
                return Err(Error::config(format!("Dice class {c} is listed twice")));
            }
            lookup[c as usize] = i as u32;
        }
        let k = classes.len();
        Ok(OverlapCounts {
            classes: classes.to_vec(),
            lookup,
            pred: vec![0; k],
            truth: vec![0; k],
            both: vec![0; k],
        })
    }

    /// The scored class values, in the order of every returned vector.
    pub fn classes(&self) -> &[u32] {
        &self.classes
    }

    /// Adds one prediction/truth pair of equal length.
    pub fn add<L: Label>(&mut self, pred: &[L], truth: &[L]) -> Result<()> {
        if pred.len() != truth.len() {
            return Err(Error::shape(
                "dice",
                format!("prediction has {} labels, truth has {}", pred.len(), truth.len()),
            ));
        }
        let k = self.classes.len();
        let partials: Vec<[Vec<u64>; 3]> = if pred.len() > PARALLEL_CHUNK {
            pred.par_chunks(PARALLEL_CHUNK)
                .zip(truth.par_chunks(PARALLEL_CHUNK))
                .map(|(p, t)| self.count(p, t))
                .collect()
        } else {
            vec![self.count(pred, truth)]
        };
        for [p, t, b] in partials {
            for c in 0..k {
                self.pred[c] += p[c];
                self.truth[c] += t[c];
                self.both[c] += b[c];
            }
        }
        Ok(())
    }

    fn count<L: Label>(&self, pred: &[L], truth: &[L]) -> [Vec<u64>; 3] {
        let k = self.classes.len();
        let (mut p_count, mut t_count, mut both) = (vec![0u64; k], vec![0u64; k], vec![0u64; k]);
        let slot = |label: u32| self.lookup.get(label as usize).copied().unwrap_or(NOT_SCORED);
        for (&p, &t) in pred.iter().zip(truth) {
            let (p, t) = (p.value(), t.value());
            let sp = slot(p);
            if sp != NOT_SCORED {
                p_count[sp as usize] += 1;
                if p == t {
                    both[sp as usize] += 1;
                }
            }
            let st = slot(t);
            if st != NOT_SCORED {
                t_count[st as usize] += 1;
            }
        }
        [p_count, t_count, both]
    }

    /// Pixels labelled with each class in the predictions.
    pub fn predicted(&self) -> &[u64] {
        &self.pred
    }

    /// Pixels labelled with each class in the truth.
    pub fn truth(&self) -> &[u64] {
        &self.truth
    }

    /// Pixels where prediction and truth both carry the class.
    pub fn intersection(&self) -> &[u64] {
        &self.both
    }

    /// Dice per class, in the order of [`OverlapCounts::classes`].
    pub fn dice(&self, empty: EmptyClass) -> Vec<Option<f64>> {
        (0..self.classes.len())
            .map(|c| {
                let denom = self.pred[c] + self.truth[c];
                if denom == 0 {
                    match empty {
                        EmptyClass::Exclude => None,
                        EmptyClass::CountAsOne => Some(1.0),
                    }
                } else {
                    Some(2.0 * self.both[c] as f64 / denom as f64)
                }
            })
            .collect()
    }
}

/// Dice of each class in `classes` between two label maps of equal length; a class absent from
/// both is `None` ([`EmptyClass::Exclude`]).
pub fn dice_per_class<L: Label>(pred: &[L], truth: &[L], classes: &[u32]) -> Result<Vec<Option<f64>>> {
    dice_per_class_with(pred, truth, classes, EmptyClass::Exclude)
}

/// [`dice_per_class`] with an explicit convention for classes absent from both maps.
pub fn dice_per_class_with<L: Label>(
    pred: &[L],
    truth: &[L],
    classes: &[u32],
    empty: EmptyClass,
) -> Result<Vec<Option<f64>>> {
    let mut counts = OverlapCounts::new(classes)?;
    counts.add(pred, truth)?;
    Ok(counts.dice(empty))
}

/// Mean of the present values; `None` when there are none.
pub fn mean_present(values: &[Option<f64>]) -> Option<f64> {
    let present: Vec<f64> = values.iter().flatten().copied().collect();
    (!present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64)
}

/// Dice of several organs over several cases: one row per case, one column per organ.
///
/// Means skip `None` entries: an organ's mean is over the cases where it was scored, a case's
/// mean over the organs scored in it, and the overall mean is the mean of the organ means (so
/// each organ weighs the same however many cases contain it).
#[derive(Clone, Debug, Default)]
pub struct DiceTable {
    organs: Vec<String>,
    cases: Vec<(String, Vec<Option<f64>>)>,
}

/// One case (row) of a [`DiceReport`].
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DiceCaseReport {
    pub case: String,
    /// Dice per organ, in the order of [`DiceReport::organs`]; `null` where not scored.
    pub dice: Vec<Option<f64>>,
    pub mean: Option<f64>,
}

/// The serialisable form of a [`DiceTable`], values rounded to 4 decimals.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DiceReport {
    pub organs: Vec<String>,
    pub cases: Vec<DiceCaseReport>,
    /// Mean per organ over the cases that score it.
    pub organ_means: Vec<Option<f64>>,
    /// Mean of the organ means.
    pub mean: Option<f64>,
}

fn round4(x: Option<f64>) -> Option<f64> {
    x.map(|v| (v * 1e4).round() / 1e4)
}

fn fmt4(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"))
}

impl DiceTable {
    /// An empty table with these organ names as columns.
    pub fn new<S: Into<String>>(organs: impl IntoIterator<Item = S>) -> Self {
        DiceTable {
            organs: organs.into_iter().map(Into::into).collect(),
            cases: Vec::new(),
        }
    }

    /// Appends one case; `dice` holds one entry per organ (as from [`dice_per_class`]).
    pub fn add_case(&mut self, case: impl Into<String>, dice: Vec<Option<f64>>) -> Result<()> {
        let case = case.into();
        if dice.len() != self.organs.len() {
            return Err(Error::config(format!(
                "case {case}: {} Dice values for {} organs",
                dice.len(),
                self.organs.len()
            )));
        }
        self.cases.push((case, dice));
        Ok(())
    }

    pub fn organs(&self) -> &[String] {
        &self.organs
    }

    /// The cases in the order they were added.
    pub fn cases(&self) -> impl Iterator<Item = (&str, &[Option<f64>])> {
        self.cases.iter().map(|(c, d)| (c.as_str(), d.as_slice()))
    }

    /// Mean Dice of each organ over the cases that score it.
    pub fn organ_means(&self) -> Vec<Option<f64>> {
        (0..self.organs.len())
            .map(|o| mean_present(&self.cases.iter().map(|(_, d)| d[o]).collect::<Vec<_>>()))
            .collect()
    }

    /// Mean over organs of [`DiceTable::organ_means`].
    pub fn mean(&self) -> Option<f64> {
        mean_present(&self.organ_means())
    }

    /// The table with values rounded to 4 decimals, ready for `serde_json`.
    pub fn report(&self) -> DiceReport {
        DiceReport {
            organs: self.organs.clone(),
            cases: self
                .cases
                .iter()
                .map(|(case, dice)| DiceCaseReport {
                    case: case.clone(),
                    dice: dice.iter().map(|&v| round4(v)).collect(),
                    mean: round4(mean_present(dice)),
                })
                .collect(),
            organ_means: self.organ_means().into_iter().map(round4).collect(),
            mean: round4(self.mean()),
        }
    }

    /// Pretty-printed JSON of [`DiceTable::report`].
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.report()).expect("a DiceReport always serialises")
    }

    /// A plain-text table: one row per case, a final `mean` row, a `mean` column; 4 decimals,
    /// `-` where a class was not scored.
    pub fn to_text(&self) -> String {
        let mut rows: Vec<Vec<String>> = Vec::with_capacity(self.cases.len() + 2);
        let mut header = vec!["case".to_string()];
        header.extend(self.organs.iter().cloned());
        header.push("mean".to_string());
        rows.push(header);
        for (case, dice) in &self.cases {
            let mut row = vec![case.clone()];
            row.extend(dice.iter().map(|&v| fmt4(v)));
            row.push(fmt4(mean_present(dice)));
            rows.push(row);
        }
        let mut footer = vec!["mean".to_string()];
        footer.extend(self.organ_means().into_iter().map(fmt4));
        footer.push(fmt4(self.mean()));
        rows.push(footer);

        let columns = rows[0].len();
        let widths: Vec<usize> = (0..columns)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let line = |row: &[String]| {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(c, cell)| {
                    if c == 0 {
                        format!("{cell:<w$}", w = widths[c])
                    } else {
                        format!("{cell:>w$}", w = widths[c])
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_string()
        };
        let rule = "-".repeat(widths.iter().sum::<usize>() + 2 * (columns - 1));
        let mut out = String::new();
        out.push_str(&line(&rows[0]));
        out.push('\n');
        out.push_str(&rule);
        out.push('\n');
        for row in &rows[1..rows.len() - 1] {
            out.push_str(&line(row));
            out.push('\n');
        }
        out.push_str(&rule);
        out.push('\n');
        out.push_str(&line(&rows[rows.len() - 1]));
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_of_three_overlap() {
        // pred class 1 at {0,1,2}, truth at {1,2,3}: |A∩B| = 2, |A|+|B| = 6.
        let pred: [u8; 5] = [1, 1, 1, 0, 0];
        let truth: [u8; 5] = [0, 1, 1, 1, 0];
        let d = dice_per_class(&pred, &truth, &[0, 1]).unwrap();
        assert_eq!(d[1], Some(4.0 / 6.0));
        // Background: pred {3,4}, truth {0,4}: overlap 1, sizes 2+2.
        assert_eq!(d[0], Some(0.5));
    }

    #[test]
    fn empty_class_conventions() {
        let pred: [u32; 3] = [1, 1, 0];
        let truth: [u32; 3] = [1, 0, 0];
        let excl = dice_per_class(&pred, &truth, &[1, 2]).unwrap();
        assert_eq!(excl, vec![Some(2.0 / 3.0), None]);
        let one = dice_per_class_with(&pred, &truth, &[1, 2], EmptyClass::CountAsOne).unwrap();
        assert_eq!(one, vec![Some(2.0 / 3.0), Some(1.0)]);
        // Present in only one map is a miss under both conventions.
        let miss = dice_per_class_with(&[2u8, 0], &[0u8, 0], &[2], EmptyClass::CountAsOne).unwrap();
        assert_eq!(miss, vec![Some(0.0)]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(dice_per_class(&[1u8, 2], &[1u8], &[1]).is_err());
        assert!(dice_per_class(&[1u8], &[1u8], &[1, 1]).is_err());
        assert!(dice_per_class(&[1u32], &[1u32], &[u32::MAX]).is_err());
    }

    #[test]
    fn table_means_skip_missing() {
        let mut t = DiceTable::new(["liver", "spleen"]);
        t.add_case("a", vec![Some(0.8), None]).unwrap();
        t.add_case("b", vec![Some(0.6), Some(0.5)]).unwrap();
        assert!(t.add_case("c", vec![Some(0.1)]).is_err());
        let means = t.organ_means();
        assert!((means[0].unwrap() - 0.7).abs() < 1e-15);
        assert_eq!(means[1], Some(0.5));
        assert!((t.mean().unwrap() - 0.6).abs() < 1e-15);
    }
}
