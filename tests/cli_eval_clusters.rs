//! `lrc eval-clusters` end to end: a tiny synthetic store with regions, a two-step LRC
//! checkpoint, and the scores of the checkpoint and of its random initialisation.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use lrc::data::dataset::discover;
use lrc::data::prep::PrepConfig;
use lrc::data::store::{StoreOptions, write_store};
use lrc::superpixel::{SuperpixelConfig, regions_for_slice};
use serde_json::Value;

fn lrc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lrc"))
        .args(args)
        .output()
        .expect("run lrc")
}

fn check_ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    stdout
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Setup {
    dir: tempfile::TempDir,
    store: PathBuf,
    model: PathBuf,
}

/// Two 8-slice 96 x 96 phantoms, prepared at 5 x 2 x 2 mm with default superpixel regions, and a
/// 2-step LRC checkpoint of a 3-level U-Net of base width 4.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    check_ok(&lrc(&[
        "synth",
        "-o",
        s(&data),
        "--cases",
        "2",
        "--region",
        "abdomen",
        "--slices",
        "8",
        "--size",
        "96",
    ]));
    let store = dir.path().join("store");
    let cfg = PrepConfig {
        spacing: [5.0, 2.0, 2.0],
        regions: Some(Arc::new(|img: &[f32], h: usize, w: usize| {
            regions_for_slice(img, h, w, &SuperpixelConfig::default())
        })),
        ..PrepConfig::default()
    };
    write_store(&discover(&data).unwrap(), &store, &cfg, &StoreOptions::default()).unwrap();
    let model = dir.path().join("m.safetensors");
    check_ok(&lrc(&pretrain_args(&store, &model, &[])));
    Setup { dir, store, model }
}

/// `lrc eval-clusters` of the setup's model on its store, with `extra` options.
fn eval_clusters(st: &Setup, extra: &[&str]) -> Output {
    let mut args = vec!["eval-clusters", "--model", s(&st.model), "--data", s(&st.store)];
    args.extend_from_slice(extra);
    lrc(&args)
}

/// `lrc pretrain local` of the 2-step checkpoint, with `extra` options.
fn pretrain_args<'a>(store: &'a Path, model: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "pretrain",
        "local",
        "--data",
        s(store),
        "-o",
        s(model),
        "--steps",
        "2",
        "--batch",
        "2",
        "--crop",
        "32",
        "--base",
        "4",
        "--depth",
        "3",
        "--samples",
        "4",
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    args
}

