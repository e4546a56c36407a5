//! Winograd F(2x2, 3x3) for the CPU's 3x3 stride-1 convolutions (Lavin and Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016).
//!
//! Each 2 x 2 output tile is `A^T [(G w G^T) . (B^T d B)] A` for the 4 x 4 input patch `d` under
//! it: summed over input channels, the element-wise products become 16 GEMMs (one per point of
//! the 4 x 4 transform) of c_out x c_in by c_in x tiles, 16 multiply-adds per input channel and
//! tile where the direct convolution spends 36: 2.25 times fewer. Backward-data is the forward
//! pass on dy with the kernel flipped and transposed; backward-weight is the adjoint of the
//! forward pass, `G^T [sum over tiles of (A dY A^T) . (B^T d B)] G`. The transforms' entries are
//! 0, +-1 and +-1/2, so the rounding stays close to the direct sum's (the tests bound it).
//!
//! Tiles of all images are numbered in one sequence (image, tile row, tile column) and cut into
//! blocks of 64 to 1024 tiles (`Blocking::tiles`): one block's transformed inputs and products
//! stay in cache, and small deep-layer images share a block, so their GEMMs are not starved of
//! columns.

use rayon::prelude::*;

use super::{ConvGeom, DisjointWrites};
use crate::ops::gemm::{RowStrides, gemm_strided};
use crate::tensor::Element;

/// Points of the 4 x 4 transform: one GEMM each.
const POINTS: usize = 16;
/// Transformed values (inputs and products) a block keeps, in elements: 1 MiB in f32, a core's
/// L2 cache on the machines measured (docs/PERFORMANCE.md).
const BLOCK_BUDGET: usize = 1 << 18;
/// Fewest and most tiles a block holds, whatever the channel counts.
const MIN_BLOCK_TILES: usize = 64;
const MAX_BLOCK_TILES: usize = 1024;
/// Elements added to each row of a block's matrices, so that its row stride is no power of two
/// (the lowering's reason, `super::LOWERED_ROW_PAD`).
const ROW_PAD: usize = 16;
/// Most blocks whose weight-gradient partials one task sums (fewer for small layers, by
/// `super::blocks_per_partial`, which depends on the geometry alone).
const BLOCKS_PER_PARTIAL: usize = 4;
/// Fewest channels on each side for Winograd to pay on the CPU: with fewer, the GEMMs'
/// reductions are too short to pay for the transforms' extra memory traffic (8 -> 8 and 8 -> 16
/// at 64 x 64 ran forward and backward-data 10-35% slower than the lowering; 16 -> 16 ran
/// faster; docs/PERFORMANCE.md).
const MIN_CHANNELS: usize = 16;

/// Whether the passes can compute this convolution at all: 3 x 3, stride 1, padding at most 2
/// (backward-data pads by 2 - pad).
pub fn takes(g: &ConvGeom) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pad <= 2
}

/// Work below which the lowering is faster, in `c^2 * pixels` (`c` the smaller channel count,
/// `pixels` the batch's output pixels), i.e. `c * sqrt(pixels)` of 3072. Winograd's transforms
/// cost per tile and channel, its GEMMs per tile and channel pair, and its transform loops
/// vectorise along a tile row: few channels, small images or small batches leave the transforms
/// the larger part. Measured (2 threads, c_in = c_out, each pass): break-even near
/// `c * sqrt(pixels)` = 2048 (batch 4: 8 x 8 at 256 channels, 16 x 16 at 64, 32 x 32 at 32,
/// 64 x 64 at 16), the lowering up to 2.7x faster below it, Winograd 1.1-1.6x faster from 4096
/// up (docs/PERFORMANCE.md).
const MIN_WORK: usize = 3072 * 3072;

/// Whether the engine runs this convolution through Winograd: it [`takes`] it, with enough
/// channels on both sides (16, `MIN_CHANNELS`) and enough work (`MIN_WORK`).
pub fn applies(g: &ConvGeom) -> bool {
    let c = g.c_in.min(g.c_out);
    takes(g) && c >= MIN_CHANNELS && c * c * g.n * g.h_out() * g.w_out() >= MIN_WORK
}

/// How the batch's output tiles are numbered and cut into blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Blocking {
    /// Tile rows and columns of one image (the last row and column may stick out of the output).
    rows: usize,
    cols: usize,
    /// Tiles of the whole batch.
    total: usize,
    /// Tiles a block (the last block may have fewer).
    tiles: usize,
    blocks: usize,
    /// Row stride of a block's matrices.
    ld: usize,
}

/// Tiles a block holds when the caller does not choose: as many as [`BLOCK_BUDGET`] allows.
fn default_block_tiles(g: &ConvGeom) -> usize {
    (BLOCK_BUDGET / (POINTS * (g.c_in + g.c_out))).clamp(MIN_BLOCK_TILES, MAX_BLOCK_TILES)
}

impl Blocking {
    /// Blocks of at most `tiles` tiles (at least one).
    fn new(g: &ConvGeom, tiles: usize) -> Blocking {
        let (rows, cols) = (g.h_out().div_ceil(2), g.w_out().div_ceil(2));
        let total = g.n * rows * cols;
        let tiles = tiles.clamp(1, total.max(1));
        Blocking {
            rows,
            cols,
            total,
            tiles,
            blocks: total.div_ceil(tiles),
            ld: tiles + ROW_PAD,
        }
    }

    /// Tiles `[t0, t1)` of block `b`.
    fn range(&self, b: usize) -> (usize, usize) {
        (b * self.tiles, ((b + 1) * self.tiles).min(self.total))
    }

    /// (image, tile row, tile column) of tile `t`.
    fn locate(&self, t: usize) -> (usize, usize, usize) {
        let per_image = self.rows * self.cols;
        (t / per_image, (t % per_image) / self.cols, t % self.cols)
    }
}

/// A convolution's kernels transformed, `G w G^T` of every 3 x 3 kernel as 16 matrices of c_out
/// x c_in: `u[(p * c_out + co) * c_in + ci]` (`w` is OIHW).
struct Kernels<T> {
    u: Vec<T>,
    c_out: usize,
    c_in: usize,
}

