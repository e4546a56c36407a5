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
    static emu::Registration NAME##_registration(#NAME, NAME, emu::launch_bound_threads(__VA_ARGS__)); \
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
    float* out;           // y, dx, or with splits > 1 their partial sums [splits][y or dx], or
                          // backward-weight partial sums [splits][c_out][c_in*kh*kw]
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
    int split_len;  // reduction elements per split (backward-weight: of n*h_out*w_out; v2's
                    // forward and backward-data: of the GEMM depth) when splits > 1
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

// float -> TF32 (10-bit significand), round to nearest with ties to even, as BF16 rounds. On
// sm_90 that is one instruction (cvt.rn.tf32.f32); ties away (cvt.rna) takes four there, up to a
// sixth of a TF32 convolution's main loop (docs/CUDA.md). Older targets have no cvt.rn to TF32
// and round in integer arithmetic to the same bits; the emulator runs that code too, so the
// harness checks it against its model of the instruction (emu::cvt_rn_tf32). inf and NaN stay
// inf and NaN (mma reads only the TF32 bits of a word).
__device__ __forceinline__ uint32_t to_tf32(float x) {
#if !defined(LRC_EMULATE) && __CUDA_ARCH__ >= 900
    uint32_t r;
    asm("cvt.rn.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
#else
    const uint32_t u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u) {
        return u;
    }
    // Just under half of the dropped part's unit, plus the kept part's lowest bit: a tie rounds
    // up only from an odd neighbour.
    return (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu;
#endif
}

// Two consecutive 32-bit words of shared memory in one 64-bit load; the address must be 8-byte
// aligned (the emulator checks, as the hardware faults).
__device__ __forceinline__ uint2 load_pair(const uint32_t* words) {
#ifdef LRC_EMULATE
    emu::check_aligned(words, 8);
#endif
    return *reinterpret_cast<const uint2*>(words);
}

// Two consecutive floats stored in one 64-bit store; the address must be 8-byte aligned (the
// emulator checks, as the hardware faults).
__device__ __forceinline__ void store_pair(float* to, float first, float second) {
#ifdef LRC_EMULATE
    emu::check_aligned(to, 8);
#endif
    *reinterpret_cast<float2*>(to) = make_float2(first, second);
}

// Four 8 x 4-word matrices of shared memory in one instruction (ldmatrix .x4 of 8 x 8 16-bit
// matrices, whose 16-bit pairs are read as 32-bit words): lanes 8q to 8q + 7 give the rows of
// matrix q, each 16 bytes at word `index` (per lane) of the warp-uniform array `base`, 16-byte
// aligned; lane l receives word l % 4 of row l / 4 of matrix q in r[q]. Collective over the
// warp. So a K-major tile's mma A fragment (rows g and g + 8, words t and t + 4) is one
// instruction where it was four loads. The emulator exchanges the rows' indices by shuffles.
__device__ __forceinline__ void load_matrix_x4(uint32_t (&r)[4], const uint32_t* base, int index) {
#ifdef LRC_EMULATE
    emu::check_aligned(base + index, 16);
    const int lane = static_cast<int>(threadIdx.x) % WARP;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        r[q] = base[__shfl_sync(0xffffffffu, index, 8 * q + lane / 4) + lane % 4];
    }
#else
    const unsigned at = static_cast<unsigned>(__cvta_generic_to_shared(base + index));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(at));
#endif
}

// Asynchronous copies from global to shared memory (cp.async, sm_80 and newer), 16 bytes each,
// both addresses 16-byte aligned; .cg keeps them out of L1 (a block reads each value once).
// A thread's copies since its last commit form a group (cp_async_commit); cp_async_wait_all
// returns once all of the thread's groups have landed, and other threads see them after a
// barrier that follows their writers' waits. Under emulation a copy happens at the wait, so a
// read that comes before the wait (or before the barrier) sees the old contents.
__device__ __forceinline__ void cp_async_16(void* shared, const void* global) {
#ifdef LRC_EMULATE
    emu::cp_async(shared, global, 16);
#else
    const unsigned to = static_cast<unsigned>(__cvta_generic_to_shared(shared));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(to), "l"(global) : "memory");
#endif
}

