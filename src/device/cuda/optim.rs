//! The host side of `kernels/optim.cu`: optimizer steps and the momentum update over many tensors
//! per launch, and the MoCo queue's ring-buffer write.

use bytemuck::{Pod, Zeroable};

use super::call::{KernelCall, blocks_for};
use super::launch::dim;
use crate::error::{Error, Result};

const MODULE: &str = "optim";
const THREADS: u32 = 256;

/// Tensors one launch updates (the kernel's MAX_TENSORS).
pub const MAX_TENSORS: usize = 96;
/// Elements per block (the kernel's CHUNK).
const CHUNK: usize = 4096;

/// `MultiTensorParams` of `kernels/optim.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct MultiTensorParams {
    pub param: [u64; MAX_TENSORS],
    pub grad: [u64; MAX_TENSORS],
    pub state1: [u64; MAX_TENSORS],
    pub state2: [u64; MAX_TENSORS],
    pub offset: [i32; MAX_TENSORS + 1],
    pub tensors: i32,
    pub kind: i32,
    pub first_step: i32,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub step_size: f32,
    pub sqrt_bc2: f32,
}

const _: () = assert!(size_of::<MultiTensorParams>() == 3504);
const _: () = assert!(std::mem::offset_of!(MultiTensorParams, offset) == 3072);
const _: () = assert!(std::mem::offset_of!(MultiTensorParams, tensors) == 3460);

/// `QueueWriteParams` of `kernels/optim.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct QueueWriteParams {
    pub queue: u64,
    pub src: u64,
    pub capacity: i32,
    pub dim: i32,
    pub rows: i32,
    pub row: i32,
}

const _: () = assert!(size_of::<QueueWriteParams>() == 32);

/// One tensor of a multi-tensor launch: device addresses (0 where a slot is unused) and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorSlot {
    pub param: u64,
    /// The gradient; for [`StepRule::Lerp`], the values mixed in.
    pub grad: u64,
    pub state1: u64,
    pub state2: u64,
    pub len: usize,
}

/// What a multi-tensor launch does to each element (see the rules in `kernels/optim.cu`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepRule {
    /// SGD; `first`: the momentum buffers are fresh and start as the update itself.
    Sgd {
        lr: f64,
        momentum: f64,
        weight_decay: f64,
        first: bool,
    },
    /// Adam (`decoupled` false) or AdamW, at 1-based step `step`.
    Adam {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        decoupled: bool,
        step: u64,
    },
    /// `p = m p + (1 - m) q`.
    Lerp { m: f64 },
}

fn params_for(rule: &StepRule) -> MultiTensorParams {
    let mut p = MultiTensorParams::zeroed();
    match *rule {
        StepRule::Sgd {
            lr,
            momentum,
            weight_decay,
            first,
        } => {
            p.kind = 0;
            p.lr = lr as f32;
            p.momentum = momentum as f32;
            p.weight_decay = weight_decay as f32;
            p.first_step = first as i32;
        }
        StepRule::Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            decoupled,
            step,
        } => {
            // The bias corrections in f64 on the host, as the CPU twin computes them.
            let t = step.min(i32::MAX as u64) as i32;
            p.kind = if decoupled { 2 } else { 1 };
            p.lr = lr as f32;
            p.beta1 = beta1 as f32;
            p.beta2 = beta2 as f32;
            p.eps = eps as f32;
            p.weight_decay = weight_decay as f32;
            p.step_size = (lr / (1.0 - beta1.powi(t))) as f32;
            p.sqrt_bc2 = (1.0 - beta2.powi(t)).sqrt() as f32;
        }
        StepRule::Lerp { m } => {
            p.kind = 3;
            p.momentum = m as f32;
        }
    }
    p
}

/// The launches applying `rule` to every slot: up to [`MAX_TENSORS`] tensors each, fewer when
/// their elements would overflow the kernel's 32-bit flat index.
pub fn multi_tensor_calls(slots: &[TensorSlot], rule: &StepRule) -> Result<Vec<KernelCall>> {
    const OP: &str = "optimizer step";
    let template = params_for(rule);
    let needs = |s: &TensorSlot| match rule {
        StepRule::Sgd { momentum, .. } => *momentum != 0.0 && s.state1 == 0,
        StepRule::Adam { .. } => s.state1 == 0 || s.state2 == 0,
        StepRule::Lerp { .. } => false,
    };
    if let Some(s) = slots.iter().find(|s| needs(s)) {
        return Err(Error::Cuda(format!(
            "{OP}: a tensor of {} values has no state buffer",
            s.len
        )));
    }
    check_disjoint_writes(slots)?;
    let limit = (i32::MAX as usize) - CHUNK;
    let mut calls = Vec::new();
    let mut group: Vec<&TensorSlot> = Vec::new();
    let mut total = 0usize;
    let flush = |group: &mut Vec<&TensorSlot>, total: &mut usize, calls: &mut Vec<KernelCall>| -> Result<()> {
        if *total == 0 {
            group.clear();
            return Ok(());
        }
        let mut p = template;
        let mut offset = 0usize;
        for (t, s) in group.iter().enumerate() {
            p.param[t] = s.param;
            p.grad[t] = s.grad;
            p.state1[t] = s.state1;
            p.state2[t] = s.state2;
            p.offset[t] = dim(OP, "elements per launch", offset)?;
            offset += s.len;
        }
        p.offset[group.len()] = dim(OP, "elements per launch", offset)?;
        p.tensors = group.len() as i32;
        calls.push(KernelCall::new(
            MODULE,
            "multi_tensor_step",
            (blocks_for(offset, CHUNK), 1, 1),
            THREADS,
            &p,
        ));
        group.clear();
        *total = 0;
        Ok(())
    };
    for s in slots.iter().filter(|s| s.len > 0) {
        if s.len > limit {
            return Err(Error::shape(OP, format!("a tensor of {} values is too large", s.len)));
        }
        if group.len() == MAX_TENSORS || total + s.len > limit {
            flush(&mut group, &mut total, &mut calls)?;
        }
        group.push(s);
        total += s.len;
    }
    flush(&mut group, &mut total, &mut calls)?;
    Ok(calls)
}

