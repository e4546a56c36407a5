//! CPU Felzenszwalb, region clean-up, elastic deformation, intensity jitter and region sampling
//! on synthetic abdomen-like slices, and the host's part of the fused local loss (its sample table, built per
//! call from a batch's region samples). Run with `cargo bench --bench superpixel`; results in
//! docs/PERFORMANCE.md.
//!
//! Besides wall time, the single-slice Felzenszwalb is also measured in CPU time of the
//! benchmarking thread (group `felzenszwalb_cpu`), which is robust on a machine shared with
//! other jobs: preemption does not count, cache interference still does.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lrc::augment::elastic::{ElasticParams, random_field, warp_bilinear, warp_nearest};
use lrc::augment::intensity::{IntensityParams, jitter};
use lrc::cli::bench::lrc_loss::{LrcLossCase, grid_samples};
use lrc::device::cuda::local_contrast::SampleTable;
use lrc::rng::Rng;
use lrc::superpixel::phantom::ct_phantom_slice;
use lrc::superpixel::sampling::sample_regions;
use lrc::superpixel::{SuperpixelConfig, felzenszwalb, felzenszwalb_batch, regions_for_slice, regions_for_stack};

fn slices(n: usize, size: usize) -> Vec<f32> {
    let mut rng = Rng::new(2026);
    (0..n)
        .flat_map(|_| ct_phantom_slice(size, size, 15.0, &mut rng))
        .collect()
}

fn bench_felzenszwalb(c: &mut Criterion) {
    let cfg = SuperpixelConfig::default();
    let p = cfg.felzenszwalb;
    let mut group = c.benchmark_group("felzenszwalb");
    for size in [256usize, 512] {
        let img: Vec<f64> = slices(1, size).iter().map(|&v| v as f64).collect();
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("slice_{size}"), |b| {
            b.iter(|| felzenszwalb(black_box(&img), size, size, p.scale, p.sigma, p.min_size))
        });
    }
    let batch: Vec<f64> = slices(32, 256).iter().map(|&v| v as f64).collect();
    group.throughput(Throughput::Elements(32));
    group.bench_function("batch_32x256", |b| {
        b.iter(|| felzenszwalb_batch(black_box(&batch), 256, 256, &p))
    });
    group.finish();

    let mut group = c.benchmark_group("regions");
    let one = slices(1, 256);
    group.throughput(Throughput::Elements(1));
    group.bench_function("slice_256", |b| {
        b.iter(|| regions_for_slice(black_box(&one), 256, 256, &cfg))
    });
    let stack = slices(32, 256);
    group.throughput(Throughput::Elements(32));
    group.bench_function("stack_32x256", |b| {
        b.iter(|| regions_for_stack(black_box(&stack), 256, 256, &cfg))
    });
    group.finish();
}

/// CPU time of the calling thread, from /proc/thread-self/schedstat (Linux; nanoseconds on CPU).
/// Elsewhere it falls back to wall time.
struct ThreadCpuTime {
    wall: WallTime,
}

/// Nanoseconds the calling thread has run, or None where the kernel does not say.
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

impl Measurement for ThreadCpuTime {
    type Intermediate = (Option<u64>, Instant);
    type Value = Duration;

    fn start(&self) -> Self::Intermediate {
        (thread_cpu_ns(), Instant::now())
    }
    fn end(&self, (cpu, wall): Self::Intermediate) -> Self::Value {
        match (cpu, thread_cpu_ns()) {
            (Some(a), Some(b)) => Duration::from_nanos(b - a),
            _ => wall.elapsed(),
        }
    }
    fn add(&self, v1: &Self::Value, v2: &Self::Value) -> Self::Value {
        *v1 + *v2
    }
    fn zero(&self) -> Self::Value {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Self::Value) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        self.wall.formatter()
    }
}

fn bench_felzenszwalb_cpu_time(c: &mut Criterion<ThreadCpuTime>) {
    let p = SuperpixelConfig::default().felzenszwalb;
    let mut group = c.benchmark_group("felzenszwalb_cpu");
    for size in [256usize, 512] {
        let img: Vec<f64> = slices(1, size).iter().map(|&v| v as f64).collect();
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("slice_{size}"), |b| {
            b.iter(|| felzenszwalb(black_box(&img), size, size, p.scale, p.sigma, p.min_size))
        });
    }
    group.finish();
}

fn bench_augment(c: &mut Criterion) {
    let img = slices(1, 256);
    let regions = regions_for_slice(&img, 256, 256, &SuperpixelConfig::default());
    let params = ElasticParams::default();
    let mut group = c.benchmark_group("elastic_256");
    let mut rng = Rng::new(1);
    group.bench_function("random_field", |b| b.iter(|| random_field(256, 256, &params, &mut rng)));
    let field = random_field(256, 256, &params, &mut Rng::new(2));
    group.bench_function("warp_bilinear", |b| {
        b.iter(|| warp_bilinear(black_box(&img), 256, 256, &field))
    });
    group.bench_function("warp_nearest", |b| {
        b.iter(|| warp_nearest(black_box(&regions), 256, 256, &field))
    });
    group.finish();

    // The intensity jitter of MoCo's and the joint stage's two views: contrast, brightness,
    // gamma (a power per pixel) and Gaussian noise (Box-Muller per pair of pixels).
    let intensity = IntensityParams::default();
    let mut rng = Rng::new(4);
    c.bench_function("jitter_256", |b| {
        b.iter(|| jitter(black_box(&img), &intensity, &mut rng))
    });

    let warped = warp_nearest(&regions, 256, 256, &field);
    let mut rng = Rng::new(3);
    c.bench_function("sample_regions_256_n64", |b| {
        b.iter(|| sample_regions(black_box(&regions), &warped, 64, Some(128), &mut rng))
    });
}

/// The table the fused local loss uploads per call (offsets, blocks, both views' pixel indices),
/// for the batches of `lrc bench lrc-loss` (16 images of 256 x 256, N = 32): the host work
/// inside that benchmark's op timings.
fn bench_sample_table(c: &mut Criterion) {
    let mut group = c.benchmark_group("lrc_loss_sample_table");
    for regions in [64usize, 256] {
        let case = LrcLossCase {
            batch: 16,
            d: 64,
            regions,
            samples: 32,
            size: 256,
            pixels: "raw",
        };
        let samples = grid_samples(&case, &mut Rng::new(4));
        group.bench_function(format!("b16_k{regions}_n32"), |b| {
            b.iter(|| SampleTable::new(black_box(&samples), 256 * 256).map(|t| t.words().len()))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_felzenszwalb, bench_augment, bench_sample_table);
criterion_group! {
    name = cpu_time;
    config = Criterion::default().with_measurement(ThreadCpuTime { wall: WallTime });
    targets = bench_felzenszwalb_cpu_time
}
criterion_main!(benches, cpu_time);
