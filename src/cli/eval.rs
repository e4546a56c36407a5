//! `lrc eval`: Dice per organ of predicted masks against reference masks, files paired by case
//! name, every pair checked to lie on the same voxel grid.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::data::dataset::parse_dataset_json;
use crate::data::nifti::read_labels;
use crate::data::prep::GEOMETRY_TOLERANCE_MM;
use crate::error::{Error, Result};
use crate::metrics::dice::{DiceReport, DiceTable, EmptyClass, OverlapCounts};

use super::predict::{case_name, is_nifti};

/// How `lrc eval` scores a class that neither the prediction nor the truth of a case contains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EmptyMode {
    /// Leave it out of that case and of every mean (a case without the organ says nothing).
    Exclude,
    /// Score it 1.0 (a correct "nothing there").
    One,
}

impl EmptyMode {
    fn convention(self) -> EmptyClass {
        match self {
            EmptyMode::Exclude => EmptyClass::Exclude,
            EmptyMode::One => EmptyClass::CountAsOne,
        }
    }

    fn name(self) -> &'static str {
        match self {
            EmptyMode::Exclude => "exclude",
            EmptyMode::One => "one",
        }
    }
}

/// Options of `lrc eval`.
#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// Folder of predicted masks (.nii / .nii.gz), e.g. written by `lrc predict`.
    #[arg(long)]
    pub pred: PathBuf,
    /// Folder of reference masks, e.g. DATASET/labelsTr.
    #[arg(long)]
    pub truth: PathBuf,
    /// dataset.json naming the labels (default: TRUTH/dataset.json, else TRUTH/../dataset.json).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Summary JSON (default: PRED/dice.json).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Score the background (label 0) as a class too.
    #[arg(long)]
    pub include_background: bool,
    /// Score of a class absent from both masks of a case: left out (exclude) or 1.0 (one).
    #[arg(long, value_enum, default_value_t = EmptyMode::Exclude)]
    pub empty: EmptyMode,
}

/// A prediction and its reference mask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub case: String,
    pub pred: PathBuf,
    pub truth: PathBuf,
}

/// The files of the two folders matched by case name.
#[derive(Clone, Debug, Default)]
pub struct Pairing {
    /// Pairs in case-name order.
    pub pairs: Vec<Pair>,
    /// Predictions with no reference mask.
    pub pred_only: Vec<PathBuf>,
    /// Reference masks with no prediction.
    pub truth_only: Vec<PathBuf>,
}

/// The NIfTI files of `dir` by case name ([`case_name`]: `CASE.nii.gz`, `CASE_0000.nii.gz` and
/// `CASE.nii` all name `CASE`); two files with one case name are an error.
fn files_by_case(dir: &Path, what: &str) -> Result<BTreeMap<String, PathBuf>> {
    if !dir.is_dir() {
        return Err(Error::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("{what} folder not found")),
        ));
    }
    let mut by_case: BTreeMap<String, PathBuf> = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if path.is_file() && is_nifti(&path) && !hidden {
            files.push(path);
        }
    }
    files.sort();
    for path in files {
        let case = case_name(&path);
        if let Some(prev) = by_case.get(&case) {
            return Err(Error::format(
                &path,
                format!(
                    "names the same case {case} as {}: keep one file per case in the {what} folder",
                    prev.display()
                ),
            ));
        }
        by_case.insert(case, path);
    }
    Ok(by_case)
}

