//! Synthetic phantoms: deterministic, every organ present, tissues at realistic HU, written in
//! the nnU-Net layout that `lrc prep` reads.

use lrc::data::dataset::discover;
use lrc::data::nifti;
use lrc::data::synth::{DatasetOptions, Region, SynthConfig, synth_case, write_dataset};

fn cfg(region: Region, seed: u64) -> SynthConfig {
    SynthConfig {
        region,
        slices: 48,
        size: 128,
        seed,
    }
}

#[test]
fn same_seed_same_case_other_seed_other_case() {
    let (a, la, _) = synth_case(&cfg(Region::Abdomen, 5), 1).unwrap();
    let (b, lb, _) = synth_case(&cfg(Region::Abdomen, 5), 1).unwrap();
    assert_eq!(a.data, b.data);
    assert_eq!(la.data, lb.data);
    assert_eq!(a.geometry, b.geometry);
    let (c, _, _) = synth_case(&cfg(Region::Abdomen, 6), 1).unwrap();
    let (d, _, _) = synth_case(&cfg(Region::Abdomen, 5), 2).unwrap();
    assert_ne!(a.data, c.data);
    assert_ne!(a.data, d.data);
}

/// Mean HU of the core voxels of label `l`: those whose six neighbours carry the same label,
/// so that partial volume with the surroundings (real at this coarse test resolution) does not
/// blur the tissue value. Falls back to all voxels of a structure too thin to have a core.
fn mean_hu(data: &[f32], labels: &[u8], dims: [usize; 3], l: u8) -> f64 {
    let [nz, ny, nx] = dims;
    let (mut s, mut n, mut s_all, mut n_all) = (0.0, 0usize, 0.0, 0usize);
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let i = (z * ny + y) * nx + x;
                if labels[i] != l {
                    continue;
                }
                s_all += data[i] as f64;
                n_all += 1;
                let inner = z > 0 && z + 1 < nz && y > 0 && y + 1 < ny && x > 0 && x + 1 < nx;
                if inner
                    && [i - 1, i + 1, i - nx, i + nx, i - nx * ny, i + nx * ny]
                        .iter()
                        .all(|&k| labels[k] == l)
                {
                    s += data[i] as f64;
                    n += 1;
                }
            }
        }
    }
    if n >= 20 {
        s / n as f64
    } else {
        s_all / n_all.max(1) as f64
    }
}

