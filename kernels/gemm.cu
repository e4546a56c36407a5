// Dense matrix products C (m x n) = op(A) op(B) on row-major matrices, and the column sums that
// give a linear layer's bias gradient.
//
//   op(A) is m x k: A is stored m x k, or k x m when transposed (kernel suffix t in first place);
//   op(B) is k x n: B is stored k x n, or n x k when transposed (suffix t in second place).
//
// The epilogue writes C = [C +] alpha * s * op(A) op(B) [+ bias], where s is a value read on the
// device (`scale`, e.g. the upstream gradient of a loss) so that no host copy is needed.
//
// A long reduction over few output tiles is split across blocks (grid z): each split writes its
// raw partial sums to [splits][m][n] and gemm_split_reduce adds them in split order and applies
// the epilogue. No float atomics anywhere: every result is deterministic.
//
// Two versions, side by side, selected by the host (GemmAlgo):
//   v1 (_fp32)  plain FP32 shared-memory tiles, 64x64x16, 4x4 outputs per thread.
//   v2 (_tf32)  tensor cores through mma.sync m16n8k8 (TF32 inputs rounded to nearest even, FP32
//               accumulation), 64x64x32 tiles, 8 warps of 32x16.

#include "common.cuh"

using lrc::WARP;

struct GemmParams {
    const float* a;
    const float* b;
    const float* bias;   // n values added to every row, or null
    const float* scale;  // one device value multiplying the product, or null
    float* c;            // m x n, or the partial sums [splits][m][n] when splits > 1
    int m;
    int n;
    int k;
    int split_len;   // k per split (a multiple of the tile depth when splits > 1)
    int splits;      // 1: the kernel applies the epilogue itself
    int accumulate;  // nonzero: C += ... (only read when splits == 1)
    float alpha;
    int reserved;
};
static_assert(sizeof(GemmParams) == 72, "GemmParams must match its Rust mirror");
static_assert(offsetof(GemmParams, m) == 40, "GemmParams must match its Rust mirror");
static_assert(offsetof(GemmParams, alpha) == 64, "GemmParams must match its Rust mirror");

// C = [C +] alpha * s * sum over splits of partial + bias, summed in split order.
struct GemmReduceParams {
    const float* partial;  // [splits][m][n]
    const float* bias;
    const float* scale;
    float* c;
    int m;
    int n;
    int splits;
    int accumulate;
    float alpha;
    int reserved;
};
static_assert(sizeof(GemmReduceParams) == 56, "GemmReduceParams must match its Rust mirror");
static_assert(offsetof(GemmReduceParams, m) == 32, "GemmReduceParams must match its Rust mirror");

// out[j] = sum over rows of x[row][j], x rows x cols.
struct ColumnSumParams {
    const float* x;
    float* out;
    int rows;
    int cols;
};
static_assert(sizeof(ColumnSumParams) == 24, "ColumnSumParams must match its Rust mirror");
static_assert(offsetof(ColumnSumParams, rows) == 16, "ColumnSumParams must match its Rust mirror");

namespace gemm {

// Element (row, kk) of op(A) and (kk, col) of op(B); callers pass in-range indices only.
template <bool TA>
__device__ __forceinline__ float a_at(const GemmParams& p, int row, int kk) {
    return TA ? p.a[static_cast<size_t>(kk) * p.m + row] : p.a[static_cast<size_t>(row) * p.k + kk];
}

template <bool TB>
__device__ __forceinline__ float b_at(const GemmParams& p, int kk, int col) {
    return TB ? p.b[static_cast<size_t>(col) * p.k + kk] : p.b[static_cast<size_t>(kk) * p.n + col];
}

// The final value of C[row][col] from the raw product `sum`.
__device__ __forceinline__ float epilogue(const GemmParams& p, int row, int col, float sum) {
    float v = p.alpha * sum;
    if (p.scale != nullptr) {
        v *= *p.scale;
    }
    if (p.bias != nullptr) {
        v += p.bias[col];
    }
    const size_t at = static_cast<size_t>(row) * p.n + col;
    if (p.accumulate != 0) {
        v += p.c[at];
    }
    return v;
}

// Writes one computed element: the final value, or this split's raw partial sum.
__device__ __forceinline__ void store(const GemmParams& p, int row, int col, float sum) {
    if (p.splits > 1) {
        p.c[(static_cast<size_t>(blockIdx.z) * p.m + row) * p.n + col] = sum;
    } else {
        p.c[static_cast<size_t>(row) * p.n + col] = epilogue(p, row, col, sum);
    }
}

// This block's k range.
__device__ __forceinline__ void k_range(const GemmParams& p, int& k_begin, int& k_end) {
    k_begin = blockIdx.z * p.split_len;
    k_end = min(k_begin + p.split_len, p.k);
}

}  // namespace gemm