/// A store whose images hold NaN (damaged on disk) is an error naming the store, case and slice,
/// not a k-means failure.
#[test]
fn a_damaged_image_names_the_store() {
    let st = setup();
    let store = lrc::data::store::SliceStore::open(&st.store).unwrap();
    for record in store.cases() {
        let path = st.store.join(&record.file);
        let mut bytes = std::fs::read(&path).unwrap();
        let image_bytes = record.slices * record.height * record.width * 4;
        bytes[..image_bytes].fill(0xFF); // every image value a NaN
        std::fs::write(&path, bytes).unwrap();
    }
    let out = eval_clusters(&st, &["--slices", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(s(&st.store)) && stderr.contains("slice") && stderr.contains("non-finite value"),
        "{stderr}"
    );
}

/// A repeated pre-training command must not discard the finished run: without --resume or
/// --overwrite it is an error naming the file, and the checkpoint stays as it was.
#[test]
fn a_second_run_into_the_same_output_needs_resume_or_overwrite() {
    let st = setup();
    let before = std::fs::read(&st.model).unwrap();
    let again = lrc(&pretrain_args(&st.store, &st.model, &[]));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success(),
        "a repeated run replaced {}",
        st.model.display()
    );
    assert!(
        stderr.contains(s(&st.model)) && stderr.contains("--resume") && stderr.contains("--overwrite"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&st.model).unwrap(), before, "the checkpoint changed");
    let resumed = check_ok(&lrc(&pretrain_args(&st.store, &st.model, &["--resume"])));
    assert!(resumed.contains("nothing to do"), "{resumed}");
    check_ok(&lrc(&pretrain_args(&st.store, &st.model, &["--overwrite"])));
    let both = lrc(&pretrain_args(&st.store, &st.model, &["--resume", "--overwrite"]));
    assert!(!both.status.success(), "--resume with --overwrite was accepted");
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn check_model(m: &Value, slices: usize) {
    let per_slice = m["slices"].as_array().unwrap();
    assert_eq!(per_slice.len(), slices);
    let (mut ami, mut ari) = (0.0, 0.0);
    for sl in per_slice {
        for key in ["ami", "ari"] {
            let v = sl[key].as_f64().unwrap();
            assert!((-1.0..=1.0).contains(&v), "{key} = {v}");
        }
        assert!(sl["k"].as_u64().unwrap() >= 2);
        assert!(sl["case"].as_str().unwrap().starts_with("abdomen_"));
        ami += sl["ami"].as_f64().unwrap();
        ari += sl["ari"].as_f64().unwrap();
    }
    // The reported means are the means of the per-slice scores.
    let n = slices as f64;
    assert!((m["ami"].as_f64().unwrap() - ami / n).abs() < 1e-12);
    assert!((m["ari"].as_f64().unwrap() - ari / n).abs() < 1e-12);
    assert!(m["ami_std"].as_f64().unwrap() >= 0.0 && m["ari_std"].as_f64().unwrap() >= 0.0);
}

#[test]
fn scores_checkpoint_and_baseline_on_a_tiny_store() {
    let st = setup();
    let json = st.dir.path().join("clusters.json");
    let stdout = check_ok(&eval_clusters(
        &st,
        &["--slices", "4", "--seed", "3", "--json", s(&json)],
    ));
    assert!(
        stdout.contains("LRC (step 2)") && stdout.contains("random init."),
        "{stdout}"
    );
    let report = read_json(&json);
    assert_eq!(report["slices_requested"], 4);
    assert_eq!(report["slices_scored"], 4);
    assert_eq!(report["regions"], "stored");
    assert_eq!(report["seed"], 3);
    let models = report["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(
        (models[0]["model"].as_str(), models[0]["step"].as_u64()),
        (Some("lrc"), Some(2))
    );
    assert_eq!(
        (models[1]["model"].as_str(), models[1]["step"].as_u64()),
        (Some("random"), Some(0))
    );
    check_model(&models[0], 4);
    check_model(&models[1], 4);
    // Slices are spread over both cases: two each.
    let cases: Vec<&str> = models[0]["slices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["case"].as_str().unwrap())
        .collect();
    assert_eq!(cases.iter().filter(|c| **c == "abdomen_000").count(), 2, "{cases:?}");
    // Both models are scored on the same slices.
    assert_eq!(
        models[0]["slices"].as_array().unwrap().len(),
        models[1]["slices"].as_array().unwrap().len()
    );
    for (a, b) in models[0]["slices"]
        .as_array()
        .unwrap()
        .iter()
        .zip(models[1]["slices"].as_array().unwrap())
    {
        assert_eq!((&a["case"], &a["z"], &a["k"]), (&b["case"], &b["z"], &b["k"]));
    }

    // One case only, no baseline, default JSON beside the model; the same seed gives the same
    // scores for the slices the two runs share.
    let stdout = check_ok(&eval_clusters(
        &st,
        &[
            "--slices",
            "2",
            "--cases",
            "abdomen_001",
            "--seed",
            "3",
            "--no-baseline",
        ],
    ));
    assert!(!stdout.contains("random init."), "{stdout}");
    let again = read_json(&st.dir.path().join("m.clusters.json"));
    let models2 = again["models"].as_array().unwrap();
    assert_eq!(models2.len(), 1);
    check_model(&models2[0], 2);
    for sl in models2[0]["slices"].as_array().unwrap() {
        assert_eq!(sl["case"], "abdomen_001");
        let same = models[0]["slices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["case"] == sl["case"] && o["z"] == sl["z"]);
        if let Some(o) = same {
            assert_eq!(o["ami"], sl["ami"]);
            assert_eq!(o["ari"], sl["ari"]);
        }
    }

    let out = eval_clusters(&st, &["--cases", "no_such_case"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no_such_case") && stderr.contains("abdomen_000"),
        "{stderr}"
    );
}

#[test]
fn store_without_regions_gets_them_computed_and_bad_model_is_refused() {
    let st = setup();
    // `lrc prep` writes no regions: eval-clusters computes the default superpixels per slice.
    let plain = st.dir.path().join("plain_store");
    check_ok(&lrc(&[
        "prep",
        "-i",
        s(&st.dir.path().join("data")),
        "-o",
        s(&plain),
        "--spacing",
        "5,2,2",
    ]));
    let json = st.dir.path().join("plain.json");
    check_ok(&lrc(&[
        "eval-clusters",
        "--model",
        s(&st.model),
        "--data",
        s(&plain),
        "--slices",
        "2",
        "--no-baseline",
        "--json",
        s(&json),
    ]));
    let report = read_json(&json);
    assert_eq!(report["regions"], "computed");
    check_model(&report["models"][0], 2);

    let out = lrc(&[
        "eval-clusters",
        "--model",
        s(&st.store.join("store.json")),
        "--data",
        s(&st.store),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("store.json") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
