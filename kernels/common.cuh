// Shared by every kernel file: the parameter structs (mirrored field for field by
// src/device/cuda/params.rs, with sizes checked on both sides) and small device helpers.
// With LRC_EMULATE defined (kernels/emu/), the inline PTX is replaced by its CPU emulation.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "lrc kernels need sm_80 or newer (cp.async-era tensor cores, TF32 mma)"
#endif

// Declares a kernel taking one parameter struct by value; the rest of the arguments are its
// launch bounds. Under emulation it is also registered by name for kernels/emu/runner.cpp.
//   LRC_KERNEL(scale_f32, ScaleParams, 256) { ... }
#ifdef LRC_EMULATE
#define LRC_KERNEL(NAME, PARAMS, ...)                              \
    extern "C" void NAME(const PARAMS p);                          \
    static emu::Registration NAME##_registration(#NAME, NAME);     \
    extern "C" void NAME(const PARAMS p)
#define LRC_DYNAMIC_SHARED(TYPE, NAME) TYPE* NAME = static_cast<TYPE*>(emu::dynamic_shared())
#else
#define LRC_KERNEL(NAME, PARAMS, ...) extern "C" __global__ void __launch_bounds__(__VA_ARGS__) NAME(const PARAMS p)
// Dynamic shared memory (the launch's shared_bytes), 16-byte aligned.
#define LRC_DYNAMIC_SHARED(TYPE, NAME)                     \
    extern __shared__ __align__(16) unsigned char NAME##_bytes[]; \
    TYPE* NAME = reinterpret_cast<TYPE*>(NAME##_bytes)
#endif

// One convolution as the kernels see it: NCHW activations, OIHW weights, float32 everywhere.
// Geometry is that of the forward convolution (input n x c_in x h x w, output
// n x c_out x h_out x w_out) whichever pass runs.
struct ConvParams {
    const float* x;       // forward input (forward, backward-weight)
    const float* weight;  // c_out x c_in x kh x kw (forward, backward-data)
    const float* dy;      // gradient of the output (backward-data, backward-weight)
    const float* bias;    // added per output column of the GEMM when not null
    float* out;           // y, dx, or backward-weight partial sums [splits][c_out][c_in*kh*kw]
    float* out_bias;      // backward-weight: bias-gradient partial sums [splits][c_out], or null
    int n;
    int c_in;
    int h;
    int w;
    int c_out;
    int kh;
    int kw;
    int stride;
    int pad;
    int h_out;
    int w_out;
    int split_len;  // backward-weight: reduction elements (n*h_out*w_out) per split
    int splits;
    int reserved;
};
static_assert(sizeof(ConvParams) == 104, "ConvParams must match its Rust mirror");
static_assert(offsetof(ConvParams, n) == 48, "ConvParams must match its Rust mirror");
static_assert(offsetof(ConvParams, split_len) == 92, "ConvParams must match its Rust mirror");

// out[i] = sum over s of partial[s][i] (and the same for the optional bias pair), summed in split
// order so that results do not depend on scheduling.
struct SplitReduceParams {
    const float* partial;
    float* out;
    const float* partial_bias;  // may be null
    float* out_bias;
    int len;
    int bias_len;
    int splits;
    int reserved;
};
static_assert(sizeof(SplitReduceParams) == 48, "SplitReduceParams must match its Rust mirror");
static_assert(offsetof(SplitReduceParams, len) == 32, "SplitReduceParams must match its Rust mirror");

// out[p] = sum of the plane_len values of plane p of x.
struct PlaneSumParams {
    const float* x;
    float* out;
    int planes;
    int plane_len;
};
static_assert(sizeof(PlaneSumParams) == 24, "PlaneSumParams must match its Rust mirror");
static_assert(offsetof(PlaneSumParams, planes) == 16, "PlaneSumParams must match its Rust mirror");

namespace lrc {

constexpr int WARP = 32;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = WARP / 2; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); the result is valid in thread 0.
// Every thread of the block must call it; calls may follow one another directly.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[WARP];
    const int lane = threadIdx.x % WARP;
    const int warp = threadIdx.x / WARP;
    v = warp_sum(v);
    if (lane == 0) {
        partial[warp] = v;
    }
    __syncthreads();
    const int warps = blockDim.x / WARP;
    v = (static_cast<int>(threadIdx.x) < warps) ? partial[threadIdx.x] : 0.0f;
    // Every thread has read `partial` before a later call may write it again.
    __syncthreads();
    if (warp == 0) {
        v = warp_sum(v);
    }
    return v;
}

