//! Parity of the fused LRC loss on a GPU (`Tape::local_contrast_loss` on CUDA tensors, which runs
//! `kernels/local_contrast.cu`) with the same op on CPU f64 tensors holding the same f32 values:
//! loss and both gradients, every combination of the fused pixel normalisation and the mean
//! renormalisation, images with no region, a single region, duplicate samples, K = 512 with
//! D = 128 (the sizes the issue names) and beyond, and the errors for what the kernels refuse.
//! Every fresh device buffer is poisoned with NaN, and every pixel that no sample hits must get
//! a gradient of exactly 0.
//!
//! Tolerances, from f32 rounding (unit roundoff u = 2^-24) on inputs with |x| <= 1, as in
//! tests/emu_local_contrast.rs:
//! - logit error e = (2D + 2N + 8) u / t (the region means' and one dot product's summation
//!   error over t, every |mean| <= 1); loss atol = 2e + 2K u (a log-sum-exp of 2K - 1 terms
//!   minus a logit, averaged), rtol 1e-6.
//! - gradients: atol = 8 (e + K u) times the largest reference gradient (softmax weights off by
//!   at most 2e relative, summed over 2K regions, through the normalisation Jacobians), rtol
//!   1e-5.
//!
//! The GPU's expf / logf are within 2 ulp of the correctly rounded results, far inside e.
//!
//! BF16 inputs (`local_contrast_bf16` on maps converted on the device by
//! `pointwise::bf16_from_f32`; there is no BF16 tensor): the reference is the same CPU op in
//! f64 on the inputs rounded to BF16 and widened, exactly the values the kernels load; from the
//! load on the kernels do the FP32 arithmetic of the FP32 path, so the same tolerances apply
//! (unit inputs are unit to BF16 precision only, |x| <= 1 + 2^-8: under 1 % on the bounds). On
//! BF16-representable inputs the BF16 kernels must give the FP32 kernels' bits exactly, and on
//! generic inputs a different loss.
//!
//! These tests need a CUDA GPU: `cargo test --release -- --include-ignored`. The last three need
//! none: the kernels are compiled for every architecture, and `lrc bench lrc-loss` lists its
//! cases anywhere and is a clear error without a GPU.

use std::process::Command;
use std::sync::Arc;

use local_contrast_common::{
    Case, Got, Want, all_options, as_loaded, assert_matches, describe, draw, inputs, limit_case, rounded, small_cases,
    training_sized_case,
};
use lrc::device::cuda::local_contrast::{
    EmbeddingType, MAX_CHANNELS, UploadedSamples, all_kernel_names, local_contrast_backward, local_contrast_bf16,
    local_contrast_forward, local_contrast_forward_as, local_contrast_forward_uploaded,
};
use lrc::device::cuda::pointwise::bf16_from_f32;
use lrc::device::cuda::{CudaDevice, CudaStorage};
use lrc::ops::local_contrast::{LocalLossConfig, RegionSamples};
use lrc::rng::Rng;
use lrc::testing::{assert_close, assert_compiled_for_every_arch, widen};
use lrc::{Device, Tape, Tensor, Var, kernels};

mod local_contrast_common;

fn device() -> Arc<CudaDevice> {
    let device = CudaDevice::open(0).unwrap_or_else(|e| panic!("these tests need a CUDA GPU: {e}"));
    device.set_poison_fresh_buffers(true);
    device
}