/// Index 0 and 3 of the transform swapped: `G J = P G` for the 3 x 3 reversal J, with P this
/// swap, so a kernel flipped in both directions transforms to `U[FLIP[a]][FLIP[b]]`.
const FLIP: [usize; 4] = [3, 1, 2, 0];

impl<T: Element> Kernels<T> {
    fn of(w: &[T], c_out: usize, c_in: usize) -> Kernels<T> {
        let count = c_out * c_in;
        assert_eq!(w.len(), count * 9, "winograd: weights are not c_out x c_in x 3 x 3");
        let mut u = Vec::with_capacity(POINTS * count);
        transform_weights(w, count, &mut u.spare_capacity_mut()[..POINTS * count]);
        // SAFETY: `transform_weights` wrote all POINTS * count elements.
        unsafe { u.set_len(POINTS * count) };
        Kernels { u, c_out, c_in }
    }

    /// Point `p`'s matrix as a GEMM's left operand (c_out x c_in, rows c_in apart) or, for
    /// backward-data's kernels (flipped, channel axes swapped), point FLIP(p)'s, which the GEMM
    /// reads transposed (c_in x c_out, the same storage).
    fn point(&self, p: usize, flipped: bool) -> &[T] {
        let p = if flipped { FLIP[p / 4] * 4 + FLIP[p % 4] } else { p };
        let n = self.c_out * self.c_in;
        &self.u[p * n..][..n]
    }
}

/// Kernel runs a task of the weight transforms takes: below this many runs in all, the
/// transforms run on the calling thread.
const RUNS_PER_TASK: usize = 16;

/// Writes `G g G^T` of each of `count` kernels into `u[p * count + k]`, every element once, a
/// [`RUN`] of kernels at a time (in parallel when there are many).
fn transform_weights<T: Element>(w: &[T], count: usize, u: &mut [std::mem::MaybeUninit<T>]) {
    assert!(w.len() >= count * 9 && u.len() >= POINTS * count);
    let out = DisjointWrites(u.as_mut_ptr());
    let task = |first_run: usize| {
        for k0 in (first_run * RUN..count).step_by(RUN).take(RUNS_PER_TASK) {
            // SAFETY: `u` holds POINTS * count elements (asserted) and outlives the tasks; run
            // [k0, k0 + RUN) is this task's alone, and its elements in each point's matrix are
            // written by this call only.
            unsafe { transform_kernel_run(w, count, k0, out) };
        }
    };
    let tasks = count.div_ceil(RUN * RUNS_PER_TASK);
    if tasks > 1 {
        (0..tasks).into_par_iter().for_each(|t| task(t * RUNS_PER_TASK));
    } else {
        task(0);
    }
}

/// [`transform_weights`] of kernels `[k0, k0 + RUN)` (fewer at the end) as arrays.
///
/// # Safety
/// `u` must be valid for writes of `POINTS * count` elements, and no other thread may write the
/// elements of these kernels during the call.
#[inline(always)]
unsafe fn transform_kernel_run_portable<T: Element>(
    w: &[T],
    count: usize,
    k0: usize,
    u: DisjointWrites<std::mem::MaybeUninit<T>>,
) {
    let half = T::of(0.5);
    let len = RUN.min(count - k0);
    let mut g = [[T::zero(); RUN]; 9];
    for (l, kernel) in w[k0 * 9..(k0 + len) * 9].chunks_exact(9).enumerate() {
        for (j, &v) in kernel.iter().enumerate() {
            g[j][l] = v;
        }
    }
    // G g: rows g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2 of each kernel's rows.
    let mut t = [[[T::zero(); RUN]; 3]; 4];
    for c in 0..3 {
        let (g0, g1, g2) = (&g[c], &g[3 + c], &g[6 + c]);
        for l in 0..len {
            t[0][c][l] = g0[l];
            t[1][c][l] = (g0[l] + g1[l] + g2[l]) * half;
            t[2][c][l] = (g0[l] - g1[l] + g2[l]) * half;
            t[3][c][l] = g2[l];
        }
    }
    // (G g) G^T: the same combinations along each row.
    for (a, [t0, t1, t2]) in t.iter().enumerate() {
        // SAFETY: point (a, b)'s elements of these kernels, inside `u` and this call's alone
        // (the caller's contract).
        let row = |b: usize| unsafe { std::slice::from_raw_parts_mut(u.0.add((a * 4 + b) * count + k0), len) };
        for (l, d) in row(0).iter_mut().enumerate() {
            d.write(t0[l]);
        }
        for (l, d) in row(1).iter_mut().enumerate() {
            d.write((t0[l] + t1[l] + t2[l]) * half);
        }
        for (l, d) in row(2).iter_mut().enumerate() {
            d.write((t0[l] - t1[l] + t2[l]) * half);
        }
        for (l, d) in row(3).iter_mut().enumerate() {
            d.write(t2[l]);
        }
    }
}

/// Tiles transformed together: the transforms run along a tile row on arrays this long, which
/// the compiler vectorises across tiles.
const RUN: usize = 64;

/// One stretch of a block's tiles along one tile row: image, tile row, tile columns `[tx0,
/// tx1)` (at most [`RUN`]), and the block column `j` of its first tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    image: usize,
    ty: usize,
    tx0: usize,
    tx1: usize,
    j: usize,
}

impl Run {
    fn len(&self) -> usize {
        self.tx1 - self.tx0
    }
}

/// The runs of tiles `[t0, t1)`, in order.
fn runs(blk: &Blocking, (t0, t1): (usize, usize)) -> Vec<Run> {
    let mut out = Vec::new();
    let mut t = t0;
    while t < t1 {
        let (image, ty, tx0) = blk.locate(t);
        let tx1 = (tx0 + RUN).min(blk.cols).min(tx0 + t1 - t);
        out.push(Run {
            image,
            ty,
            tx0,
            tx1,
            j: t - t0,
        });
        t += tx1 - tx0;
    }
    out
}

