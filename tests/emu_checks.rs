//! The emulator's own checks (`lrc::device::emu`), the CPU counterparts of compute-sanitizer's
//! memcheck and racecheck, each shown to catch a bug planted in `kernels/emu/checks_emu_test.cpp`
//! (built into a runner of its own) and to pass the correct control beside it: reads and writes
//! one past an allocation's end, dynamic and static shared memory overruns (AddressSanitizer,
//! with the kernel and launch named), a write past the end without ASan (the red zones), a
//! shared-memory race and a dependence on the order of blocks (the forward and reverse
//! schedules disagree), a buffer declared unordered left out of that comparison, and the
//! warpgroup-MMA (wgmma) rules: a missing wgmma.fence, a warpgroup that does not reach a
//! collective together or with the same operands, a group never waited for.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lrc::device::cuda::KernelCall;
use lrc::device::emu::{self, EmuMemory, Variant};

/// The planted kernels' parameter struct (PlantedParams in checks_emu_test.cpp).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Planted {
    input: u64,
    out: u64,
    counter: u64,
    n: i32,
    pad: i32,
}
const _: () = assert!(size_of::<Planted>() == 32);

fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/emu/checks_emu_test.cpp")
}

/// The planted kernels' runner of `variant`, built once per process.
fn runner(variant: Variant) -> &'static Path {
    static PLAIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    static ASAN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let cell = match variant {
        Variant::Plain => &PLAIN,
        Variant::AddressSanitizer => &ASAN,
    };
    cell.get_or_init(|| emu::test_runner(&source(), variant))
        .as_deref()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The ASan runner, or None (with a note) where libasan is missing outside CI.
fn asan_runner() -> Option<&'static Path> {
    if !emu::available() {
        return None;
    }
    match emu::checked_variant().unwrap_or_else(|e| panic!("{e}")) {
        Variant::AddressSanitizer => Some(runner(Variant::AddressSanitizer)),
        Variant::Plain => {
            eprintln!("skipped: no AddressSanitizer here");
            None
        }
    }
}

fn call(kernel: &'static str, blocks: usize, threads: u32, p: Planted) -> KernelCall {
    KernelCall::new("checks_emu_test", kernel, (blocks, 1, 1), threads, &p)
}

/// n inputs 1, 2, .. and n NaN outputs.
fn buffers(mem: &mut EmuMemory, n: usize) -> Planted {
    let input: Vec<f32> = (1..=n).map(|i| i as f32).collect();
    Planted {
        input: mem.upload(&input),
        out: mem.alloc(n),
        n: n as i32,
        ..Default::default()
    }
}

fn expect_error(result: Result<(), String>, needles: &[&str]) -> String {
    let err = result.expect_err("the planted bug is caught");
    for needle in needles {
        assert!(err.contains(needle), "the report lacks {needle:?}:\n{err}");
    }
    err
}

#[test]
fn correct_kernels_pass_every_check() {
    let Some(runner) = asan_runner() else { return };
    let mut mem = EmuMemory::new();
    let p = buffers(&mut mem, 100);
    let shared = call("planted_shared_with_barrier", 3, 64, p);
    mem.run_on(runner, true, &[call("planted_copy", 2, 64, p), shared])
        .unwrap_or_else(|e| panic!("{e}"));
    let out: Vec<f32> = mem.read(p.out, 100);
    assert_eq!(out[..3], [1.0, 2.0, 3.0]);
    assert_eq!(out[99], 100.0);
}

#[test]
fn a_read_one_past_the_end_is_caught_with_the_kernel_and_launch_named() {
    let Some(runner) = asan_runner() else { return };
    let mut mem = EmuMemory::new();
    // 64 elements: a whole block, so that the read past the end is the last thread's.
    let p = buffers(&mut mem, 64);
    let calls = [call("planted_copy", 1, 64, p), call("planted_read_past_end", 1, 64, p)];
    expect_error(
        mem.run_on(runner, true, &calls),
        &[
            "AddressSanitizer",
            "READ of size 4",
            "kernel planted_read_past_end (launch 2 of 2",
            "thread 63",
            "0 bytes past the end of allocation #0",
        ],
    );
}

