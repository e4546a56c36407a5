//! `lrc superpixels` end to end on a small synthetic phantom volume.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lrc::data::nifti::{VoxelType, read_volume, write_volume};
use lrc::data::{Geometry, Volume};
use lrc::rng::Rng;
use lrc::superpixel::felzenszwalb;
use lrc::superpixel::overlay::BOUNDARY_RGB;
use lrc::superpixel::phantom::ct_phantom_slice;

/// z, y, x: a non-square slice so that a transposition would show.
const DIMS: [usize; 3] = [3, 64, 76];

/// LPS-stored grid (i to the left, j posterior, k superior), anisotropic, offset.
const LPS_AFFINE: [[f64; 4]; 4] = [
    [-1.5, 0.0, 0.0, 40.0],
    [0.0, -1.25, 0.0, 30.0],
    [0.0, 0.0, 4.0, -100.0],
    [0.0, 0.0, 0.0, 1.0],
];

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

/// Phantom slices in HU (float32 on disk, so what is read back is exactly this).
fn phantom_hu() -> Vec<f32> {
    let mut rng = Rng::new(11);
    let mut data = Vec::new();
    for _ in 0..DIMS[0] {
        let slice = ct_phantom_slice(DIMS[1], DIMS[2], 15.0, &mut rng);
        data.extend(slice.iter().map(|&v| -1000.0 + 2000.0 * v));
    }
    data
}

fn write_phantom(dir: &Path) -> PathBuf {
    let path = dir.join("ct.nii.gz");
    let volume = Volume {
        data: phantom_hu(),
        geometry: Geometry::from_affine(DIMS, LPS_AFFINE),
    };
    write_volume(&path, &volume, VoxelType::F32).unwrap();
    path
}

fn labels_of(path: &Path) -> (Vec<u32>, Geometry) {
    let v = read_volume(path).unwrap();
    let labels = v
        .data
        .iter()
        .map(|&l| {
            assert!(l >= 0.0 && l.fract() == 0.0, "label {l}");
            l as u32
        })
        .collect();
    (labels, v.geometry)
}

#[test]
fn label_map_keeps_the_grid_and_slice_option_zeroes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let ct = write_phantom(dir.path());
    let input = read_volume(&ct).unwrap();
    let all = dir.path().join("all.nii.gz");
    check_ok(&lrc(&["superpixels", "-i", s(&ct), "-o", s(&all)]));
    let (labels, g) = labels_of(&all);
    assert_eq!(g.dims, DIMS);
    assert_eq!(input.geometry.mismatch(&g, 1e-6), None);
    let plane = DIMS[1] * DIMS[2];
    for z in 0..DIMS[0] {
        let slice = &labels[z * plane..(z + 1) * plane];
        // Cleaned regions: 0 outside the body (the corners are air), several regions inside.
        assert_eq!(slice[0], 0);
        // Labels are numbered 1..=K with none skipped, and the body is split into several.
        let mut present: Vec<u32> = slice.iter().copied().filter(|&l| l > 0).collect();
        present.sort_unstable();
        present.dedup();
        let k = present.len() as u32;
        assert_eq!(present, (1..=k).collect::<Vec<_>>());
        assert!(k >= 4, "slice {z}: {k} regions");
    }

    let one = dir.path().join("one.nii.gz");
    check_ok(&lrc(&["superpixels", "-i", s(&ct), "-o", s(&one), "--slice", "1"]));
    let (only, g1) = labels_of(&one);
    assert_eq!(input.geometry.mismatch(&g1, 1e-6), None);
    assert!(only[..plane].iter().all(|&l| l == 0));
    assert!(only[2 * plane..].iter().all(|&l| l == 0));
    // Slices are segmented independently, so slice 1 alone equals slice 1 of the full run.
    assert_eq!(&only[plane..2 * plane], &labels[plane..2 * plane]);
}

#[test]
fn raw_labels_are_felzenszwalb_on_the_normalised_slice_plus_one() {
    let dir = tempfile::tempdir().unwrap();
    let ct = write_phantom(dir.path());
    let out = dir.path().join("raw.nii");
    check_ok(&lrc(&[
        "superpixels",
        "-i",
        s(&ct),
        "-o",
        s(&out),
        "--raw",
        "--slice",
        "2",
        "--scale",
        "60",
        "--sigma",
        "0.5",
        "--min-size",
        "10",
    ]));
    let (labels, _) = labels_of(&out);
    let hu = phantom_hu();
    let plane = DIMS[1] * DIMS[2];
    // HU clipped to [-1000, 1000] and mapped to [0, 1] in f32, widened to f64 as skimage does.
    let normalised: Vec<f64> = hu[2 * plane..3 * plane]
        .iter()
        .map(|&v| ((v.clamp(-1000.0, 1000.0) + 1000.0) * (1.0f32 / 2000.0)) as f64)
        .collect();
    let (expected, k) = felzenszwalb(&normalised, DIMS[1], DIMS[2], 60.0, 0.5, 10);
    assert!(k > 3, "{k} segments");
    let expected: Vec<u32> = expected.iter().map(|&l| l + 1).collect();
    assert_eq!(&labels[2 * plane..3 * plane], expected.as_slice());
    assert!(labels[..2 * plane].iter().all(|&l| l == 0));
}

