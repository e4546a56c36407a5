//! Runs [`KernelCall`]s on the CPU: the kernel sources compiled for the host with
//! `kernels/emu/cuda_emu.h` (blocks in turn, their threads as coroutines that switch at barriers,
//! warp collectives and `mma.sync` emulated) and driven by `kernels/emu/runner.cpp`.
//!
//! Tests plan launches with the same host functions the GPU path uses, on addresses of an
//! [`EmuMemory`], run them here and compare the results with the CPU twins. That checks the
//! kernels' logic and the launch plans on machines without a GPU; it says nothing about speed.
//!
//! Every [`EmuMemory::run`] also runs CPU counterparts of compute-sanitizer's memcheck and
//! racecheck:
//! - memory: the runner is built with AddressSanitizer and poisons every byte of the image that
//!   is not inside a live allocation (allocations are exact in bytes, with a red zone of
//!   [`RED_ZONE`] bytes before each one and after the last), and dynamic shared memory is exactly
//!   as long as the launch asks for, so a read or write out of bounds stops the run with ASan's
//!   report, the kernel and launch named. Writes into red zones are also looked for in the
//!   returned image, which catches them even without ASan.
//! - races: the launches run twice, under the forward schedule (blocks and threads in index
//!   order) and the reverse one (blocks in reverse order, and at every phase between barriers
//!   the threads of a block from the last to the first), and the two images must agree byte for
//!   byte, except in allocations made with [`EmuMemory::alloc_unordered`] /
//!   [`EmuMemory::upload_unordered`], whose contents may legitimately depend on the order. A
//!   thread that reads what another thread of its block writes with no barrier in between sees
//!   the write under one schedule and not under the other. A difference is reported with the
//!   first launch after which the images part (found by bisection on prefixes of the launches).
//!
//! Not seen: races between blocks of one launch (blocks still run one after another, only in
//! two orders), and reads of static `__shared__` memory no thread of the block wrote.
//!
//! `LRC_EMU_CHECKS=off` runs the plain runner once, forward, for quick local runs (ignored in
//! CI, where the checks always run). Without libasan the memory checks fall back to the red-zone
//! comparison with one warning, except in CI, where that is an error.
//!
//! Needs a C++20 compiler (`$CXX`, else `g++`). The runner is built once per version of the
//! kernel sources and variant, and kept under the system's temporary folder.

mod image;
mod runner;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use bytemuck::Pod;

use super::cuda::KernelCall;
pub use image::RED_ZONE;
use image::{Allocation, FILL, Layout};
pub use runner::{Variant, compiler, test_runner};

/// Where the memory image is mapped in the runner: an address range x86-64 Linux leaves free
/// (heaps sit near 0x5555_0000_0000, libraries and stacks near 0x7fff_0000_0000).
pub const BASE: u64 = 0x2000_0000_0000;

/// A memory image for emulated launches: device addresses are `BASE` + offset.
pub struct EmuMemory {
    bytes: Vec<u8>,
    layout: Layout,
}

impl Default for EmuMemory {
    fn default() -> EmuMemory {
        EmuMemory {
            bytes: Vec::new(),
            layout: Layout {
                base: BASE,
                allocations: Vec::new(),
            },
        }
    }
}

impl EmuMemory {
    pub fn new() -> EmuMemory {
        EmuMemory::default()
    }

    fn reserve(&mut self, len: usize, ordered: bool) -> u64 {
        let (start, image_len) = Layout::place(self.bytes.len(), len);
        self.bytes.resize(image_len, FILL);
        let addr = BASE + start as u64;
        self.layout.allocations.push(Allocation { addr, len, ordered });
        addr
    }

    /// `len` 32-bit words filled with NaN.
    pub fn alloc(&mut self, len: usize) -> u64 {
        self.reserve(len * 4, true)
    }

    /// A copy of `data`.
    pub fn upload<T: Pod>(&mut self, data: &[T]) -> u64 {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let addr = self.reserve(bytes.len(), true);
        self.range_mut(addr, bytes.len()).copy_from_slice(bytes);
        addr
    }

