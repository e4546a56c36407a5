//! Emulator parity of `kernels/pool.cu` (2x2 max pooling, global average pooling, both passes)
//! and `kernels/concat.cu` (channel concatenation and its split): every kernel, launched as the
//! planners of `lrc::device::cuda::{pool, concat}` plan it on addresses of an emulated memory,
//! against the CPU twins of `lrc::ops::{pool, concat}` run in f64 on the same f32 inputs. Odd
//! heights and widths (the floor drops the last row and column), windows full of ties and of NaN,
//! plane counts around the 8 planes a block averages, planes shorter than a warp, channel counts
//! that differ between the two parts, rows that are or are not multiples of 4, buffers shifted off
//! the 16-byte boundary, and a block cap of 2 so that the grid-stride loops turn. Every output
//! starts as NaN (EmuMemory::alloc), so an element a kernel fails to write fails the check.
//!
//! Tolerances (u = 2^-24):
//! - max pool (values, argmax, input gradient), concat and split move values without arithmetic
//!   (the gradient is 0 + dy, as in the twin): they must be exact, argmax index for index.
//! - global average pool: a sum of L values along a tree of depth ceil(L / 32) + 5, then one
//!   rounded division, so |error| <= (ceil(L / 32) + 5) u sum|x| / L + u |mean|: atol the first
//!   term, rtol u.
//! - its backward: dy times the reciprocal rounded to f32 (as the twin rounds it), one more
//!   rounding: rtol 2u against f64, and bit-identical to the CPU twin on f32 tensors.

use lrc::Tensor;
use lrc::device::cuda::KernelCall;
use lrc::device::cuda::concat::{concat_calls, split_calls};
use lrc::device::cuda::pool::{
    MAX_BLOCKS, max_pool_backward_calls, max_pool_calls, mean_scale, plane_broadcast_calls, plane_mean_calls,
};
use lrc::device::emu::{self, EmuMemory};
use lrc::ops::{concat as concat_twin, pool as pool_twin};
use lrc::rng::Rng;
use lrc::testing::{Tolerance, assert_close, uniform, widen, worst};

const U: f64 = 1.0 / 16_777_216.0;

/// The worst ratio to tolerance of the comparisons of one test, printed at its end.
#[derive(Default)]
struct Report(f64);

impl Report {
    fn check(&mut self, what: &str, got: &[f32], want: &[f64], tol: Tolerance) {
        assert_close(what, got, want, tol);
        self.0 = self.0.max(worst(got, want, tol).ratio);
    }

    fn print(&self, test: &str) {
        println!("{test}: worst element at {:.3} x tolerance", self.0);
    }
}

const EXACT: Tolerance = Tolerance { atol: 0.0, rtol: 0.0 };

fn cpu(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_vec(shape.to_vec(), widen(v)).unwrap()
}

fn run(mem: &mut EmuMemory, calls: &[KernelCall]) {
    mem.run(calls).unwrap_or_else(|e| panic!("{e}"));
}

/// A buffer holding `data` starting `shift` values past a 256-byte boundary.
fn upload_at(mem: &mut EmuMemory, data: &[f32], shift: u64) -> u64 {
    let addr = mem.alloc(data.len() + 4) + 4 * shift;
    mem.write(addr, data);
    addr
}

fn alloc_at(mem: &mut EmuMemory, len: usize, shift: u64) -> u64 {
    mem.alloc(len + 4) + 4 * shift
}

/// Values drawn from {0, 1, 2}: most 2x2 windows hold ties.
fn ties(rng: &mut Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.below(3) as f32).collect()
}

