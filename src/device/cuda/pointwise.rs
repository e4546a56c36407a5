//! Element-wise arithmetic, broadcasts of a device scalar and the full sum on the GPU: the host
//! side of `kernels/pointwise.cu`.
//!
//! Every launch is a 1-D grid of 256-thread blocks capped at a fixed number of blocks, the
//! kernels looping over longer tensors (grid-stride). The planners choose float4 loads and stores
//! when every address of the call is 16-byte aligned (always true for whole buffers of the
//! allocator) and one element at a time otherwise. The sum runs in two fixed-order passes, so it
//! is deterministic (see the kernel file).

use bytemuck::{Pod, Zeroable};

use super::CudaStorage;
use super::call::{KernelCall, blocks_for};
use super::launch::dim;
use super::operand::{check_len, common_device};
use crate::error::{Error, Result};

const MODULE: &str = "pointwise";

/// Threads per block of every kernel of `pointwise.cu`.
pub const THREADS: usize = 256;

/// The most blocks an element-wise launch takes (about two waves of 2048-thread SMs on an H100);
/// longer tensors are covered by the grid-stride loops.
pub const MAX_BLOCKS: usize = 2048;

/// The most partial sums the first pass of a sum writes; the second pass adds them in one block.
pub const SUM_MAX_BLOCKS: usize = 1024;

/// `BinaryParams` of `kernels/pointwise.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BinaryParams {
    pub a: u64,
    pub b: u64,
    pub out: u64,
    pub len: i32,
    pub vec4: i32,
}
const _: () = assert!(size_of::<BinaryParams>() == 32);
const _: () = assert!(std::mem::offset_of!(BinaryParams, len) == 24);

/// `UnaryParams` of `kernels/pointwise.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct UnaryParams {
    pub x: u64,
    pub out: u64,
    pub alpha: f64,
    pub len: i32,
    pub vec4: i32,
}
const _: () = assert!(size_of::<UnaryParams>() == 32);
const _: () = assert!(std::mem::offset_of!(UnaryParams, alpha) == 16);
const _: () = assert!(std::mem::offset_of!(UnaryParams, len) == 24);

/// `BroadcastParams` of `kernels/pointwise.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BroadcastParams {
    pub scalar: u64,
    pub out: u64,
    pub factor: f64,
    pub len: i32,
    pub vec4: i32,
}
const _: () = assert!(size_of::<BroadcastParams>() == 32);
const _: () = assert!(std::mem::offset_of!(BroadcastParams, factor) == 16);

/// `SumParams` of `kernels/pointwise.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct SumParams {
    pub x: u64,
    pub out: u64,
    pub len: i32,
    pub vec4: i32,
}
const _: () = assert!(size_of::<SumParams>() == 24);
const _: () = assert!(std::mem::offset_of!(SumParams, len) == 16);

/// `ToBf16Params` of `kernels/pointwise.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct ToBf16Params {
    pub x: u64,
    pub out: u64,
    pub len: i32,
    pub reserved: i32,
}
const _: () = assert!(size_of::<ToBf16Params>() == 24);
const _: () = assert!(std::mem::offset_of!(ToBf16Params, len) == 16);

/// The BF16 bits of `x` as `bf16_from_f32` (PTX `cvt.rn.bf16x2.f32`) writes them: round to
/// nearest even (`half::bf16::from_f32`, which also rounds overflow to infinity and keeps
/// subnormals), and every NaN to the canonical NaN `0x7fff` (`half` would keep its sign and
/// payload).
pub fn bf16_bits(x: f32) -> u16 {
    if x.is_nan() {
        0x7fff
    } else {
        half::bf16::from_f32(x).to_bits()
    }
}

/// The FP32 value of BF16 bits (exact: a BF16 is the upper half of an FP32).
pub fn bf16_value(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// `x` rounded to BF16 and widened back, as the kernels reading BF16 see it.
pub fn bf16_round(x: f32) -> f32 {
    bf16_value(bf16_bits(x))
}

/// `values` as packed BF16, as `bf16_from_f32` writes them: element `2i` in the low half of word
/// `i`, element `2i + 1` in the high half, an odd count's last high half `+0`.
pub fn pack_bf16(values: &[f32]) -> Vec<u32> {
    values
        .chunks(2)
        .map(|pair| bf16_bits(pair[0]) as u32 | (pair.get(1).map_or(0, |&hi| bf16_bits(hi) as u32) << 16))
        .collect()
}

/// The first `len` values of packed BF16 `words`, widened to FP32.
pub fn unpack_bf16(words: &[u32], len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| bf16_value((words[i / 2] >> (16 * (i % 2))) as u16))
        .collect()
}

