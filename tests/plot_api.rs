//! Figures written as PNG and read back. Set LRC_PLOT_DIR to keep them for a look.

use std::path::PathBuf;

use lrc::plot::{
    LineChart, Rgb, RgbImage, Series, label_color, line_chart, overlay, overlay_image, panel, series_color,
};
use lrc::rng::Rng;

/// Where figures go: LRC_PLOT_DIR if set, else a temporary directory kept alive by the guard.
fn out_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    match std::env::var_os("LRC_PLOT_DIR") {
        Some(dir) => {
            std::fs::create_dir_all(&dir).unwrap();
            (PathBuf::from(dir), None)
        }
        None => {
            let tmp = tempfile::tempdir().unwrap();
            (tmp.path().to_path_buf(), Some(tmp))
        }
    }
}

fn count(img: &RgbImage, color: Rgb) -> usize {
    (0..img.height())
        .flat_map(|y| (0..img.width()).map(move |x| (x, y)))
        .filter(|&(x, y)| img.get(x, y) == color)
        .count()
}

/// A validation-Dice learning curve that rises to `top` with time constant `tau`.
fn curve(epochs: usize, top: f64, tau: f64, rng: &mut Rng) -> Vec<(f64, f64)> {
    (0..=epochs)
        .step_by(2)
        .map(|e| (e as f64, top * (1.0 - (-(e as f64) / tau).exp()) + 0.01 * rng.normal()))
        .collect()
}

#[test]
fn learning_curves_chart() {
    let (dir, _guard) = out_dir();
    let mut rng = Rng::new(1);
    let series = vec![
        Series::new("Random init.", curve(100, 0.70, 25.0, &mut rng), series_color(0)),
        Series::new("LRC + MoCo", curve(100, 0.75, 10.0, &mut rng), series_color(1)),
    ];
    let path = dir.join("learning_curves.png");
    line_chart(&path, "ABD-123, |X_F| = 10", "epoch", "validation Dice", &series).unwrap();
    let img = RgbImage::load_png(&path).unwrap();
    assert_eq!((img.width(), img.height()), (960, 600));
    // Both lines are drawn with fully opaque pixels of their colours, and text in dark ink.
    assert!(count(&img, series_color(0)) > 300);
    assert!(count(&img, series_color(1)) > 300);
    assert!(count(&img, Rgb(30, 30, 30)) > 1000);

    // A fixed [0, 1] Dice axis with markers on few points.
    let few = vec![
        Series::new(
            "Random init.",
            vec![(0.0, 0.1), (10.0, 0.5), (20.0, 0.62), (30.0, 0.66)],
            series_color(0),
        ),
        Series::new(
            "LRC + MoCo",
            vec![(0.0, 0.2), (10.0, 0.6), (20.0, 0.7), (30.0, f64::NAN)],
            series_color(1),
        ),
    ];
    let chart = LineChart::new("Validation Dice", "epoch", "Dice", &few)
        .y_range(0.0, 1.0)
        .size(640, 420);
    chart.save(dir.join("dice_fixed_axis.png")).unwrap();
    let img = chart.render();
    assert_eq!((img.width(), img.height()), (640, 420));
}