// ---------------------------------------------------------------------------------------------
// v1: FP32 shared-memory tiles.
// ---------------------------------------------------------------------------------------------

namespace gemm_v1 {

constexpr int BM = 64;
constexpr int BN = 64;
constexpr int BK = 16;
constexpr int THREADS = 256;

// Thread (tr, tc) = (tid / 16, tid % 16) computes rows m0 + tr + 16i and columns n0 + tc + 16j:
// a warp covers 2 rows x 16 consecutive columns, so its stores to row-major C are contiguous runs
// and its reads of the B tile are conflict-free.
template <bool TA, bool TB>
__device__ void run(const GemmParams& p) {
    __shared__ float as[BK][BM + 1];
    __shared__ float bs[BK][BN + 1];
    const int tid = threadIdx.x;
    const int tr = tid / 16;
    const int tc = tid % 16;
    const int m0 = blockIdx.x * BM;
    const int n0 = blockIdx.y * BN;
    int k_begin, k_end;
    gemm::k_range(p, k_begin, k_end);
    float acc[4][4] = {};
    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
        // Loaders walk the direction in which the operand is contiguous, so loads coalesce.
        for (int e = tid; e < BM * BK; e += THREADS) {
            const int rr = TA ? e % BM : e / BK;
            const int kk = TA ? e / BM : e % BK;
            const int row = m0 + rr;
            const int kg = k0 + kk;
            as[kk][rr] = (row < p.m && kg < k_end) ? gemm::a_at<TA>(p, row, kg) : 0.0f;
        }
        for (int e = tid; e < BN * BK; e += THREADS) {
            const int cc = TB ? e / BK : e % BN;
            const int kk = TB ? e % BK : e / BN;
            const int col = n0 + cc;
            const int kg = k0 + kk;
            bs[kk][cc] = (col < p.n && kg < k_end) ? gemm::b_at<TB>(p, kg, col) : 0.0f;
        }
        __syncthreads();
        lrc::tile_fma_4x4(as, bs, tr, tc, acc);
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int row = m0 + tr + 16 * i;
            const int col = n0 + tc + 16 * j;
            if (row < p.m && col < p.n) {
                gemm::store(p, row, col, acc[i][j]);
            }
        }
    }
}

}  // namespace gemm_v1

// Grid (ceil(m / 64), ceil(n / 64), splits), 256 threads.
LRC_KERNEL(gemm_fp32_nn, GemmParams, gemm_v1::THREADS) {
    gemm_v1::run<false, false>(p);
}
LRC_KERNEL(gemm_fp32_nt, GemmParams, gemm_v1::THREADS) {
    gemm_v1::run<false, true>(p);
}
LRC_KERNEL(gemm_fp32_tn, GemmParams, gemm_v1::THREADS) {
    gemm_v1::run<true, false>(p);
}
LRC_KERNEL(gemm_fp32_tt, GemmParams, gemm_v1::THREADS) {
    gemm_v1::run<true, true>(p);
}

// ---------------------------------------------------------------------------------------------
// v2: TF32 tensor cores (mma.sync m16n8k8).
// ---------------------------------------------------------------------------------------------

