//! Builds the runner executable (`kernels/emu/runner.cpp` linked with every kernel file compiled
//! for the host) in one of two variants: plain, or with AddressSanitizer for the memory checks.
//! Each is built once per version of the sources and kept under the system's temporary folder.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// How the runner is compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Plain,
    /// With `-fsanitize=address,alignment`: every access of a kernel is checked, for its bounds
    /// and for its type's alignment (a misaligned `float4` load faults on the GPU; x86 would not
    /// notice).
    AddressSanitizer,
}

impl Variant {
    fn tag(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::AddressSanitizer => "asan",
        }
    }

    /// Compiler flags beyond the common ones. Frame pointers and line tables make ASan's report
    /// name the kernel's source line.
    pub(super) fn flags(self) -> &'static [&'static str] {
        match self {
            Variant::Plain => &[],
            Variant::AddressSanitizer => &[
                "-fsanitize=address,alignment",
                "-fno-sanitize-recover=alignment",
                "-fno-omit-frame-pointer",
                "-g1",
            ],
        }
    }
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

/// Whether this runs in CI, where the emulator must run, with its checks.
pub(super) fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// The variant the memory checks use: AddressSanitizer where the compiler can build and run it.
/// Elsewhere the plain runner, with one warning per process; in CI a missing ASan is an error.
pub fn checked_variant() -> Result<Variant, String> {
    static VARIANT: OnceLock<Result<Variant, String>> = OnceLock::new();
    VARIANT
        .get_or_init(|| {
            // An ASan runner built already shows that ASan works, without a probe.
            let works = match built_runner(Variant::AddressSanitizer) {
                Some(_) => Ok(()),
                None => address_sanitizer_works(),
            };
            match works {
                Ok(()) => Ok(Variant::AddressSanitizer),
                Err(why) if in_ci() => Err(format!("CI must run the emulator with AddressSanitizer: {why}")),
                Err(why) => {
                    // Straight to the process's stderr: the test harness would capture eprintln!.
                    let _ = writeln!(
                        std::io::stderr(),
                        "warning: the kernel emulator runs without its memory checks (AddressSanitizer): {why}"
                    );
                    Ok(Variant::Plain)
                }
            }
        })
        .clone()
}

/// Compiles, links and runs a program that uses ASan's interface (libasan and its header), with
/// the checked runner's flags (the alignment checks need libubsan as well).
fn address_sanitizer_works() -> Result<(), String> {
    let cxx = compiler().ok_or("no C++ compiler (set CXX)")?;
    let dir = tempdir()?;
    let source = dir.join("probe.cpp");
    let exe = dir.join("probe");
    let program = "#include <sanitizer/asan_interface.h>\n\
                   int main() { static char b[64]; ASAN_POISON_MEMORY_REGION(b + 32, 32); \
                   return __asan_address_is_poisoned(b + 40) ? 0 : 1; }\n";
    let result = fs::write(&source, program)
        .map_err(|e| format!("write {}: {e}", source.display()))
        .and_then(|()| {
            let build = Command::new(&cxx)
                .args(Variant::AddressSanitizer.flags())
                .arg("-o")
                .arg(&exe)
                .arg(&source)
                .output()
                .map_err(|e| format!("run {cxx}: {e}"))?;
            if !build.status.success() {
                return Err(format!(
                    "{cxx} {} fails: {}",
                    Variant::AddressSanitizer.flags().join(" "),
                    String::from_utf8_lossy(&build.stderr).trim()
                ));
            }
            let run = Command::new(&exe)
                .env("ASAN_OPTIONS", "detect_leaks=0")
                .output()
                .map_err(|e| format!("run the ASan probe: {e}"))?;
            if run.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "a program built with -fsanitize=address does not run: {}",
                    String::from_utf8_lossy(&run.stderr).trim()
                ))
            }
        });
    let _ = fs::remove_dir_all(&dir);
    result
}

/// The runner of `variant`, built on first use.
pub fn runner(variant: Variant) -> Result<&'static Path, String> {
    static PLAIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    static ASAN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let cell = match variant {
        Variant::Plain => &PLAIN,
        Variant::AddressSanitizer => &ASAN,
    };
    cell.get_or_init(|| {
        let sources = runner_sources()?;
        let units: Vec<PathBuf> = sources
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "cu"))
            .cloned()
            .collect();
        build_runner(variant, &sources, &units)
    })
    .as_deref()
    .map_err(Clone::clone)
}

/// A runner of the kernels in `source` alone (a C++ file that includes common.cuh and declares
/// kernels with LRC_KERNEL), built with `variant`: the tests of the checks plant their bugs in
/// such a file, outside kernels/*.cu, which all ship.
pub fn test_runner(source: &Path, variant: Variant) -> Result<PathBuf, String> {
    let mut sources = runner_sources()?;
    sources.push(source.to_path_buf());
    build_runner(variant, &sources, &[source.to_path_buf()])
}

/// The folder of the runner of `variant` for the sources as they are now.
fn runner_dir(variant: Variant, sources: &[PathBuf]) -> Result<PathBuf, String> {
    Ok(std::env::temp_dir().join(format!(
        "lrc-emu-runner-{}-{}",
        fingerprint(sources, variant.flags())?,
        variant.tag()
    )))
}

/// The runner of `variant` if it is built already (then ASan need not be probed again).
fn built_runner(variant: Variant) -> Option<PathBuf> {
    let exe = runner_dir(variant, &runner_sources().ok()?).ok()?.join("runner");
    exe.exists().then_some(exe)
}

/// A fresh folder under the system's temporary folder.
pub(super) fn tempdir() -> Result<PathBuf, String> {
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

/// FNV-1a over the sources' names and contents and the variant's compiler flags: the runner is
/// rebuilt when any changes.
fn fingerprint(sources: &[PathBuf], flags: &[&str]) -> Result<String, String> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in flags.iter().flat_map(|f| f.bytes().chain([0])) {
        hash = (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
    }
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

/// Builds runner.cpp with `units` (each compiled as its own translation unit), cached by the
/// fingerprint of `sources` (everything the result depends on).
fn build_runner(variant: Variant, sources: &[PathBuf], units: &[PathBuf]) -> Result<PathBuf, String> {
    let cxx = compiler().ok_or("no C++ compiler (set CXX)")?;
    let dir = runner_dir(variant, sources)?;
    let exe = dir.join("runner");
    if exe.exists() {
        return Ok(exe);
    }
    // Build beside the final folder and rename it into place, so that processes building at the
    // same time never see half a runner.
    let staging = tempdir()?;
    let emu_dir = kernel_dir().join("emu");
    let compile = |source: &Path, object: &Path| -> Result<(), String> {
        let out = Command::new(&cxx)
            .args(["-std=c++20", "-O2", "-w"])
            .args(variant.flags())
            .args(["-x", "c++", "-DLRC_EMULATE=1", "-include"])
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
        .args(["-std=c++20", "-O2", "-w"])
        .args(variant.flags())
        .arg("-I")
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
