//! Preprocessing: reorientation, resampling to 2.5 x 1 x 1 mm and back, labels, intensities.

use lrc::data::affine::{self, Mat4};
use lrc::data::intensity::Normalization;
use lrc::data::orient::{CANONICAL, Reorientation};
use lrc::data::prep::{PrepConfig, PrepTransform, preprocess_volume};
use lrc::data::resample::{resample_labels_to_dims, resample_linear, resample_to_dims, target_dims};
use lrc::data::volume::unravel;
use lrc::data::{Geometry, LabelVolume, Volume};

/// A smooth field in world millimetres: wavelengths of 60-90 mm, far above 2.5 mm.
fn smooth(w: [f64; 3]) -> f64 {
    100.0 * (w[0] / 14.0).sin() * (w[1] / 11.0).cos() + 80.0 * (w[2] / 13.0).sin() - 300.0
}

fn world_volume(dims: [usize; 3], a: Mat4) -> Volume {
    let data = (0..dims.iter().product())
        .map(|i| {
            let [z, y, x] = unravel(i, dims);
            smooth(affine::apply(&a, [x as f64, y as f64, z as f64])) as f32
        })
        .collect();
    Volume {
        data,
        geometry: Geometry::from_affine(dims, a),
    }
}

#[test]
fn smooth_volume_survives_resampling_to_thesis_spacing_and_back() {
    // A typical CT grid: 0.75 mm in-plane, 1.25 mm slices, in RAS order.
    let a: Mat4 = [
        [0.75, 0.0, 0.0, -90.0],
        [0.0, 0.75, 0.0, -60.0],
        [0.0, 0.0, 1.25, 10.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let v = world_volume([40, 96, 120], a);
    let t = PrepTransform::new(&v.geometry, [2.5, 1.0, 1.0]);
    assert_eq!(t.prepared.dims, [20, 72, 90]);
    assert!((t.prepared.spacing[0] - 2.5).abs() < 1e-12 && (t.prepared.spacing[2] - 1.0).abs() < 1e-12);
    // The prepared grid samples the same world field (inside, away from clamped borders).
    let prepared = t.image_to_prepared(&v.data);
    let back = t.image_to_original(&prepared).unwrap();
    assert_eq!(back.geometry, v.geometry);
    // Linear interpolation error <= h^2/8 * max|f''| per axis. With h = 2.5 mm along z and
    // |f''| <= 80/13^2 = 0.47, plus in-plane h = 1 mm (100/11^2 = 0.83): about 0.37 + 0.1 HU
    // for one resampling; going down and back up at most doubles it. Bound: 1.5 HU on a field
    // spanning 360 HU (0.4 %), away from the first and last half voxel of the clamped edges.
    let [nz, ny, nx] = v.geometry.dims;
    let mut worst = 0.0f64;
    for z in 2..nz - 2 {
        for y in 2..ny - 2 {
            for x in 2..nx - 2 {
                let i = (z * ny + y) * nx + x;
                worst = worst.max((back.data[i] - v.data[i]).abs() as f64);
            }
        }
    }
    assert!(worst < 1.5, "max round-trip error {worst} HU");
    // And the prepared voxels sit where their affine says (same field value, same bound).
    let pa = t.prepared.affine;
    let mut worst_p = 0.0f64;
    let [mz, my, mx] = t.prepared.dims;
    for z in 1..mz - 1 {
        for y in 1..my - 1 {
            for x in 1..mx - 1 {
                let w = affine::apply(&pa, [x as f64, y as f64, z as f64]);
                worst_p = worst_p.max((prepared[(z * my + y) * mx + x] as f64 - smooth(w)).abs());
            }
        }
    }
    assert!(worst_p < 1.0, "prepared grid off by {worst_p} HU");
}

#[test]
fn label_resampling_keeps_every_label() {
    // 30 labels of all sizes, some a single voxel thick along z (lost by plain nearest).
    let dims = [48, 40, 40];
    let mut data = vec![0u8; dims.iter().product()];
    for l in 1..=30u8 {
        let z = (l as usize * 7) % 47;
        let (y, x) = ((l as usize * 13) % 36, (l as usize * 5) % 36);
        let size = 1 + (l as usize % 4);
        for dz in 0..(if l % 3 == 0 { 1 } else { size }) {
            for dy in 0..size {
                for dx in 0..size {
                    data[((z + dz).min(47) * 40 + y + dy) * 40 + x + dx] = l;
                }
            }
        }
    }
    let a: Mat4 = [
        [0.8, 0.0, 0.0, 0.0],
        [0.0, 0.8, 0.0, 0.0],
        [0.0, 0.0, 0.625, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let labels = LabelVolume {
        data,
        geometry: Geometry::from_affine(dims, a),
    };
    let new_dims = target_dims(dims, labels.geometry.spacing, [2.5, 1.0, 1.0]);
    assert_eq!(new_dims, [12, 32, 32]);
    let down = resample_labels_to_dims(&labels, new_dims);
    assert_eq!(down.labels_present(), labels.labels_present());
    let up = resample_labels_to_dims(&down, dims);
    assert_eq!(up.labels_present(), labels.labels_present());
}

#[test]
fn any_orientation_reaches_canonical_lps_and_back_exactly() {
    // Every axis permutation with every flip pattern.
    let perms = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
    let dims = [3, 4, 5];
    let data: Vec<u16> = (0..60).collect();
    for perm in perms {
        for flips in 0..8u32 {
            let mut a = [[0.0; 4]; 4];
            a[3][3] = 1.0;
            for (vox, &world) in perm.iter().enumerate() {
                a[world][vox] = if flips >> vox & 1 == 1 { -1.5 } else { 1.5 };
                a[world][3] = 10.0 * world as f64;
            }
            let g = Geometry::from_affine(dims, a);
            let r = Reorientation::to_canonical(&g.affine);
            let g2 = r.geometry(&g);
            assert_eq!(g2.axis_codes(), CANONICAL, "perm {perm:?} flips {flips}");
            let out = r.apply(&data, g.dims);
            assert_eq!(r.inverse().apply(&out, g2.dims), data);
            // Same world position for the first canonical voxel.
            let [oz, oy, ox] = unravel(out[0] as usize, dims);
            let w_old = affine::apply(&g.affine, [ox as f64, oy as f64, oz as f64]);
            let w_new = affine::apply(&g2.affine, [0.0, 0.0, 0.0]);
            assert!((0..3).all(|k| (w_old[k] - w_new[k]).abs() < 1e-9));
        }
    }
}

#[test]
fn preprocessing_orients_resamples_normalises_and_maps_labels_back() {
    // RAS-ordered CT-like volume at 3 mm, labels on it.
    let a: Mat4 = [
        [3.0, 0.0, 0.0, -100.0],
        [0.0, 3.0, 0.0, -50.0],
        [0.0, 0.0, 3.0, 20.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let dims = [10, 20, 24];
    let mut v = world_volume(dims, a);
    v.data[0] = -3000.0;
    v.data[1] = 2500.0;
    let labels = LabelVolume {
        data: (0..v.data.len()).map(|i| (unravel(i, dims)[2] / 6) as u8).collect(),
        geometry: v.geometry.clone(),
    };
    let cfg = PrepConfig::default();
    let p = preprocess_volume(&v, Some(&labels), &cfg).unwrap();
    assert_eq!(p.transform.prepared.axis_codes(), CANONICAL);
    assert_eq!(p.dims(), [12, 60, 72]);
    assert!(p.image.iter().all(|&x| (0.0..=1.0).contains(&x)));
    let l = p.labels.as_ref().unwrap();
    assert_eq!(lrc::data::volume::labels_present(l), vec![1, 2, 3]);
    // In LPS order x runs to the patient's left, so in RAS input the label grows with x while
    // in the prepared slices it must fall along each row.
    let row = &l[..72];
    assert!(row[0] >= row[71]);
    // Back to the original grid: labels are recovered exactly (upsampling by an integer
    // factor and back with nearest neighbour is lossless).
    let back = p.transform.labels_to_original(l).unwrap();
    assert_eq!(back.data, labels.data);
    assert_eq!(back.geometry, v.geometry);
    // Wrong-sized predictions are a shape error, not a panic.
    assert!(p.transform.labels_to_original(&l[1..]).is_err());
}

#[test]
fn normalisations_and_config_checks() {
    let n = Normalization::ZScore {
        lo: -100.0,
        hi: 300.0,
        mean: 100.0,
        std: 50.0,
    };
    assert_eq!(n.value(-1000.0), -4.0);
    assert_eq!(n.value(200.0), 2.0);
    let bad = PrepConfig {
        spacing: [2.5, 0.0, 1.0],
        ..PrepConfig::default()
    };
    assert!(bad.validate().unwrap_err().to_string().contains("spacing"));
    let bad = PrepConfig {
        normalization: Normalization::Ct { lo: 5.0, hi: 5.0 },
        ..PrepConfig::default()
    };
    assert!(bad.validate().is_err());
}

#[test]
fn trilinear_resampling_of_a_ramp_is_exact_inside() {
    let dims = [8, 9, 10];
    let data: Vec<f32> = (0..720)
        .map(|i| {
            let [z, y, x] = unravel(i, dims);
            (3 * z + 2 * y + x) as f32
        })
        .collect();
    let out = resample_linear(&data, dims, [4, 9, 20]);
    // Output (z', x') samples input z = 2z' + 0.5, x = x'/2 - 0.25; interior points exact.
    for z in 0..4 {
        for x in 1..19 {
            let want = 3.0 * (2.0 * z as f64 + 0.5) + 2.0 * 4.0 + (x as f64 / 2.0 - 0.25);
            let got = out[(z * 9 + 4) * 20 + x] as f64;
            assert!((got - want).abs() < 1e-4, "{z} {x}: {got} vs {want}");
        }
    }
    let v = Volume {
        data,
        geometry: Geometry::from_affine(dims, affine::IDENTITY),
    };
    let r = resample_to_dims(&v, [4, 9, 20]);
    assert!((r.geometry.spacing[0] - 2.0).abs() < 1e-12 && (r.geometry.spacing[2] - 0.5).abs() < 1e-12);
}
