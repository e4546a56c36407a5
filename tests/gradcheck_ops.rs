//! f64 finite-difference checks of every differentiable op and both losses.
//!
//! Tolerance: relative error 1e-6 (see `lrc::gradcheck`: correct gradients agree to ~1e-9 with
//! a step of 1e-6 in f64; a wrong one is off by O(1)).

use lrc::gradcheck::{GradCheckConfig, check_gradients, random_projection};
use lrc::ops::dice::DiceConfig;
use lrc::ops::instance_norm::Activation;
use lrc::ops::local_contrast::{LocalLossConfig, RegionSamples};
use lrc::rng::Rng;
use lrc::{DType, Result, Tape, Tensor, Var};

const TOL: f64 = 1e-6;

fn rand(shape: &[usize], seed: u64) -> Tensor {
    Tensor::uniform(shape.to_vec(), -1.0, 1.0, DType::F64, &mut Rng::new(seed))
}

fn assert_grads(name: &str, inputs: &[Tensor], f: impl Fn(&mut Tape, &[Var]) -> Result<Var>) {
    let report = check_gradients(inputs, f, GradCheckConfig::default()).expect(name);
    println!("{name}: {report}");
    assert!(report.worst_rel_error < TOL, "{name}: {report}");
    assert!(report.coords_checked > 0);
}

#[test]
fn pointwise_ops() {
    let (a, b) = (rand(&[2, 3, 4], 1), rand(&[2, 3, 4], 2));
    assert_grads("add/sub/mul/scale/mean", &[a, b], |t, v| {
        let s = t.add(v[0], v[1])?;
        let d = t.sub(s, v[1])?;
        let m = t.mul(d, v[1])?;
        let m = t.scale(m, 1.7)?;
        let m = t.add_scalar(m, 0.3)?;
        let m = t.mul(m, v[0])?;
        t.mean(m)
    });
}

#[test]
fn matmul() {
    assert_grads("matmul", &[rand(&[3, 5], 3), rand(&[5, 4], 4)], |t, v| {
        let y = t.matmul(v[0], v[1])?;
        random_projection(t, y, 1)
    });
}

#[test]
fn conv2d_3x3_pad1_with_bias() {
    let inputs = [rand(&[2, 3, 7, 6], 5), rand(&[4, 3, 3, 3], 6), rand(&[4], 7)];
    assert_grads("conv3x3", &inputs, |t, v| {
        let y = t.conv2d(v[0], v[1], Some(v[2]), 1, 1)?;
        random_projection(t, y, 2)
    });
}

#[test]
fn conv2d_1x1_and_strided_without_bias() {
    let inputs = [rand(&[3, 4, 5, 5], 8), rand(&[2, 4, 1, 1], 9)];
    assert_grads("conv1x1", &inputs, |t, v| {
        let y = t.conv2d(v[0], v[1], None, 1, 0)?;
        random_projection(t, y, 3)
    });
    let inputs = [rand(&[1, 2, 9, 8], 10), rand(&[3, 2, 3, 3], 11), rand(&[3], 12)];
    assert_grads("conv3x3 stride 2", &inputs, |t, v| {
        let y = t.conv2d(v[0], v[1], Some(v[2]), 2, 1)?;
        random_projection(t, y, 4)
    });
}

#[test]
fn conv_transpose_2x2_stride2() {
    let inputs = [rand(&[2, 4, 3, 5], 13), rand(&[4, 3, 2, 2], 14), rand(&[3], 15)];
    assert_grads("conv_transpose2x2", &inputs, |t, v| {
        let y = t.conv_transpose2d(v[0], v[1], Some(v[2]), 2, 0)?;
        random_projection(t, y, 5)
    });
}

#[test]
fn instance_norm_affine() {
    let inputs = [rand(&[2, 3, 5, 4], 16), rand(&[3], 17), rand(&[3], 18)];
    assert_grads("instance_norm", &inputs, |t, v| {
        let y = t.instance_norm(v[0], v[1], v[2], 1e-5)?;
        random_projection(t, y, 6)
    });
}

