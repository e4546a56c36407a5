//! Runs [`KernelCall`]s on the CPU: the kernel sources compiled for the host with
//! `kernels/emu/cuda_emu.h` (blocks in turn, their threads as coroutines that switch at barriers,
//! warp collectives and `mma.sync` emulated) and driven by `kernels/emu/runner.cpp`.
//!
//! Tests plan launches with the same host functions the GPU path uses, on addresses of an
//! [`EmuMemory`], run them here and compare the results with the CPU twins. That checks the
//! kernels' logic and the launch plans on machines without a GPU; it says nothing about speed,
//! and races between blocks cannot show (blocks run one after another).
//!
//! Needs a C++20 compiler (`$CXX`, else `g++`). The runner is built once per version of the
//! kernel sources and kept under the system's temporary folder.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use bytemuck::Pod;

use super::cuda::KernelCall;

/// Where the memory image is mapped in the runner: an address range x86-64 Linux leaves free
/// (heaps sit near 0x5555_0000_0000, libraries and stacks near 0x7fff_0000_0000).
pub const BASE: u64 = 0x2000_0000_0000;

/// Allocations are aligned like the device allocator's.
const ALIGN: usize = 256;

/// A memory image for emulated launches: device addresses are `BASE` + offset.
#[derive(Default)]
pub struct EmuMemory {
    bytes: Vec<u8>,
}

impl EmuMemory {
    pub fn new() -> EmuMemory {
        EmuMemory::default()
    }

    fn reserve(&mut self, bytes: usize) -> u64 {
        let start = self.bytes.len().div_ceil(ALIGN) * ALIGN;
        // Fresh memory holds quiet NaNs (as f32), as the device's poisoned buffers do.
        self.bytes.resize(start, 0xff);
        self.bytes.resize(start + bytes.max(1), 0xff);
        BASE + start as u64
    }

    /// `len` 32-bit words filled with NaN.
    pub fn alloc(&mut self, len: usize) -> u64 {
        self.reserve(len * 4)
    }

    /// A copy of `data`.
    pub fn upload<T: Pod>(&mut self, data: &[T]) -> u64 {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let addr = self.reserve(bytes.len());
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

    fn offset(&self, addr: u64, len: usize) -> usize {
        let start = addr.checked_sub(BASE).expect("an address of this memory") as usize;
        assert!(
            start + len <= self.bytes.len(),
            "{len} bytes at {addr:#x} run past the image"
        );
        start
    }

    fn range_mut(&mut self, addr: u64, len: usize) -> &mut [u8] {
        let start = self.offset(addr, len);
        &mut self.bytes[start..start + len]
    }

    /// Runs `calls` in order on this memory.
    pub fn run(&mut self, calls: &[KernelCall]) -> Result<(), String> {
        let runner = runner()?;
        let mut job = Vec::with_capacity(self.bytes.len() + 64 + calls.len() * 64);
        job.extend_from_slice(b"LRCEMU01");
        job.extend_from_slice(&BASE.to_le_bytes());
        job.extend_from_slice(&(self.bytes.len() as u64).to_le_bytes());
        job.extend_from_slice(&self.bytes);
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
        let dir = tempdir()?;
        let job_path = dir.join("job.bin");
        let out_path = dir.join("out.bin");
        fs::write(&job_path, &job).map_err(|e| format!("write {}: {e}", job_path.display()))?;
        let result = Command::new(runner)
            .arg(&job_path)
            .arg(&out_path)
            .output()
            .map_err(|e| format!("run {}: {e}", runner.display()))?;
        let image = fs::read(&out_path);
        let _ = fs::remove_dir_all(&dir);
        if !result.status.success() {
            let names: Vec<&str> = calls.iter().map(|c| c.kernel).collect();
            return Err(format!(
                "the emulated launches {names:?} failed ({}):\n{}{}",
                result.status,
                String::from_utf8_lossy(&result.stdout),
                String::from_utf8_lossy(&result.stderr)
            ));
        }
        let image = image.map_err(|e| format!("read the emulator's output: {e}"))?;
        if image.len() != self.bytes.len() {
            return Err("the emulator returned an image of another size".into());
        }
        self.bytes = image;
        Ok(())
    }
}

fn tempdir() -> Result<PathBuf, String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "lrc-emu-job-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(dir)
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
/// missing compiler fails the test instead of skipping it).
pub fn available() -> bool {
    if compiler().is_some() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI must have a C++ compiler to emulate the kernels"
    );
    eprintln!("skipped: no C++ compiler (set CXX)");
    false
}

