//! Runs the CUDA kernel sources on the CPU through `kernels/emu/` (blocks run in turn, their
//! threads as coroutines switching at barriers; warp shuffles and mma.sync emulated with the PTX
//! fragment layout), launched as the Rust host code plans them (`conv::plan`,
//! `conv::transposed_plan`: kernel choice, grid, reduction splits), and checks every
//! convolution kernel variant against a direct double-precision definition on awkward shapes,
//! with NaN-poisoned outputs, every case under both schedules of the emulator (forward and
//! reverse, compared bit for bit) and, where libasan is available, with AddressSanitizer (as
//! `lrc::device::emu` runs its jobs). Needs a C++20 compiler (`$CXX` or g++), not a GPU: it checks the
//! kernels' logic and the launch plans, while tests/cuda_conv.rs checks them on the hardware.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use lrc::device::cuda::conv::{self, ConvLaunch, ConvPass, launch_shared_bytes, plan, transposed_plan};
use lrc::device::cuda::conv_sm90;
use lrc::device::cuda::{ConvAlgo, ConvTransposeGeom};
use lrc::device::emu;
use lrc::ops::conv::ConvGeom;

/// Builds the harness, or says why not (None: no compiler outside CI).
fn harness(dir: &Path) -> Option<PathBuf> {
    if !emu::available() {
        return None;
    }
    let cxx = emu::compiler().expect("emu::available found a C++ compiler");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = dir.join("conv_emu_test");
    // With the emulator's memory checks (AddressSanitizer) where they run; the harness itself
    // runs every case under both schedules.
    let variant = if emu::checks_on() {
        emu::checked_variant().unwrap_or_else(|e| panic!("{e}"))
    } else {
        emu::Variant::Plain
    };
    let build = Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-Wall", "-Wno-unknown-pragmas"])
        .args(emu::variant_flags(variant))
        .arg("-I")
        .arg(root.join("kernels"))
        .arg("-o")
        .arg(&exe)
        .arg(root.join("kernels/emu/conv_emu_test.cpp"))
        .output()
        .expect("run the C++ compiler");
    assert!(
        build.status.success(),
        "the emulation harness does not compile:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    Some(exe)
}

const PASSES: [(ConvPass, &str); 3] = [
    (ConvPass::Forward, "forward"),
    (ConvPass::BackwardData, "backward_data"),
    (ConvPass::BackwardWeight, "backward_weight"),
];

fn conv(dims: [usize; 5], k: (usize, usize), stride: usize, pad: usize) -> ConvGeom {
    let [n, c_in, h, w, c_out] = dims;
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

fn transposed(dims: [usize; 5], k: usize, stride: usize, pad: usize) -> ConvTransposeGeom {
    let [n, c_in, h, w, c_out] = dims;
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

fn line(out: &mut String, label: &str, kind: &str, pass: &str, d: [usize; 9], launch: &ConvLaunch) {
    let [n, c_in, h, w, c_out, kh, kw, stride, pad] = d;
    let (gx, gy, gz) = launch.grid;
    let _ = writeln!(
        out,
        "{label} {kind} {pass} {n} {c_in} {h} {w} {c_out} {kh} {kw} {stride} {pad} {} {gx} {gy} {gz} {} {} {} {} {}",
        launch.kernel,
        launch.split_len,
        launch.splits,
        launch_shared_bytes(launch.kernel),
        launch.pack.map_or("-", |p| p.kernel),
        launch.pack.map_or(0, |p| p.words)
    );
}

/// The cases: every pass of every version on awkward shapes (odd sizes, batches of 1 and 3,
/// channel counts off the tiles so that both tile widths run, 1x1, stride 2, an unspecialised
/// kernel size), the generic TF32 kernels also on 3x3, and the transposed convolution; the
/// wgmma versions (v3) with their planned dynamic shared memory (and their forward passes also
/// without a bias).
fn plan_file() -> String {
    let shapes = [
        ("3x3_n2_c5-37_7x9", conv([2, 5, 7, 9, 37], (3, 3), 1, 1)),
        ("3x3_n3_c33-19_5x11", conv([3, 33, 5, 11, 19], (3, 3), 1, 1)),
        ("3x3_n1_c1-70_13x10", conv([1, 1, 13, 10, 70], (3, 3), 1, 1)),
        ("1x1_n3_c34-14_6x5", conv([3, 34, 6, 5, 14], (1, 1), 1, 0)),
        ("1x1_n1_c9-65_9x9", conv([1, 9, 9, 9, 65], (1, 1), 1, 0)),
        ("3x3s2_n2_c3-6_9x8", conv([2, 3, 9, 8, 6], (3, 3), 2, 1)),
        ("5x3_n1_c4-10_8x7", conv([1, 4, 8, 7, 10], (5, 3), 1, 1)),
        ("3x3_n3_c4-8_23x21", conv([3, 4, 23, 21, 8], (3, 3), 1, 1)),
        // One output tile over a 540-deep reduction: forward splits it in two on 4
        // multiprocessors (288, then a last split of 252 that ends mid k tile).
        ("3x3_n2_c60-40_3x5", conv([2, 60, 3, 5, 40], (3, 3), 1, 1)),
    ];
    // Whole 32-channel k tiles, for the tap-major versions' own kernels (they run tf32-mma's and
    // bf16-mma's everywhere else): forward over 32 and 64 input channels, backward-data over 64
    // and 32 output channels, backward-weight with 32 and 64 input channels (a last column tile
    // half out of range: 288 columns) and both tile widths (64 and 32 output channels), split
    // and unsplit; odd sides, stride 2.
    let tap_shapes = [
        ("3x3_n3_c32-64_7x5", conv([3, 32, 7, 5, 64], (3, 3), 1, 1)),
        ("3x3_n1_c64-32_9x11", conv([1, 64, 9, 11, 32], (3, 3), 1, 1)),
        ("3x3s2_n2_c32-32_9x8", conv([2, 32, 9, 8, 32], (3, 3), 2, 1)),
        // Enough pixels (585) for backward-weight to split its reduction on 4 multiprocessors.
        ("3x3_n3_c32-32_13x15", conv([3, 32, 13, 15, 32], (3, 3), 1, 1)),
        // B rows off the tiles, read from the packed weights' zero padding: forward with 72
        // output channels (a second 64-wide tile of 8), backward-data with 20 input channels.
        ("3x3_n2_c32-72_6x7", conv([2, 32, 6, 7, 72], (3, 3), 1, 1)),
        ("3x3_n2_c20-32_6x7", conv([2, 20, 6, 7, 32], (3, 3), 1, 1)),
        // The wide kernels' 128 columns: forward over 160 output channels (a second tile of
        // 32, the rest padding), backward-data over 136 input channels.
        ("3x3_n1_c32-160_5x6", conv([1, 32, 5, 6, 160], (3, 3), 1, 1)),
        ("3x3_n2_c136-32_5x4", conv([2, 136, 5, 4, 32], (3, 3), 1, 1)),
        // Backward-weight's wide tile (64 output channels) with its reduction split in two.
        ("3x3_n3_c32-64_13x15", conv([3, 32, 13, 15, 64], (3, 3), 1, 1)),
        // Forward and backward-data with their depth split on 4 multiprocessors (one pixel
        // tile): 128 output channels (wide forward, 2 splits; backward-data 4 splits of 1152),
        // 128 input channels (wide backward-data, 2 splits; forward 4).
        ("3x3_n1_c64-128_4x5", conv([1, 64, 4, 5, 128], (3, 3), 1, 1)),
        ("3x3_n1_c128-64_4x5", conv([1, 128, 4, 5, 64], (3, 3), 1, 1)),
        // 2x2 stride 2 (an up-convolution's backward passes: forward and backward-weight of
        // the convolution it transposes): both tile widths, odd sides (the floor drops a row and
        // a column), 136 output channels (the wide forward tile, a second one of 8), and 585
        // output pixels over 32 input channels (backward-weight split on 4 multiprocessors).
        ("2x2s2_n2_c32-64_10x14", conv([2, 32, 10, 14, 64], (2, 2), 2, 0)),
        ("2x2s2_n1_c64-32_9x11", conv([1, 64, 9, 11, 32], (2, 2), 2, 0)),
        ("2x2s2_n1_c32-136_6x8", conv([1, 32, 6, 8, 136], (2, 2), 2, 0)),
        ("2x2s2_n3_c32-40_26x30", conv([3, 32, 26, 30, 40], (2, 2), 2, 0)),
    ];
    // The halo-tile backward-weight kernels (tf32-mma-halo): rows of 32 and 64 pixels and of 16
    // (two rows a k tile), 64 and 32 output channels a block, c_out off the tile (40, 24, 72,
    // 20; 72: a last block of 8 rows), two 32-channel column blocks, reductions split mid-image and
    // mid-row (3 x 5 x 64: two splits of 480 pixels) and unsplit.
    let halo_shapes = [
        ("3x3_n2_c32-64_3x32", conv([2, 32, 3, 32, 64], (3, 3), 1, 1)),
        ("3x3_n1_c64-24_4x32", conv([1, 64, 4, 32, 24], (3, 3), 1, 1)),
        ("3x3_n3_c64-40_5x64", conv([3, 64, 5, 64, 40], (3, 3), 1, 1)),
        ("3x3_n2_c32-32_6x16", conv([2, 32, 6, 16, 32], (3, 3), 1, 1)),
        ("3x3_n1_c32-72_8x16", conv([1, 32, 8, 16, 72], (3, 3), 1, 1)),
        ("3x3_n4_c32-20_10x16", conv([4, 32, 10, 16, 20], (3, 3), 1, 1)),
    ];
    // The halo forward and backward-data kernels (tf32-mma-halo, bf16-mma-halo; blocks of 32
    // and of 64 output channels): rows of 32 columns (one and two column tiles) and of 16 (W =
    // 16, and 48: three tiles), heights off the 4-, 8- and 16-row tiles, 1 to 17 chunks of 8 (or
    // 16) input channels, outputs off 32 and 64, and over 64 in two and three column blocks
    // (the last one partly past the outputs).
    let halo_forward_shapes = [
        ("3x3_n2_c8-20_5x32", conv([2, 8, 5, 32, 20], (3, 3), 1, 1)),
        ("3x3_n1_c24-32_9x64", conv([1, 24, 9, 64, 32], (3, 3), 1, 1)),
        ("3x3_n2_c16-40_6x16", conv([2, 16, 6, 16, 40], (3, 3), 1, 1)),
        ("3x3_n1_c32-12_17x48", conv([1, 32, 17, 48, 12], (3, 3), 1, 1)),
        ("3x3_n1_c8-64_5x64", conv([1, 8, 5, 64, 64], (3, 3), 1, 1)),
        ("3x3_n2_c48-16_9x16", conv([2, 48, 9, 16, 16], (3, 3), 1, 1)),
        ("3x3_n1_c40-24_5x32", conv([1, 40, 5, 32, 24], (3, 3), 1, 1)),
        // And for BF16's chunks of 16 input channels: both blocks and row widths, both passes.
        ("3x3_n1_c16-48_5x32", conv([1, 16, 5, 32, 48], (3, 3), 1, 1)),
        ("3x3_n1_c48-32_5x32", conv([1, 48, 5, 32, 32], (3, 3), 1, 1)),
        ("3x3_n2_c16-48_6x16", conv([2, 16, 6, 16, 48], (3, 3), 1, 1)),
        // More than 64 outputs: forward 136 (three blocks of 64, the last of 8), backward-data
        // 96 (two, the second of 32), both precisions.
        ("3x3_n1_c16-136_5x32", conv([1, 16, 5, 32, 136], (3, 3), 1, 1)),
        ("3x3_n2_c96-16_6x16", conv([2, 96, 6, 16, 16], (3, 3), 1, 1)),
    ];
    // The kernels on the FP32 cores (tf32-mma-tap, bf16-mma-tap; both passes where they serve
    // them). 1x1: the head's 32 -> 14 and 14 -> 32 (forward 16 sums a thread, backward-data
    // 32), a last chunk of 4 of 20 inputs and of 3 of 19, one input and one output, pixels off
    // the 256-thread block (6 x 7 x 11 = 462), 128 inputs (8 chunks) with 32 outputs (forward)
    // and with 1 (backward-data). 3x3: the first layer's 1 -> 32 and 32 -> 1, 2 -> 20 and back,
    // 16 -> 4 and back (64 channels), 5 -> 3 and back (last chunks of 1), borders on every side,
    // 272 pixels (two blocks).
    let direct_shapes = [
        ("3x3_n2_c1-32_9x13", conv([2, 1, 9, 13, 32], (3, 3), 1, 1)),
        ("3x3_n1_c2-20_7x5", conv([1, 2, 7, 5, 20], (3, 3), 1, 1)),
        ("3x3_n3_c16-4_6x11", conv([3, 16, 6, 11, 4], (3, 3), 1, 1)),
        ("3x3_n1_c5-3_17x16", conv([1, 5, 17, 16, 3], (3, 3), 1, 1)),
        ("1x1_n2_c32-14_9x13", conv([2, 32, 9, 13, 14], (1, 1), 1, 0)),
        ("1x1_n6_c20-29_7x11", conv([6, 20, 7, 11, 29], (1, 1), 1, 0)),
        ("1x1_n1_c1-16_5x3", conv([1, 1, 5, 3, 16], (1, 1), 1, 0)),
        ("1x1_n1_c19-3_17x16", conv([1, 19, 17, 16, 3], (1, 1), 1, 0)),
        ("1x1_n1_c128-32_4x6", conv([1, 128, 4, 6, 32], (1, 1), 1, 0)),
        ("1x1_n2_c1-128_3x5", conv([2, 1, 3, 5, 128], (1, 1), 1, 0)),
    ];
    // 2x2 stride 2 (and 1x1 stride 1) run forward by tap: odd sides, batches of 1 and 3, c_in
    // off the 32-deep k tile (a last tile of 1 and of 5 channels), c_out off both tile widths
    // and over two tiles, more pixels than one 128-row tile; 3x3 stride 2 keeps backward-data.
    // The tap-major versions' all-taps kernels take the 2x2 stride-2 ones (4 c_out columns: 80,
    // 280, 124 and 264, the last tiles partly past them) and one of 8 output channels (the
    // narrow tile, 32 columns).
    let transposed_shapes = [
        ("T2x2_n3_c40-20_5x7", transposed([3, 40, 5, 7, 20], 2, 2, 0)),
        ("T2x2_n1_c6-70_4x3", transposed([1, 6, 4, 3, 70], 2, 2, 0)),
        ("T2x2_n3_c33-31_9x5", transposed([3, 33, 9, 5, 31], 2, 2, 0)),
        ("T2x2_n1_c37-66_3x5", transposed([1, 37, 3, 5, 66], 2, 2, 0)),
        ("T2x2_n2_c12-8_9x8", transposed([2, 12, 9, 8, 8], 2, 2, 0)),
        ("T1x1_n2_c35-12_6x5", transposed([2, 35, 6, 5, 12], 1, 1, 0)),
        ("T3x3s2p1_n2_c5-4_4x5", transposed([2, 5, 4, 5, 4], 3, 2, 1)),
        // Overlapping 2x2 taps (stride 1): backward-data with the 2x2 kernels, which no other
        // case runs since the U-Net's 2x2 stride 2 goes forward by tap.
        ("T2x2s1_n2_c9-70_4x5", transposed([2, 9, 4, 5, 70], 2, 1, 0)),
        // Its forward pass (backward-data's kernel) over 130 x 4 = 520 with the depth split.
        ("T2x2s1_n1_c130-40_4x5", transposed([1, 130, 4, 5, 40], 2, 1, 0)),
    ];
    let mut out = String::new();
    for algo in ConvAlgo::ALL {
        if matches!(algo, ConvAlgo::Tf32MmaHalo | ConvAlgo::Bf16MmaHalo) {
            // Their own kernels alone (elsewhere they run the wide versions').
            for (label, g) in &halo_shapes {
                let d = [g.n, g.c_in, g.h, g.w, g.c_out, g.kh, g.kw, g.stride, g.pad];
                let launch = plan(ConvPass::BackwardWeight, g, algo, 4);
                assert!(launch.kernel.contains("_k3h_"), "{label}: {}", launch.kernel);
                line(&mut out, label, "conv", "backward_weight", d, &launch);
            }
            for (label, g) in &halo_forward_shapes {
                let d = [g.n, g.c_in, g.h, g.w, g.c_out, g.kh, g.kw, g.stride, g.pad];
                for (pass, name) in &PASSES[..2] {
                    let launch = plan(*pass, g, algo, 4);
                    if launch.kernel.contains("_k3h_") {
                        line(&mut out, label, "conv", name, d, &launch);
                    }
                }
            }
            // A 3x3 stride-1 transposed convolution runs forward through the halo backward-data
            // kernel, with and without its bias, and backward-data through the halo forward one.
            let t = transposed([2, 16, 6, 32, 32], 3, 1, 1);
            let d = [t.n, t.c_in, t.h, t.w, t.c_out, t.kh, t.kw, t.stride, t.pad];
            for (pass, name) in &PASSES[..2] {
                let launch = transposed_plan(*pass, &t, algo, 4);
                assert!(launch.kernel.contains("_k3h_"), "{}", launch.kernel);
                line(&mut out, "T3x3s1p1_n2_c16-32_6x32", "transposed", name, d, &launch);
            }
            continue;
        }
        if matches!(
            algo,
            ConvAlgo::Tf32MmaTap | ConvAlgo::Bf16MmaTap | ConvAlgo::Tf32MmaWide | ConvAlgo::Bf16MmaWide
        ) {
            // The wide versions' own kernels alone (elsewhere they run the tap-major ones).
            let wide = matches!(algo, ConvAlgo::Tf32MmaWide | ConvAlgo::Bf16MmaWide);
            for (label, g) in &tap_shapes {
                let d = [g.n, g.c_in, g.h, g.w, g.c_out, g.kh, g.kw, g.stride, g.pad];
                for (pass, name) in PASSES {
                    let launch = plan(pass, g, algo, 4);
                    let tap_major = launch.kernel.contains("_k3t_") || launch.kernel.contains("_k2t_");
                    if tap_major && (!wide || launch.kernel.contains("128")) {
                        line(&mut out, label, "conv", name, d, &launch);
                    }
                }
            }
            // Their passes on the FP32 cores and 2x2 stride-2 transposed forward pass over all
            // four taps (the wide and halo versions run the tap-major one's kernels).
            if !wide {
                for (label, g) in &direct_shapes {
                    let d = [g.n, g.c_in, g.h, g.w, g.c_out, g.kh, g.kw, g.stride, g.pad];
                    for (pass, name) in &PASSES[..2] {
                        let launch = plan(*pass, g, algo, 4);
                        if launch.kernel.contains("d_o") {
                            line(&mut out, label, "conv", name, d, &launch);
                        }
                    }
                }
                for (label, t) in &transposed_shapes {
                    let d = [t.n, t.c_in, t.h, t.w, t.c_out, t.kh, t.kw, t.stride, t.pad];
                    let launch = transposed_plan(ConvPass::Forward, t, algo, 4);
                    if launch.kernel.contains("_k2s2_") {
                        line(&mut out, label, "transposed", "forward", d, &launch);
                    }
                }
            }
            continue;
        }
        for (label, g) in &shapes {
            let d = [g.n, g.c_in, g.h, g.w, g.c_out, g.kh, g.kw, g.stride, g.pad];
            for (pass, name) in PASSES {
                // A small GPU, so that these shapes split their weight-gradient reduction.
                let launch = plan(pass, g, algo, 4);
                line(&mut out, label, "conv", name, d, &launch);
                // The generic kernel size on 3x3 too (bf16-wgmma's on the 5x3 shape alone: it
                // shares its code with tf32-wgmma's, and the emulation time is bounded).
                if launch.kernel.contains("_k3_") && algo != ConvAlgo::Bf16Wgmma {
                    let generic = ConvLaunch {
                        kernel: Box::leak(launch.kernel.replace("_k3_", "_kany_").into_boxed_str()),
                        ..launch
                    };
                    line(&mut out, label, "conv", name, d, &generic);
                }
            }
        }
        // The plan an H100 (132 multiprocessors) gets.
        let (label, g) = &shapes[7];
        let d = [g.n, g.c_in, g.h, g.w, g.c_out, g.kh, g.kw, g.stride, g.pad];
        let launch = plan(ConvPass::BackwardWeight, g, algo, 132);
        line(&mut out, label, "conv", "backward_weight", d, &launch);
        for (label, t) in &transposed_shapes {
            let d = [t.n, t.c_in, t.h, t.w, t.c_out, t.kh, t.kw, t.stride, t.pad];
            for (pass, name) in PASSES {
                line(
                    &mut out,
                    label,
                    "transposed",
                    name,
                    d,
                    &transposed_plan(pass, t, algo, 4),
                );
            }
        }
    }
    out
}

/// The splits field of a plan line (see the harness's header for the fields).
fn splits_of(line: &str) -> usize {
    line.split_whitespace().nth(17).unwrap().parse().unwrap()
}

#[test]
fn launch_plans_split_and_cover_as_intended() {
    let text = plan_file();
    assert!(text.lines().count() >= 80, "{text}");
    // Some weight-gradient launches split their reduction, and some do not.
    let splits: Vec<usize> = text
        .lines()
        .filter(|l| l.contains("backward_weight"))
        .map(splits_of)
        .collect();
    assert!(splits.iter().any(|&s| s > 1) && splits.contains(&1), "{splits:?}");
    // So do the tap-major ones, and the wide ones among them.
    for kernel in [
        "bwd_weight_tf32_k3t",
        "bwd_weight_tf32_k3t_m64n128",
        "bwd_weight_tf32_k3h",
        "bwd_weight_bf16_k3h",
    ] {
        let splits: Vec<usize> = text.lines().filter(|l| l.contains(kernel)).map(splits_of).collect();
        assert!(
            splits.iter().any(|&s| s > 1) && splits.contains(&1),
            "{kernel}: {splits:?}"
        );
    }
    // Forward and backward-data split their depth where their tiles leave most of the block
    // slots empty, and elsewhere not: v2's kernels (the 2x2 one of a transposed forward pass
    // too), the tap-major and the wide ones; v1 and the wgmma kernels never.
    for kernel in [
        "fwd_tf32_k3_n64",
        "bwd_data_bf16_k3_n32",
        "bwd_data_tf32_k2_n64",
        "fwd_tf32_k3t_n64",
        "bwd_data_bf16_k3t_n64",
        "fwd_tf32_k3t_n128",
        "bwd_data_bf16_k3t_n128",
    ] {
        let splits: Vec<usize> = text.lines().filter(|l| l.contains(kernel)).map(splits_of).collect();
        assert!(
            splits.iter().any(|&s| s > 1) && splits.contains(&1),
            "{kernel}: {splits:?}"
        );
    }
    for l in text.lines().filter(|l| !l.contains("backward_weight")) {
        if l.contains("_fp32") || l.contains("_wgmma_") {
            assert_eq!(splits_of(l), 1, "{l}");
        }
    }
    // The tap-major and halo forward and backward-data kernels, and they alone, read packed
    // weights, packed by the kernel of their pass, layout and precision.
    for l in text.lines() {
        let fields: Vec<&str> = l.split_whitespace().collect();
        let (kernel, pack) = (fields[12], fields[19]);
        let halo = kernel.contains("_k3h_");
        let tap_major = kernel.contains("_k3t_") || kernel.contains("_k2t_");
        let packed = (tap_major || halo) && !kernel.contains("bwd_weight");
        assert_eq!(pack != "-", packed, "{l}");
        if packed {
            let precision = if kernel.contains("_tf32_") { "tf32" } else { "bf16" };
            let pass = if kernel.starts_with("conv_fwd") {
                "fwd"
            } else {
                "bwd_data"
            };
            let want = if halo {
                let block = if kernel.contains("_k3h_n64") { "n64" } else { "n32" };
                format!("conv_pack_{pass}_halo_{precision}_{block}")
            } else {
                format!("conv_pack_{pass}_{precision}")
            };
            assert_eq!(pack, want, "{l}");
        }
    }
    for precision in ["tf32", "bf16"] {
        for pass in ["fwd", "bwd_data"] {
            for block in ["n32_w32", "n32_w16", "n64_w32", "n64_w16"] {
                let kernel = format!("conv_{pass}_{precision}_k3h_{block}");
                assert!(text.contains(&kernel), "no case runs {kernel}");
            }
        }
    }
    // Every FP32-core kernel runs, forward and backward-data, both precisions.
    for precision in ["tf32", "bf16"] {
        for pass in ["fwd", "bwd_data"] {
            for variant in ["k1d_o16", "k1d_o32", "k3d_o4", "k3d_o32"] {
                let kernel = format!("conv_{pass}_{precision}_{variant}");
                assert!(text.contains(&kernel), "no case runs {kernel}");
            }
        }
    }
    // Every per-tap transposed forward kernel runs, and the overlapping kernels keep backward-data.
    for kernel in [
        "conv_tfwd_fp32",
        "conv_tfwd_tf32_n64",
        "conv_tfwd_tf32_n32",
        "conv_tfwd_bf16_n64",
        "conv_tfwd_bf16_n32",
        "conv_tfwd_tf32_k2s2_n64",
        "conv_tfwd_tf32_k2s2_n32",
        "conv_tfwd_bf16_k2s2_n64",
        "conv_tfwd_bf16_k2s2_n32",
    ] {
        assert!(text.contains(kernel), "no case runs {kernel}");
    }
    for line in text.lines().filter(|l| l.contains(" transposed forward ")) {
        let overlapping = line.starts_with("T3x3") || line.starts_with("T2x2s1");
        assert_eq!(line.contains("_tfwd_"), !overlapping, "{line}");
    }
    // Both tile widths of every TF32 pass appear, and the wgmma kernels.
    for kernel in [
        "fwd_tf32_k3_n64",
        "fwd_tf32_k3_n32",
        "bwd_data_tf32_k1_n64",
        "bwd_data_tf32_k2_n64",
        "bwd_weight_tf32_k3_m32",
        "fwd_wgmma_tf32_k3_n64",
        "fwd_wgmma_tf32_kany_n64",
        "bwd_data_wgmma_bf16_k2_n64",
        "fwd_wgmma_bf16_k1_n64",
        "fwd_wgmma_tf32_k3_n32",
        "bwd_data_wgmma_bf16_k1_n32",
        "bwd_weight_wgmma_tf32_k3_m32",
        "bwd_weight_wgmma_tf32_k3_m64",
        "bwd_weight_wgmma_tf32_kany_m64",
        "bwd_data_wgmma_bf16_kany_n32",
        "fwd_tf32_k3t_n64",
        "fwd_tf32_k3t_n32",
        "bwd_data_tf32_k3t_n64",
        "bwd_data_tf32_k3t_n32",
        "fwd_bf16_k3t_n64",
        "fwd_bf16_k3t_n32",
        "bwd_data_bf16_k3t_n64",
        "bwd_data_bf16_k3t_n32",
        "bwd_weight_tf32_k3t_m64",
        "bwd_weight_tf32_k3t_m32",
        "bwd_weight_bf16_k3t_m64",
        "bwd_weight_bf16_k3t_m32",
        "fwd_tf32_k3t_n128",
        "bwd_data_tf32_k3t_n128",
        "fwd_bf16_k3t_n128",
        "bwd_data_bf16_k3t_n128",
        "bwd_weight_tf32_k3t_m64n128",
        "bwd_weight_bf16_k3t_m64n128",
        "fwd_tf32_k2t_n64",
        "fwd_tf32_k2t_n32",
        "fwd_tf32_k2t_n128",
        "fwd_bf16_k2t_n64",
        "fwd_bf16_k2t_n32",
        "fwd_bf16_k2t_n128",
        "bwd_weight_tf32_k2t_m64",
        "bwd_weight_tf32_k2t_m32",
        "bwd_weight_tf32_k2t_m64n128",
        "bwd_weight_bf16_k2t_m64",
        "bwd_weight_bf16_k2t_m32",
        "bwd_weight_bf16_k2t_m64n128",
        "bwd_weight_tf32_k3h_m64_w32",
        "bwd_weight_tf32_k3h_m64_w16",
        "bwd_weight_tf32_k3h_m32_w32",
        "bwd_weight_tf32_k3h_m32_w16",
        "bwd_weight_bf16_k3h_m64_w32",
        "bwd_weight_bf16_k3h_m64_w16",
        "bwd_weight_bf16_k3h_m32_w32",
        "bwd_weight_bf16_k3h_m32_w16",
    ] {
        assert!(text.contains(kernel), "no case runs {kernel}");
    }
}

#[test]
fn conv_kernels_match_the_definition_under_emulation() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let Some(exe) = harness(dir.path()) else {
        return;
    };
    // The cases in two halves (alternate lines), run by two processes at once.
    let text = plan_file();
    let runs: Vec<_> = (0..2)
        .map(|half| {
            let plans = dir.path().join(format!("plans{half}.txt"));
            let lines: Vec<&str> = text.lines().skip(half).step_by(2).collect();
            std::fs::write(&plans, lines.join("\n") + "\n").unwrap();
            Command::new(&exe)
                .arg(&plans)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run the emulation harness")
        })
        .collect();
    for child in runs {
        let run = child.wait_with_output().expect("wait for the emulation harness");
        let report = String::from_utf8_lossy(&run.stdout);
        println!("{report}{}", String::from_utf8_lossy(&run.stderr));
        assert!(run.status.success(), "kernels disagree with the definition:\n{report}");
        assert!(report.contains("passed: 0 check(s) failed"));
    }

    // The harness can run every kernel the host code launches with ConvParams.
    let listed = Command::new(&exe).arg("--kernels").output().unwrap();
    let harness_kernels: BTreeSet<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    for name in conv::kernel_names().into_iter().chain(conv_sm90::kernel_names()) {
        if name != "split_reduce" && name != "plane_sum" {
            assert!(harness_kernels.contains(name), "the harness cannot run {name}");
        }
    }
}
