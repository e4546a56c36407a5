//! The CUDA backend on any machine: opening a device is an error, never a panic, where there is
//! no GPU; the kernels are embedded when nvcc was found; every kernel the host code launches
//! was compiled. GPU behaviour itself is tested in cuda_conv.rs and cuda_runtime.rs.

use std::process::Command;

use lrc::Device;
use lrc::device::cuda::{CudaDevice, conv, conv_sm90};
use lrc::kernels;
use lrc::testing::assert_compiled_for_every_arch;

fn machine_has_driver() -> bool {
    // SAFETY: only probes whether the driver library can be loaded.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

#[test]
fn opening_a_device_never_panics() {
    let result = std::panic::catch_unwind(|| CudaDevice::open(0));
    let opened = result.expect("CudaDevice::open panicked");
    match opened {
        Ok(device) => assert_eq!(device.ordinal(), 0),
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert!(
                kernels::BUILT || matches!(e, lrc::Error::NoKernels),
                "a build without kernels must say so, got: {e}"
            );
        }
    }
}

#[test]
fn without_a_driver_opening_fails_with_the_reason() {
    if machine_has_driver() {
        return;
    }
    let e = CudaDevice::open(0).expect_err("no driver, yet a device opened");
    let text = e.to_string();
    if kernels::BUILT {
        assert!(text.contains("no CUDA driver"), "unexpected error: {text}");
    } else {
        assert!(text.contains("install-cuda-compiler.sh"), "unexpected error: {text}");
    }
    let (device, reason) = Device::best_available();
    assert_eq!(device, Device::Cpu);
    assert_eq!(reason.as_deref(), Some(text.as_str()));
    assert!(Device::parse("cuda:3").is_err());
}

#[test]
fn kernels_are_embedded_when_nvcc_was_found() {
    let nvcc = env!("LRC_NVCC");
    let built = kernels::BUILT;
    if std::env::var("CI").as_deref() == Ok("true") {
        assert!(built, "CI installs the compiler, so its build must hold the kernels");
    }
    assert_eq!(built, !nvcc.is_empty());
    assert_eq!(kernels::NVCC, nvcc);
    if !kernels::BUILT {
        assert!(!kernels::CPU_ONLY_REASON.is_empty());
        assert!(kernels::MODULES.is_empty());
        return;
    }
    assert!(kernels::NVCC_VERSION.contains("release"), "{}", kernels::NVCC_VERSION);
    let image = kernels::module_image("conv").expect("the conv module is embedded");
    // Every fatbin starts with the fatbin magic 0xBA55ED50, little-endian.
    assert_eq!(image[..4], [0x50, 0xed, 0x55, 0xba], "conv is not a fatbin");
}

#[test]
fn every_kernel_the_host_launches_was_compiled_for_every_architecture() {
    if !kernels::BUILT {
        return;
    }
    assert_compiled_for_every_arch(conv::kernel_names().into_iter().map(|name| ("conv", name)));
    // The wgmma kernels exist for sm_90a, the target their file names, and for nothing else.
    assert_compiled_for_every_arch(
        conv_sm90::kernel_names()
            .into_iter()
            .map(|name| (conv_sm90::MODULE, name)),
    );
    let rows = kernels::parse_ptxas_report(kernels::PTXAS_REPORT).unwrap();
    let sm90_archs: Vec<&str> = rows
        .iter()
        .filter(|r| r.module == conv_sm90::MODULE)
        .map(|r| r.arch.as_str())
        .collect();
    assert!(
        !sm90_archs.is_empty() && sm90_archs.iter().all(|a| *a == "sm_90a"),
        "{sm90_archs:?}"
    );
    assert!(
        rows.iter().all(|r| r.module == conv_sm90::MODULE || r.arch != "sm_90a"),
        "only conv_sm90 is built for sm_90a"
    );
}

#[test]
fn bench_without_a_gpu_is_a_clear_error() {
    if machine_has_driver() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_lrc"))
        .args(["bench", "conv", "--repeats", "1", "--json"])
        .arg(&json)
        .output()
        .expect("run lrc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.starts_with("error: "), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

#[test]
fn bench_lists_its_convolutions_without_a_gpu() {
    let out = Command::new(env!("CARGO_BIN_EXE_lrc"))
        .args(["bench", "conv", "--list", "--batch", "2", "--size", "64"])
        .output()
        .expect("run lrc");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 23, "{text}");
    assert!(text.contains("dec1.up") && text.contains("head"));
}
