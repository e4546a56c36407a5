// 2-D convolution (cross-correlation, as torch.nn.Conv2d): NCHW activations, OIHW weights.
//
// Each pass is an implicit GEMM C[m][n] = sum_k A[m][k] B[k][n] whose operands are gathered
// straight from the tensors (no im2col buffer):
//   forward          m = output pixel (img, oy, ox)  n = c_out   k = (ci, ky, kx)
//                    A = x at (oy*s - pad + ky, ox*s - pad + kx), B = weight[n][k], + bias[n]
//   backward-data    m = input pixel (img, iy, ix)   n = c_in    k = (co, ky, kx)
//                    A = dy at ((iy + pad - ky) / s, (ix + pad - kx) / s) when divisible,
//                    B = weight[co][n][ky][kx], + bias[n] when given (transposed-conv forward)
//                    v2's forward and backward-data may split k too where their tiles alone
//                    would fill few of the GPU's block slots (split_slice): partial outputs
//                    [split][n][c][h][w], the bias in split 0's, added by split_reduce.
//   backward-weight  m = c_out                       n = (ci, ky, kx)  k = (img, oy, ox)
//                    A = dy, B = x as in forward; split over k into partial sums
//                    [split][c_out][n] (and the bias gradient [split][c_out]) that
//                    split_reduce adds in a fixed order, so results are deterministic.
//   transposed forward by tap (tfwd, v1 and v2), when the kernel tiles the output (kh == kw ==
//                    stride, no padding): one GEMM per tap, m = input pixel, n = c_out, k = c_in;
//                    for 2x2 stride 2 also one GEMM over all four taps (tfwd k2s2: n = (c_out,
//                    tap), paired stores); see its section after the v2 kernels.
//
// Versions, side by side, selected by the host (ConvAlgo):
//   v1 (_fp32)  plain FP32 shared-memory tiles, 64x64x16, 4x4 outputs per thread, generic index
//               math. The simple reference version.
//   v2          tensor cores through mma.sync with FP32 accumulation, 32-deep k tiles staged
//               through registers so that the global loads of the next tile overlap the math of
//               this one, per-thread precomputed gather addresses, and kernel sizes 1x1, 2x2, 3x3
//               specialised at compile time. One code, two operand precisions:
//     _tf32     m16n8k8, operands rounded to TF32, nearest even (one value per 32-bit word);
//     _bf16     m16n8k16, operands rounded to BF16 with cvt.rn.bf16x2 (two values per word).
//               Tensors stay FP32 in memory either way; only the staged operands are rounded.
//     _k3t      tap-major 3x3 (tf32-mma-tap, bf16-mma-tap; _k2t: 2x2, forward and backward-weight,
//               the up-convolutions' backward passes): k = (tap, channel); forward and
//               backward-data copy their B from weights packed beforehand (conv_pack_*:
//               rounded, in the tile's layout) with cp.async into two shared-memory stages.
//     _k3h      backward-weight of 3x3 stride 1 pad 1 by halo tiles (tf32-mma-halo, TF32):
//               every tap of 32 input channels from one staged k tile of 32 pixels and its
//               one-pixel border (conv_halo.cuh).

#include <climits>
#include <type_traits>

#include "common.cuh"
#include "conv_gather.cuh"

using lrc::WARP;

// ---------------------------------------------------------------------------------------------
// v1: FP32 shared-memory tiles.
// ---------------------------------------------------------------------------------------------

namespace v1 {

constexpr int BM = 64;
constexpr int BN = 64;
constexpr int BK = 16;
constexpr int THREADS = 256;

// Each problem gives sizes, a(m, k), b(k, n) for in-range indices, and whether each operand is
// contiguous in memory along k (the loaders then walk k fastest to coalesce).
struct Forward {
    ConvParams p;
    int M, N, K;
    static constexpr bool A_ALONG_K = false;
    static constexpr bool B_ALONG_K = true;
    __device__ explicit Forward(const ConvParams& q)
        : p(q), M(q.n * q.h_out * q.w_out), N(q.c_out), K(q.c_in * q.kh * q.kw) {}
    __device__ float a(int m, int k) const {
        const gather::Window w = gather::window(p, m);
        const auto t = gather::KernelSize<0, 0>(p).tap(k);
        return gather::x_tap(p, w.x_img, w.iy0, w.ix0, t.c, t.ky, t.kx);
    }
    __device__ float b(int k, int n) const { return p.weight[static_cast<size_t>(n) * K + k]; }
    __device__ void store(int m, int n, float v) const {
        const int hw = p.h_out * p.w_out;
        const int img = m / hw;
        const int pix = m - img * hw;
        if (p.bias != nullptr) {
            v += p.bias[n];
        }
        p.out[(static_cast<size_t>(img) * p.c_out + n) * hw + pix] = v;
    }
};

struct BackwardData {
    ConvParams p;
    int M, N, K;
    static constexpr bool A_ALONG_K = false;
    static constexpr bool B_ALONG_K = true;
    __device__ explicit BackwardData(const ConvParams& q)
        : p(q), M(q.n * q.h * q.w), N(q.c_in), K(q.c_out * q.kh * q.kw) {}
    __device__ float a(int m, int k) const {
        const gather::InputPixel px = gather::input_pixel(p, m);
        const auto t = gather::KernelSize<0, 0>(p).tap(k);
        return gather::dy_tap(p, px.dy_img, px.iy, px.ix, t.c, t.ky, t.kx);
    }
    __device__ float b(int k, int n) const {
        const int taps = p.kh * p.kw;
        const int co = k / taps;
        const int r = k - co * taps;
        return p.weight[(static_cast<size_t>(co) * p.c_in + n) * taps + r];
    }
    __device__ void store(int m, int n, float v) const {
        const int hw = p.h * p.w;
        const int img = m / hw;
        const int pix = m - img * hw;
        if (p.bias != nullptr) {
            v += p.bias[n];
        }
        p.out[(static_cast<size_t>(img) * p.c_in + n) * hw + pix] = v;
    }
};

// The reduction index k runs over (img, oy, ox); this problem's K is the full reduction length,
// of which each block takes one split.
struct BackwardWeight {
    ConvParams p;
    int M, N, K;
    static constexpr bool A_ALONG_K = true;
    static constexpr bool B_ALONG_K = true;
    __device__ explicit BackwardWeight(const ConvParams& q)
        : p(q), M(q.c_out), N(q.c_in * q.kh * q.kw), K(q.n * q.h_out * q.w_out) {}
    __device__ float a(int m, int k) const {
        const int hw = p.h_out * p.w_out;
        const int img = k / hw;
        const int pix = k - img * hw;
        return p.dy[(static_cast<size_t>(img) * p.c_out + m) * hw + pix];
    }
    __device__ float b(int k, int n) const {
        const gather::Window w = gather::window(p, k);
        const auto t = gather::KernelSize<0, 0>(p).tap(n);
        return gather::x_tap(p, w.x_img, w.iy0, w.ix0, t.c, t.ky, t.kx);
    }
};

// acc[i][j] += sum over k in [k_begin, k_end) of A[m0 + tm + 16i][k] * B[k][n0 + tn + 16j],
// with tm = tid % 16 and tn = tid / 16: a warp covers 16 consecutive rows, so shared-memory
// reads are conflict-free and the output stores of a warp are contiguous along m.
template <class P>
__device__ void tiled_gemm(const P& prob, int m0, int n0, int k_begin, int k_end, float (&acc)[4][4]) {
    __shared__ float as[BK][BM + 1];
    __shared__ float bs[BK][BN + 1];
    const int tid = threadIdx.x;
    const int tm = tid % 16;
    const int tn = tid / 16;
    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
        for (int e = tid; e < BM * BK; e += THREADS) {
            const int mm = P::A_ALONG_K ? e / BK : e % BM;
            const int kk = P::A_ALONG_K ? e % BK : e / BM;
            const int m = m0 + mm;
            const int k = k0 + kk;
            as[kk][mm] = (m < prob.M && k < k_end) ? prob.a(m, k) : 0.0f;
        }
        for (int e = tid; e < BN * BK; e += THREADS) {
            const int nn = P::B_ALONG_K ? e / BK : e % BN;
            const int kk = P::B_ALONG_K ? e % BK : e / BN;
            const int n = n0 + nn;
            const int k = k0 + kk;
            bs[kk][nn] = (n < prob.N && k < k_end) ? prob.b(k, n) : 0.0f;
        }
        __syncthreads();
        lrc::tile_fma_4x4(as, bs, tm, tn, acc);
        __syncthreads();
    }
}

template <class P>
__device__ void gemm_and_store(const ConvParams& p) {
    const P prob(p);
    const int m0 = blockIdx.x * BM;
    const int n0 = blockIdx.y * BN;
    float acc[4][4] = {};
    tiled_gemm(prob, m0, n0, 0, prob.K, acc);
    const int tm = threadIdx.x % 16;
    const int tn = threadIdx.x / 16;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int m = m0 + tm + 16 * i;
            const int n = n0 + tn + 16 * j;
            if (m < prob.M && n < prob.N) {
                prob.store(m, n, acc[i][j]);
            }
        }
    }
}

}  // namespace v1

// Grid (ceil(M / 64), ceil(c_out / 64)), 256 threads.
LRC_KERNEL(conv_fwd_fp32, ConvParams, v1::THREADS) {
    v1::gemm_and_store<v1::Forward>(p);
}

// Grid (ceil(n*h*w / 64), ceil(c_in / 64)), 256 threads.
LRC_KERNEL(conv_bwd_data_fp32, ConvParams, v1::THREADS) {
    v1::gemm_and_store<v1::BackwardData>(p);
}

