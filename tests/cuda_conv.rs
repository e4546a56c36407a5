//! Parity of every convolution kernel version with the CPU twin (ops::conv::cpu, run in f64 on
//! the same f32 inputs) on seeded random inputs and awkward shapes, with every output buffer
//! poisoned with NaN before the kernels run so that an element they fail to write fails the
//! check. The transposed convolution is checked against a direct 7-loop definition.
//!
//! Tolerances per element, the worst element reported: |got - want| <= rel * S, with S the sum
//! of |a| |b| over the element's products (+ |bias|), or of |dy| for a bias gradient, the
//! reference evaluated on the inputs' magnitudes; so an element whose products are small or
//! cancel has a small tolerance of its own. rel follows from the operand precision and `chain`,
//! the longest run of FP32 roundings a term passes through on its way into the element:
//! - FP32 (fp32-tiled): exact operands, rel = gamma(chain) = chain * 2^-24 / (1 - chain * 2^-24),
//!   the bound of `chain` FP32 roundings (with or without FMA: an FMA rounds once per term, and
//!   without FMA the first addition, 0 + product, is exact). The kernel sums an element's
//!   products in one accumulator, one FMA per k of its block's range (the 16-deep k tiles
//!   continue it, their zero padding adds exactly); a split backward-weight adds its `splits`
//!   partials in split_reduce (splits - 1 roundings); the bias adds one:
//!   `chain = L + (splits - 1) + 1` with L the split length (depth when unsplit), at most
//!   depth + 1 since (splits - 1) * L < depth. The plan is `conv::plan`'s on this GPU.
//! - TF32 (tf32-mma, tf32-wgmma) and BF16 (bf16-mma, bf16-wgmma): operands rounded to nearest, TF32 to 10-bit
//!   significands (ties to even, u = 2^-11), BF16 to 8-bit ones (ties to even, u = 2^-8); each
//!   operand is off by at most u of itself, each product by at most 2u + u^2 of itself, and each
//!   tensor-core addition by at most 2^-23 of the running magnitude (2^-24 rounding, 2^-23
//!   allowing for tensor cores that truncate): rel = 2u + u^2 + chain * 2^-23 * (1 + u)^2 with
//!   `chain = depth + ceil(depth / 32) + 1` (the k loop, at most one split partial per 32-deep
//!   k tile, the bias). Dominated by 2u, this bound is loose enough to let a single term
//!   dropped from a long sum pass, so `bf16_on_bf16_inputs_has_only_accumulation_error` runs the
//!   BF16 kernels again on inputs that are BF16 values already, where the products are exact
//!   and rel = chain * 2^-23.
//! - Bias gradients, FP32 sums of dy in every version (no products): rel = gamma(chain) with
//!   chain = ceil(values / lanes) + tree levels + (partials - 1). Backward-weight: each lane
//!   sums every 32nd k of its block's range, warp_sum adds the lanes (5 levels), split_reduce
//!   the splits; the transposed convolution's: each of plane_sum's 256 threads sums every 256th
//!   value of a plane, block_sum adds them (two warp_sums, 10 levels), split_reduce the images.
//!
//! Worst-case bounds (first order for the tensor cores): no correct kernel exceeds them whatever
//! order the hardware sums in. The same bounds are checked under emulation by
//! kernels/emu/conv_emu_test.cpp.
//!
//! The wgmma versions (v3) run on compute capability 9.0 alone: elsewhere the tests leave them
//! out with a note (and check that asking for them is an error, not a panic).
//!
//! These tests need a CUDA GPU: `cargo test --release -- --include-ignored`.

use std::sync::Arc;

use lrc::device::cuda::conv::{
    ConvLaunch, ConvPass, conv_transpose2d_backward_data, conv_transpose2d_backward_weight, conv_transpose2d_forward,
    conv2d_backward_data, conv2d_backward_weight, conv2d_forward, plan, transposed_plan,
};
use lrc::device::cuda::{ConvAlgo, ConvTransposeGeom, CudaDevice, CudaStorage};
use lrc::ops::conv::{ConvGeom, cpu};
use lrc::rng::Rng;

mod cuda_common;
use cuda_common::{TestDevice, exclusive_device};

fn device() -> TestDevice {
    exclusive_device(ConvAlgo::DEFAULT)
}

/// The versions this device runs (every one but the wgmma versions off compute capability 9.0),
/// with a note for each one left out, then the choices among them (`tf32-fastest`,
/// `bf16-fastest`: whichever version they time fastest must be right too).
fn algos(device: &CudaDevice) -> Vec<ConvAlgo> {
    let cc = device.compute_capability();
    ConvAlgo::ALL
        .into_iter()
        .chain(ConvAlgo::CHOICES)
        .filter(|algo| {
            let runs = algo.runs_on(cc);
            if !runs {
                println!(
                    "skipped {algo}: needs compute capability 9.0, this GPU is {}.{}",
                    cc.0, cc.1
                );
            }
            runs
        })
        .collect()
}

/// Uniform in [-1, 1): never all zeros, and max|value| is 1 to within rounding.
fn random(rng: &mut Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.range(-1.0, 1.0) as f32).collect()
}

fn upload(device: &Arc<CudaDevice>, data: &[f32]) -> CudaStorage {
    CudaStorage::from_host(device, data).expect("copy to the device")
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The magnitudes, widened: the CPU twin on them gives sum |a| |b| per element.
fn abs_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x.abs() as f64).collect()
}

/// The nearest BF16 value (round to nearest even), as cvt.rn.bf16x2.f32 rounds; finite inputs.
fn to_bf16(x: f32) -> f32 {
    let u = x.to_bits();
    f32::from_bits(u.wrapping_add(0x7fff + ((u >> 16) & 1)) & 0xffff_0000)
}

/// Value k of a rounding test: 1 + (k mod 64) 2^-12, scaled by 2^-3 .. 2^3, of alternating
/// sign, so that exact ties of TF32 (2^-11) and BF16 (2^-8) occur among them.
fn tied_value(k: usize) -> f32 {
    let v = (1.0 + (k % 64) as f32 * (-12f32).exp2()) * ((k % 7) as f32 - 3.0).exp2();
    if k % 2 == 1 { -v } else { v }
}

/// x rounded to TF32 (10-bit significand), to nearest even, as the kernels round their operands
/// (finite x only).
fn to_tf32(x: f32) -> f32 {
    let u = x.to_bits();
    f32::from_bits(u.wrapping_add(0xfff + ((u >> 13) & 1)) & !0x1fff)
}

fn bf16_values(v: &[f32]) -> Vec<f32> {
    v.iter().copied().map(to_bf16).collect()
}

/// The relative error bound of `chain` FP32 roundings: chain * 2^-24 / (1 - chain * 2^-24).
fn gamma(chain: usize) -> f64 {
    let nu = chain as f64 * (-24f64).exp2();
    nu / (1.0 - nu)
}

