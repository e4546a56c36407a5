//! Reorientation to one canonical voxel order by axis permutations and flips (no
//! interpolation), and back.
//!
//! The canonical order is LPS: `i` (x, fastest) runs to the patient's left, `j` (y) to
//! posterior, `k` (z) to superior. An axial slice `[y][x]` then shows anterior at the top and
//! the patient's right on the left of the image: the radiological view.

use serde::{Deserialize, Serialize};

use super::affine::{self, Mat4};
use super::volume::Geometry;

/// The canonical axis codes (i, j, k).
pub const CANONICAL: [char; 3] = ['L', 'P', 'S'];

/// World direction (RAS+ axis, sign) the canonical voxel axes point to: L = -x, P = -y, S = +z.
const CANONICAL_SIGN: [f64; 3] = [-1.0, -1.0, 1.0];

/// A permutation with flips of the voxel axes (i, j, k): new axis `a` is old axis `src[a]`,
/// reversed when `flip[a]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reorientation {
    pub src: [usize; 3],
    pub flip: [bool; 3],
}

impl Reorientation {
    /// No change.
    pub fn identity() -> Self {
        Reorientation {
            src: [0, 1, 2],
            flip: [false; 3],
        }
    }

    /// The reorientation that brings a grid with this affine to canonical LPS.
    pub fn to_canonical(affine: &Mat4) -> Self {
        let (world, sign) = affine::dominant_axes(affine);
        let mut r = Reorientation::identity();
        for old in 0..3 {
            let new = world[old];
            r.src[new] = old;
            r.flip[new] = sign[old] != CANONICAL_SIGN[new];
        }
        r
    }

    /// Whether this changes nothing.
    pub fn is_identity(&self) -> bool {
        *self == Reorientation::identity()
    }

    /// The reorientation that undoes this one.
    pub fn inverse(&self) -> Self {
        let mut inv = Reorientation::identity();
        for new in 0..3 {
            inv.src[self.src[new]] = new;
            inv.flip[self.src[new]] = self.flip[new];
        }
        inv
    }

    /// Dims (z, y, x) after reorienting a grid of `dims` (z, y, x).
    pub fn dims(&self, dims: [usize; 3]) -> [usize; 3] {
        let ijk = [dims[2], dims[1], dims[0]];
        let new = [ijk[self.src[0]], ijk[self.src[1]], ijk[self.src[2]]];
        [new[2], new[1], new[0]]
    }

    /// The geometry after reorientation (same world positions, new voxel order).
    pub fn geometry(&self, g: &Geometry) -> Geometry {
        if self.is_identity() {
            return g.clone();
        }
        let ijk = [g.dims[2], g.dims[1], g.dims[0]];
        // T maps a new voxel index to the old one; the new affine is A * T.
        let mut t = [[0.0; 4]; 4];
        t[3][3] = 1.0;
        for new in 0..3 {
            let old = self.src[new];
            if self.flip[new] {
                t[old][new] = -1.0;
                t[old][3] = (ijk[old] - 1) as f64;
            } else {
                t[old][new] = 1.0;
            }
        }
        g.derived(self.dims(g.dims), affine::mul(&g.affine, &t))
    }

    /// Reorders `data` (z, y, x, on a grid of `dims`) into the new voxel order.
    pub fn apply<T: Copy>(&self, data: &[T], dims: [usize; 3]) -> Vec<T> {
        if self.is_identity() {
            return data.to_vec();
        }
        let ijk = [dims[2], dims[1], dims[0]];
        let stride = [1isize, ijk[0] as isize, (ijk[0] * ijk[1]) as isize];
        let mut step = [0isize; 3];
        let mut start = 0isize;
        for ((st, &old), &flip) in step.iter_mut().zip(&self.src).zip(&self.flip) {
            if flip {
                *st = -stride[old];
                start += (ijk[old] as isize - 1) * stride[old];
            } else {
                *st = stride[old];
            }
        }
        let n = [ijk[self.src[0]], ijk[self.src[1]], ijk[self.src[2]]];
        let mut out = Vec::with_capacity(data.len());
        for k in 0..n[2] {
            let base_k = start + k as isize * step[2];
            for j in 0..n[1] {
                let mut at = base_k + j as isize * step[1];
                for _ in 0..n[0] {
                    out.push(data[at as usize]);
                    at += step[0];
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(affine: Mat4, dims: [usize; 3]) -> Geometry {
        Geometry::from_affine(dims, affine)
    }

    #[test]
    fn ras_grid_becomes_lps_and_keeps_world_positions() {
        let a = [
            [3.0, 0.0, 0.0, -170.0],
            [0.0, 3.0, 0.0, 10.0],
            [0.0, 0.0, 3.0, 90.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let g = grid(a, [4, 5, 6]);
        let r = Reorientation::to_canonical(&g.affine);
        let g2 = r.geometry(&g);
        assert_eq!(g2.axis_codes(), CANONICAL);
        let data: Vec<u32> = (0..g.voxel_count() as u32).collect();
        let out = r.apply(&data, g.dims);
        // Every voxel keeps its world position: compare through both affines.
        for (idx, &v) in out.iter().enumerate() {
            let [z, y, x] = crate::data::volume::unravel(idx, g2.dims);
            let w = affine::apply(&g2.affine, [x as f64, y as f64, z as f64]);
            let old = v as usize;
            let [oz, oy, ox] = crate::data::volume::unravel(old, g.dims);
            let w_old = affine::apply(&g.affine, [ox as f64, oy as f64, oz as f64]);
            for d in 0..3 {
                assert!((w[d] - w_old[d]).abs() < 1e-9);
            }
        }
        let back = r.inverse().apply(&out, g2.dims);
        assert_eq!(back, data);
        let g3 = r.inverse().geometry(&g2);
        assert!(affine::max_abs_diff(&g3.affine, &g.affine) < 1e-9);
    }

    #[test]
    fn permuted_axes_are_found() {
        // i -> superior, j -> right, k -> anterior (a sagittal-ish acquisition order).
        let a = [
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 2.0, 0.0],
            [0.5, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let g = grid(a, [3, 4, 5]);
        let r = Reorientation::to_canonical(&g.affine);
        let g2 = r.geometry(&g);
        assert_eq!(g2.axis_codes(), CANONICAL);
        assert_eq!(g2.spacing, [0.5, 2.0, 1.0]);
        assert_eq!(r.dims(g.dims), [5, 3, 4]);
    }
}
