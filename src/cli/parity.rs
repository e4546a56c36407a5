//! `lrc parity`: runs the engine on fixed weights and inputs and writes every output and
//! gradient to one safetensors file, which `scripts/torch_reference.py --check FILE` recomputes
//! in PyTorch and compares.

use std::collections::BTreeMap;
use std::path::Path;

use crate::autograd::{Tape, Var};
use crate::checkpoint;
use crate::error::Result;
use crate::gradcheck::{projection_weights, random_projection};
use crate::nn::{Bound, Branches, ContrastModel, ParamStore, SegModel, UNet, UNetConfig};
use crate::ops::dice::DiceConfig;
use crate::ops::local_contrast::{LocalLossConfig, RegionSamples};
use crate::optim::{Optimizer, OptimizerKind};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

pub const BATCH: usize = 2;
pub const SIDE: usize = 32;
pub const CLASSES: usize = 4;
pub const QUEUE: usize = 16;
pub const PROJ_DIM: usize = 128;
pub const EMBED_DIM: usize = 8;
pub const REGIONS: usize = 6;
pub const SAMPLES: usize = 4;
pub const TEMPERATURE: f64 = 0.07;

pub fn config() -> UNetConfig {
    UNetConfig {
        in_channels: 1,
        base_width: 8,
        depth: 4,
        max_width: 512,
    }
}

struct Export(Vec<(String, Tensor)>);

impl Export {
    fn put(&mut self, name: impl Into<String>, t: Tensor) {
        self.0.push((name.into(), t));
    }

    fn params(&mut self, prefix: &str, store: &ParamStore) {
        for p in store.params() {
            self.put(format!("{prefix}/param/{}", p.name), p.value.clone());
        }
    }

    fn grads(&mut self, prefix: &str, store: &ParamStore) {
        for p in store.params() {
            if let Some(g) = &p.grad {
                self.put(format!("{prefix}/grad/{}", p.name), g.clone());
            }
        }
    }
}

fn ints(values: &[u32], shape: Vec<usize>) -> Result<Tensor> {
    Tensor::from_vec(shape, values.iter().map(|&v| v as f32).collect::<Vec<f32>>())
}

/// Runs `loss` on a fresh tape, stores the gradients in `store`, returns the loss value and
/// the output tensor of interest.
fn run(
    store: &mut ParamStore,
    inputs: &[Tensor],
    loss: impl Fn(&mut Tape, &Bound, &[Var]) -> Result<(Var, Var)>,
) -> Result<(f64, Tensor, Vec<Option<Tensor>>)> {
    let mut tape = Tape::new();
    let bound = store.bind(&mut tape);
    let vars: Vec<Var> = inputs.iter().map(|t| tape.leaf(t.clone())).collect();
    let (l, out) = loss(&mut tape, &bound, &vars)?;
    let grads = tape.backward(l)?;
    store.zero_grad();
    store.accumulate_grads(&grads, &bound)?;
    let input_grads = vars.iter().map(|v| grads.get(*v).cloned()).collect();
    Ok((tape.value(l).scalar()?, tape.value(out).clone(), input_grads))
}

