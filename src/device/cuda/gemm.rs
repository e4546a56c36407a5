//! Matrix products and linear layers on the GPU: the host side of `kernels/gemm.cu`.
//!
//! A product is planned from its shape alone ([`gemm_plan`]): the kernel for the algorithm and
//! the transposes, the grid of 64 x 64 output tiles, and how the reduction over k is split across
//! blocks when there are too few tiles to fill the GPU (the partial sums are then added in a
//! fixed order by `gemm_split_reduce`, so results are deterministic). [`gemm_calls`] turns a plan
//! and device addresses into launches; the wrappers below check operands, allocate and run them.

use std::fmt;
use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::call::{KernelCall, blocks_for};
use super::conv::split_plan;
use super::launch::dim;
use super::operand::{check_len, common_device};
use super::{CudaDevice, CudaStorage};
use crate::error::Result;

const MODULE: &str = "gemm";
const THREADS: u32 = 256;
/// Output tile rows and columns of both kernel versions.
const TILE: usize = 64;

/// `GemmParams` of `kernels/gemm.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct GemmParams {
    pub a: u64,
    pub b: u64,
    pub bias: u64,
    pub scale: u64,
    pub c: u64,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub split_len: i32,
    pub splits: i32,
    pub accumulate: i32,
    pub alpha: f32,
    pub reserved: i32,
}

const _: () = assert!(size_of::<GemmParams>() == 72);
const _: () = assert!(std::mem::offset_of!(GemmParams, m) == 40);
const _: () = assert!(std::mem::offset_of!(GemmParams, alpha) == 64);

/// `GemmReduceParams` of `kernels/gemm.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct GemmReduceParams {
    pub partial: u64,
    pub bias: u64,
    pub scale: u64,
    pub c: u64,
    pub m: i32,
    pub n: i32,
    pub splits: i32,
    pub accumulate: i32,
    pub alpha: f32,
    pub reserved: i32,
}

const _: () = assert!(size_of::<GemmReduceParams>() == 56);
const _: () = assert!(std::mem::offset_of!(GemmReduceParams, m) == 32);

/// `ColumnSumParams` of `kernels/gemm.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ColumnSumParams {
    pub x: u64,
    pub out: u64,
    pub rows: i32,
    pub cols: i32,
}

const _: () = assert!(size_of::<ColumnSumParams>() == 24);
const _: () = assert!(std::mem::offset_of!(ColumnSumParams, rows) == 16);

/// Which matrix-product kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmAlgo {
    /// Plain FP32 shared-memory tiles (64x64x16): the reference version, and what the ops use
    /// (PyTorch also keeps FP32 matmuls in full precision by default).
    Fp32Tiled,
    /// Tensor cores through `mma.sync` m16n8k8: TF32 inputs (10-bit mantissa, rounded to
    /// nearest), FP32 accumulation.
    Tf32Mma,
}

impl GemmAlgo {
    /// Every version, simplest first.
    pub const ALL: [GemmAlgo; 2] = [GemmAlgo::Fp32Tiled, GemmAlgo::Tf32Mma];

    /// The version the ops use: the heads' products are far too small for TF32 to pay off.
    pub const DEFAULT: GemmAlgo = GemmAlgo::Fp32Tiled;

    pub fn name(self) -> &'static str {
        match self {
            GemmAlgo::Fp32Tiled => "fp32-tiled",
            GemmAlgo::Tf32Mma => "tf32-mma",
        }
    }

    /// The k depth of one tile.
    fn depth(self) -> usize {
        match self {
            GemmAlgo::Fp32Tiled => 16,
            GemmAlgo::Tf32Mma => 32,
        }
    }
}

impl fmt::Display for GemmAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `C (m x n) = op(A) op(B)` on row-major matrices: `op(A)` is m x k (A stored k x m when
/// `trans_a`), `op(B)` is k x n (B stored n x k when `trans_b`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
}

/// What is written: `C = [C +] alpha * s * op(A) op(B) [+ bias]`, with `s` the f32 at device
/// address `scale` (1 when 0) and `bias` n values (none when 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Epilogue {
    pub alpha: f32,
    pub scale: u64,
    pub bias: u64,
    pub accumulate: bool,
}

impl Default for Epilogue {
    fn default() -> Self {
        Epilogue {
            alpha: 1.0,
            scale: 0,
            bias: 0,
            accumulate: false,
        }
    }
}

/// The launch of one product: kernel, grid and the split of k (one split: no partial sums).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmPlan {
    pub kernel: &'static str,
    pub grid: (usize, usize, usize),
    pub split_len: usize,
    pub splits: usize,
}

impl GemmPlan {
    /// f32 values of scratch the partial sums need (0 when the reduction is not split).
    pub fn scratch_len(&self, s: &GemmShape) -> usize {
        if self.splits > 1 { self.splits * s.m * s.n } else { 0 }
    }
}

