//! Parity of every convolution kernel version with the CPU twin (ops::conv::cpu, run in f64 on
//! the same f32 inputs) on seeded random inputs and awkward shapes, with every output buffer
//! poisoned with NaN before the kernels run so that an element they fail to write fails the
//! check. The transposed convolution is checked against a direct 7-loop definition.
//!
//! Tolerance per element: |got - want| <= atol + rtol * |want|, where atol scales with the size
//! of the terms summed, sqrt(depth) * max|a| * max|b| (the typical magnitude of a sum of `depth`
//! products with random signs):
//! - FP32: atol = 1e-5 * scale, rtol = 1e-5. Summing up to ~4600 terms in f32 gives a relative
//!   error of about sqrt(depth) * 2^-24 ~ 4e-6 of the scale in practice (depth * 2^-24 ~ 3e-4 is
//!   the never-reached worst case); an indexing error is of the order of the scale itself.
//! - TF32: atol = 4 * 2^-10 * scale, rtol = 5e-3. Each operand is rounded to 10 mantissa bits
//!   (relative error <= 2^-11), so each product is off by up to 2^-10 of itself; the errors of
//!   `depth` products with random signs add to about 2^-11 * scale (std), 4 * 2^-10 of it is ~8
//!   standard deviations, the margin needed over the ~10^5 elements checked.
//!
//! These tests need a CUDA GPU: `cargo test --release -- --include-ignored`.

use std::sync::Arc;

use lrc::device::cuda::conv::{
    conv_transpose2d_backward_data, conv_transpose2d_backward_weight, conv_transpose2d_forward, conv2d_backward_data,
    conv2d_backward_weight, conv2d_forward,
};
use lrc::device::cuda::{ConvAlgo, ConvTransposeGeom, CudaDevice, CudaStorage};
use lrc::ops::conv::{ConvGeom, cpu};
use lrc::rng::Rng;
use lrc::testing::{Tolerance, assert_close};

fn device() -> Arc<CudaDevice> {
    let device = CudaDevice::open(0).unwrap_or_else(|e| panic!("these tests need a CUDA GPU: {e}"));
    device.set_poison_fresh_buffers(true);
    device
}

/// Uniform in [-1, 1): never all zeros, and max|value| is 1 to within rounding.
fn random(rng: &mut Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.range(-1.0, 1.0) as f32).collect()
}