/// Even and odd columns `first + 2 k` and `first + 2 k + 1` of a row for k in `0..=len`,
/// reading zero outside `[0, row.len())`.
#[inline(always)]
fn split_columns<T: Element>(row: &[T], first: isize, len: usize, even: &mut [T], odd: &mut [T]) {
    let w = row.len() as isize;
    // Pairs k in [lo, hi) lie wholly inside the row; the few others (at most one at each end
    // for paddings up to 2) are read column by column.
    let lo = if first < 0 { ((1 - first) / 2) as usize } else { 0 }.min(len + 1);
    let hi = if w - 2 - first >= 0 {
        ((w - 2 - first) / 2 + 1) as usize
    } else {
        0
    }
    .clamp(lo, len + 1);
    let at = |c: isize| if c >= 0 && c < w { row[c as usize] } else { T::zero() };
    for k in (0..lo).chain(hi..=len) {
        even[k] = at(first + 2 * k as isize);
        odd[k] = at(first + 2 * k as isize + 1);
    }
    if lo < hi {
        let from = &row[(first + 2 * lo as isize) as usize..][..2 * (hi - lo)];
        for ((e, o), pair) in even[lo..hi].iter_mut().zip(&mut odd[lo..hi]).zip(from.chunks_exact(2)) {
            *e = pair[0];
            *o = pair[1];
        }
    }
}

/// `B^T d B` of every input patch of tiles `[t0, t1)`, for every channel: `v[(p * c_in + ci) *
/// ld + j]` for tile `t0 + j`. Patch pixels outside the image read zero.
#[inline(always)]
fn transform_inputs_portable<T: Element>(x: &[T], g: &ConvGeom, blk: &Blocking, range: (usize, usize), v: &mut [T]) {
    let runs = runs(blk, range);
    let pad = g.pad as isize;
    // Reused from run to run: every entry a run reads is written first.
    let mut e = [[[T::zero(); RUN]; 4]; 4];
    let (mut even, mut odd) = ([T::zero(); RUN + 1], [T::zero(); RUN + 1]);
    for ci in 0..g.c_in {
        for run in &runs {
            let plane = &x[(run.image * g.c_in + ci) * g.h * g.w..][..g.h * g.w];
            let len = run.len();
            // d B along each of the patch's four rows: e[r][b][k] for tile tx0 + k, from the
            // row's even and odd columns (B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]).
            for (r, er) in e.iter_mut().enumerate() {
                let y = 2 * run.ty as isize + r as isize - pad;
                if y < 0 || y >= g.h as isize {
                    er.iter_mut().for_each(|eb| eb[..len].fill(T::zero()));
                    continue;
                }
                let row = &plane[y as usize * g.w..][..g.w];
                split_columns(row, 2 * run.tx0 as isize - pad, len, &mut even, &mut odd);
                for k in 0..len {
                    er[0][k] = even[k] - even[k + 1];
                    er[1][k] = odd[k] + even[k + 1];
                    er[2][k] = even[k + 1] - odd[k];
                    er[3][k] = odd[k] - odd[k + 1];
                }
            }
            // B^T (d B) down the rows.
            let [e0s, e1s, e2s, e3s] = &e;
            for (b, (((e0, e1), e2), e3)) in e0s.iter().zip(e1s).zip(e2s).zip(e3s).enumerate() {
                let at = |a: usize| ((a * 4 + b) * g.c_in + ci) * blk.ld + run.j;
                let out = &mut v[at(0)..][..len];
                out.iter_mut().enumerate().for_each(|(k, o)| *o = e0[k] - e2[k]);
                let out = &mut v[at(1)..][..len];
                out.iter_mut().enumerate().for_each(|(k, o)| *o = e1[k] + e2[k]);
                let out = &mut v[at(2)..][..len];
                out.iter_mut().enumerate().for_each(|(k, o)| *o = e2[k] - e1[k]);
                let out = &mut v[at(3)..][..len];
                out.iter_mut().enumerate().for_each(|(k, o)| *o = e1[k] - e3[k]);
            }
        }
    }
}

/// `A dY A^T` of every output tile of tiles `[t0, t1)`, for every output channel: `m[(p * c_out
/// + co) * ld + j]`. Tile pixels outside the output read zero (they do not exist).
#[inline(always)]
fn transform_output_grads_portable<T: Element>(
    dy: &[T],
    g: &ConvGeom,
    blk: &Blocking,
    range: (usize, usize),
    m: &mut [T],
) {
    let runs = runs(blk, range);
    let (ho, wo) = (g.h_out(), g.w_out());
    // Reused from run to run: every entry a run reads is written first.
    let mut cols = [[[T::zero(); RUN + 1]; 2]; 2];
    let (mut even, mut odd) = ([[T::zero(); RUN]; 4], [[T::zero(); RUN]; 4]);
    for co in 0..g.c_out {
        for run in &runs {
            let plane = &dy[(run.image * g.c_out + co) * ho * wo..][..ho * wo];
            let len = run.len();
            // The tile's two rows split into even and odd columns (zero past the output).
            for (r, [even, odd]) in cols.iter_mut().enumerate() {
                let y = 2 * run.ty + r;
                if y < ho {
                    split_columns(&plane[y * wo..][..wo], 2 * run.tx0 as isize, len, even, odd);
                } else {
                    even[..=len].fill(T::zero());
                    odd[..=len].fill(T::zero());
                }
            }
            // A = [1 0; 1 1; 1 -1; 0 -1]: the four rows of A d...
            let [[e0, o0], [e1, o1]] = &cols;
            for k in 0..len {
                (even[0][k], odd[0][k]) = (e0[k], o0[k]);
                (even[1][k], odd[1][k]) = (e0[k] + e1[k], o0[k] + o1[k]);
                (even[2][k], odd[2][k]) = (e0[k] - e1[k], o0[k] - o1[k]);
                (even[3][k], odd[3][k]) = (-e1[k], -o1[k]);
            }
            // ... and their columns times A^T.
            for (a, (even, odd)) in even.iter().zip(&odd).enumerate() {
                let at = |b: usize| ((a * 4 + b) * g.c_out + co) * blk.ld + run.j;
                m[at(0)..][..len].copy_from_slice(&even[..len]);
                let out = &mut m[at(1)..][..len];
                out.iter_mut().enumerate().for_each(|(k, o)| *o = even[k] + odd[k]);
                let out = &mut m[at(2)..][..len];
                out.iter_mut().enumerate().for_each(|(k, o)| *o = even[k] - odd[k]);
                let out = &mut m[at(3)..][..len];
                out.iter_mut().enumerate().for_each(|(k, o)| *o = -odd[k]);
            }
        }
    }
}

