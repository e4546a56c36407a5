//! A whole backward pass on CUDA tensors: a small graph of convolution, element-wise ops, channel
//! concatenation, max and average pooling and reductions, with values used several times so that
//! the tape accumulates gradients, run on the GPU and on the CPU in f64; every leaf gradient is
//! compared. On the GPU the loss gradient is seeded, broadcast and accumulated on the device.
//!
//! Max pooling routes each gradient to one element of its window, so the comparison holds only
//! where the GPU picks the same maximum as the f64 reference: the CPU-only test below checks
//! that no window of the chosen inputs holds two values closer than `TIE_GAP`, far more than the
//! f32 error of the pool's input (about 1e-5 here), so rounding cannot swap a maximum.
//!
//! Tolerance: atol = rtol = 1e-4 relative to the largest gradient. The graph is ~12 f32 ops deep
//! and its longest sums (the convolution's weight gradient over 2 x 6 x 7 pixels, the pools)
//! have under 100 terms, so the f32 error stays below ~100 u = 6e-6 of the gradients' scale; a
//! lost or doubled contribution (one of the five uses of the convolution's output) is of the
//! order of the gradient itself. The convolution runs the FP32 kernels (TF32 would add ~1e-3).
//!
//! The GPU test needs a CUDA GPU: `cargo test --release -- --include-ignored`.

use lrc::device::cuda::{ConvAlgo, CudaDevice};
use lrc::rng::Rng;
use lrc::testing::{Tolerance, assert_close};
use lrc::{DType, Device, Tape, Tensor, Var};

/// The smallest gap between the two largest values of a pool window of the reference graph.
const TIE_GAP: f64 = 1e-3;

/// The leaves: input x, convolution weight and bias, and a tensor joined by concatenation.
fn leaves(dtype: DType) -> Vec<Tensor> {
    let mut rng = Rng::new(1);
    vec![
        Tensor::uniform([2, 3, 6, 7], -1.0, 1.0, DType::F32, &mut rng),
        Tensor::uniform([4, 3, 3, 3], -0.5, 0.5, DType::F32, &mut rng),
        Tensor::uniform([4], -0.5, 0.5, DType::F32, &mut rng),
        Tensor::uniform([2, 2, 6, 7], -1.0, 1.0, DType::F32, &mut rng),
    ]
    .into_iter()
    .map(|t| t.to_dtype(dtype).unwrap())
    .collect()
}

/// The graph; returns the loss and the input of the max pool.
fn graph(tape: &mut Tape, v: &[Var]) -> lrc::Result<(Var, Var)> {
    let (x, w, b, z) = (v[0], v[1], v[2], v[3]);
    let c = tape.conv2d(x, w, Some(b), 1, 1)?; // [2, 4, 6, 7]
    let sq = tape.mul(c, c)?; // c twice in one op
    let e = tape.add(sq, c)?;
    let f = tape.scale(e, 0.5)?;
    let f = tape.add_scalar(f, 0.25)?;
    let s = tape.sub(f, c)?; // 0.5 c^2 - 0.5 c + 0.25
    let zz = tape.mul(z, z)?; // a leaf used twice
    let zs = tape.add(zz, z)?;
    let k = tape.concat(s, zs)?; // [2, 6, 6, 7]
    let kc = tape.concat(k, c)?; // [2, 10, 6, 7], c a fifth time
    let p = tape.max_pool2x2(kc)?; // [2, 10, 3, 3]: odd width, floor
    let g = tape.global_avg_pool(p)?; // [2, 10]
    let sum_g = tape.sum(g)?;
    let mean_p = tape.mean(p)?; // p used twice
    let loss = tape.add(sum_g, mean_p)?;
    Ok((loss, kc))
}

/// The smallest gap between the largest and the second largest value of any 2x2 window.
fn smallest_window_gap(t: &Tensor) -> f64 {
    let [n, c, h, w] = t.dims4("gap").unwrap();
    let x = t.to_f64_vec().unwrap();
    let mut gap = f64::INFINITY;
    for p in 0..n * c {
        for oy in 0..h / 2 {
            for ox in 0..w / 2 {
                let mut win: Vec<f64> = [(0, 0), (0, 1), (1, 0), (1, 1)]
                    .iter()
                    .map(|(dy, dx)| x[p * h * w + (2 * oy + dy) * w + 2 * ox + dx])
                    .collect();
                win.sort_by(|a, b| b.total_cmp(a));
                gap = gap.min(win[0] - win[1]);
            }
        }
    }
    gap
}

fn run(leaf_values: Vec<Tensor>) -> (Tape, Vec<Var>, Var, Var) {
    let mut tape = Tape::new();
    let v: Vec<Var> = leaf_values.into_iter().map(|t| tape.leaf(t)).collect();
    let (loss, pooled_input) = graph(&mut tape, &v).unwrap();
    (tape, v, loss, pooled_input)
}

#[test]
fn the_reference_graph_has_no_near_ties_in_its_pool_windows() {
    let (tape, _, _, pooled_input) = run(leaves(DType::F64));
    let gap = smallest_window_gap(tape.value(pooled_input));
    println!("smallest gap between a window's two largest values: {gap:e}");
    assert!(
        gap >= TIE_GAP,
        "a pool window has two values {gap:e} apart; choose another seed"
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_backward_pass_on_cuda_matches_the_cpu() {
    let device = CudaDevice::open(0).unwrap_or_else(|e| panic!("this test needs a CUDA GPU: {e}"));
    device.set_poison_fresh_buffers(true);
    device.set_conv_algo(ConvAlgo::Fp32Tiled);
    let gpu = Device::Cuda(device.clone());

    let (cpu_tape, cpu_v, cpu_loss, _) = run(leaves(DType::F64));
    let cpu_grads = cpu_tape.backward(cpu_loss).unwrap();

    let on_gpu = leaves(DType::F32).iter().map(|t| t.to_device(&gpu).unwrap()).collect();
    let (tape, v, loss, _) = run(on_gpu);
    assert!(tape.value(loss).device().is_cuda());
    let grads = tape.backward(loss).unwrap();
    device.set_conv_algo(ConvAlgo::DEFAULT);

    let loss_tol = Tolerance { atol: 0.0, rtol: 1e-5 };
    assert_close(
        "loss",
        &tape.value(loss).to_f32_vec().unwrap(),
        &cpu_tape.value(cpu_loss).to_f64_vec().unwrap(),
        loss_tol,
    );
    for (i, name) in ["x", "weight", "bias", "z"].iter().enumerate() {
        let got = grads.get(v[i]).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(got.device().is_cuda(), "the gradient of {name} left the GPU");
        let want = cpu_grads.get(cpu_v[i]).unwrap().to_f64_vec().unwrap();
        let scale = want.iter().fold(0.0f64, |m, g| m.max(g.abs()));
        assert!(scale > 0.0, "{name}: a zero gradient checks nothing");
        let tol = Tolerance {
            atol: 1e-4 * scale,
            rtol: 1e-4,
        };
        assert_close(&format!("gradient of {name}"), &got.to_f32_vec().unwrap(), &want, tol);
    }
}