const FP32_KERNELS: [&str; 4] = ["gemm_fp32_nn", "gemm_fp32_nt", "gemm_fp32_tn", "gemm_fp32_tt"];
const TF32_KERNELS: [&str; 4] = ["gemm_tf32_nn", "gemm_tf32_nt", "gemm_tf32_tn", "gemm_tf32_tt"];

/// Every kernel of `kernels/gemm.cu`.
pub fn kernel_names() -> Vec<&'static str> {
    let mut names = FP32_KERNELS.to_vec();
    names.extend(TF32_KERNELS);
    names.extend(["gemm_split_reduce", "column_sum"]);
    names
}

/// The launch of `s` with `algo` on a GPU with `multiprocessors`.
pub fn gemm_plan(s: &GemmShape, algo: GemmAlgo, multiprocessors: usize) -> GemmPlan {
    let variant = 2 * usize::from(s.trans_a) + usize::from(s.trans_b);
    let kernel = match algo {
        GemmAlgo::Fp32Tiled => FP32_KERNELS[variant],
        GemmAlgo::Tf32Mma => TF32_KERNELS[variant],
    };
    let (rows, cols) = (blocks_for(s.m, TILE), blocks_for(s.n, TILE));
    let (split_len, splits) = split_plan(rows * cols, s.k, algo.depth(), multiprocessors);
    GemmPlan {
        kernel,
        grid: (rows, cols, splits),
        split_len,
        splits,
    }
}

/// The launches of `plan` for `s`: `C` at `c` from `A` at `a` and `B` at `b`; `scratch` holds
/// `plan.scratch_len(s)` values (unused when the plan does not split). No launch when C is empty.
pub fn gemm_calls(
    s: &GemmShape,
    plan: &GemmPlan,
    epi: &Epilogue,
    a: u64,
    b: u64,
    c: u64,
    scratch: u64,
) -> Result<Vec<KernelCall>> {
    const OP: &str = "matmul";
    if s.m == 0 || s.n == 0 {
        return Ok(Vec::new());
    }
    // The kernels index rows and columns with 32-bit integers.
    dim(OP, "m * n", s.m * s.n)?;
    dim(OP, "m * k", s.m * s.k)?;
    dim(OP, "k * n", s.k * s.n)?;
    let split = plan.splits > 1;
    let p = GemmParams {
        a,
        b,
        bias: epi.bias,
        scale: epi.scale,
        c: if split { scratch } else { c },
        m: dim(OP, "m", s.m)?,
        n: dim(OP, "n", s.n)?,
        k: dim(OP, "k", s.k)?,
        split_len: dim(OP, "split length", plan.split_len)?,
        splits: dim(OP, "splits", plan.splits)?,
        accumulate: i32::from(epi.accumulate),
        alpha: epi.alpha,
        reserved: 0,
    };
    let mut calls = vec![KernelCall::new(MODULE, plan.kernel, plan.grid, THREADS, &p)];
    if split {
        let reduce = GemmReduceParams {
            partial: scratch,
            bias: epi.bias,
            scale: epi.scale,
            c,
            m: p.m,
            n: p.n,
            splits: p.splits,
            accumulate: p.accumulate,
            alpha: epi.alpha,
            reserved: 0,
        };
        calls.push(KernelCall::new(
            MODULE,
            "gemm_split_reduce",
            (blocks_for(s.m * s.n, THREADS as usize), 1, 1),
            THREADS,
            &reduce,
        ));
    }
    Ok(calls)
}

/// Plans and runs a product on `device`, with scratch from the caching allocator.
///
/// # Safety
/// `a`, `b` and `c` must be live blocks of `device` holding op(A) (m*k), op(B) (k*n) and C
/// (m*n) values, `epi.bias` n values and `epi.scale` one value when nonzero, until the stream has
/// run the launches; `c` must not overlap `a` or `b`.
pub(crate) unsafe fn run_gemm(
    device: &Arc<CudaDevice>,
    s: &GemmShape,
    algo: GemmAlgo,
    epi: &Epilogue,
    a: u64,
    b: u64,
    c: u64,
) -> Result<()> {
    let plan = gemm_plan(s, algo, device.multiprocessors());
    let scratch = CudaStorage::alloc(device, plan.scratch_len(s))?;
    let calls = gemm_calls(s, &plan, epi, a, b, c, scratch.device_ptr())?;
    // SAFETY: upheld by the caller; the scratch block holds the partial sums and returns to the
    // cache after this call, which is safe because later users queue behind these launches on the
    // same stream.
    unsafe { device.run(&calls) }
}

/// `op(A) op(B)` as a new m x n matrix.
pub fn matmul(a: &CudaStorage, b: &CudaStorage, s: &GemmShape, algo: GemmAlgo) -> Result<CudaStorage> {
    const OP: &str = "matmul";
    check_len(OP, "left operand", a, s.m * s.k)?;
    check_len(OP, "right operand", b, s.k * s.n)?;
    let device = common_device(OP, &[a, b])?;
    let out = CudaStorage::alloc(&device, s.m * s.n)?;
    // SAFETY: the lengths were checked above; `out` is a fresh block.
    unsafe {
        run_gemm(
            &device,
            s,
            algo,
            &Epilogue::default(),
            a.device_ptr(),
            b.device_ptr(),
            out.device_ptr(),
        )
    }?;
    Ok(out)
}