// Grid (ceil(c_in*kh*kw / 64), ceil(c_out / 64), splits), 256 threads. Writes every element of
// its tile of out[split] (and, in the blocks of the first column, out_bias[split]).
LRC_KERNEL(conv_bwd_weight_fp32, ConvParams, v1::THREADS) {
    using namespace v1;
    const BackwardWeight prob(p);
    const int split = blockIdx.z;
    const int k_begin = split * p.split_len;
    const int k_end = min(k_begin + p.split_len, prob.K);
    const int m0 = blockIdx.y * BM;
    const int n0 = blockIdx.x * BN;
    float acc[4][4] = {};
    tiled_gemm(prob, m0, n0, k_begin, k_end, acc);
    const int tm = threadIdx.x % 16;
    const int tn = threadIdx.x / 16;
    float* out = p.out + static_cast<size_t>(split) * prob.M * prob.N;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int m = m0 + tm + 16 * i;
            const int n = n0 + tn + 16 * j;
            if (m < prob.M && n < prob.N) {
                out[static_cast<size_t>(m) * prob.N + n] = acc[i][j];
            }
        }
    }
    if (p.out_bias != nullptr && blockIdx.x == 0) {
        // Bias gradient of this block's rows over this split: one warp per row.
        const int lane = threadIdx.x % WARP;
        const int warp = threadIdx.x / WARP;
        for (int mm = warp; mm < BM; mm += THREADS / WARP) {
            const int m = m0 + mm;
            if (m >= prob.M) {
                break;
            }
            float s = 0.0f;
            for (int k = k_begin + lane; k < k_end; k += WARP) {
                s += prob.a(m, k);
            }
            s = lrc::warp_sum(s);
            if (lane == 0) {
                p.out_bias[static_cast<size_t>(split) * prob.M + m] = s;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// v2: tensor cores (mma.sync), TF32 or BF16 operands.
// ---------------------------------------------------------------------------------------------

namespace v2 {

constexpr int BK = 32;  // one warp spans a k tile, which the K-major loaders rely on
constexpr int THREADS = 256;
constexpr int WARPS = THREADS / WARP;

// The operand precisions. Shared memory holds 32-bit words of PACK operand values each, pairs
// consecutive along k (the lower k in the low half, as mma expects); one mma consumes 8 words of
// k per row of A and column of B in both precisions, with the same fragment ownership in words:
// a = {(g, w+t), (g+8, w+t), (g, w+t+4), (g+8, w+t+4)}, b = {(g, w+t), (g, w+t+4)} for
// g = lane / 4, t = lane % 4 and word column w. So everything but the rounding and the mma is
// shared. word(lo, hi) rounds the values of one word (hi unused when PACK is 1).
struct Tf32 {
    static constexpr int PACK = 1;
    __device__ static uint32_t word(float lo, float) { return lrc::to_tf32(lo); }
    __device__ static void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
        lrc::mma_tf32_16x8x8(d, a, b);
    }
};
struct Bf16 {
    static constexpr int PACK = 2;
    __device__ static uint32_t word(float lo, float hi) { return lrc::to_bf16x2(lo, hi); }
    __device__ static void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
        lrc::mma_bf16_16x8x16(d, a, b);
    }
};

// How an operand tile is laid out in shared memory, chosen by the direction in which it is
// contiguous in global memory, in words of PACK values (WK = BK / PACK words along k). MN-major:
// [WK][ROWS + 8]; K-major: [ROWS][WK + 4], or [ROWS][WK + 8] when PAIRED.
// PAIRED operands keep the two words of each register pair of an mma fragment side by side in
// their line, so that one 64-bit load fetches both into the two consecutive registers mma reads:
// A's rows g and g + 8 (MN-major: rows r and r + 8 of each 16) and B's k t and t + 4 (K-major:
// words w and w + 4 of each 8). A K-major A or an MN-major B has those words in different lines.
// Line strides of 8 mod 32 words (BF16's K-major 24; unpaired K-major 4 mod 8) keep the loader
// stores (a warp writes 32 consecutive words of a line) and the fragment loads (a half-warp reads
// 16 pairs, or a warp 32 words) free of bank conflicts.
enum class Major { MN, K };

template <int ROWS, Major L, int PACK, bool PAIRED = false>
struct Operand {
    static_assert(ROWS % 32 == 0, "tile rows must be a multiple of 32");
    static constexpr int WK = BK / PACK;
    static constexpr int STRIDE = (L == Major::MN) ? ROWS + 8 : WK + (PAIRED ? 8 : 4);
    static constexpr int SIZE = (L == Major::MN) ? WK * STRIDE : ROWS * STRIDE;
    // The number of values each thread loads per k tile.
    static constexpr int LOADS = BK * ROWS / THREADS;
    static_assert(THREADS % ROWS == 0 || L == Major::K, "MN-major loader needs THREADS % ROWS == 0");
    static_assert(LOADS % PACK == 0, "a thread's slots must pair up");

    // The word holding k (of PACK consecutive ones) of a row.
    __device__ static int index(int row, int w) {
        if constexpr (L == Major::MN) {
            return w * STRIDE + (PAIRED ? paired(row, 8) : row);
        } else {
            return row * STRIDE + (PAIRED ? paired(w, 4) : w);
        }
    }
    // Position of i in its group of 2 * half: i and i + half (for i below half) become the
    // neighbours 2i and 2i + 1.
    __device__ static constexpr int paired(int i, int half) {
        return (i & ~(2 * half - 1)) | ((i & (half - 1)) << 1) | ((i / half) & 1);
    }
    // Slot i of thread tid: MN-major threads own one row and step through k (a warp reads 32
    // consecutive rows), in runs of PACK consecutive k so that each word is one thread's; K-major
    // threads own one k (their lane) and step through rows (a warp reads 32 consecutive k of one
    // row), so with PACK 2 two lanes share each word.
    __device__ static constexpr int slot_row(int tid, int i) {
        return (L == Major::MN) ? tid % ROWS : tid / WARP + WARPS * i;
    }
    __device__ static int slot_k(int tid, int i) {
        return (L == Major::MN) ? PACK * (tid / ROWS + (THREADS / ROWS) * (i / PACK)) + i % PACK : tid % WARP;
    }
};

// Operand gatherers. MN-major ones fix their row once (fix_row) and read any k (at); K-major ones
// fix their k once per tile (fix_k) and read any row (at). Callers only call `at` on in-range
// indices and load zero elsewhere.

// Forward A: x in im2col order, rows = output pixels, k = (ci, ky, kx).
template <int KH, int KW>
struct ImageByOutputPixel {
    static constexpr Major LAYOUT = Major::MN;
    static constexpr bool TAP_MAJOR = false;
    gather::Window w;
    __device__ void fix_row(const ConvParams& p, int m) { w = gather::window(p, m); }
    __device__ float at(const ConvParams& p, int k) const {
        const auto t = gather::KernelSize<KH, KW>(p).tap(k);
        return gather::x_tap(p, w.x_img, w.iy0, w.ix0, t.c, t.ky, t.kx);
    }
};

// Forward B: weight[n][k], rows = c_out.
template <int KH, int KW>
struct WeightByOutputChannel {
    static constexpr Major LAYOUT = Major::K;
    static constexpr bool TAP_MAJOR = false;
    const float* w_k = nullptr;
    __device__ void fix_k(const ConvParams& p, int k) { w_k = p.weight + k; }
    __device__ float at(const ConvParams& p, int n) const {
        const gather::KernelSize<KH, KW> ks(p);
        return w_k[static_cast<size_t>(n) * p.c_in * ks.taps()];
    }
};

// Backward-data A: dy, rows = input pixels, k = (co, ky, kx).
template <int KH, int KW>
struct GradByInputPixel {
    static constexpr Major LAYOUT = Major::MN;
    static constexpr bool TAP_MAJOR = false;
    gather::InputPixel px;
    __device__ void fix_row(const ConvParams& p, int m) { px = gather::input_pixel(p, m); }
    __device__ float at(const ConvParams& p, int k) const {
        const auto t = gather::KernelSize<KH, KW>(p).tap(k);
        return gather::dy_tap(p, px.dy_img, px.iy, px.ix, t.c, t.ky, t.kx);
    }
};

// Backward-data B: weight[co][n][ky][kx] with k = (co, ky, kx), rows = c_in.
template <int KH, int KW>
struct WeightByInputChannel {
    static constexpr Major LAYOUT = Major::K;
    static constexpr bool TAP_MAJOR = false;
    const float* w_k = nullptr;
    __device__ void fix_k(const ConvParams& p, int k) {
        const gather::KernelSize<KH, KW> ks(p);
        const int co = k / ks.taps();
        const int r = k - co * ks.taps();
        w_k = p.weight + static_cast<size_t>(co) * p.c_in * ks.taps() + r;
    }
    __device__ float at(const ConvParams& p, int n) const {
        const gather::KernelSize<KH, KW> ks(p);
        return w_k[static_cast<size_t>(n) * ks.taps()];
    }
};

// Backward-weight A: dy, rows = c_out, k = (img, oy, ox).
struct GradByOutputChannel {
    static constexpr Major LAYOUT = Major::K;
    static constexpr bool TAP_MAJOR = false;
    const float* dy_k = nullptr;
    __device__ void fix_k(const ConvParams& p, int k) {
        const int hw = p.h_out * p.w_out;
        const int img = k / hw;
        const int pix = k - img * hw;
        dy_k = p.dy + static_cast<size_t>(img) * p.c_out * hw + pix;
    }
    __device__ float at(const ConvParams& p, int m) const {
        return dy_k[static_cast<size_t>(m) * p.h_out * p.w_out];
    }
};

// Backward-weight B: x, rows = (ci, ky, kx), k = (img, oy, ox).
template <int KH, int KW>
struct ImageByTap {
    static constexpr Major LAYOUT = Major::K;
    static constexpr bool TAP_MAJOR = false;
    // v2's backward-weight kernels sit at the 128-register limit, and a paired tile (Operand)
    // costs them a register: ptxas spills 4-8 bytes in four of them. Their B stays unpaired.
    static constexpr bool PAIRED = false;
    gather::Window w;
    __device__ void fix_k(const ConvParams& p, int k) { w = gather::window(p, k); }
    __device__ float at(const ConvParams& p, int n) const {
        const auto t = gather::KernelSize<KH, KW>(p).tap(n);
        return gather::x_tap(p, w.x_img, w.iy0, w.ix0, t.c, t.ky, t.kx);
    }
};

// Tap-major gatherers (the _k3t kernels): the reduction runs k = (tap, c) with the channel
// fastest, for a channel count that is a multiple of BK, so every 32-deep k tile lies within one
// tap (ky, kx). An A row then decodes the tap, checks the bounds and forms its address once per
// tile (`tile`), and each of its slots is one load at a fixed channel offset; the channel-major
// order (c, ky, kx) above decodes and checks every element. The same products, summed in
// another order. The loaders ask for the tiles in order, k0, k0 + BK, ..., so the gatherers
// follow their indices with cursors that step from one tile to the next where a division per
// tile would cost more than the rest of the decoding.

// The tap and channel of k = tap * channels + c, channels a multiple of BK. A step of BK never
// skips a tap, also for k = k0 + lane (c = c0 + lane), which wraps exactly when k0 does.
struct TapCursor {
    int k = INT_MIN, tap = 0, c = 0;
    __device__ void seek(int to, int channels) {
        if (to == k + BK) {
            c += BK;
            if (c >= channels) {
                c -= channels;
                ++tap;
            }
        } else {
            tap = to / channels;
            c = to - tap * channels;
        }
        k = to;
    }
};

// Output pixel k = (img, oy, ox) of backward-weight's reduction, followed in steps of BK.
struct PixelCursor {
    int k = INT_MIN, img = 0, oy = 0, ox = 0;
    __device__ void seek(const ConvParams& p, int to) {
        if (to == k + BK) {
            ox += BK;
            while (ox >= p.w_out) {
                ox -= p.w_out;
                if (++oy == p.h_out) {
                    oy = 0;
                    ++img;
                }
            }
        } else {
            const int hw = p.h_out * p.w_out;
            img = to / hw;
            const int pix = to - img * hw;
            oy = pix / p.w_out;
            ox = pix - oy * p.w_out;
        }
        k = to;
    }
};

// Forward A: x by output pixel, k = (tap, ci).
template <int KH, int KW>
struct ImageByOutputPixelTapMajor {
    static_assert(KH > 0 && KW > 0, "tap-major gathers need a compile-time kernel size");
    static constexpr Major LAYOUT = Major::MN;
    static constexpr bool TAP_MAJOR = true;
    gather::Window w;
    TapCursor cur;
    __device__ void fix_row(const ConvParams& p, int m) { w = gather::window(p, m); }
    // This row's value of the tile's first channel, where the tile's tap reads the padding: null.
    __device__ const float* tile(const ConvParams& p, int k0) {
        cur.seek(k0, p.c_in);
        const int ky = cur.tap / KW;
        return gather::x_at(p, w.x_img, w.iy0 + ky, w.ix0 + cur.tap - ky * KW, cur.c);
    }
    // From one channel to the next.
    __device__ static int channel_stride(const ConvParams& p) { return p.h * p.w; }
};

// Backward-data A: dy by input pixel, k = (tap, co).
template <int KH, int KW>
struct GradByInputPixelTapMajor {
    static_assert(KH > 0 && KW > 0, "tap-major gathers need a compile-time kernel size");
    static constexpr Major LAYOUT = Major::MN;
    static constexpr bool TAP_MAJOR = true;
    gather::InputPixel px;
    TapCursor cur;
    __device__ void fix_row(const ConvParams& p, int m) { px = gather::input_pixel(p, m); }
    // The output pixel whose window puts this tile's tap on this row's input pixel, at the
    // tile's first channel; null where there is none.
    __device__ const float* tile(const ConvParams& p, int k0) {
        cur.seek(k0, p.c_out);
        const int ky = cur.tap / KW;
        return gather::dy_at(p, px.dy_img, px.iy, px.ix, cur.c, ky, cur.tap - ky * KW);
    }
    __device__ static int channel_stride(const ConvParams& p) { return p.h_out * p.w_out; }
};

// Backward-weight A, as GradByOutputChannel with the pixel followed by a cursor: dy, rows =
// c_out, k = (img, oy, ox).
struct GradByOutputChannelFollowed {
    static constexpr Major LAYOUT = Major::K;
    static constexpr bool TAP_MAJOR = false;
    const float* dy_k = nullptr;
    PixelCursor cur;
    __device__ void fix_k(const ConvParams& p, int k) {
        cur.seek(p, k);
        const int hw = p.h_out * p.w_out;
        dy_k = p.dy + static_cast<size_t>(cur.img) * p.c_out * hw + cur.oy * p.w_out + cur.ox;
    }
    // Rows lie a fixed distance apart (a plane), so the loader forms one address per tile and
    // steps from slot to slot (row_at, row_stride) instead of multiplying out each row's.
    static constexpr bool STRIDED_ROWS = true;
    // The warps read their A fragments with ldmatrix (lrc::load_matrix_x4), one instruction
    // for the four words a fragment takes from this K-major tile.
    static constexpr bool LDMATRIX = true;
    __device__ const float* row_at(const ConvParams& p, int m) const {
        return dy_k + static_cast<size_t>(m) * p.h_out * p.w_out;
    }
    __device__ static size_t row_stride(const ConvParams& p) { return static_cast<size_t>(p.h_out) * p.w_out; }
};

// Backward-weight B: x by tap, rows n = (tap, ci) with the channel fastest, k = (img, oy, ox).
// K-major: a thread fixes its pixel k once per tile and reads rows warp + 8i; with c_in a
// multiple of 32 and tiles starting at multiples of 32, each run of 32 rows (4 slots of a
// thread) lies within one tap, so one bounds check and address serve 4 loads where the
// channel-major order (ImageByTap) decodes and checks each. The epilogue stores column n at
// ci * taps + tap (TapMajorPartialStore), so the result is the same OIHW weight gradient.
template <int KH, int KW, int RUNS>
struct ImageByTapTapMajor {
    static_assert(KH > 0 && KW > 0, "tap-major gathers need a compile-time kernel size");
    static constexpr Major LAYOUT = Major::K;
    static constexpr bool TAP_MAJOR = true;
    // Fragments by ldmatrix, two column tiles at a time, from rows of consecutive words.
    static constexpr bool LDMATRIX = true;
    static constexpr bool PAIRED = false;
    const float* x_img = nullptr;
    int iy0 = 0, ix0 = 0;
    int pixel = 0;  // iy0 * w + ix0: where the window's corner lies in a channel plane
    PixelCursor cur;
    // The tap of each of this thread's runs and where the run's first value lies from the
    // window's corner in the image ((c h + ky) w + kx), the same for every k tile: set once
    // (fix_rows), so that a tile decodes none. Offsets within an image fit an int: the host plans
    // these kernels for c_in h w below 2^31.
    int tap[RUNS] = {}, offset[RUNS] = {};
    // n: this thread's first row; run r starts 32 r rows further.
    __device__ void fix_rows(const ConvParams& p, int n) {
        int t = n / p.c_in;
        int ch = n - t * p.c_in;
#pragma unroll
        for (int r = 0; r < RUNS; ++r) {
            const int ky = t / KW;
            tap[r] = t;
            offset[r] = (ch * p.h + ky) * p.w + t - ky * KW;
            ch += WARP;
            while (ch >= p.c_in) {
                ch -= p.c_in;
                ++t;
            }
        }
    }
    __device__ void fix_k(const ConvParams& p, int k) {
        cur.seek(p, k);
        x_img = p.x + static_cast<size_t>(cur.img) * p.c_in * p.h * p.w;
        iy0 = cur.oy * p.stride - p.pad;
        ix0 = cur.ox * p.stride - p.pad;
        pixel = iy0 * p.w + ix0;
    }
    // The first value of run `run` at this thread's pixel, where the run's tap reads the
    // padding: null.
    __device__ const float* run_start(const ConvParams& p, int run) const {
        const int ky = tap[run] / KW;
        const int kx = tap[run] - ky * KW;
        if (static_cast<unsigned>(iy0 + ky) >= static_cast<unsigned>(p.h) ||
            static_cast<unsigned>(ix0 + kx) >= static_cast<unsigned>(p.w)) {
            return nullptr;
        }
        return x_img + (offset[run] + pixel);
    }
    __device__ static int channel_stride(const ConvParams& p) { return p.h * p.w; }
};

// Tap-major B from the weights packed by conv_pack_* (forward: rows c_out, k = (tap, c_in);
// backward-data: rows c_in, k = (tap, c_out)), which the kernels read through p.weight. The
// rows are padded with zeros to a multiple of PACKED_ROWS, and each row holds its K / PACK words
// already rounded to the operand precision, in k order. So a k tile of the block's rows is a
// block copy: 16 bytes per cp.async straight into the K-major shared-memory tile, with no
// conversion, no register staging and no bounds checks (the host plans these kernels for K a
// multiple of BK).
constexpr int PACKED_ROWS = 128;  // the widest B tile

template <int ROWS, int PACK>
struct PackedWeight {
    using O = Operand<ROWS, Major::K, PACK, false>;
    static constexpr Major LAYOUT = Major::K;
    static constexpr bool TAP_MAJOR = false;
    static constexpr bool ASYNC = true;
    // Fragments by ldmatrix, two column tiles at a time, from rows of consecutive words.
    static constexpr bool LDMATRIX = true;
    static constexpr bool PAIRED = false;
    static_assert(PACKED_ROWS % ROWS == 0, "B tiles never run past the padded rows");
    static_assert(O::WK % 4 == 0 && O::STRIDE % 4 == 0, "rows of whole, aligned 16-byte pieces");
    static constexpr int PIECES_PER_ROW = O::WK / 4;
    static constexpr int PIECES = ROWS * PIECES_PER_ROW;
    static constexpr int COPIES = (PIECES + THREADS - 1) / THREADS;
    // Copy i of a thread is its first moved down by i passes of the block over the rows, so one
    // pointer and one offset (not one per copy) describe all of a thread's copies.
    static_assert(THREADS % PIECES_PER_ROW == 0, "a pass of the block covers whole rows");
    static constexpr int ROWS_PER_PASS = THREADS / PIECES_PER_ROW;
    const uint32_t* from = nullptr;  // this thread's first piece of the first k tile
    int to = 0;                      // and its word in a stage
    int row_words = 0;
    // n0: the block's first row; words: K / PACK, the words of a packed row.
    __device__ void fix_tile(const ConvParams& p, int n0, int words) {
        const int row = threadIdx.x / PIECES_PER_ROW;
        const int q = threadIdx.x % PIECES_PER_ROW;
        row_words = words;
        from = reinterpret_cast<const uint32_t*>(p.weight) + static_cast<size_t>(n0 + row) * words + 4 * q;
        to = row * O::STRIDE + 4 * q;
    }
    // Issues this thread's copies of the k tile at k0 into `stage`, as one group.
    __device__ void copy(uint32_t* stage, int k0) const {
        const uint32_t* tile = from + k0 / PACK;
#pragma unroll
        for (int i = 0; i < COPIES; ++i) {
            if (PIECES % THREADS == 0 || static_cast<int>(threadIdx.x) + i * THREADS < PIECES) {
                lrc::cp_async_16(stage + to + i * ROWS_PER_PASS * O::STRIDE,
                                 tile + static_cast<size_t>(i) * ROWS_PER_PASS * row_words);
            }
        }
        lrc::cp_async_commit();
    }
};

// A gatherer's optional flag: TRAIT<G>::value is G::FLAG where G declares it, else DEFAULT.
#define LRC_GATHERER_FLAG(TRAIT, FLAG, DEFAULT)                                                  \
    template <class G, class = void>                                                               \
    struct TRAIT : std::bool_constant<DEFAULT> {};                                                 \
    template <class G>                                                                             \
    struct TRAIT<G, std::void_t<decltype(G::FLAG)>> : std::bool_constant<G::FLAG> {};

// Whether a gatherer copies its tiles to shared memory itself (cp.async) instead of handing
// mainloop values to round and store.
LRC_GATHERER_FLAG(IsAsync, ASYNC, false)
// Whether a K-major gatherer's rows lie a fixed distance apart (row_at, row_stride).
LRC_GATHERER_FLAG(StridedRows, STRIDED_ROWS, false)
// Whether mainloop reads a K-major tile's fragments with ldmatrix.
LRC_GATHERER_FLAG(ByLdmatrix, LDMATRIX, false)
// Whether mainloop pairs a gatherer's tile (see Operand): where the pair shares a line (A
// MN-major, B K-major), unless the gatherer says otherwise with PAIRED.
LRC_GATHERER_FLAG(MayPair, PAIRED, true)

// Loads this thread's slots of one k tile of an operand into registers.
template <int ROWS, int PACK, class G>
__device__ __forceinline__ void load_tile(const ConvParams& p, G& g, bool row_ok, int row0, int rows, int k0, int k_end,
                                          float (&r)[Operand<ROWS, G::LAYOUT, PACK>::LOADS]) {
    using O = Operand<ROWS, G::LAYOUT, PACK>;
    const int tid = threadIdx.x;
    if constexpr (G::LAYOUT == Major::MN) {
        if constexpr (G::TAP_MAJOR) {
            // Whole tiles of one tap (the host plans these kernels for channel counts that are
            // multiples of BK): one bounds check and address per tile, then fixed offsets.
            const float* v = row_ok ? g.tile(p, k0) : nullptr;
            if (v == nullptr) {
#pragma unroll
                for (int i = 0; i < O::LOADS; ++i) {
                    r[i] = 0.0f;
                }
            } else {
                // Walk from slot to slot: the steps between this thread's channels are a few
                // constants, where 16 precomputed offsets would cost 16 registers.
                const int stride = G::channel_stride(p);
                v += O::slot_k(tid, 0) * stride;
                r[0] = *v;
#pragma unroll
                for (int i = 1; i < O::LOADS; ++i) {
                    v += (O::slot_k(tid, i) - O::slot_k(tid, i - 1)) * stride;
                    r[i] = *v;
                }
            }
        } else {
#pragma unroll
            for (int i = 0; i < O::LOADS; ++i) {
                const int k = k0 + O::slot_k(tid, i);
                r[i] = (row_ok && k < k_end) ? g.at(p, k) : 0.0f;
            }
        }
    } else {
        const int k = k0 + O::slot_k(tid, 0);
        const bool k_ok = k < k_end;
        if (k_ok) {
            g.fix_k(p, k);
        }
        if constexpr (G::TAP_MAJOR) {
            // Runs of GROUP slots cover 32 consecutive rows (the warps' rows interleave), which
            // share a tap; the host plans these kernels for c_in a multiple of 32 and row counts
            // (c_in taps) too, so a run is wholly in range or wholly out.
            constexpr int GROUP = WARP / WARPS;
            static_assert(O::LOADS % GROUP == 0 && O::slot_row(0, GROUP) == WARP, "32-row runs of slots");
#pragma unroll
            for (int i0 = 0; i0 < O::LOADS; i0 += GROUP) {
                const int row = row0 + O::slot_row(tid, i0);
                const float* v = (k_ok && row < rows) ? g.run_start(p, i0 / GROUP) : nullptr;
                const int step = (O::slot_row(tid, i0 + 1) - O::slot_row(tid, i0)) * G::channel_stride(p);
#pragma unroll
                for (int j = 0; j < GROUP; ++j) {
                    r[i0 + j] = v != nullptr ? v[j * step] : 0.0f;
                }
            }
        } else if constexpr (StridedRows<G>::value) {
            // A thread's rows are WARPS apart: one address, then a step per slot.
            static_assert(O::LOADS == 1 || O::slot_row(0, 1) - O::slot_row(0, 0) == WARPS, "slots WARPS rows apart");
            const int row = row0 + O::slot_row(tid, 0);
            const float* v = g.row_at(p, row);
            const size_t step = WARPS * G::row_stride(p);
#pragma unroll
            for (int i = 0; i < O::LOADS; ++i) {
                r[i] = (k_ok && row + WARPS * i < rows) ? *v : 0.0f;
                v += step;
            }
        } else {
#pragma unroll
            for (int i = 0; i < O::LOADS; ++i) {
                const int row = row0 + O::slot_row(tid, i);
                r[i] = (k_ok && row < rows) ? g.at(p, row) : 0.0f;
            }
        }
    }
}

// Rounds this thread's slots to the precision M and stores them as words.
template <class M, int ROWS, Major L, bool PAIRED>
__device__ __forceinline__ void stash_tile(uint32_t* s, const float (&r)[Operand<ROWS, L, M::PACK>::LOADS]) {
    using O = Operand<ROWS, L, M::PACK, PAIRED>;
    const int tid = threadIdx.x;
    if constexpr (L == Major::K && M::PACK == 2) {
        // A word's two values (k = 2j, 2j + 1 of a row) belong to lanes 2j and 2j + 1, so each
        // lane converts two of its own values at once (slots i and i + 1: the same k, rows 8
        // apart) and stores the halves apart; the two lanes of a word write its two halves.
        uint16_t* halves = reinterpret_cast<uint16_t*>(s);
        const int k = O::slot_k(tid, 0);
#pragma unroll
        for (int i = 0; i < O::LOADS; i += 2) {
            const uint32_t two = M::word(r[i], r[i + 1]);
            halves[2 * O::index(O::slot_row(tid, i), k / 2) + k % 2] = static_cast<uint16_t>(two);
            halves[2 * O::index(O::slot_row(tid, i + 1), k / 2) + k % 2] = static_cast<uint16_t>(two >> 16);
        }
    } else {
        // Each word's values are this thread's consecutive slots.
#pragma unroll
        for (int i = 0; i < O::LOADS; i += M::PACK) {
            s[O::index(O::slot_row(tid, i), O::slot_k(tid, i) / M::PACK)] = M::word(r[i], r[i + M::PACK - 1]);
        }
    }
}

// Block tile BM x BN, WARPS_M x WARPS_N warps, each computing a (16*MT) x (8*NT) warp tile.
template <int BM_, int BN_, int WARPS_M_, int WARPS_N_>
struct Tile {
    static constexpr int BM = BM_, BN = BN_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_;
    static_assert(WARPS_M * WARPS_N == WARPS, "a block has 8 warps");
    static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
    static constexpr int MT = WM / 16, NT = WN / 8;
    static_assert(WM % 16 == 0 && WN % 8 == 0, "warp tile must be whole mma tiles");
};

// How mainloop keeps the operand tiles of tile T at precision PACK with gatherers GA, GB in
// shared memory: A's tile, and B's, in two stages when GB copies it (cp.async: the next tile
// lands in one while the mma read the other). A block's static shared memory is capped at
// 48 KiB; a layout above that takes its shared memory dynamically (DYNAMIC_BYTES, which the
// host passes at launch; 0 when static).
template <class T, int PACK, class GA, class GB>
struct SharedLayout {
    static constexpr bool A_PAIRED = GA::LAYOUT == Major::MN && MayPair<GA>::value;
    static constexpr bool B_PAIRED = GB::LAYOUT == Major::K && MayPair<GB>::value;
    static constexpr bool B_ASYNC = IsAsync<GB>::value;
    using OA = Operand<T::BM, GA::LAYOUT, PACK, A_PAIRED>;
    using OB = Operand<T::BN, GB::LAYOUT, PACK, B_PAIRED>;
    static constexpr int B_STAGES = B_ASYNC ? 2 : 1;
    static constexpr int WORDS = OA::SIZE + B_STAGES * OB::SIZE;
    static constexpr unsigned STATIC_LIMIT = 48 * 1024;
    static constexpr bool DYNAMIC = WORDS * sizeof(uint32_t) > STATIC_LIMIT;
    static constexpr unsigned DYNAMIC_BYTES = DYNAMIC ? WORDS * sizeof(uint32_t) : 0;
    static_assert(OA::SIZE % 4 == 0, "B's stages start 16-byte aligned");
};

// Accumulates the block tile (m0, n0) over k in [k_begin, k_end) into acc, in the mma
// accumulator layout. With sum_a, a_sum[i] also accumulates the FP32 values of this thread's
// A slots (row slot_row(tid, i)), which backward-weight turns into the bias gradient. (A runtime
// flag rather than a template parameter: a second instantiation would also double the shared
// memory of the kernel that holds both.)
template <class T, class Math, class GA, class GB>
__device__ void mainloop(const ConvParams& p, GA& ga, GB& gb, bool a_row_ok, bool b_row_ok, int m0, int M, int n0, int N,
                         int k_begin, int k_end, float (&acc)[T::MT][T::NT][4], bool sum_a,
                         float (&a_sum)[Operand<T::BM, GA::LAYOUT, Math::PACK>::LOADS]) {
    constexpr int PACK = Math::PACK;
    using S = SharedLayout<T, PACK, GA, GB>;
    constexpr bool A_PAIRED = S::A_PAIRED;
    constexpr bool B_PAIRED = S::B_PAIRED;
    constexpr bool B_ASYNC = S::B_ASYNC;
    constexpr bool A_LDMATRIX = ByLdmatrix<GA>::value;
    static_assert(!A_LDMATRIX || (GA::LAYOUT == Major::K && !A_PAIRED), "ldmatrix reads K-major rows of 4 words");
    constexpr bool B_LDMATRIX = ByLdmatrix<GB>::value;
    static_assert(!B_LDMATRIX || (GB::LAYOUT == Major::K && !B_PAIRED && T::NT % 2 == 0),
                  "ldmatrix reads K-major rows of 4 words, two column tiles at a time");
    using OA = typename S::OA;
    using OB = typename S::OB;
    if constexpr (B_ASYNC) {
        static_assert(std::is_same_v<typename GB::O, OB>, "a copied B arrives as the tile lays it out");
    }
    uint32_t* sa;
    uint32_t* sb;
    if constexpr (S::DYNAMIC) {
        LRC_DYNAMIC_SHARED(uint32_t, words);
        sa = words;
        sb = words + OA::SIZE;
    } else {
        alignas(16) __shared__ uint32_t a_tile[OA::SIZE];
        alignas(16) __shared__ uint32_t b_tiles[S::B_STAGES * OB::SIZE];
        sa = a_tile;
        sb = b_tiles;
    }
    float ra[OA::LOADS];
    float rb[B_ASYNC ? 1 : OB::LOADS];
    const int lane = threadIdx.x % WARP;
    const int warp = threadIdx.x / WARP;
    const int wm = (warp / T::WARPS_N) * T::WM;
    const int wn = (warp % T::WARPS_N) * T::WN;
    const int g = lane / 4;
    const int t = lane % 4;

    load_tile<T::BM, PACK>(p, ga, a_row_ok, m0, M, k_begin, k_end, ra);
    if constexpr (B_ASYNC) {
        gb.copy(sb, k_begin);
    } else {
        load_tile<T::BN, PACK>(p, gb, b_row_ok, n0, N, k_begin, k_end, rb);
    }
    const uint32_t* sbk = sb;  // this tile's B stage
    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
        stash_tile<Math, T::BM, GA::LAYOUT, A_PAIRED>(sa, ra);
        if constexpr (B_ASYNC) {
            lrc::cp_async_wait_all();  // this thread's copies of this tile (the barrier: everyone's)
        } else {
            stash_tile<Math, T::BN, GB::LAYOUT, B_PAIRED>(sb, rb);
        }
        if (sum_a) {
#pragma unroll
            for (int i = 0; i < OA::LOADS; ++i) {
                a_sum[i] += ra[i];
            }
        }
        __syncthreads();
        // The next tile's global loads are in flight while the tensor cores work on this one.
        // A copied B goes to the other stage, whose last readers (the previous tile's mma) are
        // past the barrier at the end of that tile.
        if (k0 + BK < k_end) {
            if constexpr (B_ASYNC) {
                gb.copy(sb + (sbk == sb ? OB::SIZE : 0), k0 + BK);
            }
            load_tile<T::BM, PACK>(p, ga, a_row_ok, m0, M, k0 + BK, k_end, ra);
            if constexpr (!B_ASYNC) {
                load_tile<T::BN, PACK>(p, gb, b_row_ok, n0, N, k0 + BK, k_end, rb);
            }
        }
        // One mma per 8 words of k: 8 (TF32) or 16 (BF16) values.
#pragma unroll
        for (int w = 0; w < OA::WK; w += 8) {
            uint32_t af[T::MT][4];
            uint32_t bf[T::NT][2];
            // A fragment's four words by ldmatrix (K-major tiles of the tap-major kernels), or
            // a paired operand's register pairs in one 64-bit load each (see Operand), or word
            // by word.
#pragma unroll
            for (int mt = 0; mt < T::MT; ++mt) {
                [[maybe_unused]] const int row = wm + mt * 16 + g;
                if constexpr (A_LDMATRIX) {
                    // Lanes 8q..8q+7 give the rows of matrix q: rows 0-7 and 8-15 of the
                    // fragment at words w (q = 0, 1) and w + 4 (q = 2, 3), so a0..a3 arrive as
                    // (g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4).
                    const int mrow = wm + mt * 16 + lane % 16;
                    lrc::load_matrix_x4(af[mt], sa, OA::index(mrow, w + (lane / 16) * 4));
                } else if constexpr (A_PAIRED) {
                    const uint2 lo = lrc::load_pair(&sa[OA::index(row, w + t)]);      // rows g, g + 8
                    const uint2 hi = lrc::load_pair(&sa[OA::index(row, w + t + 4)]);  // at column t + 4
                    af[mt][0] = lo.x, af[mt][1] = lo.y, af[mt][2] = hi.x, af[mt][3] = hi.y;
                } else {
                    af[mt][0] = sa[OA::index(row, w + t)];
                    af[mt][1] = sa[OA::index(row + 8, w + t)];
                    af[mt][2] = sa[OA::index(row, w + t + 4)];
                    af[mt][3] = sa[OA::index(row + 8, w + t + 4)];
                }
            }
#pragma unroll
            for (int nt = 0; nt < T::NT; ++nt) {
                [[maybe_unused]] const int col = wn + nt * 8 + g;
                if constexpr (B_LDMATRIX) {
                    // Lanes 8q..8q+7 give the rows of column tile nt + q / 2 at words
                    // w + 4 (q % 2): b0, b1 of tile nt, then of tile nt + 1.
                    if (nt % 2 == 0) {
                        uint32_t four[4];
                        const int mcol = wn + (nt + lane / 16) * 8 + lane % 8;
                        lrc::load_matrix_x4(four, sbk, OB::index(mcol, w + (lane / 8) % 2 * 4));
                        bf[nt][0] = four[0], bf[nt][1] = four[1];
                        bf[nt + 1][0] = four[2], bf[nt + 1][1] = four[3];
                    }
                } else if constexpr (B_PAIRED) {
                    const uint2 b = lrc::load_pair(&sbk[OB::index(col, w + t)]);  // k = t, t + 4
                    bf[nt][0] = b.x, bf[nt][1] = b.y;
                } else {
                    bf[nt][0] = sbk[OB::index(col, w + t)];
                    bf[nt][1] = sbk[OB::index(col, w + t + 4)];
                }
            }
#pragma unroll
            for (int mt = 0; mt < T::MT; ++mt) {
#pragma unroll
                for (int nt = 0; nt < T::NT; ++nt) {
                    Math::mma(acc[mt][nt], af[mt], bf[nt]);
                }
            }
        }
        __syncthreads();
        if constexpr (B_ASYNC) {
            sbk = sbk == sb ? sb + OB::SIZE : sb;
        }
    }
}

// Calls pair(row, col, value, value of col + 1) for every pair of columns (col even) of this
// thread's accumulators whose row is below M and whose first column is below N: an mma
// accumulator holds columns 2t and 2t + 1 of rows g and g + 8.
template <class T, class Pair>
__device__ __forceinline__ void for_each_pair(const float (&acc)[T::MT][T::NT][4], int m0, int M, int n0, int N,
                                              Pair pair) {
    const int lane = threadIdx.x % WARP;
    const int warp = threadIdx.x / WARP;
    const int wm = (warp / T::WARPS_N) * T::WM;
    const int wn = (warp % T::WARPS_N) * T::WN;
    const int g = lane / 4;
    const int t = lane % 4;
#pragma unroll
    for (int mt = 0; mt < T::MT; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int row = m0 + wm + mt * 16 + g + 8 * half;
            if (row >= M) {
                continue;
            }
#pragma unroll
            for (int nt = 0; nt < T::NT; ++nt) {
                const int col = n0 + wn + nt * 8 + 2 * t;
                if (col < N) {
                    pair(row, col, acc[mt][nt][2 * half], acc[mt][nt][2 * half + 1]);
                }
            }
        }
    }
}

