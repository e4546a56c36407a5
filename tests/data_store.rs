//! The slice store: bit-identical read-back, regions, resume after a kill, and bad input
//! (a corrupt volume, mismatched labels, non-CT images, empty folders) answered clearly.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lrc::Error;
use lrc::data::affine::Mat4;
use lrc::data::crop::{pad_to_multiple, random_crop, unpad};
use lrc::data::dataset::{Dataset, discover};
use lrc::data::intensity::Normalization;
use lrc::data::nifti::{self, VoxelType};
use lrc::data::prep::{PrepConfig, RegionFn, preprocess_volume};
use lrc::data::store::{SliceStore, StoreOptions, fit_zscore, write_store};
use lrc::data::synth::{DatasetOptions, Region, SynthConfig, write_dataset};
use lrc::data::{Geometry, LabelVolume, Volume};
use lrc::rng::Rng;

fn small_synth(dir: &Path, cases: usize, region: Region) -> Dataset {
    let cfg = SynthConfig {
        region,
        slices: 16,
        size: 80,
        seed: 3,
    };
    let opts = DatasetOptions {
        cases,
        threads: 2,
        ..Default::default()
    };
    write_dataset(&cfg, dir, &opts).unwrap();
    discover(dir).unwrap()
}

/// A region map that depends on the slice content: intensity bands, 0 for air.
fn banded_regions() -> RegionFn {
    Arc::new(|img: &[f32], _h: usize, _w: usize| {
        img.iter()
            .map(|&v| if v < 0.25 { 0 } else { 1 + (v * 10.0) as u16 })
            .collect()
    })
}

fn opts(threads: usize, skip_bad: bool) -> StoreOptions {
    StoreOptions {
        threads,
        skip_bad,
        progress: false,
    }
}

#[test]
fn store_reads_back_bit_identical_slices_labels_and_regions() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = small_synth(&tmp.path().join("ds"), 3, Region::Abdomen);
    let cfg = PrepConfig {
        regions: Some(banded_regions()),
        ..PrepConfig::default()
    };
    let out = tmp.path().join("store");
    let summary = write_store(&ds, &out, &cfg, &opts(2, false)).unwrap();
    assert_eq!(summary.written.len(), 3);
    let store = SliceStore::open(&out).unwrap();
    assert_eq!(store.cases().len(), 3);
    assert_eq!(store.label_names().get(&1).map(String::as_str), Some("liver"));
    assert_eq!(store.pad_value(), 0.0);
    let mut total = 0;
    for (c, case) in ds.cases.iter().enumerate() {
        let v = nifti::read_volume(&case.image).unwrap();
        let l = nifti::read_labels(case.labels.as_ref().unwrap()).unwrap();
        let p = preprocess_volume(&v, Some(&l), &cfg).unwrap();
        let range = store.case_range(c);
        assert_eq!(store.cases()[c].name, case.name);
        assert_eq!(range.len(), p.dims()[0]);
        for (z, i) in range.enumerate() {
            let s = store.slice(i);
            assert_eq!((s.case, s.z, s.h, s.w), (c, z, p.dims()[1], p.dims()[2]));
            let want = p.image_slice(z);
            assert!(
                s.image.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()),
                "slice {i}"
            );
            assert_eq!(s.labels.unwrap(), p.label_slice(z).unwrap());
            let regions: Vec<u16> = want
                .iter()
                .map(|&v| if v < 0.25 { 0 } else { 1 + (v * 10.0) as u16 })
                .collect();
            assert_eq!(s.regions.unwrap(), &regions[..]);
            total += 1;
        }
        // The record keeps the original geometry: predictions map back onto the source grid.
        let t = &store.cases()[c].transform;
        assert_eq!(t.original, v.geometry);
        let back = t.labels_to_original(p.labels.as_ref().unwrap()).unwrap();
        assert_eq!(back.geometry.dims, l.geometry.dims);
    }
    assert_eq!(total, store.len());
    assert!(store.get(store.len()).is_none());
    // Crops and padding work on store views with one window for all three maps.
    let s = store.slice(store.len() / 2);
    let mut rng = Rng::new(1);
    let crop = random_crop(&mut rng, &s, 64, 64, store.pad_value());
    assert_eq!(crop.image.len(), 64 * 64);
    let (padded, pad) = pad_to_multiple(s.image, s.h, s.w, 16, store.pad_value());
    assert_eq!((pad.padded_h % 16, pad.padded_w % 16), (0, 0));
    assert_eq!(unpad(&padded, &pad), s.image);
}

