//! Felzenszwalb superpixels, CT clean-up of regions, region sampling.
//!
//! [`felzenszwalb()`] reproduces scikit-image's segmentation label for label; [`cleanup`] turns
//! the segments of a CT slice into training regions (body only, relabelled, capped);
//! [`sampling`] draws the per-region pixel samples of the Local Region Contrast loss;
//! [`overlay`] draws region boundaries over a slice; [`cuda`] runs the segmentation, the clean-up
//! and the sampling on a GPU.
//!
//! Slices here are row-major `h x w` f32 images already normalised (HU window mapped to [0, 1]).

pub mod cleanup;
pub mod cuda;
pub mod felzenszwalb;
mod gaussian;
pub mod overlay;
pub mod phantom;
mod radix;
pub mod sampling;

use rayon::prelude::*;

pub use cleanup::CleanupConfig;
pub use felzenszwalb::{FelzenszwalbParams, felzenszwalb, felzenszwalb_batch};
pub use gaussian::{gaussian_filter_reflect, gaussian_kernel};

use felzenszwalb::{Workspace, with_workspace};

/// Everything that turns a normalised CT slice into regions: the Felzenszwalb parameters and the
/// clean-up. The defaults are for 1 mm axial slices (see docs/SUPERPIXELS.md for the choice).
#[derive(Clone, Debug, PartialEq)]
pub struct SuperpixelConfig {
    pub felzenszwalb: FelzenszwalbParams,
    pub cleanup: CleanupConfig,
}

impl Default for SuperpixelConfig {
    fn default() -> Self {
        SuperpixelConfig {
            felzenszwalb: FelzenszwalbParams {
                scale: 100.0,
                sigma: 0.8,
                min_size: 50,
            },
            cleanup: CleanupConfig::default(),
        }
    }
}

impl SuperpixelConfig {
    /// Check every setting; call it once where a configuration enters from the user.
    pub fn validate(&self) -> crate::Result<()> {
        self.felzenszwalb.validate()?;
        self.cleanup.validate()
    }
}

/// Regions of one normalised slice: Felzenszwalb segments, then the CT clean-up. Labels are
/// 1..=K inside the body, 0 elsewhere. Fits `Fn(&[f32], usize, usize) -> Vec<u16>` as
/// `|img, h, w| regions_for_slice(img, h, w, &cfg)`.
///
/// # Panics
/// If `img.len() != h * w` or `cfg` fails [`SuperpixelConfig::validate`].
pub fn regions_for_slice(img: &[f32], h: usize, w: usize, cfg: &SuperpixelConfig) -> Vec<u16> {
    with_workspace(|ws| regions_with(ws, img, h, w, cfg))
}

/// [`regions_for_slice`] for `n` slices of `h x w` stored one after another, in parallel.
///
/// # Panics
/// As [`regions_for_slice`], or if `slices.len()` is not a multiple of `h * w`.
pub fn regions_for_stack(slices: &[f32], h: usize, w: usize, cfg: &SuperpixelConfig) -> Vec<u16> {
    let plane = h * w;
    let mut out = vec![0u16; slices.len()];
    if plane == 0 {
        return out;
    }
    assert_eq!(
        slices.len() % plane,
        0,
        "{} values are not whole {h} x {w} slices",
        slices.len()
    );
    out.par_chunks_mut(plane)
        .zip(slices.par_chunks(plane))
        .for_each(|(dst, img)| {
            dst.copy_from_slice(&with_workspace(|ws| regions_with(ws, img, h, w, cfg)));
        });
    out
}

/// Per-slice regions of a normalised volume stored z-major (`dims = [z, y, x]`), slices in
/// parallel. With `raw`, plain Felzenszwalb labels plus one (1..=K per slice, exactly
/// scikit-image's labels on each f32 slice); otherwise [`regions_for_slice`] labels (0 outside
/// the body). Labels are per slice: label 3 of slice 0 and of slice 1 are unrelated.
///
/// # Panics
/// If `volume_zyx.len()` is not the product of `dims` or `cfg` fails validation.
pub fn volume_regions(volume_zyx: &[f32], dims: [usize; 3], cfg: &SuperpixelConfig, raw: bool) -> Vec<u32> {
    let [_, h, w] = dims;
    assert_eq!(
        volume_zyx.len(),
        dims.iter().product::<usize>(),
        "volume size does not match {dims:?}"
    );
    if !raw {
        return regions_for_stack(volume_zyx, h, w, cfg)
            .into_iter()
            .map(u32::from)
            .collect();
    }
    let plane = h * w;
    let mut out = vec![0u32; volume_zyx.len()];
    if plane == 0 {
        return out;
    }
    out.par_chunks_mut(plane)
        .zip(volume_zyx.par_chunks(plane))
        .for_each(|(dst, img)| {
            let img64: Vec<f64> = img.iter().map(|&v| v as f64).collect();
            with_workspace(|ws| ws.segment(&img64, h, w, &cfg.felzenszwalb, dst));
            for l in dst.iter_mut() {
                *l += 1;
            }
        });
    out
}

fn regions_with(ws: &mut Workspace, img: &[f32], h: usize, w: usize, cfg: &SuperpixelConfig) -> Vec<u16> {
    assert_eq!(img.len(), h * w, "slice of {} pixels is not {h} x {w}", img.len());
    if let Err(e) = cfg.cleanup.validate() {
        panic!("{e}");
    }
    // skimage's img_as_float64 of a float32 slice is the exact widening.
    let img64: Vec<f64> = img.iter().map(|&v| v as f64).collect();
    let mut segments = vec![0u32; img.len()];
    ws.segment(&img64, h, w, &cfg.felzenszwalb, &mut segments);
    let body = cleanup::body_mask(img, h, w, &cfg.cleanup);
    cleanup::clean_regions(&segments, &body, &cfg.cleanup)
}