// Calls store(row, col, value) for every in-range element of the block tile.
template <class T, class Store>
__device__ __forceinline__ void epilogue(const float (&acc)[T::MT][T::NT][4], int m0, int M, int n0, int N,
                                         Store store) {
    for_each_pair<T>(acc, m0, M, n0, N, [&](int row, int col, float v, float next) {
        store(row, col, v);
        if (col + 1 < N) {
            store(row, col + 1, next);
        }
    });
}

// Output pixel m of an n x c x hw tensor, channel c: out[(img * channels + c) * hw + pix].
struct PlaneStore {
    float* out;
    const float* bias;
    int hw, channels;
    __device__ void operator()(int m, int c, float v) const {
        const int img = m / hw;
        const int pix = m - img * hw;
        if (bias != nullptr) {
            v += bias[c];
        }
        out[(static_cast<size_t>(img) * channels + c) * hw + pix] = v;
    }
};

// The k range of this block's split of a forward or backward-data pass of depth K, its slice
// of the output (out_len values a split), and the bias it adds: with splits > 1, split z =
// blockIdx.z sums k in [z split_len, (z + 1) split_len) into out + z out_len, and split 0 alone
// adds the bias, so that split_reduce's fixed-order sum of the slices is the output; unsplit,
// all of k into out itself.
struct SplitSlice {
    int k_begin, k_end;
    float* out;
    const float* bias;
};
__device__ __forceinline__ SplitSlice split_slice(const ConvParams& p, int K, size_t out_len) {
    if (p.splits <= 1) {
        return {0, K, p.out, p.bias};
    }
    const int z = blockIdx.z;
    const int k_begin = z * p.split_len;
    return {k_begin, min(k_begin + p.split_len, K), p.out + z * out_len, z == 0 ? p.bias : nullptr};
}