    /// As [`EmuMemory::alloc`], for a buffer whose contents legitimately depend on the order in
    /// which threads and blocks run (slots claimed with atomics, float atomics): the schedules
    /// are not compared on it. Every use says why the outputs do not depend on that order.
    pub fn alloc_unordered(&mut self, len: usize) -> u64 {
        self.reserve(len * 4, false)
    }

    /// As [`EmuMemory::upload`], for a buffer as in [`EmuMemory::alloc_unordered`].
    pub fn upload_unordered<T: Pod>(&mut self, data: &[T]) -> u64 {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let addr = self.reserve(bytes.len(), false);
        self.range_mut(addr, bytes.len()).copy_from_slice(bytes);
        addr
    }

    /// Overwrites memory at `addr` with `data`.
    pub fn write<T: Pod>(&mut self, addr: u64, data: &[T]) {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        self.range_mut(addr, bytes.len()).copy_from_slice(bytes);
    }

    /// `len` values of type `T` at `addr`.
    pub fn read<T: Pod>(&self, addr: u64, len: usize) -> Vec<T> {
        let start = self.offset(addr, len * size_of::<T>());
        let mut out = vec![T::zeroed(); len];
        bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(&self.bytes[start..start + len * size_of::<T>()]);
        out
    }

    /// The offset of `len` bytes at `addr`, which must lie inside one allocation.
    fn offset(&self, addr: u64, len: usize) -> usize {
        assert!(
            self.layout.holding(addr, len).is_some(),
            "{len} bytes at {addr:#x} are not inside one allocation (from {})",
            self.layout.describe(addr)
        );
        (addr - BASE) as usize
    }

    fn range_mut(&mut self, addr: u64, len: usize) -> &mut [u8] {
        let start = self.offset(addr, len);
        &mut self.bytes[start..start + len]
    }

    /// Runs `calls` in order on this memory, under both schedules with the memory checks (see the
    /// module documentation); the image left is the forward schedule's.
    pub fn run(&mut self, calls: &[KernelCall]) -> Result<(), String> {
        self.run_on(runner()?, checks_on(), calls)
    }

    /// As [`EmuMemory::run`], on `runner` (one of [`test_runner`]), under both schedules when
    /// `checked`, else the forward one alone.
    pub fn run_on(&mut self, runner: &Path, checked: bool, calls: &[KernelCall]) -> Result<(), String> {
        let mut images = self.run_images(runner, checked, calls)?;
        if let [forward, reverse] = &images[..]
            && let Some(difference) = self.layout.schedule_difference(forward, reverse)
        {
            return Err(format!(
                "the emulated launches {} give different results when blocks and threads run in reverse \
                 order (a race between threads of a block, or a dependence on the order of blocks){}: \
                 {difference}. If this buffer's contents may depend on the order, allocate it with \
                 EmuMemory::alloc_unordered and say why the outputs do not.",
                launch_names(calls),
                self.first_diverging_launch(runner, calls)
            ));
        }
        self.bytes = images.swap_remove(0);
        Ok(())
    }

    /// The images `calls` leave on this memory: forward, then reverse when `checked`.
    fn run_images(&self, runner: &Path, checked: bool, calls: &[KernelCall]) -> Result<Vec<Vec<u8>>, String> {
        let names = launch_names(calls);
        let dir = runner::tempdir()?;
        let job_path = dir.join("job.bin");
        let result = self.job(calls).and_then(|job| {
            fs::write(&job_path, &job).map_err(|e| format!("write {}: {e}", job_path.display()))?;
            // Both schedules at once: they are independent processes.
            let schedules: &[(&str, &[&str])] = if checked {
                &[("forward", &[]), ("reverse", &["--reverse"])]
            } else {
                &[("forward", &[])]
            };
            let children: Vec<_> = schedules
                .iter()
                .map(|(name, args)| {
                    let out = dir.join(format!("{name}.bin"));
                    let child = Command::new(runner)
                        .args(*args)
                        .arg(&job_path)
                        .arg(&out)
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .map_err(|e| format!("run {}: {e}", runner.display()));
                    (*name, out, child)
                })
                .collect();
            let mut images = Vec::new();
            for (name, out, child) in children {
                let output = child?
                    .wait_with_output()
                    .map_err(|e| format!("wait for {}: {e}", runner.display()))?;
                images.push(self.result_of(name, &names, &output, fs::read(&out))?);
            }
            Ok(images)
        });
        let _ = fs::remove_dir_all(&dir);
        result
    }

