//! Felzenszwalb-Huttenlocher graph segmentation of a single-channel image, label for label as
//! scikit-image's `skimage.segmentation.felzenszwalb` (0.26) computes it, with a stable sort of
//! the edge weights (skimage's own quicksort leaves the order of equal weights to the numpy
//! build; see docs/SUPERPIXELS.md).
//!
//! The steps, each matching skimage's arithmetic exactly:
//! 1. the image as float64 (integer images scaled as `img_as_float64` does, floats unchanged);
//! 2. `scale / 255`;
//! 3. scipy's `gaussian_filter(img, sigma, mode="reflect", truncate=4)`;
//! 4. 8-connected edges in four blocks, each in raster order: (y,x)-(y,x+1), (y,x)-(y+1,x),
//!    (y,x)-(y+1,x+1), (y,x+1)-(y+1,x), weighted `sqrt(d*d)` of the pixel difference `d`;
//! 5. a stable sort by weight;
//! 6. Kruskal-style merging: the root of a union is the smaller pixel index, sizes add, the
//!    internal difference becomes the edge weight; merge when `w < min(t_a, t_b)` with
//!    `t = float32(int + scale / size)`;
//! 7. a second pass over the same sorted edges merging any two segments of which one is smaller
//!    than `min_size`;
//! 8. labels 0..K-1 in the raster order of each segment's first pixel.

use std::cell::RefCell;

use rayon::prelude::*;

use super::gaussian::gaussian_filter_reflect_into;
use super::radix::{KeyedEdge, f64_from_order_key, f64_order_key, radix_sort_edges};

/// The three parameters of skimage's `felzenszwalb`, with skimage's defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FelzenszwalbParams {
    /// Observation scale; larger gives fewer, larger segments. Divided by 255 internally.
    pub scale: f64,
    /// Standard deviation in pixels of the Gaussian pre-smoothing (0 for none).
    pub sigma: f64,
    /// Segments smaller than this many pixels are merged into a neighbour in the second pass.
    pub min_size: usize,
}

impl Default for FelzenszwalbParams {
    fn default() -> Self {
        FelzenszwalbParams {
            scale: 1.0,
            sigma: 0.8,
            min_size: 20,
        }
    }
}

/// Largest smoothing sigma, in pixels.
pub const MAX_SIGMA: f64 = 100.0;

impl FelzenszwalbParams {
    /// Check that the parameters are usable: finite scale, finite sigma in [0, [`MAX_SIGMA`]].
    pub fn validate(&self) -> crate::Result<()> {
        if !self.scale.is_finite() {
            return Err(crate::Error::config(format!(
                "felzenszwalb scale must be finite, got {}",
                self.scale
            )));
        }
        if !(self.sigma.is_finite() && self.sigma >= 0.0) {
            return Err(crate::Error::config(format!(
                "felzenszwalb sigma must be finite and >= 0, got {}",
                self.sigma
            )));
        }
        // The smoothing kernel reaches 4 sigma to each side: far past any slice above this, and
        // its length would not fit in memory long before sigma stops being finite.
        if self.sigma > MAX_SIGMA {
            return Err(crate::Error::config(format!(
                "felzenszwalb sigma must be at most {MAX_SIGMA} pixels (the smoothing reaches 4 sigma), got {}",
                self.sigma
            )));
        }
        Ok(())
    }
}

/// Segment a row-major `h x w` float64 image; returns per-pixel labels `0..k` and `k`.
///
/// Identical to `skimage.segmentation.felzenszwalb(img, scale, sigma, min_size)` with a stable
/// argsort (see the module notes). For an integer image convert it first with
/// [`image_u8_as_f64`], [`image_u16_as_f64`] or [`image_i16_as_f64`], as skimage does.
///
/// # Panics
/// If `img.len() != h * w`, if `h * w` does not fit in u32, or if the parameters fail
/// [`FelzenszwalbParams::validate`].
pub fn felzenszwalb(img: &[f64], h: usize, w: usize, scale: f64, sigma: f64, min_size: usize) -> (Vec<u32>, usize) {
    let params = FelzenszwalbParams { scale, sigma, min_size };
    let mut labels = vec![0u32; img.len()];
    let k = with_workspace(|ws| ws.segment(img, h, w, &params, &mut labels));
    (labels, k)
}

