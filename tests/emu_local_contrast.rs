//! Emulated parity of `kernels/local_contrast.cu` (the fused LRC loss, forward and backward)
//! against its CPU twin (`Tape::local_contrast_loss`, evaluated in f64 on the same f32 inputs).
//! The launches are planned by `lrc::device::cuda::local_contrast` on emulator addresses; every
//! output and scratch buffer starts as NaN, and the gradient of every pixel no sample hits must
//! come out exactly 0.
//!
//! Tolerances, from f32 rounding (unit roundoff u = 2^-24) on inputs with |x| <= 1:
//! - a logit a.b / t carries the error of the region means (n terms each, plus the D terms of a
//!   pixel norm when normalising) and of a D-term dot product: at most about (2D + 2n) u / t in
//!   magnitude, since every |mean| <= 1 (before renormalisation; renormalising adds a few u).
//!   Call that e. A log-sum-exp adds at most 2K u of summation error; a row loss is a
//!   log-sum-exp minus a logit, and the image loss a mean of them: loss atol = 2e + 2K u.
//! - the gradients are sums over 2K regions of softmax weights (relative error <= 2e) times
//!   means, then pass through the normalisation Jacobians, whose cancellations leave the error
//!   relative to the largest gradient rather than to each element: atol = 8 (e + K u) times the
//!   largest reference gradient, plus rtol 1e-5. The factor 8 covers the three coefficients per
//!   region pair and the (v - y (y . v)) / |x| steps. A wrong term (one region, one sample,
//!   one channel) is off by O(1 / (K n)) of the largest gradient, far above these bounds.
//!
//! BF16 inputs (the `_bf16` kernels, packed two values per word): the twin runs in f64 on the
//! inputs rounded to BF16 (`half::bf16`, round to nearest even) and widened, which is exactly
//! what the kernels load (widening BF16 to FP32 is exact). From the load on, the kernels do the
//! same FP32 arithmetic as for FP32 inputs, so the same error analysis and the SAME tolerances
//! apply: BF16 rounding is part of the inputs, not an error of the kernels. (Unit inputs, when
//! the loss does not normalise, are unit only to BF16 precision after rounding, |x| <= 1 + 2^-8:
//! a factor under 1.01 on the bounds.) Two stronger checks: on inputs that are already
//! BF16-representable, the BF16 kernels give exactly the bits of the FP32 kernels (only the
//! loading differs), and on generic inputs they do not (the rounding really happens).
//!
//! The emulator runs blocks one after another, so it shows no races between blocks: the kernels
//! have none by construction (every output element has a single writer; see the .cu file), and
//! the emulator runs every job under its forward and reverse schedules, which link the samples of
//! the pixel lists (atomicExch) in opposite orders: the lists are declared unordered and every
//! output must agree bit for bit between the two (tests/cuda_local_contrast.rs checks bitwise
//! repeatability on a GPU).

use local_contrast_common::{
    Case, Got, Want, all_options, as_loaded, assert_matches, describe, inputs, rounded, small_mixed_case,
};
use lrc::device::cuda::local_contrast::{
    EmbeddingType, LocalContrastBuffers, LocalContrastGeom, MAX_CHANNELS, SampleTable, backward_calls, forward_calls,
};
use lrc::device::cuda::pointwise::pack_bf16;
use lrc::device::emu::{self, EmuMemory};
use lrc::ops::local_contrast::{LocalLossConfig, RegionSamples};
use lrc::testing::{Tolerance, assert_close, widen};
use lrc::{Tape, Tensor};

mod local_contrast_common;

/// The CPU twin in f64: loss and the gradients of `grad` x loss.
fn reference(case: &Case, f: [&[f32]; 2], samples: &[RegionSamples], cfg: LocalLossConfig, grad: f64) -> Want {
    let mut tape = Tape::new();
    let shape = case.dims().to_vec();
    let q = tape.leaf(Tensor::from_vec(shape.clone(), widen(f[0])).unwrap());
    let p = tape.leaf(Tensor::from_vec(shape, widen(f[1])).unwrap());
    let loss = tape.local_contrast_loss(q, p, samples, cfg).unwrap();
    let value = tape.value(loss).scalar().unwrap();
    let grads = tape.backward(loss).unwrap();
    let scaled = |v: lrc::Var| -> Vec<f64> {
        grads
            .get(v)
            .unwrap()
            .to_f64_vec()
            .unwrap()
            .into_iter()
            .map(|x| x * grad)
            .collect()
    };
    (value, scaled(q), scaled(p))
}