/// `A^T m A` of every tile's 16 products, plus the bias, into the output tiles that exist.
///
/// # Safety
/// `y` must be valid for writes of the whole (n, c_out, Ho, Wo) output, and no other thread may
/// write the output pixels of tiles `[t0, t1)` during the call.
#[inline(always)]
unsafe fn transform_outputs_portable<T: Element>(
    m: &[T],
    g: &ConvGeom,
    blk: &Blocking,
    range: (usize, usize),
    bias: Option<&[T]>,
    y: DisjointWrites<T>,
) {
    let runs = runs(blk, range);
    let (ho, wo) = (g.h_out(), g.w_out());
    // Reused from row to row: every entry a row reads is written first.
    let mut s = [[[T::zero(); RUN]; 4]; 2];
    let (mut even, mut odd) = ([T::zero(); RUN], [T::zero(); RUN]);
    for co in 0..g.c_out {
        let bias = bias.map_or(T::zero(), |b| b[co]);
        for run in &runs {
            let len = run.len();
            let p = |a: usize, b: usize| &m[((a * 4 + b) * g.c_out + co) * blk.ld + run.j..][..len];
            // A^T = [1 1 1 0; 0 1 -1 -1]: the two rows of A^T m, then their columns times A.
            for b in 0..4 {
                let (p0, p1, p2, p3) = (p(0, b), p(1, b), p(2, b), p(3, b));
                let [s0, s1] = &mut s;
                let (s0, s1) = (&mut s0[b], &mut s1[b]);
                for k in 0..len {
                    s0[k] = p0[k] + p1[k] + p2[k];
                    s1[k] = p1[k] - p2[k] - p3[k];
                }
            }
            for (r, sr) in s.iter().enumerate() {
                let oy = 2 * run.ty + r;
                if oy >= ho {
                    break;
                }
                for k in 0..len {
                    even[k] = sr[0][k] + sr[1][k] + sr[2][k] + bias;
                    odd[k] = sr[1][k] - sr[2][k] - sr[3][k] + bias;
                }
                let (x0, x1) = (2 * run.tx0, (2 * run.tx1).min(wo));
                // SAFETY: output row oy, columns [x0, x1) of image `image`, channel co: inside
                // the output, and written only by the task that owns these tiles.
                let row = unsafe {
                    std::slice::from_raw_parts_mut(y.0.add(((run.image * g.c_out + co) * ho + oy) * wo + x0), x1 - x0)
                };
                let mut pairs = row.chunks_exact_mut(2);
                for ((pair, &e), &o) in (&mut pairs).zip(&even[..len]).zip(&odd[..len]) {
                    pair[0] = e;
                    pair[1] = o;
                }
                // An odd output width: the last tile's second column does not exist.
                if let [last] = pairs.into_remainder() {
                    *last = even[len - 1];
                }
            }
        }
    }
}

/// The transforms compiled for AVX2 as well (eight lanes where the portable build has four):
/// the same operations in the same order, so the same bits.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    /// # Safety
    /// As [`super::transform_kernel_run_portable`].
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transform_kernel_run<T: Element>(
        w: &[T],
        count: usize,
        k0: usize,
        u: DisjointWrites<std::mem::MaybeUninit<T>>,
    ) {
        // SAFETY: the caller's contract.
        unsafe { super::transform_kernel_run_portable(w, count, k0, u) }
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn untransform_kernel_run<T: Element>(du: &[T], count: usize, k0: usize, dw: &mut [T]) {
        super::untransform_kernel_run_portable(du, count, k0, dw)
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn transform_inputs<T: Element>(
        x: &[T],
        g: &ConvGeom,
        blk: &Blocking,
        range: (usize, usize),
        v: &mut [T],
    ) {
        super::transform_inputs_portable(x, g, blk, range, v)
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn transform_output_grads<T: Element>(
        dy: &[T],
        g: &ConvGeom,
        blk: &Blocking,
        range: (usize, usize),
        m: &mut [T],
    ) {
        super::transform_output_grads_portable(dy, g, blk, range, m)
    }

    /// # Safety
    /// As [`super::transform_outputs_portable`].
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transform_outputs<T: Element>(
        m: &[T],
        g: &ConvGeom,
        blk: &Blocking,
        range: (usize, usize),
        bias: Option<&[T]>,
        y: DisjointWrites<T>,
    ) {
        // SAFETY: the caller's contract.
        unsafe { super::transform_outputs_portable(m, g, blk, range, bias, y) }
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2"))
}

/// # Safety
/// As [`transform_kernel_run_portable`].
unsafe fn transform_kernel_run<T: Element>(
    w: &[T],
    count: usize,
    k0: usize,
    u: DisjointWrites<std::mem::MaybeUninit<T>>,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time); the caller's contract.
        return unsafe { avx2::transform_kernel_run(w, count, k0, u) };
    }
    // SAFETY: the caller's contract.
    unsafe { transform_kernel_run_portable(w, count, k0, u) }
}

fn untransform_kernel_run<T: Element>(du: &[T], count: usize, k0: usize, dw: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        return unsafe { avx2::untransform_kernel_run(du, count, k0, dw) };
    }
    untransform_kernel_run_portable(du, count, k0, dw)
}

fn transform_inputs<T: Element>(x: &[T], g: &ConvGeom, blk: &Blocking, range: (usize, usize), v: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        return unsafe { avx2::transform_inputs(x, g, blk, range, v) };
    }
    transform_inputs_portable(x, g, blk, range, v)
}

