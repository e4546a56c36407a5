//! 2-D convolution (cross-correlation, as torch.nn.Conv2d), NCHW, weights OIHW.
//!
//! The CPU path lowers each image to GEMMs through im2col, a block of output rows at a time (see
//! `LOWERED_PIXELS`); 1x1 stride-1 convolutions skip the lowering. In f32, 3x3 stride-1
//! convolutions with enough channels run through Winograd F(2x2, 3x3) instead ([`winograd`]);
//! f64, the precision of the gradient checks and of every GPU kernel's reference, always lowers,
//! so the reference is the convolution's plain sum. The transposed convolution runs through these
//! passes too (`ops::conv_transpose`).

use rayon::prelude::*;

use super::gemm::gemm_into;
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{DType, Element, Tensor};
use crate::with_cpu_dtype;

pub mod winograd;

/// Geometry of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
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

impl ConvGeom {
    pub fn h_out(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }
    pub fn w_out(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    /// Multiply-adds of the forward pass (each of the two backward passes costs the same).
    pub fn macs(&self) -> usize {
        self.n * self.c_out * self.h_out() * self.w_out() * self.c_in * self.kh * self.kw
    }

    pub fn of(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<ConvGeom> {
        let [n, c_in, h, wd] = x.dims4("conv2d")?;
        let [c_out, wc, kh, kw] = w.dims4("conv2d weight")?;
        if wc != c_in {
            return Err(Error::shape(
                "conv2d",
                format!("input has {c_in} channels, weight {:?} expects {wc}", w.shape()),
            ));
        }
        if stride == 0 || h + 2 * pad < kh || wd + 2 * pad < kw {
            return Err(Error::shape(
                "conv2d",
                format!("kernel {kh}x{kw} stride {stride} pad {pad} does not fit input {h}x{wd}"),
            ));
        }
        Ok(ConvGeom {
            n,
            c_in,
            h,
            w: wd,
            c_out,
            kh,
            kw,
            stride,
            pad,
        })
    }
}

/// Output pixels lowered at a time. The GEMMs of a U-Net's wide layers (32 or 64 channels at
/// 128 x 128 and up) ran at a fifth of the speed of the deep ones when whole images were
/// lowered: the unfolded matrix no longer fits in cache and its power-of-two row stride maps
/// every row of a packed panel to the same cache sets. Blocks of about this many pixels (whole
/// output rows), rows padded by [`LOWERED_ROW_PAD`], run them as fast as the deep layers
/// (docs/PERFORMANCE.md).
const LOWERED_PIXELS: usize = 512;
/// Elements added to each row of a lowered block, so that its row stride is no power of two.
const LOWERED_ROW_PAD: usize = 16;
/// Largest lowered block (elements) whose backward-data GEMMs run one per thread when images do
/// not fill the threads: measured at batch 1 on 2 threads, grouping cut 128 x 128 x 16 from 2.9
/// to 2.0 ms and 64 x 64 x 64 from 2.7 to 2.0 ms (blocks of 76K and 304K elements), and slowed
/// 32 x 32 x 128 from 1.9 to 3.2 ms (608K), where one buffer with the GEMM split inside stays.
const GROUPED_SCRATCH: usize = 1 << 19;
/// Most lowered blocks whose weight-gradient partials one task sums.
const BLOCKS_PER_PARTIAL: usize = 8;
/// Fewest weight-gradient partials when there are blocks enough: a small layer's few blocks
/// would otherwise all fall into one task and run on one thread.
const MIN_WEIGHT_PARTIALS: usize = 8;

/// Blocks each weight-gradient partial sums: at most `most`, fewer when that would leave fewer
/// than [`MIN_WEIGHT_PARTIALS`] partials. It depends on the geometry alone, so the summation
/// order, and so the result, does not depend on the number of threads.
pub(crate) fn blocks_per_partial(blocks: usize, most: usize) -> usize {
    blocks.div_ceil(MIN_WEIGHT_PARTIALS).clamp(1, most)
}

/// How one image's output rows are cut into lowered blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lowering {
    /// Output rows per block (the last block may have fewer).
    rows: usize,
    blocks: usize,
    /// Whole images per block of the weight gradient: more than one when an image has at most
    /// half a block of pixels, so that the GEMM's reduction is long enough to pay for reading
    /// and writing the c_out x depth gradient (the deepest U-Net layers: 8 x 8 pixels against a
    /// 512 x 4608 gradient).
    images: usize,
    /// Rows of the lowered matrix: c_in * kh * kw.
    depth: usize,
    /// Row stride of a lowered block of rows.
    ld: usize,
    /// Row stride of a lowered block of the weight gradient (`images` images' pixels).
    weight_ld: usize,
}

impl Lowering {
    fn of(g: &ConvGeom) -> Lowering {
        let (ho, wo) = (g.h_out(), g.w_out());
        let rows = (LOWERED_PIXELS / wo).clamp(1, ho.max(1));
        let images = (LOWERED_PIXELS / (ho * wo)).clamp(1, g.n.max(1));
        Lowering {
            rows,
            blocks: ho.div_ceil(rows),
            images,
            depth: g.c_in * g.kh * g.kw,
            ld: rows * wo + LOWERED_ROW_PAD,
            weight_ld: (rows * wo).max(images * ho * wo) + LOWERED_ROW_PAD,
        }
    }

