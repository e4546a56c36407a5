//! Version 3 of the convolutions: the Hopper warpgroup-MMA kernels of `kernels/conv_sm90.cu`
//! (wgmma, compiled for sm_90a only, so they run on compute capability 9.0 devices alone), for
//! all three passes (see [`super::conv::ConvAlgo`]).

use super::CudaDevice;
use super::conv::{ConvAlgo, ConvPass};
use crate::error::{Error, Result};

/// The kernel file, `kernels/conv_sm90.cu`.
pub const MODULE: &str = "conv_sm90";

/// Block tile: 128 rows (two warpgroups of 64; pixels, or taps in backward-weight) x 64 channels,
/// 32-deep k tiles.
pub const TILE_ROWS: usize = 128;
pub const TILE_COLS: usize = 64;
pub const TILE_DEPTH: usize = 32;
/// Shared-memory stages of the B operand (the weights).
const STAGES: usize = 2;

/// The kernels by [pass: forward, backward-data, backward-weight][kernel size: k1, k2, k3, kany],
/// named `conv_<pass>_wgmma_<precision>_<size>_<n64 | m64>` as conv_sm90.cu's LRC_CONV_WGMMA does.
type WgmmaKernels = [[&'static str; 4]; 3];

macro_rules! wgmma_kernels {
    ($precision:literal) => {
        [
            wgmma_kernels!(@pass "fwd", $precision, "n64"),
            wgmma_kernels!(@pass "bwd_data", $precision, "n64"),
            wgmma_kernels!(@pass "bwd_weight", $precision, "m64"),
        ]
    };
    (@pass $pass:literal, $precision:literal, $tile:literal) => {
        [
            concat!("conv_", $pass, "_wgmma_", $precision, "_k1_", $tile),
            concat!("conv_", $pass, "_wgmma_", $precision, "_k2_", $tile),
            concat!("conv_", $pass, "_wgmma_", $precision, "_k3_", $tile),
            concat!("conv_", $pass, "_wgmma_", $precision, "_kany_", $tile),
        ]
    };
}

const TF32_KERNELS: WgmmaKernels = wgmma_kernels!("tf32");
const BF16_KERNELS: WgmmaKernels = wgmma_kernels!("bf16");

/// Every kernel of `kernels/conv_sm90.cu`.
pub fn kernel_names() -> Vec<&'static str> {
    [&TF32_KERNELS, &BF16_KERNELS]
        .into_iter()
        .flat_map(|t| t.iter().flatten().copied())
        .collect()
}

/// The v3 kernel of `pass` for a wgmma algorithm and kernel-size variant (0: 1x1, 1: 2x2,
/// 2: 3x3, 3: any), or None for other algorithms.
pub(crate) fn kernel(algo: ConvAlgo, pass: ConvPass, size_variant: usize) -> Option<&'static str> {
    let table = match algo {
        ConvAlgo::Tf32Wgmma => &TF32_KERNELS,
        ConvAlgo::Bf16Wgmma => &BF16_KERNELS,
        _ => return None,
    };
    Some(table[pass as usize][size_variant])
}

/// The block tile of `pass` in the planner's terms, (rows, columns): the GEMM of conv.cu's header
/// (for backward-weight rows = c_out, columns = taps, which v3 computes transposed: its 128-row
/// tile runs over the taps, its 64 columns over c_out).
pub(crate) fn tile(pass: ConvPass) -> (usize, usize) {
    match pass {
        ConvPass::Forward | ConvPass::BackwardData => (TILE_ROWS, TILE_COLS),
        ConvPass::BackwardWeight => (TILE_COLS, TILE_ROWS),
    }
}

/// Whether `kernel` is one of this module's.
pub fn is_kernel(kernel: &str) -> bool {
    kernel_names().contains(&kernel)
}

/// The dynamic shared memory a launch of `kernel` needs: the B stages, laid out as
/// conv_sm90.cu's `v3::Stage` (words of k per row WK = 32 / values per word; core matrices 32 +
/// 128 / WK words apart along k, 8-row groups (WK / 4 - 1) LBO + 32 words apart). 0 for kernels
/// of other modules.
pub fn shared_bytes(kernel: &str) -> usize {
    let pack = if TF32_KERNELS.iter().flatten().any(|k| *k == kernel) {
        1
    } else if BF16_KERNELS.iter().flatten().any(|k| *k == kernel) {
        2
    } else {
        return 0;
    };
    let wk = TILE_DEPTH / pack;
    let lbo = 32 + 128 / wk;
    let sbo = (wk / 4 - 1) * lbo + 32;
    STAGES * (TILE_COLS / 8) * sbo * 4
}

/// An error unless `device` runs sm_90a code (compute capability 9.0 exactly), which `algo`
/// needs when it is a wgmma algorithm.
pub(crate) fn check_device(algo: ConvAlgo, device: &CudaDevice) -> Result<()> {
    let cc = device.compute_capability();
    if algo.runs_on(cc) {
        return Ok(());
    }
    Err(Error::Device(format!(
        "convolution algorithm {algo} needs a compute capability 9.0 GPU (sm_90a, Hopper); {} is {}.{}",
        device.name(),
        cc.0,
        cc.1
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_matches_the_kernel_layout() {
        // conv_sm90.cu: TF32 2 x 8 x 284 words, BF16 2 x 8 x 152 words.
        assert_eq!(shared_bytes("conv_fwd_wgmma_tf32_k3_n64"), 18_176);
        assert_eq!(shared_bytes("conv_bwd_data_wgmma_bf16_kany_n64"), 9_728);
        assert_eq!(shared_bytes("conv_fwd_tf32_k3_n64"), 0);
    }

    #[test]
    fn every_kernel_name_is_distinct_and_known() {
        let mut names = kernel_names();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 24);
        assert!(names.iter().all(|n| is_kernel(n)));
        assert_eq!(
            kernel(ConvAlgo::Bf16Wgmma, ConvPass::BackwardData, 1),
            Some("conv_bwd_data_wgmma_bf16_k2_n64")
        );
        assert_eq!(
            kernel(ConvAlgo::Tf32Wgmma, ConvPass::BackwardWeight, 2),
            Some("conv_bwd_weight_wgmma_tf32_k3_m64")
        );
        assert_eq!(kernel(ConvAlgo::Tf32Mma, ConvPass::Forward, 2), None);
    }
}