    /// Where the schedules of `calls` first part: the launch after which the images differ while
    /// they agreed before it (found by bisection on prefixes), as " (first after launch 3 of 7,
    /// NAME)", or nothing for a single launch.
    fn first_diverging_launch(&self, runner: &Path, calls: &[KernelCall]) -> String {
        if calls.len() < 2 {
            return String::new();
        }
        let differs = |k: usize| match self.run_images(runner, true, &calls[..k]) {
            Ok(images) => self.layout.schedule_difference(&images[0], &images[1]).is_some(),
            Err(_) => true,
        };
        // Prefix `agree` gives equal images, prefix `differ` does not.
        let (mut agree, mut differ) = (0, calls.len());
        while differ - agree > 1 {
            let mid = (agree + differ) / 2;
            if differs(mid) {
                differ = mid;
            } else {
                agree = mid;
            }
        }
        format!(
            " (first after launch {differ} of {}, {})",
            calls.len(),
            calls[differ - 1].kernel
        )
    }

    /// The job file: image, allocations and launches, as runner.cpp reads them.
    fn job(&self, calls: &[KernelCall]) -> Result<Vec<u8>, String> {
        let mut job = Vec::with_capacity(self.bytes.len() + 64 + calls.len() * 64);
        job.extend_from_slice(b"LRCEMU02");
        job.extend_from_slice(&BASE.to_le_bytes());
        job.extend_from_slice(&(self.bytes.len() as u64).to_le_bytes());
        job.extend_from_slice(&self.bytes);
        job.extend_from_slice(&(self.layout.allocations.len() as u32).to_le_bytes());
        for a in &self.layout.allocations {
            job.extend_from_slice(&a.addr.to_le_bytes());
            job.extend_from_slice(&(a.len as u64).to_le_bytes());
        }
        job.extend_from_slice(&(calls.len() as u32).to_le_bytes());
        for call in calls {
            call.validate().map_err(|e| e.to_string())?;
            let (x, y, z) = call.grid;
            job.extend_from_slice(&(call.kernel.len() as u32).to_le_bytes());
            job.extend_from_slice(call.kernel.as_bytes());
            for v in [x as u32, y as u32, z as u32, call.block, call.shared_bytes] {
                job.extend_from_slice(&v.to_le_bytes());
            }
            job.extend_from_slice(&(call.param_bytes().len() as u32).to_le_bytes());
            job.extend_from_slice(call.param_bytes());
        }
        Ok(job)
    }

    /// The image one schedule's run returned, or why there is none: the runner's failure with
    /// its output (ASan's report names the address; we say which allocation it is near), or a
    /// write into a red zone.
    fn result_of(
        &self,
        schedule: &str,
        names: &str,
        output: &Output,
        image: std::io::Result<Vec<u8>>,
    ) -> Result<Vec<u8>, String> {
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let near = reported_address(&stderr)
                .filter(|&addr| addr < BASE + self.bytes.len() as u64)
                .map(|addr| format!("\nthe address reported, {addr:#x}, is {}", self.layout.describe(addr)))
                .unwrap_or_default();
            return Err(format!(
                "the emulated launches {names} failed under the {schedule} schedule ({}):\n{}{stderr}{near}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
            ));
        }
        let image = image.map_err(|e| format!("read the emulator's output: {e}"))?;
        if image.len() != self.bytes.len() {
            return Err("the emulator returned an image of another size".into());
        }
        if let Some(write) = self.layout.red_zone_write(&self.bytes, &image) {
            return Err(format!(
                "the emulated launches {names} wrote out of bounds under the {schedule} schedule: {write}"
            ));
        }
        Ok(image)
    }
}

/// The kernels of `calls` in order, runs of one kernel counted: [a, b x 12, c].
fn launch_names(calls: &[KernelCall]) -> String {
    let mut runs: Vec<(&str, usize)> = Vec::new();
    for call in calls {
        match runs.last_mut() {
            Some((name, count)) if *name == call.kernel => *count += 1,
            _ => runs.push((call.kernel, 1)),
        }
    }
    let named: Vec<String> = runs
        .iter()
        .map(|&(name, count)| {
            if count > 1 {
                format!("{name} x {count}")
            } else {
                name.to_string()
            }
        })
        .collect();
    format!("[{}]", named.join(", "))
}