#[test]
fn planners_reject_what_the_kernels_cannot_index() {
    assert!(
        max_pool_calls(1, 1, 4, 0, 0, 0, MAX_BLOCKS).is_err(),
        "a window needs 2 rows"
    );
    assert!(
        max_pool_calls(1, 4, 1, 0, 0, 0, MAX_BLOCKS).is_err(),
        "a window needs 2 columns"
    );
    assert!(max_pool_calls(1 << 20, 1 << 6, 1 << 6, 0, 0, 0, MAX_BLOCKS).is_err());
    assert!(max_pool_calls(0, 4, 4, 0, 0, 0, MAX_BLOCKS).unwrap().is_empty());
    assert!(concat_calls(1 << 16, 1 << 15, 1, 0, 0, 0, MAX_BLOCKS).is_err());
    assert!(plane_broadcast_calls(1 << 16, 1 << 16, 0, 0, 1.0, MAX_BLOCKS).is_err());
    // float4 copies only when both rows are multiples of 4 and all addresses aligned.
    let vec4 = concat_calls(2, 8, 4, 0x100, 0x200, 0x300, MAX_BLOCKS).unwrap();
    let scalar = concat_calls(2, 8, 6, 0x100, 0x200, 0x300, MAX_BLOCKS).unwrap();
    assert_eq!(vec4[0].grid, (1, 1, 1));
    assert_eq!(scalar[0].param_bytes()[36..40], [0, 0, 0, 0], "vec4 off");
    assert_eq!(vec4[0].param_bytes()[36..40], [1, 0, 0, 0], "vec4 on");
}

/// (n, c, h, w): odd and even sizes, the smallest window, one plane, several blocks' worth (of
/// elements, and of windows: 2 x 3 x 16 x 12 has 288; the even sizes take the backward kernel
/// by window).
const POOL_SHAPES: [[usize; 4]; 8] = [
    [1, 1, 2, 2],
    [1, 1, 3, 3],
    [2, 3, 5, 7],
    [1, 2, 9, 4],
    [3, 1, 6, 6],
    [2, 2, 8, 11],
    [2, 3, 23, 17],
    [2, 3, 16, 12],
];

#[test]
fn max_pool_backward_goes_by_window_where_sizes_are_even_and_dx_is_aligned() {
    let kernel = |h, w, dx| max_pool_backward_calls(3, h, w, 0x100, 0x200, dx, MAX_BLOCKS).unwrap()[0].kernel;
    assert_eq!(kernel(6, 8, 0x300), "max_pool2x2_backward_window_f32");
    assert_eq!(kernel(6, 8, 0x308), "max_pool2x2_backward_window_f32");
    assert_eq!(kernel(6, 8, 0x304), "max_pool2x2_backward_f32", "dx off 8 bytes");
    assert_eq!(kernel(7, 8, 0x300), "max_pool2x2_backward_f32", "odd height");
    assert_eq!(kernel(6, 9, 0x300), "max_pool2x2_backward_f32", "odd width");
    // One thread per window: 3 planes of 3 x 4 windows in one block, 3 x 16 x 16 in two.
    let grid = |h, w| max_pool_backward_calls(3, h, w, 0x100, 0x200, 0x300, MAX_BLOCKS).unwrap()[0].grid;
    assert_eq!(grid(6, 8), (1, 1, 1));
    assert_eq!(grid(32, 32), (3, 1, 1));
    if !emu::available() {
        return;
    }
    // dx one value off the 8-byte boundary: the element kernel, the same gradient.
    let mut rng = Rng::new(22);
    let shape = [1, 3, 6, 8];
    let x = ties(&mut rng, 144);
    let dy = uniform(&mut rng, 36, -1.0, 1.0);
    let mut mem = EmuMemory::new();
    let (px, pdy, py, parg) = (mem.upload(&x), mem.upload(&dy), mem.alloc(36), mem.alloc(36));
    let pdx = alloc_at(&mut mem, 144, 1);
    let mut calls = max_pool_calls(3, 6, 8, px, py, parg, MAX_BLOCKS).unwrap();
    calls.extend(max_pool_backward_calls(3, 6, 8, pdy, parg, pdx, MAX_BLOCKS).unwrap());
    assert_eq!(calls[1].kernel, "max_pool2x2_backward_f32");
    run(&mut mem, &calls);
    let (_, want_arg) = pool_twin::max_pool2x2(&cpu(&shape, &x)).unwrap();
    let want_dx = pool_twin::max_pool2x2_backward(&shape, &cpu(&[1, 3, 3, 4], &dy), &want_arg).unwrap();
    let mut report = Report::default();
    report.check(
        "max_pool backward, dx shifted",
        &mem.read(pdx, 144),
        &want_dx.to_f64_vec().unwrap(),
        EXACT,
    );
}

