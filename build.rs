//! Compiles every `kernels/*.cu` with nvcc into a fatbin (SASS for each target architecture plus
//! PTX for the newest) under `OUT_DIR`, and generates `kernels.rs`, which embeds the images and the
//! ptxas resource report (registers, shared memory, stack, spills per kernel).
//!
//! A file may name its own targets in a line `// lrc-archs: 90a` among its first lines (the
//! architecture-specific sm_90a of the wgmma kernels): it is compiled for those alone, with PTX
//! for the newest, whatever `LRC_CUDA_ARCHS` says.
//!
//! nvcc is looked for in `$NVCC`, then `PATH`, then `$CUDA_HOME/bin`, `$CUDA_PATH/bin`, then
//! `./.cuda/toolkit/bin` (where `scripts/install-cuda-compiler.sh` puts it). With none that runs,
//! or with `LRC_NO_CUDA=1`, the build warns once and produces a CPU-only engine whose CUDA backend
//! answers every call with `Error::NoKernels`. A kernel that fails to compile fails the build.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// SASS targets; PTX is embedded for the last one so that newer GPUs can JIT it.
const DEFAULT_ARCHS: &str = "80,90";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(lrc_no_kernels)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "LRC_NO_CUDA", "LRC_CUDA_ARCHS"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // Only watch the stamp when it exists: a watched path that is missing reruns this script on
    // every build. The installer touches kernels/ instead, which is always watched.
    let stamp = manifest_dir.join(".cuda/toolkit/.lrc-stamp");
    if stamp.exists() {
        println!("cargo::rerun-if-changed={}", stamp.display());
    }

    let sources = kernel_sources(&manifest_dir.join("kernels"));
    let report_path = out_dir.join("ptxas_report.tsv");
    match find_nvcc(&manifest_dir) {
        Ok(nvcc) => {
            let archs = target_archs();
            let mut report = String::from(REPORT_HEADER);
            let mut modules = Vec::new();
            for source in &sources {
                let name = source.file_stem().unwrap().to_string_lossy().into_owned();
                let image = out_dir.join(format!("{name}.fatbin"));
                let own_archs = file_archs(source);
                let file_targets = own_archs.as_ref().unwrap_or(&archs);
                let ptxas_log = compile(&nvcc.path, file_targets, source, &image, &manifest_dir.join("kernels"));
                for usage in parse_ptxas(&ptxas_log) {
                    let _ = writeln!(
                        report,
                        "{name}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        usage.arch,
                        usage.kernel,
                        usage.registers,
                        usage.shared_bytes,
                        usage.stack_bytes,
                        usage.spill_store_bytes,
                        usage.spill_load_bytes
                    );
                }
                modules.push((name, image));
            }
            fs::write(&report_path, &report).expect("write the ptxas report");
            write_generated(&out_dir, Some(&nvcc), &modules, &report_path, "");
            println!("cargo::rustc-env=LRC_NVCC={}", nvcc.path.display());
        }
        Err(reason) => {
            println!(
                "cargo::warning=building without CUDA kernels ({reason}); \
                 run scripts/install-cuda-compiler.sh and rebuild to get them"
            );
            println!("cargo::rustc-cfg=lrc_no_kernels");
            fs::write(&report_path, REPORT_HEADER).expect("write the ptxas report");
            write_generated(&out_dir, None, &[], &report_path, &reason);
            println!("cargo::rustc-env=LRC_NVCC=");
        }
    }
    println!("cargo::rustc-env=LRC_PTXAS_REPORT={}", report_path.display());
}

const REPORT_HEADER: &str =
    "module\tarch\tkernel\tregisters\tshared_bytes\tstack_bytes\tspill_store_bytes\tspill_load_bytes\n";

struct Nvcc {
    path: PathBuf,
    version: String,
}

fn kernel_sources(dir: &Path) -> Vec<PathBuf> {
    let mut sources: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "cu"))
                .collect()
        })
        .unwrap_or_default();
    sources.sort();
    sources
}

