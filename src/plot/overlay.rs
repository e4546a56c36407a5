//! Segmentation labels drawn over a grey CT slice (thesis figure 4.7).

use std::path::Path;

use super::image::{Rgb, RgbImage};
use crate::error::{Error, Result};

/// Colours of labels 1..=20 (Trubetskoy's 20 distinct colours); label 0 is background and
/// stays uncoloured, labels above 20 reuse the list from the start.
pub const LABEL_COLORS: [Rgb; 20] = [
    Rgb(230, 25, 75),
    Rgb(60, 180, 75),
    Rgb(255, 225, 25),
    Rgb(0, 130, 200),
    Rgb(245, 130, 48),
    Rgb(145, 30, 180),
    Rgb(70, 240, 240),
    Rgb(240, 50, 230),
    Rgb(210, 245, 60),
    Rgb(250, 190, 212),
    Rgb(0, 128, 128),
    Rgb(220, 190, 255),
    Rgb(170, 110, 40),
    Rgb(255, 250, 200),
    Rgb(128, 0, 0),
    Rgb(170, 255, 195),
    Rgb(128, 128, 0),
    Rgb(255, 215, 180),
    Rgb(0, 0, 128),
    Rgb(128, 128, 128),
];

/// The colour of label `label` (> 0).
pub fn label_color(label: u8) -> Rgb {
    LABEL_COLORS[(label as usize + LABEL_COLORS.len() - 1) % LABEL_COLORS.len()]
}

/// The slice in grey with each labelled pixel tinted by its label colour at opacity `alpha`,
/// and the boundary pixels of every label (those with a 4-neighbour of another label) in full
/// colour, so that small structures stay visible.
pub fn overlay_image(ct_gray: &[u8], labels: &[u8], h: usize, w: usize, alpha: f32) -> Result<RgbImage> {
    if ct_gray.len() != h * w || labels.len() != h * w {
        return Err(Error::shape(
            "overlay",
            format!(
                "{} grey values and {} labels for a {h}x{w} slice",
                ct_gray.len(),
                labels.len()
            ),
        ));
    }
    if !(0.0..=1.0).contains(&alpha) {
        return Err(Error::config(format!("overlay opacity {alpha} is not in [0, 1]")));
    }
    let mut img = RgbImage::from_gray(w, h, ct_gray)?;
    for y in 0..h {
        for x in 0..w {
            let label = labels[y * w + x];
            if label == 0 {
                continue;
            }
            let differs = |nx: Option<usize>, ny: Option<usize>| match (nx, ny) {
                (Some(nx), Some(ny)) if nx < w && ny < h => labels[ny * w + nx] != label,
                _ => true,
            };
            let edge = differs(x.checked_sub(1), Some(y))
                || differs(Some(x + 1), Some(y))
                || differs(Some(x), y.checked_sub(1))
                || differs(Some(x), Some(y + 1));
            let color = label_color(label);
            img.blend(x as i64, y as i64, color, if edge { 1.0 } else { alpha });
        }
    }
    Ok(img)
}

/// Writes [`overlay_image`] as PNG.
pub fn overlay(path: impl AsRef<Path>, ct_gray: &[u8], labels: &[u8], h: usize, w: usize, alpha: f32) -> Result<()> {
    overlay_image(ct_gray, labels, h, w, alpha)?.save_png(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tints_inside_and_outlines_edges() {
        let (h, w) = (5, 5);
        let gray = vec![100u8; h * w];
        let mut labels = vec![0u8; h * w];
        for y in 1..4 {
            for x in 1..4 {
                labels[y * w + x] = 1;
            }
        }
        let img = overlay_image(&gray, &labels, h, w, 0.5).unwrap();
        assert_eq!(img.get(0, 0), Rgb(100, 100, 100));
        assert_eq!(img.get(1, 1), label_color(1));
        let c = label_color(1);
        assert_eq!(img.get(2, 2), c.over(Rgb(100, 100, 100), 0.5));
        assert_eq!(label_color(21), label_color(1));
        assert!(overlay_image(&gray, &labels, h, w, 1.5).is_err());
        assert!(overlay_image(&gray[1..], &labels, h, w, 0.5).is_err());
    }
}