/// The C++ compiler, if one runs.
pub fn compiler() -> Option<String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".to_string());
    let works = Command::new(&cxx)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    works.then_some(cxx)
}

/// The runner executable, built on first use.
pub fn runner() -> Result<&'static Path, String> {
    static RUNNER: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    RUNNER.get_or_init(build_runner).as_deref().map_err(Clone::clone)
}

fn kernel_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels")
}

/// Every source the runner is built from: kernels/*.cu, *.cuh and the emulator.
fn runner_sources() -> Result<Vec<PathBuf>, String> {
    let mut sources = Vec::new();
    for dir in [kernel_dir(), kernel_dir().join("emu")] {
        let entries = fs::read_dir(&dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if matches!(ext, "cu" | "cuh") || name == "cuda_emu.h" || name == "runner.cpp" {
                sources.push(path);
            }
        }
    }
    sources.sort();
    Ok(sources)
}

/// FNV-1a over the sources' names and contents: the runner is rebuilt when any changes.
fn fingerprint(sources: &[PathBuf]) -> Result<String, String> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for path in sources {
        let data = fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        for byte in path
            .file_name()
            .unwrap_or_default()
            .as_encoded_bytes()
            .iter()
            .chain(&data)
        {
            hash = (hash ^ *byte as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let mut s = String::new();
    let _ = write!(s, "{hash:016x}");
    Ok(s)
}

fn build_runner() -> Result<PathBuf, String> {
    let cxx = compiler().ok_or("no C++ compiler (set CXX)")?;
    let sources = runner_sources()?;
    let dir = std::env::temp_dir().join(format!("lrc-emu-runner-{}", fingerprint(&sources)?));
    let exe = dir.join("runner");
    if exe.exists() {
        return Ok(exe);
    }
    // Build beside the final folder and rename it into place, so that processes building at the
    // same time never see half a runner.
    let staging = tempdir()?;
    let emu_dir = kernel_dir().join("emu");
    let units: Vec<&PathBuf> = sources
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    let compile = |source: &Path, object: &Path| -> Result<(), String> {
        let out = Command::new(&cxx)
            .args(["-std=c++20", "-O2", "-w", "-x", "c++", "-DLRC_EMULATE=1", "-include"])
            .arg(emu_dir.join("cuda_emu.h"))
            .arg("-I")
            .arg(kernel_dir())
            .arg("-c")
            .arg(source)
            .arg("-o")
            .arg(object)
            .output()
            .map_err(|e| format!("run {cxx}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} does not compile for the emulator:\n{}",
                source.display(),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    let objects: Vec<PathBuf> = units
        .iter()
        .map(|s| staging.join(format!("{}.o", s.file_stem().unwrap_or_default().to_string_lossy())))
        .collect();
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = units
            .iter()
            .zip(&objects)
            .map(|(source, object)| scope.spawn(|| compile(source, object)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("compiler thread panicked".into())))
            .collect()
    });
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    let link = Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-w", "-I"])
        .arg(&emu_dir)
        .arg(emu_dir.join("runner.cpp"))
        .args(&objects)
        .arg("-o")
        .arg(staging.join("runner"))
        .output()
        .map_err(|e| format!("run {cxx}: {e}"))?;
    if !link.status.success() {
        return Err(format!(
            "the emulator runner does not build:\n{}",
            String::from_utf8_lossy(&link.stderr)
        ));
    }
    if fs::rename(&staging, &dir).is_err() && !exe.exists() {
        return Err(format!("cannot move the runner to {}", dir.display()));
    }
    let _ = fs::remove_dir_all(&staging);
    Ok(exe)
}
