// lrc-archs: 90a
// (build.rs compiles this file for the architectures of the line above only: wgmma exists on
// sm_90a alone, whose code runs on compute capability 9.0 devices only.)
//
// Convolution version 3: Hopper warpgroup MMA (wgmma.mma_async) for all three passes, as the
// implicit GEMMs of conv.cu (see its header) with one change: backward-weight is computed
// transposed, rows = (ci, ky, kx) and columns = c_out, so that the long tap dimension fills the
// 128-row tile and the weights' gradient dy is the K-major B operand. Rows are pixels (taps for
// backward-weight), columns channels.
//
// A block is two warpgroups (256 threads) computing 128 rows x 64 columns, each warpgroup 64 x 64
// with wgmma m64n64 (k8 TF32 / k16 BF16) and FP32 accumulators; or 128 x 32 with m64n32 where
// the GEMM has 32 columns or fewer (the U-Net's first and last levels), so as not to compute
// half a tile of zeros:
// - A goes from global memory straight into registers in the wgmma A fragment (a warp's
//   lanes with the same k read 8 consecutive rows), rounded to the operand precision; no
//   shared memory (TF32 wgmma would need A K-major there, which the pixel-major gathers are not).
// - B (weights; dy in backward-weight) is staged in shared memory, rounded, in the K-major
//   no-swizzle layout of core matrices (8 rows x 16 bytes) that a matrix descriptor describes,
//   with the core matrices along k spaced 32 + 128 / WK words apart (LBO) so that a warp's
//   stores of consecutive words of k hit 32 different banks.
// - Pipeline: two shared-memory stages. Each k tile: stage B and the A fragments, barrier, issue
//   the tile's wgmma (async) and commit, issue the next tile's global loads into registers
//   (in flight while the tensor cores work), then wait for the group. A stage is rewritten
//   two tiles later, after every warpgroup has waited for the group that read it (each waits
//   before the barrier of the next tile); the A registers after this warpgroup's own wait.
//   B is not copied with cp.async.bulk / TMA: weight rows (c_in*kh*kw floats) and dy rows
//   (h_out*w_out) are not 16-byte aligned in general, and B is rounded on the way in anyway.
// - Backward-weight splits its reduction over blocks (blockIdx.z) into partial sums that
//   conv.cu's split_reduce adds in split order, as v2; the blocks of the first row tile also sum
//   dy (FP32, each thread every 32nd k of the range, then across the lanes) for the bias.
// Rounding: both operands are rounded when staged to nearest even (TF32 with lrc::to_tf32, BF16
// with cvt.rn), exactly as v2, so the error bounds of v2 apply; the
// hardware's reading of the top 19 bits of a TF32 word then changes nothing.
// Determinism: each output element is one accumulator chain in k order; no atomics.

#include "common.cuh"
#include "conv_gather.cuh"