fn upload(device: &Arc<CudaDevice>, data: &[f32]) -> CudaStorage {
    CudaStorage::from_host(device, data).expect("copy to the device")
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn max_abs(v: &[f32]) -> f64 {
    v.iter().fold(0.0f64, |m, &x| m.max(x.abs() as f64))
}

fn tolerance(algo: ConvAlgo, depth: usize, a_max: f64, b_max: f64) -> Tolerance {
    let scale = (depth.max(1) as f64).sqrt() * a_max * b_max;
    match algo {
        ConvAlgo::Fp32Tiled => Tolerance {
            atol: 1e-5 * scale,
            rtol: 1e-5,
        },
        ConvAlgo::Tf32Mma => Tolerance {
            atol: 4.0 * (-10f64).exp2() * scale,
            rtol: 5e-3,
        },
    }
}

fn geom([n, c_in, h, w, c_out]: [usize; 5], k: (usize, usize), stride: usize, pad: usize) -> ConvGeom {
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

/// Odd sizes, batches of 1 and 3, channel counts off every tile size (wide and narrow tiles),
/// the U-Net's 3x3 and 1x1, stride 2, and a kernel size with no specialisation.
fn shapes() -> Vec<ConvGeom> {
    vec![
        geom([1, 1, 17, 23, 32], (3, 3), 1, 1),
        geom([3, 5, 13, 11, 37], (3, 3), 1, 1),
        geom([2, 33, 9, 15, 19], (3, 3), 1, 1),
        geom([1, 64, 16, 16, 64], (3, 3), 1, 1),
        geom([3, 70, 7, 5, 129], (3, 3), 1, 1),
        geom([3, 34, 12, 7, 14], (1, 1), 1, 0),
        geom([1, 96, 8, 9, 65], (1, 1), 1, 0),
        geom([2, 6, 15, 14, 10], (3, 3), 2, 1),
        geom([1, 4, 11, 10, 12], (5, 3), 1, 1),
        geom([3, 9, 10, 12, 8], (2, 2), 2, 0),
    ]
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn conv2d_forward_matches_the_cpu_twin() {
    let device = device();
    let mut rng = Rng::new(11);
    for g in shapes() {
        let x = random(&mut rng, g.n * g.c_in * g.h * g.w);
        let w = random(&mut rng, g.c_out * g.c_in * g.kh * g.kw);
        let b = random(&mut rng, g.c_out);
        let want = cpu::forward(&g, &to_f64(&x), &to_f64(&w), Some(&to_f64(&b)));
        let (xd, wd, bd) = (upload(&device, &x), upload(&device, &w), upload(&device, &b));
        for algo in ConvAlgo::ALL {
            let y = conv2d_forward(&g, &xd, &wd, Some(&bd), algo)
                .unwrap()
                .to_host()
                .unwrap();
            let tol = tolerance(algo, g.c_in * g.kh * g.kw, max_abs(&x), max_abs(&w));
            assert_close(&format!("forward {algo} {g:?}"), &y, &want, tol);
        }
        // Without a bias.
        let want = cpu::forward(&g, &to_f64(&x), &to_f64(&w), None);
        let y = conv2d_forward(&g, &xd, &wd, None, ConvAlgo::DEFAULT)
            .unwrap()
            .to_host()
            .unwrap();
        let tol = tolerance(ConvAlgo::DEFAULT, g.c_in * g.kh * g.kw, max_abs(&x), max_abs(&w));
        assert_close(&format!("forward without bias {g:?}"), &y, &want, tol);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn conv2d_backward_data_matches_the_cpu_twin() {
    let device = device();
    let mut rng = Rng::new(12);
    for g in shapes() {
        let dy = random(&mut rng, g.n * g.c_out * g.h_out() * g.w_out());
        let w = random(&mut rng, g.c_out * g.c_in * g.kh * g.kw);
        let want = cpu::backward_data(&g, &to_f64(&dy), &to_f64(&w));
        let (dyd, wd) = (upload(&device, &dy), upload(&device, &w));
        for algo in ConvAlgo::ALL {
            let dx = conv2d_backward_data(&g, &dyd, &wd, algo).unwrap().to_host().unwrap();
            let tol = tolerance(algo, g.c_out * g.kh * g.kw, max_abs(&dy), max_abs(&w));
            assert_close(&format!("backward-data {algo} {g:?}"), &dx, &want, tol);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn conv2d_backward_weight_matches_the_cpu_twin() {
    let device = device();
    let mut rng = Rng::new(13);
    let mut all = shapes();
    // A long reduction: split over many blocks and added by split_reduce.
    all.push(geom([3, 8, 64, 48, 16], (3, 3), 1, 1));
    for g in all {
        let x = random(&mut rng, g.n * g.c_in * g.h * g.w);
        let dy = random(&mut rng, g.n * g.c_out * g.h_out() * g.w_out());
        let (want_dw, want_db) = cpu::backward_weight(&g, &to_f64(&x), &to_f64(&dy));
        let (xd, dyd) = (upload(&device, &x), upload(&device, &dy));
        let depth = g.n * g.h_out() * g.w_out();
        for algo in ConvAlgo::ALL {
            let (dw, db) = conv2d_backward_weight(&g, &xd, &dyd, algo).unwrap();
            let tol = tolerance(algo, depth, max_abs(&x), max_abs(&dy));
            assert_close(
                &format!("backward-weight dw {algo} {g:?}"),
                &dw.to_host().unwrap(),
                &want_dw,
                tol,
            );
            // The bias gradient sums dy in FP32 in both versions.
            let tol = tolerance(ConvAlgo::Fp32Tiled, depth, max_abs(&dy), 1.0);
            assert_close(
                &format!("backward-weight db {algo} {g:?}"),
                &db.to_host().unwrap(),
                &want_db,
                tol,
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn backward_weight_is_deterministic() {
    let device = device();
    let mut rng = Rng::new(14);
    let g = geom([4, 16, 40, 40, 32], (3, 3), 1, 1);
    let x = upload(&device, &random(&mut rng, g.n * g.c_in * g.h * g.w));
    let dy = upload(&device, &random(&mut rng, g.n * g.c_out * g.h * g.w));
    for algo in ConvAlgo::ALL {
        let (dw1, db1) = conv2d_backward_weight(&g, &x, &dy, algo).unwrap();
        let (dw2, db2) = conv2d_backward_weight(&g, &x, &dy, algo).unwrap();
        assert_eq!(dw1.to_host().unwrap(), dw2.to_host().unwrap(), "{algo}");
        assert_eq!(db1.to_host().unwrap(), db2.to_host().unwrap(), "{algo}");
    }
}

/// The transposed convolution by its definition: each input value, times the kernel, added
/// into the output window at (iy*s - pad, ix*s - pad). Returns y (with bias), and for output
/// gradient dy: dx, dw, db.
fn transposed_reference(
    g: &ConvTransposeGeom,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    dy: &[f32],
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (ho, wo) = (g.h_out(), g.w_out());
    let mut y = vec![0.0; g.n * g.c_out * ho * wo];
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    let mut db = vec![0.0; g.c_out];
    for i in 0..g.n {
        for ci in 0..g.c_in {
            for iy in 0..g.h {
                for ix in 0..g.w {
                    for co in 0..g.c_out {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let oy = (iy * g.stride + ky) as isize - g.pad as isize;
                                let ox = (ix * g.stride + kx) as isize - g.pad as isize;
                                if oy < 0 || ox < 0 || oy >= ho as isize || ox >= wo as isize {
                                    continue;
                                }
                                let xi = ((i * g.c_in + ci) * g.h + iy) * g.w + ix;
                                let wi = ((ci * g.c_out + co) * g.kh + ky) * g.kw + kx;
                                let yi = ((i * g.c_out + co) * ho + oy as usize) * wo + ox as usize;
                                y[yi] += x[xi] as f64 * w[wi] as f64;
                                dx[xi] += dy[yi] as f64 * w[wi] as f64;
                                dw[wi] += dy[yi] as f64 * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    for (e, v) in y.iter_mut().enumerate() {
        *v += b[(e / (ho * wo)) % g.c_out] as f64;
    }
    for (e, &d) in dy.iter().enumerate() {
        db[(e / (ho * wo)) % g.c_out] += d as f64;
    }
    (y, dx, dw, db)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn conv_transpose2d_matches_its_definition() {
    let device = device();
    let mut rng = Rng::new(15);
    let t = |n, c_in, h, w, c_out, k, stride, pad| ConvTransposeGeom {
        n,
        c_in,
        h,
        w,
        c_out,
        kh: k,
        kw: k,
        stride,
        pad,
    };
    for g in [
        t(3, 40, 5, 7, 20, 2, 2, 0),
        t(1, 6, 4, 3, 70, 2, 2, 0),
        t(2, 64, 8, 8, 32, 2, 2, 0),
        t(2, 5, 4, 5, 4, 3, 2, 1),
    ] {
        let x = random(&mut rng, g.n * g.c_in * g.h * g.w);
        let w = random(&mut rng, g.c_in * g.c_out * g.kh * g.kw);
        let b = random(&mut rng, g.c_out);
        let dy = random(&mut rng, g.n * g.c_out * g.h_out() * g.w_out());
        let (want_y, want_dx, want_dw, want_db) = transposed_reference(&g, &x, &w, &b, &dy);
        let (xd, wd, bd, dyd) = (
            upload(&device, &x),
            upload(&device, &w),
            upload(&device, &b),
            upload(&device, &dy),
        );
        for algo in ConvAlgo::ALL {
            let y = conv_transpose2d_forward(&g, &xd, &wd, Some(&bd), algo).unwrap();
            let tol = tolerance(algo, g.c_in * g.kh * g.kw, 1.0, 1.0);
            assert_close(
                &format!("transposed forward {algo} {g:?}"),
                &y.to_host().unwrap(),
                &want_y,
                tol,
            );
            let dx = conv_transpose2d_backward_data(&g, &dyd, &wd, algo).unwrap();
            let tol = tolerance(algo, g.c_out * g.kh * g.kw, 1.0, 1.0);
            assert_close(
                &format!("transposed backward-data {algo} {g:?}"),
                &dx.to_host().unwrap(),
                &want_dx,
                tol,
            );
            let (dw, db) = conv_transpose2d_backward_weight(&g, &xd, &dyd, algo).unwrap();
            let tol = tolerance(algo, g.n * g.h * g.w, 1.0, 1.0);
            assert_close(
                &format!("transposed backward-weight {algo} {g:?}"),
                &dw.to_host().unwrap(),
                &want_dw,
                tol,
            );
            let tol = tolerance(ConvAlgo::Fp32Tiled, g.n * g.h_out() * g.w_out(), 1.0, 1.0);
            assert_close(
                &format!("transposed bias gradient {algo} {g:?}"),
                &db.to_host().unwrap(),
                &want_db,
                tol,
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn ops_dispatch_runs_conv2d_on_cuda_tensors() {
    use lrc::{DType, Device, Tensor};
    let device = device();
    let mut rng = Rng::new(16);
    let g = geom([3, 7, 10, 9, 33], (3, 3), 1, 1);
    let x = Tensor::uniform([g.n, g.c_in, g.h, g.w], -1.0, 1.0, DType::F32, &mut rng);
    let w = Tensor::uniform([g.c_out, g.c_in, 3, 3], -1.0, 1.0, DType::F32, &mut rng);
    let b = Tensor::uniform([g.c_out], -1.0, 1.0, DType::F32, &mut rng);
    let gpu = Device::Cuda(device.clone());
    let on_gpu = |t: &Tensor| t.to_device(&gpu).unwrap();
    // The references run in f64 on the same values.
    let f64_of = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    for algo in ConvAlgo::ALL {
        device.set_conv_algo(algo);
        let want = lrc::ops::conv::forward(&f64_of(&x), &f64_of(&w), Some(&f64_of(&b)), 1, 1).unwrap();
        let got = lrc::ops::conv::forward(&on_gpu(&x), &on_gpu(&w), Some(&on_gpu(&b)), 1, 1).unwrap();
        assert_eq!(got.shape(), want.shape());
        assert!(got.device().is_cuda());
        let tol = tolerance(algo, g.c_in * 9, 1.0, 1.0);
        assert_close(
            &format!("ops forward {algo}"),
            &got.to_f32_vec().unwrap(),
            &want.to_f64_vec().unwrap(),
            tol,
        );

        let dy = Tensor::uniform(want.shape().to_vec(), -1.0, 1.0, DType::F32, &mut rng);
        let want_dx = lrc::ops::conv::backward_data(&g, &f64_of(&dy), &f64_of(&w)).unwrap();
        let got_dx = lrc::ops::conv::backward_data(&g, &on_gpu(&dy), &on_gpu(&w)).unwrap();
        let tol = tolerance(algo, g.c_out * 9, 1.0, 1.0);
        assert_close(
            &format!("ops backward-data {algo}"),
            &got_dx.to_f32_vec().unwrap(),
            &want_dx.to_f64_vec().unwrap(),
            tol,
        );

        let (want_dw, want_db) = lrc::ops::conv::backward_weight(&g, &f64_of(&x), &f64_of(&dy)).unwrap();
        let (got_dw, got_db) = lrc::ops::conv::backward_weight(&g, &on_gpu(&x), &on_gpu(&dy)).unwrap();
        let tol = tolerance(algo, g.n * g.h * g.w, 1.0, 1.0);
        assert_close(
            &format!("ops backward-weight {algo}"),
            &got_dw.to_f32_vec().unwrap(),
            &want_dw.to_f64_vec().unwrap(),
            tol,
        );
        let tol = tolerance(ConvAlgo::Fp32Tiled, g.n * g.h * g.w, 1.0, 1.0);
        assert_close(
            &format!("ops bias gradient {algo}"),
            &got_db.to_f32_vec().unwrap(),
            &want_db.to_f64_vec().unwrap(),
            tol,
        );
    }
    device.set_conv_algo(ConvAlgo::DEFAULT);
    // Mixed devices are an error, not a crash.
    assert!(lrc::ops::conv::forward(&on_gpu(&x), &w, None, 1, 1).is_err());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn ops_dispatch_runs_conv_transpose2d_on_cuda_tensors() {
    use lrc::ops::conv_transpose::{backward_data, backward_weight, forward, mirror_geom};
    use lrc::{DType, Device, Tensor};
    let device = device();
    let mut rng = Rng::new(17);
    // The U-Net's up path at awkward sizes: 2x2 stride 2, 13 -> 6 channels, odd input sides.
    let x = Tensor::uniform([3, 13, 5, 7], -1.0, 1.0, DType::F32, &mut rng);
    let w = Tensor::uniform([13, 6, 2, 2], -1.0, 1.0, DType::F32, &mut rng);
    let b = Tensor::uniform([6], -1.0, 1.0, DType::F32, &mut rng);
    let dy = Tensor::uniform([3, 6, 10, 14], -1.0, 1.0, DType::F32, &mut rng);
    let gpu = Device::Cuda(device.clone());
    // Forward, dx, dw, db on one device; the CPU side runs in f64 on the same values.
    let run = |to: &dyn Fn(&Tensor) -> Tensor| {
        let g = mirror_geom(&to(&x), &to(&w), 2, 0).unwrap();
        let y = forward(&to(&x), &to(&w), Some(&to(&b)), 2, 0).unwrap();
        let dx = backward_data(&g, &to(&dy), &to(&w)).unwrap();
        let (dw, db) = backward_weight(&g, &to(&x), &to(&dy)).unwrap();
        [y, dx, dw, db].map(|t| t.to_f64_vec().unwrap())
    };
    let want = run(&|t: &Tensor| t.to_dtype(DType::F64).unwrap());
    for algo in ConvAlgo::ALL {
        device.set_conv_algo(algo);
        let got = run(&|t: &Tensor| t.to_device(&gpu).unwrap());
        // Terms per output: forward 13 (one tap each), dx 6 x 4, dw 3 x 5 x 7, db 3 x 10 x 14.
        for (i, (name, k)) in [("forward", 13), ("dx", 24), ("dw", 105), ("db", 420)]
            .into_iter()
            .enumerate()
        {
            let tol = tolerance(if name == "db" { ConvAlgo::Fp32Tiled } else { algo }, k, 1.0, 1.0);
            let got32: Vec<f32> = got[i].iter().map(|&v| v as f32).collect();
            assert_close(&format!("ops conv_transpose2d {name} {algo}"), &got32, &want[i], tol);
        }
    }
    device.set_conv_algo(ConvAlgo::DEFAULT);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn unet_sized_layers_match_the_cpu_twin() {
    // One full-width U-Net layer per tile configuration, at a reduced batch and size.
    let device = device();
    let mut rng = Rng::new(17);
    for g in [
        geom([2, 32, 64, 64, 32], (3, 3), 1, 1),
        geom([1, 256, 16, 16, 128], (3, 3), 1, 1),
    ] {
        let x = random(&mut rng, g.n * g.c_in * g.h * g.w);
        let w = random(&mut rng, g.c_out * g.c_in * 9);
        let dy = random(&mut rng, g.n * g.c_out * g.h * g.w);
        let want = cpu::forward(&g, &to_f64(&x), &to_f64(&w), None);
        let want_dx = cpu::backward_data(&g, &to_f64(&dy), &to_f64(&w));
        let (want_dw, _) = cpu::backward_weight(&g, &to_f64(&x), &to_f64(&dy));
        let (xd, wd, dyd) = (upload(&device, &x), upload(&device, &w), upload(&device, &dy));
        let algo = ConvAlgo::Tf32Mma;
        let y = conv2d_forward(&g, &xd, &wd, None, algo).unwrap();
        assert_close(
            "forward",
            &y.to_host().unwrap(),
            &want,
            tolerance(algo, g.c_in * 9, 1.0, 1.0),
        );
        let dx = conv2d_backward_data(&g, &dyd, &wd, algo).unwrap();
        assert_close(
            "backward-data",
            &dx.to_host().unwrap(),
            &want_dx,
            tolerance(algo, g.c_out * 9, 1.0, 1.0),
        );
        let (dw, _) = conv2d_backward_weight(&g, &xd, &dyd, algo).unwrap();
        let depth = g.n * g.h * g.w;
        assert_close(
            "backward-weight",
            &dw.to_host().unwrap(),
            &want_dw,
            tolerance(algo, depth, 1.0, 1.0),
        );
    }
}
