//! CT clean-up of Felzenszwalb segments into training regions.
//!
//! A slice arrives normalised: HU clipped to a window (by default [-1000, 1000]) and mapped to
//! [0, 1]. The body is found as the largest 4-connected component of `HU > body_threshold_hu`
//! (after a morphological opening that cuts thin bridges, e.g. to the patient table), with its
//! holes filled (lungs, bowel gas). Pixels outside the body get region 0; each segment keeps its
//! pixels inside the body. Regions smaller than `min_region_pixels` are dropped, then only the
//! `max_regions` largest are kept, and the survivors are numbered 1..=K in the raster order of
//! their first pixel.

use crate::{Error, Result};

/// Settings of the clean-up; the defaults suit 1 mm axial slices normalised from [-1000, 1000] HU.
#[derive(Clone, Debug, PartialEq)]
pub struct CleanupConfig {
    /// The HU window the slice was normalised from: value `v` in [0, 1] is HU `lo + v * (hi - lo)`.
    pub hu_window: (f32, f32),
    /// Pixels above this HU are body candidates. -500 HU separates air (-1000) and lung
    /// (-700..-900, then filled as holes) from fat (-100) and everything denser.
    pub body_threshold_hu: f32,
    /// Radius in pixels of the square opening that separates the body from touching objects
    /// (table, cables) joined by bridges thinner than `2 * radius + 1` pixels; 0 disables it.
    pub body_opening_radius: usize,
    /// Fill holes of the body mask (enclosed air: lungs, bowel gas, trachea).
    pub fill_holes: bool,
    /// Regions with fewer pixels inside the body are dropped (set to 0).
    pub min_region_pixels: usize,
    /// At most this many regions are kept, the largest; at most 65535 (labels are u16).
    pub max_regions: usize,
}

impl Default for CleanupConfig {
    fn default() -> Self {
        CleanupConfig {
            hu_window: (-1000.0, 1000.0),
            body_threshold_hu: -500.0,
            body_opening_radius: 2,
            fill_holes: true,
            min_region_pixels: 20,
            max_regions: 256,
        }
    }
}

impl CleanupConfig {
    /// The body threshold on the normalised scale.
    pub fn body_threshold(&self) -> f32 {
        let (lo, hi) = self.hu_window;
        (self.body_threshold_hu - lo) / (hi - lo)
    }

    /// Check the settings.
    pub fn validate(&self) -> Result<()> {
        let (lo, hi) = self.hu_window;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(Error::config(format!(
                "HU window ({lo}, {hi}) must be finite with lo < hi"
            )));
        }
        if !self.body_threshold_hu.is_finite() {
            return Err(Error::config("body threshold must be a finite HU value"));
        }
        if self.max_regions == 0 || self.max_regions > u16::MAX as usize {
            return Err(Error::config(format!(
                "max_regions must be in 1..=65535, got {}",
                self.max_regions
            )));
        }
        Ok(())
    }
}

/// The body mask of a normalised `h x w` slice (true inside the body).
///
/// # Panics
/// If `img.len() != h * w`.
pub fn body_mask(img: &[f32], h: usize, w: usize, cfg: &CleanupConfig) -> Vec<bool> {
    assert_eq!(img.len(), h * w, "slice of {} pixels is not {h} x {w}", img.len());
    let t = cfg.body_threshold();
    let candidates: Vec<bool> = img.iter().map(|&v| v > t).collect();
    let r = cfg.body_opening_radius;
    let mut body = if r > 0 {
        let opened = dilate(&erode(&candidates, h, w, r), h, w, r);
        let core = largest_component(&opened, h, w);
        if core.iter().any(|&b| b) {
            // Grow the core back to the candidates' outline, then drop anything that the
            // regrowth reached only across a gap.
            let grown: Vec<bool> = dilate(&core, h, w, r)
                .iter()
                .zip(&candidates)
                .map(|(&a, &b)| a && b)
                .collect();
            largest_component(&grown, h, w)
        } else {
            largest_component(&candidates, h, w)
        }
    } else {
        largest_component(&candidates, h, w)
    };
    if cfg.fill_holes {
        fill_holes(&mut body, h, w);
    }
    body
}

