//! NIfTI-1 reading and writing: every datatype, both byte orders, scaling, geometry round
//! trips, and every kind of bad file answered with an error that names the problem.

use std::io::Write;
use std::path::Path;

use lrc::Error;
use lrc::data::affine::{self, Mat4};
use lrc::data::nifti::{self, Header, VoxelType};
use lrc::data::{Geometry, LabelVolume, Volume};
use lrc::rng::Rng;

/// A little-endian single-file NIfTI-1 with the given header fields and raw voxel bytes.
fn nifti_bytes(h: &Header, voxels: &[u8]) -> Vec<u8> {
    let mut b = h.to_bytes();
    b.extend_from_slice(voxels);
    b
}

fn header(dims: [i16; 3], datatype: i16, bitpix: i16) -> Header {
    Header {
        dim: [3, dims[0], dims[1], dims[2], 1, 1, 1, 1],
        datatype,
        bitpix,
        pixdim: [1.0, 0.8, 0.9, 2.5, 0.0, 0.0, 0.0, 0.0],
        qform_code: 1,
        sform_code: 0,
        quatern: [0.0, 0.0, 1.0], // 180 degrees about z: LPS voxel order
        qoffset: [10.0, -20.0, 30.0],
        ..Header::default()
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn format_message(e: Error) -> String {
    match &e {
        Error::Format { .. } => e.to_string(),
        other => panic!("expected a format error, got {other:?}"),
    }
}

fn read_err(bytes: &[u8]) -> String {
    format_message(nifti::read_volume_from_bytes(bytes, Path::new("case.nii")).unwrap_err())
}

#[test]
fn every_datatype_reads_with_scaling_in_both_byte_orders() {
    // Values chosen to be exactly representable in every type they are stored in.
    let values: [f64; 6] = [0.0, 1.0, 2.0, 7.0, 100.0, 120.0];
    let dims = [3i16, 2, 1];
    for (code, size) in [
        (2, 1),
        (256, 1),
        (4, 2),
        (512, 2),
        (8, 4),
        (768, 4),
        (16, 4),
        (64, 8),
        (1024, 8),
        (1280, 8),
    ] {
        for big in [false, true] {
            let mut raw = Vec::new();
            for &v in &values {
                let le: Vec<u8> = match code {
                    2 => vec![v as u8],
                    256 => vec![v as i8 as u8],
                    4 => (v as i16).to_le_bytes().to_vec(),
                    512 => (v as u16).to_le_bytes().to_vec(),
                    8 => (v as i32).to_le_bytes().to_vec(),
                    768 => (v as u32).to_le_bytes().to_vec(),
                    16 => (v as f32).to_le_bytes().to_vec(),
                    64 => v.to_le_bytes().to_vec(),
                    1024 => (v as i64).to_le_bytes().to_vec(),
                    _ => (v as u64).to_le_bytes().to_vec(),
                };
                assert_eq!(le.len(), size);
                raw.extend(if big {
                    le.into_iter().rev().collect::<Vec<_>>()
                } else {
                    le
                });
            }
            let mut h = header(dims, code, (size * 8) as i16);
            h.scl_slope = 2.0;
            h.scl_inter = -1024.0;
            let mut bytes = nifti_bytes(&h, &raw);
            if big {
                to_big_endian_header(&mut bytes);
            }
            let v = nifti::read_volume_from_bytes(&bytes, Path::new("x.nii")).unwrap();
            let want: Vec<f32> = values.iter().map(|&x| (x * 2.0 - 1024.0) as f32).collect();
            assert_eq!(v.data, want, "datatype {code}, big-endian {big}");
            assert_eq!(v.geometry.dims, [1, 2, 3]);
        }
    }
}

/// Byte-swaps every multi-byte header field in place (the voxels are already big-endian).
fn to_big_endian_header(b: &mut [u8]) {
    let mut swap = |at: usize, n: usize| b[at..at + n].reverse();
    swap(0, 4);
    for i in 0..8 {
        swap(40 + 2 * i, 2);
        swap(76 + 4 * i, 4);
    }
    for at in [68, 70, 72, 252, 254] {
        swap(at, 2);
    }
    for at in [108, 112, 116, 124, 128, 256, 260, 264, 268, 272, 276] {
        swap(at, 4);
    }
    for i in 0..12 {
        swap(280 + 4 * i, 4);
    }
}

#[test]
fn zero_or_nan_slope_means_no_scaling() {
    for slope in [0.0f32, f32::NAN, f32::INFINITY] {
        let mut h = header([2, 1, 1], 4, 16);
        h.scl_slope = slope;
        h.scl_inter = 500.0;
        let raw: Vec<u8> = [-1000i16, 40].iter().flat_map(|v| v.to_le_bytes()).collect();
        let v = nifti::read_volume_from_bytes(&nifti_bytes(&h, &raw), Path::new("a.nii")).unwrap();
        assert_eq!(v.data, vec![-1000.0, 40.0], "slope {slope}");
    }
}

#[test]
fn voxel_offset_past_extensions_is_honoured() {
    let mut h = header([2, 1, 1], 2, 8);
    h.vox_offset = 400.0;
    let mut bytes = h.to_bytes();
    bytes[348] = 1; // extension flag set; the extension bytes are skipped via vox_offset
    bytes.resize(400, 0xAA);
    bytes.extend_from_slice(&[5, 6]);
    let v = nifti::read_volume_from_bytes(&bytes, Path::new("a.nii")).unwrap();
    assert_eq!(v.data, vec![5.0, 6.0]);
}

#[test]
fn qform_geometry_matches_the_nifti_definition() {
    let h = header([4, 5, 6], 2, 8);
    let bytes = nifti_bytes(&h, &[0u8; 120]);
    let v = nifti::read_volume_from_bytes(&bytes, Path::new("a.nii")).unwrap();
    // Quaternion (0, 0, 1) is a 180-degree turn about z: i -> -x, j -> -y.
    let want: Mat4 = [
        [-0.8, 0.0, 0.0, 10.0],
        [0.0, -0.9, 0.0, -20.0],
        [0.0, 0.0, 2.5, 30.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    // pixdims are f32 (0.8 and 0.9 are not exact): compare at f32 precision.
    assert!(affine::max_abs_diff(&v.geometry.affine, &want) < 1e-6);
    assert_eq!(v.geometry.axis_codes(), ['L', 'P', 'S']);
    assert_eq!(v.geometry.dims, [6, 5, 4]);
    assert!((v.geometry.spacing[0] - 2.5).abs() < 1e-12);
}

#[test]
fn qfac_minus_one_flips_k_and_odd_qfac_counts_by_sign() {
    let mut h = header([2, 2, 2], 2, 8);
    h.quatern = [0.0, 0.0, 0.0];
    h.pixdim[0] = -1.0;
    let v = nifti::read_volume_from_bytes(&nifti_bytes(&h, &[0u8; 8]), Path::new("a.nii")).unwrap();
    assert_eq!(v.geometry.affine[2][2], -2.5);
    // |pixdim[0]| != 1 (the `nifti` crate panics on it): only the sign counts.
    h.pixdim[0] = 0.3;
    let v = nifti::read_volume_from_bytes(&nifti_bytes(&h, &[0u8; 8]), Path::new("a.nii")).unwrap();
    assert_eq!(v.geometry.affine[2][2], 2.5);
    h.pixdim[0] = -7.0;
    let v = nifti::read_volume_from_bytes(&nifti_bytes(&h, &[0u8; 8]), Path::new("a.nii")).unwrap();
    assert_eq!(v.geometry.affine[2][2], -2.5);
}

#[test]
fn negative_pixdim_is_taken_by_magnitude() {
    let mut h = header([2, 2, 2], 2, 8);
    h.pixdim[1] = -0.8;
    h.pixdim[3] = -2.5;
    let v = nifti::read_volume_from_bytes(&nifti_bytes(&h, &[0u8; 8]), Path::new("a.nii")).unwrap();
    let g = &v.geometry;
    assert!((g.spacing[2] - 0.8).abs() < 1e-6 && (g.spacing[0] - 2.5).abs() < 1e-12);
    assert_eq!(g.axis_codes(), ['L', 'P', 'S']);
}

#[test]
fn sform_takes_precedence_and_no_code_gives_plain_scaling() {
    let mut h = header([2, 2, 2], 2, 8);
    h.sform_code = 2;
    h.srow = [[0.0, 0.0, 3.0, 1.0], [-1.0, 0.0, 0.0, 2.0], [0.0, 1.5, 0.0, 3.0]];
    let v = nifti::read_volume_from_bytes(&nifti_bytes(&h, &[0u8; 8]), Path::new("a.nii")).unwrap();
    assert_eq!(v.geometry.affine[0], [0.0, 0.0, 3.0, 1.0]);
    assert_eq!(v.geometry.spacing, [3.0, 1.5, 1.0]);
    let mut h = header([2, 2, 2], 2, 8);
    h.qform_code = 0;
    let v = nifti::read_volume_from_bytes(&nifti_bytes(&h, &[0u8; 8]), Path::new("a.nii")).unwrap();
    assert!((v.geometry.affine[0][0] - 0.8).abs() < 1e-6);
    assert_eq!(v.geometry.affine[0][3], 0.0);
}

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn random_volume(dims: [usize; 3], affine: Mat4, seed: u64) -> Volume {
    let mut rng = Rng::new(seed);
    let n = dims.iter().product();
    Volume {
        data: (0..n).map(|_| rng.range(-1024.0, 2000.0).round() as f32).collect(),
        geometry: Geometry::from_affine(dims, affine),
    }
}

#[test]
fn write_then_read_keeps_data_and_geometry() {
    let dir = temp();
    let oblique: Mat4 = [
        [-0.7, 0.05, 0.0, 120.5],
        [0.05, 0.7, 0.1, -80.25],
        [0.0, -0.02, 3.0, -400.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let permuted: Mat4 = [
        [0.0, 0.0, 1.5, 1.0],
        [0.9, 0.0, 0.0, 2.0],
        [0.0, -0.9, 0.0, 3.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    for (k, a) in [oblique, permuted].into_iter().enumerate() {
        let v = random_volume([5, 7, 9], a, k as u64);
        for (name, ty) in [("v.nii.gz", VoxelType::I16), ("v.nii", VoxelType::F32)] {
            let path = dir.path().join(name);
            nifti::write_volume(&path, &v, ty).unwrap();
            let back = nifti::read_volume(&path).unwrap();
            assert_eq!(back.data, v.data);
            assert_eq!(back.geometry.dims, v.geometry.dims);
            // The sform is stored as f32: entries up to ~400 mm keep ~3e-5 mm.
            assert!(
                affine::max_abs_diff(&back.geometry.affine, &a) < 1e-4,
                "{:?}",
                back.geometry.affine
            );
            // Read -> write -> read is exact: the raw header fields travel with the geometry.
            let again = dir.path().join(format!("again_{name}"));
            nifti::write_volume(&again, &back, ty).unwrap();
            let back2 = nifti::read_volume(&again).unwrap();
            assert_eq!(back2.geometry, back.geometry);
            assert_eq!(back2.data, back.data);
        }
    }
}

#[test]
fn mask_gets_the_exact_header_geometry_of_its_volume() {
    let dir = temp();
    // A qform-only header with qfac -1 and odd offsets, as scanners write them.
    let mut h = header([6, 5, 4], 4, 16);
    h.pixdim[0] = -1.0;
    h.quatern = [0.1, -0.2, 0.3];
    h.qoffset = [123.456, -78.9, 1011.5];
    h.xyzt_units = 10;
    let raw = vec![0u8; 6 * 5 * 4 * 2];
    let src = dir.path().join("ct.nii");
    std::fs::write(&src, nifti_bytes(&h, &raw)).unwrap();
    let ct = nifti::read_volume(&src).unwrap();
    let mask = LabelVolume {
        data: (0..ct.data.len()).map(|i| (i % 3) as u8).collect(),
        geometry: ct.geometry.clone(),
    };
    let out = dir.path().join("mask.nii.gz");
    nifti::write_mask(&out, &mask).unwrap();
    let back = nifti::read_labels(&out).unwrap();
    assert_eq!(back.data, mask.data);
    assert_eq!(back.geometry.affine, ct.geometry.affine);
    let written = std::fs::read(&out).unwrap();
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&written[..]), &mut plain).unwrap();
    let hm = Header::parse(&plain).unwrap();
    assert_eq!(hm.dim, h.dim);
    assert_eq!(hm.pixdim[..4], h.pixdim[..4]);
    assert_eq!(hm.quatern, h.quatern);
    assert_eq!(hm.qoffset, h.qoffset);
    assert_eq!(
        (hm.qform_code, hm.sform_code, hm.xyzt_units),
        (h.qform_code, h.sform_code, 10)
    );
    assert_eq!(hm.datatype, 2);
}

// ---- bad input: each error names the problem ----

#[test]
fn truncated_and_corrupt_gzip_are_format_errors() {
    let h = header([4, 4, 4], 4, 16);
    let gz = gzip(&nifti_bytes(&h, &[0u8; 128]));
    let e = read_err(&gz[..gz.len() / 2]);
    assert!(e.contains("case.nii") && e.contains("truncated gzip"), "{e}");
    let mut bad = gz.clone();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 8] {
        *b ^= 0x5a;
    }
    let e = read_err(&bad);
    assert!(e.contains("gzip"), "{e}");
}

#[test]
fn dims_that_do_not_match_the_data_are_reported() {
    let h = header([64, 64, 10], 4, 16);
    let e = read_err(&nifti_bytes(&h, &[0u8; 1000]));
    assert!(e.contains("64 x 64 x 10") && e.contains("only 1000 follow"), "{e}");
}

#[test]
fn four_d_volume_is_rejected_and_singleton_4d_accepted() {
    let mut h = header([2, 2, 2], 2, 8);
    h.dim = [4, 2, 2, 2, 3, 1, 1, 1];
    let e = read_err(&nifti_bytes(&h, &[0u8; 24]));
    assert!(e.contains("4-D") && e.contains("3 time points"), "{e}");
    h.dim = [4, 2, 2, 2, 1, 1, 1, 1];
    assert!(nifti::read_volume_from_bytes(&nifti_bytes(&h, &[0u8; 8]), Path::new("a")).is_ok());
}

#[test]
fn zero_spacing_and_bad_dims_are_rejected() {
    let mut h = header([2, 2, 2], 2, 8);
    h.pixdim[2] = 0.0;
    let e = read_err(&nifti_bytes(&h, &[0u8; 8]));
    assert!(e.contains("spacing") && e.contains("pixdim[2] = 0"), "{e}");
    let mut h = header([2, 2, 2], 2, 8);
    h.dim[2] = -3;
    let e = read_err(&nifti_bytes(&h, &[0u8; 8]));
    assert!(e.contains("dim[2] = -3"), "{e}");
    let mut h = header([2, 2, 2], 2, 8);
    h.dim[0] = 9;
    assert!(read_err(&nifti_bytes(&h, &[0u8; 8])).contains("dim[0] = 9"));
}

#[test]
fn nan_voxels_are_reported_with_count_and_position() {
    let h = header([2, 2, 1], 16, 32);
    let raw: Vec<u8> = [1.0f32, f32::NAN, 3.0, f32::INFINITY]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let e = read_err(&nifti_bytes(&h, &raw));
    assert!(
        e.contains("2 voxels are NaN or infinite") && e.contains("(z, y, x) = [0, 0, 1]"),
        "{e}"
    );
}

#[test]
fn unsupported_types_and_formats_are_named() {
    let h = header([2, 1, 1], 128, 24);
    assert!(read_err(&nifti_bytes(&h, &[0u8; 6])).contains("RGB"));
    let h = header([2, 1, 1], 32, 64);
    assert!(read_err(&nifti_bytes(&h, &[0u8; 16])).contains("complex"));
    let mut b = nifti_bytes(&header([2, 1, 1], 2, 8), &[0u8; 2]);
    b[344..348].copy_from_slice(b"ni1\0");
    assert!(read_err(&b).contains(".hdr"));
    assert!(read_err(b"not a nifti file").contains("too short"));
    let e = nifti::read_volume("/nonexistent/dir/ct.nii.gz").unwrap_err();
    assert!(matches!(e, Error::Io { .. }) && e.to_string().contains("/nonexistent/dir/ct.nii.gz"));
}

#[test]
fn label_values_must_be_small_integers() {
    let h = header([2, 1, 1], 4, 16);
    let raw: Vec<u8> = [3i16, 300].iter().flat_map(|v| v.to_le_bytes()).collect();
    let e = format_message(nifti::read_labels_from_bytes(&nifti_bytes(&h, &raw), Path::new("l.nii")).unwrap_err());
    assert!(e.contains("the value 300") && e.contains("0 to 255"), "{e}");
    let h = header([2, 1, 1], 16, 32);
    let raw: Vec<u8> = [1.0f32, 2.5].iter().flat_map(|v| v.to_le_bytes()).collect();
    let e = format_message(nifti::read_labels_from_bytes(&nifti_bytes(&h, &raw), Path::new("l.nii")).unwrap_err());
    assert!(e.contains("non-integer value 2.5"), "{e}");
    // Integral floats and other integer types are fine.
    let raw: Vec<u8> = [1.0f32, 7.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let l = nifti::read_labels_from_bytes(&nifti_bytes(&h, &raw), Path::new("l.nii")).unwrap();
    assert_eq!(l.data, vec![1, 7]);
}

#[test]
fn mutated_headers_never_panic() {
    // Thousands of random corruptions of a valid file (header fields, lengths, gzip): the
    // reader must answer each with a volume or an error, never a panic.
    let mut h = header([6, 5, 4], 4, 16);
    h.sform_code = 1;
    h.srow = [[0.8, 0.0, 0.0, 1.0], [0.0, 0.9, 0.0, 2.0], [0.0, 0.0, 2.5, 3.0]];
    let base = nifti_bytes(&h, &vec![7u8; 6 * 5 * 4 * 2]);
    let mut rng = Rng::new(0xf022);
    let mut ok = 0;
    for round in 0..4000 {
        let mut b = base.clone();
        let flips = 1 + rng.below(6) as usize;
        for _ in 0..flips {
            let at = rng.below(352) as usize;
            b[at] = match rng.below(4) {
                0 => 0,
                1 => 0xff,
                2 => b[at] ^ (1 << rng.below(8)),
                _ => rng.below(256) as u8,
            };
        }
        if round % 7 == 0 {
            b.truncate(rng.below(b.len() as u64) as usize);
        }
        let bytes = if round % 5 == 0 { gzip(&b) } else { b };
        let r = std::panic::catch_unwind(|| {
            let v = nifti::read_volume_from_bytes(&bytes, Path::new("m.nii")).is_ok();
            let l = nifti::read_labels_from_bytes(&bytes, Path::new("m.nii")).is_ok();
            v || l
        });
        ok += r.expect("reader panicked") as usize;
    }
    // Some mutations hit unused fields and still read: the test exercises both outcomes.
    assert!(ok > 100 && ok < 4000, "{ok}");
}
