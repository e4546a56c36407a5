//! Emulator parity of `kernels/pointwise.cu`: every kernel, launched as the planners of
//! `lrc::device::cuda::pointwise` plan it on addresses of an emulated memory, against the CPU twin
//! of `lrc::ops::pointwise` run in f64 on the same f32 inputs. Lengths around the float4 width,
//! the warp and the block (1, 3, 4, 5, 31, 33, 255, 257, ...), lengths spanning several blocks,
//! a small block cap so that the grid-stride loops turn more than once, and buffers shifted off
//! the 16-byte boundary so that the planners fall back to one element at a time. Every output
//! starts as NaN (EmuMemory::alloc), so an element a kernel fails to write fails the check.
//!
//! Tolerances (u = 2^-24, the unit roundoff of f32):
//! - add, sub, mul: one correctly rounded f32 operation, so |got - want| <= u |want| exactly
//!   (atol 0; the worst element sits just below 1 x tolerance, as round-to-nearest allows), and
//!   bit-identical to the CPU twin on f32 tensors; anything else is a wrong element.
//! - scale, add_scalar, broadcast_scalar: computed in f64 and rounded once to f32, so also
//!   within u |want| of the f64 twin (plus 2^-52 for the f64 step), and bit-identical to the CPU
//!   twin run on f32 tensors, which computes the same way; both are checked.
//! - sum: a fixed tree whose deepest path adds k terms, k = (values per thread) plus 2 (float4)
//!   plus 8 (block) plus (partials per thread) plus 8 (second block), so |error| <= k u sum|x|
//!   (the classic bound of recursive summation, to first order); atol is that bound, rtol 0.
//!   With inputs in [0.5, 1.5) one missing or doubled element moves the sum by at least 0.5,
//!   far beyond it.
//! - bf16_from_f32: bit-exact against `pointwise::pack_bf16` (round to nearest even with
//!   `half::bf16`, NaN to the canonical 0x7fff as `cvt.rn.bf16x2.f32`), the padding half of an
//!   odd length's last word included.

use lrc::Tensor;
use lrc::device::cuda::KernelCall;
use lrc::device::cuda::pointwise::{
    BinaryOp, MAX_BLOCKS, SUM_MAX_BLOCKS, THREADS, UnaryOp, bf16_from_f32_calls, bf16_words, binary_calls,
    broadcast_calls, pack_bf16, sum_calls, sum_scratch_len, unary_calls,
};
use lrc::device::emu::{self, EmuMemory};
use lrc::ops::pointwise as twin;
use lrc::rng::Rng;
use lrc::testing::{Tolerance, assert_close, bf16_probe_values, uniform, widen, worst};

const U: f64 = 1.0 / 16_777_216.0;

/// Around the float4 width, the warp and the block, and several blocks' worth.
const LENGTHS: [usize; 12] = [1, 3, 4, 5, 31, 33, 255, 257, 1024, 1029, 2051, 4100];

/// Block caps: the planners' default, and 2 so that every grid-stride loop turns.
const CAPS: [usize; 2] = [MAX_BLOCKS, 2];

/// Shifts (in f32 values) of the operands: 16-byte aligned, and three ways off the boundary.
const SHIFTS: [[u64; 3]; 4] = [[0, 0, 0], [1, 0, 0], [0, 0, 3], [2, 2, 2]];

fn cpu(v: &[f32]) -> Tensor {
    Tensor::from_vec(vec![v.len()], widen(v)).unwrap()
}

fn cpu_f32(v: &[f32]) -> Tensor {
    Tensor::from_vec(vec![v.len()], v.to_vec()).unwrap()
}

/// A buffer of `len` values starting `shift` values past a 256-byte boundary.
fn upload_at(mem: &mut EmuMemory, data: &[f32], shift: u64) -> u64 {
    let base = mem.alloc(data.len() + 4);
    let addr = base + 4 * shift;
    mem.write(addr, data);
    addr
}

fn alloc_at(mem: &mut EmuMemory, len: usize, shift: u64) -> u64 {
    mem.alloc(len + 4) + 4 * shift
}

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

/// Bit-identical to the CPU twin run on f32 tensors.
fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}: element {i} is {} where the CPU twin on f32 gives {}",
            got[i], want[i]
        );
    }
}