/// Segment `n` images of `h x w` stored one after another in `images`, in parallel (rayon).
/// Result `i` is exactly `felzenszwalb(&images[i*h*w..(i+1)*h*w], h, w, ...)`.
///
/// # Panics
/// As [`felzenszwalb`], or if `images.len()` is not a multiple of `h * w`.
pub fn felzenszwalb_batch(images: &[f64], h: usize, w: usize, params: &FelzenszwalbParams) -> Vec<(Vec<u32>, usize)> {
    let plane = h * w;
    if plane == 0 {
        assert!(images.is_empty(), "{} values for images of 0 pixels", images.len());
        return Vec::new();
    }
    assert_eq!(
        images.len() % plane,
        0,
        "{} values are not whole {h} x {w} images",
        images.len()
    );
    images
        .par_chunks(plane)
        .map(|img| {
            let mut labels = vec![0u32; plane];
            let k = with_workspace(|ws| ws.segment(img, h, w, params, &mut labels));
            (labels, k)
        })
        .collect()
}

/// skimage's `img_as_float64` for uint8: `x * (1.0 / 255)`.
pub fn image_u8_as_f64(img: &[u8]) -> Vec<f64> {
    let s = 1.0 / 255.0;
    img.iter().map(|&v| v as f64 * s).collect()
}

/// skimage's `img_as_float64` for uint16: `x * (1.0 / 65535)`.
pub fn image_u16_as_f64(img: &[u16]) -> Vec<f64> {
    let s = 1.0 / 65535.0;
    img.iter().map(|&v| v as f64 * s).collect()
}

/// skimage's `img_as_float64` for int16: `max(x * (1.0 / 32767), -1)`.
pub fn image_i16_as_f64(img: &[i16]) -> Vec<f64> {
    let s = 1.0 / 32767.0;
    img.iter().map(|&v| (v as f64 * s).max(-1.0)).collect()
}

thread_local! {
    /// Each thread keeps the buffers of its last segmentation (about 160 bytes a pixel), so
    /// that a stream of slices does not allocate and page-fault tens of MB per slice.
    static WORKSPACE: RefCell<Workspace> = RefCell::new(Workspace::default());
}

/// Run `f` with this thread's workspace.
pub(crate) fn with_workspace<R>(f: impl FnOnce(&mut Workspace) -> R) -> R {
    WORKSPACE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut ws) => f(&mut ws),
        Err(_) => f(&mut Workspace::default()), // re-entered on this thread: use a fresh one
    })
}

/// Reusable buffers for one segmentation at a time.
#[derive(Default)]
pub(crate) struct Workspace {
    smoothed: Vec<f64>,
    tmp: Vec<f64>,
    line: Vec<f64>,
    edges: Vec<KeyedEdge>,
    scratch: Vec<KeyedEdge>,
    parent: Vec<u32>,
    size: Vec<u32>,
    threshold: Vec<f32>,
}

impl Workspace {
    /// Segment `img` into `labels` (same length); returns the number of segments.
    pub(crate) fn segment(
        &mut self,
        img: &[f64],
        h: usize,
        w: usize,
        params: &FelzenszwalbParams,
        labels: &mut [u32],
    ) -> usize {
        let n = h * w;
        assert_eq!(img.len(), n, "image of {} pixels is not {h} x {w}", img.len());
        assert_eq!(labels.len(), n, "label buffer of {} is not {h} x {w}", labels.len());
        assert!(n <= u32::MAX as usize, "image of {n} pixels is too large");
        if let Err(e) = params.validate() {
            panic!("{e}");
        }
        if n == 0 {
            return 0;
        }
        let scale = params.scale / 255.0;

        self.smoothed.clear();
        self.smoothed.resize(n, 0.0);
        gaussian_filter_reflect_into(
            img,
            h,
            w,
            params.sigma,
            &mut self.smoothed,
            &mut self.tmp,
            &mut self.line,
        );
        build_edges(&self.smoothed, h, w, &mut self.edges);
        radix_sort_edges(&mut self.edges, &mut self.scratch);

        self.parent.clear();
        self.parent.extend(0..n as u32);
        self.size.clear();
        self.size.resize(n, 1);
        // The merge threshold of a root, float32(internal + scale / size), cached because it
        // changes only when the root absorbs another segment. Initially internal = 0, size = 1.
        self.threshold.clear();
        self.threshold.resize(n, (0.0 + scale / 1.0) as f32);

        let (parent, size, threshold) = (&mut self.parent, &mut self.size, &mut self.threshold);
        for e in &self.edges {
            let r0 = find_root(parent, e.a);
            let r1 = find_root(parent, e.b);
            if r0 == r1 {
                continue;
            }
            let (t0, t1) = (threshold[r0 as usize], threshold[r1 as usize]);
            let t = if t1 < t0 { t1 } else { t0 };
            let weight = f64_from_order_key(e.key);
            if weight < t as f64 {
                let root = join(parent, size, r0, r1);
                threshold[root as usize] = (weight + scale / size[root as usize] as f64) as f32;
            }
        }
        // Sizes never fall below 1, so min_size <= 1 merges nothing.
        if params.min_size > 1 {
            for e in &self.edges {
                let r0 = find_root(parent, e.a);
                let r1 = find_root(parent, e.b);
                if r0 != r1
                    && ((size[r0 as usize] as usize) < params.min_size
                        || (size[r1 as usize] as usize) < params.min_size)
                {
                    join(parent, size, r0, r1);
                }
            }
        }
        label_by_first_pixel(parent, labels)
    }
}