#[test]
fn max_pool_forward_and_backward_match_the_cpu_twin() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(21);
    let mut mem = EmuMemory::new();
    let mut calls = Vec::new();
    let mut cases = Vec::new();
    for (k, &[n, c, h, w]) in POOL_SHAPES.iter().enumerate() {
        for with_ties in [false, true] {
            let cap = [MAX_BLOCKS, 2][(k + with_ties as usize) % 2];
            let len = n * c * h * w;
            let outputs = n * c * (h / 2) * (w / 2);
            let x = if with_ties {
                ties(&mut rng, len)
            } else {
                uniform(&mut rng, len, -1.0, 1.0)
            };
            let dy = uniform(&mut rng, outputs, -1.0, 1.0);
            let (px, pdy) = (mem.upload(&x), mem.upload(&dy));
            let (py, parg, pdx) = (mem.alloc(outputs), mem.alloc(outputs), mem.alloc(len));
            calls.extend(max_pool_calls(n * c, h, w, px, py, parg, cap).unwrap());
            calls.extend(max_pool_backward_calls(n * c, h, w, pdy, parg, pdx, cap).unwrap());
            cases.push(([n, c, h, w], with_ties, cap, x, dy, py, parg, pdx));
        }
    }
    run(&mut mem, &calls);
    let mut report = Report::default();
    for (shape, with_ties, cap, x, dy, py, parg, pdx) in cases {
        let what = format!("max_pool {shape:?} ties {with_ties} cap {cap}");
        let [n, c, h, w] = shape;
        let outputs = n * c * (h / 2) * (w / 2);
        let (want_y, want_arg) = pool_twin::max_pool2x2(&cpu(&shape, &x)).unwrap();
        let got_arg: Vec<u32> = mem.read(parg, outputs);
        assert_eq!(got_arg, want_arg.to_vec().unwrap(), "{what}: argmax");
        report.check(&what, &mem.read(py, outputs), &want_y.to_f64_vec().unwrap(), EXACT);
        let dy_t = cpu(&[n, c, h / 2, w / 2], &dy);
        let want_dx = pool_twin::max_pool2x2_backward(&shape, &dy_t, &want_arg).unwrap();
        report.check(
            &format!("{what} backward"),
            &mem.read(pdx, n * c * h * w),
            &want_dx.to_f64_vec().unwrap(),
            EXACT,
        );
    }
    report.print("max_pool_forward_and_backward_match_the_cpu_twin");
}

#[test]
fn max_pool_propagates_nan_as_the_cpu_twin() {
    if !emu::available() {
        return;
    }
    // One plane of 4 x 6: windows with a NaN first, last, twice, and none.
    let nan = f32::NAN;
    #[rustfmt::skip]
    let x = vec![
        nan, 1.0,  2.0, 3.0,  1.0, 1.0,
        0.0, 5.0,  4.0, nan,  1.0, 1.0,
        nan, 1.0,  -1.0, 7.0,  2.0, 9.0,
        1.0, nan,  -2.0, 7.0,  9.0, 2.0,
    ];
    let shape = [1, 1, 4, 6];
    let mut mem = EmuMemory::new();
    let (px, py, parg) = (mem.upload(&x), mem.alloc(6), mem.alloc(6));
    run(&mut mem, &max_pool_calls(1, 4, 6, px, py, parg, MAX_BLOCKS).unwrap());
    let (want_y, want_arg) = pool_twin::max_pool2x2(&cpu(&shape, &x)).unwrap();
    let got_arg: Vec<u32> = mem.read(parg, 6);
    assert_eq!(got_arg, want_arg.to_vec().unwrap());
    assert_eq!(
        got_arg,
        vec![0, 9, 4, 19, 15, 17],
        "a NaN wins, the last NaN of a window wins, ties keep the first"
    );
    let got_y: Vec<f32> = mem.read(py, 6);
    for (g, w) in got_y.iter().zip(want_y.to_f64_vec().unwrap()) {
        assert!(g.is_nan() == w.is_nan() && (g.is_nan() || *g as f64 == w), "{got_y:?}");
    }
}

