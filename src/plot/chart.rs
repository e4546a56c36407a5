//! Line charts (learning curves: validation Dice per epoch, loss per step) as PNG.

use std::path::Path;

use super::font::{draw_text, draw_text_up, text_height, text_width};
use super::image::{Rgb, RgbImage};
use crate::error::Result;

/// One named line of a chart; points are joined in the order given, and a non-finite point
/// breaks the line.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: Rgb,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>, color: Rgb) -> Self {
        Series {
            name: name.into(),
            points,
            color,
        }
    }
}

/// Ten distinct series colours (the common "tab10" set); [`series_color`] cycles through them.
pub const SERIES_COLORS: [Rgb; 10] = [
    Rgb(31, 119, 180),
    Rgb(255, 127, 14),
    Rgb(44, 160, 44),
    Rgb(214, 39, 40),
    Rgb(148, 103, 189),
    Rgb(140, 86, 75),
    Rgb(227, 119, 194),
    Rgb(127, 127, 127),
    Rgb(188, 189, 34),
    Rgb(23, 190, 207),
];

/// The `i`-th series colour.
pub fn series_color(i: usize) -> Rgb {
    SERIES_COLORS[i % SERIES_COLORS.len()]
}

/// Writes a line chart with default size and automatic axes; see [`LineChart`].
pub fn line_chart(path: impl AsRef<Path>, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<()> {
    LineChart::new(title, x_label, y_label, series).save(path)
}

/// A line chart: title, axes with ticks, numbers and labels, grid, several series, legend.
#[derive(Clone, Debug)]
pub struct LineChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: &'a [Series],
    pub width: usize,
    pub height: usize,
    /// Fixed x range; `None` fits the data, widened to whole tick steps.
    pub x_range: Option<(f64, f64)>,
    /// Fixed y range (e.g. `(0.0, 1.0)` for Dice); `None` fits the data.
    pub y_range: Option<(f64, f64)>,
}

const TEXT_SCALE: usize = 2;
const PAD: i64 = 16;
const TICK: i64 = 6;
const GRID: Rgb = Rgb(228, 228, 228);
const FRAME: Rgb = Rgb(70, 70, 70);
const INK: Rgb = Rgb(30, 30, 30);
const LINE_HALF_WIDTH: f64 = 1.25;
const THIN_HALF_WIDTH: f64 = 0.6;
const MARKER_RADIUS: f64 = 3.5;

impl<'a> LineChart<'a> {
    /// A 960 x 600 chart with automatic ranges.
    pub fn new(title: &'a str, x_label: &'a str, y_label: &'a str, series: &'a [Series]) -> Self {
        LineChart {
            title,
            x_label,
            y_label,
            series,
            width: 960,
            height: 600,
            x_range: None,
            y_range: None,
        }
    }

    pub fn size(mut self, width: usize, height: usize) -> Self {
        self.width = width;
        self.height = height;
        self
    }

    pub fn x_range(mut self, lo: f64, hi: f64) -> Self {
        self.x_range = Some((lo, hi));
        self
    }

    pub fn y_range(mut self, lo: f64, hi: f64) -> Self {
        self.y_range = Some((lo, hi));
        self
    }

