//! CT data: NIfTI I/O with geometry, preprocessing, the slice store, synthetic phantoms.
//!
//! - [`nifti`]: read any NIfTI-1 CT (.nii, .nii.gz) with its affine; write masks and volumes
//!   on a reference geometry.
//! - [`orient`], [`resample`], [`intensity`], [`prep`]: canonical orientation, resampling to a
//!   target spacing, HU clipping and normalisation, and the way back to the original grid.
//! - [`dataset`]: nnU-Net v2 folders and plain folders of volumes.
//! - [`store`]: the memory-mapped slice store written by `lrc prep`.
//! - [`crop`]: random training crops and padding for whole-slice inference.
//! - [`synth`]: synthetic CT phantoms with organ labels.
//! - [`png`]: PNG dumps of slices and label overlays.

pub mod affine;
pub mod crop;
pub mod dataset;
pub mod intensity;
pub mod nifti;
pub mod orient;
pub mod png;
pub mod prep;
pub mod resample;
pub mod store;
pub mod synth;
pub mod volume;

pub use volume::{Geometry, LabelVolume, SpatialHeader, Volume};
