//! Channel concatenation and its backward split on the GPU: the host side of
//! `kernels/concat.cu`. Per batch row, a row of `a_len` values and one of `b_len` values are
//! joined (or cut apart); 1-D grids of 256-thread blocks with grid-stride loops, float4 copies
//! when both lengths are multiples of 4 and every address is 16-byte aligned.

use bytemuck::{Pod, Zeroable};

use super::CudaStorage;
use super::call::KernelCall;
use super::launch::dim;
use super::operand::{check_len, common_device};
use super::pointwise::{self, aligned16, grid_for};
use crate::error::{Error, Result};

const MODULE: &str = "concat";

/// Threads per block of both kernels.
pub const THREADS: usize = 256;

/// The most blocks a launch takes, as for the element-wise kernels.
pub const MAX_BLOCKS: usize = pointwise::MAX_BLOCKS;

/// `ConcatParams` of `kernels/concat.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ConcatParams {
    pub a: u64,
    pub b: u64,
    pub whole: u64,
    pub rows: i32,
    pub a_len: i32,
    pub b_len: i32,
    pub vec4: i32,
}
const _: () = assert!(size_of::<ConcatParams>() == 40);
const _: () = assert!(std::mem::offset_of!(ConcatParams, rows) == 24);

/// `SplitParams` of `kernels/concat.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SplitParams {
    pub whole: u64,
    pub a: u64,
    pub b: u64,
    pub rows: i32,
    pub a_len: i32,
    pub b_len: i32,
    pub vec4: i32,
}
const _: () = assert!(size_of::<SplitParams>() == 40);
const _: () = assert!(std::mem::offset_of!(SplitParams, rows) == 24);

/// Rows, row lengths and whole length as kernel ints, or the error saying which is too large.
fn geometry(op: &'static str, rows: usize, a_len: usize, b_len: usize) -> Result<(i32, i32, i32, usize)> {
    let total = a_len
        .checked_add(b_len)
        .and_then(|row| row.checked_mul(rows))
        .ok_or_else(|| Error::shape(op, "the result is too large".to_string()))?;
    dim(op, "length", total)?;
    Ok((
        dim(op, "rows", rows)?,
        dim(op, "a length", a_len)?,
        dim(op, "b length", b_len)?,
        total,
    ))
}

fn plan(kernel: &'static str, total: usize, vec4: bool, max_blocks: usize, params: &impl Pod) -> Vec<KernelCall> {
    if total == 0 {
        return Vec::new();
    }
    vec![KernelCall::new(
        MODULE,
        kernel,
        (grid_for(total, vec4, max_blocks), 1, 1),
        THREADS as u32,
        params,
    )]
}

/// The launch that writes `whole[r] = [a[r], b[r]]` for `rows` rows of `a_len` and `b_len` values.
pub fn concat_calls(
    rows: usize,
    a_len: usize,
    b_len: usize,
    a: u64,
    b: u64,
    whole: u64,
    max_blocks: usize,
) -> Result<Vec<KernelCall>> {
    let (r, la, lb, total) = geometry("concat", rows, a_len, b_len)?;
    let vec4 = a_len.is_multiple_of(4) && b_len.is_multiple_of(4) && aligned16(&[a, b, whole]);
    let params = ConcatParams {
        a,
        b,
        whole,
        rows: r,
        a_len: la,
        b_len: lb,
        vec4: vec4 as i32,
    };
    Ok(plan("concat_f32", total, vec4, max_blocks, &params))
}

/// The launch that writes `[a[r], b[r]] = whole[r]` for `rows` rows of `a_len` and `b_len` values.
pub fn split_calls(
    rows: usize,
    a_len: usize,
    b_len: usize,
    whole: u64,
    a: u64,
    b: u64,
    max_blocks: usize,
) -> Result<Vec<KernelCall>> {
    let (r, la, lb, total) = geometry("concat backward", rows, a_len, b_len)?;
    let vec4 = a_len.is_multiple_of(4) && b_len.is_multiple_of(4) && aligned16(&[a, b, whole]);
    let params = SplitParams {
        whole,
        a,
        b,
        rows: r,
        a_len: la,
        b_len: lb,
        vec4: vec4 as i32,
    };
    Ok(plan("split_f32", total, vec4, max_blocks, &params))
}

/// `rows` rows of `[a_len values of a, b_len values of b]`.
pub fn concat(a: &CudaStorage, b: &CudaStorage, rows: usize, a_len: usize, b_len: usize) -> Result<CudaStorage> {
    const OP: &str = "concat";
    check_len(OP, "first part", a, rows * a_len)?;
    check_len(OP, "second part", b, rows * b_len)?;
    let device = common_device(OP, &[a, b])?;
    let whole = CudaStorage::alloc(&device, a.len() + b.len())?;
    let calls = concat_calls(
        rows,
        a_len,
        b_len,
        a.device_ptr(),
        b.device_ptr(),
        whole.device_ptr(),
        MAX_BLOCKS,
    )?;
    // SAFETY: a and b hold rows*a_len and rows*b_len values (checked above), whole their sum;
    // all stay alive until the kernel has run (a freed block is only reused by later work on the
    // same stream).
    unsafe { device.run(&calls) }?;
    Ok(whole)
}

/// The two parts of `rows` rows of `[a_len values, b_len values]`.
pub fn split(whole: &CudaStorage, rows: usize, a_len: usize, b_len: usize) -> Result<(CudaStorage, CudaStorage)> {
    check_len("concat backward", "gradient", whole, rows * (a_len + b_len))?;
    let device = whole.device();
    let a = CudaStorage::alloc(&device, rows * a_len)?;
    let b = CudaStorage::alloc(&device, rows * b_len)?;
    let calls = split_calls(
        rows,
        a_len,
        b_len,
        whole.device_ptr(),
        a.device_ptr(),
        b.device_ptr(),
        MAX_BLOCKS,
    )?;
    // SAFETY: whole holds rows*(a_len+b_len) values (checked above), a and b rows*a_len and
    // rows*b_len.
    unsafe { device.run(&calls) }?;
    Ok((a, b))
}