template <class T, class Math, class GA, class GB>
__device__ void forward_by(const ConvParams& p) {
    const int M = p.n * p.h_out * p.w_out;
    const int N = p.c_out;
    const int K = p.c_in * p.kh * p.kw;
    const int m0 = blockIdx.x * T::BM;
    const int n0 = blockIdx.y * T::BN;
    const SplitSlice s = split_slice(p, K, static_cast<size_t>(M) * N);
    GA ga;
    using OA = Operand<T::BM, GA::LAYOUT, Math::PACK>;
    const int a_row = m0 + OA::slot_row(threadIdx.x, 0);
    const bool a_row_ok = a_row < M;
    if (a_row_ok) {
        ga.fix_row(p, a_row);
    }
    GB gb;
    if constexpr (IsAsync<GB>::value) {
        gb.fix_tile(p, n0, K / Math::PACK);
    }
    float acc[T::MT][T::NT][4] = {};
    float unused[OA::LOADS];
    mainloop<T, Math>(p, ga, gb, a_row_ok, true, m0, M, n0, N, s.k_begin, s.k_end, acc, false, unused);
    epilogue<T>(acc, m0, M, n0, N, PlaneStore{s.out, s.bias, p.h_out * p.w_out, p.c_out});
}

template <class T, class Math, int KH, int KW>
__device__ void forward(const ConvParams& p) {
    forward_by<T, Math, ImageByOutputPixel<KH, KW>, WeightByOutputChannel<KH, KW>>(p);
}