/// Turn Felzenszwalb `segments` (any labels) into regions 1..=K inside `body`, 0 elsewhere:
/// drop regions under `min_region_pixels`, keep the `max_regions` largest (equal sizes: the
/// smaller segment label wins), number them by first pixel in raster order.
///
/// # Panics
/// If the lengths differ or `cfg.max_regions` exceeds 65535.
pub fn clean_regions(segments: &[u32], body: &[bool], cfg: &CleanupConfig) -> Vec<u16> {
    assert_eq!(segments.len(), body.len(), "segments and body mask differ in size");
    assert!(
        cfg.max_regions <= u16::MAX as usize,
        "max_regions {} > 65535",
        cfg.max_regions
    );
    let n_labels = segments.iter().max().map_or(0, |&m| m as usize + 1);
    let mut counts = vec![0usize; n_labels];
    for (&s, &inside) in segments.iter().zip(body) {
        if inside {
            counts[s as usize] += 1;
        }
    }
    let mut kept: Vec<u32> = (0..n_labels as u32)
        .filter(|&l| counts[l as usize] > 0 && counts[l as usize] >= cfg.min_region_pixels)
        .collect();
    if kept.len() > cfg.max_regions {
        kept.sort_by(|&a, &b| counts[b as usize].cmp(&counts[a as usize]).then(a.cmp(&b)));
        kept.truncate(cfg.max_regions);
    }
    const UNASSIGNED: u16 = u16::MAX;
    const DROPPED: u16 = 0;
    let mut new_label = vec![DROPPED; n_labels];
    for &l in &kept {
        new_label[l as usize] = UNASSIGNED;
    }
    let mut next = 1u16;
    let mut out = vec![0u16; segments.len()];
    for ((o, &s), &inside) in out.iter_mut().zip(segments).zip(body) {
        if !inside {
            continue;
        }
        let slot = &mut new_label[s as usize];
        if *slot == UNASSIGNED {
            *slot = next;
            next += 1;
        }
        *o = *slot;
    }
    out
}

/// The largest 4-connected component of `mask` (the first in raster order among equals).
pub fn largest_component(mask: &[bool], h: usize, w: usize) -> Vec<bool> {
    let mut component = vec![0u32; mask.len()]; // 0 = background or unvisited
    let mut stack = Vec::new();
    let (mut best, mut best_size, mut next) = (0u32, 0usize, 1u32);
    for start in 0..mask.len() {
        if !mask[start] || component[start] != 0 {
            continue;
        }
        let id = next;
        next += 1;
        component[start] = id;
        stack.push(start);
        let mut size = 0;
        while let Some(p) = stack.pop() {
            size += 1;
            for q in neighbours4(p, h, w).into_iter().flatten() {
                if mask[q] && component[q] == 0 {
                    component[q] = id;
                    stack.push(q);
                }
            }
        }
        if size > best_size {
            (best, best_size) = (id, size);
        }
    }
    component.iter().map(|&c| c != 0 && c == best).collect()
}

/// Set to true every false pixel not 4-connected to the image border through false pixels.
pub fn fill_holes(mask: &mut [bool], h: usize, w: usize) {
    let mut outside = vec![false; mask.len()];
    let mut stack: Vec<usize> = (0..mask.len())
        .filter(|&p| {
            let (y, x) = (p / w, p % w);
            (y == 0 || x == 0 || y + 1 == h || x + 1 == w) && !mask[p]
        })
        .collect();
    for &p in &stack {
        outside[p] = true;
    }
    while let Some(p) = stack.pop() {
        for q in neighbours4(p, h, w).into_iter().flatten() {
            if !mask[q] && !outside[q] {
                outside[q] = true;
                stack.push(q);
            }
        }
    }
    for (m, &o) in mask.iter_mut().zip(&outside) {
        *m = !o;
    }
}

#[inline]
fn neighbours4(p: usize, h: usize, w: usize) -> [Option<usize>; 4] {
    let (y, x) = (p / w, p % w);
    [
        (y > 0).then(|| p - w),
        (y + 1 < h).then(|| p + w),
        (x > 0).then(|| p - 1),
        (x + 1 < w).then(|| p + 1),
    ]
}

/// Square dilation of radius `r` (window clipped at the image border).
fn dilate(mask: &[bool], h: usize, w: usize, r: usize) -> Vec<bool> {
    square_filter(mask, h, w, r, |count, _| count > 0)
}

/// Square erosion of radius `r`; the window is clipped at the image border, so the border itself
/// does not erode.
fn erode(mask: &[bool], h: usize, w: usize, r: usize) -> Vec<bool> {
    square_filter(mask, h, w, r, |count, window| count == window)
}