fn transform_output_grads<T: Element>(dy: &[T], g: &ConvGeom, blk: &Blocking, range: (usize, usize), m: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        return unsafe { avx2::transform_output_grads(dy, g, blk, range, m) };
    }
    transform_output_grads_portable(dy, g, blk, range, m)
}

/// # Safety
/// As [`transform_outputs_portable`].
unsafe fn transform_outputs<T: Element>(
    m: &[T],
    g: &ConvGeom,
    blk: &Blocking,
    range: (usize, usize),
    bias: Option<&[T]>,
    y: DisjointWrites<T>,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time); the caller's contract.
        return unsafe { avx2::transform_outputs(m, g, blk, range, bias, y) };
    }
    // SAFETY: the caller's contract.
    unsafe { transform_outputs_portable(m, g, blk, range, bias, y) }
}

/// Runs `f(p, chunk p)` for the 16 points, on consecutive `len`-element chunks of `out`: in
/// parallel over the points when `parallel` (few blocks: the deep layers, whose 16 GEMMs are
/// too small to split well one by one), else in order.
fn for_each_point<T: Element>(out: &mut [T], len: usize, parallel: bool, f: impl Fn(usize, &mut [T]) + Sync) {
    let out = &mut out[..POINTS * len];
    if parallel {
        out.par_chunks_mut(len).enumerate().for_each(|(p, chunk)| f(p, chunk));
    } else {
        out.chunks_mut(len).enumerate().for_each(|(p, chunk)| f(p, chunk));
    }
}

/// Whether blocks run as parallel tasks (else each block's 16 GEMMs run in parallel).
fn blocks_in_parallel(blocks: usize) -> bool {
    blocks >= rayon::current_num_threads()
}

/// Forward pass (NCHW in, OIHW weights): y = conv(x, w) + b. Each block is one task; its tiles'
/// output pixels are disjoint from every other block's, and each is computed from its own
/// products alone, so the result does not depend on the schedule.
pub fn forward<T: Element>(g: &ConvGeom, x: &[T], w: &[T], b: Option<&[T]>) -> Vec<T> {
    forward_in_blocks(g, default_block_tiles(g), x, w, b)
}

/// [`forward`] in blocks of at most `tiles` tiles.
fn forward_in_blocks<T: Element>(g: &ConvGeom, tiles: usize, x: &[T], w: &[T], b: Option<&[T]>) -> Vec<T> {
    assert!(
        takes(g),
        "winograd::forward: {g:?} is not a 3x3 stride-1 convolution it takes"
    );
    transformed_forward(g, tiles, x, &Kernels::of(w, g.c_out, g.c_in), false, b)
}

/// The forward pass with the kernels transformed: `kernels` as they are, or (`flipped`) read as
/// backward-data's (see [`Kernels::point`]).
fn transformed_forward<T: Element>(
    g: &ConvGeom,
    tiles: usize,
    x: &[T],
    kernels: &Kernels<T>,
    flipped: bool,
    b: Option<&[T]>,
) -> Vec<T> {
    let expected = if flipped { (g.c_in, g.c_out) } else { (g.c_out, g.c_in) };
    assert_eq!(
        (kernels.c_out, kernels.c_in),
        expected,
        "winograd: kernels do not fit {g:?}"
    );
    let blk = Blocking::new(g, tiles);
    let mut y = vec![T::zero(); g.n * g.c_out * g.h_out() * g.w_out()];
    let out = DisjointWrites(y.as_mut_ptr());
    let outer = blocks_in_parallel(blk.blocks);
    let run = |block: usize| {
        let range = blk.range(block);
        let cols = range.1 - range.0;
        let (v_len, m_len) = (POINTS * g.c_in * blk.ld, POINTS * g.c_out * blk.ld);
        T::with_scratch(v_len + m_len, |scratch| {
            let (v, m) = scratch.split_at_mut(v_len);
            transform_inputs(x, g, &blk, range, v);
            let v = &*v;
            for_each_point(m, g.c_out * blk.ld, !outer, |p, m| {
                let ld = RowStrides {
                    a: kernels.c_in,
                    b: blk.ld,
                    c: blk.ld,
                };
                gemm_strided(
                    g.c_out,
                    cols,
                    g.c_in,
                    kernels.point(p, flipped),
                    flipped,
                    &v[p * g.c_in * blk.ld..],
                    false,
                    m,
                    ld,
                    false,
                    false,
                );
            });
            // SAFETY: `y` outlives the tasks; this block's tiles are written by this task alone.
            unsafe { transform_outputs(m, g, &blk, range, b, out) };
        });
    };
    if outer {
        (0..blk.blocks).into_par_iter().for_each(run);
    } else {
        (0..blk.blocks).for_each(run);
    }
    y
}

/// dL/dx from dL/dy: the forward pass over dy with the kernel flipped and its channel axes
/// swapped (the same transformed kernels, read transposed at mirrored points), padded by 2 -
/// pad, which gives back the input's size.
pub fn backward_data<T: Element>(g: &ConvGeom, dy: &[T], w: &[T]) -> Vec<T> {
    // The adjoint convolution has the same two channel counts, so the same default blocks.
    backward_data_in_blocks(g, default_block_tiles(g), dy, w)
}

/// [`backward_data`] in blocks of at most `tiles` tiles.
fn backward_data_in_blocks<T: Element>(g: &ConvGeom, tiles: usize, dy: &[T], w: &[T]) -> Vec<T> {
    assert!(takes(g), "winograd::backward_data: {g:?} is not a convolution it takes");
    let adjoint = ConvGeom {
        c_in: g.c_out,
        h: g.h_out(),
        w: g.w_out(),
        c_out: g.c_in,
        pad: 2 - g.pad,
        ..*g
    };
    debug_assert_eq!((adjoint.h_out(), adjoint.w_out()), (g.h, g.w));
    transformed_forward(&adjoint, tiles, dy, &Kernels::of(w, g.c_out, g.c_in), true, None)
}

