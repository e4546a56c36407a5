//! The kernel emulator's runner (`lrc::device::emu`): it holds every kernel the build compiles,
//! and a plan of launches made by the host code runs on its memory image as on a device.

use lrc::device::cuda::conv::channel_sum_calls;
use lrc::device::emu::{self, EmuMemory};
use lrc::kernels;

#[test]
fn every_compiled_kernel_is_registered_with_the_emulator() {
    if !emu::available() {
        return;
    }
    let registered = emu::registered_kernels().unwrap_or_else(|e| panic!("{e}"));
    let names: std::collections::BTreeSet<&str> = registered.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), registered.len(), "a kernel is registered twice");
    let report = kernels::parse_ptxas_report(kernels::PTXAS_REPORT).expect("the embedded report parses");
    if kernels::BUILT {
        assert!(!report.is_empty());
    }
    for row in &report {
        assert!(
            names.contains(row.kernel.as_str()),
            "{} of {}.cu is compiled for the GPU but not registered with the emulator (declare it with LRC_KERNEL)",
            row.kernel,
            row.module
        );
    }
}

#[test]
fn a_planned_channel_sum_runs_on_the_emulator() {
    if !emu::available() {
        return;
    }
    let (n, c, plane) = (3, 5, 77);
    let x: Vec<f32> = (0..n * c * plane)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let mut mem = EmuMemory::new();
    let xa = mem.upload(&x);
    let scratch = mem.alloc(n * c);
    let out = mem.alloc(c);
    let calls = channel_sum_calls(n, c, plane, xa, scratch, out).expect("plan");
    mem.run(&calls).unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<f32> = mem.read(out, c);
    for (ch, g) in got.iter().enumerate() {
        let want: f64 = (0..n)
            .flat_map(|i| (0..plane).map(move |k| (i * c + ch) * plane + k))
            .map(|e| x[e] as f64)
            .sum();
        // 231 terms of at most 2 in f32: the rounding error is below 1e-4.
        assert!((*g as f64 - want).abs() <= 1e-4, "channel {ch}: got {g}, want {want}");
    }
}

#[test]
fn a_failing_launch_reports_the_kernel() {
    if !emu::available() {
        return;
    }
    let mut mem = EmuMemory::new();
    let out = mem.alloc(4);
    // Grid x larger than a block count the emulator would accept is fine; a wrong parameter size
    // is not: plane_sum takes PlaneSumParams, not SplitReduceParams.
    let bad = lrc::device::cuda::KernelCall::new(
        "conv",
        "plane_sum",
        (1, 1, 1),
        256,
        &lrc::device::cuda::params::SplitReduceParams {
            out,
            ..Default::default()
        },
    );
    let err = mem.run(&[bad]).expect_err("a parameter size mismatch is an error");
    assert!(err.contains("plane_sum") && err.contains("parameter bytes"), "{err}");
}

#[test]
fn a_launch_wider_than_the_kernels_launch_bounds_is_refused() {
    if !emu::available() {
        return;
    }
    let (n, c, plane) = (1, 2, 8);
    let mut mem = EmuMemory::new();
    let x = mem.upload(&vec![1.0f32; n * c * plane]);
    let scratch = mem.alloc(n * c);
    let out = mem.alloc(c);
    let mut calls = channel_sum_calls(n, c, plane, x, scratch, out).expect("plan");
    mem.run(&calls).unwrap_or_else(|e| panic!("the plan as made runs: {e}"));
    // plane_sum is declared with __launch_bounds__(256): on the GPU a wider block fails to launch.
    calls[0].block = 512;
    let err = mem
        .run(&calls)
        .expect_err("a block wider than the launch bounds is an error");
    assert!(err.contains("__launch_bounds__ allow 256"), "{err}");
}
