//! Pixel sampling of the Local Region Contrast loss (thesis 3.1.2): for each region present in
//! both the query view and its elastically transformed positive view, `n` pixels drawn uniformly
//! with replacement from the region in each view.

use crate::ops::local_contrast::RegionSamples;
use crate::rng::Rng;

/// Sample `n` pixel indices per region in each view.
///
/// Regions are the labels > 0 present in both `q_labels` and `p_labels` (one label map per view,
/// row-major, same size); a region empty in either view is dropped. When `max_regions` is set
/// and more regions qualify, a uniformly random subset of that many is kept (a partial
/// Fisher-Yates shuffle), still listed in increasing label order.
///
/// Draws, in this order for determinism: the subset (if any), then for each kept region in
/// increasing label order its `n` query pixels, then its `n` positive pixels.
///
/// # Panics
/// If the two label maps differ in length or hold more than `u32::MAX` pixels.
pub fn sample_regions(
    q_labels: &[u16],
    p_labels: &[u16],
    n: usize,
    max_regions: Option<usize>,
    rng: &mut Rng,
) -> RegionSamples {
    assert_eq!(
        q_labels.len(),
        p_labels.len(),
        "query and positive label maps differ in size"
    );
    assert!(
        q_labels.len() <= u32::MAX as usize,
        "label map too large for u32 pixel indices"
    );
    let q_pixels = PixelsByLabel::new(q_labels);
    let p_pixels = PixelsByLabel::new(p_labels);
    let mut labels: Vec<u32> = (1..q_pixels.n_labels().min(p_pixels.n_labels()))
        .filter(|&l| !q_pixels.of(l).is_empty() && !p_pixels.of(l).is_empty())
        .map(|l| l as u32)
        .collect();
    if let Some(m) = max_regions
        && labels.len() > m
    {
        for i in 0..m {
            let j = i + rng.below((labels.len() - i) as u64) as usize;
            labels.swap(i, j);
        }
        labels.truncate(m);
        labels.sort_unstable();
    }
    let mut q = Vec::with_capacity(labels.len() * n);
    let mut p = Vec::with_capacity(labels.len() * n);
    for &l in &labels {
        for (pixels, out) in [(q_pixels.of(l as usize), &mut q), (p_pixels.of(l as usize), &mut p)] {
            for _ in 0..n {
                out.push(pixels[rng.below(pixels.len() as u64) as usize]);
            }
        }
    }
    RegionSamples { labels, n, q, p }
}

/// The pixel indices of each label, grouped by a counting sort (increasing index within a label).
struct PixelsByLabel {
    start: Vec<usize>,
    pixels: Vec<u32>,
}

impl PixelsByLabel {
    fn new(labels: &[u16]) -> Self {
        let n_labels = labels.iter().max().map_or(0, |&m| m as usize + 1);
        let mut start = vec![0usize; n_labels + 1];
        for &l in labels {
            start[l as usize + 1] += 1;
        }
        for i in 0..n_labels {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut pixels = vec![0u32; labels.len()];
        for (i, &l) in labels.iter().enumerate() {
            pixels[fill[l as usize]] = i as u32;
            fill[l as usize] += 1;
        }
        PixelsByLabel { start, pixels }
    }

    fn n_labels(&self) -> usize {
        self.start.len() - 1
    }

    fn of(&self, label: usize) -> &[u32] {
        &self.pixels[self.start[label]..self.start[label + 1]]
    }
}