/// dL/dw (OIHW) and dL/db from dL/dy: for each point of the transform, the products of the
/// output gradients' and the inputs' transforms summed over tiles (a GEMM over the block's
/// tiles), then `G^T . G` back to 3 x 3. Each task sums a fixed run of blocks in order and the
/// partials are added in order, so the result does not depend on the number of threads.
pub fn backward_weight<T: Element>(g: &ConvGeom, x: &[T], dy: &[T]) -> (Vec<T>, Vec<T>) {
    backward_weight_in_blocks(g, weight_block_tiles(g), x, dy)
}

/// Tiles a block of the weight gradient holds: the default, or fewer (down to
/// [`MIN_BLOCK_TILES`]) when the batch has too few tiles for `super::MIN_WEIGHT_PARTIALS`
/// partials, which are its only parallelism besides the 16 small point GEMMs.
fn weight_block_tiles(g: &ConvGeom) -> usize {
    let total = g.n * g.h_out().div_ceil(2) * g.w_out().div_ceil(2);
    let spread = total.div_ceil(super::MIN_WEIGHT_PARTIALS).max(MIN_BLOCK_TILES);
    default_block_tiles(g).min(spread)
}

/// [`backward_weight`] in blocks of at most `tiles` tiles.
fn backward_weight_in_blocks<T: Element>(g: &ConvGeom, tiles: usize, x: &[T], dy: &[T]) -> (Vec<T>, Vec<T>) {
    assert!(
        takes(g),
        "winograd::backward_weight: {g:?} is not a convolution it takes"
    );
    let blk = Blocking::new(g, tiles);
    let du_len = POINTS * g.c_out * g.c_in;
    let partial = |blocks: std::ops::Range<usize>, parallel: bool| -> Vec<T> {
        let mut du = vec![T::zero(); du_len];
        let (v_len, m_len) = (POINTS * g.c_in * blk.ld, POINTS * g.c_out * blk.ld);
        T::with_scratch(v_len + m_len, |scratch| {
            let (v, m) = scratch.split_at_mut(v_len);
            for (k, b) in blocks.enumerate() {
                let range = blk.range(b);
                transform_inputs(x, g, &blk, range, v);
                transform_output_grads(dy, g, &blk, range, m);
                let (v, m) = (&*v, &*m);
                for_each_point(&mut du, g.c_out * g.c_in, parallel, |p, du| {
                    let ld = RowStrides {
                        a: blk.ld,
                        b: blk.ld,
                        c: g.c_in,
                    };
                    gemm_strided(
                        g.c_out,
                        g.c_in,
                        range.1 - range.0,
                        &m[p * g.c_out * blk.ld..],
                        false,
                        &v[p * g.c_in * blk.ld..],
                        true,
                        du,
                        ld,
                        k > 0,
                        false,
                    );
                });
            }
        });
        du
    };
    let per_partial = super::blocks_per_partial(blk.blocks, BLOCKS_PER_PARTIAL);
    let runs: Vec<std::ops::Range<usize>> = (0..blk.blocks)
        .step_by(per_partial)
        .map(|b| b..(b + per_partial).min(blk.blocks))
        .collect();
    let partials: Vec<Vec<T>> = if blocks_in_parallel(runs.len()) {
        runs.into_par_iter().map(|r| partial(r, false)).collect()
    } else {
        runs.into_iter().map(|r| partial(r, true)).collect()
    };
    // An empty batch has no blocks, and a zero gradient.
    let du = partials
        .into_iter()
        .reduce(|mut du, part| {
            du.iter_mut().zip(&part).for_each(|(s, p)| *s += *p);
            du
        })
        .unwrap_or_else(|| vec![T::zero(); du_len]);
    (untransform_weight_grads(&du, g.c_out * g.c_in), super::bias_grad(g, dy))
}

/// `G^T dU G` of each of `count` kernels' 16 summed products (`du[p * count + k]`): the adjoint
/// of [`transform_weights`], OIHW, a [`RUN`] of kernels at a time (in parallel when there are
/// many).
fn untransform_weight_grads<T: Element>(du: &[T], count: usize) -> Vec<T> {
    assert!(du.len() >= POINTS * count);
    let mut dw = vec![T::zero(); count * 9];
    let task = |(t, chunk): (usize, &mut [T])| {
        for (r, kernels) in chunk.chunks_mut(RUN * 9).enumerate() {
            untransform_kernel_run(du, count, (t * RUNS_PER_TASK + r) * RUN, kernels);
        }
    };
    if count > RUN * RUNS_PER_TASK {
        dw.par_chunks_mut(RUN * 9 * RUNS_PER_TASK).enumerate().for_each(task);
    } else {
        dw.chunks_mut(RUN * 9 * RUNS_PER_TASK).enumerate().for_each(task);
    }
    dw
}

