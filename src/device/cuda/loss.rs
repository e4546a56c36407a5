//! Channel-axis ops and losses on the GPU: the host side of `kernels/loss.cu` - L2
//! normalisation, log-softmax, cross-entropy, InfoNCE and soft Dice, forward and backward, and
//! the class arg-max that turns logits into labels.
//!
//! Tensors are seen as (outer, channels, inner): one vector per position (o, i). Planners take
//! the [`PositionLayout`] explicitly (tests run both); the wrappers choose it with
//! [`position_layout`]. Every loss lands in a one-element device buffer and every backward reads
//! the upstream gradient from a device address, so no host copy happens inside a training step.
//! Reductions are fixed-order (per-block partial sums, then one block adds them in order), so
//! results are deterministic.
//!
//! Class targets (and InfoNCE's exclusion mask) are device buffers of u32 here; the ops upload
//! the host's per-batch labels with [`CudaStorage::from_host_u32`].

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::call::{KernelCall, blocks_for};
use super::gemm::{Epilogue, GemmAlgo, GemmPlan, GemmShape, gemm_calls, gemm_plan};
use super::launch::dim;
use super::operand::{check_len, common_device};
use super::{CudaDevice, CudaStorage};
use crate::error::{Error, Result};
use crate::ops::dice::DiceConfig;

const MODULE: &str = "loss";
const THREADS: usize = 256;
const WARP: usize = 32;
/// Positions per block of `dice_partials` (4 per thread); must match loss.cu.
const DICE_POSITIONS_PER_BLOCK: usize = 4 * THREADS;

/// `L2NormParams` of `kernels/loss.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct L2NormParams {
    pub x: u64,
    pub dy: u64,
    pub norms: u64,
    pub norms_out: u64,
    pub out: u64,
    pub positions: i32,
    pub channels: i32,
    pub inner: i32,
    pub eps: f32,
}

const _: () = assert!(size_of::<L2NormParams>() == 56);
const _: () = assert!(std::mem::offset_of!(L2NormParams, positions) == 40);

/// `LogSoftmaxParams` of `kernels/loss.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct LogSoftmaxParams {
    pub x: u64,
    pub dy: u64,
    pub out: u64,
    pub positions: i32,
    pub channels: i32,
    pub inner: i32,
    pub reserved: i32,
}

const _: () = assert!(size_of::<LogSoftmaxParams>() == 40);
const _: () = assert!(std::mem::offset_of!(LogSoftmaxParams, positions) == 24);

/// `CrossEntropyParams` of `kernels/loss.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct CrossEntropyParams {
    pub x: u64,
    pub targets: u64,
    pub upstream: u64,
    pub lse: u64,
    pub partial: u64,
    pub dx: u64,
    pub positions: i32,
    pub channels: i32,
    pub inner: i32,
    pub count: f32,
}

const _: () = assert!(size_of::<CrossEntropyParams>() == 64);
const _: () = assert!(std::mem::offset_of!(CrossEntropyParams, positions) == 48);

/// `MeanParams` of `kernels/loss.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct MeanParams {
    pub x: u64,
    pub out: u64,
    pub len: i32,
    pub divisor: f32,
}

const _: () = assert!(size_of::<MeanParams>() == 24);
const _: () = assert!(std::mem::offset_of!(MeanParams, len) == 16);

/// `InfoNceParams` of `kernels/loss.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct InfoNceParams {
    pub q: u64,
    pub k: u64,
    pub mask: u64,
    pub upstream: u64,
    pub probs: u64,
    pub pos_probs: u64,
    pub row_loss: u64,
    pub dq: u64,
    pub dk: u64,
    pub rows: i32,
    pub queue_len: i32,
    pub dim: i32,
    pub mask_words: i32,
    pub inv_t: f32,
    pub rows_t: f32,
}

const _: () = assert!(size_of::<InfoNceParams>() == 96);
const _: () = assert!(std::mem::offset_of!(InfoNceParams, rows) == 72);

/// `DiceParams` of `kernels/loss.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct DiceParams {
    pub x: u64,
    pub targets: u64,
    pub upstream: u64,
    pub partial: u64,
    pub coef: u64,
    pub loss: u64,
    pub dx: u64,
    pub positions: i32,
    pub classes: i32,
    pub inner: i32,
    pub first_class: i32,
    pub blocks: i32,
    pub eps: f32,
}

const _: () = assert!(size_of::<DiceParams>() == 80);
const _: () = assert!(std::mem::offset_of!(DiceParams, positions) == 56);

/// `ArgMaxParams` of `kernels/loss.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ArgMaxParams {
    pub x: u64,
    pub out: u64,
    pub positions: i32,
    pub channels: i32,
    pub inner: i32,
    pub reserved: i32,
}

const _: () = assert!(size_of::<ArgMaxParams>() == 32);
const _: () = assert!(std::mem::offset_of!(ArgMaxParams, positions) == 16);

/// How position kernels map positions to threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PositionLayout {
    /// One thread per position looping over the channels: loads coalesce along `inner`.
    Thread,
    /// One warp per position, lanes striding the channels: for contiguous vectors (inner 1).
    Warp,
}