    /// Renders and writes the chart as PNG.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.render().save_png(path)
    }

    /// Renders the chart.
    pub fn render(&self) -> RgbImage {
        let (w, h) = (self.width.max(200) as i64, self.height.max(150) as i64);
        let mut img = RgbImage::new(w as usize, h as usize, Rgb::WHITE);
        let s = TEXT_SCALE;
        let line_h = text_height(s) as i64;
        let cap_h = (7 * s) as i64;

        let finite = || {
            self.series
                .iter()
                .flat_map(|sr| sr.points.iter())
                .filter(|p| p.0.is_finite() && p.1.is_finite())
        };
        let data_x = bounds(finite().map(|p| p.0));
        let data_y = bounds(finite().map(|p| p.1));

        // Title, shrunk to fit the width.
        let title_scale = (1..=3)
            .rev()
            .find(|&sc| text_width(self.title, sc) as i64 <= w - 2 * PAD)
            .unwrap_or(1);
        let title_h = if self.title.is_empty() {
            0
        } else {
            text_height(title_scale) as i64
        };
        let top = PAD + title_h + if title_h > 0 { 14 } else { 0 };
        let bottom_margin = TICK + 8 + line_h + if self.x_label.is_empty() { 0 } else { 12 + line_h } + PAD;

        // The y ticks decide the left margin, the x ticks need the plot width: y first.
        let plot_h = (h - top - bottom_margin).max(20);
        let y_axis = Axis::new(
            self.y_range.unwrap_or(data_y),
            self.y_range.is_some(),
            plot_h as f64 / 70.0,
        );
        let y_labels: Vec<String> = y_axis.ticks().iter().map(|&v| y_axis.format(v)).collect();
        let y_label_w = y_labels.iter().map(|l| text_width(l, s)).max().unwrap_or(0) as i64;
        let left = PAD + if self.y_label.is_empty() { 0 } else { line_h + 14 } + y_label_w + 8 + TICK;
        // The last x tick label is centred on the right edge: leave room for its right half.
        let x_axis_for = |plot_w: i64| {
            Axis::new(
                self.x_range.unwrap_or(data_x),
                self.x_range.is_some(),
                plot_w as f64 / 110.0,
            )
        };
        let right_margin_for = |axis: &Axis| {
            let last = axis.ticks().last().map_or(0, |&v| text_width(&axis.format(v), s)) as i64;
            PAD + (last / 2).max(24)
        };
        let mut right_margin = right_margin_for(&x_axis_for((w - left - PAD - 24).max(20)));
        let mut x_axis = x_axis_for((w - left - right_margin).max(20));
        right_margin = right_margin.max(right_margin_for(&x_axis));
        let plot_w = (w - left - right_margin).max(20);
        if x_axis != x_axis_for(plot_w) {
            x_axis = x_axis_for(plot_w);
        }
        let area = PlotArea {
            x0: left,
            y0: top,
            w: plot_w,
            h: plot_h,
            x_axis: x_axis.clone(),
            y_axis: y_axis.clone(),
        };

        // Grid.
        for &v in &x_axis.ticks() {
            img.fill_rect(area.px(v).round() as i64, area.y0, 1, area.h, GRID);
        }
        for &v in &y_axis.ticks() {
            img.fill_rect(area.x0, area.py(v).round() as i64, area.w, 1, GRID);
        }

        // Series, each rendered as a coverage mask then painted, so that joints do not darken.
        let max_points = self.series.iter().map(|sr| sr.points.len()).max().unwrap_or(0);
        let markers = max_points > 0 && max_points <= 60 && area.w as f64 / max_points as f64 >= 8.0;
        let mut ink = vec![false; (area.w * area.h) as usize];
        for sr in self.series {
            // Series denser than the pixel columns (losses per step) get a thin line.
            let half_width = if sr.points.len() > area.w as usize {
                THIN_HALF_WIDTH
            } else {
                LINE_HALF_WIDTH
            };
            let mut mask = Mask::new(area.w as usize, area.h as usize);
            let to_px = |p: &(f64, f64)| (area.px(p.0) - area.x0 as f64, area.py(p.1) - area.y0 as f64);
            let mut prev: Option<(f64, f64)> = None;
            for p in &sr.points {
                if !(p.0.is_finite() && p.1.is_finite()) {
                    prev = None;
                    continue;
                }
                let q = to_px(p);
                match prev {
                    Some(a) => mask.segment(a, q, half_width),
                    None => mask.segment(q, q, half_width),
                }
                if markers {
                    mask.segment(q, q, MARKER_RADIUS);
                }
                prev = Some(q);
            }
            for (i, &c) in mask.coverage.iter().enumerate() {
                if c > 0.0 {
                    let (x, y) = ((i % mask.w) as i64, (i / mask.w) as i64);
                    img.blend(area.x0 + x, area.y0 + y, sr.color, c);
                    ink[i] |= c > 0.1;
                }
            }
        }

        // Frame, ticks and their numbers.
        img.stroke_rect(area.x0 - 1, area.y0 - 1, area.w + 2, area.h + 2, FRAME);
        for &v in &x_axis.ticks() {
            let x = area.px(v).round() as i64;
            img.fill_rect(x, area.y0 + area.h + 1, 1, TICK, FRAME);
            let label = x_axis.format(v);
            let lw = text_width(&label, s) as i64;
            draw_text(&mut img, x - lw / 2, area.y0 + area.h + 1 + TICK + 6, &label, s, INK);
        }
        for (&v, label) in y_axis.ticks().iter().zip(&y_labels) {
            let y = area.py(v).round() as i64;
            img.fill_rect(area.x0 - 1 - TICK, y, TICK, 1, FRAME);
            let lw = text_width(label, s) as i64;
            draw_text(&mut img, area.x0 - 1 - TICK - 8 - lw, y - cap_h / 2, label, s, INK);
        }

        // Title and axis labels.
        if title_h > 0 {
            let tw = text_width(self.title, title_scale) as i64;
            draw_text(&mut img, (w - tw) / 2, PAD, self.title, title_scale, INK);
        }
        if !self.x_label.is_empty() {
            let lw = text_width(self.x_label, s) as i64;
            let y = area.y0 + area.h + 1 + TICK + 6 + line_h + 12;
            draw_text(&mut img, area.x0 + (area.w - lw) / 2, y, self.x_label, s, INK);
        }
        if !self.y_label.is_empty() {
            let lw = text_width(self.y_label, s) as i64;
            draw_text_up(&mut img, PAD, area.y0 + (area.h + lw) / 2, self.y_label, s, INK);
        }

        self.draw_legend(&mut img, &area, &ink, markers);
        img
    }

    /// The legend goes in the inside corner of the plot that covers the fewest drawn pixels.
    fn draw_legend(&self, img: &mut RgbImage, area: &PlotArea, ink: &[bool], markers: bool) {
        let entries: Vec<&Series> = self.series.iter().filter(|sr| !sr.name.is_empty()).collect();
        if entries.is_empty() {
            return;
        }
        let s = TEXT_SCALE;
        let (pad, sample, gap, row_h) = (10i64, 30i64, 10i64, text_height(s) as i64 + 6);
        let text_w = entries.iter().map(|sr| text_width(&sr.name, s)).max().unwrap_or(0) as i64;
        let (bw, bh) = (
            pad + sample + gap + text_w + pad,
            2 * pad + row_h * entries.len() as i64 - 6,
        );
        let inset = 12;
        let corners = [
            (area.w - inset - bw, inset),
            (inset, inset),
            (area.w - inset - bw, area.h - inset - bh),
            (inset, area.h - inset - bh),
        ];
        let covered = |&(cx, cy): &(i64, i64)| -> usize {
            let mut n = 0;
            for y in cy.max(0)..(cy + bh).min(area.h) {
                for x in cx.max(0)..(cx + bw).min(area.w) {
                    n += ink[(y * area.w + x) as usize] as usize;
                }
            }
            n
        };
        // min_by_key keeps the first of equal corners: top right is preferred.
        let &(cx, cy) = corners.iter().min_by_key(|c| covered(c)).expect("four corners");
        let (bx, by) = (area.x0 + cx, area.y0 + cy);
        img.fill_rect(bx, by, bw, bh, Rgb::WHITE);
        img.stroke_rect(bx, by, bw, bh, Rgb(160, 160, 160));
        for (i, sr) in entries.iter().enumerate() {
            let y = by + pad + i as i64 * row_h;
            let mid = (y + (7 * s) as i64 / 2) as f64 + 0.5;
            let mut mask = Mask::new(sample as usize + 8, 12);
            let (x0, x1) = (4.0, sample as f64 + 4.0);
            mask.segment((x0, 6.0), (x1, 6.0), LINE_HALF_WIDTH);
            if markers {
                mask.segment(((x0 + x1) / 2.0, 6.0), ((x0 + x1) / 2.0, 6.0), MARKER_RADIUS);
            }
            for (j, &c) in mask.coverage.iter().enumerate() {
                let (mx, my) = ((j % mask.w) as i64, (j / mask.w) as i64);
                img.blend(bx + pad - 4 + mx, mid as i64 - 6 + my, sr.color, c);
            }
            draw_text(img, bx + pad + sample + gap, y, &sr.name, s, INK);
        }
    }
}

