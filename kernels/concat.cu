// Concatenation along the channel axis and its backward, the split: the CUDA side of
// src/ops/concat.rs, planned by src/device/cuda/concat.rs.
//
// Seen per batch row, channel concatenation of [N, Ca, ...] and [N, Cb, ...] joins a row of
// a_len = Ca * inner values and one of b_len = Cb * inner values; the split cuts them apart again.
// Both are plain copies, one thread per element of the joined tensor and grid-stride step, reading
// and writing contiguous runs. When a_len and b_len are multiples of 4 and every buffer is 16-byte
// aligned the planner sets `vec4` and the same loops move float4s (no float4 straddles the two
// parts then).
//
// Indices are 32-bit unsigned: the planner keeps every length below 2^31 and the grid-stride step
// below 2^31, so i + step never wraps.
#include "common.cuh"

// whole[r] = [a[r], b[r]] for each of `rows` rows.
struct ConcatParams {
    const float* a;
    const float* b;
    float* whole;
    int rows;
    int a_len;
    int b_len;
    int vec4;
};
static_assert(sizeof(ConcatParams) == 40, "ConcatParams must match its Rust mirror");
static_assert(offsetof(ConcatParams, rows) == 24, "ConcatParams must match its Rust mirror");

// [a[r], b[r]] = whole[r] for each of `rows` rows.
struct SplitParams {
    const float* whole;
    float* a;
    float* b;
    int rows;
    int a_len;
    int b_len;
    int vec4;
};
static_assert(sizeof(SplitParams) == 40, "SplitParams must match its Rust mirror");
static_assert(offsetof(SplitParams, rows) == 24, "SplitParams must match its Rust mirror");

namespace concat {

constexpr int THREADS = 256;

// Lengths in units of T (float or float4).
template <class T>
__device__ __forceinline__ void join(const T* a, const T* b, T* whole, unsigned rows, unsigned a_len, unsigned b_len) {
    const unsigned row_len = a_len + b_len;
    const unsigned total = rows * row_len;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const unsigned r = i / row_len;
        const unsigned c = i - r * row_len;
        whole[i] = c < a_len ? a[r * a_len + c] : b[r * b_len + (c - a_len)];
    }
}

template <class T>
__device__ __forceinline__ void split(const T* whole, T* a, T* b, unsigned rows, unsigned a_len, unsigned b_len) {
    const unsigned row_len = a_len + b_len;
    const unsigned total = rows * row_len;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const unsigned r = i / row_len;
        const unsigned c = i - r * row_len;
        if (c < a_len) {
            a[r * a_len + c] = whole[i];
        } else {
            b[r * b_len + (c - a_len)] = whole[i];
        }
    }
}

}  // namespace concat

// Grid min(ceil(units / 256), cap), 256 threads; units = rows * (a_len + b_len), / 4 with vec4.
LRC_KERNEL(concat_f32, ConcatParams, concat::THREADS) {
    if (p.vec4) {
        concat::join(reinterpret_cast<const float4*>(p.a), reinterpret_cast<const float4*>(p.b),
                     reinterpret_cast<float4*>(p.whole), p.rows, p.a_len / 4, p.b_len / 4);
    } else {
        concat::join(p.a, p.b, p.whole, p.rows, p.a_len, p.b_len);
    }
}

// Same grid as concat_f32.
LRC_KERNEL(split_f32, SplitParams, concat::THREADS) {
    if (p.vec4) {
        concat::split(reinterpret_cast<const float4*>(p.whole), reinterpret_cast<float4*>(p.a),
                      reinterpret_cast<float4*>(p.b), p.rows, p.a_len / 4, p.b_len / 4);
    } else {
        concat::split(p.whole, p.a, p.b, p.rows, p.a_len, p.b_len);
    }
}