impl PositionLayout {
    pub const ALL: [PositionLayout; 2] = [PositionLayout::Thread, PositionLayout::Warp];

    fn positions_per_block(self) -> usize {
        match self {
            PositionLayout::Thread => THREADS,
            PositionLayout::Warp => THREADS / WARP,
        }
    }

    fn kernel(self, thread: &'static str, warp: &'static str) -> &'static str {
        match self {
            PositionLayout::Thread => thread,
            PositionLayout::Warp => warp,
        }
    }
}

/// The layout the wrappers use: a warp per vector when each vector is contiguous (inner 1),
/// where a thread per vector would read a warp's 32 vectors with 32 separate transactions.
pub fn position_layout(_channels: usize, inner: usize) -> PositionLayout {
    if inner == 1 {
        PositionLayout::Warp
    } else {
        PositionLayout::Thread
    }
}

/// Blocks of a position kernel over `positions` (also the number of cross-entropy partials).
pub fn position_blocks(layout: PositionLayout, positions: usize) -> usize {
    blocks_for(positions, layout.positions_per_block())
}

/// Every kernel of `kernels/loss.cu`.
pub fn kernel_names() -> Vec<&'static str> {
    vec![
        "l2norm_fwd_thread",
        "l2norm_fwd_warp",
        "l2norm_bwd_thread",
        "l2norm_bwd_warp",
        "log_softmax_fwd_thread",
        "log_softmax_fwd_warp",
        "log_softmax_bwd_thread",
        "log_softmax_bwd_warp",
        "cross_entropy_fwd_thread",
        "cross_entropy_fwd_warp",
        "cross_entropy_bwd_thread",
        "cross_entropy_bwd_warp",
        "loss_mean",
        "infonce_rows",
        "infonce_bwd_pos",
        "dice_partials",
        "dice_finish",
        "dice_bwd",
        "class_arg_max_thread",
    ]
}

/// An (outer, channels, inner) tensor as the kernels index it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelShape {
    pub outer: usize,
    pub channels: usize,
    pub inner: usize,
}

impl ChannelShape {
    pub fn positions(&self) -> usize {
        self.outer * self.inner
    }

    pub fn len(&self) -> usize {
        self.outer * self.channels * self.inner
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (positions, channels, inner) as kernel integers.
    fn dims(&self, op: &'static str) -> Result<(i32, i32, i32)> {
        dim(op, "elements", self.len())?;
        Ok((
            dim(op, "positions", self.positions())?,
            dim(op, "channels", self.channels)?,
            dim(op, "inner", self.inner)?,
        ))
    }
}

fn position_call<P: Pod>(
    layout: PositionLayout,
    kernels: (&'static str, &'static str),
    positions: usize,
    p: &P,
) -> KernelCall {
    KernelCall::new(
        MODULE,
        layout.kernel(kernels.0, kernels.1),
        (position_blocks(layout, positions), 1, 1),
        THREADS as u32,
        p,
    )
}

/// `y = x / max(|x|, eps)` per position of `x`, and the clamped norms (one per position).
pub fn l2_normalize_calls(
    layout: PositionLayout,
    s: &ChannelShape,
    eps: f32,
    x: u64,
    y: u64,
    norms: u64,
) -> Result<Vec<KernelCall>> {
    if s.positions() == 0 {
        return Ok(Vec::new());
    }
    let (positions, channels, inner) = s.dims("l2_normalize")?;
    let p = L2NormParams {
        x,
        norms_out: norms,
        out: y,
        positions,
        channels,
        inner,
        eps,
        ..L2NormParams::default()
    };
    Ok(vec![position_call(
        layout,
        ("l2norm_fwd_thread", "l2norm_fwd_warp"),
        s.positions(),
        &p,
    )])
}

/// `dx` of [`l2_normalize_calls`] from its output `y`, the norms and `dy`.
#[allow(clippy::too_many_arguments)]
pub fn l2_normalize_backward_calls(
    layout: PositionLayout,
    s: &ChannelShape,
    eps: f32,
    y: u64,
    norms: u64,
    dy: u64,
    dx: u64,
) -> Result<Vec<KernelCall>> {
    if s.positions() == 0 {
        return Ok(Vec::new());
    }
    let (positions, channels, inner) = s.dims("l2_normalize backward")?;
    let p = L2NormParams {
        x: y,
        dy,
        norms,
        out: dx,
        positions,
        channels,
        inner,
        eps,
        ..L2NormParams::default()
    };
    Ok(vec![position_call(
        layout,
        ("l2norm_bwd_thread", "l2norm_bwd_warp"),
        s.positions(),
        &p,
    )])
}

/// `y = x - logsumexp(x)` per position.
pub fn log_softmax_calls(layout: PositionLayout, s: &ChannelShape, x: u64, y: u64) -> Result<Vec<KernelCall>> {
    if s.positions() == 0 {
        return Ok(Vec::new());
    }
    let (positions, channels, inner) = s.dims("log_softmax")?;
    let p = LogSoftmaxParams {
        x,
        out: y,
        positions,
        channels,
        inner,
        ..LogSoftmaxParams::default()
    };
    Ok(vec![position_call(
        layout,
        ("log_softmax_fwd_thread", "log_softmax_fwd_warp"),
        s.positions(),
        &p,
    )])
}

/// `dx = dy - exp(y) sum(dy)` per position, from the forward's output `y`.
pub fn log_softmax_backward_calls(
    layout: PositionLayout,
    s: &ChannelShape,
    y: u64,
    dy: u64,
    dx: u64,
) -> Result<Vec<KernelCall>> {
    if s.positions() == 0 {
        return Ok(Vec::new());
    }
    let (positions, channels, inner) = s.dims("log_softmax backward")?;
    let p = LogSoftmaxParams {
        x: y,
        dy,
        out: dx,
        positions,
        channels,
        inner,
        ..LogSoftmaxParams::default()
    };
    Ok(vec![position_call(
        layout,
        ("log_softmax_bwd_thread", "log_softmax_bwd_warp"),
        s.positions(),
        &p,
    )])
}

/// The launch that writes the mean of `len` values at `x` (summed in a fixed order) to `out`.
fn mean_call(op: &'static str, x: u64, len: usize, divisor: usize, out: u64) -> Result<KernelCall> {
    let p = MeanParams {
        x,
        out,
        len: dim(op, "partial sums", len)?,
        divisor: divisor as f32,
    };
    Ok(KernelCall::new(MODULE, "loss_mean", (1, 1, 1), THREADS as u32, &p))
}

/// The mean over positions of `-log softmax(x)[target]` into `loss` (one value), the
/// log-sum-exp of every position into `lse` (for the backward), through `partial`
/// ([`position_blocks`] values). `targets`: one u32 class per position.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_calls(
    layout: PositionLayout,
    s: &ChannelShape,
    x: u64,
    targets: u64,
    lse: u64,
    partial: u64,
    loss: u64,
) -> Result<Vec<KernelCall>> {
    const OP: &str = "cross_entropy";
    let (positions, channels, inner) = s.dims(OP)?;
    if s.positions() == 0 {
        return Err(Error::shape(OP, "no positions to average over"));
    }
    let p = CrossEntropyParams {
        x,
        targets,
        lse,
        partial,
        positions,
        channels,
        inner,
        count: s.positions() as f32,
        ..CrossEntropyParams::default()
    };
    let blocks = position_blocks(layout, s.positions());
    Ok(vec![
        position_call(
            layout,
            ("cross_entropy_fwd_thread", "cross_entropy_fwd_warp"),
            s.positions(),
            &p,
        ),
        mean_call(OP, partial, blocks, s.positions(), loss)?,
    ])
}