fn read_dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    v.sort();
    v
}

#[test]
fn prep_resumes_after_a_kill_at_any_point() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = small_synth(&tmp.path().join("ds"), 4, Region::Thorax);
    let cfg = PrepConfig::default();
    let reference = tmp.path().join("reference");
    write_store(&ds, &reference, &cfg, &opts(2, false)).unwrap();

    let out = tmp.path().join("store");
    let first = Dataset {
        cases: ds.cases[..3].to_vec(),
        ..ds.clone()
    };
    write_store(&first, &out, &cfg, &opts(1, false)).unwrap();
    // Simulate a kill: the last record torn mid-line, a half-written temporary case file, and
    // one case file renamed into place whose record was never appended.
    let index = out.join("cases.jsonl");
    let text = std::fs::read_to_string(&index).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let torn = format!("{}\n{}\n{}", lines[0], lines[1], &lines[2][..lines[2].len() / 2]);
    std::fs::write(&index, torn).unwrap();
    std::fs::write(out.join("cases").join("thorax_003.bin.partial"), b"half").unwrap();
    // The store is readable as it stands: two complete cases.
    assert_eq!(SliceStore::open(&out).unwrap().cases().len(), 2);
    let s = write_store(&ds, &out, &cfg, &opts(2, false)).unwrap();
    assert_eq!(s.already_present, 2);
    assert_eq!(s.written, vec!["thorax_002".to_string(), "thorax_003".to_string()]);
    assert!(
        !read_dir_names(&out.join("cases"))
            .iter()
            .any(|n| n.ends_with(".partial"))
    );
    let a = SliceStore::open(&out).unwrap();
    let b = SliceStore::open(&reference).unwrap();
    assert_eq!(a.len(), b.len());
    for i in 0..a.len() {
        let (x, y) = (a.slice(i), b.slice(i));
        assert!(x.image.iter().zip(y.image).all(|(p, q)| p.to_bits() == q.to_bits()));
        assert_eq!(x.labels, y.labels);
    }
    // A rerun with nothing left to do writes nothing.
    let s = write_store(&ds, &out, &cfg, &opts(2, false)).unwrap();
    assert_eq!((s.written.len(), s.already_present), (0, 4));
}

fn corrupt_copy(src: &Path, dst: &Path) {
    let bytes = std::fs::read(src).unwrap();
    std::fs::write(dst, &bytes[..bytes.len() / 3]).unwrap();
}

#[test]
fn bad_volume_stops_the_run_naming_the_file_and_skip_bad_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ds");
    let ds = small_synth(&dir, 3, Region::Head);
    // A fourth case whose image is a truncated .nii.gz.
    let bad_image: PathBuf = dir.join("imagesTr").join("head_100_0000.nii.gz");
    corrupt_copy(&ds.cases[0].image, &bad_image);
    std::fs::copy(
        ds.cases[0].labels.as_ref().unwrap(),
        dir.join("labelsTr").join("head_100.nii.gz"),
    )
    .unwrap();
    let ds = discover(&dir).unwrap();
    assert_eq!(ds.cases.len(), 4);
    let out = tmp.path().join("store");
    let e = write_store(&ds, &out, &PrepConfig::default(), &opts(1, false)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("head_100_0000.nii.gz") && msg.contains("truncated gzip"),
        "{msg}"
    );
    // Whatever was written before the stop is a valid store.
    let partial = SliceStore::open(&out).unwrap();
    assert!(partial.cases().iter().all(|c| c.name != "head_100"));
    let s = write_store(&ds, &out, &PrepConfig::default(), &opts(2, true)).unwrap();
    assert_eq!(s.skipped.len(), 1);
    assert_eq!(s.skipped[0].0, "head_100");
    assert!(s.skipped[0].1.to_string().contains("truncated gzip"));
    assert_eq!(SliceStore::open(&out).unwrap().cases().len(), 3);
}