namespace v3 {

using gather::KernelSize;
using lrc::WARP;

constexpr int THREADS = 256;  // two warpgroups
constexpr int WARPGROUP = 128;
constexpr int BM = 128;  // 64 rows per warpgroup
constexpr int BK = 32;   // values of k per tile
// Columns per block (BN): 64 (wgmma n64), or 32 (n32) where the GEMM has 32 columns or fewer.
constexpr int STAGES = 2;

// The operand precisions: values per 32-bit word, the rounding of a word, the wgmma.
struct Tf32 {
    static constexpr int PACK = 1;
    __device__ static uint32_t word(float lo, float) { return lrc::to_tf32(lo); }
    __device__ static void mma(float (&d)[32], const uint32_t (&a)[4], uint64_t desc) {
        lrc::wgmma_tf32_m64n64k8(d, a, desc);
    }
    __device__ static void mma(float (&d)[16], const uint32_t (&a)[4], uint64_t desc) {
        lrc::wgmma_tf32_m64n32k8(d, a, desc);
    }
};
struct Bf16 {
    static constexpr int PACK = 2;
    __device__ static uint32_t word(float lo, float hi) { return lrc::to_bf16x2(lo, hi); }
    __device__ static void mma(float (&d)[32], const uint32_t (&a)[4], uint64_t desc) {
        lrc::wgmma_bf16_m64n64k16(d, a, desc);
    }
    __device__ static void mma(float (&d)[16], const uint32_t (&a)[4], uint64_t desc) {
        lrc::wgmma_bf16_m64n32k16(d, a, desc);
    }
};

// One shared-memory stage of B: BN rows x WK words of k, K-major core matrices; the core
// matrix of rows 8j.. and words 4i.. starts at word i * LBO + j * SBO.
template <class M, int BN_>
struct Stage {
    static constexpr int BN = BN_;
    static constexpr int WK = BK / M::PACK;
    static constexpr int STEPS = WK / 8;  // one wgmma per 8 words (32 bytes) of k
    static constexpr int LBO = 32 + 128 / WK;
    static constexpr int SBO = (WK / 4 - 1) * LBO + 32;
    static constexpr int WORDS = (BN / 8) * SBO;
    static constexpr int BYTES = WORDS * 4;
    static_assert(LBO % 4 == 0 && SBO % 4 == 0, "descriptor offsets are multiples of 16 bytes");
    static_assert((BN * WK) % THREADS == 0, "the B tile divides among the threads");
    // Words of B each thread stages per tile, and its A values (4 words per wgmma).
    static constexpr int B_WORDS = BN * WK / THREADS;
    static constexpr int A_WORDS = 4 * STEPS;
    __device__ static int index(int n, int w) { return (w / 4) * LBO + (n / 8) * SBO + (n % 8) * 4 + w % 4; }
};

// The dynamic shared memory of a block (the host plans the same number: conv_sm90.rs).
template <class M, int BN>
constexpr int shared_bytes() {
    return STAGES * Stage<M, BN>::BYTES;
}

// Output pixel m of an n x channels x hw tensor, channel c (+ bias[c] when given).
__device__ __forceinline__ void plane_store(const ConvParams& p, int hw, int channels, int m, int c, float v) {
    const int img = m / hw;
    const int pix = m - img * hw;
    if (p.bias != nullptr) {
        v += p.bias[c];
    }
    p.out[(static_cast<size_t>(img) * channels + c) * hw + pix] = v;
}

// The problems: GEMM rows, columns, the k range a block sums, the gathers a (rows) and b
// (columns), the store, and whether the block also sums b over k for a bias gradient.

// Forward: rows = output pixels, columns = c_out, k = (ci, ky, kx).
template <int KH, int KW>
struct Forward {
    static constexpr bool SUMS_B = false;
    using Row = gather::Window;
    __device__ static int rows(const ConvParams& p) { return p.n * p.h_out * p.w_out; }
    __device__ static int cols(const ConvParams& p) { return p.c_out; }
    __device__ static int depth(const ConvParams& p) { return p.c_in * KernelSize<KH, KW>(p).taps(); }
    __device__ static int k_begin(const ConvParams&) { return 0; }
    __device__ static int k_end(const ConvParams& p) { return depth(p); }
    __device__ static Row row(const ConvParams& p, int m) { return gather::window(p, m); }
    __device__ static float a(const ConvParams& p, const Row& r, int k) {
        const auto t = KernelSize<KH, KW>(p).tap(k);
        return gather::x_tap(p, r.x_img, r.iy0, r.ix0, t.c, t.ky, t.kx);
    }
    __device__ static float b(const ConvParams& p, int n, int k) {
        return p.weight[static_cast<size_t>(n) * depth(p) + k];
    }
    __device__ static void store(const ConvParams& p, int m, int n, float v) {
        plane_store(p, p.h_out * p.w_out, p.c_out, m, n, v);
    }
};

// Backward-data: rows = input pixels, columns = c_in, k = (co, ky, kx); A = dy at the output
// pixel whose window puts tap (ky, kx) on the input pixel, if there is one.
template <int KH, int KW>
struct BackwardData {
    static constexpr bool SUMS_B = false;
    using Row = gather::InputPixel;
    __device__ static int rows(const ConvParams& p) { return p.n * p.h * p.w; }
    __device__ static int cols(const ConvParams& p) { return p.c_in; }
    __device__ static int depth(const ConvParams& p) { return p.c_out * KernelSize<KH, KW>(p).taps(); }
    __device__ static int k_begin(const ConvParams&) { return 0; }
    __device__ static int k_end(const ConvParams& p) { return depth(p); }
    __device__ static Row row(const ConvParams& p, int m) { return gather::input_pixel(p, m); }
    __device__ static float a(const ConvParams& p, const Row& r, int k) {
        const auto t = KernelSize<KH, KW>(p).tap(k);
        return gather::dy_tap(p, r.dy_img, r.iy, r.ix, t.c, t.ky, t.kx);
    }
    __device__ static float b(const ConvParams& p, int n, int k) {
        const KernelSize<KH, KW> ks(p);
        const int co = k / ks.taps();
        const int t = k - co * ks.taps();
        return p.weight[(static_cast<size_t>(co) * p.c_in + n) * ks.taps() + t];
    }
    __device__ static void store(const ConvParams& p, int m, int n, float v) {
        plane_store(p, p.h * p.w, p.c_in, m, n, v);
    }
};

// Backward-weight, transposed so that the long tap dimension fills the 128 rows and c_out the 64
// columns: rows = (ci, ky, kx), columns = c_out, k = (img, oy, ox) over this block's split
// (blockIdx.z) of the reduction; A = x at the tap's input position of output pixel k, B = dy
// (contiguous along k). Writes the partial sums [split][c_out][c_in*kh*kw] and, in the blocks
// of the first row tile, the bias-gradient partials [split][c_out] (the sums of B over k).
template <int KH, int KW>
struct BackwardWeight {
    static constexpr bool SUMS_B = true;
    using Row = gather::Tap;
    __device__ static int rows(const ConvParams& p) { return p.c_in * KernelSize<KH, KW>(p).taps(); }
    __device__ static int cols(const ConvParams& p) { return p.c_out; }
    __device__ static int k_begin(const ConvParams& p) { return blockIdx.z * p.split_len; }
    __device__ static int k_end(const ConvParams& p) {
        return min(k_begin(p) + p.split_len, p.n * p.h_out * p.w_out);
    }
    __device__ static Row row(const ConvParams& p, int m) { return KernelSize<KH, KW>(p).tap(m); }
    __device__ static float a(const ConvParams& p, const Row& r, int k) {
        const gather::Window w = gather::window(p, k);
        return gather::x_tap(p, w.x_img, w.iy0, w.ix0, r.c, r.ky, r.kx);
    }
    __device__ static float b(const ConvParams& p, int n, int k) {
        const int hw = p.h_out * p.w_out;
        const int img = k / hw;
        return p.dy[(static_cast<size_t>(img) * p.c_out + n) * hw + (k - img * hw)];
    }
    __device__ static void store(const ConvParams& p, int m, int n, float v) {
        const int taps = rows(p);
        p.out[(static_cast<size_t>(blockIdx.z) * p.c_out + n) * taps + m] = v;
    }
};

// The k of value j (of PACK per word) of this thread's A words of the tile at k0: word e is
// register e % 4 of wgmma e / 4, at word column 8 (e / 4) + t + 4 ((e % 4) / 2), row half
// (e % 2) (rows g and g + 8 of the warp's 16).
template <class M>
__device__ __forceinline__ int a_k(int k0, int t, int j) {
    const int e = j / M::PACK;
    const int w = 8 * (e / 4) + t + 4 * ((e % 4) / 2);
    return k0 + w * M::PACK + j % M::PACK;
}

// Word q of this thread's B words: flat index tid + THREADS q over BN rows x WK words, words
// fastest (a warp reads consecutive k of one or two rows).
template <class S>
__device__ __forceinline__ int b_row(int tid, int q) {
    return (tid + THREADS * q) / S::WK;
}
template <class S>
__device__ __forceinline__ int b_word(int tid, int q) {
    return (tid + THREADS * q) % S::WK;
}

// Loads this thread's A and B values of the k tile at k0 (zero outside the GEMM and past k_end).
template <class P, class M, class S>
__device__ __forceinline__ void load_tile(const ConvParams& p, const typename P::Row (&rows)[2], const bool (&row_ok)[2],
                                          int n0, int N, int k_end, int k0, int t, float (&ra)[S::A_WORDS * M::PACK],
                                          float (&rb)[S::B_WORDS * M::PACK]) {
#pragma unroll
    for (int j = 0; j < S::A_WORDS * M::PACK; ++j) {
        const int k = a_k<M>(k0, t, j);
        const int h = (j / M::PACK) % 2;
        ra[j] = (row_ok[h] && k < k_end) ? P::a(p, rows[h], k) : 0.0f;
    }
#pragma unroll
    for (int q = 0; q < S::B_WORDS; ++q) {
        const int n = n0 + b_row<S>(threadIdx.x, q);
#pragma unroll
        for (int v = 0; v < M::PACK; ++v) {
            const int k = k0 + b_word<S>(threadIdx.x, q) * M::PACK + v;
            rb[q * M::PACK + v] = (n < N && k < k_end) ? P::b(p, n, k) : 0.0f;
        }
    }
}

template <class P, class M, int BN>
__device__ void conv_wgmma(const ConvParams& p) {
    using S = Stage<M, BN>;
    constexpr int ACC = BN / 2;  // accumulators a thread
    LRC_DYNAMIC_SHARED(uint32_t, smem);
    const int M_ = P::rows(p);
    const int N = P::cols(p);
    const int k_begin = P::k_begin(p);
    const int K = P::k_end(p);
    const int m0 = blockIdx.x * BM;
    const int n0 = blockIdx.y * BN;
    const int tid = threadIdx.x;
    const int lane = tid % WARP;
    const int g = lane / 4;
    const int t = lane % 4;
    // This thread's A rows: its warpgroup's 64, its warp's 16 of them, rows g and g + 8.
    const int row0 = m0 + 64 * (tid / WARPGROUP) + 16 * ((tid / WARP) % 4) + g;
    typename P::Row rows[2];
    bool row_ok[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        row_ok[h] = row0 + 8 * h < M_;
        if (row_ok[h]) {
            rows[h] = P::row(p, row0 + 8 * h);
        }
    }
    float ra[S::A_WORDS * M::PACK];
    float rb[S::B_WORDS * M::PACK];
    uint32_t af[S::STEPS][4];
    float acc[ACC];
#pragma unroll
    for (int i = 0; i < ACC; ++i) {
        acc[i] = 0.0f;
    }
    // Bias gradient: this thread's sums of its B values over k, one per value slot, so that each
    // sums every 32nd k of the range (as v2 does; the error bound counts on that).
    const bool sum_b = P::SUMS_B && p.out_bias != nullptr && blockIdx.x == 0;
    float b_sum[S::B_WORDS * M::PACK];
#pragma unroll
    for (int i = 0; i < S::B_WORDS * M::PACK; ++i) {
        b_sum[i] = 0.0f;
    }
    const uint32_t smem_base = lrc::shared_address(smem);
    load_tile<P, M, S>(p, rows, row_ok, n0, N, K, k_begin, t, ra, rb);
    int tile = 0;
    for (int k0 = k_begin; k0 < K; k0 += BK, ++tile) {
        const int stage = tile % STAGES;
        uint32_t* sb = smem + stage * S::WORDS;
#pragma unroll
        for (int q = 0; q < S::B_WORDS; ++q) {
            sb[S::index(b_row<S>(tid, q), b_word<S>(tid, q))] = M::word(rb[q * M::PACK], rb[q * M::PACK + M::PACK - 1]);
        }
#pragma unroll
        for (int e = 0; e < S::A_WORDS; ++e) {
            af[e / 4][e % 4] = M::word(ra[e * M::PACK], ra[e * M::PACK + M::PACK - 1]);
        }
        if (sum_b) {
#pragma unroll
            for (int i = 0; i < S::B_WORDS * M::PACK; ++i) {
                b_sum[i] += rb[i];
            }
        }
        lrc::fence_proxy_async_shared();
        __syncthreads();
        // Pin the operand registers before the fence, which orders only register writes issued
        // ahead of it: the A words' conversions and the accumulators must not sink past it.
#pragma unroll
        for (int i = 0; i < ACC; ++i) {
            lrc::wgmma_hold(acc[i]);
        }
#pragma unroll
        for (int e = 0; e < S::A_WORDS; ++e) {
            lrc::wgmma_hold(af[e / 4][e % 4]);
        }
        lrc::wgmma_fence();
        const uint32_t stage_addr = smem_base + stage * S::BYTES;
#pragma unroll
        for (int s = 0; s < S::STEPS; ++s) {
            // wgmma s reads words 8s.. 8s + 7 of every row: core matrices 2s and 2s + 1 along k.
            const uint64_t desc = lrc::wgmma_descriptor(stage_addr + 2 * s * S::LBO * 4, S::LBO * 4, S::SBO * 4);
            M::mma(acc, af[s], desc);
        }
        lrc::wgmma_commit();
        // The next tile's global loads are in flight while the tensor cores work on this one.
        if (k0 + BK < K) {
            load_tile<P, M, S>(p, rows, row_ok, n0, N, K, k0 + BK, t, ra, rb);
        }
        lrc::wgmma_wait<0>();
        // And after the wait: the next tile's A words must not be written before it.
#pragma unroll
        for (int i = 0; i < ACC; ++i) {
            lrc::wgmma_hold(acc[i]);
        }
#pragma unroll
        for (int e = 0; e < S::A_WORDS; ++e) {
            lrc::wgmma_hold(af[e / 4][e % 4]);
        }
    }
#pragma unroll
    for (int i = 0; i < ACC; ++i) {
        const int m = row0 + 8 * ((i / 2) % 2);
        const int n = n0 + 8 * (i / 4) + 2 * t + i % 2;
        if (m < M_ && n < N) {
            P::store(p, m, n, acc[i]);
        }
    }
    if (sum_b) {
        // The WK lanes of a row (all 32, or each half-warp) hold its values; add the PACK
        // slots, then across those lanes. Every thread takes part in the shuffles.
#pragma unroll
        for (int q = 0; q < S::B_WORDS; ++q) {
            float v = b_sum[q * M::PACK];
#pragma unroll
            for (int i = 1; i < M::PACK; ++i) {
                v += b_sum[q * M::PACK + i];
            }
#pragma unroll
            for (int offset = S::WK / 2; offset > 0; offset /= 2) {
                v += __shfl_xor_sync(0xffffffffu, v, offset);
            }
            const int n = n0 + b_row<S>(tid, q);
            if (b_word<S>(tid, q) == 0 && n < N) {
                p.out_bias[static_cast<size_t>(blockIdx.z) * N + n] = v;
            }
        }
    }
}

}  // namespace v3