/// Pixel geometry of the plotting rectangle.
struct PlotArea {
    x0: i64,
    y0: i64,
    w: i64,
    h: i64,
    x_axis: Axis,
    y_axis: Axis,
}

impl PlotArea {
    /// Pixel-centre x of data value `x`.
    fn px(&self, x: f64) -> f64 {
        self.x0 as f64 + (x - self.x_axis.min) / (self.x_axis.max - self.x_axis.min) * (self.w - 1) as f64
    }

    /// Pixel-centre y of data value `y` (up is larger).
    fn py(&self, y: f64) -> f64 {
        self.y0 as f64 + (self.y_axis.max - y) / (self.y_axis.max - self.y_axis.min) * (self.h - 1) as f64
    }
}

/// Smallest and largest value, `(0, 1)` when there are none.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo <= hi { (lo, hi) } else { (0.0, 1.0) }
}

/// An axis range with "nice" tick steps (1, 2, 2.5 or 5 times a power of ten).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Axis {
    pub min: f64,
    pub max: f64,
    pub step: f64,
}

impl Axis {
    /// Ticks for `range`, about `target` of them (at least 2); a range that is not `fixed` is
    /// widened to whole steps.
    pub fn new(range: (f64, f64), fixed: bool, target: f64) -> Axis {
        let (mut lo, mut hi) = if range.0 <= range.1 { range } else { (range.1, range.0) };
        if !(lo.is_finite() && hi.is_finite()) {
            (lo, hi) = (0.0, 1.0);
        }
        if hi - lo <= f64::EPSILON * hi.abs().max(lo.abs()).max(1e-300) {
            let pad = if lo == 0.0 { 1.0 } else { 0.1 * lo.abs() };
            (lo, hi) = (lo - pad, hi + pad);
        }
        let step = nice_step((hi - lo) / target.max(2.0));
        if fixed {
            Axis { min: lo, max: hi, step }
        } else {
            // A relative slack keeps values a hair over a tick (rounding) from adding a step.
            let slack = 1e-9;
            Axis {
                min: (lo / step + slack).floor() * step,
                max: (hi / step - slack).ceil() * step,
                step,
            }
        }
    }

