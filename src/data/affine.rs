//! Small 4x4 affine helpers for voxel-to-world geometry (f64, row-major `[[f64; 4]; 4]`).
//!
//! Conventions follow NIfTI: the affine maps a voxel index `(i, j, k, 1)`, `i` the fastest axis
//! on disk (x), to RAS+ world millimetres.

/// A 4x4 homogeneous matrix, row-major.
pub type Mat4 = [[f64; 4]; 4];

/// The identity matrix.
pub const IDENTITY: Mat4 = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

/// `a * b`.
pub fn mul(a: &Mat4, b: &Mat4) -> Mat4 {
    let mut out = [[0.0; 4]; 4];
    for (r, row) in out.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = (0..4).map(|k| a[r][k] * b[k][c]).sum();
        }
    }
    out
}

/// Applies the affine to voxel coordinates `(i, j, k)`.
pub fn apply(a: &Mat4, ijk: [f64; 3]) -> [f64; 3] {
    let mut out = [0.0; 3];
    for (r, v) in out.iter_mut().enumerate() {
        *v = a[r][0] * ijk[0] + a[r][1] * ijk[1] + a[r][2] * ijk[2] + a[r][3];
    }
    out
}

/// Determinant of the upper-left 3x3 block.
pub fn det3(a: &Mat4) -> f64 {
    a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
        + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
}

/// Inverse of an affine (last row `0 0 0 1`), or `None` when its 3x3 block is singular.
pub fn inverse(a: &Mat4) -> Option<Mat4> {
    let det = det3(a);
    if !det.is_finite() || det.abs() < 1e-12 {
        return None;
    }
    let m = |r: usize, c: usize| a[r][c];
    let mut inv = IDENTITY;
    inv[0][0] = (m(1, 1) * m(2, 2) - m(1, 2) * m(2, 1)) / det;
    inv[0][1] = (m(0, 2) * m(2, 1) - m(0, 1) * m(2, 2)) / det;
    inv[0][2] = (m(0, 1) * m(1, 2) - m(0, 2) * m(1, 1)) / det;
    inv[1][0] = (m(1, 2) * m(2, 0) - m(1, 0) * m(2, 2)) / det;
    inv[1][1] = (m(0, 0) * m(2, 2) - m(0, 2) * m(2, 0)) / det;
    inv[1][2] = (m(0, 2) * m(1, 0) - m(0, 0) * m(1, 2)) / det;
    inv[2][0] = (m(1, 0) * m(2, 1) - m(1, 1) * m(2, 0)) / det;
    inv[2][1] = (m(0, 1) * m(2, 0) - m(0, 0) * m(2, 1)) / det;
    inv[2][2] = (m(0, 0) * m(1, 1) - m(0, 1) * m(1, 0)) / det;
    for row in inv.iter_mut().take(3) {
        row[3] = -(row[0] * a[0][3] + row[1] * a[1][3] + row[2] * a[2][3]);
    }
    Some(inv)
}

/// Lengths of the first three columns: the voxel spacing along i, j, k in millimetres.
pub fn column_norms(a: &Mat4) -> [f64; 3] {
    let mut out = [0.0; 3];
    for (c, v) in out.iter_mut().enumerate() {
        *v = (a[0][c] * a[0][c] + a[1][c] * a[1][c] + a[2][c] * a[2][c]).sqrt();
    }
    out
}

/// Largest absolute difference between two matrices' entries.
pub fn max_abs_diff(a: &Mat4, b: &Mat4) -> f64 {
    let mut worst: f64 = 0.0;
    for r in 0..4 {
        for c in 0..4 {
            worst = worst.max((a[r][c] - b[r][c]).abs());
        }
    }
    worst
}

/// The NIfTI quaternion form: rotation `(b, c, d)`, offsets, and `qfac` (+1 or -1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quatern {
    pub b: f64,
    pub c: f64,
    pub d: f64,
    pub offset: [f64; 3],
    pub qfac: f64,
}