fn target_archs() -> Vec<String> {
    let list = env::var("LRC_CUDA_ARCHS").unwrap_or_else(|_| DEFAULT_ARCHS.to_string());
    let archs: Vec<String> = list
        .split(',')
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    if archs.is_empty() || archs.iter().any(|a| !a.chars().all(|c| c.is_ascii_digit())) {
        panic!("LRC_CUDA_ARCHS must be a comma-separated list like 80,90; got {list:?}");
    }
    archs
}

/// The architectures a kernel file names for itself in a `// lrc-archs: 90a, ...` line among
/// its first 10 lines, if it does: digits with an optional architecture-specific `a` suffix.
fn file_archs(source: &Path) -> Option<Vec<String>> {
    let text = fs::read_to_string(source).unwrap_or_else(|e| panic!("read {}: {e}", source.display()));
    let list = text
        .lines()
        .take(10)
        .find_map(|l| l.trim().strip_prefix("// lrc-archs:"))?;
    let archs: Vec<String> = list
        .split(',')
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    let valid = |a: &String| {
        let digits = a.strip_suffix('a').unwrap_or(a);
        !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
    };
    if archs.is_empty() || !archs.iter().all(valid) {
        panic!("{}: bad `// lrc-archs:` line {list:?}", source.display());
    }
    Some(archs)
}

/// The nvcc to use, or why there is none.
fn find_nvcc(manifest_dir: &Path) -> Result<Nvcc, String> {
    if env::var("LRC_NO_CUDA").is_ok_and(|v| !v.is_empty() && v != "0") {
        return Err("LRC_NO_CUDA is set".into());
    }
    if let Ok(explicit) = env::var("NVCC") {
        return probe(Path::new(&explicit)).map_err(|e| format!("NVCC={explicit} is not usable: {e}"));
    }
    let on_path: Vec<PathBuf> = env::var_os("PATH")
        .map(|path| env::split_paths(&path).map(|dir| dir.join("nvcc")).collect())
        .unwrap_or_default();
    if let Some(nvcc) = first_working(&on_path) {
        // Another PATH may hold another nvcc.
        println!("cargo::rerun-if-env-changed=PATH");
        return Ok(nvcc);
    }
    let mut elsewhere: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(|var| env::var(var).ok())
        .map(|root| Path::new(&root).join("bin/nvcc"))
        .collect();
    elsewhere.push(manifest_dir.join(".cuda/toolkit/bin/nvcc"));
    if let Some(nvcc) = first_working(&elsewhere) {
        return Ok(nvcc);
    }
    // An nvcc put on PATH later should be picked up.
    println!("cargo::rerun-if-env-changed=PATH");
    Err("no working nvcc in $NVCC, PATH, $CUDA_HOME, $CUDA_PATH or .cuda/toolkit".into())
}

fn first_working(candidates: &[PathBuf]) -> Option<Nvcc> {
    for candidate in candidates.iter().filter(|c| c.is_file()) {
        match probe(candidate) {
            Ok(nvcc) => return Some(nvcc),
            Err(e) => println!("cargo::warning=skipping {}: {e}", candidate.display()),
        }
    }
    None
}

fn probe(nvcc: &Path) -> Result<Nvcc, String> {
    let output = Command::new(nvcc)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run it: {e}"))?;
    if !output.status.success() {
        return Err(format!("`nvcc --version` exited with {}", output.status));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .lines()
        .find(|l| l.contains("release"))
        .unwrap_or("unknown version")
        .trim()
        .to_string();
    // nvcc finds its siblings relative to its real location, so resolve symlinks.
    let path = fs::canonicalize(nvcc).unwrap_or_else(|_| nvcc.to_path_buf());
    Ok(Nvcc { path, version })
}

/// Compiles one `.cu` file to a fatbin and returns ptxas's verbose log.
fn compile(nvcc: &Path, archs: &[String], source: &Path, image: &Path, include: &Path) -> String {
    let mut cmd = Command::new(nvcc);
    cmd.arg("--fatbin")
        .args(["-O3", "-std=c++17", "-lineinfo", "-Xptxas", "-v", "--threads", "0"])
        .arg("-I")
        .arg(include);
    for arch in archs {
        cmd.arg("-gencode").arg(format!("arch=compute_{arch},code=sm_{arch}"));
    }
    let newest = archs
        .iter()
        .max_by_key(|a| a.trim_end_matches('a').parse::<u32>().unwrap_or(0))
        .unwrap();
    cmd.arg("-gencode")
        .arg(format!("arch=compute_{newest},code=compute_{newest}"));
    cmd.arg("-o").arg(image).arg(source);
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        panic!("nvcc failed on {}:\n{log}", source.display());
    }
    for line in log.lines().filter(|l| l.contains("warning")) {
        println!("cargo::warning={line}");
    }
    log
}

