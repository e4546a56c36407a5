//! Kernel parameter structs, mirrored field for field by `kernels/common.cuh`. Both sides assert
//! the size and a few offsets, so a field added on one side only fails the build.

use std::mem::{offset_of, size_of};

use bytemuck::{Pod, Zeroable};
use cudarc::driver::DeviceRepr;

/// `ConvParams` of `kernels/common.cuh`: one convolution pass (see `kernels/conv.cu`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ConvParams {
    pub x: u64,
    pub weight: u64,
    pub dy: u64,
    pub bias: u64,
    pub out: u64,
    pub out_bias: u64,
    pub n: i32,
    pub c_in: i32,
    pub h: i32,
    pub w: i32,
    pub c_out: i32,
    pub kh: i32,
    pub kw: i32,
    pub stride: i32,
    pub pad: i32,
    pub h_out: i32,
    pub w_out: i32,
    pub split_len: i32,
    pub splits: i32,
    pub reserved: i32,
}

const _: () = assert!(size_of::<ConvParams>() == 104);
const _: () = assert!(offset_of!(ConvParams, n) == 48);
const _: () = assert!(offset_of!(ConvParams, split_len) == 92);

/// `SplitReduceParams`: `out[i] = sum_s partial[s][i]`, and the same for the bias pair.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SplitReduceParams {
    pub partial: u64,
    pub out: u64,
    pub partial_bias: u64,
    pub out_bias: u64,
    pub len: i32,
    pub bias_len: i32,
    pub splits: i32,
    pub reserved: i32,
}

const _: () = assert!(size_of::<SplitReduceParams>() == 48);
const _: () = assert!(offset_of!(SplitReduceParams, len) == 32);

/// `PlaneSumParams`: `out[p] = sum of plane p of x`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PlaneSumParams {
    pub x: u64,
    pub out: u64,
    pub planes: i32,
    pub plane_len: i32,
}

const _: () = assert!(size_of::<PlaneSumParams>() == 24);
const _: () = assert!(offset_of!(PlaneSumParams, planes) == 16);

// SAFETY: plain `#[repr(C)]` structs of integers whose layout matches the kernels' parameter
// structs (asserted above and in common.cuh); they are passed by value.
unsafe impl DeviceRepr for ConvParams {}
unsafe impl DeviceRepr for SplitReduceParams {}
unsafe impl DeviceRepr for PlaneSumParams {}
