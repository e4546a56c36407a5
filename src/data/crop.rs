//! Cropping slices for training and padding them for whole-slice inference.

use super::store::SliceView;
use crate::rng::Rng;

/// Default training crop (h, w), as in the thesis.
pub const DEFAULT_CROP: (usize, usize) = (256, 256);

/// Default multiple to pad to for whole-slice inference (four 2x poolings of a U-Net).
pub const PAD_MULTIPLE: usize = 16;

/// A window in slice coordinates; it may reach outside the slice (padded there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub top: isize,
    pub left: isize,
    pub h: usize,
    pub w: usize,
}

/// A cropped image with its labels and regions cut by the same window.
#[derive(Clone, Debug, PartialEq)]
pub struct Crop {
    pub image: Vec<f32>,
    pub labels: Option<Vec<u8>>,
    pub regions: Option<Vec<u16>>,
    pub window: Window,
}

/// A uniformly random `ch x cw` window over an `h x w` slice. Where the slice is smaller than
/// the crop along an axis, the slice lands at a random place inside the window.
pub fn random_window(rng: &mut Rng, h: usize, w: usize, ch: usize, cw: usize) -> Window {
    let pick = |rng: &mut Rng, n: usize, c: usize| -> isize {
        if n >= c {
            rng.below((n - c + 1) as u64) as isize
        } else {
            -(rng.below((c - n + 1) as u64) as isize)
        }
    };
    let top = pick(rng, h, ch);
    let left = pick(rng, w, cw);
    Window {
        top,
        left,
        h: ch,
        w: cw,
    }
}

/// Cuts `window` out of a `h x w` array, filling outside positions with `fill`.
pub fn cut<T: Copy>(data: &[T], h: usize, w: usize, window: Window, fill: T) -> Vec<T> {
    let mut out = vec![fill; window.h * window.w];
    for r in 0..window.h {
        let y = window.top + r as isize;
        if y < 0 || y >= h as isize {
            continue;
        }
        let x0 = window.left.max(0);
        let x1 = (window.left + window.w as isize).min(w as isize);
        if x0 >= x1 {
            continue;
        }
        let src = &data[y as usize * w + x0 as usize..y as usize * w + x1 as usize];
        let d0 = r * window.w + (x0 - window.left) as usize;
        out[d0..d0 + src.len()].copy_from_slice(src);
    }
    out
}

/// Crops image, labels and regions of a slice with one window (labels and regions pad with 0).
pub fn crop_slice(view: &SliceView<'_>, window: Window, pad_value: f32) -> Crop {
    Crop {
        image: cut(view.image, view.h, view.w, window, pad_value),
        labels: view.labels.map(|l| cut(l, view.h, view.w, window, 0)),
        regions: view.regions.map(|g| cut(g, view.h, view.w, window, 0)),
        window,
    }
}

/// A random `ch x cw` crop of a slice (see [`random_window`]).
pub fn random_crop(rng: &mut Rng, view: &SliceView<'_>, ch: usize, cw: usize, pad_value: f32) -> Crop {
    let window = random_window(rng, view.h, view.w, ch, cw);
    crop_slice(view, window, pad_value)
}

/// Where a slice sits inside its padded version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Padding {
    pub top: usize,
    pub left: usize,
    /// Original size.
    pub h: usize,
    pub w: usize,
    /// Padded size.
    pub padded_h: usize,
    pub padded_w: usize,
}

/// Pads an `h x w` array to the next multiples of `multiple`, centred, with `fill`.
pub fn pad_to_multiple<T: Copy>(data: &[T], h: usize, w: usize, multiple: usize, fill: T) -> (Vec<T>, Padding) {
    let m = multiple.max(1);
    let (ph, pw) = (h.div_ceil(m) * m, w.div_ceil(m) * m);
    let pad = Padding {
        top: (ph - h) / 2,
        left: (pw - w) / 2,
        h,
        w,
        padded_h: ph,
        padded_w: pw,
    };
    let window = Window {
        top: -(pad.top as isize),
        left: -(pad.left as isize),
        h: ph,
        w: pw,
    };
    (cut(data, h, w, window, fill), pad)
}

/// Takes the original `h x w` region back out of a padded array.
pub fn unpad<T: Copy + Default>(padded: &[T], pad: &Padding) -> Vec<T> {
    let window = Window {
        top: pad.top as isize,
        left: pad.left as isize,
        h: pad.h,
        w: pad.w,
    };
    cut(padded, pad.padded_h, pad.padded_w, window, T::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_and_unpad_round_trip() {
        let data: Vec<u16> = (0..(37 * 50)).map(|v| v as u16).collect();
        let (p, pad) = pad_to_multiple(&data, 37, 50, 16, 9999);
        assert_eq!((pad.padded_h, pad.padded_w), (48, 64));
        assert_eq!(p.len(), 48 * 64);
        assert_eq!(p[0], 9999);
        assert_eq!(p[pad.top * 64 + pad.left], 0);
        assert_eq!(unpad(&p, &pad), data);
    }

    #[test]
    fn crop_keeps_image_and_labels_aligned() {
        let (h, w) = (20, 30);
        let image: Vec<f32> = (0..h * w).map(|v| v as f32).collect();
        let labels: Vec<u8> = (0..h * w).map(|v| (v % 251) as u8).collect();
        let view = SliceView {
            image: &image,
            labels: Some(&labels),
            regions: None,
            h,
            w,
            case: 0,
            z: 0,
        };
        let mut rng = Rng::new(5);
        for _ in 0..50 {
            let c = random_crop(&mut rng, &view, 16, 40, -1.0);
            let l = c.labels.as_ref().unwrap();
            for (i, &v) in c.image.iter().enumerate() {
                if v >= 0.0 {
                    assert_eq!(l[i], (v as usize % 251) as u8);
                } else {
                    assert_eq!(l[i], 0);
                }
            }
            // The 30-wide slice lies fully inside the 40-wide window; rows are inside the slice.
            assert!(c.window.left <= 0 && c.window.left >= -10);
            assert!(c.window.top >= 0 && c.window.top <= 4);
        }
    }
}