/// `dx = upstream / positions * (softmax(x) - onehot(target))`, with the forward's `lse` and the
/// loss's gradient read at `upstream`.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_backward_calls(
    layout: PositionLayout,
    s: &ChannelShape,
    x: u64,
    targets: u64,
    lse: u64,
    upstream: u64,
    dx: u64,
) -> Result<Vec<KernelCall>> {
    const OP: &str = "cross_entropy backward";
    if s.positions() == 0 {
        return Ok(Vec::new());
    }
    let (positions, channels, inner) = s.dims(OP)?;
    let p = CrossEntropyParams {
        x,
        targets,
        upstream,
        lse,
        dx,
        positions,
        channels,
        inner,
        count: s.positions() as f32,
        ..CrossEntropyParams::default()
    };
    Ok(vec![position_call(
        layout,
        ("cross_entropy_bwd_thread", "cross_entropy_bwd_warp"),
        s.positions(),
        &p,
    )])
}

/// InfoNCE's sizes: queries and keys `rows x dim`, a queue of `queue_len x dim` negatives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InfoNceShape {
    pub rows: usize,
    pub queue_len: usize,
    pub dim: usize,
}

impl InfoNceShape {
    /// u32 words of one row of the exclusion mask (one bit per negative).
    pub fn mask_words(&self) -> usize {
        self.queue_len.div_ceil(32)
    }

    /// The logits of the negatives: `q queue^T`, rows x queue_len.
    pub fn logits_gemm(&self) -> GemmShape {
        GemmShape {
            m: self.rows,
            n: self.queue_len,
            k: self.dim,
            trans_a: false,
            trans_b: true,
        }
    }

    /// The negatives' share of dq: `probs queue`, rows x dim.
    pub fn dq_gemm(&self) -> GemmShape {
        GemmShape {
            m: self.rows,
            n: self.dim,
            k: self.queue_len,
            trans_a: false,
            trans_b: false,
        }
    }

    /// The queue's gradient: `probs^T q`, queue_len x dim.
    pub fn dqueue_gemm(&self) -> GemmShape {
        GemmShape {
            m: self.queue_len,
            n: self.dim,
            k: self.rows,
            trans_a: true,
            trans_b: false,
        }
    }