/// The affine of a NIfTI qform (method 2), as `nifti1_io.c` builds it. `pixdim` are the three
/// spatial spacings; their sign is ignored (the handedness comes from `qfac` alone).
pub fn quatern_to_affine(q: &Quatern, pixdim: [f64; 3]) -> Mat4 {
    let (mut b, mut c, mut d) = (q.b, q.c, q.d);
    let mut a = 1.0 - (b * b + c * c + d * d);
    if a < 1e-7 {
        // Not a unit quaternion: renormalise (b, c, d) and take a 180-degree rotation.
        let n = 1.0 / (b * b + c * c + d * d).sqrt();
        b *= n;
        c *= n;
        d *= n;
        a = 0.0;
    } else {
        a = a.sqrt();
    }
    let r = [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - c * c - b * b,
        ],
    ];
    let zsign = if q.qfac < 0.0 { -1.0 } else { 1.0 };
    let scale = [pixdim[0].abs(), pixdim[1].abs(), pixdim[2].abs() * zsign];
    let mut out = IDENTITY;
    for row in 0..3 {
        for col in 0..3 {
            out[row][col] = r[row][col] * scale[col];
        }
        out[row][3] = q.offset[row];
    }
    out
}

/// The quaternion form closest to an affine: columns normalised, made orthogonal
/// (Gram-Schmidt, exact for the rotations, flips and permutations CT headers hold), with
/// `qfac = -1` for a left-handed frame. Returns the quaternion and the column spacings.
pub fn affine_to_quatern(a: &Mat4) -> (Quatern, [f64; 3]) {
    let spacing = column_norms(a);
    let mut cols = [[0.0f64; 3]; 3];
    for (c, col) in cols.iter_mut().enumerate() {
        let n = if spacing[c] > 0.0 { spacing[c] } else { 1.0 };
        *col = [a[0][c] / n, a[1][c] / n, a[2][c] / n];
    }
    let dot = |u: &[f64; 3], v: &[f64; 3]| u[0] * v[0] + u[1] * v[1] + u[2] * v[2];
    let normalise = |u: [f64; 3]| {
        let n = dot(&u, &u).sqrt();
        if n > 0.0 { [u[0] / n, u[1] / n, u[2] / n] } else { u }
    };
    let c0 = normalise(cols[0]);
    let p = dot(&c0, &cols[1]);
    let c1 = normalise([cols[1][0] - p * c0[0], cols[1][1] - p * c0[1], cols[1][2] - p * c0[2]]);
    let cross = [
        c0[1] * c1[2] - c0[2] * c1[1],
        c0[2] * c1[0] - c0[0] * c1[2],
        c0[0] * c1[1] - c0[1] * c1[0],
    ];
    // The third column is the right-handed cross product; its sign against the input decides qfac.
    let qfac = if dot(&cross, &cols[2]) < 0.0 { -1.0 } else { 1.0 };
    let c2 = cross;
    // r[row][col]
    let r = [[c0[0], c1[0], c2[0]], [c0[1], c1[1], c2[1]], [c0[2], c1[2], c2[2]]];
    let trace = r[0][0] + r[1][1] + r[2][2] + 1.0;
    let (mut qa, mut qb, mut qc, mut qd);
    if trace > 0.5 {
        qa = 0.5 * trace.sqrt();
        qb = 0.25 * (r[2][1] - r[1][2]) / qa;
        qc = 0.25 * (r[0][2] - r[2][0]) / qa;
        qd = 0.25 * (r[1][0] - r[0][1]) / qa;
    } else {
        let xd = 1.0 + r[0][0] - (r[1][1] + r[2][2]);
        let yd = 1.0 + r[1][1] - (r[0][0] + r[2][2]);
        let zd = 1.0 + r[2][2] - (r[0][0] + r[1][1]);
        if xd > 1.0 {
            qb = 0.5 * xd.sqrt();
            qc = 0.25 * (r[0][1] + r[1][0]) / qb;
            qd = 0.25 * (r[0][2] + r[2][0]) / qb;
            qa = 0.25 * (r[2][1] - r[1][2]) / qb;
        } else if yd > 1.0 {
            qc = 0.5 * yd.sqrt();
            qb = 0.25 * (r[0][1] + r[1][0]) / qc;
            qd = 0.25 * (r[1][2] + r[2][1]) / qc;
            qa = 0.25 * (r[0][2] - r[2][0]) / qc;
        } else {
            qd = 0.5 * zd.sqrt();
            qb = 0.25 * (r[0][2] + r[2][0]) / qd;
            qc = 0.25 * (r[1][2] + r[2][1]) / qd;
            qa = 0.25 * (r[1][0] - r[0][1]) / qd;
        }
        if qa < 0.0 {
            qa = -qa;
            qb = -qb;
            qc = -qc;
            qd = -qd;
        }
    }
    let _ = qa;
    (
        Quatern {
            b: qb,
            c: qc,
            d: qd,
            offset: [a[0][3], a[1][3], a[2][3]],
            qfac,
        },
        spacing,
    )
}

