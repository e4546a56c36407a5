// 2x2 max pooling (stride 2, floor on odd sizes) and global average pooling, forward and
// backward: the CUDA side of src/ops/pool.rs, planned by src/device/cuda/pool.rs.
//
// Max pooling follows the CPU twin exactly: the window is scanned in raster order, a later element
// replaces the best one only when it is strictly greater or NaN (so ties keep the first, NaN
// propagates), and the flat input index of the maximum is stored per output element as a u32.
// Windows do not overlap, so the backward is a gather with no atomics: one thread per input
// element finds its window (if the floor kept it) and takes the output gradient when it is that
// window's argmax, else 0. Every dx element is written, no zero fill needed.
//
// Global average pooling: one warp per plane (a fixed-order shuffle tree, deterministic), the sum
// divided by the plane length as the twin does; its backward broadcasts dy * (1 / plane length),
// the reciprocal rounded to f32 on the host as the twin rounds it.
//
// Element loops use 32-bit unsigned indices: the planner keeps every length below 2^31 and the
// grid-stride step below 2^31, so i + step never wraps.
#include "common.cuh"

// y = max over each 2x2 window of x (planes x h x w), argmax = its flat index into x.
struct MaxPoolParams {
    const float* x;
    float* y;
    unsigned* argmax;
    int planes;
    int h;
    int w;
    int reserved;
};
static_assert(sizeof(MaxPoolParams) == 40, "MaxPoolParams must match its Rust mirror");
static_assert(offsetof(MaxPoolParams, planes) == 24, "MaxPoolParams must match its Rust mirror");

// dx[i] = dy[o] where argmax[o] == i, else 0 (dx is planes x h x w).
struct MaxPoolBackwardParams {
    const float* dy;
    const unsigned* argmax;
    float* dx;
    int planes;
    int h;
    int w;
    int reserved;
};
static_assert(sizeof(MaxPoolBackwardParams) == 40, "MaxPoolBackwardParams must match its Rust mirror");
static_assert(offsetof(MaxPoolBackwardParams, planes) == 24, "MaxPoolBackwardParams must match its Rust mirror");

// out[p] = mean of the plane_len values of plane p of x.
struct PlaneMeanParams {
    const float* x;
    float* out;
    int planes;
    int plane_len;
};
static_assert(sizeof(PlaneMeanParams) == 24, "PlaneMeanParams must match its Rust mirror");
static_assert(offsetof(PlaneMeanParams, planes) == 16, "PlaneMeanParams must match its Rust mirror");

// dx[i] = dy[i / plane_len] * scale.
struct PlaneBroadcastParams {
    const float* dy;
    float* dx;
    float scale;
    int planes;
    int plane_len;
    int vec4;  // 1: dx is 16-byte aligned and plane_len a multiple of 4
};
static_assert(sizeof(PlaneBroadcastParams) == 32, "PlaneBroadcastParams must match its Rust mirror");
static_assert(offsetof(PlaneBroadcastParams, scale) == 16, "PlaneBroadcastParams must match its Rust mirror");

