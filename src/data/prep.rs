//! Preprocessing of one CT volume for 2-D training: canonical orientation, resampling to the
//! target spacing, intensity normalisation, axial slices; and the way back to the original
//! grid for predictions.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::intensity::Normalization;
use super::orient::Reorientation;
use super::volume::{Geometry, LabelVolume, Volume};
use crate::error::{Error, Result};

pub use super::resample::{resample, resample_labels, resample_labels_to_dims, resample_to_dims, target_dims};

/// The thesis's spacing (z, y, x) in mm: 2.5 x 1 x 1.
pub const DEFAULT_SPACING: [f64; 3] = [2.5, 1.0, 1.0];

/// Largest affine difference (mm) between an image and its label map that still counts as the
/// same grid: far below any voxel size, far above float32 round-off of header fields.
pub const GEOMETRY_TOLERANCE_MM: f64 = 1e-3;

/// A function from a normalised axial slice `(data, h, w)` to a region map of `h * w` region
/// ids (0 = no region), e.g. Felzenszwalb superpixels.
pub type RegionFn = Arc<dyn Fn(&[f32], usize, usize) -> Vec<u16> + Send + Sync>;

/// How volumes are prepared.
#[derive(Clone)]
pub struct PrepConfig {
    /// Target spacing (z, y, x) in mm.
    pub spacing: [f64; 3],
    /// Intensity mapping applied after resampling.
    pub normalization: Normalization,
    /// Reject volumes whose intensities do not look like CT (see [`super::intensity::check_ct`]).
    pub check_ct: bool,
    /// Optional per-slice region maps stored beside the slices.
    pub regions: Option<RegionFn>,
}

impl Default for PrepConfig {
    fn default() -> Self {
        PrepConfig {
            spacing: DEFAULT_SPACING,
            normalization: Normalization::default(),
            check_ct: true,
            regions: None,
        }
    }
}

impl fmt::Debug for PrepConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrepConfig")
            .field("spacing", &self.spacing)
            .field("normalization", &self.normalization)
            .field("check_ct", &self.check_ct)
            .field("regions", &self.regions.as_ref().map(|_| "fn"))
            .finish()
    }
}

impl PrepConfig {
    /// Checks the spacing and normalisation parameters.
    pub fn validate(&self) -> Result<()> {
        if self.spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::config(format!(
                "target spacing {:?} must be three positive numbers (z, y, x) in mm",
                self.spacing
            )));
        }
        self.normalization.validate().map_err(Error::config)
    }
}

/// The geometric path from an original volume to its prepared grid, kept per case so that
/// predictions on prepared slices can be written back on the original grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrepTransform {
    /// The grid of the file as read.
    pub original: Geometry,
    /// Original voxel order to canonical LPS.
    pub reorientation: Reorientation,
    /// The original grid in canonical order.
    pub canonical: Geometry,
    /// The canonical grid resampled to the target spacing: the grid of the stored slices.
    pub prepared: Geometry,
}

/// Most voxels a prepared volume may have (4 GiB of f32): a target spacing far finer than the
/// data's would otherwise ask for more memory than a machine has.
pub const MAX_PREPARED_VOXELS: usize = 1 << 30;

impl PrepTransform {
    /// [`PrepTransform::new`], or an error when the prepared grid would exceed
    /// [`MAX_PREPARED_VOXELS`].
    pub fn checked(original: &Geometry, spacing: [f64; 3]) -> Result<PrepTransform> {
        let t = PrepTransform::new(original, spacing);
        let voxels = t.prepared.dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if voxels.is_none_or(|v| v > MAX_PREPARED_VOXELS) {
            return Err(Error::config(format!(
                "resampling {} voxels of {:?} mm to {:?} mm gives {}, more than the {MAX_PREPARED_VOXELS} a prepared volume may have: use a coarser spacing",
                super::volume::dims_text(original.dims),
                original.spacing,
                spacing,
                super::volume::dims_text(t.prepared.dims)
            )));
        }
        Ok(t)
    }

    /// The transform for a volume on `original` prepared at `spacing` (z, y, x).
    pub fn new(original: &Geometry, spacing: [f64; 3]) -> PrepTransform {
        let reorientation = Reorientation::to_canonical(&original.affine);
        let canonical = reorientation.geometry(original);
        let dims = target_dims(canonical.dims, canonical.spacing, spacing);
        let prepared = super::resample::resampled_geometry(&canonical, dims);
        PrepTransform {
            original: original.clone(),
            reorientation,
            canonical,
            prepared,
        }
    }