/// Pairs the NIfTI files of `pred_dir` and `truth_dir` by case name. Fails when no file pairs.
pub fn pair_files(pred_dir: &Path, truth_dir: &Path) -> Result<Pairing> {
    let mut pred = files_by_case(pred_dir, "prediction")?;
    let truth = files_by_case(truth_dir, "truth")?;
    if pred.is_empty() {
        return Err(Error::format(pred_dir, "holds no .nii or .nii.gz files"));
    }
    if truth.is_empty() {
        return Err(Error::format(truth_dir, "holds no .nii or .nii.gz files"));
    }
    let mut pairing = Pairing::default();
    for (case, truth_path) in truth {
        match pred.remove(&case) {
            Some(pred_path) => pairing.pairs.push(Pair {
                case,
                pred: pred_path,
                truth: truth_path,
            }),
            None => pairing.truth_only.push(truth_path),
        }
    }
    pairing.pred_only = pred.into_values().collect();
    if pairing.pairs.is_empty() {
        let names = |v: &[PathBuf]| -> String {
            let shown: Vec<String> = v
                .iter()
                .take(5)
                .map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned())
                .collect();
            let more = if v.len() > 5 {
                format!(", ... ({} in all)", v.len())
            } else {
                String::new()
            };
            format!("{}{more}", shown.join(", "))
        };
        return Err(Error::format(
            pred_dir,
            format!(
                "no prediction here has a reference mask in {} with the same case name (predictions: {}; \
                 references: {}); files pair as CASE.nii.gz, CASE_0000.nii.gz or CASE.nii",
                truth_dir.display(),
                names(&pairing.pred_only),
                names(&pairing.truth_only)
            ),
        ));
    }
    Ok(pairing)
}

/// The label names to use: `explicit`, else `truth/dataset.json`, else `truth/../dataset.json`;
/// returns the file they came from.
pub fn find_label_names(explicit: Option<&Path>, truth_dir: &Path) -> Result<Option<(PathBuf, BTreeMap<u8, String>)>> {
    if let Some(path) = explicit {
        if !path.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "label file (--labels) not found"),
            ));
        }
        return Ok(Some((path.to_path_buf(), parse_dataset_json(path)?.0)));
    }
    let candidates = [
        Some(truth_dir.join("dataset.json")),
        truth_dir.parent().map(|p| p.join("dataset.json")),
    ];
    for path in candidates.into_iter().flatten() {
        if path.is_file() {
            let names = parse_dataset_json(&path)?.0;
            return Ok(Some((path, names)));
        }
    }
    Ok(None)
}

/// Overlap counts of every label value 0..=255 for one pair, after checking that both masks
/// lie on the same grid.
fn count_pair(pair: &Pair) -> Result<OverlapCounts> {
    let truth = read_labels(&pair.truth)?;
    let pred = read_labels(&pair.pred)?;
    if let Some(diff) = truth.geometry.mismatch(&pred.geometry, GEOMETRY_TOLERANCE_MM) {
        return Err(Error::format(
            &pair.pred,
            format!(
                "does not lie on the grid of its reference {}: {diff}",
                pair.truth.display()
            ),
        ));
    }
    let all: Vec<u32> = (0..=255).collect();
    let mut counts = OverlapCounts::new(&all)?;
    counts.add(&pred.data, &truth.data)?;
    Ok(counts)
}

/// Everything `lrc eval` reports, as written to its JSON file.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub pred_dir: PathBuf,
    pub truth_dir: PathBuf,
    /// The dataset.json the organ names came from, if any.
    pub label_file: Option<PathBuf>,
    /// The label value of each organ column.
    pub label_values: Vec<u8>,
    /// `exclude` or `one`: the score of a class absent from both masks.
    pub empty: &'static str,
    pub include_background: bool,
    /// Dice per organ per case, organ means over cases, and the mean over organs; 4 decimals.
    #[serde(flatten)]
    pub dice: DiceReport,
    /// Predictions without a reference, and references without a prediction.
    pub unpaired_predictions: Vec<PathBuf>,
    pub unpaired_references: Vec<PathBuf>,
}

/// The result of [`evaluate`]: the table (for printing) and its report.
pub struct Evaluation {
    pub table: DiceTable,
    pub report: EvalReport,
    /// Label values found in the masks that the dataset.json does not name.
    pub undeclared: Vec<u8>,
}