fn ct_volume(dims: [usize; 3], a: Mat4) -> Volume {
    let mut rng = Rng::new(9);
    Volume {
        data: (0..dims.iter().product())
            .map(|_| rng.range(-1000.0, 400.0).round() as f32)
            .collect(),
        geometry: Geometry::from_affine(dims, a),
    }
}

const A: Mat4 = [
    [-0.8, 0.0, 0.0, 100.0],
    [0.0, -0.8, 0.0, 50.0],
    [0.0, 0.0, 2.5, -300.0],
    [0.0, 0.0, 0.0, 1.0],
];

fn nnunet_case(dir: &Path, name: &str, image: &Volume, labels: &LabelVolume) {
    std::fs::create_dir_all(dir.join("imagesTr")).unwrap();
    std::fs::create_dir_all(dir.join("labelsTr")).unwrap();
    nifti::write_volume(
        dir.join("imagesTr").join(format!("{name}_0000.nii.gz")),
        image,
        VoxelType::I16,
    )
    .unwrap();
    nifti::write_mask(dir.join("labelsTr").join(format!("{name}.nii.gz")), labels).unwrap();
}

#[test]
fn label_maps_off_their_image_grid_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let v = ct_volume([4, 8, 8], A);
    // Shape differs.
    let dir = tmp.path().join("shape");
    let l = LabelVolume {
        data: vec![0; 4 * 8 * 9],
        geometry: Geometry::from_affine([4, 8, 9], A),
    };
    nnunet_case(&dir, "c", &v, &l);
    let e = write_store(
        &discover(&dir).unwrap(),
        &tmp.path().join("s1"),
        &PrepConfig::default(),
        &opts(1, false),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("labelsTr/c.nii.gz") && e.contains("does not match") && e.contains("shape"),
        "{e}"
    );
    // Same shape, shifted origin.
    let dir = tmp.path().join("affine");
    let mut shifted = A;
    shifted[0][3] += 5.0;
    let l = LabelVolume {
        data: vec![0; 4 * 8 * 8],
        geometry: Geometry::from_affine([4, 8, 8], shifted),
    };
    nnunet_case(&dir, "c", &v, &l);
    let e = write_store(
        &discover(&dir).unwrap(),
        &tmp.path().join("s2"),
        &PrepConfig::default(),
        &opts(1, false),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("affine differs by up to 5.0000 mm"), "{e}");
}

#[test]
fn non_ct_images_are_rejected_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mr");
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng::new(2);
    let mr = Volume {
        data: (0..256).map(|_| rng.range(0.0, 900.0).round() as f32).collect(),
        geometry: Geometry::from_affine([4, 8, 8], A),
    };
    nifti::write_volume(dir.join("t1.nii.gz"), &mr, VoxelType::I16).unwrap();
    let ds = discover(&dir).unwrap();
    let e = write_store(&ds, &tmp.path().join("s"), &PrepConfig::default(), &opts(1, false)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("t1.nii.gz") && msg.contains("do not look like CT") && msg.contains("MR"),
        "{msg}"
    );
    let allow = PrepConfig {
        check_ct: false,
        ..PrepConfig::default()
    };
    write_store(&ds, &tmp.path().join("s2"), &allow, &opts(1, false)).unwrap();
}

