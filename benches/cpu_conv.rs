//! The CPU convolutions of one U-Net training step, layer by layer: every 3x3 convolution of the
//! default U-Net (base width 32, depth 5) at batch 4, 1 x 128 x 128 (the `cpu_step` bench's
//! step), each pass timed alone (median of 5 after a warm-up), with GFLOP/s and the step's total,
//! twice: as the engine runs them (`ops::conv::cpu`: Winograd where it applies) and lowered to
//! GEMMs (`ops::conv::lowered`). GFLOP/s counts the direct convolution's 2 x multiply-adds in both
//! tables, so Winograd's figures are effective rates.
//! `RAYON_NUM_THREADS=1 cargo bench --bench cpu_conv` gives the single-thread table of
//! docs/PERFORMANCE.md. Run as a test (`cargo test --all-targets`, without `--bench`), it times a
//! U-Net 16 times smaller, so that CI runs the code without the minutes.
//!
//! `cargo bench --bench cpu_conv -- --sweep` instead prints, for square 3x3 convolutions of c
//! channels in and out at sizes 8-128 (batch `SWEEP_BATCH`, default 4), the lowering's time over
//! Winograd's for each pass (above 1: Winograd faster): the measurements behind
//! `winograd::applies`.

use std::time::Instant;

use lrc::nn::UNetConfig;
use lrc::ops::conv::{ConvGeom, cpu, lowered, winograd};

const BATCH: usize = 4;

fn median_ms(mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[2]
}

/// (c_in, c_out, size, how many such convolutions the U-Net has).
fn unet_convs(cfg: &UNetConfig, full_size: usize) -> Vec<(usize, usize, usize, usize)> {
    let widths = cfg.widths();
    let mut convs = Vec::new();
    let mut c_in = cfg.in_channels;
    for (level, &w) in widths.iter().enumerate() {
        let size = full_size >> level;
        let decoder = level + 1 < widths.len();
        convs.push((c_in, w, size, 1));
        if decoder {
            convs.push((2 * w, w, size, 1)); // after the skip concatenation
        }
        convs.push((w, w, size, if decoder { 2 } else { 1 }));
        c_in = w;
    }
    convs
}

type Forward = fn(&ConvGeom, &[f32], &[f32], Option<&[f32]>) -> Vec<f32>;
type BackwardData = fn(&ConvGeom, &[f32], &[f32]) -> Vec<f32>;
type BackwardWeight = fn(&ConvGeom, &[f32], &[f32]) -> (Vec<f32>, Vec<f32>);

fn main() {
    if std::env::args().any(|a| a == "--sweep") {
        return sweep();
    }
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let (cfg, size) = if benchmarking {
        (UNetConfig::default(), 128)
    } else {
        let small = UNetConfig {
            base_width: 8,
            depth: 3,
            ..UNetConfig::default()
        };
        (small, 32)
    };
    let algos: [(&str, Forward, BackwardData, BackwardWeight); 2] = [
        (
            "as the engine runs them (Winograd where it applies)",
            cpu::forward,
            cpu::backward_data,
            cpu::backward_weight,
        ),
        (
            "lowered to GEMMs",
            lowered::forward,
            lowered::backward_data,
            lowered::backward_weight,
        ),
    ];
    for (algo, forward, backward_data, backward_weight) in algos {
        table(&cfg, size, algo, forward, backward_data, backward_weight);
    }
}

fn table(
    cfg: &UNetConfig,
    size: usize,
    algo: &str,
    forward: Forward,
    backward_data: BackwardData,
    backward_weight: BackwardWeight,
) {
    println!(
        "\nCPU 3x3 convolutions of one U-Net step {algo} (batch {BATCH}, {size} x {size}, base {}, depth {}), {} threads",
        cfg.base_width,
        cfg.depth,
        rayon::current_num_threads()
    );
    println!(
        "| c_in -> c_out | size | count | forward ms (GF/s) | backward-data ms (GF/s) | backward-weight ms (GF/s) |"
    );
    println!("|---|---|---|---|---|---|");
    let mut total = [0.0; 3];
    for (c_in, c_out, size, count) in unet_convs(cfg, size) {
        let g = ConvGeom {
            n: BATCH,
            c_in,
            h: size,
            w: size,
            c_out,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
        };
        let x: Vec<f32> = (0..BATCH * c_in * size * size).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..c_out * c_in * 9).map(|i| (i % 5) as f32 * 0.1).collect();
        let dy: Vec<f32> = (0..BATCH * c_out * size * size).map(|i| (i % 3) as f32 * 0.1).collect();
        let times = [
            median_ms(|| drop(std::hint::black_box(forward(&g, &x, &w, None)))),
            median_ms(|| drop(std::hint::black_box(backward_data(&g, &dy, &w)))),
            median_ms(|| drop(std::hint::black_box(backward_weight(&g, &x, &dy)))),
        ];
        let gflop = 2.0 * g.macs() as f64 / 1e9;
        let cell = |ms: f64| format!("{ms:.1} ({:.0})", gflop / ms * 1e3);
        println!(
            "| {c_in} -> {c_out} | {size} | {count} | {} | {} | {} |",
            cell(times[0]),
            cell(times[1]),
            cell(times[2])
        );
        for (t, ms) in total.iter_mut().zip(times) {
            *t += ms * count as f64;
        }
    }
    println!(
        "per step: forward {:.0} ms, backward-data {:.0} ms, backward-weight {:.0} ms, all {:.0} ms",
        total[0],
        total[1],
        total[2],
        total.iter().sum::<f64>()
    );
}

/// The lowering's time over Winograd's, per pass, on a grid of sizes and channel counts.
fn sweep() {
    let n: usize = std::env::var("SWEEP_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BATCH);
    println!(
        "lowered / Winograd time (forward / backward-data / backward-weight), batch {n}, {} threads",
        rayon::current_num_threads()
    );
    println!("| size \\ c | 16 | 32 | 64 | 128 | 256 |");
    println!("|---|---|---|---|---|---|");
    for size in [8usize, 16, 32, 64, 128] {
        let mut cells = Vec::new();
        for c in [16usize, 32, 64, 128, 256] {
            let g = ConvGeom {
                n,
                c_in: c,
                h: size,
                w: size,
                c_out: c,
                kh: 3,
                kw: 3,
                stride: 1,
                pad: 1,
            };
            // Skip the shapes that would take minutes.
            if 2 * g.macs() > 3_000_000_000 {
                cells.push("-".to_string());
                continue;
            }
            let x: Vec<f32> = (0..n * c * size * size).map(|i| (i % 7) as f32 * 0.1).collect();
            let w: Vec<f32> = (0..c * c * 9).map(|i| (i % 5) as f32 * 0.1).collect();
            let r = [
                median_ms(|| drop(std::hint::black_box(lowered::forward(&g, &x, &w, None))))
                    / median_ms(|| drop(std::hint::black_box(winograd::forward(&g, &x, &w, None)))),
                median_ms(|| drop(std::hint::black_box(lowered::backward_data(&g, &x, &w))))
                    / median_ms(|| drop(std::hint::black_box(winograd::backward_data(&g, &x, &w)))),
                median_ms(|| drop(std::hint::black_box(lowered::backward_weight(&g, &x, &x))))
                    / median_ms(|| drop(std::hint::black_box(winograd::backward_weight(&g, &x, &x)))),
            ];
            cells.push(format!("{:.2} / {:.2} / {:.2}", r[0], r[1], r[2]));
        }
        println!("| {size} | {} |", cells.join(" | "));
    }
}
