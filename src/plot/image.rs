//! An 8-bit RGB raster with the few drawing operations the figures need, and PNG input/output.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use crate::error::{Error, Result};

/// An 8-bit RGB colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    pub const BLACK: Rgb = Rgb(0, 0, 0);
    pub const WHITE: Rgb = Rgb(255, 255, 255);

    /// `self` over `under` with opacity `alpha` in [0, 1].
    pub fn over(self, under: Rgb, alpha: f32) -> Rgb {
        let mix = |a: u8, b: u8| (a as f32 * alpha + b as f32 * (1.0 - alpha)).round().clamp(0.0, 255.0) as u8;
        Rgb(mix(self.0, under.0), mix(self.1, under.1), mix(self.2, under.2))
    }
}

/// A row-major RGB image, 3 bytes per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl RgbImage {
    /// An image filled with `background`.
    pub fn new(width: usize, height: usize, background: Rgb) -> Self {
        let data = [background.0, background.1, background.2].repeat(width * height);
        RgbImage { width, height, data }
    }

    /// An image from raw RGB bytes (`3 * width * height` of them).
    pub fn from_raw(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != 3 * width * height {
            return Err(Error::shape(
                "RgbImage::from_raw",
                format!("{} bytes for a {width}x{height} RGB image", data.len()),
            ));
        }
        Ok(RgbImage { width, height, data })
    }

    /// A grey image from one byte per pixel.
    pub fn from_gray(width: usize, height: usize, gray: &[u8]) -> Result<Self> {
        if gray.len() != width * height {
            return Err(Error::shape(
                "RgbImage::from_gray",
                format!("{} values for a {width}x{height} image", gray.len()),
            ));
        }
        let data = gray.iter().flat_map(|&g| [g, g, g]).collect();
        Ok(RgbImage { width, height, data })
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    /// The RGB bytes, row-major.
    pub fn as_raw(&self) -> &[u8] {
        &self.data
    }

    /// The colour at `(x, y)`; panics outside the image, like slice indexing.
    pub fn get(&self, x: usize, y: usize) -> Rgb {
        let i = 3 * (y * self.width + x);
        Rgb(self.data[i], self.data[i + 1], self.data[i + 2])
    }

    /// Sets `(x, y)`; coordinates outside the image are ignored, so shapes clip themselves.
    pub fn set(&mut self, x: i64, y: i64, color: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = 3 * (y as usize * self.width + x as usize);
            self.data[i..i + 3].copy_from_slice(&[color.0, color.1, color.2]);
        }
    }

    /// Paints `color` over `(x, y)` with opacity `alpha`; outside the image is ignored.
    pub fn blend(&mut self, x: i64, y: i64, color: Rgb, alpha: f32) {
        if alpha <= 0.0 || x < 0 || y < 0 || x as usize >= self.width || y as usize >= self.height {
            return;
        }
        let under = self.get(x as usize, y as usize);
        self.set(x, y, color.over(under, alpha.min(1.0)));
    }

    /// Fills the rectangle `[x, x + w) x [y, y + h)`, clipped to the image.
    pub fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, color: Rgb) {
        for yy in y.max(0)..(y + h).min(self.height as i64) {
            for xx in x.max(0)..(x + w).min(self.width as i64) {
                self.set(xx, yy, color);
            }
        }
    }

    /// One-pixel outline of the rectangle `[x, x + w) x [y, y + h)`.
    pub fn stroke_rect(&mut self, x: i64, y: i64, w: i64, h: i64, color: Rgb) {
        self.fill_rect(x, y, w, 1, color);
        self.fill_rect(x, y + h - 1, w, 1, color);
        self.fill_rect(x, y, 1, h, color);
        self.fill_rect(x + w - 1, y, 1, h, color);
    }

    /// Copies `other` with its top-left corner at `(x, y)`, clipped to this image.
    pub fn blit(&mut self, other: &RgbImage, x: i64, y: i64) {
        for oy in 0..other.height {
            for ox in 0..other.width {
                self.set(x + ox as i64, y + oy as i64, other.get(ox, oy));
            }
        }
    }

    /// The image enlarged `factor` times with nearest-neighbour sampling (crisp label edges).
    pub fn upscaled(&self, factor: usize) -> RgbImage {
        let factor = factor.max(1);
        let (w, h) = (self.width * factor, self.height * factor);
        let mut data = Vec::with_capacity(3 * w * h);
        for y in 0..h {
            for x in 0..w {
                let c = self.get(x / factor, y / factor);
                data.extend_from_slice(&[c.0, c.1, c.2]);
            }
        }
        RgbImage {
            width: w,
            height: h,
            data,
        }
    }

    /// Writes the image as an 8-bit RGB PNG.
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        let mut encoder = png::Encoder::new(BufWriter::new(file), self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let png_error = |e: png::EncodingError| match e {
            png::EncodingError::IoError(io) => Error::io(path, io),
            other => Error::format(path, format!("cannot encode PNG: {other}")),
        };
        let mut writer = encoder.write_header().map_err(png_error)?;
        writer.write_image_data(&self.data).map_err(png_error)?;
        writer.finish().map_err(png_error)
    }

    /// Reads an 8-bit PNG (grey, grey+alpha, RGB or RGBA; alpha is dropped) as RGB.
    pub fn load_png(path: impl AsRef<Path>) -> Result<RgbImage> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut decoder = png::Decoder::new(BufReader::new(file));
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let bad = |e: png::DecodingError| Error::format(path, format!("cannot decode PNG: {e}"));
        let mut reader = decoder.read_info().map_err(bad)?;
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| Error::format(path, "PNG too large"))?;
        let mut buf = vec![0u8; size];
        let info = reader.next_frame(&mut buf).map_err(bad)?;
        let (w, h) = (info.width as usize, info.height as usize);
        let channels = match info.color_type {
            png::ColorType::Grayscale => 1,
            png::ColorType::GrayscaleAlpha => 2,
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            other => return Err(Error::format(path, format!("unsupported PNG colour type {other:?}"))),
        };
        let data = buf[..w * h * channels]
            .chunks_exact(channels)
            .flat_map(|p| {
                if channels < 3 {
                    [p[0], p[0], p[0]]
                } else {
                    [p[0], p[1], p[2]]
                }
            })
            .collect();
        Ok(RgbImage {
            width: w,
            height: h,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blend_and_clip() {
        let mut img = RgbImage::new(4, 3, Rgb::WHITE);
        img.fill_rect(-2, -2, 4, 4, Rgb(10, 20, 30));
        assert_eq!(img.get(1, 1), Rgb(10, 20, 30));
        assert_eq!(img.get(2, 1), Rgb::WHITE);
        img.blend(3, 2, Rgb::BLACK, 0.5);
        assert_eq!(img.get(3, 2), Rgb(128, 128, 128));
        img.set(99, 0, Rgb::BLACK);
        assert_eq!(img.upscaled(2).get(3, 3), Rgb(10, 20, 30));
        assert!(RgbImage::from_raw(2, 2, vec![0; 11]).is_err());
    }
}