template <class T, class Math, class GA, class GB>
__device__ void backward_data_by(const ConvParams& p) {
    const int M = p.n * p.h * p.w;
    const int N = p.c_in;
    const int K = p.c_out * p.kh * p.kw;
    const int m0 = blockIdx.x * T::BM;
    const int n0 = blockIdx.y * T::BN;
    const SplitSlice s = split_slice(p, K, static_cast<size_t>(M) * N);
    GA ga;
    using OA = Operand<T::BM, GA::LAYOUT, Math::PACK>;
    const int a_row = m0 + OA::slot_row(threadIdx.x, 0);
    const bool a_row_ok = a_row < M;
    if (a_row_ok) {
        ga.fix_row(p, a_row);
    }
    GB gb;
    if constexpr (IsAsync<GB>::value) {
        gb.fix_tile(p, n0, K / Math::PACK);
    }
    float acc[T::MT][T::NT][4] = {};
    float unused[OA::LOADS];
    mainloop<T, Math>(p, ga, gb, a_row_ok, true, m0, M, n0, N, s.k_begin, s.k_end, acc, false, unused);
    epilogue<T>(acc, m0, M, n0, N, PlaneStore{s.out, s.bias, p.h * p.w, p.c_in});
}

template <class T, class Math, int KH, int KW>
__device__ void backward_data(const ConvParams& p) {
    backward_data_by<T, Math, GradByInputPixel<KH, KW>, WeightByInputChannel<KH, KW>>(p);
}

struct PartialStore {
    float* out;
    int cols;
    __device__ void operator()(int m, int n, float v) const { out[static_cast<size_t>(m) * cols + n] = v; }
};

// The same for a tap-major column n = (tap, ci): stored at ci * taps + tap, the OIHW order.
struct TapMajorPartialStore {
    float* out;
    int cols, c_in, taps;
    __device__ void operator()(int m, int n, float v) const {
        const int tap = n / c_in;
        const int ci = n - tap * c_in;
        out[static_cast<size_t>(m) * cols + ci * taps + tap] = v;
    }
};