#[test]
fn global_avg_pool_forward_matches_the_cpu_twin() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(22);
    let mut mem = EmuMemory::new();
    let mut calls = Vec::new();
    let mut cases = Vec::new();
    // (planes, h, w): one value, planes shorter than a warp, plane counts around 8 per block.
    for &(planes, h, w) in &[
        (1, 1, 1),
        (3, 1, 5),
        (7, 3, 11),
        (8, 4, 8),
        (9, 10, 10),
        (17, 5, 13),
        (2, 40, 37),
    ] {
        let x = uniform(&mut rng, planes * h * w, -1.0, 1.0);
        let px = mem.upload(&x);
        let out = mem.alloc(planes);
        calls.extend(plane_mean_calls(planes, h * w, px, out).unwrap());
        cases.push((planes, h, w, x, out));
    }
    run(&mut mem, &calls);
    let mut report = Report::default();
    for (planes, h, w, x, out) in cases {
        let len = h * w;
        let want = pool_twin::global_avg_pool(&cpu(&[1, planes, h, w], &x)).unwrap();
        let max_abs_mean = x
            .chunks(len)
            .map(|p| p.iter().map(|v| v.abs() as f64).sum::<f64>() / len as f64)
            .fold(0.0, f64::max);
        let depth = len.div_ceil(32) + 5;
        report.check(
            &format!("global_avg_pool {planes} x {h} x {w}"),
            &mem.read(out, planes),
            &want.to_f64_vec().unwrap(),
            Tolerance {
                atol: depth as f64 * U * max_abs_mean,
                rtol: U,
            },
        );
    }
    report.print("global_avg_pool_forward_matches_the_cpu_twin");
}

#[test]
fn global_avg_pool_backward_matches_the_cpu_twin() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(23);
    let mut mem = EmuMemory::new();
    let mut calls = Vec::new();
    let mut cases = Vec::new();
    // (planes, h, w, shift of dx, cap): planes of 1, of a multiple of 4 (float4 stores unless dx
    // is shifted), of odd lengths, and enough values for several blocks.
    let plan = [
        (1, 1, 1, 0, MAX_BLOCKS),
        (3, 1, 5, 0, MAX_BLOCKS),
        (5, 4, 4, 0, MAX_BLOCKS),
        (5, 4, 4, 1, 2),
        (9, 6, 10, 0, 2),
        (7, 9, 11, 2, 2),
        (4, 20, 36, 0, MAX_BLOCKS),
    ];
    for &(planes, h, w, shift, cap) in &plan {
        let dy = uniform(&mut rng, planes, -1.0, 1.0);
        let pdy = mem.upload(&dy);
        let pdx = alloc_at(&mut mem, planes * h * w, shift);
        calls.extend(plane_broadcast_calls(planes, h * w, pdy, pdx, mean_scale(h * w), cap).unwrap());
        cases.push((planes, h, w, shift, cap, dy, pdx));
    }
    run(&mut mem, &calls);
    let mut report = Report::default();
    for (planes, h, w, shift, cap, dy, pdx) in cases {
        let what = format!("global_avg_pool backward {planes} x {h} x {w} shift {shift} cap {cap}");
        let shape = [1, planes, h, w];
        let got: Vec<f32> = mem.read(pdx, planes * h * w);
        let want = pool_twin::global_avg_pool_backward(&shape, &cpu(&[1, planes], &dy)).unwrap();
        report.check(
            &what,
            &got,
            &want.to_f64_vec().unwrap(),
            Tolerance {
                atol: 0.0,
                rtol: 2.0 * U,
            },
        );
        let dy32 = Tensor::from_vec(vec![1, planes], dy.clone()).unwrap();
        let want32 = pool_twin::global_avg_pool_backward(&shape, &dy32)
            .unwrap()
            .to_f32_vec()
            .unwrap();
        let same = got.iter().zip(&want32).all(|(g, w)| g.to_bits() == w.to_bits());
        assert!(same, "{what}: not bit-identical to the CPU twin on f32");
    }
    report.print("global_avg_pool_backward_matches_the_cpu_twin");
}

