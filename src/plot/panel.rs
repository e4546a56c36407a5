//! Several images side by side with captions (e.g. truth | random init | LRC + MoCo).

use std::path::Path;

use super::font::{draw_text, text_height, text_width};
use super::image::{Rgb, RgbImage};
use crate::error::{Error, Result};

const GAP: usize = 12;
const CAPTION_GAP: usize = 8;

/// Tiles `images` left to right, top to bottom, `columns` per row, each under its caption
/// (centred; shortened with `...` when wider than the image). `captions` is empty or has one
/// entry per image. Cells are as large as the largest image; smaller images are centred.
pub fn panel_image<S: AsRef<str>>(images: &[RgbImage], columns: usize, captions: &[S]) -> Result<RgbImage> {
    if images.is_empty() || columns == 0 {
        return Err(Error::config("a panel needs at least one image and one column"));
    }
    if !captions.is_empty() && captions.len() != images.len() {
        return Err(Error::config(format!(
            "{} captions for {} images in a panel",
            captions.len(),
            images.len()
        )));
    }
    let cell_w = images.iter().map(RgbImage::width).max().unwrap_or(0);
    let cell_h = images.iter().map(RgbImage::height).max().unwrap_or(0);
    // Captions at double size when the cells are wide enough for a few words.
    let scale = if cell_w >= 160 { 2 } else { 1 };
    let caption_h = if captions.is_empty() {
        0
    } else {
        text_height(scale) + CAPTION_GAP
    };
    let columns = columns.min(images.len());
    let rows = images.len().div_ceil(columns);
    let width = GAP + columns * (cell_w + GAP);
    let height = GAP + rows * (caption_h + cell_h + GAP);
    let mut out = RgbImage::new(width, height, Rgb::WHITE);
    for (i, img) in images.iter().enumerate() {
        let (col, row) = (i % columns, i / columns);
        let x = GAP + col * (cell_w + GAP);
        let y = GAP + row * (caption_h + cell_h + GAP);
        if let Some(caption) = captions.get(i) {
            let text = fit_caption(caption.as_ref(), cell_w, scale);
            let tw = text_width(&text, scale);
            draw_text(
                &mut out,
                (x + (cell_w - tw) / 2) as i64,
                y as i64,
                &text,
                scale,
                Rgb(30, 30, 30),
            );
        }
        let (ox, oy) = ((cell_w - img.width()) / 2, (cell_h - img.height()) / 2);
        out.blit(img, (x + ox) as i64, (y + caption_h + oy) as i64);
    }
    Ok(out)
}

/// `text`, cut and ended with `...` if it is wider than `width` pixels.
fn fit_caption(text: &str, width: usize, scale: usize) -> String {
    if text_width(text, scale) <= width {
        return text.to_string();
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() && text_width(&format!("{}...", chars.iter().collect::<String>()), scale) > width {
        chars.pop();
    }
    format!("{}...", chars.iter().collect::<String>().trim_end())
}

/// Writes [`panel_image`] as PNG.
pub fn panel<S: AsRef<str>>(path: impl AsRef<Path>, images: &[RgbImage], columns: usize, captions: &[S]) -> Result<()> {
    panel_image(images, columns, captions)?.save_png(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_errors() {
        let a = RgbImage::new(30, 20, Rgb(255, 0, 0));
        let b = RgbImage::new(10, 10, Rgb(0, 0, 255));
        let p = panel_image(&[a.clone(), b.clone(), a.clone()], 2, &["a", "b", "c"]).unwrap();
        let caption_h = text_height(1) + CAPTION_GAP;
        assert_eq!(p.width(), GAP + 2 * (30 + GAP));
        assert_eq!(p.height(), GAP + 2 * (caption_h + 20 + GAP));
        // The small image is centred in its cell.
        assert_eq!(p.get(GAP + 30 + GAP + 10, GAP + caption_h + 5), Rgb(0, 0, 255));
        assert_eq!(p.get(GAP + 30 + GAP + 5, GAP + caption_h + 5), Rgb::WHITE);
        assert!(panel_image(std::slice::from_ref(&a), 1, &["x", "y"]).is_err());
        assert!(panel_image::<&str>(&[], 1, &[]).is_err());
        assert_eq!(fit_caption("a long caption", 30, 1), "a...");
    }
}