/// 32-bit words of `len` packed BF16 values.
pub fn bf16_words(len: usize) -> usize {
    len.div_ceil(2)
}

/// An element-wise operation on two tensors of one shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
}

impl BinaryOp {
    pub const ALL: [BinaryOp; 3] = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul];

    fn kernel(self) -> &'static str {
        match self {
            BinaryOp::Add => "add_f32",
            BinaryOp::Sub => "sub_f32",
            BinaryOp::Mul => "mul_f32",
        }
    }

    /// The op's name in errors.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
        }
    }
}

/// An element-wise operation with a constant, applied in f64 and rounded to f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    /// `x * alpha`.
    Scale,
    /// `x + alpha`.
    AddScalar,
}

impl UnaryOp {
    fn kernel(self) -> &'static str {
        match self {
            UnaryOp::Scale => "scale_f32",
            UnaryOp::AddScalar => "add_scalar_f32",
        }
    }

    /// The op's name in errors.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Scale => "scale",
            UnaryOp::AddScalar => "add_scalar",
        }
    }
}

/// Whether float4 accesses are allowed at every address.
pub(crate) fn aligned16(addresses: &[u64]) -> bool {
    addresses.iter().all(|a| a % 16 == 0)
}

/// Blocks covering `len` elements (float4s when `vec4`) at one unit per thread, at most `max_blocks`.
pub(crate) fn grid_for(len: usize, vec4: bool, max_blocks: usize) -> usize {
    let units = if vec4 { len / 4 } else { len };
    blocks_for(units, THREADS).min(max_blocks.max(1))
}

fn call<P: Pod>(kernel: &'static str, blocks: usize, params: &P) -> KernelCall {
    KernelCall::new(MODULE, kernel, (blocks, 1, 1), THREADS as u32, params)
}

/// The launch that writes `out = a (op) b` over `len` values; `out` may be `a` or `b`.
pub fn binary_calls(op: BinaryOp, len: usize, a: u64, b: u64, out: u64, max_blocks: usize) -> Result<Vec<KernelCall>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let vec4 = aligned16(&[a, b, out]);
    let params = BinaryParams {
        a,
        b,
        out,
        len: dim(op.name(), "length", len)?,
        vec4: vec4 as i32,
    };
    Ok(vec![call(op.kernel(), grid_for(len, vec4, max_blocks), &params)])
}

/// The launch that writes `out = x * alpha` or `x + alpha` over `len` values.
pub fn unary_calls(
    op: UnaryOp,
    len: usize,
    x: u64,
    out: u64,
    alpha: f64,
    max_blocks: usize,
) -> Result<Vec<KernelCall>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let vec4 = aligned16(&[x, out]);
    let params = UnaryParams {
        x,
        out,
        alpha,
        len: dim(op.name(), "length", len)?,
        vec4: vec4 as i32,
    };
    Ok(vec![call(op.kernel(), grid_for(len, vec4, max_blocks), &params)])
}

/// The launch that fills `out` (`len` values) with `factor` times the one value at `scalar`.
pub fn broadcast_calls(len: usize, scalar: u64, out: u64, factor: f64, max_blocks: usize) -> Result<Vec<KernelCall>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let vec4 = aligned16(&[out]);
    let params = BroadcastParams {
        scalar,
        out,
        factor,
        len: dim("broadcast_scalar", "length", len)?,
        vec4: vec4 as i32,
    };
    Ok(vec![call(
        "broadcast_scalar_f32",
        grid_for(len, vec4, max_blocks),
        &params,
    )])
}

/// The number of partial sums a sum of `len` values may need (1: none, the sum is one pass).
pub fn sum_scratch_len(len: usize, max_blocks: usize) -> usize {
    grid_for(len, false, max_blocks)
}