fn read_png(path: &Path) -> (usize, usize, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buf)
}

#[test]
fn png_shows_the_radiological_view_whatever_the_stored_order() {
    let dir = tempfile::tempdir().unwrap();
    let ct = write_phantom(dir.path());
    let png_lps = dir.path().join("lps.png");
    check_ok(&lrc(&[
        "superpixels",
        "-i",
        s(&ct),
        "-o",
        s(&dir.path().join("a.nii.gz")),
        "--png",
        s(&png_lps),
    ]));
    let (w, h, rgb) = read_png(&png_lps);
    assert_eq!((w, h), (DIMS[2], DIMS[1]));
    let boundary = rgb.chunks(3).filter(|p| *p == BOUNDARY_RGB).count();
    assert!(boundary > 50 && boundary < w * h / 2, "{boundary} boundary pixels");

    // The same scan stored RAS (i and j reversed): the picture must not change.
    let hu = phantom_hu();
    let [nz, ny, nx] = DIMS;
    let mut flipped = vec![0.0f32; hu.len()];
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                flipped[(z * ny + (ny - 1 - y)) * nx + (nx - 1 - x)] = hu[(z * ny + y) * nx + x];
            }
        }
    }
    let mut ras = LPS_AFFINE;
    ras[0][0] = 1.5;
    ras[0][3] = 40.0 - 1.5 * (nx - 1) as f64;
    ras[1][1] = 1.25;
    ras[1][3] = 30.0 - 1.25 * (ny - 1) as f64;
    let ct_ras = dir.path().join("ct_ras.nii.gz");
    let volume = Volume {
        data: flipped,
        geometry: Geometry::from_affine(DIMS, ras),
    };
    write_volume(&ct_ras, &volume, VoxelType::F32).unwrap();
    let png_ras = dir.path().join("ras.png");
    let label_ras = dir.path().join("b.nii.gz");
    check_ok(&lrc(&[
        "superpixels",
        "-i",
        s(&ct_ras),
        "-o",
        s(&label_ras),
        "--png",
        s(&png_ras),
    ]));
    let (w2, h2, rgb2) = read_png(&png_ras);
    assert_eq!((w2, h2), (w, h));
    // Superpixels are computed on the slice as stored (raster order matters to Felzenszwalb),
    // so the boundaries may differ a little; the grey image under them must be the same.
    let grey = |img: &[u8]| -> Vec<Option<u8>> { img.chunks(3).map(|p| (p != BOUNDARY_RGB).then_some(p[0])).collect() };
    let (g1, g2) = (grey(&rgb), grey(&rgb2));
    let mut compared = 0;
    for (a, b) in g1.iter().zip(&g2) {
        if let (Some(a), Some(b)) = (a, b) {
            assert_eq!(a, b);
            compared += 1;
        }
    }
    assert!(compared > w * h / 2);
    let (labels_ras, g_ras) = labels_of(&label_ras);
    assert_eq!(g_ras.mismatch(&volume.geometry, 1e-6), None);
    assert_eq!(labels_ras.len(), hu.len());
}

#[test]
fn user_errors_are_reported_not_panicked() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no_such_ct.nii.gz");
    let out = lrc(&["superpixels", "-i", s(&missing), "-o", s(&dir.path().join("x.nii.gz"))]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no_such_ct.nii.gz") && !stderr.contains("panicked"),
        "{stderr}"
    );

    let ct = write_phantom(dir.path());
    let out = lrc(&[
        "superpixels",
        "-i",
        s(&ct),
        "-o",
        s(&dir.path().join("x.nii.gz")),
        "--slice",
        "3",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--slice 3"), "{stderr}");

    // The GPU Felzenszwalb where a GPU can be used; otherwise an error that says why.
    let out = lrc(&[
        "superpixels",
        "-i",
        s(&ct),
        "-o",
        s(&dir.path().join("x.nii.gz")),
        "--device",
        "cuda",
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    if out.status.success() {
        assert!(stdout.contains("GPU Felzenszwalb on"), "{stdout}");
        assert!(dir.path().join("x.nii.gz").exists());
    } else {
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            ["CUDA", "cuda", "GPU", "kernels"].iter().any(|w| stderr.contains(w)),
            "{stderr}"
        );
    }

    let out = lrc(&["superpixels", "-i", s(&ct), "-o", s(&dir.path().join("nodir/x.nii.gz"))]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nodir"), "{stderr}");
}

/// The output is never the input, and a smoothing beyond any slice is refused, not attempted.
#[test]
fn the_input_is_never_overwritten_and_sigma_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let ct = write_phantom(dir.path());
    let before = std::fs::read(&ct).unwrap();
    let same = dir.path().join("./ct.nii.gz");
    let out = lrc(&["superpixels", "-i", s(&ct), "-o", s(&same), "--device", "cpu"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("is also an input"), "{stderr}");
    assert_eq!(std::fs::read(&ct).unwrap(), before);
    let regions = dir.path().join("regions.nii.gz");
    let out = lrc(&[
        "superpixels",
        "-i",
        s(&ct),
        "-o",
        s(&regions),
        "--sigma",
        "1e20",
        "--device",
        "cpu",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("sigma must be at most") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