    fn params(&self, op: &'static str, t: f64) -> Result<InfoNceParams> {
        dim(op, "rows x queue", self.rows * self.queue_len)?;
        dim(op, "rows x dim", self.rows * self.dim)?;
        dim(op, "queue x dim", self.queue_len * self.dim)?;
        Ok(InfoNceParams {
            rows: dim(op, "rows", self.rows)?,
            queue_len: dim(op, "queue length", self.queue_len)?,
            dim: dim(op, "dim", self.dim)?,
            mask_words: dim(op, "mask words", self.mask_words())?,
            inv_t: (1.0 / t) as f32,
            rows_t: (self.rows as f64 * t) as f32,
            ..InfoNceParams::default()
        })
    }
}

/// Device addresses of InfoNCE's forward. `mask` is 0 or `rows * mask_words` u32 words;
/// `probs` (rows x queue_len), `pos_probs` and `row_loss` (rows) are outputs the backward reads.
#[derive(Clone, Copy, Debug, Default)]
pub struct InfoNceForward {
    pub q: u64,
    pub k: u64,
    pub queue: u64,
    pub mask: u64,
    pub probs: u64,
    pub pos_probs: u64,
    pub row_loss: u64,
    pub loss: u64,
}

/// The forward: the negatives' logits `q queue^T / t` by one GEMM (planned as `logits_plan`,
/// with `scratch` for its partial sums), then one block per row for the positive logit, the
/// max-shifted log-sum-exp, the softmax (in place over the logits) and the row's loss, then the
/// mean over rows into `loss`.
pub fn infonce_forward_calls(
    s: &InfoNceShape,
    t: f64,
    a: &InfoNceForward,
    logits_plan: &GemmPlan,
    scratch: u64,
) -> Result<Vec<KernelCall>> {
    const OP: &str = "infonce";
    if s.rows == 0 {
        return Err(Error::shape(OP, "no rows to average over"));
    }
    let p = InfoNceParams {
        q: a.q,
        k: a.k,
        mask: a.mask,
        probs: a.probs,
        pos_probs: a.pos_probs,
        row_loss: a.row_loss,
        ..s.params(OP, t)?
    };
    let epi = Epilogue {
        alpha: p.inv_t,
        ..Epilogue::default()
    };
    let mut calls = gemm_calls(&s.logits_gemm(), logits_plan, &epi, a.q, a.queue, a.probs, scratch)?;
    calls.push(KernelCall::new(
        MODULE,
        "infonce_rows",
        (s.rows, 1, 1),
        THREADS as u32,
        &p,
    ));
    calls.push(mean_call(OP, a.row_loss, s.rows, s.rows, a.loss)?);
    Ok(calls)
}

/// Device addresses of InfoNCE's backward: the inputs, the forward's `probs` and `pos_probs`,
/// the loss's gradient at `upstream`, and the gradients wanted (0: not computed).
#[derive(Clone, Copy, Debug, Default)]
pub struct InfoNceBackward {
    pub q: u64,
    pub k: u64,
    pub queue: u64,
    pub probs: u64,
    pub pos_probs: u64,
    pub upstream: u64,
    pub dq: u64,
    pub dk: u64,
    pub dqueue: u64,
}

/// The backward: `dq = c ((p0 - 1) k + probs queue)`, `dk = c (p0 - 1) q`,
/// `dqueue = c probs^T q` with `c = upstream / (rows t)`; `dq_plan` and `dqueue_plan` plan the
/// two GEMMs (scratch holds the larger of their partial sums).
pub fn infonce_backward_calls(
    s: &InfoNceShape,
    t: f64,
    a: &InfoNceBackward,
    dq_plan: &GemmPlan,
    dqueue_plan: &GemmPlan,
    scratch: u64,
) -> Result<Vec<KernelCall>> {
    const OP: &str = "infonce backward";
    let p = InfoNceParams {
        q: a.q,
        k: a.k,
        upstream: a.upstream,
        pos_probs: a.pos_probs,
        dq: a.dq,
        dk: a.dk,
        ..s.params(OP, t)?
    };
    let mut calls = Vec::new();
    if (a.dq != 0 || a.dk != 0) && s.rows * s.dim > 0 {
        calls.push(KernelCall::new(
            MODULE,
            "infonce_bwd_pos",
            (blocks_for(s.rows * s.dim, THREADS), 1, 1),
            THREADS as u32,
            &p,
        ));
    }
    // Both products carry the factor upstream / (rows t): 1 / (rows t) on the host, upstream on
    // the device.
    let epi = Epilogue {
        alpha: (1.0 / (s.rows as f64 * t)) as f32,
        scale: a.upstream,
        ..Epilogue::default()
    };
    if a.dq != 0 && s.queue_len > 0 {
        let acc = Epilogue {
            accumulate: true,
            ..epi
        };
        calls.extend(gemm_calls(
            &s.dq_gemm(),
            dq_plan,
            &acc,
            a.probs,
            a.queue,
            a.dq,
            scratch,
        )?);
    }
    if a.dqueue != 0 {
        calls.extend(gemm_calls(
            &s.dqueue_gemm(),
            dqueue_plan,
            &epi,
            a.probs,
            a.q,
            a.dqueue,
            scratch,
        )?);
    }
    Ok(calls)
}