/// The launches that write the sum of the `len` values at `x` to `out` (one value): one pass when
/// a block suffices, else partial sums per block into `partials` (at least
/// [`sum_scratch_len`] values) and a second single-block pass over them.
pub fn sum_calls(len: usize, x: u64, partials: u64, out: u64, max_blocks: usize) -> Result<Vec<KernelCall>> {
    const OP: &str = "sum";
    let vec4 = aligned16(&[x]);
    let blocks = grid_for(len, vec4, max_blocks);
    let n = dim(OP, "length", len)?;
    if blocks == 1 {
        let params = SumParams {
            x,
            out,
            len: n,
            vec4: vec4 as i32,
        };
        return Ok(vec![call("sum_partial_f32", 1, &params)]);
    }
    if partials == 0 {
        return Err(Error::Cuda(format!(
            "{OP}: {blocks} partial sums need a scratch buffer"
        )));
    }
    let first = SumParams {
        x,
        out: partials,
        len: n,
        vec4: vec4 as i32,
    };
    let second = SumParams {
        x: partials,
        out,
        len: dim(OP, "partial sums", blocks)?,
        vec4: aligned16(&[partials]) as i32,
    };
    Ok(vec![
        call("sum_partial_f32", blocks, &first),
        call("sum_partial_f32", 1, &second),
    ])
}

/// The launch that writes the `len` values at `x` rounded to BF16 and packed two per word into
/// `out` ([`bf16_words`] words; see [`pack_bf16`]).
pub fn bf16_from_f32_calls(len: usize, x: u64, out: u64, max_blocks: usize) -> Result<Vec<KernelCall>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let params = ToBf16Params {
        x,
        out,
        len: dim("bf16_from_f32", "length", len)?,
        reserved: 0,
    };
    let blocks = blocks_for(bf16_words(len), THREADS).min(max_blocks.max(1));
    Ok(vec![call("bf16_from_f32", blocks, &params)])
}

/// `x` rounded to BF16 (round to nearest even), packed two values per 32-bit word of the result
/// ([`bf16_words`]`(x.len())` words). There is no BF16 tensor type: the packed storage is what
/// the kernels that read BF16 take (`device::cuda::local_contrast`).
pub fn bf16_from_f32(x: &CudaStorage) -> Result<CudaStorage> {
    let device = x.device();
    let out = CudaStorage::alloc(&device, bf16_words(x.len()))?;
    let calls = bf16_from_f32_calls(x.len(), x.device_ptr(), out.device_ptr(), MAX_BLOCKS)?;
    // SAFETY: x holds x.len() values and out bf16_words(x.len()) words, the kernel writing every
    // word; both stay alive until the kernel has run.
    unsafe { device.run(&calls) }?;
    Ok(out)
}

/// `a (op) b` for two storages of one length.
pub fn binary(op: BinaryOp, a: &CudaStorage, b: &CudaStorage) -> Result<CudaStorage> {
    check_len(op.name(), "second operand", b, a.len())?;
    let device = common_device(op.name(), &[a, b])?;
    let out = CudaStorage::alloc(&device, a.len())?;
    let calls = binary_calls(
        op,
        a.len(),
        a.device_ptr(),
        b.device_ptr(),
        out.device_ptr(),
        MAX_BLOCKS,
    )?;
    // SAFETY: a, b and out hold a.len() values each (checked above, out allocated so); they stay
    // alive until the kernel has run because a freed block is only reused by later work on the
    // same stream.
    unsafe { device.run(&calls) }?;
    Ok(out)
}

/// `acc += b` in place (after copying `acc` if it shares its block with another storage).
pub fn add_assign(acc: &mut CudaStorage, b: &CudaStorage) -> Result<()> {
    const OP: &str = "accumulate";
    check_len(OP, "addend", b, acc.len())?;
    let device = common_device(OP, &[&*acc, b])?;
    let out = acc.device_ptr_mut()?;
    let calls = binary_calls(BinaryOp::Add, acc.len(), out, b.device_ptr(), out, MAX_BLOCKS)?;
    // SAFETY: acc (now unshared) and b hold acc.len() values each; the kernel reads each element
    // of acc before the same thread writes it, so the aliasing is safe.
    unsafe { device.run(&calls) }
}