#[test]
fn instance_norm_fused_with_each_activation() {
    for (i, act) in [Activation::Identity, Activation::Relu, Activation::LeakyRelu(0.1)]
        .into_iter()
        .enumerate()
    {
        let seed = 40 + 3 * i as u64;
        let inputs = [rand(&[2, 3, 5, 4], seed), rand(&[3], seed + 1), rand(&[3], seed + 2)];
        assert_grads(&format!("instance_norm_act {act:?}"), &inputs, |t, v| {
            let y = t.instance_norm_act(v[0], v[1], v[2], 1e-5, act)?;
            random_projection(t, y, 9 + i as u64)
        });
    }
}

#[test]
fn activations() {
    assert_grads("relu", &[rand(&[2, 3, 4, 4], 19)], |t, v| {
        let y = t.relu(v[0])?;
        random_projection(t, y, 7)
    });
    assert_grads("leaky_relu", &[rand(&[2, 3, 4, 4], 20)], |t, v| {
        let y = t.leaky_relu(v[0], 0.01)?;
        random_projection(t, y, 8)
    });
}

#[test]
fn pooling_and_concat() {
    assert_grads("max_pool2x2 (odd size)", &[rand(&[2, 2, 5, 7], 21)], |t, v| {
        let y = t.max_pool2x2(v[0])?;
        random_projection(t, y, 9)
    });
    assert_grads("global_avg_pool", &[rand(&[2, 3, 4, 5], 22)], |t, v| {
        let y = t.global_avg_pool(v[0])?;
        random_projection(t, y, 10)
    });
    assert_grads("concat", &[rand(&[2, 2, 3, 3], 23), rand(&[2, 3, 3, 3], 24)], |t, v| {
        let y = t.concat(v[0], v[1])?;
        random_projection(t, y, 11)
    });
}

#[test]
fn linear_and_normalize() {
    let inputs = [rand(&[4, 6], 25), rand(&[5, 6], 26), rand(&[5], 27)];
    assert_grads("linear", &inputs, |t, v| {
        let y = t.linear(v[0], v[1], Some(v[2]))?;
        random_projection(t, y, 12)
    });
    assert_grads("l2_normalize vectors", &[rand(&[4, 6], 28)], |t, v| {
        let y = t.l2_normalize(v[0])?;
        random_projection(t, y, 13)
    });
    assert_grads("l2_normalize pixels", &[rand(&[2, 5, 3, 4], 29)], |t, v| {
        let y = t.l2_normalize(v[0])?;
        random_projection(t, y, 14)
    });
}

#[test]
fn log_softmax_and_cross_entropy() {
    assert_grads("log_softmax", &[rand(&[3, 5], 30)], |t, v| {
        let y = t.log_softmax(v[0])?;
        random_projection(t, y, 15)
    });
    let targets = [0u32, 3, 1, 2, 2, 0, 3, 1, 1, 0, 2, 3];
    assert_grads("cross_entropy [N,C,H,W]", &[rand(&[2, 4, 2, 3], 31)], |t, v| {
        t.cross_entropy(v[0], &targets)
    });
}

#[test]
fn infonce_all_inputs() {
    let inputs = [rand(&[3, 8], 32), rand(&[3, 8], 33), rand(&[6, 8], 34)];
    assert_grads("infonce", &inputs, |t, v| {
        let q = t.l2_normalize(v[0])?;
        let k = t.l2_normalize(v[1])?;
        let n = t.l2_normalize(v[2])?;
        t.infonce(q, k, n, 0.07)
    });
}

#[test]
fn infonce_with_excluded_negatives() {
    let inputs = [rand(&[2, 4], 38), rand(&[2, 4], 39), rand(&[5, 4], 40)];
    let exclude = vec![true, false, false, true, false, false, false, false, false, true];
    assert_grads("infonce masked", &inputs, |t, v| {
        t.infonce_masked(v[0], v[1], v[2], 0.2, Some(exclude.clone()))
    });
    // Excluding a negative equals computing the loss without it.
    let mut tape = Tape::no_grad();
    let q = tape.constant(inputs[0].narrow_rows(0, 1).unwrap());
    let k = tape.constant(inputs[1].narrow_rows(0, 1).unwrap());
    let all = tape.constant(inputs[2].clone());
    let kept = tape.constant(inputs[2].narrow_rows(1, 2).unwrap());
    let masked = tape
        .infonce_masked(q, k, all, 0.2, Some(vec![true, false, false, true, true]))
        .unwrap();
    let direct = tape.infonce(q, k, kept, 0.2).unwrap();
    let (a, b) = (
        tape.value(masked).scalar().unwrap(),
        tape.value(direct).scalar().unwrap(),
    );
    assert!((a - b).abs() < 1e-12, "{a} vs {b}");
}