    /// Original-grid intensities to the prepared grid (reoriented, trilinear).
    pub fn image_to_prepared(&self, data: &[f32]) -> Vec<f32> {
        let canon = self.reorientation.apply(data, self.original.dims);
        super::resample::resample_linear(&canon, self.canonical.dims, self.prepared.dims)
    }

    /// Original-grid labels to the prepared grid (reoriented, nearest, every label kept).
    pub fn labels_to_prepared(&self, data: &[u8]) -> Vec<u8> {
        let canon = self.reorientation.apply(data, self.original.dims);
        super::resample::resample_nearest(&canon, self.canonical.dims, self.prepared.dims)
    }

    /// Labels on the prepared grid (e.g. a prediction) back on the original grid, ready for
    /// [`super::nifti::write_mask`]: same dims and header geometry as the source file.
    pub fn labels_to_original(&self, data: &[u8]) -> Result<LabelVolume> {
        self.check_prepared_len(data.len())?;
        let canon = super::resample::resample_nearest(data, self.prepared.dims, self.canonical.dims);
        Ok(LabelVolume {
            data: self.reorientation.inverse().apply(&canon, self.canonical.dims),
            geometry: self.original.clone(),
        })
    }

    /// Values on the prepared grid (e.g. probabilities) back on the original grid, trilinearly.
    pub fn image_to_original(&self, data: &[f32]) -> Result<Volume> {
        self.check_prepared_len(data.len())?;
        let canon = super::resample::resample_linear(data, self.prepared.dims, self.canonical.dims);
        Ok(Volume {
            data: self.reorientation.inverse().apply(&canon, self.canonical.dims),
            geometry: self.original.clone(),
        })
    }

    fn check_prepared_len(&self, len: usize) -> Result<()> {
        if len != self.prepared.voxel_count() {
            return Err(Error::shape(
                "PrepTransform",
                format!(
                    "{len} values for a prepared grid of {}",
                    super::volume::dims_text(self.prepared.dims)
                ),
            ));
        }
        Ok(())
    }
}

/// A volume ready for 2-D training: normalised intensities and labels on the prepared grid.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// (z, y, x) on `transform.prepared.dims`.
    pub image: Vec<f32>,
    pub labels: Option<Vec<u8>>,
    pub transform: PrepTransform,
}

impl Prepared {
    /// Prepared dims (z, y, x).
    pub fn dims(&self) -> [usize; 3] {
        self.transform.prepared.dims
    }

    /// Axial slice `z` of the image, (y, x) row-major.
    pub fn image_slice(&self, z: usize) -> &[f32] {
        let n = self.transform.prepared.slice_len();
        &self.image[z * n..(z + 1) * n]
    }

    /// Axial slice `z` of the labels.
    pub fn label_slice(&self, z: usize) -> Option<&[u8]> {
        let n = self.transform.prepared.slice_len();
        self.labels.as_ref().map(|l| &l[z * n..(z + 1) * n])
    }
}

/// Prepares a volume (and its labels, which must be on the same grid): canonical orientation,
/// resampling to `cfg.spacing`, normalisation. The CT plausibility check is separate
/// ([`super::intensity::check_ct`]) so that callers can name the file in its error.
pub fn preprocess_volume(volume: &Volume, labels: Option<&LabelVolume>, cfg: &PrepConfig) -> Result<Prepared> {
    cfg.validate()?;
    if let Some(l) = labels
        && l.geometry.dims != volume.geometry.dims
    {
        return Err(Error::shape(
            "preprocess_volume",
            format!(
                "labels {} differ from image {}",
                super::volume::dims_text(l.geometry.dims),
                super::volume::dims_text(volume.geometry.dims)
            ),
        ));
    }
    let transform = PrepTransform::checked(&volume.geometry, cfg.spacing)?;
    let mut image = transform.image_to_prepared(&volume.data);
    cfg.normalization.apply(&mut image);
    let labels = labels.map(|l| transform.labels_to_prepared(&l.data));
    Ok(Prepared {
        image,
        labels,
        transform,
    })
}

/// Checks that a label map lies on its image's grid (same shape, affine within
/// [`GEOMETRY_TOLERANCE_MM`]); the error names the label file and the difference.
pub fn check_labels_match(image: &Geometry, labels: &Geometry, label_path: &Path, image_path: &Path) -> Result<()> {
    match image.mismatch(labels, GEOMETRY_TOLERANCE_MM) {
        None => Ok(()),
        Some(why) => Err(Error::format(
            label_path,
            format!("label map does not match its image {}: {why}", image_path.display()),
        )),
    }
}
