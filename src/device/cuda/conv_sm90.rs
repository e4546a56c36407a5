//! Version 3 of the convolutions: the Hopper warpgroup-MMA kernels of `kernels/conv_sm90.cu`
//! (wgmma, compiled for sm_90a only, so they run on compute capability 9.0 devices alone), for
//! all three passes (see [`super::conv::ConvAlgo`]).

use super::CudaDevice;
use super::conv::{ConvAlgo, ConvPass};
use crate::error::{Error, Result};

/// The kernel file, `kernels/conv_sm90.cu`.
pub const MODULE: &str = "conv_sm90";

/// Block tile: 128 rows (two warpgroups of 64; pixels, or taps in backward-weight) x 64 channels
/// (32 when the GEMM has 32 channel columns or fewer), 32-deep k tiles.
pub const TILE_ROWS: usize = 128;
pub const TILE_COLS: usize = 64;
pub const TILE_COLS_NARROW: usize = 32;
pub const TILE_DEPTH: usize = 32;
/// Shared-memory stages of the B operand (the weights).
const STAGES: usize = 2;

/// The kernels by [pass: forward, backward-data, backward-weight][kernel size: k1, k2, k3, kany]
/// [wide tile, narrow tile], named `conv_<pass>_wgmma_<precision>_<size>_<tile>` as conv_sm90.cu's
/// LRC_CONV_WGMMA does (tiles n64 / n32, backward-weight m64 / m32).
type WgmmaKernels = [[[&'static str; 2]; 4]; 3];

macro_rules! wgmma_kernels {
    ($precision:literal) => {
        [
            wgmma_kernels!(@pass "fwd", $precision, "n64", "n32"),
            wgmma_kernels!(@pass "bwd_data", $precision, "n64", "n32"),
            wgmma_kernels!(@pass "bwd_weight", $precision, "m64", "m32"),
        ]
    };
    (@pass $pass:literal, $precision:literal, $wide:literal, $narrow:literal) => {
        [
            wgmma_kernels!(@size $pass, $precision, "k1", $wide, $narrow),
            wgmma_kernels!(@size $pass, $precision, "k2", $wide, $narrow),
            wgmma_kernels!(@size $pass, $precision, "k3", $wide, $narrow),
            wgmma_kernels!(@size $pass, $precision, "kany", $wide, $narrow),
        ]
    };
    (@size $pass:literal, $precision:literal, $size:literal, $wide:literal, $narrow:literal) => {
        [
            concat!("conv_", $pass, "_wgmma_", $precision, "_", $size, "_", $wide),
            concat!("conv_", $pass, "_wgmma_", $precision, "_", $size, "_", $narrow),
        ]
    };
}

const TF32_KERNELS: WgmmaKernels = wgmma_kernels!("tf32");
const BF16_KERNELS: WgmmaKernels = wgmma_kernels!("bf16");

/// Every kernel of `kernels/conv_sm90.cu`.
pub fn kernel_names() -> Vec<&'static str> {
    [&TF32_KERNELS, &BF16_KERNELS]
        .into_iter()
        .flat_map(|t| t.iter().flatten().flatten().copied())
        .collect()
}

/// The v3 kernel of `pass` for a wgmma algorithm, kernel-size variant (0: 1x1, 1: 2x2, 2: 3x3,
/// 3: any) and tile (narrow: 32 channels), or None for other algorithms.
pub(crate) fn kernel(algo: ConvAlgo, pass: ConvPass, size_variant: usize, narrow: bool) -> Option<&'static str> {
    let table = match algo {
        ConvAlgo::Tf32Wgmma => &TF32_KERNELS,
        ConvAlgo::Bf16Wgmma => &BF16_KERNELS,
        _ => return None,
    };
    Some(table[pass as usize][size_variant][narrow as usize])
}

/// The block tile of `pass` in the planner's terms, (rows, columns): the GEMM of conv.cu's header
/// (for backward-weight rows = c_out, columns = taps, which v3 computes transposed: its 128-row
/// tile runs over the taps, its 64 or 32 columns over c_out).
pub(crate) fn tile(pass: ConvPass, narrow: bool) -> (usize, usize) {
    let channels = if narrow { TILE_COLS_NARROW } else { TILE_COLS };
    match pass {
        ConvPass::Forward | ConvPass::BackwardData => (TILE_ROWS, channels),
        ConvPass::BackwardWeight => (channels, TILE_ROWS),
    }
}

/// Whether `kernel` is one of this module's.
pub fn is_kernel(kernel: &str) -> bool {
    kernel_names().contains(&kernel)
}

/// The dynamic shared memory a launch of `kernel` needs: the B stages of 64 or 32 rows, laid out
/// as conv_sm90.cu's `v3::Stage` (words of k per row WK = 32 / values per word; core matrices
/// LBO = 32 + 128 / WK words apart along k, 8-row groups (WK / 4 - 1) LBO + 32 words apart). 0
/// for kernels of other modules.
pub fn shared_bytes(kernel: &str) -> usize {
    let find = |table: &WgmmaKernels| {
        table
            .iter()
            .flatten()
            .find_map(|tiles| tiles.iter().position(|k| *k == kernel))
    };
    let (pack, narrow) = match (find(&TF32_KERNELS), find(&BF16_KERNELS)) {
        (Some(narrow), _) => (1, narrow == 1),
        (_, Some(narrow)) => (2, narrow == 1),
        _ => return 0,
    };
    let rows = if narrow { TILE_COLS_NARROW } else { TILE_COLS };
    let wk = TILE_DEPTH / pack;
    let lbo = 32 + 128 / wk;
    let sbo = (wk / 4 - 1) * lbo + 32;
    STAGES * (rows / 8) * sbo * 4
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
        // conv_sm90.cu: TF32 2 x 8 x 284 words, BF16 2 x 8 x 152 words; half for 32 rows.
        assert_eq!(shared_bytes("conv_fwd_wgmma_tf32_k3_n64"), 18_176);
        assert_eq!(shared_bytes("conv_bwd_data_wgmma_bf16_kany_n64"), 9_728);
        assert_eq!(shared_bytes("conv_bwd_weight_wgmma_tf32_k1_m32"), 9_088);
        assert_eq!(shared_bytes("conv_fwd_wgmma_bf16_k2_n32"), 4_864);
        assert_eq!(shared_bytes("conv_fwd_tf32_k3_n64"), 0);
    }

    #[test]
    fn every_kernel_name_is_distinct_and_known() {
        let mut names = kernel_names();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 48);
        assert!(names.iter().all(|n| is_kernel(n)));
        assert_eq!(
            kernel(ConvAlgo::Bf16Wgmma, ConvPass::BackwardData, 1, false),
            Some("conv_bwd_data_wgmma_bf16_k2_n64")
        );
        assert_eq!(
            kernel(ConvAlgo::Tf32Wgmma, ConvPass::BackwardWeight, 2, true),
            Some("conv_bwd_weight_wgmma_tf32_k3_m32")
        );
        assert_eq!(kernel(ConvAlgo::Tf32Mma, ConvPass::Forward, 2, false), None);
    }
}