/// Scores every pair of `args.pred` and `args.truth`.
///
/// The classes are the labels dataset.json declares together with every label found in any
/// mask (so that no label is silently left out), without 0 unless `include_background`.
pub fn evaluate(args: &EvalArgs) -> Result<Evaluation> {
    let pairing = pair_files(&args.pred, &args.truth)?;
    let names = find_label_names(args.labels.as_deref(), &args.truth)?;
    let convention = args.empty.convention();

    let mut per_case: Vec<(String, OverlapCounts)> = Vec::with_capacity(pairing.pairs.len());
    for pair in &pairing.pairs {
        per_case.push((pair.case.clone(), count_pair(pair)?));
    }

    let mut present = [false; 256];
    for (_, counts) in &per_case {
        for (v, (&p, &t)) in counts.predicted().iter().zip(counts.truth()).enumerate() {
            present[v] |= p > 0 || t > 0;
        }
    }
    let declared: BTreeMap<u8, String> = names.as_ref().map(|(_, n)| n.clone()).unwrap_or_default();
    let mut values: Vec<u8> = (0..=255u8)
        .filter(|&v| present[v as usize] || declared.contains_key(&v))
        .filter(|&v| v != 0 || args.include_background)
        .collect();
    if args.include_background && !values.contains(&0) {
        values.insert(0, 0);
    }
    let undeclared: Vec<u8> = if names.is_some() {
        values.iter().copied().filter(|v| !declared.contains_key(v)).collect()
    } else {
        Vec::new()
    };
    let organ_names: Vec<String> = values
        .iter()
        .map(|v| declared.get(v).cloned().unwrap_or_else(|| format!("class {v}")))
        .collect();

    let mut table = DiceTable::new(organ_names);
    for (case, counts) in &per_case {
        let all = counts.dice(convention);
        table.add_case(case.clone(), values.iter().map(|&v| all[v as usize]).collect())?;
    }
    let report = EvalReport {
        pred_dir: args.pred.clone(),
        truth_dir: args.truth.clone(),
        label_file: names.map(|(p, _)| p),
        label_values: values,
        empty: args.empty.name(),
        include_background: args.include_background,
        dice: table.report(),
        unpaired_predictions: pairing.pred_only,
        unpaired_references: pairing.truth_only,
    };
    Ok(Evaluation {
        table,
        report,
        undeclared,
    })
}

/// The JSON file of `lrc eval`: `--json`, else `PRED/dice.json`.
pub fn json_path(args: &EvalArgs) -> PathBuf {
    args.json.clone().unwrap_or_else(|| args.pred.join("dice.json"))
}

fn list_unpaired(what: &str, files: &[PathBuf]) {
    if files.is_empty() {
        return;
    }
    eprintln!("warning: {} {what} (not scored):", files.len());
    for f in files {
        eprintln!("  {}", f.display());
    }
}

/// Runs `lrc eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    let path = json_path(&args);
    // Every file the evaluation may read: the masks of both folders and the label file.
    let mut inputs: Vec<std::path::PathBuf> = [&args.pred, &args.truth]
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())))
        .collect();
    inputs.extend(args.labels.clone());
    inputs.push(args.truth.join("dataset.json"));
    inputs.push(args.truth.join("../dataset.json"));
    let inputs: Vec<&std::path::Path> = inputs.iter().map(|p| p.as_path()).collect();
    crate::output::refuse_overwriting_input(&path, &inputs)?;
    crate::output::check_writable(&path)?;
    let eval = evaluate(&args)?;
    let report = &eval.report;
    list_unpaired("prediction(s) without a reference mask", &report.unpaired_predictions);
    list_unpaired("reference mask(s) without a prediction", &report.unpaired_references);
    if let Some(file) = &report.label_file {
        if !eval.undeclared.is_empty() {
            eprintln!(
                "warning: label value(s) {:?} occur in the masks but are not named in {}; scored as \"class N\"",
                eval.undeclared,
                file.display()
            );
        }
    } else {
        eprintln!(
            "note: no dataset.json found (--labels, {0}/dataset.json or {0}/../dataset.json); organs are named by value",
            args.truth.display()
        );
    }
    if report.label_values.is_empty() {
        eprintln!("warning: the masks hold no foreground label and no dataset.json names one: nothing to score");
    }
    // The file first: printing can fail (a closed pipe), the result must not be lost with it.
    let text = serde_json::to_string_pretty(report).map_err(|e| Error::format(&path, e.to_string()))?;
    std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))?;
    print!("{}", eval.table.to_text());
    println!(
        "eval: {} case(s), {} class(es), empty classes {}; wrote {}",
        report.dice.cases.len(),
        report.label_values.len(),
        if args.empty == EmptyMode::Exclude {
            "left out"
        } else {
            "scored 1.0"
        },
        path.display()
    );
    Ok(())
}