/// Orientation letters of the voxel axes (i, j, k) in the RAS+ world, as nibabel's
/// `aff2axcodes`: for each axis the world direction it points to most.
pub fn axis_codes(a: &Mat4) -> [char; 3] {
    let (world, sign) = dominant_axes(a);
    let mut out = ['?'; 3];
    for axis in 0..3 {
        out[axis] = match (world[axis], sign[axis] > 0.0) {
            (0, true) => 'R',
            (0, false) => 'L',
            (1, true) => 'A',
            (1, false) => 'P',
            (2, true) => 'S',
            _ => 'I',
        };
    }
    out
}

/// For each voxel axis, the world axis it is closest to and the sign along it, chosen as a
/// permutation (largest absolute direction cosine first, so oblique frames stay consistent).
pub fn dominant_axes(a: &Mat4) -> ([usize; 3], [f64; 3]) {
    let spacing = column_norms(a);
    let mut cos = [[0.0f64; 3]; 3]; // cos[voxel axis][world axis]
    for v in 0..3 {
        for w in 0..3 {
            cos[v][w] = if spacing[v] > 0.0 { a[w][v] / spacing[v] } else { 0.0 };
        }
    }
    let mut world = [usize::MAX; 3];
    let mut sign = [1.0; 3];
    let mut used_v = [false; 3];
    let mut used_w = [false; 3];
    for _ in 0..3 {
        let mut best = (-1.0, 0, 0);
        for v in 0..3 {
            for w in 0..3 {
                if !used_v[v] && !used_w[w] && cos[v][w].abs() > best.0 {
                    best = (cos[v][w].abs(), v, w);
                }
            }
        }
        let (_, v, w) = best;
        used_v[v] = true;
        used_w[w] = true;
        world[v] = w;
        sign[v] = if cos[v][w] < 0.0 { -1.0 } else { 1.0 };
    }
    (world, sign)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_undoes_affine() {
        let a = [
            [0.0, -0.8, 0.1, 12.0],
            [0.9, 0.0, 0.0, -3.0],
            [0.0, 0.05, 2.5, 100.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let inv = inverse(&a).unwrap();
        let id = mul(&a, &inv);
        // Round-off of a well-conditioned 3x3 inverse stays near machine epsilon times entries ~100.
        assert!(max_abs_diff(&id, &IDENTITY) < 1e-12, "{id:?}");
    }

    #[test]
    fn quatern_round_trip_for_flips_and_permutations() {
        let cases: [Mat4; 3] = [
            [
                [-0.7, 0.0, 0.0, 10.0],
                [0.0, -0.7, 0.0, 20.0],
                [0.0, 0.0, 2.5, -30.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
            [
                [0.0, 0.0, 1.5, 1.0],
                [1.0, 0.0, 0.0, 2.0],
                [0.0, -3.0, 0.0, 3.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
            [
                [3.0, 0.0, 0.0, -177.9],
                [0.0, 3.0, 0.0, 11.3],
                [0.0, 0.0, -3.0, 94.3],
                [0.0, 0.0, 0.0, 1.0],
            ],
        ];
        for a in cases {
            let (q, spacing) = affine_to_quatern(&a);
            let back = quatern_to_affine(&q, spacing);
            // Exact rotations: only floating round-off (entries up to ~180 mm) remains.
            assert!(max_abs_diff(&a, &back) < 1e-9, "{a:?} -> {q:?} -> {back:?}");
        }
    }

    #[test]
    fn axis_codes_match_nibabel_conventions() {
        let ras = [
            [3.0, 0.0, 0.0, 0.0],
            [0.0, 3.0, 0.0, 0.0],
            [0.0, 0.0, 3.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert_eq!(axis_codes(&ras), ['R', 'A', 'S']);
        let lps = [
            [-1.0, 0.0, 0.0, 0.0],
            [0.0, -1.0, 0.0, 0.0],
            [0.0, 0.0, 2.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert_eq!(axis_codes(&lps), ['L', 'P', 'S']);
        let permuted = [
            [0.0, 0.0, 1.0, 0.0],
            [-1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert_eq!(axis_codes(&permuted), ['P', 'S', 'R']);
    }
}
