//! Resampling between grids that cover the same field of view: trilinear for images, nearest
//! neighbour for labels (keeping every label present).
//!
//! Grids are edge-aligned: a grid of `n` voxels resampled to `m` keeps the outer faces of the
//! first and last voxels in place, so output voxel `o` samples input coordinate
//! `(o + 0.5) * n / m - 0.5` (the convention of `skimage.transform.resize` and of
//! `align_corners=False`). The field of view is unchanged, the new spacing is exactly
//! `spacing * n / m`, and resampling back to `n` uses the same rule in reverse.

use super::affine::{self, IDENTITY, Mat4};
use super::volume::{Geometry, LabelVolume, Volume};

/// Dims (z, y, x) that bring `spacing` closest to `target` over the same field of view.
pub fn target_dims(dims: [usize; 3], spacing: [f64; 3], target: [f64; 3]) -> [usize; 3] {
    let mut out = [1; 3];
    for a in 0..3 {
        let n = (dims[a] as f64 * spacing[a] / target[a]).round();
        out[a] = if n.is_finite() && n >= 1.0 { n as usize } else { 1 };
    }
    out
}

/// The affine of the edge-aligned grid of `new_dims` over the grid (`affine`, `dims`).
pub fn grid_affine(affine: &Mat4, dims: [usize; 3], new_dims: [usize; 3]) -> Mat4 {
    // (z, y, x) -> (i, j, k) order.
    let scale = [
        dims[2] as f64 / new_dims[2] as f64,
        dims[1] as f64 / new_dims[1] as f64,
        dims[0] as f64 / new_dims[0] as f64,
    ];
    let mut s = IDENTITY;
    for a in 0..3 {
        s[a][a] = scale[a];
        s[a][3] = 0.5 * scale[a] - 0.5;
    }
    affine::mul(affine, &s)
}

/// The geometry of resampling `g` to `new_dims`.
pub fn resampled_geometry(g: &Geometry, new_dims: [usize; 3]) -> Geometry {
    if new_dims == g.dims {
        return g.clone();
    }
    g.derived(new_dims, grid_affine(&g.affine, g.dims, new_dims))
}

/// Resamples a volume to `target` spacing (z, y, x), trilinearly.
pub fn resample(volume: &Volume, target: [f64; 3]) -> Volume {
    let new_dims = target_dims(volume.geometry.dims, volume.geometry.spacing, target);
    resample_to_dims(volume, new_dims)
}

/// Resamples a volume to `new_dims` over the same field of view, trilinearly.
pub fn resample_to_dims(volume: &Volume, new_dims: [usize; 3]) -> Volume {
    Volume {
        data: resample_linear(&volume.data, volume.geometry.dims, new_dims),
        geometry: resampled_geometry(&volume.geometry, new_dims),
    }
}

/// Resamples a label map to `target` spacing (nearest neighbour, every label kept).
pub fn resample_labels(labels: &LabelVolume, target: [f64; 3]) -> LabelVolume {
    let new_dims = target_dims(labels.geometry.dims, labels.geometry.spacing, target);
    resample_labels_to_dims(labels, new_dims)
}

/// Resamples a label map to `new_dims` (nearest neighbour, every label kept).
pub fn resample_labels_to_dims(labels: &LabelVolume, new_dims: [usize; 3]) -> LabelVolume {
    LabelVolume {
        data: resample_nearest(&labels.data, labels.geometry.dims, new_dims),
        geometry: resampled_geometry(&labels.geometry, new_dims),
    }
}

/// For each output index along an axis: the two input neighbours and the weight of the second.
fn linear_taps(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let p = ((o as f64 + 0.5) * scale - 0.5).clamp(0.0, (n_in - 1) as f64);
            let i0 = p.floor() as usize;
            let i1 = (i0 + 1).min(n_in - 1);
            (i0, i1, (p - i0 as f64) as f32)
        })
        .collect()
}

/// The input index nearest to each output index along an axis.
fn nearest_taps(n_in: usize, n_out: usize) -> Vec<usize> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| (((o as f64 + 0.5) * scale).floor() as usize).min(n_in - 1))
        .collect()
}

/// Trilinear resampling of `data` (z, y, x) from `dims` to `new_dims`, separably (exact for
/// trilinear weights): z, then y, then x.
pub fn resample_linear(data: &[f32], dims: [usize; 3], new_dims: [usize; 3]) -> Vec<f32> {
    assert_eq!(
        data.len(),
        dims.iter().product::<usize>(),
        "data does not fit dims {dims:?}"
    );
    let [nz, ny, nx] = dims;
    let [mz, my, mx] = new_dims;
    let mut cur: Vec<f32>;
    // z pass: planes of ny * nx.
    let plane = ny * nx;
    let src: &[f32] = data;
    let after_z: Option<Vec<f32>> = (mz != nz).then(|| {
        let mut out = vec![0.0f32; mz * plane];
        for (o, (i0, i1, w)) in linear_taps(nz, mz).into_iter().enumerate() {
            let (a, b) = (&src[i0 * plane..(i0 + 1) * plane], &src[i1 * plane..(i1 + 1) * plane]);
            for ((d, &va), &vb) in out[o * plane..(o + 1) * plane].iter_mut().zip(a).zip(b) {
                *d = va + w * (vb - va);
            }
        }
        out
    });
    let src: &[f32] = after_z.as_deref().unwrap_or(src);
    // y pass: rows of nx.
    let after_y: Option<Vec<f32>> = (my != ny).then(|| {
        let taps = linear_taps(ny, my);
        let mut out = vec![0.0f32; mz * my * nx];
        for z in 0..mz {
            let sp = &src[z * ny * nx..(z + 1) * ny * nx];
            let dp = &mut out[z * my * nx..(z + 1) * my * nx];
            for (o, &(i0, i1, w)) in taps.iter().enumerate() {
                let (a, b) = (&sp[i0 * nx..(i0 + 1) * nx], &sp[i1 * nx..(i1 + 1) * nx]);
                for ((d, &va), &vb) in dp[o * nx..(o + 1) * nx].iter_mut().zip(a).zip(b) {
                    *d = va + w * (vb - va);
                }
            }
        }
        out
    });
    let src: &[f32] = after_y.as_deref().unwrap_or(src);
    // x pass: within rows.
    if mx != nx {
        let taps = linear_taps(nx, mx);
        cur = Vec::with_capacity(mz * my * mx);
        for row in src.chunks_exact(nx) {
            cur.extend(taps.iter().map(|&(i0, i1, w)| row[i0] + w * (row[i1] - row[i0])));
        }
    } else {
        cur = src.to_vec();
    }
    cur
}