/// The planned kernels on the emulator: loss and gradients for upstream gradient `grad`.
fn emulate(case: &Case, f: [&[f32]; 2], samples: &[RegionSamples], cfg: LocalLossConfig, grad: f32) -> Got {
    emulate_as(EmbeddingType::F32, case, f, samples, cfg, grad)
}

/// The embeddings as the kernels of `input` read them: FP32 as they are, or rounded to BF16
/// and packed two per word.
fn upload_as(mem: &mut EmuMemory, input: EmbeddingType, f: &[f32]) -> u64 {
    match input {
        EmbeddingType::F32 => mem.upload(f),
        EmbeddingType::Bf16 => mem.upload(&pack_bf16(f)),
    }
}

/// [`emulate`] with the embeddings in element type `input` (rounded to BF16 for `Bf16`).
fn emulate_as(
    input: EmbeddingType,
    case: &Case,
    f: [&[f32]; 2],
    samples: &[RegionSamples],
    cfg: LocalLossConfig,
    grad: f32,
) -> Got {
    let table = SampleTable::new(samples, case.h * case.w).unwrap();
    let g = LocalContrastGeom::new(case.dims(), &table, &cfg)
        .unwrap()
        .with_input(input);
    let mut mem = EmuMemory::new();
    let a = LocalContrastBuffers {
        f_q: upload_as(&mut mem, input, f[0]),
        f_p: upload_as(&mut mem, input, f[1]),
        table: mem.upload(table.words()),
        means: mem.alloc(g.means_len()),
        mean_norms: mem.alloc(g.norms_len()),
        lse: mem.alloc(g.rows),
        row_loss: mem.alloc(g.rows),
        loss: mem.alloc(1),
        grad_loss: mem.upload(&[grad]),
        mean_grads: mem.alloc(g.means_len()),
        // The pixel lists are linked with atomicExch, in an order that depends on the schedule;
        // the scatter adds each list's members in sample order, so the gradients do not.
        heads: mem.alloc_unordered(g.heads_len()),
        next: mem.alloc_unordered(g.next_len()),
        grad_q: mem.alloc(g.embedding_len()),
        grad_p: mem.alloc(g.embedding_len()),
    };
    let mut calls = forward_calls(&g, &a).unwrap();
    calls.extend(backward_calls(&g, &a).unwrap());
    mem.run(&calls).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    (
        mem.read::<f32>(a.loss, 1)[0],
        mem.read(a.grad_q, g.embedding_len()),
        mem.read(a.grad_p, g.embedding_len()),
    )
}

/// Runs `case` with `cfg` on the emulator, the embeddings in element type `input`, and checks it
/// against the CPU twin (for BF16 on the BF16-rounded inputs, with the same tolerances: see the
/// file's comment); returns the worst ratios to tolerance (loss, gradients).
fn check(
    input: EmbeddingType,
    case: &Case,
    cfg: LocalLossConfig,
    f: [&[f32]; 2],
    samples: &[RegionSamples],
) -> (f64, f64) {
    let grad = 0.75;
    let (fq, fp) = (as_loaded(input, f[0]), as_loaded(input, f[1]));
    let want = reference(case, [&fq, &fp], samples, cfg, grad);
    let got = emulate_as(input, case, f, samples, cfg, grad as f32);
    assert_matches(&describe(case, input, cfg), case, samples, &got, &want)
}

/// Every combination of the two options on one case, the embeddings in element type `input`.
fn check_all_options(input: EmbeddingType, case: &Case) {
    for cfg in all_options(case) {
        let (samples, fq, fp) = inputs(case, !cfg.normalize_pixels);
        check(input, case, cfg, [&fq, &fp], &samples);
    }
}

#[test]
fn mixed_region_counts_with_an_empty_image_and_a_single_region() {
    if !emu::available() {
        return;
    }
    check_all_options(EmbeddingType::F32, &small_mixed_case());
}

#[test]
fn region_and_sample_counts_across_chunk_boundaries() {
    if !emu::available() {
        return;
    }
    // 33 regions: two 32-wide chunks in the row kernels; 32: exactly one. 33 samples: two
    // 32-sample chunks in the means kernel. 45 channels: two per lane, the second partial.
    check_all_options(
        EmbeddingType::F32,
        &Case {
            name: "K = 33, 32; N = 33, 2; D = 45",
            d: 45,
            h: 6,
            w: 6,
            regions: vec![33, 32],
            samples: vec![33, 2],
            temperature: 0.1,
            seed: 2,
        },
    );
}