/// `y = x w^T + b`: x `rows x d_in`, w `d_out x d_in`, b `d_out`.
pub fn linear_forward(
    x: &CudaStorage,
    w: &CudaStorage,
    b: Option<&CudaStorage>,
    rows: usize,
    d_in: usize,
    d_out: usize,
    algo: GemmAlgo,
) -> Result<CudaStorage> {
    const OP: &str = "linear";
    check_len(OP, "input", x, rows * d_in)?;
    check_len(OP, "weight", w, d_out * d_in)?;
    let mut operands = vec![x, w];
    if let Some(b) = b {
        check_len(OP, "bias", b, d_out)?;
        operands.push(b);
    }
    let device = common_device(OP, &operands)?;
    let out = CudaStorage::alloc(&device, rows * d_out)?;
    let s = GemmShape {
        m: rows,
        n: d_out,
        k: d_in,
        trans_a: false,
        trans_b: true,
    };
    let epi = Epilogue {
        bias: b.map_or(0, CudaStorage::device_ptr),
        ..Epilogue::default()
    };
    // SAFETY: the lengths were checked above; `out` is a fresh block.
    unsafe {
        run_gemm(
            &device,
            &s,
            algo,
            &epi,
            x.device_ptr(),
            w.device_ptr(),
            out.device_ptr(),
        )
    }?;
    Ok(out)
}

/// The launch that writes the column sums of a `rows x cols` matrix at `x` into `out` (cols
/// values): 32 columns per block, 8 row groups summed in a fixed order.
pub fn column_sum_calls(rows: usize, cols: usize, x: u64, out: u64) -> Result<Vec<KernelCall>> {
    const OP: &str = "sum_rows";
    if cols == 0 {
        return Ok(Vec::new());
    }
    dim(OP, "rows * cols", rows * cols)?;
    let p = ColumnSumParams {
        x,
        out,
        rows: dim(OP, "rows", rows)?,
        cols: dim(OP, "cols", cols)?,
    };
    Ok(vec![KernelCall::new(
        MODULE,
        "column_sum",
        (blocks_for(cols, 32), 1, 1),
        THREADS,
        &p,
    )])
}

/// The sums over rows of a `rows x cols` matrix (a linear layer's bias gradient).
pub fn column_sums(x: &CudaStorage, rows: usize, cols: usize) -> Result<CudaStorage> {
    check_len("sum_rows", "input", x, rows * cols)?;
    let device = x.device();
    let out = CudaStorage::alloc(&device, cols)?;
    let calls = column_sum_calls(rows, cols, x.device_ptr(), out.device_ptr())?;
    // SAFETY: x holds rows*cols values and out cols.
    unsafe { device.run(&calls) }?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(m: usize, n: usize, k: usize) -> GemmShape {
        GemmShape {
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
        }
    }

    #[test]
    fn plans_pick_the_kernel_of_the_transposes() {
        for (ta, tb, name) in [
            (false, false, "gemm_fp32_nn"),
            (false, true, "gemm_fp32_nt"),
            (true, false, "gemm_fp32_tn"),
            (true, true, "gemm_fp32_tt"),
        ] {
            let s = GemmShape {
                trans_a: ta,
                trans_b: tb,
                ..shape(10, 10, 10)
            };
            assert_eq!(gemm_plan(&s, GemmAlgo::Fp32Tiled, 132).kernel, name);
            let tf32 = gemm_plan(&s, GemmAlgo::Tf32Mma, 132).kernel;
            assert_eq!(tf32, name.replace("fp32", "tf32"));
        }
    }

    #[test]
    fn long_reductions_over_few_tiles_are_split() {
        // InfoNCE's dq: 16 x 128 over the 4096 queue entries.
        let s = shape(16, 128, 4096);
        let plan = gemm_plan(&s, GemmAlgo::Fp32Tiled, 132);
        assert!(plan.splits > 1, "{plan:?}");
        assert_eq!(plan.scratch_len(&s), plan.splits * 16 * 128);
        assert!(plan.split_len * plan.splits >= 4096);
        // A product with enough tiles is not.
        let plan = gemm_plan(&shape(4096, 4096, 512), GemmAlgo::Fp32Tiled, 132);
        assert_eq!((plan.splits, plan.scratch_len(&shape(4096, 4096, 512))), (1, 0));
    }

    #[test]
    fn empty_products_plan_no_launch() {
        let s = shape(0, 5, 3);
        let plan = gemm_plan(&s, GemmAlgo::Fp32Tiled, 132);
        assert!(
            gemm_calls(&s, &plan, &Epilogue::default(), 0, 0, 0, 0)
                .unwrap()
                .is_empty()
        );
    }
}