/// A separable (2r+1)^2 binary filter: along rows, then along columns, each output decided by
/// `keep(count of true pixels in the clipped window, window length)`. Dilation and erosion by a
/// square both factor this way.
fn square_filter(mask: &[bool], h: usize, w: usize, r: usize, keep: impl Fn(u32, u32) -> bool) -> Vec<bool> {
    let mut rows = vec![false; mask.len()];
    for (src, dst) in mask.chunks_exact(w).zip(rows.chunks_exact_mut(w)) {
        // Running count over src[x - r ..= x + r], clipped.
        let mut count: u32 = src[..r.min(w)].iter().map(|&b| b as u32).sum();
        for x in 0..w {
            if x + r < w {
                count += src[x + r] as u32;
            }
            if x > r {
                count -= src[x - r - 1] as u32;
            }
            let window = ((x + r + 1).min(w) - x.saturating_sub(r)) as u32;
            dst[x] = keep(count, window);
        }
    }
    // Columns: one running count per column, updated a whole row at a time.
    let mut out = vec![false; mask.len()];
    let mut counts = vec![0u32; w];
    for y in 0..r.min(h) {
        for (c, &b) in counts.iter_mut().zip(&rows[y * w..(y + 1) * w]) {
            *c += b as u32;
        }
    }
    for y in 0..h {
        if y + r < h {
            for (c, &b) in counts.iter_mut().zip(&rows[(y + r) * w..(y + r + 1) * w]) {
                *c += b as u32;
            }
        }
        if y > r {
            let old = y - r - 1;
            for (c, &b) in counts.iter_mut().zip(&rows[old * w..(old + 1) * w]) {
                *c -= b as u32;
            }
        }
        let window = ((y + r + 1).min(h) - y.saturating_sub(r)) as u32;
        for (o, &c) in out[y * w..(y + 1) * w].iter_mut().zip(&counts) {
            *o = keep(c, window);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(rows: &[&str]) -> (Vec<bool>, usize, usize) {
        let (h, w) = (rows.len(), rows[0].len());
        (rows.iter().flat_map(|r| r.chars().map(|c| c == '#')).collect(), h, w)
    }

    fn show(mask: &[bool], w: usize) -> Vec<String> {
        mask.chunks(w)
            .map(|r| r.iter().map(|&b| if b { '#' } else { '.' }).collect())
            .collect()
    }

    #[test]
    fn largest_component_is_4_connected() {
        let (m, h, w) = grid(&["##..#", "##.#.", "....#"]);
        // The three right-hand pixels touch only diagonally: three components of size 1.
        assert_eq!(show(&largest_component(&m, h, w), w), vec!["##...", "##...", "....."]);
    }

    #[test]
    fn holes_are_filled_but_border_background_is_not() {
        let (mut m, h, w) = grid(&["#####.", "#..#..", "#####.", "......"]);
        fill_holes(&mut m, h, w);
        assert_eq!(show(&m, w), vec!["#####.", "####..", "#####.", "......"]);
    }

    #[test]
    fn running_window_filters_equal_brute_force() {
        let mut rng = crate::rng::Rng::new(9);
        for (h, w, r) in [
            (1usize, 1usize, 1usize),
            (7, 5, 0),
            (9, 13, 1),
            (12, 10, 2),
            (6, 20, 4),
            (3, 3, 5),
        ] {
            let mask: Vec<bool> = (0..h * w).map(|_| rng.below(3) > 0).collect();
            let brute = |all: bool| -> Vec<bool> {
                (0..h * w)
                    .map(|p| {
                        let (y, x) = (p / w, p % w);
                        let mut window = (y.saturating_sub(r)..(y + r + 1).min(h))
                            .flat_map(|yy| (x.saturating_sub(r)..(x + r + 1).min(w)).map(move |xx| yy * w + xx));
                        if all {
                            window.all(|q| mask[q])
                        } else {
                            window.any(|q| mask[q])
                        }
                    })
                    .collect()
            };
            assert_eq!(erode(&mask, h, w, r), brute(true), "erode {h}x{w} r {r}");
            assert_eq!(dilate(&mask, h, w, r), brute(false), "dilate {h}x{w} r {r}");
        }
    }

    #[test]
    fn opening_erodes_and_dilates_squares() {
        let (m, h, w) = grid(&[".....", ".###.", ".###.", ".###.", "....."]);
        let e = erode(&m, h, w, 1);
        assert_eq!(show(&e, w), vec![".....", ".....", "..#..", ".....", "....."]);
        assert_eq!(show(&dilate(&e, h, w, 1), w), show(&m, w));
    }
}