/// Blocks of `dice_partials` over `positions` (rows of the partial-sum buffer, each holding
/// 3 x classes values).
pub fn dice_blocks(positions: usize) -> usize {
    blocks_for(positions, DICE_POSITIONS_PER_BLOCK)
}

fn dice_params(op: &'static str, s: &ChannelShape, cfg: &DiceConfig) -> Result<DiceParams> {
    let (positions, classes, inner) = s.dims(op)?;
    dim(op, "partial sums", dice_blocks(s.positions()) * 3 * s.channels)?;
    Ok(DiceParams {
        positions,
        classes,
        inner,
        first_class: i32::from(cfg.skip_background),
        blocks: dim(op, "blocks", dice_blocks(s.positions()))?,
        eps: cfg.eps as f32,
        ..DiceParams::default()
    })
}

/// The soft Dice loss of logits `x` (outer x classes x inner) against one u32 class per position
/// into `loss`, and its per-class coefficients into `coef` (2 x classes values, for the
/// backward), through `partial` ([`dice_blocks`] x 3 x classes values).
#[allow(clippy::too_many_arguments)]
pub fn dice_calls(
    s: &ChannelShape,
    cfg: &DiceConfig,
    x: u64,
    targets: u64,
    partial: u64,
    coef: u64,
    loss: u64,
) -> Result<Vec<KernelCall>> {
    const OP: &str = "dice_loss";
    if s.channels == 0 {
        return Err(Error::shape(OP, "no classes"));
    }
    let p = DiceParams {
        x,
        targets,
        partial,
        coef,
        loss,
        ..dice_params(OP, s, cfg)?
    };
    let shared = 4 * s.channels * size_of::<f32>();
    Ok(vec![
        KernelCall::new(
            MODULE,
            "dice_partials",
            (dice_blocks(s.positions()), 1, 1),
            THREADS as u32,
            &p,
        ),
        KernelCall::new(MODULE, "dice_finish", (1, 1, 1), THREADS as u32, &p).with_shared(shared),
    ])
}

/// `dx` of [`dice_calls`] from the logits, the coefficients and the loss's gradient at
/// `upstream`.
#[allow(clippy::too_many_arguments)]
pub fn dice_backward_calls(
    s: &ChannelShape,
    cfg: &DiceConfig,
    x: u64,
    targets: u64,
    coef: u64,
    upstream: u64,
    dx: u64,
) -> Result<Vec<KernelCall>> {
    const OP: &str = "dice_loss backward";
    if s.positions() == 0 {
        return Ok(Vec::new());
    }
    let p = DiceParams {
        x,
        targets,
        coef,
        upstream,
        dx,
        ..dice_params(OP, s, cfg)?
    };
    Ok(vec![KernelCall::new(
        MODULE,
        "dice_bwd",
        (blocks_for(s.positions(), THREADS), 1, 1),
        THREADS as u32,
        &p,
    )])
}

// ---------------------------------------------------------------------------------------------
// Wrappers on device storage.
// ---------------------------------------------------------------------------------------------

/// `(y, norms)`: x normalised per position, and the clamped norms.
pub fn l2_normalize(x: &CudaStorage, s: &ChannelShape, eps: f32) -> Result<(CudaStorage, CudaStorage)> {
    check_len("l2_normalize", "input", x, s.len())?;
    let device = x.device();
    let y = CudaStorage::alloc(&device, s.len())?;
    let norms = CudaStorage::alloc(&device, s.positions())?;
    let layout = position_layout(s.channels, s.inner);
    let calls = l2_normalize_calls(layout, s, eps, x.device_ptr(), y.device_ptr(), norms.device_ptr())?;
    // SAFETY: x and y hold s.len() values, norms one per position.
    unsafe { device.run(&calls) }?;
    Ok((y, norms))
}

/// dx of [`l2_normalize`] from its output, its norms and dy.
pub fn l2_normalize_backward(
    y: &CudaStorage,
    norms: &CudaStorage,
    dy: &CudaStorage,
    s: &ChannelShape,
    eps: f32,
) -> Result<CudaStorage> {
    const OP: &str = "l2_normalize backward";
    check_len(OP, "output", y, s.len())?;
    check_len(OP, "norms", norms, s.positions())?;
    check_len(OP, "output gradient", dy, s.len())?;
    let device = common_device(OP, &[y, norms, dy])?;
    let dx = CudaStorage::alloc(&device, s.len())?;
    let layout = position_layout(s.channels, s.inner);
    let calls = l2_normalize_backward_calls(
        layout,
        s,
        eps,
        y.device_ptr(),
        norms.device_ptr(),
        dy.device_ptr(),
        dx.device_ptr(),
    )?;
    // SAFETY: the lengths were checked above; dx is a fresh block of s.len() values.
    unsafe { device.run(&calls) }?;
    Ok(dx)
}