    /// Tick values: the multiples of the step within the range.
    pub fn ticks(&self) -> Vec<f64> {
        let first = (self.min / self.step - 1e-9).ceil() as i64;
        let last = (self.max / self.step + 1e-9).floor() as i64;
        (first..=last).map(|i| i as f64 * self.step).collect()
    }

    /// The tick label of `v`: as many decimals as the step needs; powers of ten for very large
    /// or very small magnitudes.
    pub fn format(&self, v: f64) -> String {
        let magnitude = self.min.abs().max(self.max.abs());
        if v.abs() < self.step * 1e-6 {
            return "0".to_string();
        }
        if !(1e-3..1e6).contains(&magnitude) {
            let exp = magnitude.log10().floor() as i32;
            let scale = 10f64.powi(exp);
            return format!("{:.*}e{exp}", decimals(self.step / scale), v / scale);
        }
        format!("{:.*}", decimals(self.step), v)
    }
}

/// Decimals needed to write multiples of `step` exactly (for steps from [`nice_step`]).
fn decimals(step: f64) -> usize {
    (0..12)
        .find(|&d| {
            let scaled = step * 10f64.powi(d as i32);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
        })
        .unwrap_or(12)
}

/// The "nice" number (1, 2, 2.5, 5 times a power of ten) nearest above `raw`.
fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 2.5 {
        2.5
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// Antialiased coverage in [0, 1] of round-capped thick strokes.
struct Mask {
    w: usize,
    h: usize,
    coverage: Vec<f32>,
}

impl Mask {
    fn new(w: usize, h: usize) -> Self {
        Mask {
            w,
            h,
            coverage: vec![0.0; w * h],
        }
    }

    /// The segment `a`-`b` (pixel-centre coordinates) with half-width `r`; a point when a = b.
    fn segment(&mut self, a: (f64, f64), b: (f64, f64), r: f64) {
        let reach = r + 1.0;
        let x_lo = (a.0.min(b.0) - reach).floor().max(0.0) as usize;
        let x_hi = ((a.0.max(b.0) + reach).ceil().max(0.0) as usize).min(self.w);
        let y_lo = (a.1.min(b.1) - reach).floor().max(0.0) as usize;
        let y_hi = ((a.1.max(b.1) + reach).ceil().max(0.0) as usize).min(self.h);
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = dx * dx + dy * dy;
        for y in y_lo..y_hi {
            for x in x_lo..x_hi {
                let (px, py) = (x as f64, y as f64);
                let t = if len2 > 0.0 {
                    (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (ex, ey) = (px - (a.0 + t * dx), py - (a.1 + t * dy));
                let c = (r + 0.5 - (ex * ex + ey * ey).sqrt()).clamp(0.0, 1.0) as f32;
                let cell = &mut self.coverage[y * self.w + x];
                *cell = cell.max(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ticks() {
        let a = Axis::new((0.0, 1.0), false, 5.0);
        assert_eq!((a.min, a.max, a.step), (0.0, 1.0, 0.2));
        assert_eq!(a.ticks().len(), 6);
        assert_eq!(a.format(0.6000000000000001), "0.6");
        let a = Axis::new((3.0, 97.0), false, 6.0);
        assert_eq!((a.min, a.max, a.step), (0.0, 100.0, 20.0));
        assert_eq!(a.format(40.0), "40");
        let a = Axis::new((0.31, 0.78), false, 6.0);
        assert_eq!(a.step, 0.1);
        assert_eq!(
            (a.ticks()[0], a.format(a.ticks()[0])),
            (0.30000000000000004, "0.3".to_string())
        );
        let a = Axis::new((0.0, 2.5e6), false, 5.0);
        assert_eq!(a.format(1.5e6), "1.5e6");
        let a = Axis::new((0.5, 0.5), false, 5.0);
        assert!(a.min < 0.5 && a.max > 0.5);
        let fixed = Axis::new((0.0, 1.0), true, 4.0);
        assert_eq!((fixed.min, fixed.max, fixed.step), (0.0, 1.0, 0.25));
        assert_eq!(fixed.format(0.25), "0.25");
    }

    #[test]
    fn mask_covers_the_stroke() {
        let mut m = Mask::new(20, 10);
        m.segment((2.0, 5.0), (17.0, 5.0), 1.25);
        // Across the line, coverage adds up to its width 2.5: 0.75, 1, 0.75.
        let column: Vec<f32> = (0..10).map(|y| m.coverage[y * 20 + 10]).collect();
        assert_eq!(column, vec![0.0, 0.0, 0.0, 0.0, 0.75, 1.0, 0.75, 0.0, 0.0, 0.0]);
        // Round caps reach r past the ends and no further.
        assert_eq!(m.coverage[5 * 20 + 19], 0.0);
        assert!(m.coverage[5 * 20 + 18] > 0.0);
    }
}