#[test]
fn channels_at_the_limit() {
    if !emu::available() {
        return;
    }
    check_all_options(
        EmbeddingType::F32,
        &Case {
            name: "D = 128",
            d: MAX_CHANNELS,
            h: 4,
            w: 5,
            regions: vec![3, 2],
            samples: vec![4, 1],
            temperature: 0.07,
            seed: 3,
        },
    );
}

#[test]
fn many_regions() {
    if !emu::available() {
        return;
    }
    many_regions_as(EmbeddingType::F32);
}

#[test]
fn bf16_inputs_with_many_regions() {
    if !emu::available() {
        return;
    }
    many_regions_as(EmbeddingType::Bf16);
}

fn many_regions_as(input: EmbeddingType) {
    // K = 512 and D = 128, the sizes the issue asks for, with few samples and pixels so that
    // the emulator stays quick.
    let case = Case {
        name: "K = 512, D = 128",
        d: MAX_CHANNELS,
        h: 16,
        w: 16,
        regions: vec![512],
        samples: vec![2],
        temperature: 0.5,
        seed: 4,
    };
    let (samples, fq, fp) = inputs(&case, false);
    check(input, &case, case.config(true, true), [&fq, &fp], &samples);
}

#[test]
fn a_batch_without_regions_has_zero_loss_and_gradients() {
    if !emu::available() {
        return;
    }
    let case = Case {
        name: "no regions",
        d: 5,
        h: 3,
        w: 4,
        regions: vec![0, 0],
        samples: vec![0, 3],
        temperature: 0.2,
        seed: 5,
    };
    let (samples, f, _) = inputs(&case, false);
    let cfg = case.config(false, true);
    let (loss, gq, gp) = emulate(&case, [&f, &f], &samples, cfg, 1.0);
    assert_eq!(loss, 0.0);
    assert!(gq.iter().chain(&gp).all(|&g| g == 0.0));
}

#[test]
fn a_zero_embedding_takes_the_clamped_normalisation_gradient() {
    if !emu::available() {
        return;
    }
    let case = Case {
        name: "zero pixel",
        d: 4,
        h: 3,
        w: 3,
        regions: vec![3],
        samples: vec![2],
        temperature: 0.5,
        seed: 6,
    };
    let (samples, mut fq, fp) = inputs(&case, false);
    // The first q sample's pixel has no direction: its norm is clamped to 1e-12 and its
    // gradient is v / 1e-12 (as ops::normalize), some 1e12 times the others.
    let zero_px = samples[0].q[0] as usize;
    for e in 0..case.d {
        fq[e * 9 + zero_px] = 0.0;
    }
    let cfg = case.config(false, true);
    let (want_loss, want_q, want_p) = reference(&case, [&fq, &fp], &samples, cfg, 1.0);
    let (got_loss, got_q, got_p) = emulate(&case, [&fq, &fp], &samples, cfg, 1.0);
    let (loss_tol, _) = case.tolerances(0.0);
    assert_close("zero pixel: loss", &[got_loss], &[want_loss], loss_tol);
    // The gradients of the other pixels, then the clamped pixel's with its tolerance scaled by
    // the same 1e12.
    let is_zero_px = |i: usize| i % 9 == zero_px;
    let split = |v: &[f64], clamped: bool| -> Vec<f64> {
        v.iter()
            .enumerate()
            .filter(|&(i, _)| is_zero_px(i) == clamped)
            .map(|(_, &x)| x)
            .collect()
    };
    let split32 = |v: &[f32], clamped: bool| -> Vec<f32> {
        v.iter()
            .enumerate()
            .filter(|&(i, _)| is_zero_px(i) == clamped)
            .map(|(_, &x)| x)
            .collect()
    };
    let others: Vec<f64> = split(&want_q, false)
        .into_iter()
        .chain(want_p.iter().copied())
        .collect();
    let largest = others.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let (_, tol) = case.tolerances(largest);
    assert_close(
        "zero pixel: grad_q elsewhere",
        &split32(&got_q, false),
        &split(&want_q, false),
        tol,
    );
    assert_close("zero pixel: grad_p", &got_p, &want_p, tol);
    let clamped_want = split(&want_q, true);
    assert!(clamped_want.iter().any(|x| x.abs() > 1e6 * largest), "{clamped_want:?}");
    let clamped_tol = Tolerance {
        atol: tol.atol * 1e12,
        rtol: tol.rtol,
    };
    assert_close(
        "zero pixel: grad_q at the pixel",
        &split32(&got_q, true),
        &clamped_want,
        clamped_tol,
    );
}