/// `x * alpha` or `x + alpha`.
pub fn unary(op: UnaryOp, x: &CudaStorage, alpha: f64) -> Result<CudaStorage> {
    let device = x.device();
    let out = CudaStorage::alloc(&device, x.len())?;
    let calls = unary_calls(op, x.len(), x.device_ptr(), out.device_ptr(), alpha, MAX_BLOCKS)?;
    // SAFETY: x and out hold x.len() values each and stay alive until the kernel has run.
    unsafe { device.run(&calls) }?;
    Ok(out)
}

/// `len` copies of `factor` times the value of the one-element `scalar`, read on the device.
pub fn broadcast_scalar(scalar: &CudaStorage, len: usize, factor: f64) -> Result<CudaStorage> {
    check_len("broadcast_scalar", "scalar", scalar, 1)?;
    let device = scalar.device();
    let out = CudaStorage::alloc(&device, len)?;
    let calls = broadcast_calls(len, scalar.device_ptr(), out.device_ptr(), factor, MAX_BLOCKS)?;
    // SAFETY: scalar holds one value (checked above), out `len`.
    unsafe { device.run(&calls) }?;
    Ok(out)
}

/// The sum of all values, as one value on the device.
pub fn sum_all(x: &CudaStorage) -> Result<CudaStorage> {
    let device = x.device();
    let out = CudaStorage::alloc(&device, 1)?;
    let scratch_len = sum_scratch_len(x.len(), SUM_MAX_BLOCKS);
    let partials = if scratch_len > 1 {
        Some(CudaStorage::alloc(&device, scratch_len)?)
    } else {
        None
    };
    let partials_ptr = partials.as_ref().map_or(0, |s| s.device_ptr());
    let calls = sum_calls(x.len(), x.device_ptr(), partials_ptr, out.device_ptr(), SUM_MAX_BLOCKS)?;
    // SAFETY: x holds x.len() values, out one, partials as many as the first pass has blocks
    // (sum_scratch_len bounds them). The scratch block returns to the cache when this function
    // returns, which is safe because later users queue behind these kernels on the same stream.
    unsafe { device.run(&calls) }?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round to nearest even on the bits (the rule of `cvt.rn.bf16.f32`), for values that are not
    /// NaN.
    fn round_nearest_even(x: f32) -> u16 {
        let u = x.to_bits();
        ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
    }

    #[test]
    fn bf16_bits_round_to_nearest_even_and_canonicalise_nan() {
        // Every upper half with the lower halves around the rounding boundary: exact, just
        // below, at (a tie, both parities of the upper half) and just above half an ulp.
        for hi in 0..=0xffffu32 {
            for lo in [0u32, 1, 0x7fff, 0x8000, 0x8001, 0xffff] {
                let x = f32::from_bits(hi << 16 | lo);
                if x.is_nan() {
                    assert_eq!(bf16_bits(x), 0x7fff, "{:#010x}", x.to_bits());
                } else {
                    assert_eq!(bf16_bits(x), round_nearest_even(x), "{:#010x}", x.to_bits());
                }
            }
        }
        // Ties go to the even upper half; past the largest BF16 to infinity.
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(bf16_bits(f32::MAX), 0x7f80);
        assert_eq!(bf16_bits(-f32::MAX), 0xff80);
        assert_eq!(bf16_round(1.0 + 1.0 / 512.0), 1.0);
    }

    #[test]
    fn packing_puts_the_even_element_low_and_pads_an_odd_count_with_zero() {
        let values = [1.0f32, -2.0, 0.5];
        let words = pack_bf16(&values);
        assert_eq!(words, [0xc000_3f80, 0x0000_3f00]);
        assert_eq!(bf16_words(values.len()), words.len());
        assert_eq!(unpack_bf16(&words, 3), values);
    }

    #[test]
    fn the_conversion_plans_one_thread_per_word() {
        assert!(bf16_from_f32_calls(0, 0, 0, MAX_BLOCKS).unwrap().is_empty());
        let calls = bf16_from_f32_calls(513, 16, 32, MAX_BLOCKS).unwrap();
        assert_eq!((calls[0].kernel, calls[0].grid), ("bf16_from_f32", (2, 1, 1)));
        calls[0].validate().unwrap();
    }
}
