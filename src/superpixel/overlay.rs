//! Region boundaries drawn over a grey slice, and an RGB PNG writer for the result.

use std::path::Path;

use crate::{Error, Result};

/// The colour of region boundaries: a yellow that stands out on grey CT.
pub const BOUNDARY_RGB: [u8; 3] = [255, 210, 0];

/// RGB (row-major, 3 bytes a pixel) of `gray` with every pixel whose label differs from one of
/// its 4 neighbours painted [`BOUNDARY_RGB`]. Works for u16 regions and u32 segments alike.
///
/// # Panics
/// If `gray` or `labels` does not hold `h * w` values.
pub fn draw_boundaries<L: Copy + PartialEq>(gray: &[u8], labels: &[L], h: usize, w: usize) -> Vec<u8> {
    assert_eq!(
        gray.len(),
        h * w,
        "grey image of {} pixels is not {h} x {w}",
        gray.len()
    );
    assert_eq!(
        labels.len(),
        h * w,
        "label map of {} pixels is not {h} x {w}",
        labels.len()
    );
    let mut rgb = Vec::with_capacity(3 * h * w);
    for y in 0..h {
        for x in 0..w {
            let p = y * w + x;
            let l = labels[p];
            let boundary = (y > 0 && labels[p - w] != l)
                || (y + 1 < h && labels[p + w] != l)
                || (x > 0 && labels[p - 1] != l)
                || (x + 1 < w && labels[p + 1] != l);
            if boundary {
                rgb.extend_from_slice(&BOUNDARY_RGB);
            } else {
                rgb.extend_from_slice(&[gray[p]; 3]);
            }
        }
    }
    rgb
}

/// A normalised [0, 1] slice as 8-bit grey (values outside [0, 1] clamped).
pub fn to_gray_u8(img: &[f32]) -> Vec<u8> {
    img.iter().map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect()
}

/// Write an 8-bit RGB image (`h x w`, 3 bytes a pixel, row-major) as a PNG file.
pub fn write_rgb_png(path: &Path, rgb: &[u8], h: usize, w: usize) -> Result<()> {
    if rgb.len() != 3 * h * w {
        return Err(Error::format(
            path,
            format!("{} bytes are not a {h} x {w} RGB image", rgb.len()),
        ));
    }
    let (width, height) = match (u32::try_from(w), u32::try_from(h)) {
        (Ok(wu), Ok(hu)) if wu > 0 && hu > 0 => (wu, hu),
        _ => return Err(Error::format(path, format!("cannot write a {h} x {w} PNG"))),
    };
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let to_error = |e: png::EncodingError| match e {
        png::EncodingError::IoError(io) => Error::io(path, io),
        other => Error::format(path, other.to_string()),
    };
    let mut writer = encoder.write_header().map_err(to_error)?;
    writer.write_image_data(rgb).map_err(to_error)?;
    writer.finish().map_err(to_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_are_where_labels_change() {
        let labels: [u16; 8] = [1, 1, 2, 2, 1, 1, 2, 2];
        let gray = [10u8; 8];
        let rgb = draw_boundaries(&gray, &labels, 2, 4);
        let painted: Vec<bool> = rgb.chunks(3).map(|c| c == BOUNDARY_RGB).collect();
        assert_eq!(painted, vec![false, true, true, false, false, true, true, false]);
        assert_eq!(&rgb[0..3], &[10, 10, 10]);
    }
}