/// log-softmax over the channels of each position.
pub fn log_softmax(x: &CudaStorage, s: &ChannelShape) -> Result<CudaStorage> {
    check_len("log_softmax", "input", x, s.len())?;
    let device = x.device();
    let y = CudaStorage::alloc(&device, s.len())?;
    let calls = log_softmax_calls(position_layout(s.channels, s.inner), s, x.device_ptr(), y.device_ptr())?;
    // SAFETY: x and y hold s.len() values.
    unsafe { device.run(&calls) }?;
    Ok(y)
}

/// dx of [`log_softmax`] from its output and dy.
pub fn log_softmax_backward(y: &CudaStorage, dy: &CudaStorage, s: &ChannelShape) -> Result<CudaStorage> {
    const OP: &str = "log_softmax backward";
    check_len(OP, "output", y, s.len())?;
    check_len(OP, "output gradient", dy, s.len())?;
    let device = common_device(OP, &[y, dy])?;
    let dx = CudaStorage::alloc(&device, s.len())?;
    let layout = position_layout(s.channels, s.inner);
    let calls = log_softmax_backward_calls(layout, s, y.device_ptr(), dy.device_ptr(), dx.device_ptr())?;
    // SAFETY: y, dy and dx hold s.len() values.
    unsafe { device.run(&calls) }?;
    Ok(dx)
}

/// 32-bit words that hold `positions` one-byte labels.
pub fn label_words(positions: usize) -> usize {
    positions.div_ceil(4)
}

/// The launch that writes, for each position of `x`, the channel of its largest value (the
/// first on ties; a NaN never replaces the best so far) as one byte at `out` + position:
/// [`label_words`] words.
pub fn class_arg_max_calls(s: &ChannelShape, x: u64, out: u64) -> Result<Vec<KernelCall>> {
    const OP: &str = "class arg-max";
    if s.channels == 0 || s.channels > 256 {
        return Err(Error::shape(
            OP,
            format!("{} classes: labels are bytes, so 1 to 256 classes", s.channels),
        ));
    }
    if s.positions() == 0 {
        return Ok(Vec::new());
    }
    let (positions, channels, inner) = s.dims(OP)?;
    let p = ArgMaxParams {
        x,
        out,
        positions,
        channels,
        inner,
        reserved: 0,
    };
    let kernels = ("class_arg_max_thread", "class_arg_max_thread");
    Ok(vec![position_call(PositionLayout::Thread, kernels, s.positions(), &p)])
}

/// The class of the largest value at each position of `x` (see [`class_arg_max_calls`]), on the
/// host: one byte per position crosses, not a float per class. Waits for the work queued before.
pub fn class_arg_max(x: &CudaStorage, s: &ChannelShape) -> Result<Vec<u8>> {
    check_len("class arg-max", "logits", x, s.len())?;
    let device = x.device();
    let out = CudaStorage::alloc(&device, label_words(s.positions()))?;
    let calls = class_arg_max_calls(s, x.device_ptr(), out.device_ptr())?;
    // SAFETY: x holds s.len() values and out label_words(positions) words.
    unsafe { device.run(&calls) }?;
    let mut labels = out.to_host_pod::<u8>()?;
    labels.truncate(s.positions());
    Ok(labels)
}

/// `(loss, lse)`: the mean cross-entropy (one value) and the per-position log-sum-exp the
/// backward needs. `targets` holds one u32 class per position (host-checked to be < channels).
pub fn cross_entropy(x: &CudaStorage, targets: &CudaStorage, s: &ChannelShape) -> Result<(CudaStorage, CudaStorage)> {
    const OP: &str = "cross_entropy";
    check_len(OP, "logits", x, s.len())?;
    check_len(OP, "targets", targets, s.positions())?;
    let device = common_device(OP, &[x, targets])?;
    let layout = position_layout(s.channels, s.inner);
    let lse = CudaStorage::alloc(&device, s.positions())?;
    let partial = CudaStorage::alloc(&device, position_blocks(layout, s.positions()))?;
    let loss = CudaStorage::alloc(&device, 1)?;
    let calls = cross_entropy_calls(
        layout,
        s,
        x.device_ptr(),
        targets.device_ptr(),
        lse.device_ptr(),
        partial.device_ptr(),
        loss.device_ptr(),
    )?;
    // SAFETY: the lengths were checked above; lse, partial and loss are sized by the planner's
    // rules. The partial block returns to the cache after this call, which is safe because later
    // users queue behind these kernels on the same stream.
    unsafe { device.run(&calls) }?;
    Ok((loss, lse))
}

/// dx of [`cross_entropy`], scaled by the loss's gradient `upstream` (one value, on the device).
pub fn cross_entropy_backward(
    x: &CudaStorage,
    targets: &CudaStorage,
    lse: &CudaStorage,
    upstream: &CudaStorage,
    s: &ChannelShape,
) -> Result<CudaStorage> {
    const OP: &str = "cross_entropy backward";
    check_len(OP, "logits", x, s.len())?;
    check_len(OP, "targets", targets, s.positions())?;
    check_len(OP, "log-sum-exp", lse, s.positions())?;
    check_len(OP, "loss gradient", upstream, 1)?;
    let device = common_device(OP, &[x, targets, lse, upstream])?;
    let dx = CudaStorage::alloc(&device, s.len())?;
    let calls = cross_entropy_backward_calls(
        position_layout(s.channels, s.inner),
        s,
        x.device_ptr(),
        targets.device_ptr(),
        lse.device_ptr(),
        upstream.device_ptr(),
        dx.device_ptr(),
    )?;
    // SAFETY: the lengths were checked above; dx is a fresh block of s.len() values.
    unsafe { device.run(&calls) }?;
    Ok(dx)
}