/// Loss and gradients of `Tape::local_contrast_loss` with f_q, f_p as `device` tensors built
/// from `f` (as f64 on the CPU, as f32 on CUDA).
fn run(device: &Device, case: &Case, f: [&[f32]; 2], samples: &[RegionSamples], cfg: LocalLossConfig) -> Want {
    let shape = case.dims().to_vec();
    let tensor = |v: &[f32]| match device {
        Device::Cpu => Tensor::from_vec(shape.clone(), widen(v)).unwrap(),
        Device::Cuda(_) => Tensor::from_vec(shape.clone(), v.to_vec())
            .unwrap()
            .to_device(device)
            .unwrap(),
    };
    let mut tape = Tape::new();
    let q = tape.leaf(tensor(f[0]));
    let p = tape.leaf(tensor(f[1]));
    let loss = tape.local_contrast_loss(q, p, samples, cfg).unwrap();
    assert_eq!(tape.value(loss).device(), *device);
    assert_eq!(tape.value(loss).shape(), [1]);
    let value = tape.value(loss).scalar().unwrap();
    let grads = tape.backward(loss).unwrap();
    let grad = |v: Var| {
        let g = grads.get(v).unwrap();
        assert_eq!(g.device(), *device);
        g.to_f64_vec().unwrap()
    };
    (value, grad(q), grad(p))
}

/// The kernels of `input` on the GPU against the CPU twin on one case with one configuration.
fn check(input: EmbeddingType, gpu: &Arc<CudaDevice>, case: &Case, cfg: LocalLossConfig) {
    let (samples, fq, fp) = inputs(case, !cfg.normalize_pixels);
    let (rq, rp) = (as_loaded(input, &fq), as_loaded(input, &fp));
    let want = run(&Device::Cpu, case, [&rq, &rp], &samples, cfg);
    let got: Got = match input {
        EmbeddingType::F32 => {
            let (loss, q, p) = run(&Device::Cuda(gpu.clone()), case, [&fq, &fp], &samples, cfg);
            let narrow = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
            (loss as f32, narrow(q), narrow(p))
        }
        EmbeddingType::Bf16 => run_bf16(gpu, case, [&fq, &fp], &samples, cfg, 1.0),
    };
    assert_matches(&describe(case, input, cfg), case, &samples, &got, &want);
}