#[test]
fn empty_missing_and_malformed_folders_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "no volumes here").unwrap();
    let e = discover(&empty).unwrap_err().to_string();
    assert!(e.contains("empty") && e.contains("no NIfTI volumes found"), "{e}");
    let e = discover(&tmp.path().join("missing")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }) && e.to_string().contains("missing"));
    // nnU-Net layout with a second channel.
    let two = tmp.path().join("two");
    let v = ct_volume([2, 4, 4], A);
    std::fs::create_dir_all(two.join("imagesTr")).unwrap();
    nifti::write_volume(two.join("imagesTr/a_0000.nii.gz"), &v, VoxelType::I16).unwrap();
    nifti::write_volume(two.join("imagesTr/a_0001.nii.gz"), &v, VoxelType::I16).unwrap();
    let e = discover(&two).unwrap_err().to_string();
    assert!(e.contains("a_0001") && e.contains("single CT channel"), "{e}");
    // Region-based labels in dataset.json.
    std::fs::remove_file(two.join("imagesTr/a_0001.nii.gz")).unwrap();
    std::fs::write(
        two.join("dataset.json"),
        r#"{"labels": {"background": 0, "tumor": [1, 2]}}"#,
    )
    .unwrap();
    let e = discover(&two).unwrap_err().to_string();
    assert!(e.contains("dataset.json") && e.contains("region-based"), "{e}");
    // A file_ending that matches none of the files is named with the file that sets it.
    std::fs::write(
        two.join("dataset.json"),
        r#"{"labels": {"background": 0, "liver": 1}, "file_ending": ".nii"}"#,
    )
    .unwrap();
    let e = discover(&two).unwrap_err().to_string();
    assert!(
        e.contains("CASE_0000.nii ") && e.contains("file_ending") && e.contains("dataset.json"),
        "{e}"
    );
    // A missing label file surfaces as that case's read error.
    std::fs::remove_file(two.join("dataset.json")).unwrap();
    std::fs::create_dir_all(two.join("labelsTr")).unwrap();
    let e = write_store(
        &discover(&two).unwrap(),
        &tmp.path().join("s"),
        &PrepConfig::default(),
        &opts(1, false),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("labelsTr/a.nii.gz"), "{e}");
}

#[test]
fn resume_with_another_config_or_into_a_foreign_folder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plain");
    std::fs::create_dir_all(&dir).unwrap();
    nifti::write_volume(dir.join("a.nii"), &ct_volume([3, 6, 6], A), VoxelType::I16).unwrap();
    let ds = discover(&dir).unwrap();
    let out = tmp.path().join("store");
    write_store(&ds, &out, &PrepConfig::default(), &opts(1, false)).unwrap();
    let other = PrepConfig {
        spacing: [3.0, 1.0, 1.0],
        ..PrepConfig::default()
    };
    let e = write_store(&ds, &out, &other, &opts(1, false)).unwrap_err().to_string();
    assert!(e.contains("different configuration"), "{e}");
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("thesis.pdf"), b"x").unwrap();
    let e = write_store(&ds, &foreign, &PrepConfig::default(), &opts(1, false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a slice store"), "{e}");
}

#[cfg(unix)]
#[test]
fn a_volume_whose_file_name_is_not_utf8_is_named() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plain");
    std::fs::create_dir_all(&dir).unwrap();
    let v = ct_volume([2, 4, 4], A);
    nifti::write_volume(dir.join("a.nii"), &v, VoxelType::I16).unwrap();
    // Another file with such a name is no volume and is passed over.
    std::fs::write(dir.join(std::ffi::OsStr::from_bytes(b"notes-\xff.txt")), "x").unwrap();
    assert_eq!(discover(&dir).unwrap().cases.len(), 1);
    nifti::write_volume(
        dir.join(std::ffi::OsStr::from_bytes(b"b-\xff.nii.gz")),
        &v,
        VoxelType::I16,
    )
    .unwrap();
    let e = discover(&dir).unwrap_err().to_string();
    assert!(e.contains("b-") && e.contains("not valid UTF-8"), "{e}");
}

#[test]
fn resume_from_another_input_folder_or_with_other_labels_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = small_synth(&tmp.path().join("ds"), 2, Region::Abdomen);
    let out = tmp.path().join("store");
    write_store(&ds, &out, &PrepConfig::default(), &opts(1, false)).unwrap();
    let before = std::fs::read(out.join("cases.jsonl")).unwrap();
    // The same case names from another folder: a resume would skip them silently.
    let other = small_synth(&tmp.path().join("other"), 3, Region::Abdomen);
    let e = write_store(&other, &out, &PrepConfig::default(), &opts(1, false))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("was prepared from") && e.contains("ds") && e.contains("other"),
        "{e}"
    );
    // The same folder reached through another path resumes.
    let roundabout = Dataset {
        root: tmp.path().join("other").join("..").join("ds"),
        ..ds.clone()
    };
    let s = write_store(&roundabout, &out, &PrepConfig::default(), &opts(1, false)).unwrap();
    assert_eq!((s.written.len(), s.already_present), (0, 2));
    // Label names changed in dataset.json since the store was started.
    let mut relabelled = ds.clone();
    relabelled.label_names.insert(99, "tumour".into());
    let e = write_store(&relabelled, &out, &PrepConfig::default(), &opts(1, false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("labels") && e.contains("tumour"), "{e}");
    assert_eq!(std::fs::read(out.join("cases.jsonl")).unwrap(), before);
}