fn run(mem: &mut EmuMemory, calls: &[KernelCall]) {
    mem.run(calls).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn planners_vectorise_only_aligned_buffers_and_cap_the_grid() {
    let calls = binary_calls(BinaryOp::Add, 4096, 0x1000, 0x2000, 0x3000, MAX_BLOCKS).unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].grid, (4, 1, 1), "4096 values as float4s: 1024 threads");
    let calls = binary_calls(BinaryOp::Add, 4096, 0x1004, 0x2000, 0x3000, MAX_BLOCKS).unwrap();
    assert_eq!(calls[0].grid, (16, 1, 1), "a misaligned operand: one value per thread");
    let calls = unary_calls(UnaryOp::Scale, 1 << 30, 0x1000, 0x2000, 2.0, MAX_BLOCKS).unwrap();
    assert_eq!(calls[0].grid, (MAX_BLOCKS, 1, 1));
    assert!(binary_calls(BinaryOp::Mul, 0, 0, 0, 0, MAX_BLOCKS).unwrap().is_empty());
    assert!(broadcast_calls(0, 0x1000, 0, 1.0, MAX_BLOCKS).unwrap().is_empty());
    assert!(
        binary_calls(BinaryOp::Sub, 1 << 31, 0, 0, 0, MAX_BLOCKS).is_err(),
        "i32 lengths"
    );
    // The sum: one pass when a block suffices (also for nothing to add), else two.
    assert_eq!(sum_calls(0, 0x1000, 0, 0x2000, SUM_MAX_BLOCKS).unwrap().len(), 1);
    assert_eq!(sum_calls(1024, 0x1000, 0, 0x2000, SUM_MAX_BLOCKS).unwrap().len(), 1);
    let two = sum_calls(1 << 24, 0x1000, 0x4000, 0x2000, SUM_MAX_BLOCKS).unwrap();
    assert_eq!(two.len(), 2);
    assert_eq!(two[0].grid, (SUM_MAX_BLOCKS, 1, 1));
    assert_eq!(two[1].grid, (1, 1, 1));
    assert!(sum_scratch_len(1 << 24, SUM_MAX_BLOCKS) >= SUM_MAX_BLOCKS);
    assert!(
        sum_calls(1 << 24, 0x1000, 0, 0x2000, SUM_MAX_BLOCKS).is_err(),
        "partials need scratch"
    );
}

#[test]
fn add_sub_mul_match_the_cpu_twin() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(1);
    let mut mem = EmuMemory::new();
    let mut calls = Vec::new();
    let mut cases = Vec::new();
    for op in BinaryOp::ALL {
        for &len in &LENGTHS {
            for (k, shift) in SHIFTS.iter().enumerate() {
                let cap = CAPS[(len + k) % 2];
                let a = uniform(&mut rng, len, -2.0, 2.0);
                let b = uniform(&mut rng, len, -2.0, 2.0);
                let (pa, pb) = (upload_at(&mut mem, &a, shift[0]), upload_at(&mut mem, &b, shift[1]));
                let out = alloc_at(&mut mem, len, shift[2]);
                calls.extend(binary_calls(op, len, pa, pb, out, cap).unwrap());
                cases.push((op, len, *shift, cap, a, b, out));
            }
        }
    }
    run(&mut mem, &calls);
    let mut report = Report::default();
    let exact = Tolerance { atol: 0.0, rtol: U };
    for (op, len, shift, cap, a, b, out) in cases {
        let got: Vec<f32> = mem.read(out, len);
        let f = match op {
            BinaryOp::Add => twin::add,
            BinaryOp::Sub => twin::sub,
            BinaryOp::Mul => twin::mul,
        };
        let what = format!("{op:?} len {len} shift {shift:?} cap {cap}");
        let want = f(&cpu(&a), &cpu(&b)).unwrap().to_f64_vec().unwrap();
        report.check(&what, &got, &want, exact);
        let want32 = f(&cpu_f32(&a), &cpu_f32(&b)).unwrap().to_f32_vec().unwrap();
        assert_bits(&what, &got, &want32);
    }
    report.print("add_sub_mul_match_the_cpu_twin");
}