template <class T, class Math, class GB>
__device__ void backward_weight_by(const ConvParams& p) {
    const int M = p.c_out;
    const int N = p.c_in * p.kh * p.kw;
    const int R = p.n * p.h_out * p.w_out;
    const int split = blockIdx.z;
    const int k_begin = split * p.split_len;
    const int k_end = min(k_begin + p.split_len, R);
    const int m0 = blockIdx.y * T::BM;
    const int n0 = blockIdx.x * T::BN;
    // The tap-major B follows its pixels with a cursor, and so does A, which reads the same ones.
    using GA = std::conditional_t<GB::TAP_MAJOR, GradByOutputChannelFollowed, GradByOutputChannel>;
    using OA = Operand<T::BM, GA::LAYOUT, Math::PACK>;
    GA ga;
    GB gb;
    if constexpr (GB::TAP_MAJOR) {
        gb.fix_rows(p, n0 + Operand<T::BN, GB::LAYOUT, Math::PACK>::slot_row(threadIdx.x, 0));
    }
    float acc[T::MT][T::NT][4] = {};
    float a_sum[OA::LOADS] = {};
    const bool bias_block = p.out_bias != nullptr && blockIdx.x == 0;
    mainloop<T, Math>(p, ga, gb, true, true, m0, M, n0, N, k_begin, k_end, acc, bias_block, a_sum);
    float* out = p.out + static_cast<size_t>(split) * M * N;
    if constexpr (GB::TAP_MAJOR) {
        epilogue<T>(acc, m0, M, n0, N, TapMajorPartialStore{out, N, p.c_in, p.kh * p.kw});
    } else {
        epilogue<T>(acc, m0, M, n0, N, PartialStore{out, N});
    }
    if (bias_block) {
        // Lane l of a warp summed k = l (mod 32) of its rows; add across the warp.
#pragma unroll
        for (int i = 0; i < OA::LOADS; ++i) {
            const float s = lrc::warp_sum(a_sum[i]);
            const int m = m0 + OA::slot_row(threadIdx.x, i);
            if (threadIdx.x % WARP == 0 && m < M) {
                p.out_bias[static_cast<size_t>(split) * M + m] = s;
            }
        }
    }
}

template <class T, class Math, int KH, int KW>
__device__ void backward_weight(const ConvParams& p) {
    backward_weight_by<T, Math, ImageByTap<KH, KW>>(p);
}

// The 3x3 (or 2x2) weights (OIHW) as PackedWeight reads them: word j of packed row n holds,
// rounded to M's precision, the PACK values of k = PACK * j onwards (k = (tap, channel)) of row
// n of the GEMM's B (forward: weight[n][c][tap], rows c_out, channels c_in;
// backward-data: weight[c][n][tap], rows c_in, channels c_out), zero in the padding rows.
// One thread per word, grid-stride: the writes are contiguous, the reads small and cached.
template <class M, bool BACKWARD_DATA>
__device__ void pack_weight(const ConvParams& p) {
    const int TAPS = p.kh * p.kw;
    const int rows = BACKWARD_DATA ? p.c_in : p.c_out;
    const int channels = BACKWARD_DATA ? p.c_out : p.c_in;
    const int row_words = TAPS * channels / M::PACK;
    const size_t words = static_cast<size_t>((rows + PACKED_ROWS - 1) / PACKED_ROWS * PACKED_ROWS) * row_words;
    uint32_t* out = reinterpret_cast<uint32_t*>(p.out);
    for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < words;
         i += static_cast<size_t>(gridDim.x) * blockDim.x) {
        const int n = static_cast<int>(i / row_words);
        const int j = static_cast<int>(i - static_cast<size_t>(n) * row_words);
        float v[2] = {0.0f, 0.0f};
        if (n < rows) {
#pragma unroll
            for (int h = 0; h < M::PACK; ++h) {
                const int k = j * M::PACK + h;
                const int tap = k / channels;
                const int c = k - tap * channels;
                const size_t at = BACKWARD_DATA ? (static_cast<size_t>(c) * p.c_in + n) * TAPS + tap
                                                : (static_cast<size_t>(n) * p.c_in + c) * TAPS + tap;
                v[h] = p.weight[at];
            }
        }
        out[i] = M::word(v[0], v[1]);
    }
}

// Forward and backward-data: 128 pixels x (64 | 32) channels per block; the wide tap-major
// kernels 128 x 128, each warp 32 x 64 (twice the mma per fragment loaded, and the loaders'
// work per tile shared by twice the products).
using PixelTile64 = Tile<128, 64, 4, 2>;
using PixelTile32 = Tile<128, 32, 4, 2>;
using PixelTile128 = Tile<128, 128, 4, 2>;

// The dynamic shared memory of the wide tap-major kernels of precision M (forward and
// backward-data alike; 0 where it fits statically): what the host must launch them with.
template <class M>
constexpr unsigned wide_tap_shared_bytes() {
    return SharedLayout<PixelTile128, M::PACK, ImageByOutputPixelTapMajor<3, 3>,
                        PackedWeight<PixelTile128::BN, M::PACK>>::DYNAMIC_BYTES;
}
static_assert(wide_tap_shared_bytes<Tf32>() ==
                  SharedLayout<PixelTile128, 1, GradByInputPixelTapMajor<3, 3>, PackedWeight<128, 1>>::DYNAMIC_BYTES,
              "forward and backward-data share their layout");
static_assert(wide_tap_shared_bytes<Tf32>() ==
                  SharedLayout<PixelTile128, 1, ImageByOutputPixelTapMajor<2, 2>, PackedWeight<128, 1>>::DYNAMIC_BYTES,
              "the 2x2 kernels share the 3x3 ones' layout");
// Backward-weight: 64 output channels x 64 taps, or 32 x 128, per block; the wide tap-major
// kernels 64 x 128, each warp 32 x 32.
using WeightTile64 = Tile<64, 64, 2, 4>;
using WeightTile32 = Tile<32, 128, 1, 8>;
using WeightTile128 = Tile<64, 128, 2, 4>;

}  // namespace v2

// Kernel names: conv_<pass>_<precision>_<kernel size>_<tile>; precision tf32 or bf16; k1/k2/k3
// are 1x1/2x2/3x3 specialisations, kany reads the kernel size from the parameters. Forward and
// backward-data grids are (ceil(M / 128), ceil(N / tile), splits); backward-weight grids
// (ceil(c_in*kh*kw / 128), ceil(c_out / tile), splits). All take 256 threads.
#define LRC_CONV_MMA(PREC, MATH, KS, KH, KW)                                          \
    LRC_KERNEL(conv_fwd_##PREC##_##KS##_n64, ConvParams, v2::THREADS, 2) {            \
        v2::forward<v2::PixelTile64, v2::MATH, KH, KW>(p);                            \
    }                                                                                 \
    LRC_KERNEL(conv_fwd_##PREC##_##KS##_n32, ConvParams, v2::THREADS, 2) {            \
        v2::forward<v2::PixelTile32, v2::MATH, KH, KW>(p);                            \
    }                                                                                 \
    LRC_KERNEL(conv_bwd_data_##PREC##_##KS##_n64, ConvParams, v2::THREADS, 2) {       \
        v2::backward_data<v2::PixelTile64, v2::MATH, KH, KW>(p);                      \
    }                                                                                 \
    LRC_KERNEL(conv_bwd_data_##PREC##_##KS##_n32, ConvParams, v2::THREADS, 2) {       \
        v2::backward_data<v2::PixelTile32, v2::MATH, KH, KW>(p);                      \
    }                                                                                 \
    LRC_KERNEL(conv_bwd_weight_##PREC##_##KS##_m64, ConvParams, v2::THREADS, 2) {     \
        v2::backward_weight<v2::WeightTile64, v2::MATH, KH, KW>(p);                   \
    }                                                                                 \
    LRC_KERNEL(conv_bwd_weight_##PREC##_##KS##_m32, ConvParams, v2::THREADS, 2) {     \
        v2::backward_weight<v2::WeightTile32, v2::MATH, KH, KW>(p);                   \
    }

LRC_CONV_SPECIALISATIONS(LRC_CONV_MMA)

