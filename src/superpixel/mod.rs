//! Felzenszwalb superpixels, CT clean-up of regions, region sampling.
//!
//! [`felzenszwalb`] reproduces scikit-image's segmentation label for label; [`cleanup`] turns
//! the segments of a CT slice into training regions (body only, relabelled, capped);
//! [`sampling`] draws the per-region pixel samples of the Local Region Contrast loss.

pub mod felzenszwalb;
mod gaussian;
mod radix;

pub use felzenszwalb::{FelzenszwalbParams, felzenszwalb, felzenszwalb_batch};
pub use gaussian::{gaussian_filter_reflect, gaussian_kernel};
