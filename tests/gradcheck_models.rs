//! f64 finite-difference checks of whole models: the U-Net, the global (MoCo) model with
//! InfoNCE, the LRC model with the local loss, and the combined segmentation model with Dice.
//!
//! Every parameter tensor and the input are checked (up to 24 random coordinates each).
//! Tolerance: relative error 5e-6. The numeric side of a deep f64 network carries rounding
//! noise of ~1e-10 absolute (about 10 ulp of the loss per evaluation, divided by h = 1e-5);
//! against the floor of 1% of the largest gradient (~1e-4 here) that is ~1e-6. A wrong gradient
//! is off by O(1). A larger step would lower the noise but cross ReLU kinks (seen at h = 1e-4).

use lrc::gradcheck::{GradCheckConfig, GradReport, check_gradients, random_projection};
use lrc::nn::{Branches, ContrastModel, ParamStore, SegModel, UNet, UNetConfig};
use lrc::ops::dice::DiceConfig;
use lrc::ops::local_contrast::{LocalLossConfig, RegionSamples};
use lrc::rng::Rng;
use lrc::{DType, Result, Tape, Tensor, Var};

const TOL: f64 = 5e-6;

fn tiny() -> UNetConfig {
    UNetConfig {
        in_channels: 1,
        base_width: 2,
        depth: 3,
        max_width: 8,
    }
}

fn image(b: usize, seed: u64) -> Tensor {
    Tensor::uniform(vec![b, 1, 8, 8], 0.0, 1.0, DType::F64, &mut Rng::new(seed))
}

/// Checks `loss(params..., extra inputs...)` with every parameter as an input.
fn check_model(
    name: &str,
    store: &ParamStore,
    extra: &[Tensor],
    loss: impl Fn(&mut Tape, &lrc::nn::Bound, &[Var]) -> Result<Var>,
) -> GradReport {
    let store64 = store.to_dtype(DType::F64).unwrap();
    let n = store64.len();
    let mut inputs: Vec<Tensor> = store64.params().iter().map(|p| p.value.clone()).collect();
    inputs.extend_from_slice(extra);
    let cfg = GradCheckConfig {
        max_coords: 24,
        seed: 7,
        ..GradCheckConfig::default()
    };
    let report = check_gradients(
        &inputs,
        |tape, vars| {
            // A Bound over the leaves the checker made, in store order.
            let bound = lrc::nn::params::bound_from_vars(vars[..n].to_vec());
            loss(tape, &bound, &vars[n..])
        },
        cfg,
    )
    .unwrap();
    println!("{name}: {report}");
    assert!(report.worst_rel_error < TOL, "{name}: {report}");
    report
}

#[test]
fn unet_features() {
    let mut store = ParamStore::new();
    let unet = UNet::new(&mut store, "", tiny(), &mut Rng::new(1)).unwrap();
    check_model("unet", &store, &[image(2, 2)], |t, p, x| {
        let y = unet.forward(t, p, x[0])?;
        random_projection(t, y, 3)
    });
}

#[test]
fn global_model_with_infonce() {
    let mut store = ParamStore::new();
    let model = ContrastModel::global(&mut store, tiny(), 8, &mut Rng::new(4)).unwrap();
    let queue = Tensor::uniform(vec![5, 8], -1.0, 1.0, DType::F64, &mut Rng::new(5));
    check_model(
        "global+infonce",
        &store,
        &[image(2, 6), image(2, 7), queue],
        |t, p, x| {
            let q = model.forward_global(t, p, x[0])?;
            let q = t.l2_normalize(q)?;
            let k = model.forward_global(t, p, x[1])?;
            let k = t.l2_normalize(k)?;
            let n = t.l2_normalize(x[2])?;
            t.infonce(q, k, n, 0.07)
        },
    );
}

#[test]
fn local_model_with_local_loss() {
    let mut store = ParamStore::new();
    let model = ContrastModel::local(&mut store, tiny(), 4, &mut Rng::new(8)).unwrap();
    let mut rng = Rng::new(9);
    let mut draw = |k: usize, n: usize| RegionSamples {
        labels: (1..=k as u32).collect(),
        n,
        q: (0..k * n).map(|_| rng.below(64) as u32).collect(),
        p: (0..k * n).map(|_| rng.below(64) as u32).collect(),
    };
    let samples = vec![draw(5, 4), draw(3, 4)];
    check_model("local+lrc", &store, &[image(2, 10), image(2, 11)], |t, p, x| {
        let fq = model.forward_local(t, p, x[0])?;
        let fp = model.forward_local(t, p, x[1])?;
        t.local_contrast_loss(
            fq,
            fp,
            &samples,
            LocalLossConfig {
                temperature: 0.1,
                renormalize_means: false,
                normalize_pixels: false,
            },
        )
    });
}

#[test]
fn combined_segmentation_model_with_dice() {
    let mut store = ParamStore::new();
    let model = SegModel::new(&mut store, tiny(), Branches::Combined, 3, &mut Rng::new(12)).unwrap();
    let targets: Vec<u32> = (0..2 * 64).map(|i| ((i / 8 + i % 8) % 3) as u32).collect();
    check_model("seg+dice", &store, &[image(2, 13)], |t, p, x| {
        let logits = model.forward(t, p, x[0])?;
        t.dice_loss(logits, &targets, DiceConfig::default())
    });
}
