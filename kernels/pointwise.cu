// Element-wise arithmetic, the full sum and the FP32 -> BF16 conversion: the CUDA side of
// src/ops/pointwise.rs, planned by src/device/cuda/pointwise.rs.
//
// Launch shape: 1-D grids of 256-thread blocks, capped by the planner, with grid-stride loops so
// that one launch covers any length. When every buffer of a call starts on a 16-byte boundary the
// planner sets `vec4` and the loops move float4s, the last len % 4 elements one by one; otherwise
// every element goes on its own. The element loops need no ordering between elements, so
// `out` may be the same buffer as an input (the in-place gradient accumulation a += b): each
// element (or float4) is read before it is written by the same thread.
//
// Constants (a scale factor, an offset, the factor of a broadcast) arrive as doubles and are
// applied in double precision before rounding to f32, which is what the CPU twin computes for f32
// tensors: these results are bit-identical to it.
//
// sum_partial is deterministic: for a given length the planner always picks the same grid, each
// thread adds its grid-stride share in a fixed order, lrc::block_sum gives one partial per block,
// and a second launch of the same kernel with a single block adds the partials in a fixed order.
// No atomics, so the same input gives the same bits on every run.
#include "common.cuh"

// out = a (op) b over len elements; out may alias a or b.
struct BinaryParams {
    const float* a;
    const float* b;
    float* out;
    int len;
    int vec4;  // 1: all three addresses are 16-byte aligned
};
static_assert(sizeof(BinaryParams) == 32, "BinaryParams must match its Rust mirror");
static_assert(offsetof(BinaryParams, len) == 24, "BinaryParams must match its Rust mirror");

// out = x * alpha (scale) or x + alpha (add_scalar), in double precision.
struct UnaryParams {
    const float* x;
    float* out;
    double alpha;
    int len;
    int vec4;
};
static_assert(sizeof(UnaryParams) == 32, "UnaryParams must match its Rust mirror");
static_assert(offsetof(UnaryParams, alpha) == 16, "UnaryParams must match its Rust mirror");
static_assert(offsetof(UnaryParams, len) == 24, "UnaryParams must match its Rust mirror");

// out[i] = float(double(scalar[0]) * factor): the backward of a reduction, reading the upstream
// gradient on the device.
struct BroadcastParams {
    const float* scalar;
    float* out;
    double factor;
    int len;
    int vec4;
};
static_assert(sizeof(BroadcastParams) == 32, "BroadcastParams must match its Rust mirror");
static_assert(offsetof(BroadcastParams, factor) == 16, "BroadcastParams must match its Rust mirror");

// out[blockIdx.x] = sum of this block's grid-stride share of x[0..len).
struct SumParams {
    const float* x;
    float* out;
    int len;
    int vec4;
};
static_assert(sizeof(SumParams) == 24, "SumParams must match its Rust mirror");
static_assert(offsetof(SumParams, len) == 16, "SumParams must match its Rust mirror");

// out = x rounded to BF16 (round to nearest even, NaN to the canonical NaN 0x7fff, as
// cvt.rn.bf16x2.f32), packed two per word: element 2i in the low half of word i, element 2i + 1
// in the high half; for an odd len the last word's high half is +0.
struct ToBf16Params {
    const float* x;
    uint32_t* out;
    int len;  // values of x; out holds ceil(len / 2) words
    int reserved;
};
static_assert(sizeof(ToBf16Params) == 24, "ToBf16Params must match its Rust mirror");
static_assert(offsetof(ToBf16Params, len) == 16, "ToBf16Params must match its Rust mirror");