#[test]
fn loss_chart_with_many_points_and_edge_cases() {
    let (dir, _guard) = out_dir();
    let mut rng = Rng::new(2);
    let loss: Vec<(f64, f64)> = (0..20_000)
        .map(|s| {
            let s = s as f64 * 5.0;
            (s, 6.0 * (-s / 20_000.0).exp() + 1.5 + 0.3 * rng.normal())
        })
        .collect();
    let series = [Series::new("InfoNCE loss", loss, series_color(3))];
    line_chart(dir.join("loss.png"), "MoCo pre-training", "step", "loss", &series).unwrap();
    assert!(count(&RgbImage::load_png(dir.join("loss.png")).unwrap(), series_color(3)) > 2000);

    // No data, a single point, a constant series: all render without panicking.
    line_chart(dir.join("empty.png"), "", "", "", &[]).unwrap();
    let one = [Series::new("one", vec![(3.0, 0.5)], series_color(2))];
    line_chart(dir.join("one_point.png"), "one point", "x", "y", &one).unwrap();
    let flat = [Series::new("flat", vec![(0.0, 2.0), (1.0, 2.0)], series_color(4))];
    line_chart(dir.join("flat.png"), "flat", "x", "y", &flat).unwrap();
    // A path in a missing directory is an error naming the path.
    let err = line_chart(dir.join("missing/x.png"), "t", "x", "y", &one).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

/// A 256 x 256 abdomen-like phantom: body ellipse, liver, spleen, kidneys, spine, with noise.
fn phantom(rng: &mut Rng) -> (Vec<u8>, Vec<u8>) {
    let (h, w) = (256usize, 256usize);
    let mut ct = vec![0u8; h * w];
    let mut labels = vec![0u8; h * w];
    let inside =
        |x: f64, y: f64, cx: f64, cy: f64, rx: f64, ry: f64| ((x - cx) / rx).powi(2) + ((y - cy) / ry).powi(2) <= 1.0;
    for y in 0..h {
        for x in 0..w {
            let (xf, yf) = (x as f64, y as f64);
            let (mut v, mut l) = (10.0, 0u8);
            if inside(xf, yf, 128.0, 130.0, 115.0, 90.0) {
                v = 105.0;
            }
            for (label, (cx, cy, rx, ry, gray)) in [
                (1u8, (85.0, 115.0, 45.0, 38.0, 135.0)),
                (2, (185.0, 105.0, 22.0, 28.0, 128.0)),
                (3, (95.0, 165.0, 14.0, 20.0, 150.0)),
                (4, (165.0, 165.0, 14.0, 20.0, 150.0)),
                (5, (130.0, 185.0, 13.0, 13.0, 230.0)),
                (6, (130.0, 145.0, 8.0, 8.0, 160.0)),
            ] {
                if inside(xf, yf, cx, cy, rx, ry) {
                    (v, l) = (gray, label);
                }
            }
            ct[y * w + x] = (v + 6.0 * rng.normal()).clamp(0.0, 255.0) as u8;
            labels[y * w + x] = l;
        }
    }
    (ct, labels)
}

#[test]
fn overlays_and_panel() {
    let (dir, _guard) = out_dir();
    let mut rng = Rng::new(3);
    let (ct, truth) = phantom(&mut rng);
    let (h, w) = (256, 256);
    overlay(dir.join("overlay.png"), &ct, &truth, h, w, 0.45).unwrap();
    let img = RgbImage::load_png(dir.join("overlay.png")).unwrap();
    assert_eq!((img.width(), img.height()), (w, h));
    for label in 1..=6 {
        // Outlines are in the exact label colour.
        assert!(count(&img, label_color(label)) > 20, "label {label}");
    }
    // Background pixels stay grey.
    let p = img.get(2, 2);
    assert!(p.0 == p.1 && p.1 == p.2);

    // A worse "prediction": organs shifted and merged.
    let mut pred = vec![0u8; h * w];
    for y in 0..h {
        for x in 0..w {
            let src = truth[y * w + x.saturating_sub(6)];
            pred[y * w + x] = if src == 4 { 3 } else { src };
        }
    }
    let random_pred: Vec<u8> = truth
        .iter()
        .map(|&t| if t > 0 && rng.uniform() < 0.3 { 1 } else { t })
        .collect();
    let images = [
        overlay_image(&ct, &truth, h, w, 0.45).unwrap(),
        overlay_image(&ct, &random_pred, h, w, 0.45).unwrap(),
        overlay_image(&ct, &pred, h, w, 0.45).unwrap(),
    ];
    panel(
        dir.join("panel.png"),
        &images,
        3,
        &["truth", "random init.", "LRC + MoCo"],
    )
    .unwrap();
    let p = RgbImage::load_png(dir.join("panel.png")).unwrap();
    assert!(p.width() > 3 * 256 && p.height() > 256);
    assert!(panel(dir.join("bad.png"), &images, 3, &["only one"]).is_err());
}

#[test]
fn font_specimen() {
    let (dir, _guard) = out_dir();
    let all: String = (32u8..127).map(|c| c as char).collect();
    let lines: Vec<&str> = vec![
        &all[..32],
        &all[32..64],
        &all[64..],
        "Dice 0.7531 | AMI 0.791 | ARI 0.794 (n=50)",
    ];
    let scale = 3;
    let width = lines
        .iter()
        .map(|l| lrc::plot::font::text_width(l, scale))
        .max()
        .unwrap()
        + 20;
    let line_h = lrc::plot::font::text_height(scale) + 8;
    let mut img = RgbImage::new(width, 10 + lines.len() * line_h, Rgb::WHITE);
    for (i, l) in lines.iter().enumerate() {
        lrc::plot::font::draw_text(&mut img, 10, (10 + i * line_h) as i64, l, scale, Rgb::BLACK);
    }
    img.save_png(dir.join("font.png")).unwrap();
    // Ink stays inside the measured box of each line.
    for y in 0..img.height() {
        for x in (width - 10)..width {
            assert_eq!(img.get(x, y), Rgb::WHITE);
        }
    }
}
