//! Runs the CUDA kernel sources on the CPU through `kernels/emu/` (blocks run in turn, their
//! threads as coroutines switching at barriers; warp shuffles and mma.sync emulated with the PTX
//! fragment layout) and checks every convolution kernel variant against a direct
//! double-precision definition, on awkward shapes, with NaN-poisoned outputs. Needs a C++20
//! compiler (`$CXX` or g++), not a GPU; it checks the kernels' logic, while tests/cuda_conv.rs
//! checks them on the hardware.

use std::path::Path;
use std::process::Command;

fn compiler() -> Option<String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".to_string());
    let works = Command::new(&cxx)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    works.then_some(cxx)
}

#[test]
fn conv_kernels_match_the_definition_under_emulation() {
    let Some(cxx) = compiler() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must have a C++ compiler to emulate the kernels"
        );
        eprintln!("skipped: no C++ compiler (set CXX)");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("temporary directory");
    let exe = dir.path().join("conv_emu_test");
    let build = Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-Wall", "-Wno-unknown-pragmas", "-I"])
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
    let run = Command::new(&exe).output().expect("run the emulation harness");
    let report = String::from_utf8_lossy(&run.stdout);
    println!("{report}{}", String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "kernels disagree with the definition:\n{report}");
    assert!(report.contains("passed: 0 check(s) failed"));
}