    /// The weight gradient's blocks, in order: whole groups of `images` images, or blocks of
    /// rows of one image.
    fn weight_units(&self, g: &ConvGeom) -> Vec<WeightUnit> {
        let ho = g.h_out();
        if self.images > 1 {
            return (0..g.n)
                .step_by(self.images)
                .map(|first| WeightUnit {
                    first,
                    images: self.images.min(g.n - first),
                    rows: (0, ho),
                })
                .collect();
        }
        (0..g.n)
            .flat_map(|i| {
                (0..self.blocks).map(move |b| WeightUnit {
                    first: i,
                    images: 1,
                    rows: self.rows_of(b, ho),
                })
            })
            .collect()
    }

    /// Output rows `[oy0, oy1)` of block `b`.
    fn rows_of(&self, b: usize, ho: usize) -> (usize, usize) {
        (b * self.rows, ((b + 1) * self.rows).min(ho))
    }

    fn scratch_len(&self) -> usize {
        self.depth * self.ld
    }

    fn weight_scratch_len(&self) -> usize {
        self.depth * self.weight_ld
    }
}

/// One lowered block of the weight gradient: output rows `rows` of `images` consecutive images
/// from `first` (all rows when there are several).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct WeightUnit {
    first: usize,
    images: usize,
    rows: (usize, usize),
}

/// The columns `[lo, hi)` of an output row that read inside an input row at kernel column `kx`
/// (the others read padding): those with 0 <= ox * stride + kx - pad < w.
fn inside_columns(g: &ConvGeom, kx: usize) -> (usize, usize) {
    let wo = g.w_out();
    let lo = columns_below(g.pad.saturating_sub(kx), g.stride).min(wo);
    let hi = columns_below((g.w + g.pad).saturating_sub(kx), g.stride)
        .min(wo)
        .max(lo);
    (lo, hi)
}

/// The number of output columns ox >= 0 with ox * stride < `limit`.
fn columns_below(limit: usize, stride: usize) -> usize {
    limit.div_ceil(stride)
}