// Tap-major 3x3 and 2x2 kernels (tf32-mma-tap, bf16-mma-tap; the _n128 and _m64n128 ones
// tf32-mma-wide and bf16-mma-wide), for a channel count that is a multiple of 32 (c_in forward and
// backward-weight, c_out backward-data); grids and tiles as above. Forward and backward-data
// read their B from p.weight as packed by conv_pack_<pass>_<precision> (the host runs it first;
// grid-stride, any grid), and their K is a multiple of BK. The TF32 _n128 kernels take
// wide_tap_shared_bytes<Tf32>() of dynamic shared memory.
#define LRC_CONV_MMA_TAP(PREC, MATH)                                                                          \
    LRC_KERNEL(conv_pack_fwd_##PREC, ConvParams, v2::THREADS) { v2::pack_weight<v2::MATH, false>(p); }        \
    LRC_KERNEL(conv_pack_bwd_data_##PREC, ConvParams, v2::THREADS) { v2::pack_weight<v2::MATH, true>(p); }    \
    LRC_KERNEL(conv_bwd_data_##PREC##_k3t_n64, ConvParams, v2::THREADS, 2) {                                 \
        v2::backward_data_by<v2::PixelTile64, v2::MATH, v2::GradByInputPixelTapMajor<3, 3>,                  \
                             v2::PackedWeight<v2::PixelTile64::BN, v2::MATH::PACK>>(p);                      \
    }                                                                                                         \
    LRC_KERNEL(conv_bwd_data_##PREC##_k3t_n32, ConvParams, v2::THREADS, 2) {                                 \
        v2::backward_data_by<v2::PixelTile32, v2::MATH, v2::GradByInputPixelTapMajor<3, 3>,                  \
                             v2::PackedWeight<v2::PixelTile32::BN, v2::MATH::PACK>>(p);                      \
    }                                                                                                         \
    LRC_KERNEL(conv_bwd_data_##PREC##_k3t_n128, ConvParams, v2::THREADS, 2) {                                \
        v2::backward_data_by<v2::PixelTile128, v2::MATH, v2::GradByInputPixelTapMajor<3, 3>,                 \
                             v2::PackedWeight<v2::PixelTile128::BN, v2::MATH::PACK>>(p);                     \
    }                                                                                                         \
    LRC_CONV_MMA_TAP_FWD_WEIGHT(PREC, MATH, k3t, 3)                                                           \
    LRC_CONV_MMA_TAP_FWD_WEIGHT(PREC, MATH, k2t, 2)

// The forward and backward-weight kernels of LRC_CONV_MMA_TAP for a KxK kernel (KS: k3t, k2t).
// 2x2 has these two alone: a 2x2 stride-2 transposed convolution runs its backward-data and
// weight gradient through this forward pass and this backward-weight (its forward pass goes
// by tfwd k2s2); conv_pack_fwd_<precision> packs the forward weights of either size.
#define LRC_CONV_MMA_TAP_FWD_WEIGHT(PREC, MATH, KS, K)                                                        \
    LRC_KERNEL(conv_fwd_##PREC##_##KS##_n64, ConvParams, v2::THREADS, 2) {                                   \
        v2::forward_by<v2::PixelTile64, v2::MATH, v2::ImageByOutputPixelTapMajor<K, K>,                      \
                       v2::PackedWeight<v2::PixelTile64::BN, v2::MATH::PACK>>(p);                            \
    }                                                                                                         \
    LRC_KERNEL(conv_fwd_##PREC##_##KS##_n32, ConvParams, v2::THREADS, 2) {                                   \
        v2::forward_by<v2::PixelTile32, v2::MATH, v2::ImageByOutputPixelTapMajor<K, K>,                      \
                       v2::PackedWeight<v2::PixelTile32::BN, v2::MATH::PACK>>(p);                            \
    }                                                                                                         \
    LRC_KERNEL(conv_fwd_##PREC##_##KS##_n128, ConvParams, v2::THREADS, 2) {                                  \
        v2::forward_by<v2::PixelTile128, v2::MATH, v2::ImageByOutputPixelTapMajor<K, K>,                     \
                       v2::PackedWeight<v2::PixelTile128::BN, v2::MATH::PACK>>(p);                           \
    }                                                                                                         \
    LRC_KERNEL(conv_bwd_weight_##PREC##_##KS##_m64, ConvParams, v2::THREADS, 2) {                            \
        v2::backward_weight_by<v2::WeightTile64, v2::MATH, v2::ImageByTapTapMajor<K, K, v2::WeightTile64::BN / 32>>(p); \
    }                                                                                                         \
    LRC_KERNEL(conv_bwd_weight_##PREC##_##KS##_m32, ConvParams, v2::THREADS, 2) {                            \
        v2::backward_weight_by<v2::WeightTile32, v2::MATH, v2::ImageByTapTapMajor<K, K, v2::WeightTile32::BN / 32>>(p); \
    }                                                                                                         \
    LRC_KERNEL(conv_bwd_weight_##PREC##_##KS##_m64n128, ConvParams, v2::THREADS, 2) {                        \
        v2::backward_weight_by<v2::WeightTile128, v2::MATH,                                                  \
                               v2::ImageByTapTapMajor<K, K, v2::WeightTile128::BN / 32>>(p);                 \
    }

LRC_CONV_MMA_TAP(tf32, Tf32)
LRC_CONV_MMA_TAP(bf16, Bf16)

// Backward-weight by halo tiles (tf32-mma-halo, bf16-mma-halo; conv_halo.cuh): 64 output channels a block, or
// 32 for c_out <= 32 (_m32); k tiles of one row of 32 pixels (_w32: W a multiple of 32) or two
// rows of 16 (_w16: W = 16). Grid (c_in / 32, ceil(c_out / BM), splits).
#include "conv_halo.cuh"

LRC_KERNEL(conv_bwd_weight_tf32_k3h_m64_w32, ConvParams, halo::THREADS, 2) {
    halo::backward_weight<halo::Tile<2, 32>, v2::Tf32>(p);
}
LRC_KERNEL(conv_bwd_weight_tf32_k3h_m64_w16, ConvParams, halo::THREADS, 2) {
    halo::backward_weight<halo::Tile<2, 16>, v2::Tf32>(p);
}
LRC_KERNEL(conv_bwd_weight_tf32_k3h_m32_w32, ConvParams, halo::THREADS, 2) {
    halo::backward_weight<halo::Tile<2, 32, 2>, v2::Tf32>(p);
}
LRC_KERNEL(conv_bwd_weight_tf32_k3h_m32_w16, ConvParams, halo::THREADS, 2) {
    halo::backward_weight<halo::Tile<2, 16, 2>, v2::Tf32>(p);
}
LRC_KERNEL(conv_bwd_weight_bf16_k3h_m64_w32, ConvParams, halo::THREADS, 2) {
    halo::backward_weight_bf16<halo::Tile<2, 32>>(p);
}
LRC_KERNEL(conv_bwd_weight_bf16_k3h_m64_w16, ConvParams, halo::THREADS, 2) {
    halo::backward_weight_bf16<halo::Tile<2, 16>>(p);
}
LRC_KERNEL(conv_bwd_weight_bf16_k3h_m32_w32, ConvParams, halo::THREADS, 2) {
    halo::backward_weight_bf16<halo::Tile<2, 32, 2>>(p);
}
LRC_KERNEL(conv_bwd_weight_bf16_k3h_m32_w16, ConvParams, halo::THREADS, 2) {
    halo::backward_weight_bf16<halo::Tile<2, 16, 2>>(p);
}

// Forward and backward-data by halo tiles (tf32-mma-halo, bf16-mma-halo; conv_halo_fwd.cuh): 32
// output channels and 256 output pixels a block (_n32, for 32 outputs or fewer: c_out forward,
// c_in backward-data), or 64 and 128 (_n64); rows of 32 columns (_w32: W a multiple of
// 32) or of 16 (_w16: W a multiple of 16); input channels a multiple of 8 (TF32) or 16 (BF16).
// Grid (n * ceil(H / rows) * (W / columns), ceil(outputs / BN)); the weights packed first by
// conv_pack_<pass>_halo_<precision>_<n32|n64> (grid-stride, any grid); the kernels whose
// halo_fwd::Tile has DYNAMIC_BYTES take that much dynamic shared memory.
#include "conv_halo_fwd.cuh"

#define LRC_CONV_HALO_FWD(PREC, MATH, BN)                                                                  \
    LRC_KERNEL(conv_pack_fwd_halo_##PREC##_n##BN, ConvParams, halo_fwd::THREADS) {                        \
        halo_fwd::pack_weight<v2::MATH, BN, false>(p);                                                    \
    }                                                                                                      \
    LRC_KERNEL(conv_pack_bwd_data_halo_##PREC##_n##BN, ConvParams, halo_fwd::THREADS) {                   \
        halo_fwd::pack_weight<v2::MATH, BN, true>(p);                                                     \
    }                                                                                                      \
    LRC_KERNEL(conv_fwd_##PREC##_k3h_n##BN##_w32, ConvParams, halo_fwd::THREADS, 2) {                     \
        halo_fwd::convolve<halo_fwd::Tile<32, BN, v2::MATH::PACK>, v2::MATH, false>(p);                   \
    }                                                                                                      \
    LRC_KERNEL(conv_fwd_##PREC##_k3h_n##BN##_w16, ConvParams, halo_fwd::THREADS, 2) {                     \
        halo_fwd::convolve<halo_fwd::Tile<16, BN, v2::MATH::PACK>, v2::MATH, false>(p);                   \
    }                                                                                                      \
    LRC_KERNEL(conv_bwd_data_##PREC##_k3h_n##BN##_w32, ConvParams, halo_fwd::THREADS, 2) {                \
        halo_fwd::convolve<halo_fwd::Tile<32, BN, v2::MATH::PACK>, v2::MATH, true>(p);                    \
    }                                                                                                      \
    LRC_KERNEL(conv_bwd_data_##PREC##_k3h_n##BN##_w16, ConvParams, halo_fwd::THREADS, 2) {                \
        halo_fwd::convolve<halo_fwd::Tile<16, BN, v2::MATH::PACK>, v2::MATH, true>(p);                    \
    }

LRC_CONV_HALO_FWD(tf32, Tf32, 32)
LRC_CONV_HALO_FWD(tf32, Tf32, 64)
LRC_CONV_HALO_FWD(bf16, Bf16, 32)
LRC_CONV_HALO_FWD(bf16, Bf16, 64)

// Forward and backward-data of the 1x1 and 3x3 convolutions with few channels on the FP32
// cores (tf32-mma-tap and after; conv_direct.cuh): conv_<pass>_<precision>_k<K>d_o<OUTS> for up
// to OUTS outputs (c_out forward, c_in backward-data), operands rounded to the precision. Grid
// ceil(n h w / 256), 256 threads. No minimum of blocks a multiprocessor: ptxas then gives them
// no spills, where asking for more blocks made it spill.
#include "conv_direct.cuh"

#define LRC_CONV_DIRECT(PREC, MATH, K, OUTS)                                                 \
    LRC_KERNEL(conv_fwd_##PREC##_k##K##d_o##OUTS, ConvParams, direct::THREADS, 2) {          \
        direct::convolve<v2::MATH, K, OUTS, false>(p);                                       \
    }                                                                                        \
    LRC_KERNEL(conv_bwd_data_##PREC##_k##K##d_o##OUTS, ConvParams, direct::THREADS, 2) {     \
        direct::convolve<v2::MATH, K, OUTS, true>(p);                                        \
    }

LRC_CONV_DIRECT(tf32, Tf32, 1, 16)
LRC_CONV_DIRECT(tf32, Tf32, 1, 32)
LRC_CONV_DIRECT(tf32, Tf32, 3, 4)
LRC_CONV_DIRECT(tf32, Tf32, 3, 32)
LRC_CONV_DIRECT(bf16, Bf16, 1, 16)
LRC_CONV_DIRECT(bf16, Bf16, 1, 32)
LRC_CONV_DIRECT(bf16, Bf16, 3, 4)
LRC_CONV_DIRECT(bf16, Bf16, 3, 32)

// ---------------------------------------------------------------------------------------------
// Transposed-convolution forward pass, one GEMM per tap, for the kernels that tile the output:
// kh == kw == stride and no padding (the U-Net's 2x2 stride-2 upsampling; 1x1 stride 1). Each
// output pixel (img, co, s*y + ty, s*x + tx) then meets exactly one tap (ty, tx) of every input
// channel, at input pixel (y, x):
//   tfwd   m = input pixel (img, y, x)   n = c_out   k = c_in   (grid z = tap (ty, tx))
//          A = x, B = weight[ci][co][ty][tx], + bias[co], stored at (s*y + ty, s*x + tx).
//   k2s2   (2x2 stride 2 alone) m = input pixel   n = (c_out, ty, tx)   k = c_in   (one GEMM)
//          B = the weight tensor as it lies; columns (ty, 0) and (ty, 1) stored as one pair.
// The backward-data pass it replaces for these shapes runs k over (c_in, ky, kx) and finds a
// matching tap in one k column of s*s: s*s times the multiply-adds. The parameters are the
// replaced pass's ConvParams, those of the convolution this one transposes, so in these terms:
// x = p.dy (n x p.c_out x p.h_out x p.w_out), weight = p.weight (p.c_out x p.c_in x kh x kw),
// out = p.out (n x p.c_in x p.h x p.w): K = p.c_out, N = p.c_in, M = n * p.h_out * p.w_out.
// Every output element is written once, by the block of its tap; no atomics.
// ---------------------------------------------------------------------------------------------

namespace tfwd {

// The output element of row m (input pixel) and column c (output channel) for `tap`.
struct TapStore {
    float* out;
    const float* bias;
    int hw_in, w_in, stride, ty, tx, h_out, w_out, channels;
    __device__ void operator()(int m, int c, float v) const {
        const int img = m / hw_in;
        const int pix = m - img * hw_in;
        const int y = pix / w_in;
        const int x = pix - y * w_in;
        if (bias != nullptr) {
            v += bias[c];
        }
        out[((static_cast<size_t>(img) * channels + c) * h_out + y * stride + ty) * w_out + x * stride + tx] = v;
    }
    __device__ static TapStore of(const ConvParams& p, int tap) {
        const int ty = tap / p.kw;
        return TapStore{p.out, p.bias, p.h_out * p.w_out, p.w_out, p.stride, ty, tap - ty * p.kw, p.h, p.w, p.c_in};
    }
};

// The 2x2 stride-2 transposed forward pass as one GEMM over all four taps (see
// transposed_forward_2x2): column c = 4 co + 2 ty + tx of row m (input pixel (img, y, x)) is
// output (img, co, 2y + ty, 2x + tx). Columns c and c + 1 (c even: tx = 0 and 1) are two
// neighbours of one output row, stored as one 8-byte pair (w_out = 2 w is even, so the pair is
// aligned).
struct PairStore {
    float* out;
    const float* bias;
    int hw_in, w_in, h_out, w_out, channels;
    __device__ void operator()(int m, int c, float v0, float v1) const {
        const int img = m / hw_in;
        const int pix = m - img * hw_in;
        const int y = pix / w_in;
        const int x = pix - y * w_in;
        const int co = c / 4;
        const int ty = c / 2 % 2;
        if (bias != nullptr) {
            v0 += bias[co];
            v1 += bias[co];
        }
        lrc::store_pair(out + ((static_cast<size_t>(img) * channels + co) * h_out + 2 * y + ty) * w_out + 2 * x, v0,
                        v1);
    }
    __device__ static PairStore of(const ConvParams& p) {
        return PairStore{p.out, p.bias, p.h_out * p.w_out, p.w_out, p.h, p.w, p.c_in};
    }
};

}  // namespace tfwd

namespace v1 {

// The per-tap GEMM of tap blockIdx.z; the loaders walk m (A) and n (B) fastest.
struct TransposedForwardTap {
    ConvParams p;
    int M, N, K, tap;
    tfwd::TapStore out;
    static constexpr bool A_ALONG_K = false;
    static constexpr bool B_ALONG_K = false;
    __device__ explicit TransposedForwardTap(const ConvParams& q)
        : p(q),
          M(q.n * q.h_out * q.w_out),
          N(q.c_in),
          K(q.c_out),
          tap(static_cast<int>(blockIdx.z)),
          out(tfwd::TapStore::of(q, static_cast<int>(blockIdx.z))) {}
    __device__ float a(int m, int k) const {
        const int hw = p.h_out * p.w_out;
        const int img = m / hw;
        const int pix = m - img * hw;
        return p.dy[(static_cast<size_t>(img) * K + k) * hw + pix];
    }
    __device__ float b(int k, int n) const {
        return p.weight[(static_cast<size_t>(k) * N + n) * p.kh * p.kw + tap];
    }
    __device__ void store(int m, int n, float v) const { out(m, n, v); }
};

}  // namespace v1

// Grid (ceil(n*h*w / 64), ceil(c_out / 64), kh*kw) in the transposed convolution's terms, 256
// threads.
LRC_KERNEL(conv_tfwd_fp32, ConvParams, v1::THREADS) {
    v1::gemm_and_store<v1::TransposedForwardTap>(p);
}

namespace v2 {

// The two gatherers offset their row pointers by 32-bit products (the host checks that one
// image of x and the whole weight tensor have fewer than 2^31 elements): with 64-bit ones the
// BF16 kernel of the wide tile spills.

// A: x, rows = input pixels (contiguous along m), k = input channel.
struct InputByPixel {
    static constexpr Major LAYOUT = Major::MN;
    static constexpr bool TAP_MAJOR = false;
    const float* x_pix = nullptr;
    __device__ void fix_row(const ConvParams& p, int m) {
        const int hw = p.h_out * p.w_out;
        const int img = m / hw;
        const int pix = m - img * hw;
        x_pix = p.dy + static_cast<size_t>(img) * p.c_out * hw + pix;
    }
    __device__ float at(const ConvParams& p, int k) const { return x_pix[k * p.h_out * p.w_out]; }
};

// B: weight[k][n][tap], rows = output channels, k = input channel. Neither direction is
// contiguous (n steps by the tap count, k by c_out taps); a warp reading 32 consecutive n
// touches kh*kw times the bytes it uses, which the other taps' blocks read from the caches.
struct WeightOfTap {
    static constexpr Major LAYOUT = Major::MN;
    static constexpr bool TAP_MAJOR = false;
    int tap = 0;
    const float* w_n = nullptr;
    __device__ void fix_row(const ConvParams& p, int n) {
        w_n = p.weight + static_cast<size_t>(n) * p.kh * p.kw + tap;
    }
    __device__ float at(const ConvParams& p, int k) const { return w_n[k * p.c_in * p.kh * p.kw]; }
};

// The block tile (blockIdx.x, blockIdx.y) of a transposed forward pass's GEMM: A = x by input
// pixel (M = n h_out w_out rows, K = c_out deep), B = gb's N columns (gb set up but for its
// rows, which this fixes); accumulated into acc.
template <class T, class Math, class GB>
__device__ __forceinline__ void transposed_forward_tile(const ConvParams& p, GB& gb, int N,
                                                        float (&acc)[T::MT][T::NT][4]) {
    const int M = p.n * p.h_out * p.w_out;
    const int m0 = blockIdx.x * T::BM;
    const int n0 = blockIdx.y * T::BN;
    using OA = Operand<T::BM, InputByPixel::LAYOUT, Math::PACK>;
    using OB = Operand<T::BN, GB::LAYOUT, Math::PACK>;
    InputByPixel ga;
    const bool a_row_ok = m0 + OA::slot_row(threadIdx.x, 0) < M;
    if (a_row_ok) {
        ga.fix_row(p, m0 + OA::slot_row(threadIdx.x, 0));
    }
    const bool b_row_ok = n0 + OB::slot_row(threadIdx.x, 0) < N;
    if (b_row_ok) {
        gb.fix_row(p, n0 + OB::slot_row(threadIdx.x, 0));
    }
    float unused[OA::LOADS];
    mainloop<T, Math>(p, ga, gb, a_row_ok, b_row_ok, m0, M, n0, N, 0, p.c_out, acc, false, unused);
}

template <class T, class Math>
__device__ void transposed_forward_by_tap(const ConvParams& p) {
    const int tap = blockIdx.z;
    WeightOfTap gb;
    gb.tap = tap;
    float acc[T::MT][T::NT][4] = {};
    transposed_forward_tile<T, Math>(p, gb, p.c_in, acc);
    epilogue<T>(acc, blockIdx.x * T::BM, p.n * p.h_out * p.w_out, blockIdx.y * T::BN, p.c_in,
                tfwd::TapStore::of(p, tap));
}

// B of transposed_forward_2x2: the weight tensor as it lies, weight[k][n'] with n' = (output
// channel, tap) = co kh kw + tap: a K x (N kh kw) matrix, contiguous along n' (a warp's loads
// of 32 consecutive columns are one 128-byte line).
struct WeightAllTaps {
    static constexpr Major LAYOUT = Major::MN;
    static constexpr bool TAP_MAJOR = false;
    const float* w_n = nullptr;
    __device__ void fix_row(const ConvParams& p, int n) { w_n = p.weight + n; }
    __device__ float at(const ConvParams& p, int k) const { return w_n[k * p.c_in * p.kh * p.kw]; }
};

// The 2x2 stride-2 transposed forward pass (no padding: the U-Net's upsampling) as one GEMM of
// N = 4 c_out columns, the four taps of each output channel side by side, instead of one GEMM
// per tap: a block reads its input pixels once for all four taps, and each thread's column
// pairs (tx = 0, 1) are neighbours of one output row, stored as one 8-byte pair, so that a
// warp writes whole 32-byte sectors (16 consecutive outputs a row) where the per-tap kernels
// write every other word of a sector and leave the rest to another block, later.
template <class T, class Math>
__device__ void transposed_forward_2x2(const ConvParams& p) {
    const int N = 4 * p.c_in;
    WeightAllTaps gb;
    float acc[T::MT][T::NT][4] = {};
    transposed_forward_tile<T, Math>(p, gb, N, acc);
    // N is a multiple of 4: a pair whose first column is in range is whole.
    for_each_pair<T>(acc, blockIdx.x * T::BM, p.n * p.h_out * p.w_out, blockIdx.y * T::BN, N,
                     tfwd::PairStore::of(p));
}

}  // namespace v2

// conv_tfwd_<precision>_<tile>: grid (ceil(n*h*w / 128), ceil(c_out / tile), kh*kw) in the
// transposed convolution's terms, 256 threads. conv_tfwd_<precision>_k2s2_<tile>: the 2x2
// stride-2 pass over all four taps, grid (ceil(n*h*w / 128), ceil(4 c_out / tile)) in the
// transposed convolution's terms (its input pixels, its output channels), 256 threads.
#define LRC_CONV_TFWD(PREC, MATH, KIND, PASS)                                    \
    LRC_KERNEL(conv_tfwd_##PREC##KIND##_n64, ConvParams, v2::THREADS, 2) {       \
        v2::PASS<v2::PixelTile64, v2::MATH>(p);                                  \
    }                                                                            \
    LRC_KERNEL(conv_tfwd_##PREC##KIND##_n32, ConvParams, v2::THREADS, 2) {       \
        v2::PASS<v2::PixelTile32, v2::MATH>(p);                                  \
    }

LRC_CONV_TFWD(tf32, Tf32, , transposed_forward_by_tap)
LRC_CONV_TFWD(bf16, Bf16, , transposed_forward_by_tap)
LRC_CONV_TFWD(tf32, Tf32, _k2s2, transposed_forward_2x2)
LRC_CONV_TFWD(bf16, Bf16, _k2s2, transposed_forward_2x2)

// ---------------------------------------------------------------------------------------------
// Reductions that finish the backward passes.
// ---------------------------------------------------------------------------------------------

// Grid ceil(max(len, bias_len) / 256), 256 threads.
LRC_KERNEL(split_reduce, SplitReduceParams, 256) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < p.len) {
        float s = 0.0f;
        for (int k = 0; k < p.splits; ++k) {
            s += p.partial[static_cast<size_t>(k) * p.len + i];
        }
        p.out[i] = s;
    }
    if (p.out_bias != nullptr && i < p.bias_len) {
        float s = 0.0f;
        for (int k = 0; k < p.splits; ++k) {
            s += p.partial_bias[static_cast<size_t>(k) * p.bias_len + i];
        }
        p.out_bias[i] = s;
    }
}

// Grid (planes), 256 threads: the sum of each plane (the bias gradient of a transposed
// convolution, per image and channel, before split_reduce adds the images).
LRC_KERNEL(plane_sum, PlaneSumParams, 256) {
    const float* plane = p.x + static_cast<size_t>(blockIdx.x) * p.plane_len;
    float s = 0.0f;
    for (int i = threadIdx.x; i < p.plane_len; i += blockDim.x) {
        s += plane[i];
    }
    s = lrc::block_sum(s);
    if (threadIdx.x == 0) {
        p.out[blockIdx.x] = s;
    }
}
