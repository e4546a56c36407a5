//! PNG dumps of CT slices: windowing to grey levels, label overlays in colour.

use std::io::BufWriter;
use std::path::Path;

use crate::error::{Error, Result};

/// Soft-tissue window (level 40 HU, width 400 HU).
pub const SOFT_TISSUE: (f32, f32) = (40.0, 400.0);
/// Lung window (level -600 HU, width 1500 HU).
pub const LUNG: (f32, f32) = (-600.0, 1500.0);
/// Bone window (level 400 HU, width 1800 HU).
pub const BONE: (f32, f32) = (400.0, 1800.0);

/// Maps values to grey levels through a window (`level`, `width`), as CT viewers do.
pub fn window(values: &[f32], level: f32, width: f32) -> Vec<u8> {
    let lo = level - width / 2.0;
    let scale = 255.0 / width.max(1e-6);
    values
        .iter()
        .map(|&v| ((v - lo) * scale).round().clamp(0.0, 255.0) as u8)
        .collect()
}

fn write_png(path: &Path, data: &[u8], w: usize, h: usize, color: png::ColorType) -> Result<()> {
    let channels = if color == png::ColorType::Rgb { 3 } else { 1 };
    if data.len() != w * h * channels || w == 0 || h == 0 {
        return Err(Error::shape(
            "write_png",
            format!("{} bytes for a {w} x {h} image with {channels} channel(s)", data.len()),
        ));
    }
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut enc = png::Encoder::new(BufWriter::new(file), w as u32, h as u32);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    let err = |e: png::EncodingError| Error::io(path, std::io::Error::other(e));
    let mut writer = enc.write_header().map_err(err)?;
    writer.write_image_data(data).map_err(err)?;
    writer.finish().map_err(err)
}

/// Writes an 8-bit greyscale PNG of `w x h` pixels (row-major).
pub fn write_gray_png(path: impl AsRef<Path>, data: &[u8], w: usize, h: usize) -> Result<()> {
    write_png(path.as_ref(), data, w, h, png::ColorType::Grayscale)
}

/// Writes an 8-bit RGB PNG of `w x h` pixels (row-major, 3 bytes per pixel).
pub fn write_rgb_png(path: impl AsRef<Path>, rgb: &[u8], w: usize, h: usize) -> Result<()> {
    write_png(path.as_ref(), rgb, w, h, png::ColorType::Rgb)
}

/// A distinct colour per label (1..=255; 0 is never drawn).
pub fn label_color(label: u8) -> [u8; 3] {
    const PALETTE: [[u8; 3]; 12] = [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 190],
        [0, 128, 128],
        [170, 110, 40],
    ];
    let i = (label as usize).saturating_sub(1);
    let base = PALETTE[i % PALETTE.len()];
    // Past the palette, darken per round so that colours stay distinct.
    let round = (i / PALETTE.len()) as u32;
    base.map(|c| (c as u32 * 4 / (4 + round)) as u8)
}

/// Colours labels over a grey image: each labelled pixel mixes its label colour with the grey
/// value by `alpha` (0 = grey only, 1 = colour only); returns RGB bytes.
pub fn overlay_labels(gray: &[u8], labels: &[u8], alpha: f32) -> Vec<u8> {
    let a = alpha.clamp(0.0, 1.0);
    let mut out = Vec::with_capacity(gray.len() * 3);
    for (&g, &l) in gray.iter().zip(labels) {
        if l == 0 {
            out.extend_from_slice(&[g, g, g]);
        } else {
            let c = label_color(l);
            for ch in c {
                out.push((g as f32 * (1.0 - a) + ch as f32 * a).round() as u8);
            }
        }
    }
    out
}

/// Draws only the outlines of labelled regions (pixels whose 4-neighbour has another label)
/// in their colours over a grey image; returns RGB bytes. Keeps the anatomy visible.
pub fn outline_labels(gray: &[u8], labels: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(gray.len() * 3);
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let l = labels[i];
            let edge = l != 0
                && ((x > 0 && labels[i - 1] != l)
                    || (x + 1 < w && labels[i + 1] != l)
                    || (y > 0 && labels[i - w] != l)
                    || (y + 1 < h && labels[i + w] != l));
            if edge {
                out.extend_from_slice(&label_color(l));
            } else {
                out.extend_from_slice(&[gray[i]; 3]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_maps_level_to_mid_grey() {
        let g = window(&[-160.0, 40.0, 240.0, 1000.0], 40.0, 400.0);
        assert_eq!(g, vec![0, 128, 255, 255]);
    }

    #[test]
    fn png_round_trips_through_decoder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        let data: Vec<u8> = (0..(7 * 5)).map(|v| (v * 7) as u8).collect();
        write_gray_png(&path, &data, 7, 5).unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (7, 5));
        assert_eq!(&buf[..35], &data[..]);
    }
}