pub fn export(path: &Path, seed: u64) -> Result<()> {
    let cfg = config();
    let mut rng = Rng::new(seed);
    let mut ex = Export(Vec::new());
    let shape = vec![BATCH, 1, SIDE, SIDE];
    let x1 = Tensor::uniform(shape.clone(), 0.0, 1.0, DType::F32, &mut rng);
    let x2 = Tensor::uniform(shape, 0.0, 1.0, DType::F32, &mut rng);
    ex.put("inputs/x1", x1.clone());
    ex.put("inputs/x2", x2.clone());

    // U-Net features under a fixed random projection.
    let mut store = ParamStore::new();
    let unet = UNet::new(&mut store, "", cfg, &mut rng)?;
    ex.params("unet", &store);
    let proj_seed = 11;
    let (loss, out, gin) = run(&mut store, std::slice::from_ref(&x1), |t, p, x| {
        let y = unet.forward(t, p, x[0])?;
        Ok((random_projection(t, y, proj_seed)?, y))
    })?;
    ex.put(
        "inputs/projection",
        projection_weights(out.shape(), DType::F32, proj_seed)?,
    );
    ex.put("unet/out", out);
    ex.put("unet/loss", Tensor::from_vec(vec![1], vec![loss as f32])?);
    ex.put("unet/grad_input", gin[0].clone().expect("input gradient"));
    ex.grads("unet", &store);
    optimizer_trajectories(&mut ex, &store)?;

    // Global model + InfoNCE against a normalised random queue.
    let mut store = ParamStore::new();
    let global = ContrastModel::global(&mut store, cfg, PROJ_DIM, &mut rng)?;
    ex.params("global", &store);
    let queue = Tensor::randn(vec![QUEUE, PROJ_DIM], 1.0, DType::F32, &mut rng);
    ex.put("inputs/queue", queue.clone());
    let (loss, out, _) = run(&mut store, &[x1.clone(), x2.clone(), queue], |t, p, x| {
        let q = global.forward_global(t, p, x[0])?;
        let qn = t.l2_normalize(q)?;
        let k = global.forward_global(t, p, x[1])?;
        let kn = t.l2_normalize(k)?;
        let n = t.l2_normalize(x[2])?;
        Ok((t.infonce(qn, kn, n, TEMPERATURE)?, q))
    })?;
    ex.put("global/out", out);
    ex.put("global/loss", Tensor::from_vec(vec![1], vec![loss as f32])?);
    ex.grads("global", &store);

    // LRC model + local loss on random regions.
    let mut store = ParamStore::new();
    let local = ContrastModel::local(&mut store, cfg, EMBED_DIM, &mut rng)?;
    ex.params("local", &store);
    let samples: Vec<RegionSamples> = (0..BATCH)
        .map(|_| RegionSamples {
            labels: (1..=REGIONS as u32).collect(),
            n: SAMPLES,
            q: (0..REGIONS * SAMPLES)
                .map(|_| rng.below((SIDE * SIDE) as u64) as u32)
                .collect(),
            p: (0..REGIONS * SAMPLES)
                .map(|_| rng.below((SIDE * SIDE) as u64) as u32)
                .collect(),
        })
        .collect();
    let q_idx: Vec<u32> = samples.iter().flat_map(|s| s.q.clone()).collect();
    let p_idx: Vec<u32> = samples.iter().flat_map(|s| s.p.clone()).collect();
    ex.put("inputs/q_idx", ints(&q_idx, vec![BATCH, REGIONS, SAMPLES])?);
    ex.put("inputs/p_idx", ints(&p_idx, vec![BATCH, REGIONS, SAMPLES])?);
    let lcfg = LocalLossConfig {
        temperature: TEMPERATURE,
        renormalize_means: false,
        normalize_pixels: false,
    };
    let (loss, out, _) = run(&mut store, &[x1.clone(), x2], |t, p, x| {
        let fq = local.forward_local(t, p, x[0])?;
        let fp = local.forward_local(t, p, x[1])?;
        Ok((t.local_contrast_loss(fq, fp, &samples, lcfg)?, fq))
    })?;
    ex.put("local/out", out);
    ex.put("local/loss", Tensor::from_vec(vec![1], vec![loss as f32])?);
    ex.grads("local", &store);

    // Combined segmentation model + Dice and cross-entropy.
    let mut store = ParamStore::new();
    let seg = SegModel::new(&mut store, cfg, Branches::Combined, CLASSES, &mut rng)?;
    ex.params("seg", &store);
    let targets: Vec<u32> = (0..BATCH * SIDE * SIDE)
        .map(|_| rng.below(CLASSES as u64) as u32)
        .collect();
    ex.put("inputs/targets", ints(&targets, vec![BATCH, SIDE, SIDE])?);
    let (loss, out, _) = run(&mut store, std::slice::from_ref(&x1), |t, p, x| {
        let logits = seg.forward(t, p, x[0])?;
        let dice = t.dice_loss(logits, &targets, DiceConfig::default())?;
        let ce = t.cross_entropy(logits, &targets)?;
        Ok((t.add(dice, ce)?, logits))
    })?;
    ex.put("seg/out", out);
    ex.put("seg/loss", Tensor::from_vec(vec![1], vec![loss as f32])?);
    ex.grads("seg", &store);

    let meta = BTreeMap::from([
        ("format".to_string(), "lrc-parity-1".to_string()),
        (
            "unet_config".to_string(),
            serde_json::to_string(&cfg).expect("config serialises"),
        ),
        ("temperature".to_string(), TEMPERATURE.to_string()),
        ("classes".to_string(), CLASSES.to_string()),
        ("embed_dim".to_string(), EMBED_DIM.to_string()),
        ("proj_dim".to_string(), PROJ_DIM.to_string()),
    ]);
    checkpoint::save(path, &ex.0, &meta)
}

/// Three steps of each optimizer from the U-Net's weights with its (fixed) gradients.
fn optimizer_trajectories(ex: &mut Export, store: &ParamStore) -> Result<()> {
    let runs = [
        ("sgd", OptimizerKind::sgd(0.9, 1e-4), 0.03),
        ("adam", OptimizerKind::adam(1e-4), 1e-3),
        ("adamw", OptimizerKind::adamw(1e-2), 1e-3),
    ];
    for (name, kind, lr) in runs {
        let mut s = store.clone();
        let mut opt = Optimizer::new(kind);
        for _ in 0..3 {
            opt.step(&mut s, lr)?;
        }
        for p in s.params() {
            ex.put(format!("optim/{name}/{}", p.name), p.value.clone());
        }
    }
    Ok(())
}