#[test]
fn a_write_one_past_the_end_is_caught() {
    let Some(runner) = asan_runner() else { return };
    let mut mem = EmuMemory::new();
    let p = buffers(&mut mem, 70);
    expect_error(
        mem.run_on(runner, true, &[call("planted_write_past_end", 2, 64, p)]),
        &[
            "WRITE of size 4",
            "kernel planted_write_past_end (launch 1 of 1",
            "block (1,0,0), thread 6",
            "0 bytes past the end of allocation #1",
        ],
    );
}

#[test]
fn a_misaligned_vector_load_is_caught() {
    let Some(runner) = asan_runner() else { return };
    let mut mem = EmuMemory::new();
    let p = buffers(&mut mem, 64);
    expect_error(
        mem.run_on(runner, true, &[call("planted_misaligned_float4", 1, 64, p)]),
        &["misaligned address", "float4", "requires 16 byte alignment"],
    );
}

#[test]
fn a_write_past_the_end_is_caught_without_asan_by_the_red_zones() {
    if !emu::available() {
        return;
    }
    let mut mem = EmuMemory::new();
    let p = buffers(&mut mem, 70);
    expect_error(
        mem.run_on(
            runner(Variant::Plain),
            true,
            &[call("planted_write_past_end", 2, 64, p)],
        ),
        &["wrote out of bounds", "0 bytes past the end of allocation #1"],
    );
}

