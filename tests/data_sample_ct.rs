//! Real CT from the TotalSegmentator reference files (`scripts/fetch-sample-ct.sh`).
//!
//! These tests need `sample-ct/` at the repository root. When it is missing they fail with a
//! message saying how to fetch it, unless `LRC_SKIP_SAMPLE_CT=1` is set (then they pass
//! without checking anything, and say so).

use std::path::{Path, PathBuf};

use lrc::data::affine::Mat4;
use lrc::data::dataset::discover;
use lrc::data::intensity::check_ct;
use lrc::data::nifti::{self, Header};
use lrc::data::orient::CANONICAL;
use lrc::data::prep::{PrepConfig, preprocess_volume};
use lrc::data::store::{SliceStore, StoreOptions, write_store};
use lrc::data::{LabelVolume, Volume};

/// The sample folder, or `None` when the tests are asked to skip it.
fn sample_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-ct");
    if dir.join("totalseg/dataset.json").is_file() {
        return Some(dir);
    }
    if std::env::var("LRC_SKIP_SAMPLE_CT").as_deref() == Ok("1") {
        eprintln!("sample CT missing and LRC_SKIP_SAMPLE_CT=1: not checked");
        return None;
    }
    panic!(
        "sample CT not found at {}: run scripts/fetch-sample-ct.sh (or set LRC_SKIP_SAMPLE_CT=1 to skip)",
        dir.display()
    );
}

fn header_of(path: &Path) -> Header {
    let bytes = std::fs::read(path).unwrap();
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&bytes[..]), &mut plain).unwrap();
    Header::parse(&plain).unwrap()
}

#[test]
fn sample_ct_reads_with_the_geometry_nibabel_reports() {
    let Some(dir) = sample_dir() else { return };
    let v = nifti::read_volume(dir.join("totalseg/imagesTr/example_ct_sm_0000.nii.gz")).unwrap();
    // Values checked against nibabel 5 on the same file.
    let want: Mat4 = [
        [3.0, 0.0, 0.0, -177.95632934570312],
        [0.0, 3.0, 0.0, 11.319000244140625],
        [0.0, 0.0, 3.0, 94.3017578125],
        [0.0, 0.0, 0.0, 1.0],
    ];
    assert_eq!(v.geometry.affine, want);
    assert_eq!(v.geometry.dims, [30, 101, 122]);
    assert_eq!((v.geometry.qform_code, v.geometry.sform_code), (0, 2));
    assert_eq!(v.data.iter().map(|&x| x as f64).sum::<f64>(), -130_894_872.0);
    assert_eq!(v.data[1000], -688.0);
    check_ct(&v.data).unwrap();
    // The int32 one, and the LPS one.
    let big = nifti::read_volume(dir.join("totalseg/imagesTr/example_ct_0000.nii.gz")).unwrap();
    assert_eq!(big.geometry.dims, [112, 101, 122]);
    assert_eq!(big.data.iter().map(|&x| x as f64).sum::<f64>(), -496_851_173.0);
    let lps = nifti::read_volume(dir.join("extra/aorta_ct.nii.gz")).unwrap();
    assert_eq!(lps.geometry.axis_codes(), CANONICAL);
    assert_eq!(lps.geometry.affine[0][3], 179.658203125);
}

#[test]
fn mask_written_for_the_sample_ct_has_exactly_its_affine_and_header_geometry() {
    let Some(dir) = sample_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    for (image, labels) in [
        (
            "totalseg/imagesTr/example_ct_sm_0000.nii.gz",
            "totalseg/labelsTr/example_ct_sm.nii.gz",
        ),
        ("extra/example_seg_dicom.nii.gz", "extra/example_seg_dicom.nii.gz"),
    ] {
        let src = dir.join(image);
        let ct: Volume = nifti::read_volume(&src).unwrap();
        let seg: LabelVolume = nifti::read_labels(dir.join(labels)).unwrap();
        assert!(ct.geometry.mismatch(&seg.geometry, 0.0).is_none());
        let out = tmp.path().join("mask.nii.gz");
        nifti::write_labels(&out, &seg.data, &ct.geometry).unwrap();
        let back = nifti::read_labels(&out).unwrap();
        assert_eq!(back.geometry.affine, ct.geometry.affine);
        assert_eq!(back.data, seg.data);
        let (a, b) = (header_of(&src), header_of(&out));
        assert_eq!(a.dim, b.dim);
        assert_eq!(a.pixdim[..4], b.pixdim[..4]);
        assert_eq!((a.qform_code, a.sform_code), (b.qform_code, b.sform_code));
        assert_eq!(a.srow, b.srow);
        assert_eq!(a.quatern, b.quatern);
        assert_eq!(a.qoffset, b.qoffset);
    }
}

#[test]
fn sample_mr_is_rejected_as_non_ct() {
    let Some(dir) = sample_dir() else { return };
    let mr = nifti::read_volume(dir.join("extra/example_mr_sm.nii.gz")).unwrap();
    let e = check_ct(&mr.data).unwrap_err();
    assert!(e.contains("do not look like CT") && e.contains("MR"), "{e}");
}

#[test]
fn sample_dataset_preps_and_predictions_map_back_onto_the_source_grid() {
    let Some(dir) = sample_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ds = discover(&dir.join("totalseg")).unwrap();
    assert_eq!(ds.cases.len(), 2);
    assert_eq!(ds.label_names.get(&5).map(String::as_str), Some("liver"));
    let out = tmp.path().join("store");
    let opts = StoreOptions {
        threads: 2,
        ..Default::default()
    };
    write_store(&ds, &out, &PrepConfig::default(), &opts).unwrap();
    let store = SliceStore::open(&out).unwrap();
    // 3 mm RAS grids become 2.5 x 1 x 1 mm LPS grids over the same field of view.
    let case = store.cases()[1];
    assert_eq!(case.name, "example_ct_sm");
    assert_eq!((case.slices, case.height, case.width), (36, 303, 366));
    assert_eq!(case.transform.prepared.axis_codes(), CANONICAL);
    assert!(case.labels_present.contains(&5));
    // A "prediction" made on the stored grid (here: the stored labels) written back through the
    // record lands on the source grid with the source header, and agrees with the reference
    // labels on almost every voxel (nearest-neighbour down- and up-sampling along z moves
    // boundaries by at most one 3 mm slice).
    let range = store.case_range(1);
    let mut pred = Vec::new();
    for i in range {
        pred.extend_from_slice(store.slice(i).labels.unwrap());
    }
    let back = case.transform.labels_to_original(&pred).unwrap();
    let reference = nifti::read_labels(dir.join("totalseg/labelsTr/example_ct_sm.nii.gz")).unwrap();
    assert_eq!(back.geometry.affine, reference.geometry.affine);
    let agree = back.data.iter().zip(&reference.data).filter(|(a, b)| a == b).count();
    let frac = agree as f64 / back.data.len() as f64;
    assert!(frac > 0.97, "agreement {frac}");
    let mask = tmp.path().join("pred.nii.gz");
    nifti::write_mask(&mask, &back).unwrap();
    let src = dir.join("totalseg/imagesTr/example_ct_sm_0000.nii.gz");
    assert_eq!(header_of(&mask).srow, header_of(&src).srow);
    // The stored slices are the in-memory preprocessing, bit for bit.
    let v = nifti::read_volume(&src).unwrap();
    let p = preprocess_volume(&v, None, &PrepConfig::default()).unwrap();
    let first = store.slice(store.case_range(1).start);
    assert!(
        first
            .image
            .iter()
            .zip(p.image_slice(0))
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}
