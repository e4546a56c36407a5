//! Volumes and their geometry: voxels in (z, y, x) order and the affine that places them in
//! the patient's world.

use serde::{Deserialize, Serialize};

use super::affine::{self, Mat4};

/// The spatial fields of the NIfTI-1 header a volume was read from, kept verbatim so that a
/// mask written for that volume carries exactly the same qform and sform.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpatialHeader {
    /// `pixdim[0..4]`: qfac (normalised to +1 or -1) and the three spatial spacings as stored.
    pub pixdim: [f32; 4],
    /// `quatern_b`, `quatern_c`, `quatern_d`.
    pub quatern: [f32; 3],
    /// `qoffset_x`, `qoffset_y`, `qoffset_z`.
    pub qoffset: [f32; 3],
    /// `srow_x`, `srow_y`, `srow_z`.
    pub srow: [[f32; 4]; 3],
    pub qform_code: i16,
    pub sform_code: i16,
    /// Spatial and temporal units (NIfTI `xyzt_units`).
    pub xyzt_units: u8,
}

/// Where a voxel grid sits in the world.
///
/// `dims` and `spacing` are in array order (z, y, x). The affine follows NIfTI: it maps a voxel
/// index `(i, j, k)` = (x, y, z index) to RAS+ millimetres.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Geometry {
    /// Grid size (z, y, x).
    pub dims: [usize; 3],
    /// Voxel size in mm (z, y, x): the lengths of the affine's k, j, i columns.
    pub spacing: [f64; 3],
    /// Voxel (i, j, k) to RAS+ world (mm).
    pub affine: Mat4,
    /// NIfTI qform_code (0 unknown, 1 scanner, 2 aligned, 3 Talairach, 4 MNI, 5 template).
    pub qform_code: i16,
    /// NIfTI sform_code.
    pub sform_code: i16,
    /// The raw spatial header fields of the file this geometry was read from; `None` for
    /// derived geometries (reoriented, resampled, synthetic).
    pub header: Option<SpatialHeader>,
}

impl Geometry {
    /// A derived geometry from dims (z, y, x) and an affine; spacing is taken from the affine.
    /// Both form codes are 1 (scanner).
    pub fn from_affine(dims: [usize; 3], affine: Mat4) -> Geometry {
        let n = affine::column_norms(&affine);
        Geometry {
            dims,
            spacing: [n[2], n[1], n[0]],
            affine,
            qform_code: 1,
            sform_code: 1,
            header: None,
        }
    }

    /// Number of voxels.
    pub fn voxel_count(&self) -> usize {
        self.dims.iter().product()
    }

    /// Voxels in one axial slice (y * x).
    pub fn slice_len(&self) -> usize {
        self.dims[1] * self.dims[2]
    }

    /// Orientation letters of the voxel axes (i, j, k), e.g. `['L', 'P', 'S']`.
    pub fn axis_codes(&self) -> [char; 3] {
        affine::axis_codes(&self.affine)
    }

    /// A new grid in the same world: the raw header is dropped, the form codes are kept (or
    /// both set to 1 when neither was set, since a derived grid needs its affine written).
    pub fn derived(&self, dims: [usize; 3], affine: Mat4) -> Geometry {
        let mut g = Geometry::from_affine(dims, affine);
        if self.qform_code > 0 || self.sform_code > 0 {
            g.qform_code = self.qform_code;
            g.sform_code = self.sform_code;
        }
        g
    }

    /// Describes how `other` differs from this grid (shape, or affine beyond `tol_mm`), or
    /// `None` when they match.
    pub fn mismatch(&self, other: &Geometry, tol_mm: f64) -> Option<String> {
        if self.dims != other.dims {
            return Some(format!(
                "shape {} differs from {}",
                dims_text(other.dims),
                dims_text(self.dims)
            ));
        }
        let diff = affine::max_abs_diff(&self.affine, &other.affine);
        if diff.is_nan() || diff > tol_mm {
            return Some(format!(
                "affine differs by up to {diff:.4} mm (tolerance {tol_mm} mm): {} vs {}",
                affine_text(&other.affine),
                affine_text(&self.affine)
            ));
        }
        None
    }
}

/// `"Z x Y x X"`.
pub fn dims_text(dims: [usize; 3]) -> String {
    format!("{} x {} x {} (z, y, x)", dims[0], dims[1], dims[2])
}

fn affine_text(a: &Mat4) -> String {
    let rows: Vec<String> = a[..3]
        .iter()
        .map(|r| format!("[{:.3} {:.3} {:.3} {:.3}]", r[0], r[1], r[2], r[3]))
        .collect();
    rows.join(" ")
}

/// A scalar volume (CT intensities in HU after the header's scaling) in (z, y, x) order.
#[derive(Clone, Debug)]
pub struct Volume {
    pub data: Vec<f32>,
    pub geometry: Geometry,
}

/// A label map (0 = background) in (z, y, x) order.
#[derive(Clone, Debug)]
pub struct LabelVolume {
    pub data: Vec<u8>,
    pub geometry: Geometry,
}

impl Volume {
    /// The axial slice `z` as a (y, x) row-major slice.
    pub fn slice(&self, z: usize) -> &[f32] {
        let n = self.geometry.slice_len();
        &self.data[z * n..(z + 1) * n]
    }
}

impl LabelVolume {
    /// The axial slice `z` as a (y, x) row-major slice.
    pub fn slice(&self, z: usize) -> &[u8] {
        let n = self.geometry.slice_len();
        &self.data[z * n..(z + 1) * n]
    }

    /// The distinct nonzero labels present, ascending.
    pub fn labels_present(&self) -> Vec<u8> {
        labels_present(&self.data)
    }
}

/// The distinct nonzero values in a label array, ascending.
pub fn labels_present(data: &[u8]) -> Vec<u8> {
    let mut seen = [false; 256];
    for &v in data {
        seen[v as usize] = true;
    }
    (1..=255u8).filter(|&v| seen[v as usize]).collect()
}

/// (z, y, x) of a flat index on a grid of `dims` (z, y, x).
pub fn unravel(idx: usize, dims: [usize; 3]) -> [usize; 3] {
    let x = idx % dims[2];
    let y = (idx / dims[2]) % dims[1];
    let z = idx / (dims[2] * dims[1]);
    [z, y, x]
}