/// The bound of a result of `algo` relative to S (see the top of the file), its terms passing
/// through at most `chain` FP32 roundings; `rounded_inputs`: the operands were BF16 values already.
fn relative_bound(algo: ConvAlgo, chain: usize, rounded_inputs: bool) -> f64 {
    let u = match algo {
        ConvAlgo::Fp32Tiled => return gamma(chain),
        ConvAlgo::Tf32Mma
        | ConvAlgo::Tf32Wgmma
        | ConvAlgo::Tf32MmaTap
        | ConvAlgo::Tf32MmaWide
        | ConvAlgo::Tf32MmaHalo
        | ConvAlgo::Tf32Fastest => (-11f64).exp2(),
        ConvAlgo::Bf16Mma
        | ConvAlgo::Bf16Wgmma
        | ConvAlgo::Bf16MmaTap
        | ConvAlgo::Bf16MmaWide
        | ConvAlgo::Bf16MmaHalo
        | ConvAlgo::Bf16Fastest => (-8f64).exp2(),
    };
    let accumulation = chain as f64 * (-23f64).exp2();
    if rounded_inputs {
        accumulation
    } else {
        2.0 * u + u * u + accumulation * (1.0 + u) * (1.0 + u)
    }
}

/// How a pass's reduction is split: backward-weight's as `conv::plan` plans it on this GPU, one
/// split for the other passes (the tensor-core versions split forward and backward-data too
/// where few tiles would leave the GPU idle, at most one partial per 32-deep k tile, which
/// their chain below already counts; v1 never splits them).
#[derive(Clone, Copy, Debug)]
struct Split {
    len: usize,
    count: usize,
}

impl Split {
    const NONE: Split = Split { len: 0, count: 1 };

    fn of(launch: &ConvLaunch) -> Split {
        Split {
            len: launch.split_len,
            count: launch.splits,
        }
    }

    /// The k range one block sums for an element of `depth` products.
    fn run(&self, depth: usize) -> usize {
        if self.count > 1 { self.len.min(depth) } else { depth }
    }

    /// The longest chain of FP32 roundings behind an element of `depth` products computed by
    /// `algo` (see the top of the file).
    fn chain(&self, algo: ConvAlgo, depth: usize) -> usize {
        match algo {
            ConvAlgo::Fp32Tiled => self.run(depth) + (self.count - 1) + 1,
            // v3 sums each element in one accumulator chain (per split) too, as v2, and the
            // tap-major kernels the same products in another order.
            _ => depth + depth.div_ceil(32) + 1,
        }
    }

    /// The chain of the bias gradient summed beside a weight gradient of `depth` terms.
    fn bias_gradient_chain(&self, depth: usize) -> usize {
        sum_chain(self.run(depth), 32, 5, self.count)
    }
}

/// The chain of a sum of `values` values (no products) spread over `lanes` sequential partial
/// sums, combined by a tree `levels` deep, then `partials` such sums added in turn.
fn sum_chain(values: usize, lanes: usize, levels: usize, partials: usize) -> usize {
    values.div_ceil(lanes) + levels + (partials - 1)
}

/// The chain of a transposed convolution's bias gradient (`channel_sums`: plane_sum, then
/// split_reduce over the images).
fn channel_sum_chain(n: usize, plane: usize) -> usize {
    sum_chain(plane, 256, 10, n)
}

/// Fails with the worst element unless |got - want| <= relative * scale everywhere (exact where
/// the scale is zero; NaN always fails); prints the worst ratio.
fn assert_within(what: &str, got: &[f32], want: &[f64], scale: &[f64], relative: f64) {
    assert_eq!(
        (got.len(), scale.len()),
        (want.len(), want.len()),
        "{what}: lengths differ"
    );
    let (mut worst, mut at) = (0.0f64, 0);
    for (i, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        let err = (g as f64 - w).abs();
        let ratio = if err.is_nan() {
            f64::INFINITY
        } else {
            err / (relative * s).max(f64::MIN_POSITIVE)
        };
        if ratio > worst {
            (worst, at) = (ratio, i);
        }
    }
    assert!(
        worst <= 1.0,
        "{what}: worst element {at}: got {} want {} ({worst:.2} x the bound {relative:.3e} x {:.4e})",
        got[at],
        want[at],
        scale[at]
    );
    println!("ok {what}: worst {worst:.3} of the bound");
}

/// What a pass's result is compared with: the f64 reference on the inputs, the same on their
/// magnitudes (S per element), the products per element, and how the reduction was split.
struct Expected<'a> {
    want: &'a [f64],
    magnitude: &'a [f64],
    depth: usize,
    split: Split,
}

/// Compares the result of `algo` with its reference within that version's bound.
fn check(what: &str, algo: ConvAlgo, got: &[f32], e: &Expected) {
    let relative = relative_bound(algo, e.split.chain(algo, e.depth), false);
    assert_within(what, got, e.want, e.magnitude, relative);
}

/// Compares a bias gradient, an FP32 sum of dy whose roundings are `chain` deep, with its
/// reference; `magnitude` is the sum of |dy|.
fn check_bias_gradient(what: &str, got: &[f32], want: &[f64], magnitude: &[f64], chain: usize) {
    assert_within(what, got, want, magnitude, gamma(chain));
}

fn geom([n, c_in, h, w, c_out]: [usize; 5], k: (usize, usize), stride: usize, pad: usize) -> ConvGeom {
    ConvGeom {
        n,
        c_in,
        h,
        w,
        c_out,
        kh: k.0,
        kw: k.1,
        stride,
        pad,
    }
}

