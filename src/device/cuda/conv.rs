//! Convolution and transposed convolution on the GPU: the host side of `kernels/conv.cu`.
//!
//! Every pass is an implicit GEMM (see the comment at the top of conv.cu). The kernel versions
//! are kept side by side and chosen per call with [`ConvAlgo`]. The backward-weight pass splits
//! its long reduction (over every output pixel of the batch) across blocks and adds the partial
//! sums in a fixed order, so its results are deterministic.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use super::call::{KernelCall, blocks_for};
use super::conv_sm90;
use super::conv_tune::{self, TuneKey};
use super::launch::{Launch, dim};
use super::operand::{check_len, common_device};
use super::params::{ConvParams, PlaneSumParams, SplitReduceParams};
use super::{CudaDevice, CudaStorage};
use crate::error::{Error, Result};
use crate::ops::conv::ConvGeom;

const MODULE: &str = "conv";
const THREADS: u32 = 256;

/// Which convolution kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConvAlgo {
    /// Plain FP32 shared-memory tiles (64x64x16): the simple reference version.
    Fp32Tiled = 0,
    /// Tensor cores through `mma.sync` m16n8k8: TF32 inputs (10-bit mantissa, rounded to
    /// nearest even), FP32 accumulation, as PyTorch does with `allow_tf32`.
    Tf32Mma = 1,
    /// Tensor cores through `mma.sync` m16n8k16: the operands rounded to BF16 (8-bit
    /// significand, round to nearest even) as they are staged, FP32 accumulation. Tensors stay
    /// FP32 in memory: BF16 math on FP32 storage, the precision cuDNN computes in when fed BF16
    /// operands (as under `torch.autocast`).
    Bf16Mma = 2,
    /// Hopper warpgroup MMA (`wgmma.mma_async` m64n64k8 / m64n32k8, sm_90a: compute capability
    /// 9.0 only), TF32 operands rounded as in `tf32-mma`, FP32 accumulation.
    Tf32Wgmma = 3,
    /// As [`ConvAlgo::Tf32Wgmma`] with BF16 operands (m64nNk16), rounded as in `bf16-mma`.
    Bf16Wgmma = 4,
    /// `tf32-mma` whose 3x3 passes order the taps' channels tap-major ((ky, kx, channel)) where
    /// that channel count is a multiple of 32: forward and backward-data reduce so, and each
    /// 32-deep k tile lies within one tap; backward-weight orders its columns so, and each run
    /// of 32 columns does. A row's bounds and address are then worked out once per run of 32
    /// instead of per element. Forward and backward-data passes with few channels run on the
    /// FP32 cores, one thread a pixel, operands rounded to TF32 as the tensor cores take them
    /// (memory-bound shapes the tensor-core tiles mostly pad): 1x1 with 32 outputs or fewer and
    /// 128 inputs or fewer (the segmentation head), 3x3 stride 1 pad 1 with inputs times
    /// outputs 64 or fewer (the first layer). The 2x2 stride-2 transposed forward pass runs as
    /// one GEMM over its four taps. Other shapes run `tf32-mma`'s kernels.
    Tf32MmaTap = 5,
    /// As [`ConvAlgo::Tf32MmaTap`] with `bf16-mma`'s operands.
    Bf16MmaTap = 6,
    /// `tf32-mma-tap` with larger blocks: 128 x 128 (each warp 32 x 64) instead of 128 x 64 for
    /// the forward and backward-data passes whose GEMM has 128 columns or more (c_out forward,
    /// c_in backward-data), 64 x 128 instead of 64 x 64 for backward-weight with more than 32
    /// output channels: more products per fragment loaded from shared memory and per value a
    /// block gathers. Everything else runs `tf32-mma-tap`'s kernels.
    Tf32MmaWide = 9,
    /// As [`ConvAlgo::Tf32MmaWide`] with `bf16-mma`'s operands.
    Bf16MmaWide = 10,
    /// `tf32-mma-wide` whose 3x3 backward-weight passes, where the image's width is a multiple
    /// of 32 or is 16 (with an even height) and c_in a multiple of 32, stride 1 and pad 1, run by
    /// halo tiles: a block computes all nine taps of 32 input channels from one staged k tile
    /// of 32 pixels, their dy and their input with its one-pixel border, where the implicit GEMM
    /// gathers the input once per tap. Its 3x3 forward and backward-data passes with input
    /// channels a multiple of 8 (c_in forward, c_out backward-data) and a width that is a
    /// multiple of 16, stride 1 and pad 1, run by halo tiles too: a block of 32 output channels
    /// and 256 output pixels (64 and 128 where there are more than 32 output channels) stages
    /// each 8 input channels' pixels with their border once for all nine taps. Everything else
    /// runs `tf32-mma-wide`'s kernels.
    Tf32MmaHalo = 11,
    /// As [`ConvAlgo::Tf32MmaHalo`] with `bf16-mma`'s operands (its forward and backward-data
    /// halo tiles for input channels that are a multiple of 16; `bf16-mma-wide` elsewhere).
    Bf16MmaHalo = 12,
    /// Not a version but a choice among them: for each pass and geometry, the fastest TF32
    /// version this device runs (`tf32-mma`, `tf32-mma-tap`, `tf32-mma-wide`, `tf32-mma-halo`,
    /// `tf32-wgmma`),
    /// timed with CUDA events the first time the pass meets that geometry and remembered by the
    /// device (`conv_tune`). That first call waits for the device; runs may choose differently, so
    /// results are reproducible to TF32 rounding, not bit for bit.
    Tf32Fastest = 7,
    /// As [`ConvAlgo::Tf32Fastest`] among the BF16 versions.
    Bf16Fastest = 8,
}

impl ConvAlgo {
    /// Every version, simplest first. The wgmma ones run on compute capability 9.0 alone
    /// ([`ConvAlgo::runs_on`]).
    pub const ALL: [ConvAlgo; 11] = [
        ConvAlgo::Fp32Tiled,
        ConvAlgo::Tf32Mma,
        ConvAlgo::Bf16Mma,
        ConvAlgo::Tf32Wgmma,
        ConvAlgo::Bf16Wgmma,
        ConvAlgo::Tf32MmaTap,
        ConvAlgo::Bf16MmaTap,
        ConvAlgo::Tf32MmaWide,
        ConvAlgo::Bf16MmaWide,
        ConvAlgo::Tf32MmaHalo,
        ConvAlgo::Bf16MmaHalo,
    ];

    /// The settings that choose a version per pass and geometry by timing them.
    pub const CHOICES: [ConvAlgo; 2] = [ConvAlgo::Tf32Fastest, ConvAlgo::Bf16Fastest];

    /// The version ops use unless told otherwise: on an H100 (docs/PERFORMANCE.md, second
    /// check) the fastest version measured at TF32 precision, 13.66 ms over the U-Net's
    /// convolutions against cuDNN's 19.18 (tf32-mma 37.67) and a training step of 15.96 ms
    /// against tf32-mma's 38.95; timing every pass (`tf32-fastest`) gains 1% over it. It runs on
    /// compute capability 8.0 and up (mma.sync, no sm_90a code).
    pub const DEFAULT: ConvAlgo = ConvAlgo::Tf32MmaHalo;

    /// The environment variable that overrides [`ConvAlgo::DEFAULT`] when a device is opened.
    pub const ENV: &'static str = "LRC_CONV_ALGO";

    /// The name `LRC_CONV_ALGO` and `--algo` take.
    pub fn name(self) -> &'static str {
        match self {
            ConvAlgo::Fp32Tiled => "fp32-tiled",
            ConvAlgo::Tf32Mma => "tf32-mma",
            ConvAlgo::Bf16Mma => "bf16-mma",
            ConvAlgo::Tf32Wgmma => "tf32-wgmma",
            ConvAlgo::Bf16Wgmma => "bf16-wgmma",
            ConvAlgo::Tf32MmaTap => "tf32-mma-tap",
            ConvAlgo::Bf16MmaTap => "bf16-mma-tap",
            ConvAlgo::Tf32MmaWide => "tf32-mma-wide",
            ConvAlgo::Bf16MmaWide => "bf16-mma-wide",
            ConvAlgo::Tf32MmaHalo => "tf32-mma-halo",
            ConvAlgo::Bf16MmaHalo => "bf16-mma-halo",
            ConvAlgo::Tf32Fastest => "tf32-fastest",
            ConvAlgo::Bf16Fastest => "bf16-fastest",
        }
    }

    /// For a choice ([`ConvAlgo::CHOICES`]), the versions it chooses among on a device of
    /// compute capability `cc` (the first is what a plan made without choosing uses); `None` for
    /// a version.
    pub fn candidates(self, cc: (i32, i32)) -> Option<Vec<ConvAlgo>> {
        let family: &[ConvAlgo] = match self {
            ConvAlgo::Tf32Fastest => &[
                ConvAlgo::Tf32Mma,
                ConvAlgo::Tf32MmaTap,
                ConvAlgo::Tf32MmaWide,
                ConvAlgo::Tf32MmaHalo,
                ConvAlgo::Tf32Wgmma,
            ],
            ConvAlgo::Bf16Fastest => &[
                ConvAlgo::Bf16Mma,
                ConvAlgo::Bf16MmaTap,
                ConvAlgo::Bf16MmaWide,
                ConvAlgo::Bf16MmaHalo,
                ConvAlgo::Bf16Wgmma,
            ],
            _ => return None,
        };
        Some(family.iter().copied().filter(|a| a.runs_on(cc)).collect())
    }

    /// Whether this version runs sm_90a code (wgmma), which only compute capability 9.0 devices
    /// execute.
    pub fn needs_sm90a(self) -> bool {
        matches!(self, ConvAlgo::Tf32Wgmma | ConvAlgo::Bf16Wgmma)
    }

    /// Whether this version runs on a device of compute capability `cc` (major, minor).
    pub fn runs_on(self, cc: (i32, i32)) -> bool {
        !self.needs_sm90a() || cc == (9, 0)
    }

    /// An error (never a panic) when `device` cannot run this version.
    pub fn check_device(self, device: &CudaDevice) -> Result<()> {
        conv_sm90::check_device(self, device)
    }

    /// `LRC_CONV_ALGO`, if set.
    pub fn from_env() -> Result<Option<ConvAlgo>> {
        match std::env::var(ConvAlgo::ENV) {
            Ok(v) if !v.trim().is_empty() => v
                .parse()
                .map(Some)
                .map_err(|e: Error| Error::config(format!("{}: {e}", ConvAlgo::ENV))),
            _ => Ok(None),
        }
    }

    pub(crate) fn from_index(i: u8) -> ConvAlgo {
        ConvAlgo::ALL
            .into_iter()
            .chain(ConvAlgo::CHOICES)
            .find(|&a| a as u8 == i)
            .unwrap_or(ConvAlgo::DEFAULT)
    }
}

impl fmt::Display for ConvAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ConvAlgo {
    type Err = Error;
    fn from_str(s: &str) -> Result<ConvAlgo> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fp32-tiled" | "fp32" => Ok(ConvAlgo::Fp32Tiled),
            "tf32-mma" | "tf32" => Ok(ConvAlgo::Tf32Mma),
            "bf16-mma" | "bf16" => Ok(ConvAlgo::Bf16Mma),
            "tf32-wgmma" => Ok(ConvAlgo::Tf32Wgmma),
            "bf16-wgmma" => Ok(ConvAlgo::Bf16Wgmma),
            "tf32-mma-tap" => Ok(ConvAlgo::Tf32MmaTap),
            "bf16-mma-tap" => Ok(ConvAlgo::Bf16MmaTap),
            "tf32-mma-wide" => Ok(ConvAlgo::Tf32MmaWide),
            "bf16-mma-wide" => Ok(ConvAlgo::Bf16MmaWide),
            "tf32-mma-halo" => Ok(ConvAlgo::Tf32MmaHalo),
            "bf16-mma-halo" => Ok(ConvAlgo::Bf16MmaHalo),
            "tf32-fastest" => Ok(ConvAlgo::Tf32Fastest),
            "bf16-fastest" => Ok(ConvAlgo::Bf16Fastest),
            other => Err(Error::config(format!(
                "unknown convolution algorithm '{other}': expected one of {}",
                ConvAlgo::ALL
                    .iter()
                    .chain(&ConvAlgo::CHOICES)
                    .map(|a| a.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

/// A transposed convolution as `torch.nn.ConvTranspose2d` (no output padding, no dilation):
/// input `n x c_in x h x w`, weights `(c_in, c_out, kh, kw)`, output `n x c_out x h_out x w_out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTransposeGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvTransposeGeom {
    /// Checks that the output has at least one row and column.
    pub fn validate(&self) -> Result<()> {
        if self.stride == 0
            || self.h == 0
            || self.w == 0
            || (self.h - 1) * self.stride + self.kh <= 2 * self.pad
            || (self.w - 1) * self.stride + self.kw <= 2 * self.pad
        {
            return Err(Error::shape(
                "conv_transpose2d",
                format!(
                    "kernel {}x{} stride {} pad {} gives no output for input {}x{}",
                    self.kh, self.kw, self.stride, self.pad, self.h, self.w
                ),
            ));
        }
        Ok(())
    }

    /// Output rows: (h - 1) * stride + kh - 2 * pad.
    pub fn h_out(&self) -> usize {
        (self.h - 1) * self.stride + self.kh - 2 * self.pad
    }

    /// Output columns: (w - 1) * stride + kw - 2 * pad.
    pub fn w_out(&self) -> usize {
        (self.w - 1) * self.stride + self.kw - 2 * self.pad
    }

    /// The convolution this one transposes: its backward-data pass is this forward pass, its
    /// forward pass this backward-data pass, and its weights (OIHW) are these weights.
    pub fn as_conv(&self) -> ConvGeom {
        ConvGeom {
            n: self.n,
            c_in: self.c_out,
            h: self.h_out(),
            w: self.w_out(),
            c_out: self.c_in,
            kh: self.kh,
            kw: self.kw,
            stride: self.stride,
            pad: self.pad,
        }
    }

    /// Multiply-adds of the forward pass: every input value meets every weight of its channel.
    pub fn macs(&self) -> usize {
        self.n * self.c_in * self.h * self.w * self.c_out * self.kh * self.kw
    }

    /// Whether the kernel's windows tile the output (kh == kw == stride, no padding), so that
    /// each output pixel meets exactly one tap: the forward pass is then one GEMM per tap.
    pub fn taps_tile_the_output(&self) -> bool {
        self.pad == 0 && self.kh == self.stride && self.kw == self.stride
    }
}

/// A pass of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvPass {
    Forward,
    BackwardData,
    BackwardWeight,
}

/// How a pass runs: its kernel and grid (256 threads a block) and, for backward-weight, how the
/// reduction is split (one split: the kernel writes dw and db itself; more: partial sums added
/// by `split_reduce`). Other passes have `split_len` 0 and one split. The tap-major forward and
/// backward-data kernels read their weights packed by `pack` first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvLaunch {
    pub kernel: &'static str,
    pub grid: (usize, usize, usize),
    pub split_len: usize,
    pub splits: usize,
    pub pack: Option<WeightPack>,
}

/// The weights rearranged for a kernel's B operand (conv.cu's `pack_weight`): `kernel` writes
/// `words` 32-bit words into a scratch block, which the convolution then reads as its weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightPack {
    pub kernel: &'static str,
    pub words: usize,
}

/// conv.cu's PACKED_ROWS: packed rows come in multiples of the widest B tile.
const PACKED_ROWS: usize = WIDE_COLS;

impl WeightPack {
    /// The packing of `pass` (forward or backward-data) of the 3x3 (or 2x2) convolution `g` for
    /// the tap-major kernels of precision `bf16` or TF32: the GEMM's B rows (c_out forward, c_in
    /// backward-data) padded to a multiple of 128, each taps x channels values, one TF32 or two
    /// BF16 a word.
    fn tap_major(pass: ConvPass, g: &ConvGeom, bf16: bool) -> WeightPack {
        let (rows, channels) = match pass {
            ConvPass::Forward => (g.c_out, g.c_in),
            _ => (g.c_in, g.c_out),
        };
        let kernel = PACK_KERNELS[bf16 as usize][(pass != ConvPass::Forward) as usize];
        WeightPack {
            kernel,
            words: rows.div_ceil(PACKED_ROWS) * PACKED_ROWS * g.kh * g.kw * channels / if bf16 { 2 } else { 1 },
        }
    }