/// [`untransform_weight_grads`] of kernels `[k0, k0 + dw.len() / 9)` into `dw`, as arrays.
#[inline(always)]
fn untransform_kernel_run_portable<T: Element>(du: &[T], count: usize, k0: usize, dw: &mut [T]) {
    let half = T::of(0.5);
    let len = dw.len() / 9;
    let q = |a: usize, b: usize| &du[(a * 4 + b) * count + k0..][..len];
    // G^T = [1 1/2 1/2 0; 0 1/2 -1/2 0; 0 1/2 1/2 1]: G^T q down the columns (r[b][a]: column
    // b of row a)...
    let mut r = [[[T::zero(); RUN]; 3]; 4];
    for (b, [r0, r1, r2]) in r.iter_mut().enumerate() {
        let (q0, q1, q2, q3) = (q(0, b), q(1, b), q(2, b), q(3, b));
        for l in 0..len {
            r0[l] = q0[l] + (q1[l] + q2[l]) * half;
            r1[l] = (q1[l] - q2[l]) * half;
            r2[l] = (q1[l] + q2[l]) * half + q3[l];
        }
    }
    // ... then (G^T q) G along the rows.
    let mut out = [[T::zero(); RUN]; 9];
    for (a, row) in out.chunks_exact_mut(3).enumerate() {
        let (r0, r1, r2, r3) = (&r[0][a], &r[1][a], &r[2][a], &r[3][a]);
        for l in 0..len {
            row[0][l] = r0[l] + (r1[l] + r2[l]) * half;
            row[1][l] = (r1[l] - r2[l]) * half;
            row[2][l] = (r1[l] + r2[l]) * half + r3[l];
        }
    }
    for (l, kernel) in dw.chunks_exact_mut(9).enumerate() {
        for (j, v) in kernel.iter_mut().enumerate() {
            *v = out[j][l];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_near, definition, random};
    use super::*;
    use crate::rng::Rng;

    fn geom(n: usize, c_in: usize, h: usize, w: usize, c_out: usize, pad: usize) -> ConvGeom {
        ConvGeom {
            n,
            c_in,
            h,
            w,
            c_out,
            kh: 3,
            kw: 3,
            stride: 1,
            pad,
        }
    }

    /// Geometries with the tiles a block holds: blocks that split tile rows and span images,
    /// more runs of blocks than one weight-gradient partial, odd outputs (tiles sticking out),
    /// paddings 0 and 2, a one-pixel output, unequal channel counts, and the default blocking.
    fn cases() -> Vec<(ConvGeom, usize)> {
        vec![
            (geom(3, 8, 13, 10, 9, 1), 9),   // 105 tiles in 12 blocks, 3 partials
            (geom(1, 8, 7, 7, 8, 0), 4),     // 5 x 5 output: the last tile row and column stick out
            (geom(2, 10, 9, 12, 8, 2), 5),   // padding 2: backward-data pads by 0
            (geom(2, 8, 1, 2, 11, 1), 1),    // 1 x 2 output: one tile, mostly padding
            (geom(1, 8, 5, 141, 9, 1), 100), // 71 tiles a row: two runs of at most 64 a row
            (geom(1, 40, 6, 7, 33, 1), 5),   // 1320 kernels: the weight transforms in parallel tasks
            (
                geom(2, 16, 20, 18, 17, 1),
                default_block_tiles(&geom(2, 16, 20, 18, 17, 1)),
            ),
        ]
    }

    #[test]
    fn blocks_cover_every_tile_once() {
        let g = geom(3, 8, 13, 10, 8, 1);
        let blk = Blocking::new(&g, 9);
        assert_eq!((blk.rows, blk.cols, blk.total, blk.blocks), (7, 5, 105, 12));
        let mut seen = vec![0; blk.total];
        for b in 0..blk.blocks {
            let (t0, t1) = blk.range(b);
            assert!(t1 > t0 && t1 - t0 <= blk.tiles);
            seen[t0..t1].iter_mut().for_each(|s| *s += 1);
        }
        assert!(seen.iter().all(|&s| s == 1));
        assert_eq!(blk.locate(7 * 5 + 6), (1, 1, 1));
    }

    /// An empty batch gives empty outputs and zero weight and bias gradients, as the lowering does.
    #[test]
    fn an_empty_batch_gives_empty_outputs_and_zero_gradients() {
        let g = geom(0, 16, 6, 5, 17, 1);
        let w = vec![1.0f32; 17 * 16 * 9];
        assert!(forward(&g, &[], &w, None).is_empty());
        assert!(backward_data(&g, &[], &w).is_empty());
        let (dw, db) = backward_weight::<f32>(&g, &[], &[]);
        assert!(dw.len() == w.len() && dw.iter().all(|&v| v == 0.0));
        assert!(db.len() == 17 && db.iter().all(|&v| v == 0.0));
    }

    /// In f64 the transforms are exact to rounding, so every pass must equal the definition to
    /// the same 1e-12 as the lowering (a wrong sign, index or tile edge is off by O(1)).
    #[test]
    fn every_pass_matches_the_definition_in_f64() {
        let mut rng = Rng::new(21);
        for (g, tiles) in cases() {
            assert!(takes(&g));
            let (ho, wo) = (g.h_out(), g.w_out());
            let x = random(&mut rng, g.n * g.c_in * g.h * g.w);
            let w = random(&mut rng, g.c_out * g.c_in * 9);
            let b = random(&mut rng, g.c_out);
            let dy = random(&mut rng, g.n * g.c_out * ho * wo);
            let (want_y, want_dx, want_dw) = definition(&g, &x, &w, &b, &dy);
            let name = format!("{g:?} in blocks of {tiles} tiles");
            let y = forward_in_blocks(&g, tiles, &x, &w, Some(&b));
            assert_near(&format!("forward {name}"), &y, &want_y);
            let dx = backward_data_in_blocks(&g, tiles, &dy, &w);
            assert_near(&format!("backward-data {name}"), &dx, &want_dx);
            let (dw, db) = backward_weight_in_blocks(&g, tiles, &x, &dy);
            assert_near(&format!("backward-weight {name}"), &dw, &want_dw);
            assert_near(&format!("bias gradient {name}"), &db, &super::super::bias_grad(&g, &dy));
        }
    }

    /// Sum of |values| over the 4 x 4 input patch of the tile holding output pixel (oy, ox), per
    /// image and channel of a (n, c, h, w) tensor read with padding `pad`.
    fn patch_magnitudes(t: &[f64], g: &ConvGeom) -> impl Fn(usize, usize, usize, usize) -> f64 {
        move |i, c, oy, ox| {
            let (y0, x0) = (
                (oy / 2 * 2) as isize - g.pad as isize,
                (ox / 2 * 2) as isize - g.pad as isize,
            );
            let mut s = 0.0;
            for y in y0.max(0)..(y0 + 4).min(g.h as isize) {
                for x in x0.max(0)..(x0 + 4).min(g.w as isize) {
                    s += t[((i * g.c_in + c) * g.h + y as usize) * g.w + x as usize].abs();
                }
            }
            s
        }
    }

    /// Worst |got - want| / bound over the elements; panics naming the worst one above 1.
    fn worst_ratio(what: &str, got: &[f32], want: &[f64], bound: &[f64]) -> f64 {
        let (i, r) = got
            .iter()
            .zip(want)
            .zip(bound)
            .map(|((&g, &w), &b)| (g as f64 - w).abs() / b)
            .enumerate()
            .fold((0, 0.0), |best, (i, r)| if r > best.1 { (i, r) } else { best });
        assert!(
            r <= 1.0,
            "{what}: element {i} got {} want {} bound {:e} ({r:.2} times it)",
            got[i],
            want[i],
            bound[i]
        );
        r
    }

    /// The f32 passes against the definition in f64, element by element. Every rounding error of
    /// F(2x2, 3x3) is at most u times a sum of |transform coefficient products| x |w| x |x|
    /// over the kernel and the tile's whole 4 x 4 patch (not only the pixels the definition
    /// pairs), and each (kernel tap, patch pixel) pair's coefficient is at most 2 x 2 = 4
    /// (sum over a of |A[a][i]| |G[a][p]| |B^T[a][r]| <= 2 per axis). So with the longest chain
    /// of roundings n (the GEMM's reduction plus 12 for the transforms and the bias),
    /// |error| <= 4 gamma_n M, gamma_n = n u / (1 - n u), M = sum over channels of (sum of
    /// |kernel|) x (sum of |patch|) (plus |bias|); backward-data is the forward bound on dy, and
    /// backward-weight's reduction runs over every tile of the batch.
    #[test]
    fn f32_rounding_stays_within_its_bound() {
        let u = f32::EPSILON as f64 / 2.0;
        let gamma = |n: usize| n as f64 * u / (1.0 - n as f64 * u);
        let mut rng = Rng::new(22);
        for (g, tiles) in cases() {
            let (ho, wo) = (g.h_out(), g.w_out());
            let x = random(&mut rng, g.n * g.c_in * g.h * g.w);
            let w = random(&mut rng, g.c_out * g.c_in * 9);
            let b = random(&mut rng, g.c_out);
            let dy = random(&mut rng, g.n * g.c_out * ho * wo);
            let f32s = |v: &[f64]| -> Vec<f32> { v.iter().map(|&v| v as f32).collect() };
            let (xf, wf, bf, dyf) = (f32s(&x), f32s(&w), f32s(&b), f32s(&dy));
            // The definition on the f32-rounded inputs, in f64.
            let back = |v: &[f32]| -> Vec<f64> { v.iter().map(|&v| v as f64).collect() };
            let (x, w, b, dy) = (back(&xf), back(&wf), back(&bf), back(&dyf));
            let (want_y, want_dx, want_dw) = definition(&g, &x, &w, &b, &dy);
            let kernel_sum =
                |co: usize, ci: usize| -> f64 { w[(co * g.c_in + ci) * 9..][..9].iter().map(|v| v.abs()).sum() };
            let name = format!("{g:?} in blocks of {tiles} tiles");

            let x_patch = patch_magnitudes(&x, &g);
            let mut bound_y = vec![0.0; want_y.len()];
            for (j, bound) in bound_y.iter_mut().enumerate() {
                let (i, co, oy, ox) = (j / (g.c_out * ho * wo), j / (ho * wo) % g.c_out, j / wo % ho, j % wo);
                let m: f64 = (0..g.c_in).map(|ci| kernel_sum(co, ci) * x_patch(i, ci, oy, ox)).sum();
                *bound = 4.0 * gamma(g.c_in + 12) * (m + b[co].abs());
            }
            let y = forward_in_blocks(&g, tiles, &xf, &wf, Some(&bf));
            let r_y = worst_ratio(&format!("forward {name}"), &y, &want_y, &bound_y);

            let adjoint = ConvGeom {
                c_in: g.c_out,
                h: ho,
                w: wo,
                c_out: g.c_in,
                pad: 2 - g.pad,
                ..g
            };
            let dy_patch = patch_magnitudes(&dy, &adjoint);
            let mut bound_dx = vec![0.0; want_dx.len()];
            for (j, bound) in bound_dx.iter_mut().enumerate() {
                let (i, ci, y, xx) = (
                    j / (g.c_in * g.h * g.w),
                    j / (g.h * g.w) % g.c_in,
                    j / g.w % g.h,
                    j % g.w,
                );
                let m: f64 = (0..g.c_out).map(|co| kernel_sum(co, ci) * dy_patch(i, co, y, xx)).sum();
                *bound = 4.0 * gamma(g.c_out + 12) * m;
            }
            let dx = backward_data_in_blocks(&g, tiles, &dyf, &wf);
            let r_dx = worst_ratio(&format!("backward-data {name}"), &dx, &want_dx, &bound_dx);

            // Per (co, ci): sum over tiles of (sum of |dy| over the tile) x (sum of |x| over its patch).
            let mut bound_dw = vec![0.0; want_dw.len()];
            for co in 0..g.c_out {
                for ci in 0..g.c_in {
                    let mut m = 0.0;
                    for i in 0..g.n {
                        for oy in (0..ho).step_by(2) {
                            for ox in (0..wo).step_by(2) {
                                let tile: f64 = (oy..(oy + 2).min(ho))
                                    .flat_map(|y| (ox..(ox + 2).min(wo)).map(move |x| (y, x)))
                                    .map(|(y, x)| dy[((i * g.c_out + co) * ho + y) * wo + x].abs())
                                    .sum();
                                m += tile * x_patch(i, ci, oy, ox);
                            }
                        }
                    }
                    let n = g.n * ho.div_ceil(2) * wo.div_ceil(2) + 12;
                    bound_dw[(co * g.c_in + ci) * 9..][..9].fill(4.0 * gamma(n) * m);
                }
            }
            let (dw, _) = backward_weight_in_blocks(&g, tiles, &xf, &dyf);
            let r_dw = worst_ratio(&format!("backward-weight {name}"), &dw, &want_dw, &bound_dw);
            println!(
                "{name}: worst error / bound: forward {r_y:.3}, backward-data {r_dx:.3}, backward-weight {r_dw:.3}"
            );
        }
    }
}