/// Odd sizes, batches of 1 and 3, channel counts off every tile size (wide and narrow tiles),
/// the U-Net's 3x3 and 1x1, stride 2, and a kernel size with no specialisation.
fn shapes() -> Vec<ConvGeom> {
    vec![
        geom([1, 1, 17, 23, 32], (3, 3), 1, 1),
        geom([3, 5, 13, 11, 37], (3, 3), 1, 1),
        geom([2, 33, 9, 15, 19], (3, 3), 1, 1),
        geom([1, 64, 16, 16, 64], (3, 3), 1, 1),
        geom([3, 70, 7, 5, 129], (3, 3), 1, 1),
        geom([3, 34, 12, 7, 14], (1, 1), 1, 0),
        geom([1, 96, 8, 9, 65], (1, 1), 1, 0),
        geom([2, 6, 15, 14, 10], (3, 3), 2, 1),
        geom([1, 4, 11, 10, 12], (5, 3), 1, 1),
        geom([3, 9, 10, 12, 8], (2, 2), 2, 0),
        // Whole 32-channel k tiles on both reductions and whole 32-column runs of backward-
        // weight (the tap-major kernels), odd sides and batch 3; then stride 2, where
        // backward-data's taps skip pixels.
        geom([3, 32, 7, 5, 96], (3, 3), 1, 1),
        geom([2, 64, 9, 8, 32], (3, 3), 2, 1),
        // Backward-data's B rows (20 input channels) off every tile: the tap-major kernel reads
        // them from the packed weights' zero padding.
        geom([2, 20, 6, 7, 32], (3, 3), 1, 1),
        // The wide tap-major tiles (128 columns): forward over 160 output channels, backward-data
        // over 136 input channels, both off the tile.
        geom([1, 32, 5, 6, 160], (3, 3), 1, 1),
        geom([2, 136, 5, 4, 32], (3, 3), 1, 1),
        // Backward-weight's halo tiles (tf32-mma-halo; 64 x 64 x 16 x 16 above runs the 64-
        // channel two-row one): rows of 32 pixels with 40 output channels (off the 64-row
        // block), rows of 64 with 20 (32-row blocks, two column blocks), two rows of 16 with 24.
        geom([3, 32, 5, 32, 40], (3, 3), 1, 1),
        geom([2, 64, 3, 64, 20], (3, 3), 1, 1),
        geom([2, 32, 6, 16, 24], (3, 3), 1, 1),
        // The segmentation head's 1x1 passes (the tap-major versions and after run both on the
        // FP32 cores: 16 sums a thread forward, 32 backward-data), 234 pixels a image.
        geom([2, 32, 9, 13, 14], (1, 1), 1, 0),
        // The halo forward tiles over more than 64 outputs: forward 80 (two blocks of 64 output
        // channels, the second of 16), rows of 16 over a height off the 8-row tile.
        geom([2, 16, 11, 16, 80], (3, 3), 1, 1),
    ]
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn conv2d_forward_matches_the_cpu_twin() {
    let device = device();
    let mut rng = Rng::new(11);
    for g in shapes() {
        let x = random(&mut rng, g.n * g.c_in * g.h * g.w);
        let w = random(&mut rng, g.c_out * g.c_in * g.kh * g.kw);
        let b = random(&mut rng, g.c_out);
        let want = cpu::forward(&g, &to_f64(&x), &to_f64(&w), Some(&to_f64(&b)));
        let magnitude = cpu::forward(&g, &abs_f64(&x), &abs_f64(&w), Some(&abs_f64(&b)));
        let expected = Expected {
            want: &want,
            magnitude: &magnitude,
            depth: g.c_in * g.kh * g.kw,
            split: Split::NONE,
        };
        let (xd, wd, bd) = (upload(&device, &x), upload(&device, &w), upload(&device, &b));
        for algo in algos(&device) {
            let y = conv2d_forward(&g, &xd, &wd, Some(&bd), algo)
                .unwrap()
                .to_host()
                .unwrap();
            check(&format!("forward {algo} {g:?}"), algo, &y, &expected);
        }
        // Without a bias.
        let want = cpu::forward(&g, &to_f64(&x), &to_f64(&w), None);
        let magnitude = cpu::forward(&g, &abs_f64(&x), &abs_f64(&w), None);
        let y = conv2d_forward(&g, &xd, &wd, None, ConvAlgo::DEFAULT)
            .unwrap()
            .to_host()
            .unwrap();
        let expected = Expected {
            want: &want,
            magnitude: &magnitude,
            ..expected
        };
        check(&format!("forward without bias {g:?}"), ConvAlgo::DEFAULT, &y, &expected);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn conv2d_backward_data_matches_the_cpu_twin() {
    let device = device();
    let mut rng = Rng::new(12);
    for g in shapes() {
        let dy = random(&mut rng, g.n * g.c_out * g.h_out() * g.w_out());
        let w = random(&mut rng, g.c_out * g.c_in * g.kh * g.kw);
        let want = cpu::backward_data(&g, &to_f64(&dy), &to_f64(&w));
        let magnitude = cpu::backward_data(&g, &abs_f64(&dy), &abs_f64(&w));
        let expected = Expected {
            want: &want,
            magnitude: &magnitude,
            depth: g.c_out * g.kh * g.kw,
            split: Split::NONE,
        };
        let (dyd, wd) = (upload(&device, &dy), upload(&device, &w));
        for algo in algos(&device) {
            let dx = conv2d_backward_data(&g, &dyd, &wd, algo).unwrap().to_host().unwrap();
            check(&format!("backward-data {algo} {g:?}"), algo, &dx, &expected);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn conv2d_backward_weight_matches_the_cpu_twin() {
    let device = device();
    let mut rng = Rng::new(13);
    let mut all = shapes();
    // A long reduction: split over many blocks and added by split_reduce.
    all.push(geom([3, 8, 64, 48, 16], (3, 3), 1, 1));
    for g in all {
        let x = random(&mut rng, g.n * g.c_in * g.h * g.w);
        let dy = random(&mut rng, g.n * g.c_out * g.h_out() * g.w_out());
        let (want_dw, want_db) = cpu::backward_weight(&g, &to_f64(&x), &to_f64(&dy));
        let (magnitude, magnitude_db) = cpu::backward_weight(&g, &abs_f64(&x), &abs_f64(&dy));
        let (xd, dyd) = (upload(&device, &x), upload(&device, &dy));
        let depth = g.n * g.h_out() * g.w_out();
        for algo in algos(&device) {
            let split = Split::of(&plan(ConvPass::BackwardWeight, &g, algo, device.multiprocessors()));
            let expected = Expected {
                want: &want_dw,
                magnitude: &magnitude,
                depth,
                split,
            };
            let (dw, db) = conv2d_backward_weight(&g, &xd, &dyd, algo).unwrap();
            check(
                &format!("backward-weight dw {algo} {g:?}"),
                algo,
                &dw.to_host().unwrap(),
                &expected,
            );
            check_bias_gradient(
                &format!("backward-weight db {algo} {g:?}"),
                &db.to_host().unwrap(),
                &want_db,
                &magnitude_db,
                split.bias_gradient_chain(depth),
            );
        }
    }
}

/// `tf32-fastest` times a geometry's pass once, remembers a TF32 version for it, and from then
/// on gives that version's bits.
#[test]
#[ignore = "needs a CUDA GPU"]
fn a_choice_times_each_pass_once_and_keeps_its_version() {
    let device = device();
    let mut rng = Rng::new(15);
    // A geometry no other test uses, so that this test's choice is its own.
    let g = geom([2, 64, 21, 19, 96], (3, 3), 1, 1);
    let x = upload(&device, &random(&mut rng, g.n * g.c_in * g.h * g.w));
    let w = upload(&device, &random(&mut rng, g.c_out * g.c_in * 9));
    let choice = ConvAlgo::Tf32Fastest;
    let ours = |device: &Arc<CudaDevice>| {
        device
            .tuned_convs()
            .into_iter()
            .filter(|(k, _)| k.choice == choice && k.geometry[..5] == [g.n, g.c_in, g.h, g.w, g.c_out])
            .collect::<Vec<_>>()
    };
    assert!(ours(&device).is_empty());
    let first = conv2d_forward(&g, &x, &w, None, choice).unwrap().to_host().unwrap();
    let chosen = ours(&device);
    assert_eq!(chosen.len(), 1, "{chosen:?}");
    let (key, version) = chosen[0];
    assert_eq!(key.pass, ConvPass::Forward);
    assert!(
        choice
            .candidates(device.compute_capability())
            .unwrap()
            .contains(&version),
        "{version}"
    );
    let again = conv2d_forward(&g, &x, &w, None, choice).unwrap().to_host().unwrap();
    let plain = conv2d_forward(&g, &x, &w, None, version).unwrap().to_host().unwrap();
    assert_eq!(ours(&device).len(), 1);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&first), bits(&plain), "{version}");
    assert_eq!(bits(&again), bits(&plain), "{version}");
    // The other passes choose on their own.
    conv2d_backward_weight(&g, &x, &upload(&device, &first), choice).unwrap();
    assert_eq!(ours(&device).len(), 2);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn backward_weight_is_deterministic() {
    let device = device();
    let mut rng = Rng::new(14);
    let g = geom([4, 16, 40, 40, 32], (3, 3), 1, 1);
    let x = upload(&device, &random(&mut rng, g.n * g.c_in * g.h * g.w));
    let dy = upload(&device, &random(&mut rng, g.n * g.c_out * g.h * g.w));
    for algo in algos(&device) {
        let (dw1, db1) = conv2d_backward_weight(&g, &x, &dy, algo).unwrap();
        let (dw2, db2) = conv2d_backward_weight(&g, &x, &dy, algo).unwrap();
        assert_eq!(dw1.to_host().unwrap(), dw2.to_host().unwrap(), "{algo}");
        assert_eq!(db1.to_host().unwrap(), db2.to_host().unwrap(), "{algo}");
    }
}

/// The transposed convolution by its definition: each input value, times the kernel, added
/// into the output window at (iy*s - pad, ix*s - pad). Returns y (with bias), and for output
/// gradient dy: dx, dw, db.
fn transposed_reference(
    g: &ConvTransposeGeom,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    dy: &[f32],
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (ho, wo) = (g.h_out(), g.w_out());
    let mut y = vec![0.0; g.n * g.c_out * ho * wo];
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    let mut db = vec![0.0; g.c_out];
    for i in 0..g.n {
        for ci in 0..g.c_in {
            for iy in 0..g.h {
                for ix in 0..g.w {
                    for co in 0..g.c_out {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let oy = (iy * g.stride + ky) as isize - g.pad as isize;
                                let ox = (ix * g.stride + kx) as isize - g.pad as isize;
                                if oy < 0 || ox < 0 || oy >= ho as isize || ox >= wo as isize {
                                    continue;
                                }
                                let xi = ((i * g.c_in + ci) * g.h + iy) * g.w + ix;
                                let wi = ((ci * g.c_out + co) * g.kh + ky) * g.kw + kx;
                                let yi = ((i * g.c_out + co) * ho + oy as usize) * wo + ox as usize;
                                y[yi] += x[xi] as f64 * w[wi] as f64;
                                dx[xi] += dy[yi] as f64 * w[wi] as f64;
                                dw[wi] += dy[yi] as f64 * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    for (e, v) in y.iter_mut().enumerate() {
        *v += b[(e / (ho * wo)) % g.c_out] as f64;
    }
    for (e, &d) in dy.iter().enumerate() {
        db[(e / (ho * wo)) % g.c_out] += d as f64;
    }
    (y, dx, dw, db)
}

fn transposed([n, c_in, h, w, c_out]: [usize; 5], k: usize, stride: usize, pad: usize) -> ConvTransposeGeom {
    ConvTransposeGeom {
        n,
        c_in,
        h,
        w,
        c_out,
        kh: k,
        kw: k,
        stride,
        pad,
    }
}

fn abs_f32(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn conv_transpose2d_matches_its_definition() {
    let device = device();
    let mut rng = Rng::new(15);
    for g in [
        transposed([3, 40, 5, 7, 20], 2, 2, 0),
        transposed([1, 6, 4, 3, 70], 2, 2, 0),
        transposed([2, 64, 8, 8, 32], 2, 2, 0),
        transposed([2, 5, 4, 5, 4], 3, 2, 1),
    ] {
        let x = random(&mut rng, g.n * g.c_in * g.h * g.w);
        let w = random(&mut rng, g.c_in * g.c_out * g.kh * g.kw);
        let b = random(&mut rng, g.c_out);
        let dy = random(&mut rng, g.n * g.c_out * g.h_out() * g.w_out());
        let (want_y, want_dx, want_dw, want_db) = transposed_reference(&g, &x, &w, &b, &dy);
        let (scale_y, scale_dx, scale_dw, scale_db) =
            transposed_reference(&g, &abs_f32(&x), &abs_f32(&w), &abs_f32(&b), &abs_f32(&dy));
        let expected = |want, magnitude, depth, split| Expected {
            want,
            magnitude,
            depth,
            split,
        };
        let (xd, wd, bd, dyd) = (
            upload(&device, &x),
            upload(&device, &w),
            upload(&device, &b),
            upload(&device, &dy),
        );
        // Kernels that tile the output run forward by tap: c_in products per element.
        let forward_depth = if g.taps_tile_the_output() {
            g.c_in
        } else {
            g.c_in * g.kh * g.kw
        };
        for algo in algos(&device) {
            let y = conv_transpose2d_forward(&g, &xd, &wd, Some(&bd), algo).unwrap();
            check(
                &format!("transposed forward {algo} {g:?}"),
                algo,
                &y.to_host().unwrap(),
                &expected(&want_y, &scale_y, forward_depth, Split::NONE),
            );
            let dx = conv_transpose2d_backward_data(&g, &dyd, &wd, algo).unwrap();
            check(
                &format!("transposed backward-data {algo} {g:?}"),
                algo,
                &dx.to_host().unwrap(),
                &expected(&want_dx, &scale_dx, g.c_out * g.kh * g.kw, Split::NONE),
            );
            let (dw, db) = conv_transpose2d_backward_weight(&g, &xd, &dyd, algo).unwrap();
            let split = Split::of(&transposed_plan(
                ConvPass::BackwardWeight,
                &g,
                algo,
                device.multiprocessors(),
            ));
            check(
                &format!("transposed backward-weight {algo} {g:?}"),
                algo,
                &dw.to_host().unwrap(),
                &expected(&want_dw, &scale_dw, g.n * g.h * g.w, split),
            );
            check_bias_gradient(
                &format!("transposed bias gradient {algo} {g:?}"),
                &db.to_host().unwrap(),
                &want_db,
                &scale_db,
                channel_sum_chain(g.n, g.h_out() * g.w_out()),
            );
        }
    }
}

/// The forward pass of transposed convolutions whose kernel tiles the output (2x2 stride 2 as in
/// the U-Net's decoder, 1x1) runs one GEMM per tap (`conv_tfwd_*`), c_in products per element:
/// through the public op on CUDA tensors, with and without a bias, every version, against the
/// same op on CPU f64 tensors (the CPU twin); bf16-mma also on inputs that are BF16 values already, where only the
/// accumulation error remains (chain c_in + ceil(c_in / 32) + 1).
#[test]
#[ignore = "needs a CUDA GPU"]
fn conv_transpose2d_forward_by_tap_matches_its_definition() {
    use lrc::ops::conv_transpose::forward;
    use lrc::{DType, Device, Tensor};
    let device = device();
    let gpu = Device::Cuda(device.clone());
    let mut rng = Rng::new(19);
    for g in [
        transposed([3, 33, 9, 5, 31], 2, 2, 0),
        transposed([1, 37, 7, 3, 66], 2, 2, 0),
        transposed([2, 64, 16, 16, 32], 2, 2, 0),
        transposed([1, 256, 8, 8, 128], 2, 2, 0),
        transposed([2, 35, 6, 5, 12], 1, 1, 0),
    ] {
        for bf16_inputs in [false, true] {
            let round = |v: Vec<f32>| if bf16_inputs { bf16_values(&v) } else { v };
            let x = round(random(&mut rng, g.n * g.c_in * g.h * g.w));
            let w = round(random(&mut rng, g.c_in * g.c_out * g.kh * g.kw));
            let b = random(&mut rng, g.c_out);
            let zeros = vec![0.0; g.c_out];
            let dy = vec![0.0; g.n * g.c_out * g.h_out() * g.w_out()];
            let x_t = Tensor::from_vec(vec![g.n, g.c_in, g.h, g.w], x.clone()).unwrap();
            let w_t = Tensor::from_vec(vec![g.c_in, g.c_out, g.kh, g.kw], w.clone()).unwrap();
            let b_t = Tensor::from_vec(vec![g.c_out], b.clone()).unwrap();
            let on_gpu = |t: &Tensor| t.to_device(&gpu).unwrap();
            for algo in ConvAlgo::ALL {
                if bf16_inputs && algo != ConvAlgo::Bf16Mma {
                    continue;
                }
                device.set_conv_algo(algo);
                let kernel = transposed_plan(ConvPass::Forward, &g, algo, device.multiprocessors()).kernel;
                assert!(kernel.starts_with("conv_tfwd_"), "{kernel}");
                for bias in [Some(&b), None] {
                    // The CPU twin in f64 on the same values; S by the definition on magnitudes.
                    let f64_of = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
                    let want = forward(
                        &f64_of(&x_t),
                        &f64_of(&w_t),
                        bias.map(|_| f64_of(&b_t)).as_ref(),
                        g.stride,
                        0,
                    )
                    .unwrap()
                    .to_f64_vec()
                    .unwrap();
                    let bias_values = bias.unwrap_or(&zeros);
                    let (scale, ..) = transposed_reference(&g, &abs_f32(&x), &abs_f32(&w), &abs_f32(bias_values), &dy);
                    let y = forward(
                        &on_gpu(&x_t),
                        &on_gpu(&w_t),
                        bias.map(|_| on_gpu(&b_t)).as_ref(),
                        g.stride,
                        0,
                    )
                    .unwrap();
                    assert_eq!(y.shape(), [g.n, g.c_out, g.h_out(), g.w_out()]);
                    assert!(y.device().is_cuda() && y.dtype() == DType::F32);
                    let what = format!("{kernel} bias {} bf16 inputs {bf16_inputs} {g:?}", bias.is_some());
                    let relative = relative_bound(algo, Split::NONE.chain(algo, g.c_in), bf16_inputs);
                    assert_within(&what, &host(&y), &want, &scale, relative);
                }
            }
        }
    }
}

/// The bound of bf16-mma relative to S on operands that are BF16 values already.
/// (The same bound holds for bf16-wgmma, whose elements are one accumulator chain as well.)
fn bf16_exact_products_bound(depth: usize) -> f64 {
    let algo = ConvAlgo::Bf16Mma;
    relative_bound(algo, Split::NONE.chain(algo, depth), true)
}

/// bf16-mma on inputs that are BF16 values already: the rounding of the operands changes
/// nothing, so the results must match the CPU twin on those values to FP32 accumulation error
/// alone (see the top of the file). Separates indexing errors from rounding.
#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_on_bf16_inputs_has_only_accumulation_error() {
    let device = device();
    for algo in [
        ConvAlgo::Bf16Mma,
        ConvAlgo::Bf16Wgmma,
        ConvAlgo::Bf16MmaTap,
        ConvAlgo::Bf16MmaWide,
        ConvAlgo::Bf16MmaHalo,
    ] {
        if algo.runs_on(device.compute_capability()) {
            bf16_on_bf16_inputs(&device, algo);
        } else {
            println!("skipped {algo}: needs compute capability 9.0");
        }
    }
}

/// The checks of `bf16_on_bf16_inputs_has_only_accumulation_error` for one BF16 version.
fn bf16_on_bf16_inputs(device: &Arc<CudaDevice>, algo: ConvAlgo) {
    let mut rng = Rng::new(18);
    let mut all = shapes();
    all.push(geom([3, 8, 64, 48, 16], (3, 3), 1, 1));
    for g in all {
        let x = bf16_values(&random(&mut rng, g.n * g.c_in * g.h * g.w));
        let w = bf16_values(&random(&mut rng, g.c_out * g.c_in * g.kh * g.kw));
        let b = random(&mut rng, g.c_out);
        let dy = bf16_values(&random(&mut rng, g.n * g.c_out * g.h_out() * g.w_out()));
        let (xd, wd, bd, dyd) = (
            upload(device, &x),
            upload(device, &w),
            upload(device, &b),
            upload(device, &dy),
        );

        let want = cpu::forward(&g, &to_f64(&x), &to_f64(&w), Some(&to_f64(&b)));
        let scale = cpu::forward(&g, &abs_f64(&x), &abs_f64(&w), Some(&abs_f64(&b)));
        let y = conv2d_forward(&g, &xd, &wd, Some(&bd), algo).unwrap();
        let bound = bf16_exact_products_bound(g.c_in * g.kh * g.kw);
        assert_within(&format!("forward {g:?}"), &y.to_host().unwrap(), &want, &scale, bound);

        let want = cpu::backward_data(&g, &to_f64(&dy), &to_f64(&w));
        let scale = cpu::backward_data(&g, &abs_f64(&dy), &abs_f64(&w));
        let dx = conv2d_backward_data(&g, &dyd, &wd, algo).unwrap();
        let bound = bf16_exact_products_bound(g.c_out * g.kh * g.kw);
        assert_within(
            &format!("backward-data {g:?}"),
            &dx.to_host().unwrap(),
            &want,
            &scale,
            bound,
        );

        let (want, _) = cpu::backward_weight(&g, &to_f64(&x), &to_f64(&dy));
        let (scale, _) = cpu::backward_weight(&g, &abs_f64(&x), &abs_f64(&dy));
        let (dw, _) = conv2d_backward_weight(&g, &xd, &dyd, algo).unwrap();
        let bound = bf16_exact_products_bound(g.n * g.h_out() * g.w_out());
        assert_within(
            &format!("backward-weight {g:?}"),
            &dw.to_host().unwrap(),
            &want,
            &scale,
            bound,
        );
    }
    // The transposed convolution's forward pass (one GEMM per tap, with a bias).
    let t = transposed([3, 40, 5, 7, 20], 2, 2, 0);
    let x = bf16_values(&random(&mut rng, t.n * t.c_in * t.h * t.w));
    let w = bf16_values(&random(&mut rng, t.c_in * t.c_out * 4));
    let b = random(&mut rng, t.c_out);
    let dy = vec![0.0; t.n * t.c_out * t.h_out() * t.w_out()];
    let (want, ..) = transposed_reference(&t, &x, &w, &b, &dy);
    let (scale, ..) = transposed_reference(&t, &abs_f32(&x), &abs_f32(&w), &abs_f32(&b), &dy);
    let y = conv_transpose2d_forward(
        &t,
        &upload(device, &x),
        &upload(device, &w),
        Some(&upload(device, &b)),
        algo,
    )
    .unwrap();
    let bound = bf16_exact_products_bound(t.c_in);
    assert_within(
        &format!("transposed forward {t:?}"),
        &y.to_host().unwrap(),
        &want,
        &scale,
        bound,
    );
}

/// Each tensor-core version rounds its operands as documented (to nearest, ties to even, in both
/// precisions): a 1x1 convolution of one channel with weight 1 copies each
/// input, rounded, into the output (one exact product). The inputs 1 + k 2^-12 (scaled, both
/// signs) include exact ties of TF32 (k = 2 mod 4) and of BF16 (k = 16, 48).
#[test]
#[ignore = "needs a CUDA GPU"]
fn tensor_core_operands_round_as_documented() {
    let device = device();
    let x: Vec<f32> = (0..64)
        .map(|k| {
            let v = (1.0 + k as f32 * (-12f32).exp2()) * ((k % 7) as f32 - 3.0).exp2();
            if k % 2 == 1 { -v } else { v }
        })
        .collect();
    let g = geom([1, 1, 1, x.len(), 1], (1, 1), 1, 0);
    let (xd, wd) = (upload(&device, &x), upload(&device, &[1.0]));
    for (algo, round) in [
        (ConvAlgo::Tf32Mma, &to_tf32 as &dyn Fn(f32) -> f32),
        (ConvAlgo::Bf16Mma, &to_bf16),
        (ConvAlgo::Tf32Wgmma, &to_tf32),
        (ConvAlgo::Bf16Wgmma, &to_bf16),
        (ConvAlgo::Tf32MmaTap, &to_tf32),
        (ConvAlgo::Bf16MmaTap, &to_bf16),
    ] {
        if !algo.runs_on(device.compute_capability()) {
            println!("skipped {algo}: needs compute capability 9.0");
            continue;
        }
        let y = conv2d_forward(&g, &xd, &wd, None, algo).unwrap().to_host().unwrap();
        for (i, (&got, &v)) in y.iter().zip(&x).enumerate() {
            assert_eq!(
                got.to_bits(),
                round(v).to_bits(),
                "{algo}: input {i} = {v:e} gave {got:e}"
            );
        }
    }
}

/// The tap-major versions' weights are rounded by their packing kernel, as documented: a 3x3
/// convolution of a 3 x 3 image that is 1 at its centre in one channel and 0 elsewhere puts
/// each weight of that channel, rounded, at one output pixel (one exact product, the rest exact
/// zeros). The weights 1 + k 2^-12 (scaled, both signs) include exact ties of TF32 and BF16;
/// 160 output channels run the wide tiles (with padding) and c_in = 32 the tap-major order.
#[test]
#[ignore = "needs a CUDA GPU"]
fn packed_weights_round_as_documented() {
    let device = device();
    let (c_in, c_out, centre_channel) = (32, 160, 5);
    let g = geom([1, c_in, 3, 3, c_out], (3, 3), 1, 1);
    let mut x = vec![0.0f32; c_in * 9];
    x[centre_channel * 9 + 4] = 1.0;
    let w: Vec<f32> = (0..c_out * c_in * 9).map(tied_value).collect();
    let (xd, wd) = (upload(&device, &x), upload(&device, &w));
    for (algo, round) in [
        (ConvAlgo::Tf32MmaTap, &to_tf32 as &dyn Fn(f32) -> f32),
        (ConvAlgo::Bf16MmaTap, &to_bf16),
        (ConvAlgo::Tf32MmaWide, &to_tf32),
        (ConvAlgo::Bf16MmaWide, &to_bf16),
    ] {
        let y = conv2d_forward(&g, &xd, &wd, None, algo).unwrap().to_host().unwrap();
        for co in 0..c_out {
            for pixel in 0..9 {
                // Output pixel (oy, ox) meets the centre through tap (2 - oy, 2 - ox).
                let v = w[(co * c_in + centre_channel) * 9 + 8 - pixel];
                let got = y[co * 9 + pixel];
                assert_eq!(
                    got.to_bits(),
                    round(v).to_bits(),
                    "{algo}: output channel {co}, pixel {pixel}: weight {v:e} gave {got:e}"
                );
            }
        }
    }
}

/// The halo forward and backward-data kernels (`tf32-mma-halo`, `bf16-mma-halo`; 64 outputs or
/// fewer) round both operands to TF32 or BF16 (nearest even) and read each tap at its offset,
/// borders included: with x one at a single pixel P (the bottom right corner, in the last block
/// of rows) of one channel, y[co][O] is the one product round(w[co][c][tap]) for the tap that
/// puts O's window on P, 0 elsewhere; with w one at the centre tap of input channel 0, y[co][O] =
/// round(x[0][O]) for values with exact ties. Backward-data likewise with dy one at P: dx[ci][I]
/// = round(w[c][ci][tap]) for the tap that puts P's window on I.
#[test]
#[ignore = "needs a CUDA GPU"]
fn halo_forward_operands_round_as_documented() {
    let device = device();
    let rounding: [(ConvAlgo, &dyn Fn(f32) -> f32); 2] =
        [(ConvAlgo::Tf32MmaHalo, &to_tf32), (ConvAlgo::Bf16MmaHalo, &to_bf16)];
    for ((pass, shape, block), (algo, round)) in [
        (ConvPass::Forward, [1, 16, 9, 32, 32], "_k3h_n32_w32"),
        (ConvPass::BackwardData, [1, 32, 17, 16, 16], "_k3h_n32_w16"),
        (ConvPass::Forward, [1, 16, 5, 32, 64], "_k3h_n64_w32"),
        (ConvPass::BackwardData, [1, 48, 9, 16, 16], "_k3h_n64_w16"),
    ]
    .into_iter()
    .flat_map(|case| rounding.iter().map(move |&r| (case, r)))
    {
        let g = geom(shape, (3, 3), 1, 1);
        let launch = plan(pass, &g, algo, device.multiprocessors());
        assert!(launch.kernel.ends_with(block), "{}", launch.kernel);
        let forward = pass == ConvPass::Forward;
        // The pass as a convolution from `ins` channels to `outs`, and the weight it reads for
        // (output, input, tap): forward w[o][i][tap], backward-data w[i][o][8 - tap].
        let (ins, outs) = if forward { (g.c_in, g.c_out) } else { (g.c_out, g.c_in) };
        let (h, w) = (g.h, g.w);
        let weight_at = |weights: &[f32], o: usize, i: usize, tap: usize| {
            if forward {
                weights[(o * g.c_in + i) * 9 + tap]
            } else {
                weights[(i * g.c_in + o) * 9 + 8 - tap]
            }
        };
        let run = |input: &[f32], weights: &[f32]| {
            let (id, wd) = (upload(&device, input), upload(&device, weights));
            let out = if forward {
                conv2d_forward(&g, &id, &wd, None, algo)
            } else {
                conv2d_backward_data(&g, &id, &wd, algo)
            };
            out.unwrap().to_host().unwrap()
        };
        // One input at P, tied weights.
        let (channel, py, px) = (5 % ins, h - 1, w - 1);
        let mut input = vec![0.0f32; ins * h * w];
        input[(channel * h + py) * w + px] = 1.0;
        let weights: Vec<f32> = (0..g.c_out * g.c_in * 9).map(tied_value).collect();
        let got = run(&input, &weights);
        for o in 0..outs {
            for y in 0..h {
                for x in 0..w {
                    let (ky, kx) = (py as isize - y as isize + 1, px as isize - x as isize + 1);
                    let want = if (0..3).contains(&ky) && (0..3).contains(&kx) {
                        round(weight_at(&weights, o, channel, (ky * 3 + kx) as usize))
                    } else {
                        0.0
                    };
                    let v = got[(o * h + y) * w + x];
                    assert_eq!(
                        v.to_bits(),
                        want.to_bits(),
                        "{algo} {pass:?} output {o} at ({y}, {x}): {v:e}, want {want:e}"
                    );
                }
            }
        }
        // Tied inputs in channel 0, one weight at its centre tap.
        let mut input = vec![0.0f32; ins * h * w];
        for (k, v) in input[..h * w].iter_mut().enumerate() {
            *v = tied_value(k);
        }
        let mut weights = vec![0.0f32; g.c_out * g.c_in * 9];
        for o in 0..outs {
            let at = if forward { (o * g.c_in) * 9 + 4 } else { o * 9 + 4 };
            weights[at] = 1.0;
        }
        let got = run(&input, &weights);
        for o in 0..outs {
            for k in 0..h * w {
                let (v, want) = (got[o * h * w + k], round(input[k]));
                assert_eq!(
                    v.to_bits(),
                    want.to_bits(),
                    "{algo} {pass:?} output {o}, pixel {k}: {v:e}, want {want:e}"
                );
            }
        }
    }
}

/// The halo kernels round both operands as documented (TF32 and BF16, nearest even) and read
/// each tap's window with its zero border: with dy 1 at a single pixel P of every output channel
/// and 0 elsewhere, dw[co][ci][ky][kx] is the one exact product 1 x round(x[ci] at P + (ky - 1,
/// kx - 1)), or 0 where that lies outside the image, and db[co] is 1; with x 1 at P in every
/// channel instead, dw[co][ci][ky][kx] = round(dy[co] at P - (ky - 1, kx - 1)). Values 1 + k
/// 2^-12 (scaled, both signs) include exact ties of both precisions. P on the left border of a
/// 32-pixel row, then in the second row of a two-row k tile on the right border; both block
/// heights.
#[test]
#[ignore = "needs a CUDA GPU"]
fn halo_operands_round_as_documented() {
    let device = device();
    let cases = [([1, 32, 3, 32, 40], (1, 0)), ([2, 32, 4, 16, 24], (3, 15))];
    let versions = [
        (ConvAlgo::Tf32MmaHalo, &to_tf32 as &dyn Fn(f32) -> f32),
        (ConvAlgo::Bf16MmaHalo, &to_bf16),
    ];
    for ((dims, (py, px)), (algo, round)) in cases.into_iter().flat_map(|c| versions.map(|v| (c, v))) {
        let g = geom(dims, (3, 3), 1, 1);
        let launch = plan(ConvPass::BackwardWeight, &g, algo, device.multiprocessors());
        assert!(launch.kernel.contains("_k3h_"), "{launch:?}");
        let (plane, img) = (g.h * g.w, g.n - 1);
        let at = |c: usize, channels: usize, y: isize, x: isize| {
            let inside = (0..g.h as isize).contains(&y) && (0..g.w as isize).contains(&x);
            inside.then(|| (img * channels + c) * plane + y as usize * g.w + x as usize)
        };
        let values = |len: usize| -> Vec<f32> { (0..len).map(tied_value).collect() };
        let one_hot = |channels: usize| {
            let mut v = vec![0.0f32; g.n * channels * plane];
            for c in 0..channels {
                v[at(c, channels, py, px).unwrap()] = 1.0;
            }
            v
        };
        let (x, dy) = (values(g.n * g.c_in * plane), values(g.n * g.c_out * plane));
        for (x, dy, rounded_x) in [
            (x.clone(), one_hot(g.c_out), true),
            (one_hot(g.c_in), dy.clone(), false),
        ] {
            let (dw, db) = conv2d_backward_weight(&g, &upload(&device, &x), &upload(&device, &dy), algo).unwrap();
            let (dw, db) = (dw.to_host().unwrap(), db.to_host().unwrap());
            for co in 0..g.c_out {
                for ci in 0..g.c_in {
                    for (ky, kx) in (0..3isize).flat_map(|ky| (0..3isize).map(move |kx| (ky, kx))) {
                        let want = if rounded_x {
                            at(ci, g.c_in, py + ky - 1, px + kx - 1).map_or(0.0, |i| round(x[i]))
                        } else {
                            at(co, g.c_out, py - ky + 1, px - kx + 1).map_or(0.0, |i| round(dy[i]))
                        };
                        let got = dw[(co * g.c_in + ci) * 9 + (ky * 3 + kx) as usize];
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{algo} {dims:?}: dw[{co}][{ci}][{ky}][{kx}] = {got:e}, want {want:e}"
                        );
                    }
                }
                if rounded_x {
                    assert_eq!(db[co], 1.0, "{algo} {dims:?}: db[{co}]");
                }
            }
        }
    }
}

/// The wgmma versions (v3) where they cannot run are an error naming what they need, never a
/// panic; where they can, every pass runs (the other tests check the results).
#[test]
#[ignore = "needs a CUDA GPU"]
fn wgmma_versions_run_on_compute_capability_9_0_only() {
    let device = device();
    let g = geom([1, 3, 9, 7, 5], (3, 3), 1, 1);
    let mut rng = Rng::new(19);
    let x = upload(&device, &random(&mut rng, g.n * g.c_in * g.h * g.w));
    let w = upload(&device, &random(&mut rng, g.c_out * g.c_in * 9));
    let dy = upload(&device, &random(&mut rng, g.n * g.c_out * g.h * g.w));
    for algo in [ConvAlgo::Tf32Wgmma, ConvAlgo::Bf16Wgmma] {
        for pass in [ConvPass::Forward, ConvPass::BackwardData, ConvPass::BackwardWeight] {
            let launch = plan(pass, &g, algo, device.multiprocessors());
            assert!(launch.kernel.contains("_wgmma_"), "{launch:?}");
        }
        let results = [
            conv2d_forward(&g, &x, &w, None, algo).map(drop),
            conv2d_backward_data(&g, &dy, &w, algo).map(drop),
            conv2d_backward_weight(&g, &x, &dy, algo).map(drop),
        ];
        if algo.runs_on(device.compute_capability()) {
            for r in results {
                r.unwrap();
            }
        } else {
            println!("skipped running {algo}: this GPU is not compute capability 9.0");
            for r in results {
                let e = r.expect_err("a wgmma version off sm_90 is an error").to_string();
                assert!(e.contains("compute capability 9.0"), "{e}");
            }
        }
    }
}

/// `ops` results on CUDA tensors as f32, for the comparisons.
fn host(t: &lrc::Tensor) -> Vec<f32> {
    t.to_f32_vec().unwrap()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn ops_dispatch_runs_conv2d_on_cuda_tensors() {
    use lrc::{DType, Device, Tensor};
    let device = device();
    let mut rng = Rng::new(16);
    let g = geom([3, 7, 10, 9, 33], (3, 3), 1, 1);
    let x = Tensor::uniform([g.n, g.c_in, g.h, g.w], -1.0, 1.0, DType::F32, &mut rng);
    let w = Tensor::uniform([g.c_out, g.c_in, 3, 3], -1.0, 1.0, DType::F32, &mut rng);
    let b = Tensor::uniform([g.c_out], -1.0, 1.0, DType::F32, &mut rng);
    let dy = Tensor::uniform([g.n, g.c_out, g.h, g.w], -1.0, 1.0, DType::F32, &mut rng);
    let gpu = Device::Cuda(device.clone());
    let on_gpu = |t: &Tensor| t.to_device(&gpu).unwrap();
    // The references run in f64 on the same values; the magnitudes (for bf16-mma's bound) too.
    let f64_of = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    let abs_of = |t: &Tensor| abs_f64(&host(t));
    let want = lrc::ops::conv::forward(&f64_of(&x), &f64_of(&w), Some(&f64_of(&b)), 1, 1)
        .unwrap()
        .to_f64_vec()
        .unwrap();
    let want_dx = lrc::ops::conv::backward_data(&g, &f64_of(&dy), &f64_of(&w))
        .unwrap()
        .to_f64_vec()
        .unwrap();
    let (want_dw, want_db) = lrc::ops::conv::backward_weight(&g, &f64_of(&x), &f64_of(&dy)).unwrap();
    let (want_dw, want_db) = (want_dw.to_f64_vec().unwrap(), want_db.to_f64_vec().unwrap());
    let scale = cpu::forward(&g, &abs_of(&x), &abs_of(&w), Some(&abs_of(&b)));
    let scale_dx = cpu::backward_data(&g, &abs_of(&dy), &abs_of(&w));
    let (scale_dw, scale_db) = cpu::backward_weight(&g, &abs_of(&x), &abs_of(&dy));
    let expected = |want, magnitude, depth, split| Expected {
        want,
        magnitude,
        depth,
        split,
    };
    for algo in algos(&device) {
        device.set_conv_algo(algo);
        let split = Split::of(&plan(ConvPass::BackwardWeight, &g, algo, device.multiprocessors()));
        let got = lrc::ops::conv::forward(&on_gpu(&x), &on_gpu(&w), Some(&on_gpu(&b)), 1, 1).unwrap();
        assert_eq!(got.shape(), [g.n, g.c_out, g.h, g.w]);
        assert!(got.device().is_cuda());
        check(
            &format!("ops forward {algo}"),
            algo,
            &host(&got),
            &expected(&want, &scale, g.c_in * 9, Split::NONE),
        );

        let got_dx = lrc::ops::conv::backward_data(&g, &on_gpu(&dy), &on_gpu(&w)).unwrap();
        check(
            &format!("ops backward-data {algo}"),
            algo,
            &host(&got_dx),
            &expected(&want_dx, &scale_dx, g.c_out * 9, Split::NONE),
        );

        let (got_dw, got_db) = lrc::ops::conv::backward_weight(&g, &on_gpu(&x), &on_gpu(&dy)).unwrap();
        check(
            &format!("ops backward-weight {algo}"),
            algo,
            &host(&got_dw),
            &expected(&want_dw, &scale_dw, g.n * g.h * g.w, split),
        );
        check_bias_gradient(
            &format!("ops bias gradient {algo}"),
            &host(&got_db),
            &want_db,
            &scale_db,
            split.bias_gradient_chain(g.n * g.h * g.w),
        );
    }
    device.set_conv_algo(ConvAlgo::DEFAULT);
    // Mixed devices are an error, not a crash.
    assert!(lrc::ops::conv::forward(&on_gpu(&x), &w, None, 1, 1).is_err());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn ops_dispatch_runs_conv_transpose2d_on_cuda_tensors() {
    use lrc::ops::conv_transpose::{backward_data, backward_weight, forward, mirror_geom};
    use lrc::{DType, Device, Tensor};
    let device = device();
    let mut rng = Rng::new(17);
    // The U-Net's up path at awkward sizes: 2x2 stride 2, 13 -> 6 channels, odd input sides.
    let x = Tensor::uniform([3, 13, 5, 7], -1.0, 1.0, DType::F32, &mut rng);
    let w = Tensor::uniform([13, 6, 2, 2], -1.0, 1.0, DType::F32, &mut rng);
    let b = Tensor::uniform([6], -1.0, 1.0, DType::F32, &mut rng);
    let dy = Tensor::uniform([3, 6, 10, 14], -1.0, 1.0, DType::F32, &mut rng);
    let gpu = Device::Cuda(device.clone());
    // Forward, dx, dw, db on one device; the CPU side runs in f64 on the same values.
    let run = |to: &dyn Fn(&Tensor) -> Tensor| {
        let g = mirror_geom(&to(&x), &to(&w), 2, 0).unwrap();
        let y = forward(&to(&x), &to(&w), Some(&to(&b)), 2, 0).unwrap();
        let dx = backward_data(&g, &to(&dy), &to(&w)).unwrap();
        let (dw, db) = backward_weight(&g, &to(&x), &to(&dy)).unwrap();
        [y, dx, dw, db].map(|t| t.to_f64_vec().unwrap())
    };
    let want = run(&|t: &Tensor| t.to_dtype(DType::F64).unwrap());
    // The same layer by definition on the magnitudes: sum |a| |b| per element.
    let t = transposed([3, 13, 5, 7, 6], 2, 2, 0);
    let (scale_y, scale_dx, scale_dw, scale_db) = transposed_reference(
        &t,
        &abs_f32(&host(&x)),
        &abs_f32(&host(&w)),
        &abs_f32(&host(&b)),
        &abs_f32(&host(&dy)),
    );
    let scales = [scale_y, scale_dx, scale_dw];
    for algo in algos(&device) {
        device.set_conv_algo(algo);
        let got = run(&|t: &Tensor| t.to_device(&gpu).unwrap());
        let got32 = |i: usize| -> Vec<f32> { got[i].iter().map(|&v| v as f32).collect() };
        let dw_split = Split::of(&transposed_plan(
            ConvPass::BackwardWeight,
            &t,
            algo,
            device.multiprocessors(),
        ));
        // Terms per output: forward 13 (one tap each), dx 6 x 4, dw 3 x 5 x 7.
        for (i, (name, k, split)) in [
            ("forward", 13, Split::NONE),
            ("dx", 24, Split::NONE),
            ("dw", 105, dw_split),
        ]
        .into_iter()
        .enumerate()
        {
            let expected = Expected {
                want: &want[i],
                magnitude: &scales[i],
                depth: k,
                split,
            };
            check(
                &format!("ops conv_transpose2d {name} {algo}"),
                algo,
                &got32(i),
                &expected,
            );
        }
        // db: 3 images of 10 x 14.
        check_bias_gradient(
            &format!("ops conv_transpose2d db {algo}"),
            &got32(3),
            &want[3],
            &scale_db,
            channel_sum_chain(3, 10 * 14),
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn unet_sized_layers_match_the_cpu_twin() {
    // One full-width U-Net layer per tile configuration, at a reduced batch and size, through
    // every tensor-core version this device runs.
    let device = device();
    let mut rng = Rng::new(17);
    for g in [
        geom([2, 32, 64, 64, 32], (3, 3), 1, 1),
        geom([1, 256, 16, 16, 128], (3, 3), 1, 1),
    ] {
        let x = random(&mut rng, g.n * g.c_in * g.h * g.w);
        let w = random(&mut rng, g.c_out * g.c_in * 9);
        let dy = random(&mut rng, g.n * g.c_out * g.h * g.w);
        let want = cpu::forward(&g, &to_f64(&x), &to_f64(&w), None);
        let want_dx = cpu::backward_data(&g, &to_f64(&dy), &to_f64(&w));
        let (want_dw, _) = cpu::backward_weight(&g, &to_f64(&x), &to_f64(&dy));
        let scale = cpu::forward(&g, &abs_f64(&x), &abs_f64(&w), None);
        let scale_dx = cpu::backward_data(&g, &abs_f64(&dy), &abs_f64(&w));
        let (scale_dw, _) = cpu::backward_weight(&g, &abs_f64(&x), &abs_f64(&dy));
        let expected = |want, magnitude, depth, split| Expected {
            want,
            magnitude,
            depth,
            split,
        };
        let (xd, wd, dyd) = (upload(&device, &x), upload(&device, &w), upload(&device, &dy));
        for algo in algos(&device).into_iter().filter(|&a| a != ConvAlgo::Fp32Tiled) {
            let y = conv2d_forward(&g, &xd, &wd, None, algo).unwrap();
            check(
                &format!("forward {algo}"),
                algo,
                &y.to_host().unwrap(),
                &expected(&want, &scale, g.c_in * 9, Split::NONE),
            );
            let dx = conv2d_backward_data(&g, &dyd, &wd, algo).unwrap();
            check(
                &format!("backward-data {algo}"),
                algo,
                &dx.to_host().unwrap(),
                &expected(&want_dx, &scale_dx, g.c_out * 9, Split::NONE),
            );
            let (dw, _) = conv2d_backward_weight(&g, &xd, &dyd, algo).unwrap();
            let split = Split::of(&plan(ConvPass::BackwardWeight, &g, algo, device.multiprocessors()));
            check(
                &format!("backward-weight {algo}"),
                algo,
                &dw.to_host().unwrap(),
                &expected(&want_dw, &scale_dw, g.n * g.h * g.w, split),
            );
        }
    }
}