#[test]
fn the_gradients_do_not_depend_on_the_order_of_the_pixel_lists() {
    if !emu::available() {
        return;
    }
    // 9 pixels for 48 samples per view: most pixels are hit by several regions.
    let case = Case {
        name: "crowded pixels",
        d: 7,
        h: 3,
        w: 3,
        regions: vec![6, 2],
        samples: vec![5, 9],
        temperature: 0.2,
        seed: 7,
    };
    let (samples, fq, fp) = inputs(&case, false);
    let cfg = case.config(true, true);
    let table = SampleTable::new(&samples, case.h * case.w).unwrap();
    let g = LocalContrastGeom::new(case.dims(), &table, &cfg).unwrap();
    let run = |reorder: bool| -> (Vec<f32>, Vec<f32>, usize) {
        let mut mem = EmuMemory::new();
        let a = LocalContrastBuffers {
            f_q: mem.upload(&fq),
            f_p: mem.upload(&fp),
            table: mem.upload(table.words()),
            means: mem.alloc(g.means_len()),
            mean_norms: mem.alloc(g.norms_len()),
            lse: mem.alloc(g.rows),
            row_loss: mem.alloc(g.rows),
            loss: mem.alloc(1),
            grad_loss: mem.upload(&[1.0f32]),
            mean_grads: mem.alloc(g.means_len()),
            // Linked in a schedule-dependent order (atomicExch); relinked below to show that
            // the gradients do not depend on it.
            heads: mem.alloc_unordered(g.heads_len()),
            next: mem.alloc_unordered(g.next_len()),
            grad_q: mem.alloc(g.embedding_len()),
            grad_p: mem.alloc(g.embedding_len()),
        };
        let mut calls = forward_calls(&g, &a).unwrap();
        let backward = backward_calls(&g, &a).unwrap();
        let link_end = backward.iter().position(|c| c.kernel == "local_contrast_link").unwrap() + 1;
        calls.extend(backward[..link_end].iter().cloned());
        mem.run(&calls).unwrap();
        // Relink every list in increasing sample order, the reverse of what the emulated
        // atomics left (each sample pushed itself in front of the ones before it).
        let mut heads: Vec<u32> = mem.read(a.heads, g.heads_len());
        let mut next: Vec<u32> = mem.read(a.next, g.next_len());
        let mut longest = 0;
        for view in 0..2 {
            let next = &mut next[view * g.samples..(view + 1) * g.samples];
            for head in &mut heads[view * g.images * g.hw..(view + 1) * g.images * g.hw] {
                let mut members = Vec::new();
                let mut t = *head;
                while t != u32::MAX {
                    members.push(t);
                    t = next[t as usize];
                }
                assert!(members.windows(2).all(|w| w[0] > w[1]), "{members:?}");
                longest = longest.max(members.len());
                if reorder && !members.is_empty() {
                    members.reverse();
                    *head = members[0];
                    for w in members.windows(2) {
                        next[w[0] as usize] = w[1];
                    }
                    next[*members.last().unwrap() as usize] = u32::MAX;
                }
            }
        }
        mem.write(a.heads, &heads);
        mem.write(a.next, &next);
        mem.run(&backward[link_end..]).unwrap();
        (
            mem.read(a.grad_q, g.embedding_len()),
            mem.read(a.grad_p, g.embedding_len()),
            longest,
        )
    };
    let (as_linked, reordered) = (run(false), run(true));
    assert!(
        as_linked.2 >= 5,
        "the case must crowd pixels: longest list {}",
        as_linked.2
    );
    for (view, a, b) in [("q", &as_linked.0, &reordered.0), ("p", &as_linked.1, &reordered.1)] {
        let differs = a.iter().zip(b).position(|(x, y)| x.to_bits() != y.to_bits());
        assert_eq!(
            differs,
            None,
            "grad_{view}: relinking changed element {differs:?}: {:?} vs {:?}",
            differs.map(|i| a[i]),
            differs.map(|i| b[i])
        );
    }
    // And both are the gradients of the CPU twin.
    let (_, want_q, want_p) = reference(&case, [&fq, &fp], &samples, cfg, 1.0);
    let largest = want_q.iter().chain(&want_p).fold(0.0f64, |m, x| m.max(x.abs()));
    let (_, tol) = case.tolerances(largest);
    assert_close("crowded pixels: grad_q", &reordered.0, &want_q, tol);
    assert_close("crowded pixels: grad_p", &reordered.1, &want_p, tol);
}