#[test]
fn zscore_normalisation_is_fitted_on_foreground_and_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = small_synth(&tmp.path().join("ds"), 2, Region::Abdomen);
    let n = fit_zscore(&ds, &opts(2, false)).unwrap();
    let Normalization::ZScore { lo, hi, mean, std } = n else {
        panic!("{n:?}")
    };
    // The labelled foreground is mostly soft tissue (0..200 HU) plus gas in stomach and bowel:
    // the mean sits between, the lower clip in the gas, the upper one in enhanced organs.
    assert!((-200.0..200.0).contains(&mean) && std > 10.0 && std < 500.0, "{n:?}");
    assert!((-1024.0..-300.0).contains(&lo) && hi > 50.0 && hi < 3072.0, "{n:?}");
    // Same seeded samples, same fit.
    assert_eq!(fit_zscore(&ds, &opts(1, false)).unwrap(), n);
    let cfg = PrepConfig {
        normalization: n,
        ..PrepConfig::default()
    };
    let out = tmp.path().join("store");
    write_store(&ds, &out, &cfg, &opts(2, false)).unwrap();
    let store = SliceStore::open(&out).unwrap();
    assert_eq!(store.config().normalization, n);
    assert_eq!(store.pad_value(), n.value(-1000.0));
}

/// A damaged record (dims that overflow, or that disagree with the file) and a damaged
/// normalisation in store.json are named, with what is wrong.
#[test]
fn damaged_store_records_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = small_synth(&tmp.path().join("ds"), 1, Region::Abdomen);
    let out = tmp.path().join("store");
    write_store(&ds, &out, &PrepConfig::default(), &opts(1, false)).unwrap();
    let cases = std::fs::read_to_string(out.join("cases.jsonl")).unwrap();
    let mut record: serde_json::Value = serde_json::from_str(cases.lines().next().unwrap()).unwrap();
    for slices in [1_000_000_000u64, 7] {
        record["slices"] = slices.into();
        std::fs::write(out.join("cases.jsonl"), format!("{record}\n")).unwrap();
        let err = SliceStore::open(&out).err().expect("must fail").to_string();
        assert!(err.contains("cases.jsonl") && err.contains("is damaged"), "{err}");
    }
    std::fs::write(out.join("cases.jsonl"), cases).unwrap();
    SliceStore::open(&out).unwrap();
    let header = std::fs::read_to_string(out.join("store.json")).unwrap();
    let mut h: serde_json::Value = serde_json::from_str(&header).unwrap();
    let norm = h["config"]["normalization"].as_object_mut().unwrap();
    let (lo, hi) = (norm["lo"].clone(), norm["hi"].clone());
    norm.insert("lo".into(), hi);
    norm.insert("hi".into(), lo);
    std::fs::write(out.join("store.json"), h.to_string()).unwrap();
    let err = SliceStore::open(&out).err().expect("must fail").to_string();
    assert!(err.contains("store.json"), "{err}");
}

/// A volume given where the dataset folder belongs is named as such.
#[test]
fn a_file_for_the_input_folder_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("ct.nii.gz");
    std::fs::write(&file, b"x").unwrap();
    let err = discover(&file).expect_err("must fail").to_string();
    assert!(err.contains("ct.nii.gz") && err.contains("is a file"), "{err}");
}

/// A run killed while writing the store's header leaves only its temporary file; the folder is
/// still taken as the store's, not as a foreign one.
#[test]
fn a_header_write_killed_before_its_rename_does_not_block_the_rerun() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = small_synth(&tmp.path().join("ds"), 1, Region::Abdomen);
    let out = tmp.path().join("store");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(".store.json.tmp"), b"{\"form").unwrap();
    write_store(&ds, &out, &PrepConfig::default(), &opts(1, false)).unwrap();
    assert!(!out.join(".store.json.tmp").exists());
    SliceStore::open(&out).unwrap();
}