// One 32-bit word, through L1 (.ca: the only form for copies under 16 bytes), for tiles whose
// rows start at any word (a shifted window, a halo).
__device__ __forceinline__ void cp_async_4(void* shared, const void* global) {
#ifdef LRC_EMULATE
    emu::cp_async(shared, global, 4);
#else
    const unsigned to = static_cast<unsigned>(__cvta_generic_to_shared(shared));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(to), "l"(global) : "memory");
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef LRC_EMULATE
    emu::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void cp_async_wait_all() {
#ifdef LRC_EMULATE
    emu::cp_async_wait_all();
#else
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
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

// ---------------------------------------------------------------------------------------------
// Warpgroup MMA (wgmma), sm_90a only: the instructions exist for that target alone, so other
// targets compile these to a trap (no kernel of theirs calls them). Collective over a warpgroup
// (4 consecutive warps); asynchronous: an mma_async reads its A registers, its shared-memory B
// operand and its accumulators at some point before the wait_group that covers its group
// returns, so none of them may be written (nor the accumulators read) in between.
// ---------------------------------------------------------------------------------------------

#if defined(__CUDA_ARCH__) && !defined(LRC_EMULATE) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LRC_NO_WGMMA 1
#endif

// Orders this warpgroup's earlier register writes (accumulators, A fragments) before the
// mma_async that follow; needed before the first mma_async after a commit_group.
__device__ __forceinline__ void wgmma_fence() {
#if defined(LRC_EMULATE)
    emu::wgmma_fence();
#elif defined(LRC_NO_WGMMA)
    __trap();
#else
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

// Closes the group of mma_async issued since the last commit.
__device__ __forceinline__ void wgmma_commit() {
#if defined(LRC_EMULATE)
    emu::wgmma_commit();
#elif defined(LRC_NO_WGMMA)
    __trap();
#else
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

// Waits until at most PENDING committed groups of this warpgroup are still running.
template <int PENDING>
__device__ __forceinline__ void wgmma_wait() {
#if defined(LRC_EMULATE)
    emu::wgmma_wait(PENDING);
#elif defined(LRC_NO_WGMMA)
    __trap();
#else
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(PENDING) : "memory");
#endif
}

// Makes this thread's generic-proxy writes to shared memory (st.shared) visible to the async
// proxy that wgmma reads its shared-memory operands through; a barrier then publishes them.
__device__ __forceinline__ void fence_proxy_async_shared() {
#if defined(LRC_EMULATE)
#elif defined(LRC_NO_WGMMA)
    __trap();
#else
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Keeps the compiler from moving accesses of an accumulator across the wgmma fences and waits
// (it does not know that the asynchronous mma_async owns the register until the wait).
__device__ __forceinline__ void wgmma_hold(float& r) {
#if !defined(LRC_EMULATE)
    asm volatile("" : "+f"(r)::"memory");
#endif
}

// The same for a register of the A fragment, which mma_async also reads asynchronously.
__device__ __forceinline__ void wgmma_hold(uint32_t& r) {
#if !defined(LRC_EMULATE)
    asm volatile("" : "+r"(r)::"memory");
#endif
}

// The shared-state-space address of a pointer into shared memory.
__device__ __forceinline__ uint32_t shared_address(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Matrix descriptor of a K-major operand without swizzle: start address, leading-dimension
// byte offset (between core matrices adjacent along k) and stride-dimension byte offset
// (between core matrices adjacent along m or n), each a multiple of 16 bytes, stored >> 4 in
// bits 0-13, 16-29 and 32-45; base offset (bits 49-51) and swizzle mode (bits 62-63) zero.
__device__ __forceinline__ uint64_t wgmma_descriptor(uint32_t start, uint32_t lbo_bytes, uint32_t sbo_bytes) {
    return static_cast<uint64_t>((start >> 4) & 0x3fffu) | (static_cast<uint64_t>((lbo_bytes >> 4) & 0x3fffu) << 16) |
           (static_cast<uint64_t>((sbo_bytes >> 4) & 0x3fffu) << 32);
}

// d += A * B on a 64 x 64 x 8 tile: TF32 A from registers (per warp w of the warpgroup, rows
// 16 w.. in the mma.sync m16n8k8 A fragment), B (64 rows of n, 8 of k, K-major) from shared
// memory through `desc`, FP32 accumulators: register i holds D[16 w + g + 8 ((i / 2) % 2)]
// [8 (i / 4) + 2 t + i % 2], g = lane / 4, t = lane % 4. The hardware reads the top 19 bits of
// each TF32 operand word (truncation): callers round first.
__device__ __forceinline__ void wgmma_tf32_m64n64k8(float (&d)[32], const uint32_t (&a)[4], uint64_t desc) {
#if defined(LRC_EMULATE)
    emu::wgmma_async(emu::WgmmaType::Tf32, 64, d, a, desc, true);
#elif defined(LRC_NO_WGMMA)
    __trap();
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
#endif
}

// As wgmma_tf32_m64n64k8 with BF16 operands, k = 16: each A and B word holds two values
// consecutive along k, the lower k in the low half (the mma.sync m16n8k16 A fragment).
__device__ __forceinline__ void wgmma_bf16_m64n64k16(float (&d)[32], const uint32_t (&a)[4], uint64_t desc) {
#if defined(LRC_EMULATE)
    emu::wgmma_async(emu::WgmmaType::Bf16, 64, d, a, desc, true);
#elif defined(LRC_NO_WGMMA)
    __trap();
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
#endif
}

// The same on a 64 x 32 tile: 16 accumulators a thread, register i holding
// D[16 w + g + 8 ((i / 2) % 2)][8 (i / 4) + 2 t + i % 2].
__device__ __forceinline__ void wgmma_tf32_m64n32k8(float (&d)[16], const uint32_t (&a)[4], uint64_t desc) {
#if defined(LRC_EMULATE)
    emu::wgmma_async(emu::WgmmaType::Tf32, 32, d, a, desc, true);
#elif defined(LRC_NO_WGMMA)
    __trap();
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k8.f32.tf32.tf32 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
#endif
}

__device__ __forceinline__ void wgmma_bf16_m64n32k16(float (&d)[16], const uint32_t (&a)[4], uint64_t desc) {
#if defined(LRC_EMULATE)
    emu::wgmma_async(emu::WgmmaType::Bf16, 32, d, a, desc, true);
#elif defined(LRC_NO_WGMMA)
    __trap();
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
#endif
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