// Exclusive prefix sum over the block (blockDim.x a multiple of 32, at most 1024); `total` gets
// the block's sum. Ends with a barrier, so it may be called again at once.
__device__ __forceinline__ unsigned block_exclusive_sum(unsigned v, unsigned* total) {
    __shared__ unsigned warp_sums[lrc::WARP];
    const int lane = threadIdx.x % lrc::WARP;
    const int warp = threadIdx.x / lrc::WARP;
    const int warps = blockDim.x / lrc::WARP;
    unsigned incl = v;
    for (int off = 1; off < lrc::WARP; off *= 2) {
        const unsigned other = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += other;
    }
    if (lane == lrc::WARP - 1) warp_sums[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        unsigned s = lane < warps ? warp_sums[lane] : 0u;
        for (int off = 1; off < lrc::WARP; off *= 2) {
            const unsigned other = __shfl_up_sync(0xffffffffu, s, off);
            if (lane >= off) s += other;
        }
        warp_sums[lane] = s;  // inclusive prefix of the warp sums
    }
    __syncthreads();
    const unsigned before = warp == 0 ? 0u : warp_sums[warp - 1];
    *total = warp_sums[warps - 1];
    __syncthreads();
    return before + incl - v;
}

// float -> TF32 (10-bit mantissa), round to nearest with ties away from zero, as cuBLAS does.
__device__ __forceinline__ uint32_t to_tf32(float x) {
#ifdef LRC_EMULATE
    return emu::cvt_rna_tf32(x);
#else
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
#endif
}

// d += a * b on a 16x8x8 tile, TF32 inputs, FP32 accumulation. Fragment ownership, with
// g = lane / 4 and t = lane % 4: a = {A[g][t], A[g+8][t], A[g][t+4], A[g+8][t+4]},
// b = {B[t][g], B[t+4][g]}, d = {D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]}.
__device__ __forceinline__ void mma_tf32_16x8x8(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef LRC_EMULATE
    emu::mma_tf32_16x8x8(d, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// Two floats -> BF16 (8-bit significand), round to nearest even, packed in one word: lo in the
// low half, hi in the high half (the order mma reads consecutive k in).
__device__ __forceinline__ uint32_t to_bf16x2(float lo, float hi) {
#ifdef LRC_EMULATE
    return emu::cvt_rn_bf16x2(hi, lo);
#else
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#endif
}

// d += a * b on a 16x8x16 tile, BF16 inputs (two per register, lower k in the low half), FP32
// accumulation. Fragment ownership, with g = lane / 4 and t = lane % 4, in pairs (k, k + 1):
// a = {A[g][2t], A[g+8][2t], A[g][2t+8], A[g+8][2t+8]}, b = {B[2t][g], B[2t+8][g]},
// d = {D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]}.
__device__ __forceinline__ void mma_bf16_16x8x16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef LRC_EMULATE
    emu::mma_bf16_16x8x16(d, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// One k tile of a thread's 4 x 4 register tile in the FP32 64 x 64 block tiles (conv v1, gemm):
// acc[i][j] += as[kk][row + 16 i] * bs[kk][col + 16 j] over the tile's kk, one fmaf each in kk
// order (the order the CPU error bounds assume).
template <int BK, int AW, int BW>
__device__ __forceinline__ void tile_fma_4x4(const float (&as)[BK][AW], const float (&bs)[BK][BW], int row, int col,
                                             float (&acc)[4][4]) {
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
        float a[4];
        float b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            a[i] = as[kk][row + 16 * i];
            b[i] = bs[kk][col + 16 * i];
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
        }
    }
}

// Union-find over a forest in global memory, shared by the Felzenszwalb merge and the clean-up's
// connected components. Links only ever point a node at an ancestor, and roots are linked with a
// compare-and-swap, so threads may find and unite concurrently; reads go through volatile because
// other threads may be linking roots meanwhile.

// The root of x's tree, halving the path on the way.
__device__ __forceinline__ unsigned find_root(unsigned* parent, unsigned x) {
    volatile unsigned* vp = parent;
    unsigned p = vp[x];
    while (p != x) {
        const unsigned g = vp[p];
        if (g != p) vp[x] = g;
        x = g;
        p = vp[x];
    }
    return x;
}

// Joins the trees of a and b, the larger root under the smaller (so a tree's root is its
// smallest index); retries when another thread linked one of the roots first.
__device__ __forceinline__ void unite(unsigned* parent, unsigned a, unsigned b) {
    for (;;) {
        a = find_root(parent, a);
        b = find_root(parent, b);
        if (a == b) return;
        if (a < b) {
            const unsigned t = a;
            a = b;
            b = t;
        }
        if (atomicCAS(parent + a, a, b) == a) return;
    }
}

}  // namespace lrc