namespace pool {

constexpr int THREADS = 256;

// The flat index into x (planes x h x w) of the top-left element of output o's window.
__device__ __forceinline__ unsigned window_of(unsigned o, unsigned h, unsigned w) {
    const unsigned wo = w / 2;
    const unsigned per_plane = (h / 2) * wo;
    const unsigned plane = o / per_plane;
    const unsigned r = o - plane * per_plane;
    const unsigned oy = r / wo;
    const unsigned ox = r - oy * wo;
    return plane * h * w + 2 * oy * w + 2 * ox;
}

__device__ __forceinline__ unsigned first_index() { return blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ unsigned grid_stride() { return gridDim.x * blockDim.x; }

}  // namespace pool

// Grid min(ceil(outputs / 256), cap), 256 threads, one output element per thread and step.
LRC_KERNEL(max_pool2x2_f32, MaxPoolParams, pool::THREADS) {
    const unsigned h = p.h, w = p.w;
    const unsigned total = static_cast<unsigned>(p.planes) * (h / 2) * (w / 2);
    for (unsigned o = pool::first_index(); o < total; o += pool::grid_stride()) {
        const unsigned base = pool::window_of(o, h, w);
        const unsigned candidates[3] = {base + 1, base + w, base + w + 1};
        unsigned best = base;
        float best_value = p.x[base];
#pragma unroll
        for (int k = 0; k < 3; ++k) {
            const float v = p.x[candidates[k]];
            // v != v: NaN, which wins as in the twin (no fast-math here, so the test stays).
            if (v > best_value || v != v) {
                best = candidates[k];
                best_value = v;
            }
        }
        p.y[o] = best_value;
        p.argmax[o] = best;
    }
}

// Grid min(ceil(inputs / 256), cap), 256 threads, one input element per thread and step.
LRC_KERNEL(max_pool2x2_backward_f32, MaxPoolBackwardParams, pool::THREADS) {
    const unsigned h = p.h, w = p.w;
    const unsigned ho = h / 2, wo = w / 2;
    const unsigned plane_len = h * w;
    const unsigned total = static_cast<unsigned>(p.planes) * plane_len;
    for (unsigned i = pool::first_index(); i < total; i += pool::grid_stride()) {
        const unsigned plane = i / plane_len;
        const unsigned r = i - plane * plane_len;
        const unsigned oy = (r / w) / 2;
        const unsigned ox = (r % w) / 2;
        float g = 0.0f;
        if (oy < ho && ox < wo) {
            const unsigned o = plane * ho * wo + oy * wo + ox;
            if (p.argmax[o] == i) {
                // 0 + dy as the twin accumulates into zeros (turns -0 into +0 alike).
                g = 0.0f + p.dy[o];
            }
        }
        p.dx[i] = g;
    }
}

// The same for even h and w and an 8-byte aligned dx (the planner checks both): one thread per
// window, grid min(ceil(outputs / 256), cap). The element kernel above works out a plane, row
// and column per element with divisions by run-time sizes; here per window, and the window's
// four gradients go out as two 8-byte pairs (rows 2 oy and 2 oy + 1, columns 2 ox and 2 ox + 1:
// an even index, w being even), so a warp writes 256 contiguous bytes of each of two rows.
LRC_KERNEL(max_pool2x2_backward_window_f32, MaxPoolBackwardParams, pool::THREADS) {
    const unsigned h = p.h, w = p.w;
    const unsigned total = static_cast<unsigned>(p.planes) * (h / 2) * (w / 2);
    for (unsigned o = pool::first_index(); o < total; o += pool::grid_stride()) {
        const unsigned base = pool::window_of(o, h, w);
        const unsigned at = p.argmax[o];
        // 0 + dy as the twin accumulates into zeros; every other element 0.
        const float g = 0.0f + p.dy[o];
        lrc::store_pair(p.dx + base, at == base ? g : 0.0f, at == base + 1 ? g : 0.0f);
        lrc::store_pair(p.dx + base + w, at == base + w ? g : 0.0f, at == base + w + 1 ? g : 0.0f);
    }
}

// Grid ceil(planes / 8), 256 threads: one warp per plane.
LRC_KERNEL(plane_mean_f32, PlaneMeanParams, pool::THREADS) {
    const int warps = blockDim.x / lrc::WARP;
    const int plane = blockIdx.x * warps + threadIdx.x / lrc::WARP;
    const int lane = threadIdx.x % lrc::WARP;
    if (plane >= p.planes) {
        return;  // the whole warp leaves together; no block-wide barrier follows
    }
    const float* x = p.x + static_cast<size_t>(plane) * p.plane_len;
    float s = 0.0f;
    for (int i = lane; i < p.plane_len; i += lrc::WARP) {
        s += x[i];
    }
    s = lrc::warp_sum(s);
    if (lane == 0) {
        p.out[plane] = s / static_cast<float>(p.plane_len);
    }
}

// Grid min(ceil(units / 256), cap), 256 threads; units = elements / 4 with vec4, else elements.
LRC_KERNEL(plane_broadcast_f32, PlaneBroadcastParams, pool::THREADS) {
    const unsigned plane_len = p.plane_len;
    const unsigned total = static_cast<unsigned>(p.planes) * plane_len;
    if (p.vec4) {
        // plane_len % 4 == 0: the four elements of a float4 lie in one plane.
        for (unsigned i = pool::first_index(); i < total / 4; i += pool::grid_stride()) {
            const float v = p.dy[(4 * i) / plane_len] * p.scale;
            reinterpret_cast<float4*>(p.dx)[i] = make_float4(v, v, v, v);
        }
    } else {
        for (unsigned i = pool::first_index(); i < total; i += pool::grid_stride()) {
            p.dx[i] = p.dy[i / plane_len] * p.scale;
        }
    }
}