/// Checks that no two slots write the same memory (a tensor listed twice, tied weights, shared
/// state): the kernel's blocks update their elements without atomics, so on the GPU two
/// concurrent updates of one element would lose one (the emulator, running blocks in turn,
/// would apply both).
fn check_disjoint_writes(slots: &[TensorSlot]) -> Result<()> {
    let mut ranges: Vec<(u64, u64)> = slots
        .iter()
        .filter(|s| s.len > 0)
        .flat_map(|s| [s.param, s.state1, s.state2].map(|a| (a, a + 4 * s.len as u64)))
        .filter(|&(a, _)| a != 0)
        .collect();
    ranges.sort_unstable();
    if let Some(w) = ranges.windows(2).find(|w| w[1].0 < w[0].1) {
        return Err(Error::Cuda(format!(
            "optimizer step: two tensors written by one step overlap (at {:#x} and {:#x})",
            w[0].0, w[1].0
        )));
    }
    Ok(())
}

/// Writes `rows` rows of `dim` values from `src` into the ring buffer `queue` (`capacity` rows)
/// starting at row `row`, wrapping around.
pub fn queue_write_calls(
    queue: u64,
    src: u64,
    capacity: usize,
    dim_: usize,
    rows: usize,
    row: usize,
) -> Result<Vec<KernelCall>> {
    const OP: &str = "queue write";
    if rows > capacity || row >= capacity.max(1) {
        return Err(Error::shape(
            OP,
            format!("{rows} rows at row {row} of a queue of {capacity}"),
        ));
    }
    if rows == 0 || dim_ == 0 {
        return Ok(Vec::new());
    }
    let p = QueueWriteParams {
        queue,
        src,
        capacity: dim(OP, "capacity", capacity)?,
        dim: dim(OP, "dim", dim_)?,
        rows: dim(OP, "rows", rows)?,
        row: dim(OP, "row", row)?,
    };
    dim(OP, "queue size", capacity * dim_)?;
    Ok(vec![KernelCall::new(
        MODULE,
        "queue_write",
        (blocks_for(rows * dim_, 256), 1, 1),
        256,
        &p,
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slot `i` of `len` values, its four buffers apart from every other slot's.
    fn slot_at(i: u64, len: usize) -> TensorSlot {
        let base = 0x1000_0000 + i * 0x10_0000;
        TensorSlot {
            param: base,
            grad: base + 0x4_0000,
            state1: base + 0x8_0000,
            state2: base + 0xc_0000,
            len,
        }
    }

    fn slot(len: usize) -> TensorSlot {
        slot_at(0, len)
    }

    #[test]
    fn launches_hold_at_most_max_tensors() {
        let slots: Vec<TensorSlot> = (0..200).map(|i| slot_at(i as u64, i % 7)).collect();
        let calls = multi_tensor_calls(&slots, &StepRule::Lerp { m: 0.9 }).unwrap();
        // 200 slots less the empty ones (every 7th): 171, so two launches.
        assert_eq!(calls.len(), 2);
        let p: &MultiTensorParams = bytemuck::from_bytes(calls[0].param_bytes());
        assert_eq!(p.tensors as usize, MAX_TENSORS);
        let q: &MultiTensorParams = bytemuck::from_bytes(calls[1].param_bytes());
        assert_eq!(p.tensors + q.tensors, 171);
        assert_eq!(calls[1].grid.0, (q.offset[q.tensors as usize] as usize).div_ceil(CHUNK));
    }

    #[test]
    fn a_missing_state_buffer_is_an_error() {
        let mut s = slot(10);
        s.state2 = 0;
        let rule = StepRule::Adam {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            step: 1,
        };
        assert!(multi_tensor_calls(&[s], &rule).is_err());
        assert!(multi_tensor_calls(&[s], &StepRule::Lerp { m: 0.5 }).is_ok());
    }

    #[test]
    fn tensors_written_twice_are_an_error() {
        let rule = StepRule::Lerp { m: 0.5 };
        let (a, b) = (slot_at(0, 100), slot_at(1, 100));
        assert!(multi_tensor_calls(&[a, b], &rule).is_ok());
        // The same parameter twice (tied weights), and a parameter overlapping another's state.
        assert!(multi_tensor_calls(&[a, a], &rule).is_err());
        let overlapping = TensorSlot {
            param: a.state1 + 4 * 99,
            ..b
        };
        assert!(multi_tensor_calls(&[a, overlapping], &rule).is_err());
        // Empty tensors write nothing; a shared gradient is only read.
        assert!(multi_tensor_calls(&[a, TensorSlot { len: 0, ..a }], &rule).is_ok());
        assert!(multi_tensor_calls(&[a, TensorSlot { grad: a.grad, ..b }], &rule).is_ok());
    }
}