namespace pointwise {

constexpr int THREADS = 256;

struct Add {
    __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct Sub {
    __device__ __forceinline__ float operator()(float a, float b) const { return a - b; }
};
struct Mul {
    __device__ __forceinline__ float operator()(float a, float b) const { return a * b; }
};
struct Scale {
    double alpha;
    __device__ __forceinline__ float operator()(float x) const {
        return static_cast<float>(static_cast<double>(x) * alpha);
    }
};
struct Offset {
    double alpha;
    __device__ __forceinline__ float operator()(float x) const {
        return static_cast<float>(static_cast<double>(x) + alpha);
    }
};

__device__ __forceinline__ size_t first_index() {
    return static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ size_t grid_stride() { return static_cast<size_t>(gridDim.x) * blockDim.x; }

// Calls body(i) for the float4 indices i < len / 4 (when vec4) and scalar(i) for the remaining
// element indices, each index once over the whole grid.
template <class Vec, class One>
__device__ __forceinline__ void for_each(int len, int vec4, Vec vec, One one) {
    const size_t first = first_index();
    const size_t stride = grid_stride();
    const size_t n = static_cast<size_t>(len);
    size_t done = 0;
    if (vec4) {
        const size_t n4 = n / 4;
        for (size_t i = first; i < n4; i += stride) {
            vec(i);
        }
        done = n4 * 4;
    }
    for (size_t i = done + first; i < n; i += stride) {
        one(i);
    }
}

template <class Op>
__device__ __forceinline__ void binary(const BinaryParams& p, Op op) {
    for_each(
        p.len, p.vec4,
        [&](size_t i) {
            const float4 a = reinterpret_cast<const float4*>(p.a)[i];
            const float4 b = reinterpret_cast<const float4*>(p.b)[i];
            reinterpret_cast<float4*>(p.out)[i] = make_float4(op(a.x, b.x), op(a.y, b.y), op(a.z, b.z), op(a.w, b.w));
        },
        [&](size_t i) { p.out[i] = op(p.a[i], p.b[i]); });
}

template <class Op>
__device__ __forceinline__ void unary(const UnaryParams& p, Op op) {
    for_each(
        p.len, p.vec4,
        [&](size_t i) {
            const float4 x = reinterpret_cast<const float4*>(p.x)[i];
            reinterpret_cast<float4*>(p.out)[i] = make_float4(op(x.x), op(x.y), op(x.z), op(x.w));
        },
        [&](size_t i) { p.out[i] = op(p.x[i]); });
}

}  // namespace pointwise

// Grid min(ceil(units / 256), cap), 256 threads; units = len / 4 with vec4, else len.
LRC_KERNEL(add_f32, BinaryParams, pointwise::THREADS) { pointwise::binary(p, pointwise::Add{}); }
LRC_KERNEL(sub_f32, BinaryParams, pointwise::THREADS) { pointwise::binary(p, pointwise::Sub{}); }
LRC_KERNEL(mul_f32, BinaryParams, pointwise::THREADS) { pointwise::binary(p, pointwise::Mul{}); }
LRC_KERNEL(scale_f32, UnaryParams, pointwise::THREADS) { pointwise::unary(p, pointwise::Scale{p.alpha}); }
LRC_KERNEL(add_scalar_f32, UnaryParams, pointwise::THREADS) { pointwise::unary(p, pointwise::Offset{p.alpha}); }

// Same grid as the element-wise kernels. Every thread reads the one scalar (a broadcast load).
LRC_KERNEL(broadcast_scalar_f32, BroadcastParams, pointwise::THREADS) {
    const float v = static_cast<float>(static_cast<double>(p.scalar[0]) * p.factor);
    pointwise::for_each(
        p.len, p.vec4, [&](size_t i) { reinterpret_cast<float4*>(p.out)[i] = make_float4(v, v, v, v); },
        [&](size_t i) { p.out[i] = v; });
}

// Level 1: grid min(ceil(units / 256), cap) writing one partial per block; level 2: the same
// kernel on the partials with one block. 256 threads.
LRC_KERNEL(sum_partial_f32, SumParams, pointwise::THREADS) {
    float s = 0.0f;
    pointwise::for_each(
        p.len, p.vec4,
        [&](size_t i) {
            const float4 x = reinterpret_cast<const float4*>(p.x)[i];
            s += (x.x + x.y) + (x.z + x.w);
        },
        [&](size_t i) { s += p.x[i]; });
    s = lrc::block_sum(s);
    if (threadIdx.x == 0) {
        p.out[blockIdx.x] = s;
    }
}

// Grid min(ceil(words / 256), cap), 256 threads, one output word per thread and step of a
// grid-stride loop (two loads, one store: memory-bound, like the element-wise kernels).
LRC_KERNEL(bf16_from_f32, ToBf16Params, pointwise::THREADS) {
    const size_t len = static_cast<size_t>(p.len);
    const size_t words = (len + 1) / 2;
    const size_t step = static_cast<size_t>(gridDim.x) * blockDim.x;
    for (size_t w = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < words; w += step) {
        const float lo = p.x[2 * w];
        const float hi = 2 * w + 1 < len ? p.x[2 * w + 1] : 0.0f;
        p.out[w] = lrc::to_bf16x2(lo, hi);
    }
}