namespace gemm_v2 {

constexpr int BM = 64;
constexpr int BN = 64;
constexpr int BK = 32;
constexpr int THREADS = 256;
// Warps in a 2 x 4 grid, each computing 32 rows x 16 columns: 2 x 2 mma tiles of 16 x 8.
constexpr int WARPS_N = 4;
constexpr int WM = 32;
constexpr int WN = 16;
constexpr int MT = WM / 16;
constexpr int NT = WN / 8;
// Tiles are stored [row][k] with a row stride of BK + 4 words: the fragment loads of a warp
// (8 rows x 4 k) then fall in 32 distinct banks.
constexpr int STRIDE = BK + 4;

// Stages one BK-deep tile of op(A) (rows m0..) or op(B) (columns n0..) in shared memory as TF32,
// zero outside the matrix. The loader walks the direction in which the operand is contiguous.
template <bool ALONG_K, class At>
__device__ __forceinline__ void stage(uint32_t* s, int r0, int rows, int k0, int k_end, At at) {
    for (int e = threadIdx.x; e < BM * BK; e += THREADS) {
        const int rr = ALONG_K ? e / BK : e % BM;
        const int kk = ALONG_K ? e % BK : e / BM;
        const int r = r0 + rr;
        const int kg = k0 + kk;
        s[rr * STRIDE + kk] = lrc::to_tf32((r < rows && kg < k_end) ? at(r, kg) : 0.0f);
    }
}

template <bool TA, bool TB>
__device__ void run(const GemmParams& p) {
    static_assert(BM == BN, "one staging loop serves both operands");
    __shared__ uint32_t as[BM * STRIDE];
    __shared__ uint32_t bs[BN * STRIDE];
    const int lane = threadIdx.x % WARP;
    const int warp = threadIdx.x / WARP;
    const int wm = (warp / WARPS_N) * WM;
    const int wn = (warp % WARPS_N) * WN;
    const int g = lane / 4;
    const int t = lane % 4;
    const int m0 = blockIdx.x * BM;
    const int n0 = blockIdx.y * BN;
    int k_begin, k_end;
    gemm::k_range(p, k_begin, k_end);
    float acc[MT][NT][4] = {};
    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
        stage<!TA>(as, m0, p.m, k0, k_end, [&](int r, int kg) { return gemm::a_at<TA>(p, r, kg); });
        stage<TB>(bs, n0, p.n, k0, k_end, [&](int c, int kg) { return gemm::b_at<TB>(p, kg, c); });
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk += 8) {
            uint32_t af[MT][4];
            uint32_t bf[NT][2];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const int row = wm + mt * 16 + g;
                af[mt][0] = as[row * STRIDE + kk + t];
                af[mt][1] = as[(row + 8) * STRIDE + kk + t];
                af[mt][2] = as[row * STRIDE + kk + t + 4];
                af[mt][3] = as[(row + 8) * STRIDE + kk + t + 4];
            }
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int col = wn + nt * 8 + g;
                bf[nt][0] = bs[col * STRIDE + kk + t];
                bf[nt][1] = bs[col * STRIDE + kk + t + 4];
            }
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    lrc::mma_tf32_16x8x8(acc[mt][nt], af[mt], bf[nt]);
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int row = m0 + wm + mt * 16 + g + 8 * half;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const int col = n0 + wn + nt * 8 + 2 * t + j;
                    if (row < p.m && col < p.n) {
                        gemm::store(p, row, col, acc[mt][nt][2 * half + j]);
                    }
                }
            }
        }
    }
}

}  // namespace gemm_v2

// Grid (ceil(m / 64), ceil(n / 64), splits), 256 threads.
LRC_KERNEL(gemm_tf32_nn, GemmParams, gemm_v2::THREADS) {
    gemm_v2::run<false, false>(p);
}
LRC_KERNEL(gemm_tf32_nt, GemmParams, gemm_v2::THREADS) {
    gemm_v2::run<false, true>(p);
}
LRC_KERNEL(gemm_tf32_tn, GemmParams, gemm_v2::THREADS) {
    gemm_v2::run<true, false>(p);
}
LRC_KERNEL(gemm_tf32_tt, GemmParams, gemm_v2::THREADS) {
    gemm_v2::run<true, true>(p);
}

// ---------------------------------------------------------------------------------------------
// Reductions.
// ---------------------------------------------------------------------------------------------

// Grid ceil(m * n / 256), 256 threads.
LRC_KERNEL(gemm_split_reduce, GemmReduceParams, 256) {
    const size_t len = static_cast<size_t>(p.m) * p.n;
    const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= len) {
        return;
    }
    float sum = 0.0f;
    for (int s = 0; s < p.splits; ++s) {
        sum += p.partial[static_cast<size_t>(s) * len + i];
    }
    float v = p.alpha * sum;
    if (p.scale != nullptr) {
        v *= *p.scale;
    }
    if (p.bias != nullptr) {
        v += p.bias[i % p.n];
    }
    if (p.accumulate != 0) {
        v += p.c[i];
    }
    p.c[i] = v;
}

// Grid ceil(cols / 32), 256 threads: a block takes 32 columns; its 8 warps sum rows congruent to
// their index mod 8 (a warp reads 32 consecutive columns of a row), then warp 0 adds the 8
// partial sums in order.
LRC_KERNEL(column_sum, ColumnSumParams, 256) {
    constexpr int ROW_GROUPS = 256 / WARP;
    __shared__ float partial[ROW_GROUPS][WARP];
    const int lane = threadIdx.x % WARP;
    const int group = threadIdx.x / WARP;
    const int col = blockIdx.x * WARP + lane;
    float s = 0.0f;
    if (col < p.cols) {
        for (int r = group; r < p.rows; r += ROW_GROUPS) {
            s += p.x[static_cast<size_t>(r) * p.cols + col];
        }
    }
    partial[group][lane] = s;
    __syncthreads();
    if (group == 0 && col < p.cols) {
        float total = 0.0f;
        for (int g = 0; g < ROW_GROUPS; ++g) {
            total += partial[g][lane];
        }
        p.out[col] = total;
    }
}
