//! Augmentations: elastic transform of a slice and its region map ([`elastic`]), intensity
//! jitter for contrastive positives ([`intensity`]); the elastic transform on a GPU ([`cuda`]).

pub mod cuda;
pub mod elastic;
pub mod intensity;

pub use elastic::{DisplacementField, ElasticParams, random_field, warp_bilinear, warp_nearest};
pub use intensity::{IntensityDraw, IntensityParams, jitter};