/// What InfoNCE's forward keeps for the backward.
#[derive(Clone, Debug)]
pub struct InfoNceSaved {
    /// rows x queue_len softmax probabilities of the negatives (0 where excluded).
    pub probs: CudaStorage,
    /// rows probabilities of the positives.
    pub pos_probs: CudaStorage,
}

/// `(loss, saved)`: MoCo's InfoNCE of `q` against `k` and the `queue` at temperature `t`;
/// `mask`: `rows * mask_words` u32 words of exclusion bits, or none.
pub fn infonce(
    q: &CudaStorage,
    k: &CudaStorage,
    queue: &CudaStorage,
    mask: Option<&CudaStorage>,
    s: &InfoNceShape,
    t: f64,
) -> Result<(CudaStorage, InfoNceSaved)> {
    const OP: &str = "infonce";
    check_len(OP, "queries", q, s.rows * s.dim)?;
    check_len(OP, "keys", k, s.rows * s.dim)?;
    check_len(OP, "queue", queue, s.queue_len * s.dim)?;
    let mut operands = vec![q, k, queue];
    if let Some(m) = mask {
        check_len(OP, "exclusion mask", m, s.rows * s.mask_words())?;
        operands.push(m);
    }
    let device = common_device(OP, &operands)?;
    let probs = CudaStorage::alloc(&device, s.rows * s.queue_len)?;
    let pos_probs = CudaStorage::alloc(&device, s.rows)?;
    let row_loss = CudaStorage::alloc(&device, s.rows)?;
    let loss = CudaStorage::alloc(&device, 1)?;
    let plan = gemm_plan(&s.logits_gemm(), GemmAlgo::DEFAULT, device.multiprocessors());
    let scratch = CudaStorage::alloc(&device, plan.scratch_len(&s.logits_gemm()))?;
    let addresses = InfoNceForward {
        q: q.device_ptr(),
        k: k.device_ptr(),
        queue: queue.device_ptr(),
        mask: mask.map_or(0, CudaStorage::device_ptr),
        probs: probs.device_ptr(),
        pos_probs: pos_probs.device_ptr(),
        row_loss: row_loss.device_ptr(),
        loss: loss.device_ptr(),
    };
    let calls = infonce_forward_calls(s, t, &addresses, &plan, scratch.device_ptr())?;
    // SAFETY: the inputs' lengths were checked above and the outputs and scratch are allocated
    // to the sizes the planners document; scratch and row_loss return to the cache after this
    // call, which is safe because later users queue behind these kernels on the same stream.
    unsafe { device.run(&calls) }?;
    Ok((loss, InfoNceSaved { probs, pos_probs }))
}

/// The gradients of [`infonce`] for q, k and the queue, each only when `want` says so, scaled by
/// the loss's gradient `upstream` (one value, on the device).
#[allow(clippy::too_many_arguments)]
pub fn infonce_backward(
    q: &CudaStorage,
    k: &CudaStorage,
    queue: &CudaStorage,
    saved: &InfoNceSaved,
    upstream: &CudaStorage,
    s: &InfoNceShape,
    t: f64,
    want: [bool; 3],
) -> Result<[Option<CudaStorage>; 3]> {
    const OP: &str = "infonce backward";
    check_len(OP, "queries", q, s.rows * s.dim)?;
    check_len(OP, "keys", k, s.rows * s.dim)?;
    check_len(OP, "queue", queue, s.queue_len * s.dim)?;
    check_len(OP, "probabilities", &saved.probs, s.rows * s.queue_len)?;
    check_len(OP, "positive probabilities", &saved.pos_probs, s.rows)?;
    check_len(OP, "loss gradient", upstream, 1)?;
    let device = common_device(OP, &[q, k, queue, &saved.probs, &saved.pos_probs, upstream])?;
    let alloc = |wanted: bool, len: usize| -> Result<Option<CudaStorage>> {
        wanted.then(|| CudaStorage::alloc(&device, len)).transpose()
    };
    let dq = alloc(want[0], s.rows * s.dim)?;
    let dk = alloc(want[1], s.rows * s.dim)?;
    let dqueue = alloc(want[2], s.queue_len * s.dim)?;
    let mps = device.multiprocessors();
    let dq_plan = gemm_plan(&s.dq_gemm(), GemmAlgo::DEFAULT, mps);
    let dqueue_plan = gemm_plan(&s.dqueue_gemm(), GemmAlgo::DEFAULT, mps);
    let scratch_len = dq_plan
        .scratch_len(&s.dq_gemm())
        .max(dqueue_plan.scratch_len(&s.dqueue_gemm()));
    let scratch = CudaStorage::alloc(&device, scratch_len)?;
    let ptr = |s: &Option<CudaStorage>| s.as_ref().map_or(0, CudaStorage::device_ptr);
    let addresses = InfoNceBackward {
        q: q.device_ptr(),
        k: k.device_ptr(),
        queue: queue.device_ptr(),
        probs: saved.probs.device_ptr(),
        pos_probs: saved.pos_probs.device_ptr(),
        upstream: upstream.device_ptr(),
        dq: ptr(&dq),
        dk: ptr(&dk),
        dqueue: ptr(&dqueue),
    };
    let calls = infonce_backward_calls(s, t, &addresses, &dq_plan, &dqueue_plan, scratch.device_ptr())?;
    // SAFETY: the lengths were checked above; the gradients are fresh blocks of their operands'
    // sizes and the scratch holds the larger GEMM's partial sums. The two GEMMs run in turn on
    // one stream, so they may share the scratch.
    unsafe { device.run(&calls) }?;
    Ok([dq, dk, dqueue])
}