#[derive(Default, Clone)]
struct Usage {
    arch: String,
    kernel: String,
    registers: u32,
    shared_bytes: u32,
    stack_bytes: u32,
    spill_store_bytes: u32,
    spill_load_bytes: u32,
}

/// Reads ptxas `-v` output: for each entry function, "Compiling entry function 'K' for 'sm_XX'",
/// then "N bytes stack frame, N bytes spill stores, N bytes spill loads" and
/// "Used N registers, ..., N bytes smem, ...".
fn parse_ptxas(log: &str) -> Vec<Usage> {
    let mut done = Vec::new();
    let mut current: Option<Usage> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            if let Some(u) = current.take() {
                done.push(u);
            }
            let mut parts = rest.split('\'');
            let kernel = parts.next().unwrap_or_default().to_string();
            let arch = parts.nth(1).unwrap_or_default().to_string();
            current = Some(Usage {
                arch,
                kernel,
                ..Usage::default()
            });
        } else if let Some(u) = current.as_mut() {
            if line.contains("bytes stack frame") {
                u.stack_bytes = number_before(line, "bytes stack frame");
                u.spill_store_bytes = number_before(line, "bytes spill stores");
                u.spill_load_bytes = number_before(line, "bytes spill loads");
            } else if line.contains("Used") && line.contains("registers") {
                u.registers = number_before(line, "registers");
                u.shared_bytes = number_before(line, "bytes smem");
            }
        }
    }
    done.extend(current);
    done
}

/// The integer just before `marker` in `line`, or 0.
fn number_before(line: &str, marker: &str) -> u32 {
    line.find(marker)
        .and_then(|at| line[..at].split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn write_generated(out_dir: &Path, nvcc: Option<&Nvcc>, modules: &[(String, PathBuf)], report: &Path, reason: &str) {
    let mut src = String::from("// Generated by build.rs.\n\n");
    let _ = writeln!(src, "/// Whether CUDA kernels were compiled into this build.");
    let _ = writeln!(src, "pub const BUILT: bool = {};", nvcc.is_some());
    let _ = writeln!(src, "/// The nvcc that compiled them (empty when none was found).");
    let _ = writeln!(
        src,
        "pub const NVCC: &str = {:?};",
        nvcc.map(|n| n.path.display().to_string()).unwrap_or_default()
    );
    let _ = writeln!(src, "/// nvcc's version line.");
    let _ = writeln!(
        src,
        "pub const NVCC_VERSION: &str = {:?};",
        nvcc.map(|n| n.version.clone()).unwrap_or_default()
    );
    let _ = writeln!(src, "/// Why the build holds no kernels (empty when it does).");
    let _ = writeln!(src, "pub const CPU_ONLY_REASON: &str = {reason:?};");
    let _ = writeln!(src, "/// One fatbin per `kernels/*.cu` file, by file stem.");
    let _ = writeln!(src, "pub const MODULES: &[(&str, &[u8])] = &[");
    for (name, image) in modules {
        let _ = writeln!(
            src,
            "    ({name:?}, include_bytes!({:?})),",
            image.display().to_string()
        );
    }
    let _ = writeln!(src, "];");
    let _ = writeln!(
        src,
        "/// ptxas resource usage, tab-separated, one line per kernel and architecture."
    );
    let _ = writeln!(
        src,
        "pub const PTXAS_REPORT: &str = include_str!({:?});",
        report.display().to_string()
    );
    fs::write(out_dir.join("kernels.rs"), src).expect("write kernels.rs");
}