// Kernel names: conv_<pass>_wgmma_<precision>_<kernel size>_<tile> (sizes as v2: k1, k2, k3,
// kany; tile n64 / n32 for forward and backward-data, m64 / m32 for backward-weight: the output
// channels per block). Grids (ceil(M / 128), ceil(N / BN)) for forward and backward-data,
// (ceil(c_in*kh*kw / 128), ceil(c_out / BN), splits) for backward-weight; 256 threads,
// v3::shared_bytes<precision, BN>() bytes of dynamic shared memory.
#define LRC_CONV_WGMMA_TILE(PREC, MATH, KS, KH, KW, BN)                                          \
    LRC_KERNEL(conv_fwd_wgmma_##PREC##_##KS##_n##BN, ConvParams, v3::THREADS, 1) {                \
        v3::conv_wgmma<v3::Forward<KH, KW>, v3::MATH, BN>(p);                                      \
    }                                                                                             \
    LRC_KERNEL(conv_bwd_data_wgmma_##PREC##_##KS##_n##BN, ConvParams, v3::THREADS, 1) {           \
        v3::conv_wgmma<v3::BackwardData<KH, KW>, v3::MATH, BN>(p);                                 \
    }                                                                                             \
    LRC_KERNEL(conv_bwd_weight_wgmma_##PREC##_##KS##_m##BN, ConvParams, v3::THREADS, 1) {         \
        v3::conv_wgmma<v3::BackwardWeight<KH, KW>, v3::MATH, BN>(p);                               \
    }

#define LRC_CONV_WGMMA(PREC, MATH, KS, KH, KW)       \
    LRC_CONV_WGMMA_TILE(PREC, MATH, KS, KH, KW, 64) \
    LRC_CONV_WGMMA_TILE(PREC, MATH, KS, KH, KW, 32)

LRC_CONV_SPECIALISATIONS(LRC_CONV_WGMMA)