/// `(loss, coef)`: the soft Dice loss and the per-class coefficients its backward needs.
pub fn dice_loss(
    x: &CudaStorage,
    targets: &CudaStorage,
    s: &ChannelShape,
    cfg: &DiceConfig,
) -> Result<(CudaStorage, CudaStorage)> {
    const OP: &str = "dice_loss";
    check_len(OP, "logits", x, s.len())?;
    check_len(OP, "targets", targets, s.positions())?;
    let device = common_device(OP, &[x, targets])?;
    let partial = CudaStorage::alloc(&device, dice_blocks(s.positions()) * 3 * s.channels)?;
    let coef = CudaStorage::alloc(&device, 2 * s.channels)?;
    let loss = CudaStorage::alloc(&device, 1)?;
    let calls = dice_calls(
        s,
        cfg,
        x.device_ptr(),
        targets.device_ptr(),
        partial.device_ptr(),
        coef.device_ptr(),
        loss.device_ptr(),
    )?;
    // SAFETY: the lengths were checked above; partial, coef and loss are sized as dice_calls
    // documents. The partial block returns to the cache after this call, which is safe because
    // later users queue behind these kernels on the same stream.
    unsafe { device.run(&calls) }?;
    Ok((loss, coef))
}

/// dx of [`dice_loss`], scaled by the loss's gradient `upstream` (one value, on the device).
pub fn dice_loss_backward(
    x: &CudaStorage,
    targets: &CudaStorage,
    coef: &CudaStorage,
    upstream: &CudaStorage,
    s: &ChannelShape,
    cfg: &DiceConfig,
) -> Result<CudaStorage> {
    const OP: &str = "dice_loss backward";
    check_len(OP, "logits", x, s.len())?;
    check_len(OP, "targets", targets, s.positions())?;
    check_len(OP, "coefficients", coef, 2 * s.channels)?;
    check_len(OP, "loss gradient", upstream, 1)?;
    let device: Arc<CudaDevice> = common_device(OP, &[x, targets, coef, upstream])?;
    let dx = CudaStorage::alloc(&device, s.len())?;
    let calls = dice_backward_calls(
        s,
        cfg,
        x.device_ptr(),
        targets.device_ptr(),
        coef.device_ptr(),
        upstream.device_ptr(),
        dx.device_ptr(),
    )?;
    // SAFETY: the lengths were checked above; dx is a fresh block of s.len() values.
    unsafe { device.run(&calls) }?;
    Ok(dx)
}

/// Packs a row-major `rows x queue_len` exclusion mask into the kernels' bit rows.
pub fn pack_mask(mask: &[bool], rows: usize, queue_len: usize) -> Vec<u32> {
    let words = queue_len.div_ceil(32);
    let mut packed = vec![0u32; rows * words];
    for (i, row) in mask.chunks(queue_len.max(1)).enumerate().take(rows) {
        for (j, &out) in row.iter().enumerate() {
            if out {
                packed[i * words + j / 32] |= 1 << (j % 32);
            }
        }
    }
    packed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_name_is_distinct() {
        let mut names = kernel_names();
        let count = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), count);
        assert_eq!(count, 12 + 6 + 1);
    }

    #[test]
    fn masks_pack_one_bit_per_negative_row_by_row() {
        let (rows, k) = (2, 33);
        let mut mask = vec![false; rows * k];
        mask[0] = true;
        mask[32] = true;
        mask[k + 5] = true;
        let packed = pack_mask(&mask, rows, k);
        assert_eq!(packed, vec![1, 1, 1 << 5, 0]);
    }

    #[test]
    fn vectors_of_one_element_stride_use_a_warp() {
        assert_eq!(position_layout(128, 1), PositionLayout::Warp);
        assert_eq!(position_layout(14, 65536), PositionLayout::Thread);
        assert_eq!(position_blocks(PositionLayout::Warp, 16), 2);
        assert_eq!(position_blocks(PositionLayout::Thread, 257), 2);
    }
}