#[test]
fn in_place_accumulation_adds_into_the_first_operand() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(2);
    let mut mem = EmuMemory::new();
    let mut calls = Vec::new();
    let mut cases = Vec::new();
    for &len in &LENGTHS {
        for shift in [0, 1] {
            let acc = uniform(&mut rng, len, -1.0, 1.0);
            let g = uniform(&mut rng, len, -1.0, 1.0);
            let pacc = upload_at(&mut mem, &acc, shift);
            let pg = upload_at(&mut mem, &g, 0);
            calls.extend(binary_calls(BinaryOp::Add, len, pacc, pg, pacc, CAPS[len % 2]).unwrap());
            cases.push((len, shift, acc, g, pacc));
        }
    }
    run(&mut mem, &calls);
    let mut report = Report::default();
    for (len, shift, acc, g, pacc) in cases {
        let got: Vec<f32> = mem.read(pacc, len);
        let what = format!("acc += g, len {len} shift {shift}");
        let want = twin::add(&cpu(&acc), &cpu(&g)).unwrap().to_f64_vec().unwrap();
        report.check(&what, &got, &want, Tolerance { atol: 0.0, rtol: U });
        assert_bits(
            &what,
            &got,
            &twin::add(&cpu_f32(&acc), &cpu_f32(&g)).unwrap().to_f32_vec().unwrap(),
        );
    }
    report.print("in_place_accumulation_adds_into_the_first_operand");
}

#[test]
fn scale_and_add_scalar_match_the_cpu_twin_bit_for_bit() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(3);
    let mut mem = EmuMemory::new();
    let mut calls = Vec::new();
    let mut cases = Vec::new();
    for op in [UnaryOp::Scale, UnaryOp::AddScalar] {
        for &len in &LENGTHS {
            for (k, shift) in SHIFTS.iter().enumerate() {
                // Constants that are not f32 values, so that the f64 arithmetic matters.
                let alpha = [-1.0 / 3.0, 0.1, 1e-3 / 7.0, 2.5e4 / 3.0][k];
                let x = uniform(&mut rng, len, -3.0, 3.0);
                let px = upload_at(&mut mem, &x, shift[0]);
                let out = alloc_at(&mut mem, len, shift[2]);
                calls.extend(unary_calls(op, len, px, out, alpha, CAPS[(len + k) % 2]).unwrap());
                cases.push((op, len, shift, alpha, x, out));
            }
        }
    }
    run(&mut mem, &calls);
    let mut report = Report::default();
    for (op, len, shift, alpha, x, out) in cases {
        let got: Vec<f32> = mem.read(out, len);
        let (want64, want32) = match op {
            UnaryOp::Scale => (twin::scale(&cpu(&x), alpha), twin::scale(&cpu_f32(&x), alpha)),
            UnaryOp::AddScalar => (twin::add_scalar(&cpu(&x), alpha), twin::add_scalar(&cpu_f32(&x), alpha)),
        };
        let what = format!("{op:?} {alpha} len {len} shift {shift:?}");
        let tol = Tolerance {
            atol: 0.0,
            rtol: U + 2f64.powi(-52),
        };
        report.check(&what, &got, &want64.unwrap().to_f64_vec().unwrap(), tol);
        let want32 = want32.unwrap().to_f32_vec().unwrap();
        assert_bits(&what, &got, &want32);
    }
    report.print("scale_and_add_scalar_match_the_cpu_twin_bit_for_bit");
}

#[test]
fn broadcast_scalar_reads_the_scalar_on_the_device() {
    if !emu::available() {
        return;
    }
    let mut mem = EmuMemory::new();
    let mut calls = Vec::new();
    let mut cases = Vec::new();
    for (k, &len) in LENGTHS.iter().enumerate() {
        let value = [0.7f32, -1.25, 3.0e-3][k % 3];
        let factor = [1.0, 1.0 / 3.0, -1.0 / 4099.0][(k / 3) % 3];
        let scalar = mem.upload(&[value]);
        let out = alloc_at(&mut mem, len, [0, 1, 2, 3][k % 4]);
        calls.extend(broadcast_calls(len, scalar, out, factor, CAPS[k % 2]).unwrap());
        cases.push((len, value, factor, out));
    }
    run(&mut mem, &calls);
    let mut report = Report::default();
    for (len, value, factor, out) in cases {
        let got: Vec<f32> = mem.read(out, len);
        let want = twin::broadcast_scalar(&cpu(&[value]), &[len], factor)
            .unwrap()
            .to_f64_vec()
            .unwrap();
        let want32 = twin::broadcast_scalar(&cpu_f32(&[value]), &[len], factor)
            .unwrap()
            .to_f32_vec()
            .unwrap();
        let what = format!("broadcast {value} * {factor} to {len}");
        report.check(
            &what,
            &got,
            &want,
            Tolerance {
                atol: 0.0,
                rtol: U + 2f64.powi(-52),
            },
        );
        assert_bits(&what, &got, &want32);
    }
    report.print("broadcast_scalar_reads_the_scalar_on_the_device");
}