/// Unfolds output rows `[oy0, oy1)` of one (C, H, W) image into the (C*kh*kw) x ((oy1 - oy0) *
/// Wo) matrix of their receptive fields, rows `ld` apart.
fn im2col_rows<T: Element>(x: &[T], g: &ConvGeom, (oy0, oy1): (usize, usize), col: &mut [T], ld: usize) {
    let (h, w, wo) = (g.h, g.w, g.w_out());
    for ci in 0..g.c_in {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = (ci * g.kh + ky) * g.kw + kx;
                let dst = &mut col[row * ld..row * ld + (oy1 - oy0) * wo];
                let (lo, hi) = inside_columns(g, kx);
                for (oy, line) in (oy0..oy1).zip(dst.chunks_exact_mut(wo)) {
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    if iy < 0 || iy >= h as isize {
                        line.fill(T::zero());
                        continue;
                    }
                    let src = &x[(ci * h + iy as usize) * w..(ci * h + iy as usize + 1) * w];
                    line[..lo].fill(T::zero());
                    line[hi..].fill(T::zero());
                    if lo == hi {
                        continue;
                    }
                    let first = lo * g.stride + kx - g.pad;
                    if g.stride == 1 {
                        line[lo..hi].copy_from_slice(&src[first..first + hi - lo]);
                    } else {
                        let taps = src[first..].iter().step_by(g.stride);
                        line[lo..hi].iter_mut().zip(taps).for_each(|(v, x)| *v = *x);
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col_rows`]: adds each entry of the lowered block back into the (C, H, W)
/// image, its channels in parallel when `parallel` (when images do not run in parallel).
fn col2im_rows<T: Element>(col: &[T], g: &ConvGeom, rows: (usize, usize), ld: usize, x: &mut [T], parallel: bool) {
    let plane = g.h * g.w;
    if parallel {
        x.par_chunks_mut(plane)
            .enumerate()
            .for_each(|(ci, xc)| col2im_channel(col, g, rows, ld, ci, xc));
    } else {
        x.chunks_mut(plane)
            .enumerate()
            .for_each(|(ci, xc)| col2im_channel(col, g, rows, ld, ci, xc));
    }
}

/// [`col2im_rows`] for input channel `ci`, whose plane is `x`: channels touch disjoint planes, so
/// they can run in parallel with the same additions in the same order.
fn col2im_channel<T: Element>(col: &[T], g: &ConvGeom, (oy0, oy1): (usize, usize), ld: usize, ci: usize, x: &mut [T]) {
    let (h, w, wo) = (g.h, g.w, g.w_out());
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let row = (ci * g.kh + ky) * g.kw + kx;
            let src = &col[row * ld..row * ld + (oy1 - oy0) * wo];
            let (lo, hi) = inside_columns(g, kx);
            for (oy, line) in (oy0..oy1).zip(src.chunks_exact(wo)) {
                let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                if iy < 0 || iy >= h as isize || lo == hi {
                    continue;
                }
                let dst = &mut x[iy as usize * w..(iy as usize + 1) * w];
                let first = lo * g.stride + kx - g.pad;
                if g.stride == 1 {
                    let dst = &mut dst[first..first + hi - lo];
                    dst.iter_mut().zip(&line[lo..hi]).for_each(|(d, v)| *d += *v);
                } else {
                    let taps = dst[first..].iter_mut().step_by(g.stride);
                    taps.zip(&line[lo..hi]).for_each(|(d, v)| *d += *v);
                }
            }
        }
    }
}

/// Image `i` of a batch of `c`-channel images of `len` pixels a channel.
fn image<T>(t: &[T], i: usize, c: usize, len: usize) -> &[T] {
    &t[i * c * len..(i + 1) * c * len]
}

/// Whether per-sample work should run in parallel (else the GEMM inside parallelises).
fn per_sample_parallel(n: usize) -> bool {
    n >= rayon::current_num_threads()
}

/// A pointer that tasks on several threads write through, each to elements no other touches.
#[derive(Clone, Copy)]
struct DisjointWrites<T>(*mut T);
// SAFETY: only used for writes that the caller partitions between tasks (see its uses).
unsafe impl<T: Send> Send for DisjointWrites<T> {}
unsafe impl<T: Send> Sync for DisjointWrites<T> {}

/// Independent partial sums of a bias-gradient plane: one dependent chain of additions per
/// plane ran at a fraction of the machine's speed.
const BIAS_LANES: usize = 8;

/// dL/db: the sum of each output channel's gradient over the batch, each plane summed in
/// [`BIAS_LANES`] lanes (element j in lane j % BIAS_LANES) and the planes added in order.
fn bias_grad<T: Element>(g: &ConvGeom, dy: &[T]) -> Vec<T> {
    let hw = g.h_out() * g.w_out();
    let plane_sum = |plane: &[T]| {
        let mut lanes = [T::zero(); BIAS_LANES];
        let chunks = plane.chunks_exact(BIAS_LANES);
        let rest = chunks.remainder();
        for chunk in chunks {
            lanes.iter_mut().zip(chunk).for_each(|(l, &v)| *l += v);
        }
        lanes.iter_mut().zip(rest).for_each(|(l, &v)| *l += v);
        lanes.into_iter().fold(T::zero(), |s, l| s + l)
    };
    let mut db = vec![T::zero(); g.c_out];
    for i in 0..g.n {
        for (co, d) in db.iter_mut().enumerate() {
            *d += plane_sum(&dy[(i * g.c_out + co) * hw..(i * g.c_out + co + 1) * hw]);
        }
    }
    db
}

/// Whether the CPU runs this convolution through Winograd: f32 only (see the module's comment).
fn prefers_winograd<T: Element>(g: &ConvGeom) -> bool {
    T::DTYPE == DType::F32 && winograd::applies(g)
}

/// The CPU passes: Winograd where [`winograd::applies`] in f32, else the lowering
/// ([`lowered`]).
pub mod cpu {
    use super::*;

    pub fn forward<T: Element>(g: &ConvGeom, x: &[T], w: &[T], b: Option<&[T]>) -> Vec<T> {
        if prefers_winograd::<T>(g) {
            winograd::forward(g, x, w, b)
        } else {
            lowered::forward(g, x, w, b)
        }
    }

    pub fn backward_data<T: Element>(g: &ConvGeom, dy: &[T], w: &[T]) -> Vec<T> {
        if prefers_winograd::<T>(g) {
            winograd::backward_data(g, dy, w)
        } else {
            lowered::backward_data(g, dy, w)
        }
    }

    pub fn backward_weight<T: Element>(g: &ConvGeom, x: &[T], dy: &[T]) -> (Vec<T>, Vec<T>) {
        if prefers_winograd::<T>(g) {
            winograd::backward_weight(g, x, dy)
        } else {
            lowered::backward_weight(g, x, dy)
        }
    }
}

/// The passes as im2col + GEMM, any geometry and precision.
pub mod lowered {
    use super::*;
    use crate::ops::gemm::{RowStrides, gemm_strided, gemm_to_ptr};

    /// Every (image, block) pair is one task: their outputs are disjoint column ranges of the
    /// image's (c_out, Ho*Wo) matrix, and each output element is one GEMM dot product, so the
    /// result does not depend on the schedule.
    pub fn forward<T: Element>(g: &ConvGeom, x: &[T], w: &[T], b: Option<&[T]>) -> Vec<T> {
        let (ho, wo) = (g.h_out(), g.w_out());
        let hw = ho * wo;
        let mut y = vec![T::zero(); g.n * g.c_out * hw];
        if g.is_pointwise() {
            let outer = per_sample_parallel(g.n);
            let run = |(i, yi): (usize, &mut [T])| {
                let xi = image(x, i, g.c_in, g.h * g.w);
                gemm_into(g.c_out, hw, g.c_in, w, false, xi, false, yi, false, !outer);
            };
            if outer {
                y.par_chunks_mut(g.c_out * hw).enumerate().for_each(run);
            } else {
                y.chunks_mut(g.c_out * hw).enumerate().for_each(run);
            }
        } else {
            let low = Lowering::of(g);
            let out = DisjointWrites(y.as_mut_ptr());
            (0..g.n * low.blocks).into_par_iter().for_each(|task| {
                let (i, blk) = (task / low.blocks, task % low.blocks);
                let rows = low.rows_of(blk, ho);
                let cols = (rows.1 - rows.0) * wo;
                let xi = image(x, i, g.c_in, g.h * g.w);
                T::with_scratch(low.scratch_len(), |col| {
                    im2col_rows(xi, g, rows, col, low.ld);
                    let ld = RowStrides {
                        a: low.depth,
                        b: low.ld,
                        c: hw,
                    };
                    let c = out;
                    // SAFETY: this task alone writes columns [rows.0 * wo, + cols) of image i's
                    // c_out x hw output, which lies inside `y` (still alive) and is no input.
                    unsafe {
                        let at = c.0.add(i * g.c_out * hw + rows.0 * wo);
                        gemm_to_ptr(g.c_out, cols, low.depth, w, false, col, false, at, ld, false, false);
                    }
                });
            });
        }
        if let Some(b) = b {
            y.par_chunks_mut(hw).enumerate().for_each(|(plane, v)| {
                let bias = b[plane % g.c_out];
                v.iter_mut().for_each(|v| *v += bias);
            });
        }
        y
    }

    /// dL/dx from dL/dy. A block's receptive fields overlap its neighbours', so the blocks of an
    /// image are added into dx in order; images run in parallel when there are enough of them.
    /// Otherwise an image's blocks go in groups of one per thread: their GEMMs (independent)
    /// run in parallel, then each is added in order, channels in parallel (for blocks up to
    /// `GROUPED_SCRATCH`; wider ones split each GEMM instead). Either way every dx
    /// element receives the same additions in the same order, whatever the thread count.
    pub fn backward_data<T: Element>(g: &ConvGeom, dy: &[T], w: &[T]) -> Vec<T> {
        let (ho, wo) = (g.h_out(), g.w_out());
        let hw = ho * wo;
        let plane = g.c_in * g.h * g.w;
        let mut dx = vec![T::zero(); g.n * plane];
        let outer = per_sample_parallel(g.n);
        let low = Lowering::of(g);
        // dy rows of block `blk` times w^T into `col`, the GEMM split over threads if `parallel`.
        let lower_block = |dyi: &[T], blk: usize, col: &mut [T], parallel: bool| {
            let rows = low.rows_of(blk, ho);
            let ld = RowStrides {
                a: low.depth,
                b: hw,
                c: low.ld,
            };
            let cols = (rows.1 - rows.0) * wo;
            gemm_strided(
                low.depth,
                cols,
                g.c_out,
                w,
                true,
                &dyi[rows.0 * wo..],
                false,
                col,
                ld,
                false,
                parallel,
            );
        };
        if g.is_pointwise() {
            let run = |(i, dxi): (usize, &mut [T])| {
                gemm_into(
                    low.depth,
                    hw,
                    g.c_out,
                    w,
                    true,
                    image(dy, i, g.c_out, hw),
                    false,
                    dxi,
                    false,
                    !outer,
                );
            };
            if outer {
                dx.par_chunks_mut(plane).enumerate().for_each(run);
            } else {
                dx.chunks_mut(plane).enumerate().for_each(run);
            }
        } else if outer || low.scratch_len() > GROUPED_SCRATCH {
            // One image's blocks in order through one buffer: images in parallel, or (wide
            // blocks, where several buffers would leave the cache) each GEMM split inside.
            let blocks_in_order = |(i, dxi): (usize, &mut [T])| {
                let dyi = image(dy, i, g.c_out, hw);
                T::with_scratch(low.scratch_len(), |col| {
                    for blk in 0..low.blocks {
                        lower_block(dyi, blk, col, !outer);
                        col2im_rows(col, g, low.rows_of(blk, ho), low.ld, dxi, false);
                    }
                });
            };
            if outer {
                dx.par_chunks_mut(plane).enumerate().for_each(blocks_in_order);
            } else {
                dx.chunks_mut(plane).enumerate().for_each(blocks_in_order);
            }
        } else {
            let group = rayon::current_num_threads().clamp(1, low.blocks);
            T::with_scratch(group * low.scratch_len(), |buffers| {
                let mut cols: Vec<&mut [T]> = buffers.chunks_mut(low.scratch_len()).collect();
                for (i, dxi) in dx.chunks_mut(plane).enumerate() {
                    let dyi = image(dy, i, g.c_out, hw);
                    for first in (0..low.blocks).step_by(group) {
                        let count = group.min(low.blocks - first);
                        if count == 1 {
                            lower_block(dyi, first, cols[0], true);
                        } else {
                            cols[..count]
                                .par_iter_mut()
                                .enumerate()
                                .for_each(|(j, col)| lower_block(dyi, first + j, col, false));
                        }
                        for (j, col) in cols[..count].iter().enumerate() {
                            col2im_rows(col, g, low.rows_of(first + j, ho), low.ld, dxi, true);
                        }
                    }
                }
            });
        }
        dx
    }

    /// dL/dw (OIHW) and dL/db from dL/dy. Each task sums one run of lowered blocks in order (a
    /// length fixed by `blocks_per_partial`); the partials are then added in order, so CPU training is
    /// bitwise reproducible (and resumable) on any number of threads.
    pub fn backward_weight<T: Element>(g: &ConvGeom, x: &[T], dy: &[T]) -> (Vec<T>, Vec<T>) {
        let (ho, wo) = (g.h_out(), g.w_out());
        let hw = ho * wo;
        let low = Lowering::of(g);
        let partial = |units: &[WeightUnit], parallel_gemm: bool| -> Vec<T> {
            let mut dw = vec![T::zero(); g.c_out * low.depth];
            if g.is_pointwise() {
                let i = units[0].first;
                let (xi, dyi) = (image(x, i, g.c_in, g.h * g.w), image(dy, i, g.c_out, hw));
                gemm_into(
                    g.c_out,
                    low.depth,
                    hw,
                    dyi,
                    false,
                    xi,
                    true,
                    &mut dw,
                    false,
                    parallel_gemm,
                );
                return dw;
            }
            // Several images' dy side by side (their planes are c_out * hw apart, not hw).
            let mut dy_group = vec![T::zero(); if low.images > 1 { g.c_out * low.weight_ld } else { 0 }];
            T::with_scratch(low.weight_scratch_len(), |col| {
                for (u, unit) in units.iter().enumerate() {
                    let cols = unit.images * (unit.rows.1 - unit.rows.0) * wo;
                    for j in 0..unit.images {
                        let xi = image(x, unit.first + j, g.c_in, g.h * g.w);
                        im2col_rows(xi, g, unit.rows, &mut col[j * hw..], low.weight_ld);
                    }
                    let (dy_block, ld_dy) = if unit.images == 1 {
                        (&image(dy, unit.first, g.c_out, hw)[unit.rows.0 * wo..], hw)
                    } else {
                        for co in 0..g.c_out {
                            for j in 0..unit.images {
                                let plane = &dy[((unit.first + j) * g.c_out + co) * hw..][..hw];
                                dy_group[co * low.weight_ld + j * hw..][..hw].copy_from_slice(plane);
                            }
                        }
                        (&dy_group[..], low.weight_ld)
                    };
                    let ld = RowStrides {
                        a: ld_dy,
                        b: low.weight_ld,
                        c: low.depth,
                    };
                    gemm_strided(
                        g.c_out,
                        low.depth,
                        cols,
                        dy_block,
                        false,
                        col,
                        true,
                        &mut dw,
                        ld,
                        u > 0,
                        parallel_gemm,
                    );
                }
            });
            dw
        };
        let units = if g.is_pointwise() {
            (0..g.n)
                .map(|first| WeightUnit {
                    first,
                    images: 1,
                    rows: (0, ho),
                })
                .collect()
        } else {
            low.weight_units(g)
        };
        let runs: Vec<&[WeightUnit]> = units
            .chunks(if g.is_pointwise() {
                1
            } else {
                blocks_per_partial(units.len(), BLOCKS_PER_PARTIAL)
            })
            .collect();
        let partials: Vec<Vec<T>> = if runs.len() >= rayon::current_num_threads() {
            runs.par_iter().map(|run| partial(run, false)).collect()
        } else {
            runs.iter().map(|run| partial(run, true)).collect()
        };
        let mut dw = vec![T::zero(); g.c_out * low.depth];
        for part in &partials {
            dw.iter_mut().zip(part).for_each(|(x, y)| *x += *y);
        }
        (dw, bias_grad(g, dy))
    }
}

pub fn forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, pad: usize) -> Result<Tensor> {
    let g = ConvGeom::of(x, w, stride, pad)?;
    if let Some(b) = b
        && b.shape() != [g.c_out]
    {
        return Err(Error::shape(
            "conv2d",
            format!("bias shape {:?}, expected [{}]", b.shape(), g.c_out),
        ));
    }
    if !x.is_cpu() {
        return cuda::forward(&g, x, w, b);
    }
    let out_shape = vec![g.n, g.c_out, g.h_out(), g.w_out()];
    with_cpu_dtype!("conv2d", [x, w], T => {
        let b = match b { Some(b) => Some(b.as_slice::<T>()?), None => None };
        Ok(Tensor::cpu(out_shape, cpu::forward(&g, x.as_slice::<T>()?, w.as_slice::<T>()?, b)))
    })
}

pub fn backward_data(g: &ConvGeom, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !dy.is_cpu() {
        return cuda::backward_data(g, dy, w);
    }
    with_cpu_dtype!("conv2d backward", [dy, w], T => {
        Ok(Tensor::cpu(vec![g.n, g.c_in, g.h, g.w], cpu::backward_data(g, dy.as_slice::<T>()?, w.as_slice::<T>()?)))
    })
}

pub fn backward_weight(g: &ConvGeom, x: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    if !dy.is_cpu() {
        return cuda::backward_weight(g, x, dy);
    }
    with_cpu_dtype!("conv2d backward", [x, dy], T => {
        let (dw, db) = cpu::backward_weight(g, x.as_slice::<T>()?, dy.as_slice::<T>()?);
        Ok((Tensor::cpu(vec![g.c_out, g.c_in, g.kh, g.kw], dw), Tensor::cpu(vec![g.c_out], db)))
    })
}

/// The CUDA branch: the kernels of `device::cuda::conv`, with the device's convolution algorithm.
pub(super) mod cuda {
    use super::ConvGeom;
    use crate::device::cuda::{CudaStorage, conv};
    use crate::error::{Error, Result};
    use crate::tensor::{Storage, Tensor};

    /// The CUDA storage of an operand, or an error naming the operand left on the CPU.
    pub(in crate::ops) fn storage<'a>(op: &'static str, what: &str, t: &'a Tensor) -> Result<&'a CudaStorage> {
        t.cuda_storage()
            .ok_or_else(|| Error::Device(format!("{op}: the {what} is on the CPU, the other operands on CUDA")))
    }

    pub(in crate::ops) fn tensor(shape: Vec<usize>, s: CudaStorage) -> Tensor {
        Tensor::from_storage(shape, Storage::Cuda(s))
    }

    pub(super) fn forward(g: &ConvGeom, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let xs = storage("conv2d", "input", x)?;
        let ws = storage("conv2d", "weight", w)?;
        let bs = b.map(|b| storage("conv2d", "bias", b)).transpose()?;
        let y = conv::conv2d_forward(g, xs, ws, bs, xs.device().conv_algo())?;
        Ok(tensor(vec![g.n, g.c_out, g.h_out(), g.w_out()], y))
    }

    pub(super) fn backward_data(g: &ConvGeom, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
        let dys = storage("conv2d backward", "output gradient", dy)?;
        let ws = storage("conv2d backward", "weight", w)?;
        let dx = conv::conv2d_backward_data(g, dys, ws, dys.device().conv_algo())?;
        Ok(tensor(vec![g.n, g.c_in, g.h, g.w], dx))
    }

    pub(super) fn backward_weight(g: &ConvGeom, x: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        let xs = storage("conv2d backward", "input", x)?;
        let dys = storage("conv2d backward", "output gradient", dy)?;
        let (dw, db) = conv::conv2d_backward_weight(g, xs, dys, dys.device().conv_algo())?;
        Ok((tensor(vec![g.c_out, g.c_in, g.kh, g.kw], dw), tensor(vec![g.c_out], db)))
    }
}

impl Tape {
    /// `torch.nn.functional.conv2d(x, w, b, stride, padding)`.
    pub fn conv2d(&mut self, x: Var, w: Var, b: Option<Var>, stride: usize, pad: usize) -> Result<Var> {
        let _range = crate::profile::range("conv2d");
        let g = ConvGeom::of(self.value(x), self.value(w), stride, pad)?;
        let out = forward(self.value(x), self.value(w), b.map(|b| self.value(b)), stride, pad)?;
        let inputs: Vec<Var> = [Some(x), Some(w), b].into_iter().flatten().collect();
        Ok(self.record("conv2d", out, &inputs, move |ctx| {
            let gx = if ctx.needs_grad(0) {
                Some(backward_data(&g, ctx.grad, ctx.input(1))?)
            } else {
                None
            };
            let wants_w = ctx.needs_grad(1) || (ctx.input_count() == 3 && ctx.needs_grad(2));
            let (gw, gb) = if wants_w {
                let (gw, gb) = backward_weight(&g, ctx.input(0), ctx.grad)?;
                (Some(gw), Some(gb))
            } else {
                (None, None)
            };
            let mut grads = vec![gx, gw];
            if ctx.input_count() == 3 {
                grads.push(gb);
            }
            Ok(grads)
        }))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Calls `f(y index, x index, w index)` for every product of the convolution's definition:
    /// y[i][co][oy][ox] = b[co] + sum over (ci, ky, kx) of x[i][ci][oy*s + ky - pad][ox*s + kx
    /// - pad] w[co][ci][ky][kx], padding reading zero.
    pub(super) fn for_each_product(g: &ConvGeom, mut f: impl FnMut(usize, usize, usize)) {
        let (ho, wo) = (g.h_out(), g.w_out());
        for i in 0..g.n {
            for co in 0..g.c_out {
                for oy in 0..ho {
                    for ox in 0..wo {
                        for ci in 0..g.c_in {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                    let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                        continue;
                                    }
                                    f(
                                        ((i * g.c_out + co) * ho + oy) * wo + ox,
                                        ((i * g.c_in + ci) * g.h + iy as usize) * g.w + ix as usize,
                                        ((co * g.c_in + ci) * g.kh + ky) * g.kw + kx,
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The convolution's output (with the bias) and, for the output gradient `dy`, the input and
    /// weight gradients, each summed from the definition's products in f64.
    pub(super) fn definition(
        g: &ConvGeom,
        x: &[f64],
        w: &[f64],
        b: &[f64],
        dy: &[f64],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let hw = g.h_out() * g.w_out();
        let mut y: Vec<f64> = (0..dy.len()).map(|j| b[(j / hw) % g.c_out]).collect();
        let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
        for_each_product(g, |yi, xi, wi| {
            y[yi] += x[xi] * w[wi];
            dx[xi] += dy[yi] * w[wi];
            dw[wi] += dy[yi] * x[xi];
        });
        (y, dx, dw)
    }

    pub(super) fn random(rng: &mut Rng, len: usize) -> Vec<f64> {
        (0..len).map(|_| rng.range(-1.0, 1.0)).collect()
    }

    pub(super) fn assert_near(what: &str, got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{what}: lengths differ");
        // Both sides sum the same products in f64, in different orders: at most a few ulps of
        // the sum of |terms| (< 600 terms of magnitude < 1 here), far below 1e-12.
        let (i, err) = got
            .iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs())
            .enumerate()
            .fold((0, 0.0), |best, (i, e)| if e > best.1 { (i, e) } else { best });
        assert!(
            err <= 1e-12,
            "{what}: element {i} got {} want {} (error {err:e})",
            got[i],
            want[i]
        );
    }

    /// Shapes whose output rows span several lowered blocks (with a short last one), rows
    /// wider than a block, strides, paddings larger than the kernel reaches, and 1x1 kernels
    /// that are not pointwise.
    fn geometries() -> Vec<ConvGeom> {
        let g = |n, c_in, h, w, c_out, kh, kw, stride, pad| ConvGeom {
            n,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            stride,
            pad,
        };
        vec![
            g(3, 2, 41, 37, 3, 3, 3, 1, 1),  // 13 rows a block, 4 blocks, the last of 2 rows
            g(1, 2, 5, 600, 2, 3, 3, 1, 1),  // a row wider than a block: one row a block
            g(2, 3, 30, 30, 2, 2, 2, 2, 0),  // the U-Net's downsampling shape, strided
            g(2, 2, 23, 19, 3, 3, 3, 2, 1),  // stride 2 with padding, odd sizes
            g(1, 2, 9, 11, 2, 5, 3, 1, 2),   // non-square kernel
            g(2, 1, 7, 6, 2, 3, 3, 1, 3),    // padding wider than the kernel reaches
            g(2, 3, 12, 10, 2, 1, 1, 2, 0),  // 1x1 strided: lowered, not pointwise
            g(2, 3, 31, 33, 4, 1, 1, 1, 0),  // pointwise
            g(18, 2, 20, 26, 2, 3, 3, 1, 1), // more images than threads, 20 rows a block
            g(2, 2, 100, 60, 2, 3, 3, 1, 1), // 13 blocks: two weight-gradient partials an image
            g(7, 2, 9, 9, 3, 3, 3, 1, 1),    // weight gradient: 6 images a block, then 1
            g(19, 2, 10, 20, 2, 3, 3, 1, 1), // 2 images a block, 10 blocks: two partials
        ]
    }

    #[test]
    fn lowered_blocks_match_the_definition_in_every_pass() {
        let mut rng = Rng::new(11);
        for g in geometries() {
            let (ho, wo) = (g.h_out(), g.w_out());
            let x = random(&mut rng, g.n * g.c_in * g.h * g.w);
            let w = random(&mut rng, g.c_out * g.c_in * g.kh * g.kw);
            let b = random(&mut rng, g.c_out);
            let dy = random(&mut rng, g.n * g.c_out * ho * wo);
            let low = Lowering::of(&g);
            let name = format!(
                "{g:?} ({} blocks of {} rows, {} images a weight block)",
                low.blocks, low.rows, low.images
            );

            // Forward, and the two backward passes as the adjoints of the same products.
            let (want_y, want_dx, want_dw) = definition(&g, &x, &w, &b, &dy);
            let want_db: Vec<f64> = (0..g.c_out)
                .map(|co| {
                    (0..g.n)
                        .flat_map(|i| &dy[(i * g.c_out + co) * ho * wo..][..ho * wo])
                        .sum()
                })
                .collect();
            assert_near(&format!("forward {name}"), &cpu::forward(&g, &x, &w, Some(&b)), &want_y);
            assert_near(
                &format!("backward-data {name}"),
                &cpu::backward_data(&g, &dy, &w),
                &want_dx,
            );
            let (dw, db) = cpu::backward_weight(&g, &x, &dy);
            assert_near(&format!("backward-weight {name}"), &dw, &want_dw);
            assert_near(&format!("bias gradient {name}"), &db, &want_db);
        }
    }

    /// Every pass gives the same bits on any number of threads: tasks write disjoint outputs or
    /// partials summed in a fixed order, and a GEMM split over threads (one image, fewer tasks
    /// than threads) splits its output, not its reduction.
    #[test]
    fn results_do_not_depend_on_the_number_of_threads() {
        let mut rng = Rng::new(12);
        let f32s = |rng: &mut Rng, len: usize| -> Vec<f32> { (0..len).map(|_| rng.range(-1.0, 1.0) as f32).collect() };
        let geometries = [
            geometries()[0],
            // One image: the GEMMs parallelise inside.
            ConvGeom {
                n: 1,
                c_in: 8,
                h: 40,
                w: 40,
                c_out: 8,
                kh: 3,
                kw: 3,
                stride: 1,
                pad: 1,
            },
            geometries()[geometries().len() - 1],
            // Few blocks: one per weight-gradient partial (five of 64 Winograd tiles, six
            // lowered blocks).
            ConvGeom {
                n: 3,
                c_in: 16,
                h: 20,
                w: 20,
                c_out: 16,
                kh: 3,
                kw: 3,
                stride: 1,
                pad: 1,
            },
            // Winograd: nine blocks of 512 tiles, five weight-gradient partials.
            ConvGeom {
                n: 2,
                c_in: 16,
                h: 100,
                w: 90,
                c_out: 16,
                kh: 3,
                kw: 3,
                stride: 1,
                pad: 1,
            },
        ];
        for g in geometries {
            let x = f32s(&mut rng, g.n * g.c_in * g.h * g.w);
            let w = f32s(&mut rng, g.c_out * g.c_in * g.kh * g.kw);
            let b = f32s(&mut rng, g.c_out);
            let dy = f32s(&mut rng, g.n * g.c_out * g.h_out() * g.w_out());
            // The lowering and, where it takes the geometry, Winograd, both in f32.
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| {
                    let (dw, db) = lowered::backward_weight(&g, &x, &dy);
                    let mut passes = vec![
                        lowered::forward(&g, &x, &w, Some(&b)),
                        lowered::backward_data(&g, &dy, &w),
                        dw,
                        db,
                    ];
                    if winograd::takes(&g) {
                        let (dw, db) = winograd::backward_weight(&g, &x, &dy);
                        passes.extend([
                            winograd::forward(&g, &x, &w, Some(&b)),
                            winograd::backward_data(&g, &dy, &w),
                            dw,
                            db,
                        ]);
                    }
                    passes
                        .iter()
                        .map(|v| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>())
                        .collect::<Vec<_>>()
                })
            };
            let one = run(1);
            for threads in [2, 3, 5] {
                assert!(run(threads) == one, "{g:?}: {threads} threads differ from one");
            }
        }
    }

    #[test]
    fn blocks_cover_the_output_rows_once() {
        for (ho, wo) in [(1, 1), (7, 600), (41, 37), (128, 128), (256, 256), (5, 512), (3, 513)] {
            let g = ConvGeom {
                n: 1,
                c_in: 3,
                h: ho,
                w: wo,
                c_out: 1,
                kh: 3,
                kw: 3,
                stride: 1,
                pad: 1,
            };
            let low = Lowering::of(&g);
            let mut next = 0;
            for b in 0..low.blocks {
                let (oy0, oy1) = low.rows_of(b, ho);
                assert_eq!(oy0, next, "{ho}x{wo}: block {b} starts at row {oy0}");
                assert!(
                    oy1 > oy0 && (oy1 - oy0) * wo <= LOWERED_PIXELS.max(wo),
                    "{ho}x{wo}: block {b}"
                );
                next = oy1;
            }
            assert_eq!(next, ho, "{ho}x{wo}: blocks end at row {next}");
            for ld in [low.ld, low.weight_ld] {
                assert!(!ld.is_power_of_two(), "{ho}x{wo}: row stride {ld} is a power of two");
            }
        }
    }
}