/// Edges of the 8-connected grid in skimage's order, keyed by `sqrt(d * d)` of the difference.
fn build_edges(img: &[f64], h: usize, w: usize, edges: &mut Vec<KeyedEdge>) {
    let count = h * w.saturating_sub(1) + h.saturating_sub(1) * w + 2 * h.saturating_sub(1) * w.saturating_sub(1);
    edges.clear();
    edges.reserve(count);
    let edge = |a: usize, b: usize| {
        let d = img[a] - img[b];
        KeyedEdge {
            key: f64_order_key((d * d).sqrt()),
            a: a as u32,
            b: b as u32,
        }
    };
    for y in 0..h {
        for x in 0..w.saturating_sub(1) {
            edges.push(edge(y * w + x + 1, y * w + x));
        }
    }
    for y in 0..h.saturating_sub(1) {
        for x in 0..w {
            edges.push(edge((y + 1) * w + x, y * w + x));
        }
    }
    for y in 0..h.saturating_sub(1) {
        for x in 0..w.saturating_sub(1) {
            edges.push(edge((y + 1) * w + x + 1, y * w + x));
        }
    }
    for y in 0..h.saturating_sub(1) {
        for x in 0..w.saturating_sub(1) {
            edges.push(edge(y * w + x + 1, (y + 1) * w + x));
        }
    }
    debug_assert_eq!(edges.len(), count);
}

/// The root of `x`'s tree, halving the path on the way (roots are unaffected).
#[inline]
fn find_root(parent: &mut [u32], mut x: u32) -> u32 {
    loop {
        let p = parent[x as usize];
        if p == x {
            return x;
        }
        let gp = parent[p as usize];
        parent[x as usize] = gp;
        x = gp;
    }
}

/// Join two roots under the smaller index, sizes added; returns the new root.
#[inline]
fn join(parent: &mut [u32], size: &mut [u32], r0: u32, r1: u32) -> u32 {
    let (root, child) = if r0 < r1 { (r0, r1) } else { (r1, r0) };
    parent[child as usize] = root;
    size[root as usize] += size[child as usize];
    root
}

/// Labels 0..K-1 in the order of each segment's first pixel. Roots are the smallest pixel index
/// of their segment, so a segment's first pixel is its root, met before any other member.
fn label_by_first_pixel(parent: &mut [u32], labels: &mut [u32]) -> usize {
    let mut k = 0u32;
    for i in 0..parent.len() {
        let r = find_root(parent, i as u32);
        if r == i as u32 {
            labels[i] = k;
            k += 1;
        } else {
            labels[i] = labels[r as usize];
        }
    }
    k as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_count_and_order() {
        let img: Vec<f64> = (0..6).map(|v| v as f64).collect();
        let mut edges = Vec::new();
        build_edges(&img, 2, 3, &mut edges);
        let pairs: Vec<(u32, u32)> = edges.iter().map(|e| (e.a, e.b)).collect();
        assert_eq!(
            pairs,
            vec![
                (1, 0),
                (2, 1),
                (4, 3),
                (5, 4),
                (3, 0),
                (4, 1),
                (5, 2),
                (4, 0),
                (5, 1),
                (1, 3),
                (2, 4)
            ]
        );
        let weights: Vec<f64> = edges.iter().map(|e| f64_from_order_key(e.key)).collect();
        assert_eq!(weights, vec![1.0, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 4.0, 4.0, 2.0, 2.0]);
    }

    #[test]
    fn two_flat_halves_give_two_segments() {
        let (h, w) = (6, 8);
        let img: Vec<f64> = (0..h * w).map(|i| if i % w < 3 { 0.1 } else { 0.9 }).collect();
        let (labels, k) = felzenszwalb(&img, h, w, 1.0, 0.0, 0);
        assert_eq!(k, 2);
        assert!((0..h * w).all(|i| labels[i] == u32::from(i % w >= 3)));
    }

    #[test]
    fn empty_and_single_pixel() {
        assert_eq!(felzenszwalb(&[], 0, 5, 1.0, 0.8, 20), (vec![], 0));
        assert_eq!(felzenszwalb(&[0.3], 1, 1, 1.0, 0.8, 20), (vec![0], 1));
    }
}