/// An organ's name and the range its mean HU must fall in.
type OrganRange = (&'static str, f64, f64);

#[test]
fn every_region_has_all_its_organs_at_realistic_hu() {
    // Expected mean HU per organ, wide enough for contrast and non-contrast phases, partial
    // volume at the borders, and gas in hollow organs.
    let expect: [(Region, &[OrganRange]); 3] = [
        (
            Region::Abdomen,
            &[
                ("liver", 40.0, 130.0),
                ("spleen", 30.0, 140.0),
                ("kidney_left", 20.0, 200.0),
                ("kidney_right", 20.0, 200.0),
                ("stomach", -700.0, 60.0),
                ("pancreas", 20.0, 120.0),
                ("gallbladder", -10.0, 45.0),
                ("aorta", 25.0, 220.0),
                ("bowel", -800.0, 250.0),
                ("spinal_cord", 0.0, 80.0),
            ],
        ),
        (
            Region::Thorax,
            &[
                ("lung_left", -900.0, -650.0),
                ("lung_right", -900.0, -650.0),
                ("heart", 30.0, 260.0),
                ("trachea", -1000.0, -500.0),
                ("esophagus", -200.0, 80.0),
                ("spinal_cord", 0.0, 80.0),
            ],
        ),
        (
            Region::Head,
            &[
                ("brainstem", 10.0, 60.0),
                ("mandible", 300.0, 1600.0),
                ("parotid_left", -60.0, 80.0),
                ("parotid_right", -60.0, 80.0),
                ("submandibular_left", 0.0, 120.0),
                ("submandibular_right", 0.0, 120.0),
                ("optic_nerve_left", -80.0, 80.0),
                ("optic_nerve_right", -80.0, 80.0),
                ("optic_chiasm", -80.0, 80.0),
                ("spinal_cord", 0.0, 80.0),
            ],
        ),
    ];
    for (region, organs) in expect {
        let names = region.label_names();
        assert!(
            (7..=11).contains(&names.len()),
            "{region}: 6 to 10 organs plus background"
        );
        for case in 0..2 {
            let (v, l, label_names) = synth_case(&cfg(region, 11), case).unwrap();
            assert_eq!(label_names, names);
            assert_eq!(
                l.labels_present().len(),
                names.len() - 1,
                "{region} case {case}: {:?}",
                l.labels_present()
            );
            for &(organ, lo, hi) in organs {
                let value = names.iter().position(|n| *n == organ).unwrap() as u8;
                let m = mean_hu(&v.data, &l.data, v.geometry.dims, value);
                assert!((lo..=hi).contains(&m), "{region} case {case} {organ}: mean {m:.0} HU");
            }
            // Scanner-like value range: integers, air near -1000, bone bright (cortex ~1000 HU,
            // partial-volumed by the 3 mm pixels of this small test grid).
            assert!(
                v.data
                    .iter()
                    .all(|x| x.fract() == 0.0 && (-1024.0..=3071.0).contains(x))
            );
            let max = v.data.iter().cloned().fold(f32::MIN, f32::max);
            assert!(max > 450.0, "{region}: no bone ({max})");
            // The geometry is a plausible CT: LPS voxel order, sub-millimetre to 2 mm pixels
            // at this size, slices of 2 to 6 mm.
            assert_eq!(v.geometry.axis_codes(), ['L', 'P', 'S']);
            assert!(v.geometry.spacing[0] > 1.5 && v.geometry.spacing[0] < 6.0);
        }
    }
}

#[test]
fn labels_and_noise_behave_like_ct() {
    let (v, l, _) = synth_case(&cfg(Region::Abdomen, 2), 0).unwrap();
    // Noise: the liver's HU varies by tens of HU around its mean (texture + CT noise), not 0
    // and not hundreds.
    let liver: Vec<f64> = v
        .data
        .iter()
        .zip(&l.data)
        .filter(|(_, m)| **m == 1)
        .map(|(x, _)| *x as f64)
        .collect();
    let mean = liver.iter().sum::<f64>() / liver.len() as f64;
    let sd = (liver.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / liver.len() as f64).sqrt();
    assert!((5.0..60.0).contains(&sd), "liver sd {sd}");
    // Air outside the body (first row) at about -1000.
    let [_, _, w] = v.geometry.dims;
    let row = &v.data[..w];
    let air = row.iter().map(|&x| x as f64).sum::<f64>() / w as f64;
    assert!((-1024.0..-950.0).contains(&air), "{air}");
}

#[test]
fn dataset_is_written_in_the_nnunet_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let c = SynthConfig {
        region: Region::Thorax,
        slices: 12,
        size: 64,
        seed: 1,
    };
    let opts = DatasetOptions {
        cases: 2,
        threads: 1,
        preview: true,
        ..Default::default()
    };
    write_dataset(&c, tmp.path(), &opts).unwrap();
    let ds = discover(tmp.path()).unwrap();
    assert_eq!(ds.cases.len(), 2);
    assert_eq!(ds.cases[0].name, "thorax_000");
    assert_eq!(ds.label_names.get(&1).map(String::as_str), Some("lung_left"));
    let v = nifti::read_volume(&ds.cases[1].image).unwrap();
    let (want, lw, _) = synth_case(&c, 1).unwrap();
    assert_eq!(v.data, want.data, "int16 on disk holds the integer HU exactly");
    let l = nifti::read_labels(ds.cases[1].labels.as_ref().unwrap()).unwrap();
    assert_eq!(l.data, lw.data);
    assert_eq!(l.geometry.affine, v.geometry.affine);
    assert!(tmp.path().join("preview/thorax_000.png").is_file());
    assert!(tmp.path().join("preview/thorax_000_lung.png").is_file());

    let unl = tempfile::tempdir().unwrap();
    let opts = DatasetOptions {
        unlabeled: true,
        ..opts
    };
    write_dataset(&c, unl.path(), &opts).unwrap();
    assert!(!unl.path().join("labelsTr").exists());
    assert!(discover(unl.path()).unwrap().cases.iter().all(|c| c.labels.is_none()));
    // Bad sizes are configuration errors.
    let bad = SynthConfig { slices: 2, ..c };
    assert!(synth_case(&bad, 0).unwrap_err().to_string().contains("--slices"));
    assert!("pelvis".parse::<Region>().is_err());
}

/// `write_dataset` rewrites its own earlier output (finished or interrupted) but refuses a
/// folder holding anything else, such as a user's dataset.
#[test]
fn a_foreign_folder_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let opts = DatasetOptions {
        cases: 1,
        unlabeled: false,
        threads: 1,
        preview: false,
        progress: false,
    };
    let small = SynthConfig {
        slices: 8,
        size: 64,
        ..cfg(Region::Abdomen, 1)
    };
    let ours = dir.path().join("ours");
    write_dataset(&small, &ours, &opts).unwrap();
    write_dataset(&small, &ours, &opts).unwrap();
    // Interrupted before its dataset.json: only the folders it makes.
    let partial = dir.path().join("partial");
    std::fs::create_dir_all(partial.join("imagesTr")).unwrap();
    write_dataset(&small, &partial, &opts).unwrap();
    let theirs = dir.path().join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("dataset.json"), br#"{"name": "my hospital's CT"}"#).unwrap();
    let err = write_dataset(&small, &theirs, &opts)
        .expect_err("must fail")
        .to_string();
    assert!(err.contains("holds no dataset written by `lrc synth`"), "{err}");
    assert_eq!(
        std::fs::read(theirs.join("dataset.json")).unwrap(),
        br#"{"name": "my hospital's CT"}"#
    );
}