/// The deepest chain of additions of the planned sum (see the file's comment).
fn sum_depth(calls: &[KernelCall], len: usize) -> usize {
    let first_threads = calls[0].grid.0 * THREADS;
    let partials = if calls.len() == 2 { calls[0].grid.0 } else { 0 };
    len.div_ceil(first_threads) + 2 + 8 + partials.div_ceil(THREADS) + 8
}

#[test]
fn sum_is_within_its_rounding_bound() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(4);
    let mut mem = EmuMemory::new();
    let mut calls = Vec::new();
    let mut cases = Vec::new();
    // (length, cap, shift of x, shift of the partials): one block, several, a capped first pass
    // whose loops turn, a misaligned input, misaligned partials, and a second pass whose one
    // block loops over more partials than it has threads.
    let plan = [
        (1, SUM_MAX_BLOCKS, 0, 0),
        (5, SUM_MAX_BLOCKS, 0, 0),
        (1023, SUM_MAX_BLOCKS, 0, 0),
        (1024, SUM_MAX_BLOCKS, 0, 0),
        (1029, SUM_MAX_BLOCKS, 0, 0),
        (4100, SUM_MAX_BLOCKS, 0, 0),
        (4100, 3, 0, 1),
        (3001, SUM_MAX_BLOCKS, 1, 0),
        (3001, SUM_MAX_BLOCKS, 3, 2),
        (300 * THREADS + 7, SUM_MAX_BLOCKS, 1, 0),
    ];
    for (k, &(len, cap, shift_x, shift_partials)) in plan.iter().enumerate() {
        let (lo, hi) = if k % 2 == 0 { (0.5, 1.5) } else { (-1.0, 1.0) };
        let x = uniform(&mut rng, len, lo, hi);
        let px = upload_at(&mut mem, &x, shift_x);
        let scratch = alloc_at(&mut mem, sum_scratch_len(len, cap), shift_partials);
        let out = mem.alloc(1);
        let planned = sum_calls(len, px, scratch, out, cap).unwrap();
        let depth = sum_depth(&planned, len);
        calls.extend(planned);
        cases.push((len, cap, shift_x, shift_partials, x, out, depth));
    }
    run(&mut mem, &calls);
    let mut report = Report::default();
    for (len, cap, shift_x, shift_partials, x, out, depth) in cases {
        let got: Vec<f32> = mem.read(out, 1);
        let want = twin::sum_all(&cpu(&x)).unwrap().to_f64_vec().unwrap();
        let abs_sum: f64 = x.iter().map(|v| v.abs() as f64).sum();
        report.check(
            &format!("sum of {len} (cap {cap}, shifts {shift_x}/{shift_partials})"),
            &got,
            &want,
            Tolerance {
                atol: depth as f64 * U * abs_sum,
                rtol: 0.0,
            },
        );
    }
    report.print("sum_is_within_its_rounding_bound");
}

#[test]
fn bf16_from_f32_rounds_as_the_cpu_bit_for_bit() {
    if !emu::available() {
        return;
    }
    let mut rng = Rng::new(41);
    for len in [1, 2, 3, 64, 511, 513, 1029, 4101] {
        for cap in CAPS {
            let values = bf16_probe_values(&mut rng, len);
            let mut mem = EmuMemory::new();
            let x = mem.upload(&values);
            let out = mem.alloc(bf16_words(len));
            run(&mut mem, &bf16_from_f32_calls(len, x, out, cap).unwrap());
            let got: Vec<u32> = mem.read(out, bf16_words(len));
            let want = pack_bf16(&values);
            if let Some(w) = (0..want.len()).find(|&w| got[w] != want[w]) {
                let pair: Vec<u32> = values[2 * w..(2 * w + 2).min(len)]
                    .iter()
                    .map(|x| x.to_bits())
                    .collect();
                panic!(
                    "len {len}, cap {cap}: word {w} is {:#010x}, want {:#010x} (inputs {pair:x?})",
                    got[w], want[w]
                );
            }
        }
    }
    println!("bf16_from_f32: bit-exact on the BF16 probe values (edge cases, then random) at every length and cap");
}