/// Every combination of the two options on one case, the embeddings in element type `input`.
fn check_all_options(input: EmbeddingType, case: &Case) {
    let gpu = device();
    for cfg in all_options(case) {
        check(input, &gpu, case, cfg);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn small_batches_with_empty_images_single_regions_and_chunk_boundaries() {
    for case in small_cases() {
        check_all_options(EmbeddingType::F32, &case);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_training_sized_batch() {
    check_all_options(EmbeddingType::F32, &training_sized_case());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_limits_k_512_and_d_128_and_more_regions_beyond() {
    check_all_options(EmbeddingType::F32, &limit_case());
    // K is not bounded by the kernels (the K x K blocks are streamed 32 regions at a time).
    let case = Case {
        name: "K = 700",
        d: 32,
        h: 40,
        w: 40,
        regions: vec![700],
        samples: vec![4],
        temperature: 0.2,
        seed: 5,
    };
    check(EmbeddingType::F32, &device(), &case, case.config(false, true));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn results_are_bitwise_reproducible() {
    let gpu = Device::Cuda(device());
    let case = Case {
        name: "repeat",
        d: 32,
        h: 32,
        w: 32,
        regions: vec![100, 60],
        samples: vec![32, 32],
        temperature: 0.07,
        seed: 6,
    };
    let cfg = case.config(true, true);
    let (samples, fq, fp) = inputs(&case, false);
    let first = run(&gpu, &case, [&fq, &fp], &samples, cfg);
    for _ in 0..3 {
        let again = run(&gpu, &case, [&fq, &fp], &samples, cfg);
        assert_eq!(again.0.to_bits(), first.0.to_bits());
        assert!(again.1.iter().zip(&first.1).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(again.2.iter().zip(&first.2).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

/// Samples uploaded ahead of the forward pass give the bits of samples uploaded by it, reused
/// for a second batch of embeddings; samples drawn for another image size are refused.
#[test]
#[ignore = "needs a CUDA GPU"]
fn samples_uploaded_ahead_give_the_same_bits() {
    let gpu = device();
    let case = Case {
        name: "uploaded",
        d: 16,
        h: 12,
        w: 10,
        regions: vec![9, 0, 33],
        samples: vec![5, 5, 5],
        temperature: 0.1,
        seed: 8,
    };
    let cfg = case.config(true, false);
    let (samples, fq, fp) = inputs(&case, false);
    let uploaded = UploadedSamples::new(&gpu, &samples, case.h * case.w).unwrap();
    for scale in [1.0f32, -0.5] {
        let scaled = |v: &[f32]| v.iter().map(|x| x * scale).collect::<Vec<f32>>();
        let (q, p) = (
            CudaStorage::from_host(&gpu, &scaled(&fq)).unwrap(),
            CudaStorage::from_host(&gpu, &scaled(&fp)).unwrap(),
        );
        let (want, _) = local_contrast_forward(&q, &p, case.dims(), &samples, &cfg).unwrap();
        let (got, _) =
            local_contrast_forward_uploaded(EmbeddingType::F32, &q, &p, case.dims(), &uploaded, &cfg).unwrap();
        assert_eq!(
            got.to_host().unwrap()[0].to_bits(),
            want.to_host().unwrap()[0].to_bits()
        );
    }
    let other = UploadedSamples::new(&gpu, &samples, case.h * case.w + 1).unwrap();
    let q = CudaStorage::from_host(&gpu, &fq).unwrap();
    let e = local_contrast_forward_uploaded(EmbeddingType::F32, &q, &q, case.dims(), &other, &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("samples drawn for images of 121 pixels"), "{e}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_backward_pass_reads_the_upstream_gradient_on_the_device() {
    let gpu = device();
    let case = Case {
        name: "upstream",
        d: 24,
        h: 9,
        w: 11,
        regions: vec![12, 5],
        samples: vec![6, 9],
        temperature: 0.25,
        seed: 7,
    };
    let cfg = case.config(false, true);
    let (samples, fq, fp) = inputs(&case, false);
    let (_, want_q, want_p) = run(&Device::Cpu, &case, [&fq, &fp], &samples, cfg);
    let (q, p) = (
        CudaStorage::from_host(&gpu, &fq).unwrap(),
        CudaStorage::from_host(&gpu, &fp).unwrap(),
    );
    let (loss, saved) = local_contrast_forward(&q, &p, case.dims(), &samples, &cfg).unwrap();
    assert_eq!(loss.len(), 1);
    let upstream = -0.6;
    let g = CudaStorage::full(&gpu, 1, upstream as f32).unwrap();
    let (gq, gp) = local_contrast_backward(&saved, &q, &p, &g).unwrap();
    let scaled = |v: &[f64]| v.iter().map(|x| x * upstream).collect::<Vec<f64>>();
    let largest = want_q.iter().chain(&want_p).fold(0.0f64, |m, x| m.max(x.abs())) * 0.6;
    let (_, tol) = case.tolerances(largest);
    assert_close("grad_q x -0.6", &gq.to_host().unwrap(), &scaled(&want_q), tol);
    assert_close("grad_p x -0.6", &gp.to_host().unwrap(), &scaled(&want_p), tol);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_forward_without_gradients_gives_the_same_loss() {
    let gpu = Device::Cuda(device());
    let case = Case {
        name: "no grad",
        d: 16,
        h: 8,
        w: 8,
        regions: vec![9, 3],
        samples: vec![4, 4],
        temperature: 0.1,
        seed: 8,
    };
    let cfg = case.config(false, false);
    let (samples, fq, fp) = inputs(&case, true);
    let (with_grad, _, _) = run(&gpu, &case, [&fq, &fp], &samples, cfg);
    let mut tape = Tape::no_grad();
    let shape = case.dims().to_vec();
    let to_gpu = |v: &Vec<f32>| {
        Tensor::from_vec(shape.clone(), v.clone())
            .unwrap()
            .to_device(&gpu)
            .unwrap()
    };
    let q = tape.constant(to_gpu(&fq));
    let p = tape.constant(to_gpu(&fp));
    let loss = tape.local_contrast_loss(q, p, &samples, cfg).unwrap();
    assert_eq!(tape.value(loss).scalar().unwrap().to_bits(), with_grad.to_bits());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn what_the_kernels_refuse_is_an_error() {
    let gpu = Device::Cuda(device());
    let samples = vec![draw(&mut Rng::new(9), 2, 3, 16)];
    let cfg = LocalLossConfig::default();
    let on_gpu = |d: usize| {
        Tensor::from_vec(vec![1, d, 4, 4], vec![0.5f32; d * 16])
            .unwrap()
            .to_device(&gpu)
            .unwrap()
    };
    // More channels than the kernels hold.
    let mut tape = Tape::new();
    let (q, p) = (tape.leaf(on_gpu(MAX_CHANNELS + 1)), tape.leaf(on_gpu(MAX_CHANNELS + 1)));
    let err = tape.local_contrast_loss(q, p, &samples, cfg).unwrap_err();
    assert!(err.to_string().contains("at most 128"), "{err}");
    // One operand left on the CPU.
    let mut tape = Tape::new();
    let q = tape.leaf(on_gpu(8));
    let p = tape.leaf(Tensor::from_vec(vec![1, 8, 4, 4], vec![0.5f32; 128]).unwrap());
    let err = tape.local_contrast_loss(q, p, &samples, cfg).unwrap_err();
    assert!(err.to_string().contains("CPU"), "{err}");
    // A pixel index outside the image.
    let mut bad = samples.clone();
    bad[0].p[0] = 16;
    let mut tape = Tape::new();
    let (q, p) = (tape.leaf(on_gpu(8)), tape.leaf(on_gpu(8)));
    assert!(tape.local_contrast_loss(q, p, &bad, cfg).is_err());
}

#[test]
fn every_kernel_is_compiled_for_every_architecture() {
    if !kernels::BUILT {
        return;
    }
    assert_compiled_for_every_arch(all_kernel_names().into_iter().map(|name| ("local_contrast", name)));
}

#[test]
fn bench_lrc_loss_lists_its_cases_without_a_gpu() {
    let out = Command::new(env!("CARGO_BIN_EXE_lrc"))
        .args(["bench", "lrc-loss", "--list"])
        .output()
        .expect("run lrc");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // D in {32, 64} x K in {64, 256} x raw / unit pixels.
    assert_eq!(text.lines().count(), 8, "{text}");
    assert!(text.contains("d64-k256-raw") && text.contains("N 32 256x256"), "{text}");
}

#[test]
fn bench_lrc_loss_without_a_gpu_is_a_clear_error() {
    // SAFETY: only probes whether the driver library can be loaded.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lrc"))
        .args(["bench", "lrc-loss", "--repeats", "1", "--json"])
        .arg(dir.path().join("bench.jsonl"))
        .output()
        .expect("run lrc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.starts_with("error: "), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

/// Loss and gradients of the fused loss on BF16 maps made on the device from `f`, for upstream
/// gradient `grad`.
fn run_bf16(
    gpu: &Arc<CudaDevice>,
    case: &Case,
    f: [&[f32]; 2],
    samples: &[RegionSamples],
    cfg: LocalLossConfig,
    grad: f32,
) -> Got {
    let to_bf16 = |v: &[f32]| bf16_from_f32(&CudaStorage::from_host(gpu, v).unwrap()).unwrap();
    let (q, p) = (to_bf16(f[0]), to_bf16(f[1]));
    assert_eq!(q.len(), case.len().div_ceil(2));
    let g = CudaStorage::full(gpu, 1, grad).unwrap();
    let (loss, gq, gp) = local_contrast_bf16(&q, &p, case.dims(), samples, &cfg, &g).unwrap();
    (loss.to_host().unwrap()[0], gq.to_host().unwrap(), gp.to_host().unwrap())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_small_batches_with_empty_images_single_regions_and_odd_value_counts() {
    // The small cases with the chunk-boundary one on a 7 x 5 plane instead of 6 x 6: 3 x 19 x 35
    // = 1995 and 3 x 45 x 35 = 4725 values per map, odd, so the last word of each packed map
    // holds one value and its padding half.
    let [first, chunks] = small_cases();
    let cases = [first, chunks.on_plane(7, 5)];
    for case in &cases {
        assert_eq!(case.len() % 2, 1, "{}", case.name);
        check_all_options(EmbeddingType::Bf16, case);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_a_training_sized_batch_and_the_limits() {
    check_all_options(EmbeddingType::Bf16, &training_sized_case());
    // The limit case on a 64 x 63 plane: an odd width.
    check_all_options(EmbeddingType::Bf16, &limit_case().on_plane(64, 63));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_inputs_take_only_their_rounding_from_fp32() {
    let gpu = device();
    let case = Case {
        name: "bf16 vs fp32",
        d: 32,
        h: 17,
        w: 19,
        regions: vec![40, 1, 0, 25],
        samples: vec![12, 3, 5, 9],
        temperature: 0.07,
        seed: 10,
    };
    for normalize_pixels in [false, true] {
        let cfg = case.config(true, normalize_pixels);
        let (samples, fq, fp) = inputs(&case, !normalize_pixels);
        let (rq, rp) = (rounded(&fq), rounded(&fp));
        // The FP32 kernels on the BF16 values, through the device wrappers as the BF16 path.
        let fp32 = |q: &[f32], p: &[f32]| {
            let (q, p) = (
                CudaStorage::from_host(&gpu, q).unwrap(),
                CudaStorage::from_host(&gpu, p).unwrap(),
            );
            let (loss, saved) = local_contrast_forward(&q, &p, case.dims(), &samples, &cfg).unwrap();
            let g = CudaStorage::full(&gpu, 1, 1.0).unwrap();
            let (gq, gp) = local_contrast_backward(&saved, &q, &p, &g).unwrap();
            (loss.to_host().unwrap()[0], gq.to_host().unwrap(), gp.to_host().unwrap())
        };
        let on_rounded = fp32(&rq, &rp);
        let bf16 = run_bf16(&gpu, &case, [&fq, &fp], &samples, cfg, 1.0);
        assert_eq!(
            bf16.0.to_bits(),
            on_rounded.0.to_bits(),
            "normalize_pixels {normalize_pixels}: loss"
        );
        for (view, a, b) in [("q", &bf16.1, &on_rounded.1), ("p", &bf16.2, &on_rounded.2)] {
            let differs = a.iter().zip(b).position(|(x, y)| x.to_bits() != y.to_bits());
            assert_eq!(differs, None, "normalize_pixels {normalize_pixels}: grad_{view}");
        }
        let generic = fp32(&fq, &fp);
        assert_ne!(
            generic.0.to_bits(),
            bf16.0.to_bits(),
            "normalize_pixels {normalize_pixels}: the loss"
        );
        println!(
            "normalize_pixels {normalize_pixels}: loss fp32 {} bf16 {} (= fp32 on the rounded inputs)",
            generic.0, bf16.0
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_maps_of_the_wrong_length_are_an_error() {
    let gpu = device();
    let samples = vec![draw(&mut Rng::new(9), 2, 3, 15)];
    let cfg = LocalLossConfig::default();
    // 1 x 3 x 3 x 5 = 45 values: 23 words of BF16. FP32 storage (45 words) is refused.
    let f32_map = CudaStorage::from_host(&gpu, &[0.5f32; 45]).unwrap();
    let err =
        local_contrast_forward_as(EmbeddingType::Bf16, &f32_map, &f32_map, [1, 3, 3, 5], &samples, &cfg).unwrap_err();
    assert!(err.to_string().contains("BF16"), "{err}");
    let bf16_map = bf16_from_f32(&f32_map).unwrap();
    assert_eq!(bf16_map.len(), 23);
    let (loss, saved) =
        local_contrast_forward_as(EmbeddingType::Bf16, &bf16_map, &bf16_map, [1, 3, 3, 5], &samples, &cfg).unwrap();
    assert!(loss.to_host().unwrap()[0].is_finite());
    let g = CudaStorage::full(&gpu, 1, 1.0).unwrap();
    assert!(local_contrast_backward(&saved, &f32_map, &f32_map, &g).is_err());
    let (gq, _) = local_contrast_backward(&saved, &bf16_map, &bf16_map, &g).unwrap();
    assert_eq!(gq.len(), 45);
}