#[test]
fn concat_and_split_match_the_cpu_twin() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(24);
    let mut mem = EmuMemory::new();
    let mut calls = Vec::new();
    let mut cases = Vec::new();
    // (n, ca, cb, h, w, shift, cap): unequal channel counts, rows of 1 value, rows that are
    // multiples of 4 (float4 unless shifted), odd planes, and several blocks' worth.
    let plan = [
        (1, 1, 2, 1, 1, 0, MAX_BLOCKS),
        (2, 3, 5, 7, 3, 0, MAX_BLOCKS),
        (3, 4, 8, 4, 4, 0, MAX_BLOCKS),
        (3, 4, 8, 4, 4, 1, 2),
        (2, 1, 3, 2, 2, 0, 2),
        (2, 6, 2, 9, 11, 0, 2),
        (4, 5, 3, 8, 9, 3, MAX_BLOCKS),
    ];
    for &(n, ca, cb, h, w, shift, cap) in &plan {
        let inner = h * w;
        let a = uniform(&mut rng, n * ca * inner, -1.0, 1.0);
        let b = uniform(&mut rng, n * cb * inner, -1.0, 1.0);
        let g = uniform(&mut rng, n * (ca + cb) * inner, -1.0, 1.0);
        let (pa, pb, pg) = (mem.upload(&a), upload_at(&mut mem, &b, shift), mem.upload(&g));
        let whole = mem.alloc(g.len());
        let (ga, gb) = (alloc_at(&mut mem, a.len(), shift), mem.alloc(b.len()));
        calls.extend(concat_calls(n, ca * inner, cb * inner, pa, pb, whole, cap).unwrap());
        calls.extend(split_calls(n, ca * inner, cb * inner, pg, ga, gb, cap).unwrap());
        cases.push(([n, ca, cb, h, w], shift, cap, a, b, g, whole, ga, gb));
    }
    run(&mut mem, &calls);
    let mut report = Report::default();
    for ([n, ca, cb, h, w], shift, cap, a, b, g, whole, ga, gb) in cases {
        let what = format!("concat [{n}, {ca} + {cb}, {h}, {w}] shift {shift} cap {cap}");
        let want = concat_twin::forward(&cpu(&[n, ca, h, w], &a), &cpu(&[n, cb, h, w], &b)).unwrap();
        report.check(&what, &mem.read(whole, g.len()), &want.to_f64_vec().unwrap(), EXACT);
        let (want_a, want_b) = concat_twin::split(&cpu(&[n, ca + cb, h, w], &g), ca, cb).unwrap();
        report.check(
            &format!("{what} split a"),
            &mem.read(ga, a.len()),
            &want_a.to_f64_vec().unwrap(),
            EXACT,
        );
        report.check(
            &format!("{what} split b"),
            &mem.read(gb, b.len()),
            &want_b.to_f64_vec().unwrap(),
            EXACT,
        );
    }
    report.print("concat_and_split_match_the_cpu_twin");
}