/// The address in an AddressSanitizer report ("... on address 0x200000000500 at pc ...") when it
/// lies in the emulated image.
fn reported_address(report: &str) -> Option<u64> {
    let at = report.find("on address 0x")? + "on address 0x".len();
    let hex: String = report[at..].chars().take_while(char::is_ascii_hexdigit).collect();
    u64::from_str_radix(&hex, 16).ok().filter(|&a| a >= BASE)
}

/// Whether [`EmuMemory::run`] checks memory and schedules: yes unless `LRC_EMU_CHECKS=off`
/// outside CI.
pub fn checks_on() -> bool {
    let off = std::env::var("LRC_EMU_CHECKS").as_deref() == Ok("off");
    !off || runner::in_ci()
}

/// The runner [`EmuMemory::run`] uses now (see [`checks_on`]), built on first use.
pub fn runner() -> Result<&'static Path, String> {
    let variant = if checks_on() {
        runner::checked_variant()?
    } else {
        Variant::Plain
    };
    runner::runner(variant)
}

/// The kernels the runner has, with their parameter sizes in bytes.
pub fn registered_kernels() -> Result<Vec<(String, usize)>, String> {
    let out = Command::new(runner()?)
        .arg("--kernels")
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let (name, bytes) = l.split_once(' ')?;
            Some((name.to_string(), bytes.parse().ok()?))
        })
        .collect())
}

/// Whether emulated tests can run here: a C++ compiler is needed, and CI must have one (there a
/// missing compiler fails the test instead of skipping it). `LRC_EMULATOR=off` skips them outside
/// CI: the GPU check sets it, since CI has run them and the GPU machine's time is better spent on
/// the same kernels in hardware.
pub fn available() -> bool {
    let ci = runner::in_ci();
    if !ci && std::env::var("LRC_EMULATOR").as_deref() == Ok("off") {
        eprintln!("skipped: emulation turned off (LRC_EMULATOR=off)");
        return false;
    }
    if compiler().is_some() {
        return true;
    }
    assert!(!ci, "CI must have a C++ compiler to emulate the kernels");
    eprintln!("skipped: no C++ compiler (set CXX)");
    false
}

/// The variant of the runner the memory checks use here: AddressSanitizer, or the plain runner
/// where libasan is missing (outside CI). Test harnesses built from their own sources
/// (tests/cuda_emulated.rs) compile with [`variant_flags`] of it.
pub fn checked_variant() -> Result<Variant, String> {
    runner::checked_variant()
}

/// The extra compiler flags of `variant`.
pub fn variant_flags(variant: Variant) -> &'static [&'static str] {
    variant.flags()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_asan_report_address_is_found() {
        let report = "==1==ERROR: AddressSanitizer: use-after-poison on address 0x200000000900 at pc 0x5 bp";
        assert_eq!(reported_address(report), Some(0x2000_0000_0900));
        assert_eq!(reported_address("SEGV on unknown address 0x000000000010"), None);
    }

    #[test]
    fn runs_of_one_kernel_are_counted_in_the_launch_list() {
        let call = |kernel| KernelCall::new("m", kernel, (1, 1, 1), 32, &0u64);
        let calls = [call("a"), call("b"), call("b"), call("b"), call("a")];
        assert_eq!(launch_names(&calls), "[a, b x 3, a]");
    }

    #[test]
    fn reads_and_writes_stay_inside_one_allocation() {
        let mut mem = EmuMemory::new();
        let a = mem.upload(&[1u32, 2, 3]);
        let b = mem.alloc(2);
        assert_eq!(mem.read::<u32>(a + 4, 2), vec![2, 3]);
        assert!(b - a >= (12 + RED_ZONE) as u64 && b.is_multiple_of(256));
        let past_end = std::panic::catch_unwind(|| mem.read::<u32>(a + 4, 3));
        assert!(past_end.is_err(), "a read past an allocation's end is refused");
    }
}