    /// The packing of `pass` (forward or backward-data) of the 3x3 convolution `g` for the halo
    /// forward kernels of precision `bf16` or TF32 (conv_halo_fwd.cuh's pack_weight): per block
    /// of `cols` (32 or 64) output channels (c_out forward, c_in backward-data) and chunk of 8
    /// (TF32) or 16 (BF16) input channels, 9 taps x cols x 8 words.
    fn halo(pass: ConvPass, g: &ConvGeom, cols: usize, bf16: bool) -> WeightPack {
        let (outs, ins) = halo_forward_channels(pass, g);
        WeightPack {
            kernel: HALO_FORWARD_PACK_KERNELS[bf16 as usize][(pass != ConvPass::Forward) as usize]
                [(cols > 32) as usize],
            words: outs.div_ceil(cols) * (ins / halo_forward_chunk(bf16)) * 9 * cols * 8,
        }
    }
}

/// Kernel sizes with their own compiled specialisation; others use the generic kernels.
fn size_variant(g: &ConvGeom) -> usize {
    match (g.kh, g.kw) {
        (1, 1) => 0,
        (2, 2) => 1,
        (3, 3) => 2,
        _ => 3,
    }
}

/// Tensor-core kernels of one precision by [pass][kernel size: k1, k2, k3, kany][wide tile,
/// narrow tile], named `conv_<pass>_<precision>_<size>_<tile>` as conv.cu's LRC_CONV_MMA does.
type MmaKernels = [[[&'static str; 2]; 4]; 3];

macro_rules! mma_kernels {
    ($precision:literal) => {
        [
            mma_kernels!(@pass "fwd", $precision, "n64", "n32"),
            mma_kernels!(@pass "bwd_data", $precision, "n64", "n32"),
            mma_kernels!(@pass "bwd_weight", $precision, "m64", "m32"),
        ]
    };
    (@pass $pass:literal, $precision:literal, $wide:literal, $narrow:literal) => {
        [
            mma_kernels!(@size $pass, $precision, "k1", $wide, $narrow),
            mma_kernels!(@size $pass, $precision, "k2", $wide, $narrow),
            mma_kernels!(@size $pass, $precision, "k3", $wide, $narrow),
            mma_kernels!(@size $pass, $precision, "kany", $wide, $narrow),
        ]
    };
    (@size $pass:literal, $precision:literal, $size:literal, $wide:literal, $narrow:literal) => {
        [
            concat!("conv_", $pass, "_", $precision, "_", $size, "_", $wide),
            concat!("conv_", $pass, "_", $precision, "_", $size, "_", $narrow),
        ]
    };
}

const TF32_KERNELS: MmaKernels = mma_kernels!("tf32");
const BF16_KERNELS: MmaKernels = mma_kernels!("bf16");

/// The tap-major 3x3 kernels of conv.cu's LRC_CONV_MMA_TAP by [tf32, bf16][pass][wide tile,
/// narrow tile].
const TAP_KERNELS: [[[&str; 2]; 3]; 2] = [
    [
        ["conv_fwd_tf32_k3t_n64", "conv_fwd_tf32_k3t_n32"],
        ["conv_bwd_data_tf32_k3t_n64", "conv_bwd_data_tf32_k3t_n32"],
        ["conv_bwd_weight_tf32_k3t_m64", "conv_bwd_weight_tf32_k3t_m32"],
    ],
    [
        ["conv_fwd_bf16_k3t_n64", "conv_fwd_bf16_k3t_n32"],
        ["conv_bwd_data_bf16_k3t_n64", "conv_bwd_data_bf16_k3t_n32"],
        ["conv_bwd_weight_bf16_k3t_m64", "conv_bwd_weight_bf16_k3t_m32"],
    ],
];

/// The tap-major 2x2 kernels of conv.cu's LRC_CONV_MMA_TAP2 by [tf32, bf16][pass][wide tile,
/// narrow tile]: forward and backward-weight alone (a 2x2 stride-2 transposed convolution's
/// backward passes; its forward pass goes by tfwd k2s2), no backward-data ("").
const TAP2_KERNELS: [[[&str; 2]; 3]; 2] = [
    [
        ["conv_fwd_tf32_k2t_n64", "conv_fwd_tf32_k2t_n32"],
        ["", ""],
        ["conv_bwd_weight_tf32_k2t_m64", "conv_bwd_weight_tf32_k2t_m32"],
    ],
    [
        ["conv_fwd_bf16_k2t_n64", "conv_fwd_bf16_k2t_n32"],
        ["", ""],
        ["conv_bwd_weight_bf16_k2t_m64", "conv_bwd_weight_bf16_k2t_m32"],
    ],
];

/// Whether the tap-major kernels serve `pass` of `g`: a 3x3 pass, or a 2x2 forward or
/// backward-weight pass, whose tap-major channels fill whole runs of 32: the reduction's (c_in
/// forward, c_out backward-data: 32-deep k tiles within one tap) or, backward-weight, the
/// columns' (c_in: 32-row runs of a B tile within one tap). Backward-weight's gather also
/// offsets within an image in 32-bit integers (c_in h w below 2^31).
fn tap_major_applies(pass: ConvPass, g: &ConvGeom) -> bool {
    let channels = match pass {
        ConvPass::Forward | ConvPass::BackwardWeight => g.c_in,
        ConvPass::BackwardData => g.c_out,
    };
    let offsets_fit = pass != ConvPass::BackwardWeight || g.c_in * g.h * g.w <= i32::MAX as usize;
    let size_fits = match (g.kh, g.kw) {
        (3, 3) => true,
        (2, 2) => pass != ConvPass::BackwardData,
        _ => false,
    };
    size_fits && channels % 32 == 0 && channels > 0 && offsets_fit
}

/// The wide tap-major kernels (`tf32-mma-wide`, `bf16-mma-wide`), 128 x 128 tiles, by [tf32,
/// bf16][pass]: forward and backward-data 128 x 128 for GEMMs of `WIDE_COLS` columns or more,
/// backward-weight 64 x 128 for more than 32 output channels.
const WIDE_KERNELS: [[&str; 3]; 2] = [
    [
        "conv_fwd_tf32_k3t_n128",
        "conv_bwd_data_tf32_k3t_n128",
        "conv_bwd_weight_tf32_k3t_m64n128",
    ],
    [
        "conv_fwd_bf16_k3t_n128",
        "conv_bwd_data_bf16_k3t_n128",
        "conv_bwd_weight_bf16_k3t_m64n128",
    ],
];
/// The same for 2x2 (LRC_CONV_MMA_TAP2): forward and backward-weight alone.
const WIDE2_KERNELS: [[&str; 3]; 2] = [
    ["conv_fwd_tf32_k2t_n128", "", "conv_bwd_weight_tf32_k2t_m64n128"],
    ["conv_fwd_bf16_k2t_n128", "", "conv_bwd_weight_bf16_k2t_m64n128"],
];
const WIDE_COLS: usize = 128;

/// The halo-tile backward-weight kernels of `tf32-mma-halo` and `bf16-mma-halo` (conv_halo.cuh)
/// by [tf32, bf16][64 output channels a block, 32][k tiles of one 32-pixel row, of two 16-pixel
/// rows].
const HALO_KERNELS: [[[&str; 2]; 2]; 2] = [
    [
        ["conv_bwd_weight_tf32_k3h_m64_w32", "conv_bwd_weight_tf32_k3h_m64_w16"],
        ["conv_bwd_weight_tf32_k3h_m32_w32", "conv_bwd_weight_tf32_k3h_m32_w16"],
    ],
    [
        ["conv_bwd_weight_bf16_k3h_m64_w32", "conv_bwd_weight_bf16_k3h_m64_w16"],
        ["conv_bwd_weight_bf16_k3h_m32_w32", "conv_bwd_weight_bf16_k3h_m32_w16"],
    ],
];
/// The input channels (times 9 taps: the GEMM columns) a halo block owns.
const HALO_CHANNELS: usize = 32;

/// The halo-tile forward and backward-data kernels of `tf32-mma-halo` and `bf16-mma-halo`
/// (conv_halo_fwd.cuh) by [tf32, bf16][forward, backward-data][32 output channels a block,
/// 64][tiles of 32 columns, of 16], and their weight packings by [tf32, bf16][forward,
/// backward-data][32, 64].
type HaloForwardKernels = [[[[&'static str; 2]; 2]; 2]; 2];
macro_rules! halo_forward_kernels {
    ($($precision:literal),*) => {
        [$([
            [
                [concat!("conv_fwd_", $precision, "_k3h_n32_w32"), concat!("conv_fwd_", $precision, "_k3h_n32_w16")],
                [concat!("conv_fwd_", $precision, "_k3h_n64_w32"), concat!("conv_fwd_", $precision, "_k3h_n64_w16")],
            ],
            [
                [concat!("conv_bwd_data_", $precision, "_k3h_n32_w32"), concat!("conv_bwd_data_", $precision, "_k3h_n32_w16")],
                [concat!("conv_bwd_data_", $precision, "_k3h_n64_w32"), concat!("conv_bwd_data_", $precision, "_k3h_n64_w16")],
            ],
        ]),*]
    };
}
const HALO_FORWARD_KERNELS: HaloForwardKernels = halo_forward_kernels!("tf32", "bf16");
const HALO_FORWARD_PACK_KERNELS: [[[&str; 2]; 2]; 2] = [
    [
        ["conv_pack_fwd_halo_tf32_n32", "conv_pack_fwd_halo_tf32_n64"],
        ["conv_pack_bwd_data_halo_tf32_n32", "conv_pack_bwd_data_halo_tf32_n64"],
    ],
    [
        ["conv_pack_fwd_halo_bf16_n32", "conv_pack_fwd_halo_bf16_n64"],
        ["conv_pack_bwd_data_halo_bf16_n32", "conv_pack_bwd_data_halo_bf16_n64"],
    ],
];

/// The input channels a halo forward kernel of precision `bf16` or TF32 stages at a time: one
/// mma k step, 8 words of one TF32 or two BF16 values.
fn halo_forward_chunk(bf16: bool) -> usize {
    if bf16 { 16 } else { 8 }
}

/// The dynamic shared memory of a halo forward kernel (conv_halo_fwd.cuh's Tile::DYNAMIC_BYTES):
/// TF32 two stages of 8 halo planes and the weights, BF16 16 FP32 planes, 8 of pairs and two
/// weight stages; planes of 392 words (32 output channels a block) or 232 (64); weights 9 taps x
/// cols x 8 words. 0 where it fits the 48 KiB of static shared memory.
fn halo_forward_shared_bytes(bf16: bool, cols: usize) -> usize {
    let plane = if cols <= 32 { 392 } else { 232 };
    let weights = 9 * cols * 8;
    let words = if bf16 {
        16 * plane + 8 * plane + 2 * weights
    } else {
        2 * (8 * plane + weights)
    };
    if words * 4 > 48 * 1024 { words * 4 } else { 0 }
}

/// The output channels (32 or 64) and pixels (256 or 128, rows of 32 or 16 columns) of a halo
/// forward block for `outs` output channels.
fn halo_forward_block(outs: usize) -> (usize, usize) {
    if outs <= 32 { (32, 256) } else { (64, 128) }
}

/// The (output, input) channels of `pass` of `g` as the halo forward kernels see it: forward
/// (c_out, c_in), backward-data (c_in, c_out).
fn halo_forward_channels(pass: ConvPass, g: &ConvGeom) -> (usize, usize) {
    match pass {
        ConvPass::Forward => (g.c_out, g.c_in),
        _ => (g.c_in, g.c_out),
    }
}

/// Whether the halo forward kernels of precision `bf16` or TF32 serve `pass` (forward or
/// backward-data) of `g`: 3x3, stride 1, pad 1, input channels a multiple of 8 (TF32) or 16
/// (BF16), a width that is a multiple of 16 (rows of 32 or 16 columns, copied 16 bytes at a
/// time), offsets within an image below 2^31; any number of output channels (blocks of 32 for
/// 32 or fewer, else of 64, each staging the halo anew: the wide version keeps the 128 x 128
/// tiles there, and the two versions' timings, or `tf32-fastest`, say which wins per layer).
fn halo_forward_applies(pass: ConvPass, g: &ConvGeom, bf16: bool) -> bool {
    let (outs, ins) = halo_forward_channels(pass, g);
    pass != ConvPass::BackwardWeight
        && (g.kh, g.kw, g.stride, g.pad) == (3, 3, 1, 1)
        && outs > 0
        && ins > 0
        && ins.is_multiple_of(halo_forward_chunk(bf16))
        && g.w > 0
        && g.w.is_multiple_of(16)
        && g.h > 0
        && ins.max(outs) * g.h * g.w <= i32::MAX as usize
}

/// The grid of a halo forward kernel for `pass` of `g`: (images x row tiles x column tiles,
/// blocks of output channels); the kernel's tiles are rows of 32 columns where the width
/// allows, else of 16.
fn halo_forward_grid(pass: ConvPass, g: &ConvGeom) -> (usize, usize, usize) {
    let (outs, _) = halo_forward_channels(pass, g);
    let (channels, pixels) = halo_forward_block(outs);
    let cols = if g.w.is_multiple_of(32) { 32 } else { 16 };
    let rows = pixels / cols;
    (g.n * g.h.div_ceil(rows) * (g.w / cols), outs.div_ceil(channels), 1)
}

/// Whether the halo-tile kernels serve backward-weight of `g`: 3x3, stride 1, pad 1 (each k
/// tile's input is its pixels with a one-pixel border), c_in a multiple of 32, and k tiles of
/// 32 pixels that never straddle a row or an image: a width that is a multiple of 32, or 16
/// with an even height. Offsets within an image are 32-bit (c_in h w below 2^31).
fn halo_applies(g: &ConvGeom) -> bool {
    let rows_fit = g.w.is_multiple_of(32) || (g.w == 16 && g.h.is_multiple_of(2));
    (g.kh, g.kw, g.stride, g.pad) == (3, 3, 1, 1)
        && g.c_in.is_multiple_of(HALO_CHANNELS)
        && g.c_in > 0
        && g.w > 0
        && rows_fit
        && g.c_in * g.h * g.w <= i32::MAX as usize
}

/// The dynamic shared memory a kernel of conv.cu or conv_sm90.cu is launched with (0 for those
/// whose shared memory is static): the v3 kernels' B stages, and the wide TF32 tap-major
/// kernels' tiles, which pass the 48 KiB a block may hold statically (conv.cu's SharedLayout:
/// A 32 x (128 + 8) words, B two stages of 128 x (32 + 4) words).
pub fn launch_shared_bytes(kernel: &str) -> usize {
    if WIDE_KERNELS[0][..2].contains(&kernel) || WIDE2_KERNELS[0][0] == kernel {
        const WORDS: usize = 32 * (128 + 8) + 2 * 128 * (32 + 4);
        return WORDS * 4;
    }
    for (bf16, passes) in HALO_FORWARD_KERNELS.iter().enumerate() {
        for blocks in passes {
            for (kernels, cols) in blocks.iter().zip([32, 64]) {
                if kernels.contains(&kernel) {
                    return halo_forward_shared_bytes(bf16 == 1, cols);
                }
            }
        }
    }
    conv_sm90::shared_bytes(kernel)
}

/// For the tap-major versions and those built on them (`*-mma-tap`, `*-mma-wide`, `*-mma-halo`),
/// whether the version's operands are BF16 (else TF32); `None` for every other version.
fn tap_family_bf16(algo: ConvAlgo) -> Option<bool> {
    match algo {
        ConvAlgo::Tf32MmaTap | ConvAlgo::Tf32MmaWide | ConvAlgo::Tf32MmaHalo => Some(false),
        ConvAlgo::Bf16MmaTap | ConvAlgo::Bf16MmaWide | ConvAlgo::Bf16MmaHalo => Some(true),
        _ => None,
    }
}

/// The kernels on the FP32 cores of the tap-major versions and those built on them
/// (conv_direct.cuh) by [tf32, bf16][forward, backward-data][1x1 with 16 outputs or fewer,
/// 1x1 with 32, 3x3 with 4, 3x3 with 32].
const DIRECT_KERNELS: [[[&str; 4]; 2]; 2] = [
    [
        [
            "conv_fwd_tf32_k1d_o16",
            "conv_fwd_tf32_k1d_o32",
            "conv_fwd_tf32_k3d_o4",
            "conv_fwd_tf32_k3d_o32",
        ],
        [
            "conv_bwd_data_tf32_k1d_o16",
            "conv_bwd_data_tf32_k1d_o32",
            "conv_bwd_data_tf32_k3d_o4",
            "conv_bwd_data_tf32_k3d_o32",
        ],
    ],
    [
        [
            "conv_fwd_bf16_k1d_o16",
            "conv_fwd_bf16_k1d_o32",
            "conv_fwd_bf16_k3d_o4",
            "conv_fwd_bf16_k3d_o32",
        ],
        [
            "conv_bwd_data_bf16_k1d_o16",
            "conv_bwd_data_bf16_k1d_o32",
            "conv_bwd_data_bf16_k3d_o4",
            "conv_bwd_data_bf16_k3d_o32",
        ],
    ],
];
/// The most outputs a pass on the FP32 cores takes, and the most inputs (1x1) or inputs times
/// outputs (3x3): within them a pixel's multiply-adds per byte moved stay below what the memory
/// feeds.
const DIRECT_OUTS: usize = 32;
const DIRECT_INS_1X1: usize = 128;
const DIRECT_CHANNELS_3X3: usize = 64;

/// The FP32-core kernel of `algo` for `pass` (forward or backward-data) of `g`, if one serves
/// it: the tap-major, wide and halo versions; 32 outputs or fewer (c_out forward, c_in
/// backward-data); 1x1, stride 1, pad 0 with 128 inputs or fewer (the segmentation head, 32 or
/// 64 channels -> 14 classes, both ways), or 3x3, stride 1, pad 1 with inputs times outputs 64
/// or fewer (the first layer, one channel -> 32, both ways); fewer than 2^31 pixels. There the
/// tensor-core tiles spend most of their work on padding.
fn direct_kernel(algo: ConvAlgo, pass: ConvPass, g: &ConvGeom) -> Option<&'static str> {
    let bf16 = tap_family_bf16(algo)?;
    let (outs, ins) = match pass {
        ConvPass::Forward => (g.c_out, g.c_in),
        ConvPass::BackwardData => (g.c_in, g.c_out),
        ConvPass::BackwardWeight => return None,
    };
    if !(1..=DIRECT_OUTS).contains(&outs) || ins == 0 || g.n * g.h * g.w > i32::MAX as usize {
        return None;
    }
    let variant = match (g.kh, g.kw, g.stride, g.pad) {
        (1, 1, 1, 0) if ins <= DIRECT_INS_1X1 => (outs > 16) as usize,
        (3, 3, 1, 1) if ins * outs <= DIRECT_CHANNELS_3X3 => 2 + (outs > 4) as usize,
        _ => return None,
    };
    Some(DIRECT_KERNELS[bf16 as usize][(pass == ConvPass::BackwardData) as usize][variant])
}

/// The weight packings of the tap-major kernels by [tf32, bf16][forward, backward-data].
const PACK_KERNELS: [[&str; 2]; 2] = [
    ["conv_pack_fwd_tf32", "conv_pack_bwd_data_tf32"],
    ["conv_pack_fwd_bf16", "conv_pack_bwd_data_bf16"],
];

const FP32_KERNELS: [&str; 3] = ["conv_fwd_fp32", "conv_bwd_data_fp32", "conv_bwd_weight_fp32"];

/// The transposed convolution's forward pass by tap (conv.cu's tfwd): FP32 tiles, and the
/// tensor-core kernels [tf32, bf16][wide tile, narrow tile].
const TFWD_FP32_KERNEL: &str = "conv_tfwd_fp32";
const TFWD_MMA_KERNELS: [[&str; 2]; 2] = [
    ["conv_tfwd_tf32_n64", "conv_tfwd_tf32_n32"],
    ["conv_tfwd_bf16_n64", "conv_tfwd_bf16_n32"],
];
/// The 2x2 stride-2 transposed forward pass over all four taps (conv.cu's tfwd k2s2), by [tf32,
/// bf16][wide tile, narrow tile]: the tap-major, wide and halo versions'.
const TFWD_2X2_KERNELS: [[&str; 2]; 2] = [
    ["conv_tfwd_tf32_k2s2_n64", "conv_tfwd_tf32_k2s2_n32"],
    ["conv_tfwd_bf16_k2s2_n64", "conv_tfwd_bf16_k2s2_n32"],
];

/// Every kernel of `kernels/conv.cu` this module may launch.
pub fn kernel_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = FP32_KERNELS.to_vec();
    for table in [&TF32_KERNELS, &BF16_KERNELS] {
        names.extend(table.iter().flatten().flatten().copied());
    }
    names.extend(TAP_KERNELS.iter().flatten().flatten().copied());
    names.extend(
        TAP2_KERNELS
            .iter()
            .flatten()
            .flatten()
            .copied()
            .filter(|k| !k.is_empty()),
    );
    names.extend(PACK_KERNELS.iter().flatten().copied());
    names.extend(WIDE_KERNELS.iter().flatten().copied());
    names.extend(WIDE2_KERNELS.iter().flatten().copied().filter(|k| !k.is_empty()));
    names.extend(HALO_KERNELS.iter().flatten().flatten().copied());
    names.extend(HALO_FORWARD_KERNELS.iter().flatten().flatten().flatten().copied());
    names.extend(HALO_FORWARD_PACK_KERNELS.iter().flatten().flatten().copied());
    names.push(TFWD_FP32_KERNEL);
    names.extend(TFWD_MMA_KERNELS.iter().flatten().copied());
    names.extend(TFWD_2X2_KERNELS.iter().flatten().copied());
    names.extend(DIRECT_KERNELS.iter().flatten().flatten().copied());
    names.extend(["split_reduce", "plane_sum"]);
    names
}

/// Tile shape (rows, columns, depth) of a pass's kernels, which must match conv.cu, and the
/// packing of their weights if they read them packed.
struct Tiling {
    kernel: &'static str,
    rows: usize,
    cols: usize,
    depth: usize,
    pack: Option<WeightPack>,
}

/// The kernel for a pass whose GEMM has `cols` columns (forward, backward-data) or `rows` rows
/// (backward-weight); the narrow tensor-core tiles serve 32 or fewer. Both tensor-core precisions
/// share their tiles (conv.cu's v2).
fn tiling(algo: ConvAlgo, pass: ConvPass, g: &ConvGeom, narrow_dim: usize) -> Tiling {
    let table = match algo {
        // The entry points choose before planning (conv_tune); a plan made without choosing
        // takes the choice's plain mma.sync version.
        ConvAlgo::Tf32Fastest => &TF32_KERNELS,
        ConvAlgo::Bf16Fastest => &BF16_KERNELS,
        ConvAlgo::Fp32Tiled => {
            return Tiling {
                kernel: FP32_KERNELS[pass as usize],
                rows: 64,
                cols: 64,
                depth: 16,
                pack: None,
            };
        }
        ConvAlgo::Tf32Mma => &TF32_KERNELS,
        ConvAlgo::Bf16Mma => &BF16_KERNELS,
        ConvAlgo::Tf32MmaHalo | ConvAlgo::Bf16MmaHalo
            if halo_forward_applies(pass, g, algo == ConvAlgo::Bf16MmaHalo) =>
        {
            let bf16 = algo == ConvAlgo::Bf16MmaHalo;
            let (cols, rows) = halo_forward_block(narrow_dim);
            return Tiling {
                kernel: HALO_FORWARD_KERNELS[bf16 as usize][(pass != ConvPass::Forward) as usize][(cols > 32) as usize]
                    [!g.w.is_multiple_of(32) as usize],
                rows,
                cols,
                depth: halo_forward_chunk(bf16),
                pack: Some(WeightPack::halo(pass, g, cols, bf16)),
            };
        }
        ConvAlgo::Tf32MmaHalo | ConvAlgo::Bf16MmaHalo if pass == ConvPass::BackwardWeight && halo_applies(g) => {
            let narrow = narrow_dim <= 32;
            let bf16 = algo == ConvAlgo::Bf16MmaHalo;
            let kernel = HALO_KERNELS[bf16 as usize][narrow as usize][!g.w.is_multiple_of(32) as usize];
            return Tiling {
                kernel,
                rows: if narrow { 32 } else { 64 },
                cols: 9 * HALO_CHANNELS,
                depth: 32,
                pack: None,
            };
        }
        ConvAlgo::Tf32MmaTap
        | ConvAlgo::Bf16MmaTap
        | ConvAlgo::Tf32MmaWide
        | ConvAlgo::Bf16MmaWide
        | ConvAlgo::Tf32MmaHalo
        | ConvAlgo::Bf16MmaHalo => {
            let bf16 = tap_family_bf16(algo) == Some(true);
            let wide = !matches!(algo, ConvAlgo::Tf32MmaTap | ConvAlgo::Bf16MmaTap);
            // The wide tiles where they are filled: 128 columns forward and backward-data, more
            // than 32 output channels (the rows) backward-weight, whose columns are taps x c_in
            // >= 128.
            let fills_wide = match pass {
                ConvPass::BackwardWeight => narrow_dim > 32,
                _ => narrow_dim >= WIDE_COLS,
            };
            if tap_major_applies(pass, g) {
                let backward_weight = pass == ConvPass::BackwardWeight;
                let (taps, wides) = if g.kh == 2 {
                    (&TAP2_KERNELS, &WIDE2_KERNELS)
                } else {
                    (&TAP_KERNELS, &WIDE_KERNELS)
                };
                let (kernel, rows, cols) = if wide && fills_wide {
                    let rows = if backward_weight { 64 } else { 128 };
                    (wides[bf16 as usize][pass as usize], rows, WIDE_COLS)
                } else {
                    let narrow = narrow_dim <= 32;
                    let (rows, cols) = mma_tile(pass, narrow);
                    (taps[bf16 as usize][pass as usize][narrow as usize], rows, cols)
                };
                return Tiling {
                    kernel,
                    rows,
                    cols,
                    depth: 32,
                    pack: (!backward_weight).then(|| WeightPack::tap_major(pass, g, bf16)),
                };
            }
            if bf16 { &BF16_KERNELS } else { &TF32_KERNELS }
        }
        ConvAlgo::Tf32Wgmma | ConvAlgo::Bf16Wgmma => {
            let narrow = narrow_dim <= conv_sm90::TILE_COLS_NARROW;
            let (rows, cols) = conv_sm90::tile(pass, narrow);
            return Tiling {
                kernel: conv_sm90::kernel(algo, pass, size_variant(g), narrow).expect("a wgmma algorithm"),
                rows,
                cols,
                depth: conv_sm90::TILE_DEPTH,
                pack: None,
            };
        }
    };
    let narrow = narrow_dim <= 32;
    let (rows, cols) = mma_tile(pass, narrow);
    Tiling {
        kernel: table[pass as usize][size_variant(g)][narrow as usize],
        rows,
        cols,
        depth: 32,
        pack: None,
    }
}

/// The block tile (rows, columns) of v2's kernels (conv.cu's PixelTile and WeightTile).
fn mma_tile(pass: ConvPass, narrow: bool) -> (usize, usize) {
    match (pass, narrow) {
        (ConvPass::BackwardWeight, false) => (64, 64),
        (ConvPass::BackwardWeight, true) => (32, 128),
        (_, false) => (128, 64),
        (_, true) => (128, 32),
    }
}

/// Splits of a reduction of length `r` over `tiles` output tiles: about four blocks per
/// multiprocessor in all, each split a multiple of the tile depth and at least `MIN_SPLIT`
/// long so that partial sums stay a small part of the traffic. Returns (split length, splits).
pub(crate) fn split_plan(tiles: usize, r: usize, depth: usize, multiprocessors: usize) -> (usize, usize) {
    const MIN_SPLIT: usize = 512;
    const MAX_SPLITS: usize = 4096;
    let wanted = (4 * multiprocessors).div_ceil(tiles.max(1));
    let most = r.div_ceil(MIN_SPLIT).clamp(1, MAX_SPLITS);
    let splits = wanted.clamp(1, most);
    let split_len = r.div_ceil(splits).div_ceil(depth).max(1) * depth;
    (split_len, r.div_ceil(split_len).max(1))
}

/// Splits of the depth `depth` of a forward or backward-data pass whose `tiles` output tiles
/// would fill half or fewer of the GPU's block slots (two blocks per multiprocessor, as the
/// kernels are built for): as many as fit the slots with every tile's splits, each at least
/// `MIN_SPLIT_DEPTH` deep (the pipeline's prologue and the partial outputs stay small beside
/// it) and a multiple of the tile depth. The deep U-Net levels need it: 16 x 16 planes at batch
/// 16 are 32 tiles of 128 pixels, so 512 channels in 128-wide tiles make 128 blocks for 264
/// slots on an H100. Returns (split length, splits); (0, 1) where it does not split.
pub(crate) fn fill_plan(tiles: usize, depth: usize, tile_depth: usize, multiprocessors: usize) -> (usize, usize) {
    const BLOCKS_PER_MULTIPROCESSOR: usize = 2;
    const MIN_SPLIT_DEPTH: usize = 256;
    let slots = BLOCKS_PER_MULTIPROCESSOR * multiprocessors;
    let splits = (slots / tiles.max(1)).min(depth / MIN_SPLIT_DEPTH);
    if splits <= 1 {
        return (0, 1);
    }
    let split_len = depth.div_ceil(splits).div_ceil(tile_depth) * tile_depth;
    (split_len, depth.div_ceil(split_len))
}

/// Whether a forward or backward-data kernel sums a split of its depth when the launch says so
/// (conv.cu's `split_slice`: every v2 kernel, tap-major and wide ones included; not v1's, nor
/// the wgmma ones).
fn splits_its_depth(kernel: &str) -> bool {
    !FP32_KERNELS.contains(&kernel) && !conv_sm90::is_kernel(kernel) && !is_halo_forward(kernel)
}

/// Whether `kernel` is a halo forward or backward-data kernel (conv_halo_fwd.cuh).
fn is_halo_forward(kernel: &str) -> bool {
    HALO_FORWARD_KERNELS
        .iter()
        .flatten()
        .flatten()
        .flatten()
        .any(|&k| k == kernel)
}

/// The launch of `pass` of the transposed convolution `g`: the launch of the convolution it
/// transposes for the pass that computes the same thing (forward and backward-data swap), except
/// for a forward pass whose kernel tiles the output, which runs one GEMM per tap
/// (`tap_forward_plan`). Every plan takes the `ConvParams` of the convolution it transposes.
pub fn transposed_plan(pass: ConvPass, g: &ConvTransposeGeom, algo: ConvAlgo, multiprocessors: usize) -> ConvLaunch {
    if pass == ConvPass::Forward && g.taps_tile_the_output() {
        return tap_forward_plan(g, algo);
    }
    let conv_pass = match pass {
        ConvPass::Forward => ConvPass::BackwardData,
        ConvPass::BackwardData => ConvPass::Forward,
        ConvPass::BackwardWeight => ConvPass::BackwardWeight,
    };
    plan(conv_pass, &g.as_conv(), algo, multiprocessors)
}

/// The forward pass of a transposed convolution whose kernel tiles the output: grid (pixel
/// tiles of the input, c_out tiles, taps), the tiles of the convolution kernels of `algo`
/// (forward and backward-data's: 64 x 64 FP32; 128 pixels x 64, or x 32 for 32 channels or
/// fewer, on the tensor cores). Each output pixel meets one tap, so the GEMM depth is c_in, not
/// backward-data's c_in x taps, of whose columns only one in taps finds its pixel. The
/// tap-major, wide and halo versions run 2x2 stride 2 as one GEMM over the four taps instead
/// (`all_taps_forward_plan`).
fn tap_forward_plan(g: &ConvTransposeGeom, algo: ConvAlgo) -> ConvLaunch {
    if (g.kh, g.kw) == (2, 2)
        && let Some(bf16) = tap_family_bf16(algo)
    {
        return all_taps_forward_plan(g, bf16);
    }
    let narrow = g.c_out <= 32;
    let (kernel, rows, cols) = match algo {
        ConvAlgo::Fp32Tiled => (TFWD_FP32_KERNEL, 64, 64),
        // v3 has no per-tap pass: the wgmma versions run v2's at their precision (a quarter of
        // the tensor-core work of v3's backward-data pass, which this one replaces).
        ConvAlgo::Tf32Mma
        | ConvAlgo::Tf32Wgmma
        | ConvAlgo::Tf32MmaTap
        | ConvAlgo::Tf32MmaWide
        | ConvAlgo::Tf32MmaHalo
        | ConvAlgo::Tf32Fastest => (TFWD_MMA_KERNELS[0][narrow as usize], 128, if narrow { 32 } else { 64 }),
        ConvAlgo::Bf16Mma
        | ConvAlgo::Bf16Wgmma
        | ConvAlgo::Bf16MmaTap
        | ConvAlgo::Bf16MmaWide
        | ConvAlgo::Bf16MmaHalo
        | ConvAlgo::Bf16Fastest => (TFWD_MMA_KERNELS[1][narrow as usize], 128, if narrow { 32 } else { 64 }),
    };
    let pixels = g.n * g.h * g.w;
    ConvLaunch {
        kernel,
        grid: (pixels.div_ceil(rows), g.c_out.div_ceil(cols), g.kh * g.kw),
        split_len: 0,
        splits: 1,
        pack: None,
    }
}

/// The forward pass of the 2x2 stride-2 transposed convolution `g` as one GEMM over its four
/// taps (conv.cu's tfwd k2s2) at precision `bf16` or TF32: columns (c_out, tap),
/// 128 input pixels x 64 columns a block (x 32 for 8 output channels or fewer), grid (pixel
/// tiles, column tiles, 1). A block reads its pixels once for all four taps and stores each
/// output row's neighbours (tx = 0, 1) as one pair.
fn all_taps_forward_plan(g: &ConvTransposeGeom, bf16: bool) -> ConvLaunch {
    let cols = 4 * g.c_out;
    let narrow = cols <= 32;
    let tile = if narrow { 32 } else { 64 };
    ConvLaunch {
        kernel: TFWD_2X2_KERNELS[bf16 as usize][narrow as usize],
        grid: ((g.n * g.h * g.w).div_ceil(128), cols.div_ceil(tile), 1),
        split_len: 0,
        splits: 1,
        pack: None,
    }
}

/// The launch of `pass` of the convolution `g` with `algo` on a GPU with `multiprocessors`.
pub fn plan(pass: ConvPass, g: &ConvGeom, algo: ConvAlgo, multiprocessors: usize) -> ConvLaunch {
    if let Some(kernel) = direct_kernel(algo, pass, g) {
        // One thread a pixel.
        return ConvLaunch {
            kernel,
            grid: ((g.n * g.h * g.w).div_ceil(THREADS as usize), 1, 1),
            split_len: 0,
            splits: 1,
            pack: None,
        };
    }
    match pass {
        ConvPass::Forward | ConvPass::BackwardData => {
            let (rows, cols, depth) = match pass {
                ConvPass::Forward => (g.n * g.h_out() * g.w_out(), g.c_out, g.c_in * g.kh * g.kw),
                _ => (g.n * g.h * g.w, g.c_in, g.c_out * g.kh * g.kw),
            };
            let t = tiling(algo, pass, g, cols);
            if is_halo_forward(t.kernel) {
                // Blocks of whole rows of one image, never split (their depth is c_in / 8
                // chunks of 9 taps, and the U-Net layers they serve have thousands of blocks).
                return ConvLaunch {
                    kernel: t.kernel,
                    grid: halo_forward_grid(pass, g),
                    split_len: 0,
                    splits: 1,
                    pack: t.pack,
                };
            }
            let tiles = (rows.div_ceil(t.rows), cols.div_ceil(t.cols));
            let (split_len, splits) = if splits_its_depth(t.kernel) {
                fill_plan(tiles.0 * tiles.1, depth, t.depth, multiprocessors)
            } else {
                (0, 1)
            };
            ConvLaunch {
                kernel: t.kernel,
                grid: (tiles.0, tiles.1, splits),
                split_len,
                splits,
                pack: t.pack,
            }
        }
        ConvPass::BackwardWeight => {
            let t = tiling(algo, pass, g, g.c_out);
            let (m, n) = (g.c_out, g.c_in * g.kh * g.kw);
            let r = g.n * g.h_out() * g.w_out();
            let tiles = m.div_ceil(t.rows) * n.div_ceil(t.cols);
            let (split_len, splits) = split_plan(tiles, r, t.depth, multiprocessors);
            ConvLaunch {
                kernel: t.kernel,
                grid: (n.div_ceil(t.cols), m.div_ceil(t.rows), splits),
                split_len,
                splits,
                pack: None,
            }
        }
    }
}

/// What a convolution choice remembers its version by, for `pass` of `g`.
fn conv_key(pass: ConvPass, g: &ConvGeom, algo: ConvAlgo) -> TuneKey {
    TuneKey {
        pass,
        transposed: false,
        geometry: [g.n, g.c_in, g.h, g.w, g.c_out, g.kh, g.kw, g.stride, g.pad],
        choice: algo,
    }
}

/// The same for `pass` of the transposed convolution `g`.
fn transposed_key(pass: ConvPass, g: &ConvTransposeGeom, algo: ConvAlgo) -> TuneKey {
    TuneKey {
        pass,
        transposed: true,
        geometry: [g.n, g.c_in, g.h, g.w, g.c_out, g.kh, g.kw, g.stride, g.pad],
        choice: algo,
    }
}

fn conv_params(op: &'static str, g: &ConvGeom) -> Result<ConvParams> {
    // The kernels index GEMM rows and columns with 32-bit integers.
    dim(op, "batch x output pixels", g.n * g.h_out() * g.w_out())?;
    dim(op, "batch x input pixels", g.n * g.h * g.w)?;
    dim(op, "c_in x kh x kw", g.c_in * g.kh * g.kw)?;
    dim(op, "c_out x kh x kw", g.c_out * g.kh * g.kw)?;
    Ok(ConvParams {
        n: dim(op, "n", g.n)?,
        c_in: dim(op, "c_in", g.c_in)?,
        h: dim(op, "h", g.h)?,
        w: dim(op, "w", g.w)?,
        c_out: dim(op, "c_out", g.c_out)?,
        kh: dim(op, "kh", g.kh)?,
        kw: dim(op, "kw", g.kw)?,
        stride: dim(op, "stride", g.stride)?,
        pad: dim(op, "pad", g.pad)?,
        h_out: dim(op, "h_out", g.h_out())?,
        w_out: dim(op, "w_out", g.w_out())?,
        ..ConvParams::default()
    })
}

/// Runs a forward or backward-data launch whose output holds `out_len` values, through split
/// partial outputs when the plan splits the depth; `p` must hold live blocks sized by the
/// geometry the plan was made for (callers check the storages against it).
fn run_single(device: &Arc<CudaDevice>, plan: ConvLaunch, p: &ConvParams, out_len: usize) -> Result<()> {
    if plan.splits > 1 {
        const OP: &str = "conv2d";
        let partial = CudaStorage::alloc(device, plan.splits * out_len)?;
        let split = ConvParams {
            out: partial.device_ptr(),
            split_len: dim(OP, "split length", plan.split_len)?,
            splits: dim(OP, "splits", plan.splits)?,
            ..*p
        };
        run_tiles(device, plan, &split)?;
        let reduce = SplitReduceParams {
            partial: partial.device_ptr(),
            out: p.out,
            partial_bias: 0,
            out_bias: 0,
            len: dim(OP, "output", out_len)?,
            bias_len: 0,
            splits: split.splits,
            reserved: 0,
        };
        let launch = Launch {
            grid: (blocks_for(out_len, THREADS as usize), 1, 1),
            block: THREADS,
        };
        // SAFETY: the partial block holds `splits` slices of out_len values, which the launch
        // above wrote whole (every split writes its tiles' every in-range element); p.out holds
        // out_len. The block returns to the cache after this call, which is safe because later
        // users queue behind these kernels on the same stream.
        return unsafe { device.launch(MODULE, "split_reduce", launch, &reduce) };
    }
    run_tiles(device, plan, p)
}

/// The launches of run_single that write the output tiles (the packing of the weights first
/// where the kernel reads them packed), into `p.out` or, with `p.splits` > 1, its partial slices
/// (the plan's grid carries the splits).
fn run_tiles(device: &Arc<CudaDevice>, plan: ConvLaunch, p: &ConvParams) -> Result<()> {
    // The halo forward kernels copy rows of 4 input values as 16 bytes: whole device blocks,
    // which every storage is, start 256-byte aligned.
    if is_halo_forward(plan.kernel) {
        let input = if plan.kernel.starts_with("conv_fwd") { p.x } else { p.dy };
        if !input.is_multiple_of(16) {
            return Err(Error::shape(
                "conv2d",
                format!("{} needs its input 16-byte aligned (got {input:#x})", plan.kernel),
            ));
        }
    }
    if let Some(pack) = plan.pack {
        // The packed weights live in a scratch block for this call; it returns to the cache
        // after it, which is safe because later users queue behind these kernels on the stream.
        let packed = CudaStorage::alloc(device, pack.words)?;
        let packing = ConvParams {
            out: packed.device_ptr(),
            ..*p
        };
        let conv = ConvParams {
            weight: packed.device_ptr(),
            ..*p
        };
        let calls = [
            KernelCall::new(
                MODULE,
                pack.kernel,
                (blocks_for(pack.words, THREADS as usize), 1, 1),
                THREADS,
                &packing,
            ),
            KernelCall::new(MODULE, plan.kernel, plan.grid, THREADS, &conv)
                .with_shared(launch_shared_bytes(plan.kernel)),
        ];
        // SAFETY: as documented above; `packed` holds the pack's words, which the kernel reads
        // as its weights (rows of the plan's tile widths, padded to whole tiles).
        return unsafe { device.run(&calls) };
    }
    if conv_sm90::is_kernel(plan.kernel) {
        // SAFETY: as documented above.
        return unsafe { run_sm90(device, plan.kernel, plan.grid, p) };
    }
    let launch = Launch {
        grid: plan.grid,
        block: THREADS,
    };
    // SAFETY: as documented above.
    unsafe { device.launch(MODULE, plan.kernel, launch, p) }
}

/// Runs a v3 kernel, which lives in its own module and stages its B operand in dynamic shared
/// memory.
///
/// # Safety
/// As for [`CudaDevice::launch`]: `p` holds live blocks large enough for `kernel` under `grid`.
unsafe fn run_sm90(
    device: &CudaDevice,
    kernel: &'static str,
    grid: (usize, usize, usize),
    p: &ConvParams,
) -> Result<()> {
    let call =
        KernelCall::new(conv_sm90::MODULE, kernel, grid, THREADS, p).with_shared(conv_sm90::shared_bytes(kernel));
    // SAFETY: upheld by the caller.
    unsafe { device.run(&[call]) }
}

/// dw (and db when `p.out_bias` is set) of the convolution with `p`'s geometry into `p.out` /
/// `p.out_bias`, through split partial sums when the plan splits the reduction.
fn run_backward_weight(device: &Arc<CudaDevice>, plan: ConvLaunch, p: &ConvParams) -> Result<()> {
    let (m, n) = (p.c_out as usize, (p.c_in * p.kh * p.kw) as usize);
    let (kernel, splits) = (plan.kernel, plan.splits);
    let launch = Launch {
        grid: plan.grid,
        block: THREADS,
    };
    // The halo kernels copy rows of 4 values as 16 bytes: whole device blocks, which every
    // storage is, start 256-byte aligned.
    if HALO_KERNELS.iter().flatten().flatten().any(|&k| k == kernel) && !(p.x | p.dy).is_multiple_of(16) {
        return Err(Error::shape(
            "conv2d backward",
            format!("{kernel} needs x and dy 16-byte aligned (got {:#x}, {:#x})", p.x, p.dy),
        ));
    }
    let mut q = *p;
    q.split_len = dim("conv2d backward", "split length", plan.split_len)?;
    q.splits = dim("conv2d backward", "splits", splits)?;
    let sm90 = conv_sm90::is_kernel(kernel);
    if splits == 1 {
        // The only partial sum is the result.
        // SAFETY: as in run_single; out holds m*n values and out_bias m.
        return unsafe {
            if sm90 {
                run_sm90(device, kernel, plan.grid, &q)
            } else {
                device.launch(MODULE, kernel, launch, &q)
            }
        };
    }
    let partial = CudaStorage::alloc(device, splits * m * n)?;
    let partial_bias = CudaStorage::alloc(device, if p.out_bias != 0 { splits * m } else { 0 })?;
    q.out = partial.device_ptr();
    q.out_bias = if p.out_bias != 0 { partial_bias.device_ptr() } else { 0 };
    // SAFETY: as in run_single; the partial blocks hold splits*m*n and splits*m values.
    unsafe {
        if sm90 {
            run_sm90(device, kernel, plan.grid, &q)
        } else {
            device.launch(MODULE, kernel, launch, &q)
        }
    }?;
    let reduce = SplitReduceParams {
        partial: partial.device_ptr(),
        out: p.out,
        partial_bias: q.out_bias,
        out_bias: p.out_bias,
        len: dim("conv2d backward", "weight size", m * n)?,
        bias_len: if p.out_bias != 0 { q.c_out } else { 0 },
        splits: q.splits,
        reserved: 0,
    };
    let launch = Launch {
        grid: ((m * n).max(m).div_ceil(THREADS as usize), 1, 1),
        block: THREADS,
    };
    // SAFETY: the partial blocks hold `splits` rows of len and bias_len values; the outputs
    // hold len and bias_len. The partial blocks return to the cache after this call, which
    // is safe because later users queue behind this kernel on the same stream.
    unsafe { device.launch(MODULE, "split_reduce", launch, &reduce) }
}

/// The launches that write the per-channel sums of an `n x c x plane` tensor at `x` into `out`
/// (c values), through `per_image` (n*c values): one block per plane, then a fixed-order sum over
/// the images.
pub fn channel_sum_calls(
    n: usize,
    c: usize,
    plane: usize,
    x: u64,
    per_image: u64,
    out: u64,
) -> Result<Vec<KernelCall>> {
    const OP: &str = "channel sum";
    if n == 0 || c == 0 {
        return Ok(Vec::new());
    }
    let sums = PlaneSumParams {
        x,
        out: per_image,
        planes: dim(OP, "planes", n * c)?,
        plane_len: dim(OP, "plane length", plane)?,
    };
    let reduce = SplitReduceParams {
        partial: per_image,
        out,
        partial_bias: 0,
        out_bias: 0,
        len: dim(OP, "channels", c)?,
        bias_len: 0,
        splits: dim(OP, "batch", n)?,
        reserved: 0,
    };
    Ok(vec![
        KernelCall::new(MODULE, "plane_sum", (n * c, 1, 1), THREADS, &sums),
        KernelCall::new(
            MODULE,
            "split_reduce",
            (blocks_for(c, THREADS as usize), 1, 1),
            THREADS,
            &reduce,
        ),
    ])
}

/// Per-channel sums of an `n x c x plane` tensor into `out` (c values).
fn channel_sums(device: &Arc<CudaDevice>, x: &CudaStorage, n: usize, c: usize, plane: usize, out: u64) -> Result<()> {
    let per_image = CudaStorage::alloc(device, n * c)?;
    let calls = channel_sum_calls(n, c, plane, x.device_ptr(), per_image.device_ptr(), out)?;
    // SAFETY: x holds n*c planes of `plane` values, per_image n*c values, out c values; the
    // scratch block returns to the cache after this call, which is safe because later users
    // queue behind these kernels on the same stream.
    unsafe { device.run(&calls) }
}

/// `y = conv2d(x, w) + b`: x `n x c_in x h x w`, w `c_out x c_in x kh x kw`, b `c_out`.
pub fn conv2d_forward(
    g: &ConvGeom,
    x: &CudaStorage,
    w: &CudaStorage,
    b: Option<&CudaStorage>,
    algo: ConvAlgo,
) -> Result<CudaStorage> {
    const OP: &str = "conv2d";
    check_len(OP, "input", x, g.n * g.c_in * g.h * g.w)?;
    check_len(OP, "weight", w, g.c_out * g.c_in * g.kh * g.kw)?;
    let mut operands = vec![x, w];
    if let Some(b) = b {
        check_len(OP, "bias", b, g.c_out)?;
        operands.push(b);
    }
    let device = common_device(OP, &operands)?;
    algo.check_device(&device)?;
    let out = CudaStorage::alloc(&device, g.n * g.c_out * g.h_out() * g.w_out())?;
    if out.is_empty() {
        return Ok(out);
    }
    let p = ConvParams {
        x: x.device_ptr(),
        weight: w.device_ptr(),
        bias: b.map_or(0, CudaStorage::device_ptr),
        out: out.device_ptr(),
        ..conv_params(OP, g)?
    };
    // With no input channels the GEMM depth is zero and the kernels write the bias alone.
    let sms = device.multiprocessors();
    conv_tune::run_pass(
        &device,
        algo,
        conv_key(ConvPass::Forward, g, algo),
        |a| plan(ConvPass::Forward, g, a, sms),
        |launch| run_single(&device, launch, &p, out.len()),
    )?;
    Ok(out)
}

/// dL/dx of [`conv2d_forward`] from dL/dy (`n x c_out x h_out x w_out`).
pub fn conv2d_backward_data(g: &ConvGeom, dy: &CudaStorage, w: &CudaStorage, algo: ConvAlgo) -> Result<CudaStorage> {
    const OP: &str = "conv2d backward";
    check_len(OP, "output gradient", dy, g.n * g.c_out * g.h_out() * g.w_out())?;
    check_len(OP, "weight", w, g.c_out * g.c_in * g.kh * g.kw)?;
    let device = common_device(OP, &[dy, w])?;
    algo.check_device(&device)?;
    let out = CudaStorage::alloc(&device, g.n * g.c_in * g.h * g.w)?;
    if out.is_empty() {
        return Ok(out);
    }
    let p = ConvParams {
        dy: dy.device_ptr(),
        weight: w.device_ptr(),
        out: out.device_ptr(),
        ..conv_params(OP, g)?
    };
    let sms = device.multiprocessors();
    conv_tune::run_pass(
        &device,
        algo,
        conv_key(ConvPass::BackwardData, g, algo),
        |a| plan(ConvPass::BackwardData, g, a, sms),
        |launch| run_single(&device, launch, &p, out.len()),
    )?;
    Ok(out)
}

/// dL/dw (`c_out x c_in x kh x kw`) and dL/db (`c_out`) of [`conv2d_forward`].
pub fn conv2d_backward_weight(
    g: &ConvGeom,
    x: &CudaStorage,
    dy: &CudaStorage,
    algo: ConvAlgo,
) -> Result<(CudaStorage, CudaStorage)> {
    const OP: &str = "conv2d backward";
    check_len(OP, "input", x, g.n * g.c_in * g.h * g.w)?;
    check_len(OP, "output gradient", dy, g.n * g.c_out * g.h_out() * g.w_out())?;
    let device = common_device(OP, &[x, dy])?;
    algo.check_device(&device)?;
    let (weight_len, reduction) = (g.c_out * g.c_in * g.kh * g.kw, g.n * g.h_out() * g.w_out());
    if weight_len == 0 || reduction == 0 {
        return Ok((
            CudaStorage::zeros(&device, weight_len)?,
            CudaStorage::zeros(&device, g.c_out)?,
        ));
    }
    let dw = CudaStorage::alloc(&device, weight_len)?;
    let db = CudaStorage::alloc(&device, g.c_out)?;
    let p = ConvParams {
        x: x.device_ptr(),
        dy: dy.device_ptr(),
        out: dw.device_ptr(),
        out_bias: db.device_ptr(),
        ..conv_params(OP, g)?
    };
    let sms = device.multiprocessors();
    conv_tune::run_pass(
        &device,
        algo,
        conv_key(ConvPass::BackwardWeight, g, algo),
        |a| plan(ConvPass::BackwardWeight, g, a, sms),
        |launch| run_backward_weight(&device, launch, &p),
    )?;
    Ok((dw, db))
}

/// `y = conv_transpose2d(x, w) + b`: x `n x c_in x h x w`, w `c_in x c_out x kh x kw`, b `c_out`.
pub fn conv_transpose2d_forward(
    g: &ConvTransposeGeom,
    x: &CudaStorage,
    w: &CudaStorage,
    b: Option<&CudaStorage>,
    algo: ConvAlgo,
) -> Result<CudaStorage> {
    const OP: &str = "conv_transpose2d";
    g.validate()?;
    check_len(OP, "input", x, g.n * g.c_in * g.h * g.w)?;
    check_len(OP, "weight", w, g.c_in * g.c_out * g.kh * g.kw)?;
    let mut operands = vec![x, w];
    if let Some(b) = b {
        check_len(OP, "bias", b, g.c_out)?;
        operands.push(b);
    }
    let device = common_device(OP, &operands)?;
    algo.check_device(&device)?;
    let conv = g.as_conv();
    if g.taps_tile_the_output() {
        // The per-tap kernels offset into one image of x and into the weights in 32 bits.
        dim(OP, "c_in x h x w", g.c_in * g.h * g.w)?;
        dim(OP, "weight size", g.c_in * g.c_out * g.kh * g.kw)?;
    }
    let out = CudaStorage::alloc(&device, g.n * g.c_out * g.h_out() * g.w_out())?;
    if out.is_empty() {
        return Ok(out);
    }
    let p = ConvParams {
        dy: x.device_ptr(),
        weight: w.device_ptr(),
        bias: b.map_or(0, CudaStorage::device_ptr),
        out: out.device_ptr(),
        ..conv_params(OP, &conv)?
    };
    let sms = device.multiprocessors();
    conv_tune::run_pass(
        &device,
        algo,
        transposed_key(ConvPass::Forward, g, algo),
        |a| transposed_plan(ConvPass::Forward, g, a, sms),
        |launch| run_single(&device, launch, &p, out.len()),
    )?;
    Ok(out)
}

/// dL/dx of [`conv_transpose2d_forward`] from dL/dy (`n x c_out x h_out x w_out`).
pub fn conv_transpose2d_backward_data(
    g: &ConvTransposeGeom,
    dy: &CudaStorage,
    w: &CudaStorage,
    algo: ConvAlgo,
) -> Result<CudaStorage> {
    const OP: &str = "conv_transpose2d backward";
    g.validate()?;
    check_len(OP, "output gradient", dy, g.n * g.c_out * g.h_out() * g.w_out())?;
    check_len(OP, "weight", w, g.c_in * g.c_out * g.kh * g.kw)?;
    let device = common_device(OP, &[dy, w])?;
    algo.check_device(&device)?;
    let conv = g.as_conv();
    let out = CudaStorage::alloc(&device, g.n * g.c_in * g.h * g.w)?;
    if out.is_empty() {
        return Ok(out);
    }
    let p = ConvParams {
        x: dy.device_ptr(),
        weight: w.device_ptr(),
        out: out.device_ptr(),
        ..conv_params(OP, &conv)?
    };
    let sms = device.multiprocessors();
    conv_tune::run_pass(
        &device,
        algo,
        transposed_key(ConvPass::BackwardData, g, algo),
        |a| transposed_plan(ConvPass::BackwardData, g, a, sms),
        |launch| run_single(&device, launch, &p, out.len()),
    )?;
    Ok(out)
}

/// dL/dw (`c_in x c_out x kh x kw`) and dL/db (`c_out`) of [`conv_transpose2d_forward`].
pub fn conv_transpose2d_backward_weight(
    g: &ConvTransposeGeom,
    x: &CudaStorage,
    dy: &CudaStorage,
    algo: ConvAlgo,
) -> Result<(CudaStorage, CudaStorage)> {
    const OP: &str = "conv_transpose2d backward";
    g.validate()?;
    check_len(OP, "input", x, g.n * g.c_in * g.h * g.w)?;
    check_len(OP, "output gradient", dy, g.n * g.c_out * g.h_out() * g.w_out())?;
    let device = common_device(OP, &[x, dy])?;
    algo.check_device(&device)?;
    let conv = g.as_conv();
    let weight_len = g.c_in * g.c_out * g.kh * g.kw;
    let db = CudaStorage::zeros(&device, g.c_out)?;
    if g.n == 0 || weight_len == 0 {
        return Ok((CudaStorage::zeros(&device, weight_len)?, db));
    }
    let dw = CudaStorage::alloc(&device, weight_len)?;
    // In the transposed view, this op's output gradient is the convolution's input and this
    // op's input is the convolution's output gradient.
    let p = ConvParams {
        x: dy.device_ptr(),
        dy: x.device_ptr(),
        out: dw.device_ptr(),
        out_bias: 0,
        ..conv_params(OP, &conv)?
    };
    let sms = device.multiprocessors();
    conv_tune::run_pass(
        &device,
        algo,
        transposed_key(ConvPass::BackwardWeight, g, algo),
        |a| transposed_plan(ConvPass::BackwardWeight, g, a, sms),
        |launch| run_backward_weight(&device, launch, &p),
    )?;
    channel_sums(&device, dy, g.n, g.c_out, g.h_out() * g.w_out(), db.device_ptr())?;
    Ok((dw, db))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_plans_cover_the_reduction_in_whole_tiles() {
        for &(tiles, r, depth, sms) in &[
            (3, 16 * 256 * 256, 32, 132),
            (288, 16 * 16 * 16, 32, 132),
            (1, 1, 16, 132),
            (1, 31, 32, 1),
            (10_000, 1 << 20, 32, 132),
            (1, 3 * 17 * 19, 16, 132),
        ] {
            let (len, splits) = split_plan(tiles, r, depth, sms);
            assert!(len % depth == 0 && len > 0, "{len}");
            assert!((1..=4096).contains(&splits));
            assert!(len * splits >= r, "splits must cover the reduction");
            assert!(len * (splits - 1) < r, "no split may be empty");
        }
        // A small output with a long reduction gets many splits.
        let (_, splits) = split_plan(3, 16 * 256 * 256, 32, 132);
        assert!(splits >= 100, "{splits}");
    }

    #[test]
    fn every_kernel_name_is_distinct() {
        let mut names = kernel_names();
        let count = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), count);
        assert_eq!(count, 3 + 24 + 24 + 12 + 8 + 4 + 6 + 4 + 8 + 16 + 8 + 5 + 4 + 16 + 2);
        // The generated names follow conv.cu's pattern.
        assert!(names.contains(&"conv_bwd_weight_bf16_kany_m32"));
        assert!(names.contains(&"conv_bwd_data_bf16_k3t_n32"));
        assert!(names.contains(&"conv_bwd_weight_tf32_k3t_m64"));
        assert!(names.contains(&"conv_fwd_tf32_k3_n64"));
        assert!(names.contains(&"conv_tfwd_bf16_n32"));
        assert!(names.contains(&"conv_tfwd_tf32_k2s2_n64"));
    }

    /// Each pair of versions plans `pass` of `g` alike (on 132 multiprocessors).
    fn assert_same_plans(pass: ConvPass, g: &ConvGeom, pairs: [(ConvAlgo, ConvAlgo); 2]) {
        for (a, b) in pairs {
            assert_eq!(
                plan(pass, g, a, 132),
                plan(pass, g, b, 132),
                "{a} / {b}: {pass:?} {g:?}"
            );
        }
    }

    #[test]
    fn fill_plans_split_the_depth_where_the_tiles_fill_few_block_slots() {
        for (tiles, depth, tile_depth, sms) in [
            (1, 9 * 512, 32, 132),
            (64, 9 * 512, 32, 132),
            (100, 2304, 32, 132),
            (1, 1000, 32, 4),
            (3, 9 * 33, 32, 1),
        ] {
            let (len, splits) = fill_plan(tiles, depth, tile_depth, sms);
            if splits == 1 {
                assert_eq!(len, 0);
                continue;
            }
            assert!(tiles * splits <= 2 * sms, "the splits fit the slots");
            assert!(len >= 256 && len.is_multiple_of(tile_depth), "{len}");
            assert!(len * splits >= depth && len * (splits - 1) < depth, "no split empty");
        }
        // More than half the slots filled, a short depth, no depth: one split.
        assert_eq!(fill_plan(133, 9 * 512, 32, 132), (0, 1));
        assert_eq!(fill_plan(132, 9 * 512, 32, 132), (2304, 2));
        assert_eq!(fill_plan(1, 511, 32, 132), (0, 1));
        assert_eq!(fill_plan(1, 0, 32, 132), (0, 1));
        assert_eq!(fill_plan(1, 512, 32, 132), (256, 2));

        // The U-Net's deepest level (batch 16, 16 x 16 planes) on an H100: 32 pixel tiles.
        let g = |c_in, c_out| ConvGeom {
            n: 16,
            c_in,
            h: 16,
            w: 16,
            c_out,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
        };
        use ConvAlgo::*;
        use ConvPass::*;
        for (pass, geom, algo, grid, split_len) in [
            // 512 output channels in 128-wide tiles: 128 blocks, two splits.
            (Forward, g(256, 512), Tf32MmaWide, (32, 4, 2), 1152),
            (Forward, g(512, 512), Bf16MmaWide, (32, 4, 2), 2304),
            // 256 input channels: 64 blocks, four splits of the 4608-deep reduction.
            (BackwardData, g(256, 512), Tf32MmaWide, (32, 2, 4), 1152),
            // 64-wide tiles: 128 blocks of 256 input channels; 256 blocks of 512 fill the GPU.
            (BackwardData, g(256, 512), Tf32MmaTap, (32, 4, 2), 2304),
            (BackwardData, g(512, 512), Tf32MmaTap, (32, 8, 1), 0),
            (Forward, g(256, 512), Tf32Mma, (32, 8, 1), 0),
        ] {
            let launch = plan(pass, &geom, algo, 132);
            assert_eq!((launch.grid, launch.split_len), (grid, split_len), "{pass:?} {algo:?}");
            assert_eq!(launch.splits, grid.2);
        }
        // The next level up fills the GPU (32 x 32 planes: 128 pixel tiles x 2).
        assert_eq!(
            plan(
                Forward,
                &ConvGeom {
                    h: 32,
                    w: 32,
                    ..g(256, 256)
                },
                Tf32MmaWide,
                132
            )
            .splits,
            1
        );
        // v1 and the wgmma versions never split these passes.
        for algo in [Fp32Tiled, Tf32Wgmma, Bf16Wgmma] {
            for pass in [Forward, BackwardData] {
                let launch = plan(pass, &g(256, 512), algo, 132);
                assert_eq!((launch.splits, launch.split_len, launch.grid.2), (1, 0, 1), "{algo:?}");
            }
        }
    }

    #[test]
    fn wide_tiles_serve_forward_and_backward_data_of_128_columns_or_more() {
        let g = |c_in, c_out| ConvGeom {
            n: 2,
            c_in,
            h: 9,
            w: 7,
            c_out,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
        };
        use ConvAlgo::*;
        use ConvPass::*;
        let wide = plan(Forward, &g(64, 160), Tf32MmaWide, 132);
        assert_eq!(wide.kernel, "conv_fwd_tf32_k3t_n128");
        // Two tiles on 264 block slots: the depth (576) splits in two.
        assert_eq!(wide.grid, ((2 * 9 * 7usize).div_ceil(128), 2, 2));
        assert_eq!((wide.split_len, wide.splits), (288, 2));
        assert_eq!(wide.pack.map(|p| p.words), Some(256 * 9 * 64));
        // TF32's tiles pass the 48 KiB of static shared memory, BF16's do not.
        assert_eq!(launch_shared_bytes(wide.kernel), 54272);
        let bf16 = plan(BackwardData, &g(256, 64), Bf16MmaWide, 132);
        assert_eq!(bf16.kernel, "conv_bwd_data_bf16_k3t_n128");
        assert_eq!(launch_shared_bytes(bf16.kernel), 0);
        // Backward-weight: 64 output channels x 128 columns of (tap, c_in) from 33 output
        // channels on, with v2's splits for its tile count.
        let bw = plan(BackwardWeight, &g(64, 96), Tf32MmaWide, 132);
        assert_eq!(bw.kernel, "conv_bwd_weight_tf32_k3t_m64n128");
        assert_eq!(
            (bw.grid.0, bw.grid.1),
            ((9 * 64usize).div_ceil(128), 96usize.div_ceil(64))
        );
        let (split_len, splits) = split_plan(5 * 2, 2 * 9 * 7, 32, 132);
        assert_eq!((bw.split_len, bw.splits, bw.grid.2), (split_len, splits, splits));
        assert_eq!((bw.pack, launch_shared_bytes(bw.kernel)), (None, 0));
        assert_eq!(
            plan(BackwardWeight, &g(64, 33), Bf16MmaWide, 132).kernel,
            "conv_bwd_weight_bf16_k3t_m64n128"
        );
        // Fewer columns (or output channels), and channels off the 32-deep tiles, run what
        // tf32-mma-tap runs.
        for (pass, geom) in [
            (Forward, g(64, 96)),
            (BackwardData, g(64, 128)),
            (BackwardWeight, g(128, 32)),
            (BackwardWeight, g(48, 128)),
            (Forward, g(33, 256)),
        ] {
            assert_same_plans(pass, &geom, [(Tf32MmaWide, Tf32MmaTap), (Bf16MmaWide, Bf16MmaTap)]);
        }
        for algo in [Tf32MmaWide, Bf16MmaWide] {
            assert_eq!(algo.name().parse::<ConvAlgo>().unwrap(), algo);
            assert_eq!(ConvAlgo::from_index(algo as u8), algo);
        }
    }

    #[test]
    fn halo_tiles_serve_backward_weight_of_whole_rows_of_32_pixels() {
        let g = |c_in, h, w, c_out| ConvGeom {
            n: 3,
            c_in,
            h,
            w,
            c_out,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
        };
        use ConvAlgo::*;
        use ConvPass::*;
        // Widths that are multiples of 32, and 16 (even heights); 64 or 32 output channels a
        // block, grid (c_in / 32, c_out tiles, splits) with v2's splits for that tile count.
        for (geom, kernel) in [
            (g(64, 5, 64, 96), "k3h_m64_w32"),
            (g(32, 6, 16, 64), "k3h_m64_w16"),
            (g(96, 3, 32, 32), "k3h_m32_w32"),
            (g(32, 16, 16, 20), "k3h_m32_w16"),
        ] {
            let launch = plan(BackwardWeight, &geom, Tf32MmaHalo, 132);
            assert_eq!(launch.kernel, format!("conv_bwd_weight_tf32_{kernel}"));
            let bf16 = plan(BackwardWeight, &geom, Bf16MmaHalo, 132);
            assert_eq!(bf16.kernel, format!("conv_bwd_weight_bf16_{kernel}"));
            assert_eq!(
                ConvLaunch {
                    kernel: launch.kernel,
                    ..bf16
                },
                launch
            );
            let kernel = launch.kernel;
            let rows = if geom.c_out <= 32 { 32 } else { 64 };
            let tiles = (geom.c_in / 32, geom.c_out.div_ceil(rows));
            assert_eq!((launch.grid.0, launch.grid.1), tiles, "{geom:?}");
            let (split_len, splits) = split_plan(tiles.0 * tiles.1, geom.n * geom.h * geom.w, 32, 132);
            assert_eq!(
                (launch.split_len, launch.splits, launch.grid.2),
                (split_len, splits, splits)
            );
            assert_eq!(split_len % 32, 0, "k tiles of 32 pixels never straddle a split");
            assert_eq!((launch.pack, launch_shared_bytes(kernel)), (None, 0));
        }
        // Elsewhere what tf32-mma-wide runs: odd widths, 16 with an odd height, 8, channels off
        // the 32-channel tiles, stride 2, 1x1, no padding; forward and backward-data where the
        // halo forward tiles do not serve either (widths off 16).
        let strided = ConvGeom {
            stride: 2,
            ..g(32, 8, 32, 32)
        };
        let pointwise = ConvGeom {
            kh: 1,
            kw: 1,
            pad: 0,
            ..g(32, 8, 32, 32)
        };
        let unpadded = ConvGeom {
            pad: 0,
            ..g(32, 8, 32, 32)
        };
        for (pass, geom) in [
            (BackwardWeight, g(32, 7, 33, 64)),
            (BackwardWeight, g(32, 5, 16, 64)),
            (BackwardWeight, g(32, 8, 8, 64)),
            (BackwardWeight, g(48, 8, 32, 64)),
            (BackwardWeight, g(1, 8, 32, 64)),
            (BackwardWeight, strided),
            (BackwardWeight, pointwise),
            (BackwardWeight, unpadded),
            (Forward, g(64, 5, 24, 160)),
            (BackwardData, g(160, 5, 40, 64)),
        ] {
            assert_same_plans(pass, &geom, [(Tf32MmaHalo, Tf32MmaWide), (Bf16MmaHalo, Bf16MmaWide)]);
        }
        // The U-Net's levels at 256 x 256 all qualify (16 x 16 at the deepest), but its first
        // layer (c_in = 1).
        for (c_in, side) in [(32, 256), (64, 128), (128, 64), (256, 32), (512, 16)] {
            assert!(halo_applies(&g(c_in, side, side, 32)), "{c_in} {side}");
        }
        assert!(!halo_applies(&g(1, 256, 256, 32)));
        assert!(!halo_applies(&g(32, 1 << 16, 1 << 11, 32)), "offsets past 2^31");
        for algo in [Tf32MmaHalo, Bf16MmaHalo] {
            assert_eq!(algo.name().parse::<ConvAlgo>().unwrap(), algo);
            assert_eq!(ConvAlgo::from_index(algo as u8), algo);
        }
    }

    #[test]
    fn one_by_one_passes_with_few_channels_run_on_the_fp32_cores() {
        let g = |n, c_in, h, w, c_out| ConvGeom {
            n,
            c_in,
            h,
            w,
            c_out,
            kh: 1,
            kw: 1,
            stride: 1,
            pad: 0,
        };
        use ConvAlgo::*;
        use ConvPass::*;
        // The segmentation head at batch 16, 256 x 256: 32 -> 14 forward (16 sums a thread),
        // 14 -> 32 backward-data (32), one thread a pixel; backward-weight on the tensor cores.
        let head = g(16, 32, 256, 256, 14);
        for (algo, precision) in [
            (Tf32MmaTap, "tf32"),
            (Tf32MmaWide, "tf32"),
            (Tf32MmaHalo, "tf32"),
            (Bf16MmaTap, "bf16"),
            (Bf16MmaWide, "bf16"),
            (Bf16MmaHalo, "bf16"),
        ] {
            let forward = plan(Forward, &head, algo, 132);
            assert_eq!(forward.kernel, format!("conv_fwd_{precision}_k1d_o16"));
            assert_eq!(forward.grid, (16 * 256 * 256 / 256, 1, 1));
            assert_eq!((forward.split_len, forward.splits, forward.pack), (0, 1, None));
            let data = plan(BackwardData, &head, algo, 132);
            assert_eq!(data.kernel, format!("conv_bwd_data_{precision}_k1d_o32"));
            assert_eq!(data.grid, forward.grid);
            assert!(plan(BackwardWeight, &head, algo, 132).kernel.contains("_k1_"));
        }
        // Pixels off the block: the last block partly idle.
        assert_eq!(plan(Forward, &g(3, 20, 7, 9, 5), Tf32MmaTap, 132).grid, (1, 1, 1));
        assert_eq!(plan(Forward, &g(3, 20, 17, 9, 5), Tf32MmaTap, 132).grid, (2, 1, 1));
        // The plain versions never run them.
        assert_eq!(plan(Forward, &head, Tf32Mma, 132).kernel, "conv_fwd_tf32_k1_n32");
        // Elsewhere what tf32-mma runs: more than 32 outputs (the combined model's head going
        // back, 14 -> 64), more than 128 inputs, stride 2, padding.
        let strided = ConvGeom {
            stride: 2,
            ..g(2, 32, 8, 8, 14)
        };
        let padded = ConvGeom {
            pad: 1,
            ..g(2, 32, 8, 8, 14)
        };
        for (pass, geom) in [
            (BackwardData, g(16, 64, 32, 32, 14)),
            (Forward, g(2, 129, 8, 8, 14)),
            (Forward, g(2, 32, 8, 8, 33)),
            (Forward, strided),
            (BackwardData, padded),
        ] {
            assert_same_plans(pass, &geom, [(Tf32MmaHalo, Tf32Mma), (Bf16MmaTap, Bf16Mma)]);
        }
        assert_eq!(
            plan(Forward, &g(16, 64, 32, 32, 14), Bf16MmaHalo, 132).kernel,
            "conv_fwd_bf16_k1d_o16"
        );
    }

    #[test]
    fn first_layer_passes_run_on_the_fp32_cores() {
        let g = |c_in, c_out| ConvGeom {
            n: 16,
            c_in,
            h: 256,
            w: 256,
            c_out,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
        };
        use ConvAlgo::*;
        use ConvPass::*;
        // One CT channel -> 32: forward with 32 sums a thread, backward-data with 4 (one used),
        // one thread a pixel; backward-weight on the tensor cores.
        let first = g(1, 32);
        for (algo, precision) in [(Tf32MmaTap, "tf32"), (Bf16MmaWide, "bf16"), (Tf32MmaHalo, "tf32")] {
            let forward = plan(Forward, &first, algo, 132);
            assert_eq!(forward.kernel, format!("conv_fwd_{precision}_k3d_o32"));
            assert_eq!(
                (forward.grid, forward.splits, forward.pack),
                ((16 * 256, 1, 1), 1, None)
            );
            let data = plan(BackwardData, &first, algo, 132);
            assert_eq!(data.kernel, format!("conv_bwd_data_{precision}_k3d_o4"));
            assert!(!plan(BackwardWeight, &first, algo, 132).kernel.contains("d_o"));
        }
        // Inputs times outputs up to 64: 2 -> 32, 8 -> 8 (32 sums), 16 -> 4 (4 sums).
        assert_eq!(
            plan(Forward, &g(2, 32), Tf32MmaTap, 132).kernel,
            "conv_fwd_tf32_k3d_o32"
        );
        assert_eq!(plan(Forward, &g(8, 8), Tf32MmaTap, 132).kernel, "conv_fwd_tf32_k3d_o32");
        assert_eq!(plan(Forward, &g(16, 4), Tf32MmaTap, 132).kernel, "conv_fwd_tf32_k3d_o4");
        // Past that, stride 2 or no padding: what tf32-mma-tap ran before (tf32-mma's kernels,
        // or the halo ones for tf32-mma-halo); the plain versions never.
        let strided = ConvGeom { stride: 2, ..first };
        let unpadded = ConvGeom { pad: 0, ..first };
        for (pass, geom) in [
            (Forward, g(3, 32)),
            (BackwardData, g(32, 3)),
            (Forward, strided),
            (Forward, unpadded),
        ] {
            assert_same_plans(pass, &geom, [(Tf32MmaTap, Tf32Mma), (Bf16MmaTap, Bf16Mma)]);
        }
        assert_eq!(plan(Forward, &first, Tf32Mma, 132).kernel, "conv_fwd_tf32_k3_n32");
    }

    #[test]
    fn halo_forward_tiles_serve_narrow_3x3_forward_and_backward_data() {
        let g = |n, c_in, h, w, c_out| ConvGeom {
            n,
            c_in,
            h,
            w,
            c_out,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
        };
        use ConvAlgo::*;
        use ConvPass::*;
        // The U-Net's first level (batch 16, 256 x 256, 32 channels): blocks of 8 rows of 32
        // columns, 32 output channels, the weights packed in chunks of 8 input channels.
        let level1 = g(16, 32, 256, 256, 32);
        for (pass, kernel, pack) in [
            (Forward, "conv_fwd_tf32_k3h_n32_w32", "conv_pack_fwd_halo_tf32_n32"),
            (
                BackwardData,
                "conv_bwd_data_tf32_k3h_n32_w32",
                "conv_pack_bwd_data_halo_tf32_n32",
            ),
        ] {
            let launch = plan(pass, &level1, Tf32MmaHalo, 132);
            assert_eq!(launch.kernel, kernel);
            assert_eq!(launch.grid, (16 * 32 * 8, 1, 1));
            assert_eq!((launch.split_len, launch.splits), (0, 1));
            assert_eq!(launch.pack.map(|p| (p.kernel, p.words)), Some((pack, 4 * 9 * 32 * 8)));
            assert_eq!(launch_shared_bytes(kernel), 0);
        }
        // dec1.conv1 (64 -> 32): forward over 8 chunks; backward-data to 64 outputs in blocks
        // of 64 channels and 128 pixels (4 rows of 32), over 4 chunks.
        let dec1 = g(16, 64, 256, 256, 32);
        assert_eq!(
            plan(Forward, &dec1, Tf32MmaHalo, 132).pack.map(|p| p.words),
            Some(8 * 9 * 32 * 8)
        );
        let wide = plan(BackwardData, &dec1, Tf32MmaHalo, 132);
        assert_eq!(wide.kernel, "conv_bwd_data_tf32_k3h_n64_w32");
        assert_eq!(wide.grid, (16 * 64 * 8, 1, 1));
        assert_eq!(
            wide.pack.map(|p| (p.kernel, p.words)),
            Some(("conv_pack_bwd_data_halo_tf32_n64", 4 * 9 * 64 * 8))
        );
        assert_eq!(launch_shared_bytes(wide.kernel), 2 * (8 * 232 + 9 * 64 * 8) * 4);
        // The second level (128 x 128, 64 channels): 64 outputs, rows of 32.
        let level2 = plan(Forward, &g(16, 64, 128, 128, 64), Tf32MmaHalo, 132);
        assert_eq!(level2.kernel, "conv_fwd_tf32_k3h_n64_w32");
        assert_eq!(level2.grid, (16 * 32 * 4, 1, 1));
        // Widths that are multiples of 16 alone: 16 rows of 16 columns, heights off the tile.
        let narrow = plan(Forward, &g(3, 24, 17, 48, 20), Tf32MmaHalo, 132);
        assert_eq!(narrow.kernel, "conv_fwd_tf32_k3h_n32_w16");
        assert_eq!(narrow.grid, (3 * 2 * 3, 1, 1));
        assert_eq!(
            plan(BackwardData, &g(2, 20, 9, 64, 40), Tf32MmaHalo, 132).grid,
            (2 * 2 * 2, 1, 1)
        );
        // 33-64 outputs: blocks of 8 rows of 16 (or 4 of 32).
        let sixteen = plan(BackwardData, &g(2, 40, 9, 16, 24), Tf32MmaHalo, 132);
        assert_eq!(sixteen.kernel, "conv_bwd_data_tf32_k3h_n64_w16");
        assert_eq!(sixteen.grid, (2 * 2, 1, 1));
        // More than 64 outputs: blocks of 64, as many as they take (grid y; the packing's zeros
        // past the last output), each staging its halo. The U-Net's deep levels: 256 outputs at
        // 32 x 32 (rows of 32), 512 forward and 256 backward-data at 16 x 16 (rows of 16).
        let over = plan(Forward, &g(2, 32, 8, 32, 65), Tf32MmaHalo, 132);
        assert_eq!(over.kernel, "conv_fwd_tf32_k3h_n64_w32");
        assert_eq!(over.grid, (2 * 2, 2, 1));
        assert_eq!(over.pack.map(|p| p.words), Some(2 * 4 * 9 * 64 * 8));
        let level4 = plan(Forward, &g(16, 256, 32, 32, 256), Tf32MmaHalo, 132);
        assert_eq!(level4.kernel, "conv_fwd_tf32_k3h_n64_w32");
        assert_eq!((level4.grid, level4.splits), ((16 * 8, 4, 1), 1));
        let level5 = g(16, 256, 16, 16, 512);
        let forward5 = plan(Forward, &level5, Tf32MmaHalo, 132);
        assert_eq!(forward5.kernel, "conv_fwd_tf32_k3h_n64_w16");
        assert_eq!(forward5.grid, (16 * 2, 8, 1));
        assert_eq!(forward5.pack.map(|p| p.words), Some(8 * 32 * 9 * 64 * 8));
        let backward5 = plan(BackwardData, &level5, Bf16MmaHalo, 132);
        assert_eq!(backward5.kernel, "conv_bwd_data_bf16_k3h_n64_w16");
        assert_eq!(backward5.grid, (16 * 2, 4, 1));
        assert_eq!(backward5.pack.map(|p| p.words), Some(4 * 32 * 9 * 64 * 8));
        // Elsewhere what tf32-mma-wide runs: the first layer (one input channel), input
        // channels off 8, widths off 16, stride 2, 1x1.
        let strided = ConvGeom {
            stride: 2,
            ..g(2, 32, 8, 32, 32)
        };
        let pointwise = ConvGeom {
            kh: 1,
            kw: 1,
            pad: 0,
            ..g(2, 32, 8, 32, 32)
        };
        for (pass, geom) in [
            (Forward, g(16, 1, 256, 256, 32)),
            (Forward, g(2, 20, 8, 32, 32)),
            (Forward, g(2, 32, 8, 24, 32)),
            (BackwardData, g(2, 32, 8, 32, 20)),
            (Forward, strided),
            (BackwardData, pointwise),
        ] {
            assert_same_plans(pass, &geom, [(Tf32MmaHalo, Tf32MmaWide), (Bf16MmaHalo, Bf16MmaWide)]);
        }
        // BF16 stages 16 input channels at a time (8 words of pairs): the same blocks and grids,
        // half the chunks, its tiles in dynamic shared memory (a stage of FP32 planes, one of
        // pairs, two of weights).
        for (pass, geom) in [(Forward, level1), (BackwardData, dec1), (Forward, g(3, 48, 17, 48, 20))] {
            let tf32 = plan(pass, &geom, Tf32MmaHalo, 132);
            let bf16 = plan(pass, &geom, Bf16MmaHalo, 132);
            assert_eq!(bf16.kernel, tf32.kernel.replace("_tf32_", "_bf16_"));
            assert_eq!((bf16.grid, bf16.splits), (tf32.grid, 1));
            let (tf32_pack, bf16_pack) = (tf32.pack.unwrap(), bf16.pack.unwrap());
            assert_eq!(bf16_pack.kernel, tf32_pack.kernel.replace("_tf32_", "_bf16_"));
            assert_eq!(bf16_pack.words * 2, tf32_pack.words);
        }
        assert_eq!(
            launch_shared_bytes("conv_fwd_bf16_k3h_n32_w32"),
            (16 + 8) * 392 * 4 + 2 * 9 * 32 * 8 * 4
        );
        assert_eq!(
            launch_shared_bytes("conv_bwd_data_bf16_k3h_n64_w16"),
            (16 + 8) * 232 * 4 + 2 * 9 * 64 * 8 * 4
        );
        assert_eq!(launch_shared_bytes("conv_fwd_tf32_k3h_n32_w16"), 0);
        // Input channels off 16 stay with bf16-mma-wide.
        assert_same_plans(
            Forward,
            &g(2, 24, 8, 32, 32),
            [(Bf16MmaHalo, Bf16MmaWide), (Bf16MmaHalo, Bf16MmaWide)],
        );
    }

    #[test]
    fn up_convolutions_run_their_backward_passes_tap_major() {
        // The default U-Net's 2x2 stride-2 up-convolutions (batch 16; 512 -> 256 at 16 x 16 up
        // to 64 -> 32 at 128 x 128), as the convolutions they transpose: their backward-data is
        // that convolution's forward pass (c_in = the up-convolution's c_out), their weight
        // gradient its backward-weight.
        use ConvAlgo::*;
        for (c_in, side) in [(512, 16), (256, 32), (128, 64), (64, 128)] {
            let t = ConvTransposeGeom {
                n: 16,
                c_in,
                h: side,
                w: side,
                c_out: c_in / 2,
                kh: 2,
                kw: 2,
                stride: 2,
                pad: 0,
            };
            let conv = t.as_conv();
            let data = transposed_plan(ConvPass::BackwardData, &t, Tf32MmaTap, 132);
            let weight = transposed_plan(ConvPass::BackwardWeight, &t, Bf16MmaTap, 132);
            // The GEMM's columns are the up-convolution's inputs, 64 or more: the 64-wide tile.
            assert_eq!(data.kernel, "conv_fwd_tf32_k2t_n64");
            assert_eq!(
                data.pack,
                Some(WeightPack {
                    kernel: "conv_pack_fwd_tf32",
                    words: c_in.div_ceil(128) * 128 * 4 * conv.c_in,
                })
            );
            assert_eq!(weight.kernel, "conv_bwd_weight_bf16_k2t_m64");
            // The same grids and splits as tf32-mma's (the tiles are the same).
            let plain = transposed_plan(ConvPass::BackwardData, &t, Tf32Mma, 132);
            assert_eq!((data.grid, data.splits), (plain.grid, plain.splits));
            // The wide versions' 128-column tiles from 128 columns on.
            let wide = transposed_plan(ConvPass::BackwardData, &t, Bf16MmaWide, 132);
            let want = if c_in >= 128 {
                "conv_fwd_bf16_k2t_n128"
            } else {
                "conv_fwd_bf16_k2t_n64"
            };
            assert_eq!(wide.kernel, want);
            assert_eq!(
                transposed_plan(ConvPass::BackwardWeight, &t, Tf32MmaHalo, 132).kernel,
                "conv_bwd_weight_tf32_k2t_m64n128"
            );
        }
        // The TF32 wide forward kernel takes its tiles in dynamic shared memory, as the 3x3 one.
        assert_eq!(
            launch_shared_bytes("conv_fwd_tf32_k2t_n128"),
            launch_shared_bytes("conv_fwd_tf32_k3t_n128")
        );
        assert_eq!(launch_shared_bytes("conv_fwd_bf16_k2t_n128"), 0);
    }

    #[test]
    fn tap_major_kernels_serve_whole_channel_tiles() {
        let g = |c_in, c_out, k| ConvGeom {
            n: 2,
            c_in,
            h: 9,
            w: 7,
            c_out,
            kh: k,
            kw: k,
            stride: 1,
            pad: k / 2,
        };
        let kernel = |pass, geom: &ConvGeom, algo| plan(pass, geom, algo, 132).kernel;
        use ConvPass::*;
        // Forward reduces over c_in, backward-data over c_out; both tile widths.
        assert_eq!(
            kernel(Forward, &g(64, 128, 3), ConvAlgo::Tf32MmaTap),
            "conv_fwd_tf32_k3t_n64"
        );
        assert_eq!(
            kernel(Forward, &g(32, 16, 3), ConvAlgo::Bf16MmaTap),
            "conv_fwd_bf16_k3t_n32"
        );
        assert_eq!(
            kernel(BackwardData, &g(16, 64, 3), ConvAlgo::Tf32MmaTap),
            "conv_bwd_data_tf32_k3t_n32"
        );
        assert_eq!(
            kernel(BackwardData, &g(128, 32, 3), ConvAlgo::Bf16MmaTap),
            "conv_bwd_data_bf16_k3t_n64"
        );
        // Backward-weight orders its columns (c_in x taps) tap-major; its tiles follow c_out.
        assert_eq!(
            kernel(BackwardWeight, &g(32, 64, 3), ConvAlgo::Tf32MmaTap),
            "conv_bwd_weight_tf32_k3t_m64"
        );
        assert_eq!(
            kernel(BackwardWeight, &g(64, 32, 3), ConvAlgo::Bf16MmaTap),
            "conv_bwd_weight_bf16_k3t_m32"
        );
        // Forward and backward-data read their weights packed: the B rows (c_out forward, c_in
        // backward-data) padded to a multiple of 128, 9 x channels values each, one TF32 or two
        // BF16 a word. Backward-weight reads the image, unpacked.
        let pack = |pass, geom: &ConvGeom, algo| plan(pass, geom, algo, 132).pack;
        assert_eq!(
            pack(Forward, &g(64, 72, 3), ConvAlgo::Tf32MmaTap),
            Some(WeightPack {
                kernel: "conv_pack_fwd_tf32",
                words: 128 * 9 * 64
            })
        );
        assert_eq!(
            pack(BackwardData, &g(20, 32, 3), ConvAlgo::Bf16MmaTap),
            Some(WeightPack {
                kernel: "conv_pack_bwd_data_bf16",
                words: 128 * 9 * 32 / 2
            })
        );
        assert_eq!(pack(BackwardWeight, &g(32, 64, 3), ConvAlgo::Tf32MmaTap), None);
        assert_eq!(pack(Forward, &g(64, 64, 3), ConvAlgo::Tf32Mma), None);
        // The tap-major kernels keep v2's grids and reduction splits.
        let bw = g(64, 96, 3);
        let (tap, plain) = (
            plan(BackwardWeight, &bw, ConvAlgo::Tf32MmaTap, 132),
            plan(BackwardWeight, &bw, ConvAlgo::Tf32Mma, 132),
        );
        assert_eq!(
            (tap.grid, tap.split_len, tap.splits),
            (plain.grid, plain.split_len, plain.splits)
        );
        // Channels off the 32-deep tiles and other kernel sizes run v2's (where the FP32-core
        // kernels do not: 3 -> 32 is past their 64 channels), and so does backward-weight where
        // an image's offsets pass 32 bits.
        let huge = ConvGeom {
            h: 8192,
            w: 8192,
            ..g(32, 32, 3)
        };
        assert_eq!(
            plan(BackwardWeight, &huge, ConvAlgo::Tf32MmaTap, 132).kernel,
            "conv_bwd_weight_tf32_k3_m32"
        );
        assert_eq!(
            plan(Forward, &huge, ConvAlgo::Tf32MmaTap, 132).kernel,
            "conv_fwd_tf32_k3t_n32"
        );
        for (pass, geom) in [
            (Forward, g(33, 64, 3)),
            (Forward, g(3, 32, 3)),
            (BackwardData, g(64, 48, 3)),
            (Forward, g(64, 64, 1)),
            (BackwardWeight, g(48, 64, 3)),
            (BackwardWeight, g(1, 32, 3)),
            (BackwardData, g(64, 64, 2)),
            (BackwardWeight, g(48, 64, 2)),
        ] {
            for (tap, plain) in [
                (ConvAlgo::Tf32MmaTap, ConvAlgo::Tf32Mma),
                (ConvAlgo::Bf16MmaTap, ConvAlgo::Bf16Mma),
            ] {
                assert_eq!(
                    plan(pass, &geom, tap, 132),
                    plan(pass, &geom, plain, 132),
                    "{pass:?} {geom:?}"
                );
            }
        }
    }

    #[test]
    fn algo_names_round_trip() {
        for algo in ConvAlgo::ALL {
            assert_eq!(algo.name().parse::<ConvAlgo>().unwrap(), algo);
            assert_eq!(ConvAlgo::from_index(algo as u8), algo);
        }
        assert!("winograd".parse::<ConvAlgo>().is_err());
        assert_eq!("BF16".parse::<ConvAlgo>().unwrap(), ConvAlgo::Bf16Mma);
    }

    #[test]
    fn wgmma_algos_cover_every_pass() {
        let g = ConvGeom {
            n: 3,
            c_in: 5,
            h: 17,
            w: 12,
            c_out: 70,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
        };
        for (v3, v2) in [
            (ConvAlgo::Tf32Wgmma, ConvAlgo::Tf32Mma),
            (ConvAlgo::Bf16Wgmma, ConvAlgo::Bf16Mma),
        ] {
            let forward = plan(ConvPass::Forward, &g, v3, 132);
            assert!(conv_sm90::is_kernel(forward.kernel), "{forward:?}");
            assert_eq!(forward.grid, ((3 * 17 * 12usize).div_ceil(128), 2, 1));
            let data = plan(ConvPass::BackwardData, &g, v3, 132);
            assert!(conv_sm90::is_kernel(data.kernel) && data.kernel.contains("bwd_data"));
            // Backward-weight: 128 taps x 64 output channels per block (70 > 32), split as v2's.
            let weight = plan(ConvPass::BackwardWeight, &g, v3, 132);
            assert!(conv_sm90::is_kernel(weight.kernel) && weight.kernel.contains("bwd_weight"));
            assert_eq!((weight.grid.0, weight.grid.1), ((5 * 9usize).div_ceil(128), 2));
            assert_eq!(weight.grid.2, weight.splits);
            assert!(v3.needs_sm90a() && !v2.needs_sm90a());
            assert!(v3.runs_on((9, 0)) && !v3.runs_on((8, 0)) && !v3.runs_on((10, 0)));
            assert!(v2.runs_on((8, 6)));
        }
    }

    #[test]
    fn both_tensor_core_precisions_launch_alike() {
        let g = |c_in, c_out, k, stride, pad| ConvGeom {
            n: 3,
            c_in,
            h: 17,
            w: 12,
            c_out,
            kh: k,
            kw: k,
            stride,
            pad,
        };
        for geom in [
            g(5, 37, 3, 1, 1),
            g(64, 16, 1, 1, 0),
            g(7, 130, 2, 2, 0),
            g(4, 9, 5, 1, 2),
        ] {
            for pass in [ConvPass::Forward, ConvPass::BackwardData, ConvPass::BackwardWeight] {
                let tf32 = plan(pass, &geom, ConvAlgo::Tf32Mma, 132);
                let bf16 = plan(pass, &geom, ConvAlgo::Bf16Mma, 132);
                assert_eq!(bf16.kernel, tf32.kernel.replace("_tf32_", "_bf16_"));
                assert_eq!(
                    (bf16.grid, bf16.split_len, bf16.splits),
                    (tf32.grid, tf32.split_len, tf32.splits)
                );
            }
        }
    }

    #[test]
    fn transposed_geometry_maps_to_its_convolution() {
        let t = ConvTransposeGeom {
            n: 3,
            c_in: 64,
            h: 7,
            w: 9,
            c_out: 32,
            kh: 2,
            kw: 2,
            stride: 2,
            pad: 0,
        };
        assert_eq!((t.h_out(), t.w_out()), (14, 18));
        let c = t.as_conv();
        assert_eq!((c.c_in, c.c_out, c.h, c.w), (32, 64, 14, 18));
        assert_eq!((c.h_out(), c.w_out()), (7, 9));
        assert_eq!(t.macs(), c.macs());
    }

    fn up(n: usize, c_in: usize, side: usize, c_out: usize) -> ConvTransposeGeom {
        ConvTransposeGeom {
            n,
            c_in,
            h: side,
            w: side,
            c_out,
            kh: 2,
            kw: 2,
            stride: 2,
            pad: 0,
        }
    }

    #[test]
    fn unet_up_convolutions_run_forward_by_tap() {
        // The default U-Net's decoder (batch 16, 256 x 256, base 32, depth 5): 512 -> 256 at
        // 16 x 16 up to 64 -> 32 at 128 x 128.
        for (c_in, side) in [(512, 16), (256, 32), (128, 64), (64, 128)] {
            let g = up(16, c_in, side, c_in / 2);
            assert!(g.taps_tile_the_output());
            let pixels = 16 * side * side;
            let (tile, cols) = if c_in / 2 > 32 { ("n64", 64) } else { ("n32", 32) };
            for (algo, kernel, rows, cols) in [
                (ConvAlgo::Fp32Tiled, "conv_tfwd_fp32".to_string(), 64, 64),
                (ConvAlgo::Tf32Mma, format!("conv_tfwd_tf32_{tile}"), 128, cols),
                (ConvAlgo::Bf16Mma, format!("conv_tfwd_bf16_{tile}"), 128, cols),
            ] {
                let launch = transposed_plan(ConvPass::Forward, &g, algo, 132);
                assert_eq!(launch.kernel, kernel);
                assert_eq!(
                    launch.grid,
                    (pixels.div_ceil(rows), (c_in / 2).div_ceil(cols), 4),
                    "{algo} {g:?}"
                );
                assert_eq!((launch.split_len, launch.splits), (0, 1));
                // The backward passes keep the convolution's kernels.
                let data = transposed_plan(ConvPass::BackwardData, &g, algo, 132);
                assert_eq!(data, plan(ConvPass::Forward, &g.as_conv(), algo, 132));
                let weight = transposed_plan(ConvPass::BackwardWeight, &g, algo, 132);
                assert_eq!(weight, plan(ConvPass::BackwardWeight, &g.as_conv(), algo, 132));
            }
            // The tap-major, wide and halo versions: one GEMM over the four taps, 4 c_out
            // columns in tiles of 64, no grid z.
            for algo in [
                ConvAlgo::Tf32MmaTap,
                ConvAlgo::Tf32MmaWide,
                ConvAlgo::Tf32MmaHalo,
                ConvAlgo::Bf16MmaTap,
                ConvAlgo::Bf16MmaWide,
                ConvAlgo::Bf16MmaHalo,
            ] {
                let precision = &algo.name()[..4];
                let launch = transposed_plan(ConvPass::Forward, &g, algo, 132);
                assert_eq!(launch.kernel, format!("conv_tfwd_{precision}_k2s2_n64"));
                assert_eq!(launch.grid, (pixels.div_ceil(128), 4 * (c_in / 2) / 64, 1), "{algo}");
                assert_eq!((launch.split_len, launch.splits, launch.pack), (0, 1, None));
            }
        }
        // Eight output channels or fewer (32 columns): the narrow tile.
        let launch = transposed_plan(ConvPass::Forward, &up(3, 6, 5, 8), ConvAlgo::Bf16MmaWide, 132);
        assert_eq!((launch.kernel, launch.grid), ("conv_tfwd_bf16_k2s2_n32", (1, 1, 1)));
        // 1x1 stride 1 tiles its output too (one tap), by the per-tap kernels in every version.
        let one = ConvTransposeGeom {
            kh: 1,
            kw: 1,
            stride: 1,
            ..up(3, 40, 5, 20)
        };
        for algo in [ConvAlgo::Tf32Mma, ConvAlgo::Tf32MmaHalo] {
            let launch = transposed_plan(ConvPass::Forward, &one, algo, 132);
            assert_eq!((launch.kernel, launch.grid), ("conv_tfwd_tf32_n32", (1, 1, 1)));
        }
    }

    #[test]
    fn overlapping_or_gapped_transposed_kernels_keep_backward_data() {
        for g in [
            // 3x3 stride 2 pad 1: windows overlap.
            ConvTransposeGeom {
                kh: 3,
                kw: 3,
                pad: 1,
                ..up(2, 5, 4, 4)
            },
            // 2x2 stride 2 with padding: the output is cropped.
            ConvTransposeGeom {
                pad: 1,
                ..up(2, 8, 6, 6)
            },
            // 2x2 stride 3: gaps between the windows, written by the bias alone.
            ConvTransposeGeom {
                stride: 3,
                ..up(2, 8, 6, 6)
            },
            // 4x4 stride 2: overlapping windows.
            ConvTransposeGeom {
                kh: 4,
                kw: 4,
                ..up(1, 8, 6, 6)
            },
            // 2x1 kernel, stride 2: not square.
            ConvTransposeGeom {
                kw: 1,
                ..up(1, 8, 6, 6)
            },
        ] {
            assert!(!g.taps_tile_the_output(), "{g:?}");
            for algo in ConvAlgo::ALL {
                let launch = transposed_plan(ConvPass::Forward, &g, algo, 132);
                assert_eq!(launch, plan(ConvPass::BackwardData, &g.as_conv(), algo, 132));
                assert!(!launch.kernel.contains("tfwd"), "{}", launch.kernel);
            }
        }
    }

    #[test]
    fn unet_decoder_tensor_core_work_drops_fourfold() {
        // Tensor-core multiply-adds of the forward passes of the default U-Net's up
        // convolutions, tiles padded (128 x 64 or 128 x 32 x 32-deep): the strided backward-data
        // pass against the per-tap GEMMs. The numbers are those of docs/CUDA.md.
        let padded = |m: usize, n: usize, k: usize, cols: usize| {
            m.div_ceil(128) * 128 * n.div_ceil(cols) * cols * k.div_ceil(32) * 32
        };
        let (mut before, mut after, mut useful) = (0, 0, 0);
        for (c_in, side) in [(512, 16), (256, 32), (128, 64), (64, 128)] {
            let g = up(16, c_in, side, c_in / 2);
            let cols = if g.c_out > 32 { 64 } else { 32 };
            before += padded(g.n * g.h_out() * g.w_out(), g.c_out, g.c_in * 4, cols);
            after += 4 * padded(g.n * g.h * g.w, g.c_out, g.c_in, cols);
            useful += g.macs();
        }
        assert_eq!(after, useful, "the U-Net's shapes fill every tile");
        assert_eq!(before, 4 * after);
        assert_eq!(after, 8_589_934_592);
    }
}