#[test]
fn every_kernel_is_registered_with_the_emulator() {
    if !emu::available() {
        return;
    }
    let registered = emu::registered_kernels().unwrap_or_else(|e| panic!("{e}"));
    for name in lrc::device::cuda::local_contrast::all_kernel_names() {
        let entry = registered.iter().find(|(n, _)| *n == name);
        assert_eq!(entry.map(|e| e.1), Some(184), "{name}");
    }
}

#[test]
fn bf16_inputs_with_mixed_region_counts_and_an_odd_value_count() {
    if !emu::available() {
        return;
    }
    // 3 x 19 x 35 = 1995 values per map: odd, so the last word of each packed map holds one
    // value and its padding half.
    let case = small_mixed_case();
    assert_eq!(case.len() % 2, 1);
    check_all_options(EmbeddingType::Bf16, &case);
}

#[test]
fn bf16_inputs_across_chunk_boundaries_and_at_the_channel_limit() {
    if !emu::available() {
        return;
    }
    check_all_options(
        EmbeddingType::Bf16,
        &Case {
            name: "K = 33, 1; N = 33, 2; D = 45",
            d: 45,
            h: 5,
            w: 5,
            regions: vec![33, 1],
            samples: vec![33, 2],
            temperature: 0.1,
            seed: 12,
        },
    );
    check_all_options(
        EmbeddingType::Bf16,
        &Case {
            name: "D = 128",
            d: MAX_CHANNELS,
            h: 3,
            w: 5,
            regions: vec![3, 2, 0],
            samples: vec![4, 1, 2],
            temperature: 0.07,
            seed: 13,
        },
    );
}

#[test]
fn bf16_inputs_take_only_their_rounding_from_fp32() {
    if !emu::available() {
        return;
    }
    let case = small_mixed_case();
    let bits = |r: &Got| -> Vec<u32> {
        std::iter::once(r.0)
            .chain(r.1.iter().copied())
            .chain(r.2.iter().copied())
            .map(f32::to_bits)
            .collect()
    };
    for normalize_pixels in [false, true] {
        let (samples, fq, fp) = inputs(&case, !normalize_pixels);
        let cfg = case.config(true, normalize_pixels);
        let what = format!("normalize_pixels {normalize_pixels}");
        // On BF16-representable inputs only the loading differs: the same bits.
        let (rq, rp) = (rounded(&fq), rounded(&fp));
        let fp32 = emulate_as(EmbeddingType::F32, &case, [&rq, &rp], &samples, cfg, 0.5);
        let bf16 = emulate_as(EmbeddingType::Bf16, &case, [&rq, &rp], &samples, cfg, 0.5);
        let (a, b) = (bits(&fp32), bits(&bf16));
        let first = a.iter().zip(&b).position(|(x, y)| x != y);
        assert_eq!(
            first, None,
            "{what}: BF16 and FP32 kernels differ on BF16 values at {first:?} (0: the loss)"
        );
        // On generic inputs the BF16 kernels see rounded values: the loss and gradients move.
        let generic = emulate_as(EmbeddingType::F32, &case, [&fq, &fp], &samples, cfg, 0.5);
        let from_generic = emulate_as(EmbeddingType::Bf16, &case, [&fq, &fp], &samples, cfg, 0.5);
        assert_eq!(bits(&from_generic), b, "{what}: packing rounds the inputs once");
        assert_ne!(generic.0.to_bits(), bf16.0.to_bits(), "{what}: the loss");
        let moved = generic
            .1
            .iter()
            .zip(&bf16.1)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        let hit = generic.1.iter().filter(|g| **g != 0.0).count();
        assert!(moved * 2 > hit, "{what}: {moved} of {hit} sampled q gradients moved");
        println!(
            "{what}: loss fp32 {} bf16 {} (equal bits on BF16 inputs), {moved} of {hit} q gradients differ",
            generic.0, bf16.0
        );
    }
}
