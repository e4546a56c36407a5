//! `lrc synth` and `lrc prep` end to end, as a user runs them.

use std::path::Path;
use std::process::{Command, Output};

use lrc::data::store::SliceStore;

fn lrc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lrc"))
        .args(args)
        .output()
        .expect("run lrc")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn synth_then_prep_end_to_end_with_a_bad_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds");
    let o = lrc(&[
        "synth",
        "-o",
        p(&ds),
        "--cases",
        "3",
        "--region",
        "head",
        "--seed",
        "4",
        "--slices",
        "16",
        "--size",
        "96",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("wrote 3 head case(s)"));

    let store = tmp.path().join("store");
    let o = lrc(&["prep", "-i", p(&ds), "-o", p(&store), "--threads", "2"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("3 case(s) written"), "{:?}", text(&o));
    let s = SliceStore::open(&store).unwrap();
    assert_eq!(s.cases().len(), 3);
    assert_eq!(s.label_names().get(&9).map(String::as_str), Some("optic_chiasm"));

    // A truncated volume stops the run with exit 1 and names the file and the problem.
    let bad = ds.join("imagesTr").join("head_009_0000.nii.gz");
    let good = std::fs::read(ds.join("imagesTr").join("head_000_0000.nii.gz")).unwrap();
    std::fs::write(&bad, &good[..good.len() / 2]).unwrap();
    std::fs::copy(ds.join("labelsTr/head_000.nii.gz"), ds.join("labelsTr/head_009.nii.gz")).unwrap();
    let o = lrc(&["prep", "-i", p(&ds), "-o", p(&store)]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out} {err}");
    assert!(
        err.contains("error:") && err.contains("head_009_0000.nii.gz") && err.contains("truncated gzip"),
        "{err}"
    );
    assert!(err.contains("rerun the same command to resume"), "{err}");
    // What was written stays valid; --skip-bad finishes and summarises.
    assert_eq!(SliceStore::open(&store).unwrap().cases().len(), 3);
    let o = lrc(&["prep", "-i", p(&ds), "-o", p(&store), "--skip-bad"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out} {err}");
    assert!(out.contains("skipped 1 case(s)") && out.contains("head_009"), "{out}");
    assert!(out.contains("3 already in the store"), "{out}");
}

#[test]
fn prep_errors_are_plain_messages_with_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = lrc(&["prep", "-i", p(&empty), "-o", p(&tmp.path().join("s"))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("no NIfTI volumes found"), "{:?}", text(&o));
    let o = lrc(&[
        "prep",
        "-i",
        p(&empty),
        "-o",
        p(&tmp.path().join("s")),
        "--spacing",
        "2.5,1",
    ]);
    assert_eq!(o.status.code(), Some(2), "clap rejects a malformed spacing");
    let o = lrc(&["synth", "-o", p(&tmp.path().join("x")), "--region", "pelvis"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("unknown region"), "{:?}", text(&o));
}
