//! PNG figures without system fonts: line charts (learning curves), label overlays on CT
//! slices, and panels of several images with captions. Text uses a built-in bitmap font.

pub mod chart;
pub mod font;
pub mod image;
pub mod overlay;
pub mod panel;

pub use chart::{LineChart, SERIES_COLORS, Series, line_chart, series_color};
pub use image::{Rgb, RgbImage};
pub use overlay::{LABEL_COLORS, label_color, overlay, overlay_image};
pub use panel::{panel, panel_image};