fn samples(k: usize, n: usize, hw: u64, seed: u64) -> RegionSamples {
    let mut rng = Rng::new(seed);
    let mut draw = |count: usize| (0..count).map(|_| rng.below(hw) as u32).collect::<Vec<_>>();
    let mut q = draw(k * n);
    let p = draw(k * n);
    // A duplicated sample: its gradient must accumulate.
    if q.len() > 1 {
        q[1] = q[0];
    }
    RegionSamples {
        labels: (1..=k as u32).collect(),
        n,
        q,
        p,
    }
}

#[test]
fn local_contrast_loss() {
    let inputs = [rand(&[3, 4, 5, 6], 35), rand(&[3, 4, 5, 6], 36)];
    // Image 0: 4 regions; image 1: a single region (its loss is exactly 0); image 2: none.
    let sets = vec![
        samples(4, 3, 30, 1),
        samples(1, 5, 30, 2),
        RegionSamples {
            n: 3,
            ..Default::default()
        },
    ];
    for (renormalize_means, normalize_pixels) in [(false, false), (true, false), (false, true), (true, true)] {
        let cfg = LocalLossConfig {
            temperature: 0.5,
            renormalize_means,
            normalize_pixels,
        };
        assert_grads(
            &format!("local_contrast renorm={renormalize_means} normalize_pixels={normalize_pixels}"),
            &inputs,
            |t, v| {
                // Fused: the loss normalises the sampled pixels itself.
                if normalize_pixels {
                    return t.local_contrast_loss(v[0], v[1], &sets, cfg);
                }
                let q = t.l2_normalize(v[0])?;
                let p = t.l2_normalize(v[1])?;
                t.local_contrast_loss(q, p, &sets, cfg)
            },
        );
    }
}

#[test]
fn fused_pixel_normalisation_equals_normalising_first() {
    let inputs = [rand(&[2, 3, 4, 5], 38), rand(&[2, 3, 4, 5], 39)];
    let sets = vec![samples(3, 4, 20, 3), samples(2, 2, 20, 4)];
    let cfg = |normalize_pixels| LocalLossConfig {
        temperature: 0.3,
        renormalize_means: false,
        normalize_pixels,
    };
    let run = |fused: bool| {
        let mut t = Tape::new();
        let (q, p) = (t.leaf(inputs[0].clone()), t.leaf(inputs[1].clone()));
        let loss = if fused {
            t.local_contrast_loss(q, p, &sets, cfg(true)).unwrap()
        } else {
            let (qn, pn) = (t.l2_normalize(q).unwrap(), t.l2_normalize(p).unwrap());
            t.local_contrast_loss(qn, pn, &sets, cfg(false)).unwrap()
        };
        let grads = t.backward(loss).unwrap();
        let value = t.value(loss).scalar().unwrap();
        let gq = grads.get(q).unwrap().to_f64_vec().unwrap();
        let gp = grads.get(p).unwrap().to_f64_vec().unwrap();
        (value, gq, gp)
    };
    let (fused, separate) = (run(true), run(false));
    assert!((fused.0 - separate.0).abs() < 1e-12, "{} vs {}", fused.0, separate.0);
    for (a, b) in fused.1.iter().chain(&fused.2).zip(separate.1.iter().chain(&separate.2)) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
}

#[test]
fn dice_loss() {
    let targets: Vec<u32> = (0..2 * 3 * 4).map(|i| (i * 7 % 3) as u32).collect();
    for skip_background in [false, true] {
        let cfg = DiceConfig {
            skip_background,
            eps: 1e-5,
        };
        assert_grads(
            &format!("dice skip_bg={skip_background}"),
            &[rand(&[2, 3, 3, 4], 37)],
            |t, v| t.dice_loss(v[0], &targets, cfg),
        );
    }
}