/// Nearest-neighbour resampling of labels. A label present in the input but lost on the new
/// grid (a structure thinner than the new spacing) is put back on the output voxels that its
/// input voxels fall in, without erasing another label's last voxel.
pub fn resample_nearest(data: &[u8], dims: [usize; 3], new_dims: [usize; 3]) -> Vec<u8> {
    assert_eq!(
        data.len(),
        dims.iter().product::<usize>(),
        "data does not fit dims {dims:?}"
    );
    let [_, ny, nx] = dims;
    let [mz, my, mx] = new_dims;
    let tz = nearest_taps(dims[0], mz);
    let ty = nearest_taps(ny, my);
    let tx = nearest_taps(nx, mx);
    let mut out = Vec::with_capacity(mz * my * mx);
    for &z in &tz {
        for &y in &ty {
            let row = &data[(z * ny + y) * nx..(z * ny + y + 1) * nx];
            out.extend(tx.iter().map(|&x| row[x]));
        }
    }
    restore_lost_labels(data, dims, &mut out, new_dims);
    out
}

fn counts(data: &[u8]) -> [usize; 256] {
    let mut c = [0usize; 256];
    for &v in data {
        c[v as usize] += 1;
    }
    c
}

fn restore_lost_labels(input: &[u8], dims: [usize; 3], out: &mut [u8], new_dims: [usize; 3]) {
    let before = counts(input);
    let mut after = counts(out);
    let lost: Vec<u8> = (1..=255u8)
        .filter(|&l| before[l as usize] > 0 && after[l as usize] == 0)
        .collect();
    if lost.is_empty() {
        return;
    }
    // Output cell o covers input coordinates [o * s - 0.5, (o + 1) * s - 0.5), s = n_in / n_out.
    let cell =
        |p: usize, n_in: usize, n_out: usize| (((p as f64 + 0.5) * n_out as f64 / n_in as f64) as usize).min(n_out - 1);
    let [nz, ny, nx] = dims;
    let [_, my, mx] = new_dims;
    for (idx, &v) in input.iter().enumerate() {
        if v == 0 || !lost.contains(&v) {
            continue;
        }
        let (z, y, x) = (idx / (ny * nx), (idx / nx) % ny, idx % nx);
        let o = (cell(z, nz, new_dims[0]) * my + cell(y, ny, my)) * mx + cell(x, nx, mx);
        let current = out[o];
        if current != v && after[current as usize] > 1 {
            after[current as usize] -= 1;
            after[v as usize] += 1;
            out[o] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_dims_copy_exactly() {
        let data: Vec<f32> = (0..60).map(|v| v as f32 * 0.5).collect();
        assert_eq!(resample_linear(&data, [3, 4, 5], [3, 4, 5]), data);
    }

    #[test]
    fn linear_ramp_is_reproduced_inside() {
        // A linear function is interpolated exactly away from the clamped borders.
        let dims = [6, 8, 10];
        let f = |z: f64, y: f64, x: f64| 2.0 * z - 0.5 * y + 0.25 * x;
        let data: Vec<f32> = (0..480)
            .map(|i| {
                let [z, y, x] = crate::data::volume::unravel(i, dims);
                f(z as f64, y as f64, x as f64) as f32
            })
            .collect();
        let new_dims = [12, 8, 5];
        let out = resample_linear(&data, dims, new_dims);
        for (i, &v) in out.iter().enumerate() {
            let [z, y, x] = crate::data::volume::unravel(i, new_dims);
            let pz = (z as f64 + 0.5) * 6.0 / 12.0 - 0.5;
            let px = (x as f64 + 0.5) * 10.0 / 5.0 - 0.5;
            if !(0.0..=5.0).contains(&pz) {
                continue;
            }
            // f32 arithmetic on values up to ~12: a few ulps.
            assert!((v as f64 - f(pz, y as f64, px)).abs() < 1e-4, "{i}: {v}");
        }
    }

    #[test]
    fn thin_label_survives_downsampling() {
        // One slice of label 7 in 10; going to 2 slices drops it with plain nearest neighbour.
        let dims = [10, 4, 4];
        let mut data = vec![1u8; 160];
        for v in &mut data[3 * 16..4 * 16] {
            *v = 7;
        }
        let out = resample_nearest(&data, dims, [2, 4, 4]);
        assert!(out.contains(&7));
        assert!(out.contains(&1));
    }
}