#[test]
fn a_dynamic_shared_memory_overrun_is_caught() {
    let Some(runner) = asan_runner() else { return };
    let mut mem = EmuMemory::new();
    let p = buffers(&mut mem, 40);
    let overrun = call("planted_dynamic_shared_overrun", 1, 64, p).with_shared(40 * 4);
    expect_error(
        mem.run_on(runner, true, &[overrun]),
        &[
            "heap-buffer-overflow",
            "0 bytes to the right of 160-byte region",
            "kernel planted_dynamic_shared_overrun",
            "thread 39",
        ],
    );
    // The same launch with one float more of shared memory is correct.
    let enough = call("planted_dynamic_shared_overrun", 1, 64, p).with_shared(41 * 4);
    mem.run_on(runner, true, &[enough]).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_static_shared_memory_overrun_is_caught() {
    let Some(runner) = asan_runner() else { return };
    let mut mem = EmuMemory::new();
    let p = buffers(&mut mem, 32);
    expect_error(
        mem.run_on(runner, true, &[call("planted_static_shared_overrun", 1, 32, p)]),
        &[
            "global-buffer-overflow",
            "kernel planted_static_shared_overrun",
            "thread 31",
        ],
    );
}

#[test]
fn a_shared_memory_race_between_threads_is_caught() {
    if !emu::available() {
        return;
    }
    // The schedules, not ASan, find it: the plain runner will do.
    let mut mem = EmuMemory::new();
    let p = buffers(&mut mem, 3);
    let q = buffers(&mut mem, 3);
    let calls = [
        call("planted_copy", 1, 64, q),
        call("planted_shared_race", 3, 64, p),
        call("planted_copy", 1, 64, q),
    ];
    let err = expect_error(
        mem.run_on(runner(Variant::Plain), true, &calls),
        &[
            "[planted_copy, planted_shared_race, planted_copy]",
            "reverse order",
            "(first after launch 2 of 3, planted_shared_race)",
            "allocation #1",
        ],
    );
    // Forward, thread 1 reads what thread 0 wrote; reverse, what the block before it left.
    assert!(
        err.contains("the word at byte 0 is 0x3f800000 (1.0 as f32, 1065353216 as i32) forward"),
        "{err}"
    );
    // Without the checks (one schedule) the race goes unseen, as it did before them.
    let mut mem = EmuMemory::new();
    let p = buffers(&mut mem, 3);
    mem.run_on(runner(Variant::Plain), false, &[call("planted_shared_race", 3, 64, p)])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(mem.read::<f32>(p.out, 3), [1.0, 2.0, 3.0]);
}

#[test]
fn a_warp_running_ahead_past_a_missing_barrier_is_caught() {
    if !emu::available() {
        return;
    }
    // Both warps write between two warp collectives. Were the warps released from a collective
    // together, every write would land before any read in both schedules; one warp at a time,
    // the first in schedule order reads its partner's word before the other warp writes it.
    let mut mem = EmuMemory::new();
    let p = buffers(&mut mem, 64);
    expect_error(
        mem.run_on(
            runner(Variant::Plain),
            true,
            &[call("planted_warp_runs_ahead", 1, 64, p)],
        ),
        &["reverse order", "planted_warp_runs_ahead"],
    );
    // With the barrier, both schedules agree: thread t reads in[(t ^ 32) ^ 1].
    let mut mem = EmuMemory::new();
    let p = buffers(&mut mem, 64);
    mem.run_on(runner(Variant::Plain), true, &[call("planted_warp_waits", 1, 64, p)])
        .unwrap_or_else(|e| panic!("{e}"));
    let out: Vec<f32> = mem.read(p.out, 64);
    let want: Vec<f32> = (0..64).map(|t| ((t ^ 32 ^ 1) + 1) as f32).collect();
    assert_eq!(out, want);
}

#[test]
fn a_dependence_on_the_order_of_blocks_is_caught() {
    if !emu::available() {
        return;
    }
    let mut mem = EmuMemory::new();
    let p = buffers(&mut mem, 1);
    expect_error(
        mem.run_on(
            runner(Variant::Plain),
            true,
            &[call("planted_last_block_wins", 5, 64, p)],
        ),
        &[
            "reverse order",
            "allocation #1",
            "(4.0 as f32, 1082130432 as i32) forward and 0x00000000 (0.0 as f32, 0 as i32) reverse",
        ],
    );
}

#[test]
fn buffers_declared_unordered_are_left_out_of_the_comparison() {
    if !emu::available() {
        return;
    }
    let n = 100;
    let run = |unordered: bool| {
        let mut mem = EmuMemory::new();
        let mut p = buffers(&mut mem, n);
        p.counter = mem.upload(&[0i32]);
        if unordered {
            // The slots' order depends on the schedule; what is checked is the set they hold.
            p.out = mem.alloc_unordered(n);
        }
        let result = mem.run_on(runner(Variant::Plain), true, &[call("planted_claimed_slots", 2, 64, p)]);
        (result, mem, p)
    };
    expect_error(run(false).0, &["reverse order", "allocation #1"]);
    let (result, mem, p) = run(true);
    result.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(mem.read::<i32>(p.counter, 1), [n as i32]);
    let mut slots: Vec<f32> = mem.read(p.out, n);
    slots.sort_by(f32::total_cmp);
    assert!(slots.iter().enumerate().all(|(i, &s)| s == i as f32), "{slots:?}");
}

/// One warpgroup's wgmma in `mode` (see planted_wgmma): the run's result and the 128 outputs.
fn wgmma_run(mode: i32) -> (Result<(), String>, Vec<f32>) {
    let mut mem = EmuMemory::new();
    let mut p = buffers(&mut mem, 128);
    p.pad = mode;
    let call = call("planted_wgmma", 1, 128, p).with_shared(2048);
    let result = mem.run_on(runner(Variant::Plain), true, &[call]);
    let out = if result.is_ok() {
        mem.read(p.out, 128)
    } else {
        Vec::new()
    };
    (result, out)
}

#[test]
fn wgmma_used_right_multiplies_and_misuse_is_caught() {
    if !emu::available() {
        return;
    }
    let (result, out) = wgmma_run(0);
    result.unwrap_or_else(|e| panic!("{e}"));
    assert!(out.iter().all(|&v| v == 8.0), "{out:?}");
    expect_error(
        wgmma_run(1).0,
        &["wgmma.mma_async without a wgmma.fence", "planted_wgmma"],
    );
    expect_error(wgmma_run(2).0, &["different collectives or operands"]);
    expect_error(wgmma_run(3).0, &["not committed or not waited for"]);
    expect_error(wgmma_run(4).0, &["different collectives or operands"]);
}
