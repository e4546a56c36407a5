//! CPU U-Net training step: forward + backward + Adam, batch 4, 1 x 128 x 128, base width 32,
//! depth 5 (the engine core's reference figure; compare with
//! `python3 scripts/torch_reference.py --bench step --device cpu --batch 4 --size 128`).

use criterion::{Criterion, criterion_group, criterion_main};
use lrc::nn::{ParamStore, UNet, UNetConfig};
use lrc::optim::{Optimizer, OptimizerKind};
use lrc::rng::Rng;
use lrc::{DType, Tape, Tensor};

fn step(c: &mut Criterion) {
    let mut rng = Rng::new(0);
    let mut store = ParamStore::new();
    let unet = UNet::new(&mut store, "", UNetConfig::default(), &mut rng).unwrap();
    let x = Tensor::uniform(vec![4, 1, 128, 128], 0.0, 1.0, DType::F32, &mut rng);
    let mut opt = Optimizer::new(OptimizerKind::adam(1e-4));
    let mut group = c.benchmark_group("cpu");
    group.sample_size(10);
    group.bench_function("unet_train_step_b4_128_base32_depth5", |b| {
        b.iter(|| {
            let mut tape = Tape::new();
            let p = store.bind(&mut tape);
            let xv = tape.constant(x.clone());
            let y = unet.forward(&mut tape, &p, xv).unwrap();
            let loss = tape.mean(y).unwrap();
            let grads = tape.backward(loss).unwrap();
            store.zero_grad();
            store.accumulate_grads(&grads, &p).unwrap();
            opt.step(&mut store, 1e-4).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, step);
criterion_main!(benches);
