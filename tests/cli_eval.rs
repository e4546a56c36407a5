//! `lrc eval` end to end: hand-made masks with known overlaps, scored by the binary and by an
//! independent count here.

use std::path::Path;
use std::process::{Command, Output};

use lrc::data::Geometry;
use lrc::data::nifti::write_labels;
use lrc::rng::Rng;
use serde_json::Value;

const DIMS: [usize; 3] = [3, 7, 9];

fn geometry() -> Geometry {
    // Oblique-free but non-trivial: LPS-like signs, anisotropic spacing, an offset.
    let affine = [
        [-0.8, 0.0, 0.0, 120.5],
        [0.0, -0.75, 0.0, 98.25],
        [0.0, 0.0, 2.5, -301.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    Geometry::from_affine(DIMS, affine)
}

fn lrc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lrc"))
        .args(args)
        .output()
        .expect("run lrc")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Labels 0..=3 with blobs, seeded; the prediction flips a fraction of voxels.
fn masks(seed: u64, flip_fraction: f64, max_label: u8) -> (Vec<u8>, Vec<u8>) {
    let n: usize = DIMS.iter().product();
    let mut rng = Rng::new(seed);
    let truth: Vec<u8> = (0..n)
        .map(|i| {
            let x = i % DIMS[2];
            // Bands of labels along x, so that every class has a solid block.
            ((x * (max_label as usize + 1)) / DIMS[2]) as u8
        })
        .collect();
    let pred: Vec<u8> = truth
        .iter()
        .map(|&t| {
            if rng.uniform() < flip_fraction {
                rng.below(max_label as u64 + 1) as u8
            } else {
                t
            }
        })
        .collect();
    (truth, pred)
}

/// Dice of class `c` by direct counting; `None` when absent from both.
fn dice_by_hand(pred: &[u8], truth: &[u8], c: u8) -> Option<f64> {
    let mut p = 0u64;
    let mut t = 0u64;
    let mut both = 0u64;
    for (&a, &b) in pred.iter().zip(truth) {
        if a == c {
            p += 1;
        }
        if b == c {
            t += 1;
        }
        if a == c && b == c {
            both += 1;
        }
    }
    (p + t > 0).then(|| 2.0 * both as f64 / (p + t) as f64)
}

fn round4(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

fn write_dataset_json(path: &Path) {
    let json = r#"{"labels": {"background": 0, "liver": 1, "spleen": 2, "kidney": 3},
                   "channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}"#;
    std::fs::write(path, json).unwrap();
}

fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first} in\n{table}"))
        .split_whitespace()
        .collect()
}

struct Cases {
    dir: tempfile::TempDir,
    /// (case, truth, pred)
    cases: Vec<(String, Vec<u8>, Vec<u8>)>,
}

/// Three cases: case_a and case_b with all classes, case_c without class 3 in either mask.
/// Truth under DATASET/labelsTr with DATASET/dataset.json; predictions under pred/ named
/// CASE.nii.gz, CASE_0000.nii.gz and CASE.nii (all three pairing styles).
fn make_cases() -> Cases {
    let dir = tempfile::tempdir().unwrap();
    let truth_dir = dir.path().join("DATASET/labelsTr");
    let pred_dir = dir.path().join("pred");
    std::fs::create_dir_all(&truth_dir).unwrap();
    std::fs::create_dir_all(&pred_dir).unwrap();
    write_dataset_json(&dir.path().join("DATASET/dataset.json"));
    let g = geometry();
    let (ta, pa) = masks(1, 0.2, 3);
    let (tb, pb) = masks(2, 0.5, 3);
    let (tc, pc) = masks(3, 0.3, 2);
    let cases = vec![
        ("case_a".to_string(), ta, pa, "case_a.nii.gz"),
        ("case_b".to_string(), tb, pb, "case_b_0000.nii.gz"),
        ("case_c".to_string(), tc, pc, "case_c.nii"),
    ];
    for (name, t, p, pred_name) in &cases {
        write_labels(truth_dir.join(format!("{name}.nii.gz")), t, &g).unwrap();
        write_labels(pred_dir.join(pred_name), p, &g).unwrap();
    }
    Cases {
        dir,
        cases: cases.into_iter().map(|(n, t, p, _)| (n, t, p)).collect(),
    }
}

#[test]
fn dice_table_and_json_match_hand_counts() {
    let c = make_cases();
    let root = c.dir.path();
    let json_path = root.join("out.json");
    let out = lrc(&[
        "eval",
        "--pred",
        root.join("pred").to_str().unwrap(),
        "--truth",
        root.join("DATASET/labelsTr").to_str().unwrap(),
        "--json",
        json_path.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");

    let json: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(json["organs"], serde_json::json!(["liver", "spleen", "kidney"]));
    assert_eq!(json["label_values"], serde_json::json!([1, 2, 3]));
    assert_eq!(json["empty"], "exclude");
    assert!(json["label_file"].as_str().unwrap().ends_with("dataset.json"));
    let header = row(&stdout, "case");
    assert_eq!(header, vec!["case", "liver", "spleen", "kidney", "mean"]);

    let classes = [1u8, 2, 3];
    let mut per_organ: Vec<Vec<f64>> = vec![Vec::new(); 3];
    for (i, (name, truth, pred)) in c.cases.iter().enumerate() {
        let case_json = &json["cases"][i];
        assert_eq!(case_json["case"], name.as_str());
        let cells = row(&stdout, name);
        let mut present = Vec::new();
        for (o, &class) in classes.iter().enumerate() {
            let expected = dice_by_hand(pred, truth, class);
            match expected {
                Some(d) => {
                    // JSON values are rounded to 4 decimals; the same rounding of the exact
                    // count ratio must give the same number (both sides round one f64).
                    assert_eq!(
                        case_json["dice"][o].as_f64().unwrap(),
                        round4(d),
                        "{name} class {class}"
                    );
                    assert_eq!(cells[o + 1], format!("{d:.4}"), "{name} class {class}");
                    per_organ[o].push(d);
                    present.push(d);
                }
                None => {
                    assert!(case_json["dice"][o].is_null(), "{name} class {class}");
                    assert_eq!(cells[o + 1], "-");
                }
            }
        }
        let case_mean = present.iter().sum::<f64>() / present.len() as f64;
        assert_eq!(cells[4], format!("{case_mean:.4}"));
    }
    // case_c has no class 3 at all: the kidney mean is over case_a and case_b only.
    assert_eq!(per_organ[2].len(), 2);
    let organ_means: Vec<f64> = per_organ
        .iter()
        .map(|v| v.iter().sum::<f64>() / v.len() as f64)
        .collect();
    let footer = row(&stdout, "mean");
    for o in 0..3 {
        assert_eq!(json["organ_means"][o].as_f64().unwrap(), round4(organ_means[o]));
        assert_eq!(footer[o + 1], format!("{:.4}", organ_means[o]));
    }
    let overall = organ_means.iter().sum::<f64>() / 3.0;
    assert_eq!(json["mean"].as_f64().unwrap(), round4(overall));
    assert_eq!(footer[4], format!("{overall:.4}"));
    // The flipped masks are genuinely imperfect, so the numbers above test something.
    assert!(overall < 0.95 && overall > 0.3, "{overall}");
}

#[test]
fn empty_one_and_background_options() {
    let c = make_cases();
    let root = c.dir.path();
    let json_path = root.join("one.json");
    let out = lrc(&[
        "eval",
        "--pred",
        root.join("pred").to_str().unwrap(),
        "--truth",
        root.join("DATASET/labelsTr").to_str().unwrap(),
        "--json",
        json_path.to_str().unwrap(),
        "--empty",
        "one",
        "--include-background",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(
        json["organs"],
        serde_json::json!(["background", "liver", "spleen", "kidney"])
    );
    let (_, truth_c, pred_c) = &c.cases[2];
    let case_c = &json["cases"][2]["dice"];
    assert_eq!(
        case_c[3].as_f64(),
        Some(1.0),
        "class 3 absent from both masks of case_c"
    );
    assert_eq!(
        case_c[0].as_f64().unwrap(),
        round4(dice_by_hand(pred_c, truth_c, 0).unwrap())
    );
}

#[test]
fn default_json_goes_into_the_prediction_folder_and_names_fall_back() {
    let dir = tempfile::tempdir().unwrap();
    let (pred_dir, truth_dir) = (dir.path().join("p"), dir.path().join("t"));
    std::fs::create_dir_all(&pred_dir).unwrap();
    std::fs::create_dir_all(&truth_dir).unwrap();
    let g = geometry();
    let (t, p) = masks(4, 0.1, 2);
    write_labels(truth_dir.join("x.nii.gz"), &t, &g).unwrap();
    write_labels(pred_dir.join("x.nii.gz"), &p, &g).unwrap();
    // An unpaired prediction is reported, not scored.
    write_labels(pred_dir.join("lonely.nii.gz"), &p, &g).unwrap();
    let out = lrc(&[
        "eval",
        "--pred",
        pred_dir.to_str().unwrap(),
        "--truth",
        truth_dir.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stderr.contains("lonely.nii.gz"), "{stderr}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(pred_dir.join("dice.json")).unwrap()).unwrap();
    assert_eq!(json["organs"], serde_json::json!(["class 1", "class 2"]));
    assert_eq!(json["cases"].as_array().unwrap().len(), 1);
    assert!(
        json["unpaired_predictions"][0]
            .as_str()
            .unwrap()
            .ends_with("lonely.nii.gz")
    );
    assert_eq!(
        json["cases"][0]["dice"][1].as_f64().unwrap(),
        round4(dice_by_hand(&p, &t, 2).unwrap())
    );
}

#[test]
fn grid_mismatches_name_the_file_and_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let (pred_dir, truth_dir) = (dir.path().join("p"), dir.path().join("t"));
    std::fs::create_dir_all(&pred_dir).unwrap();
    std::fs::create_dir_all(&truth_dir).unwrap();
    let g = geometry();
    let (t, p) = masks(5, 0.1, 2);
    write_labels(truth_dir.join("a.nii.gz"), &t, &g).unwrap();
    let mut shifted = g.clone();
    shifted.affine[0][3] += 0.01; // 10 µm: ten times the 1e-3 mm tolerance
    write_labels(pred_dir.join("a.nii.gz"), &p, &shifted).unwrap();
    let out = lrc(&[
        "eval",
        "--pred",
        pred_dir.to_str().unwrap(),
        "--truth",
        truth_dir.to_str().unwrap(),
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("p/a.nii.gz") && stderr.contains("affine"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let small = Geometry::from_affine([2, 7, 9], g.affine);
    write_labels(pred_dir.join("a.nii.gz"), &p[..2 * 7 * 9], &small).unwrap();
    let out = lrc(&[
        "eval",
        "--pred",
        pred_dir.to_str().unwrap(),
        "--truth",
        truth_dir.to_str().unwrap(),
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("p/a.nii.gz") && stderr.contains("shape 2 x 7 x 9"),
        "{stderr}"
    );
}

#[test]
fn no_pairs_is_an_error_listing_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let (pred_dir, truth_dir) = (dir.path().join("p"), dir.path().join("t"));
    std::fs::create_dir_all(&pred_dir).unwrap();
    std::fs::create_dir_all(&truth_dir).unwrap();
    let g = geometry();
    let (t, p) = masks(6, 0.1, 2);
    write_labels(truth_dir.join("one.nii.gz"), &t, &g).unwrap();
    write_labels(pred_dir.join("two.nii.gz"), &p, &g).unwrap();
    let out = lrc(&[
        "eval",
        "--pred",
        pred_dir.to_str().unwrap(),
        "--truth",
        truth_dir.to_str().unwrap(),
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("two.nii.gz") && stderr.contains("one.nii.gz"),
        "{stderr}"
    );

    // Two files naming one case in a folder are refused rather than one picked silently.
    write_labels(pred_dir.join("one.nii.gz"), &p, &g).unwrap();
    write_labels(pred_dir.join("one_0000.nii.gz"), &p, &g).unwrap();
    let out = lrc(&[
        "eval",
        "--pred",
        pred_dir.to_str().unwrap(),
        "--truth",
        truth_dir.to_str().unwrap(),
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("same case one"), "{stderr}");
}
