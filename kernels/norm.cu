// Instance normalisation (torch.nn.InstanceNorm2d(affine=True): per (image, channel) plane of an
// NCHW tensor, biased variance, eps inside the square root) fused with the activation that
// follows it, and the activations alone.
//
//   forward   z = gamma[c] * (x - mean) * inv_std + beta[c],  y = act(z)
//             with mean and inv_std = 1 / sqrt(var + eps) saved per plane for the backward
//   backward  g = dy * act'(z), z recomputed from x and the saved statistics exactly as the
//             forward computed it (same instructions, so the mask is the forward's sign of z);
//             dx = gamma * inv_std * (g - mean(g) - xhat * mean(g * xhat)), xhat = (x - mean) * inv_std;
//             per plane sum(g * xhat) and sum(g) (dgamma, dbeta before the sum over images)
//   act       identity, or leaky ReLU with slope (ReLU is slope 0): z > 0 ? z : z * slope, the
//             gradient taken from the sign of z (slope at exactly 0), as PyTorch does.
//
// Launches (chosen per plane length by src/device/cuda/norm.rs; every variant reads a plane's
// values as packs of V = 4 (float4) when the plane length and the addresses allow, else V = 1):
//   warpR    one warp per plane, 8 planes per block of 256 threads; each lane keeps R packs of x
//            (and of dy) in registers. Small planes (U-Net 16x16, 32x32): x is read once.
//   block    one block per plane (32..1024 threads); each thread keeps a few packs in registers
//            and the rest of the plane lies in dynamic shared memory, each thread reading back
//            only what it stored itself. Medium and large planes that fit: x is read once.
//   stream   one block per plane; statistics from a first read (Welford per thread, merged with
//            Chan's formula in a fixed tree), results from a second read. Planes too large for
//            the block's registers and shared memory.
// Resident variants compute the variance in two passes over the values they hold (mean first,
// then the sum of squared deviations): no cancellation even for a large mean, and no extra
// read. All reductions run in a fixed order; dgamma and dbeta add the per-plane sums over the
// images in image order (norm_channel_sums), so every result is deterministic and no float
// atomics are used.

#include "common.cuh"

// Activation codes, mirrored by src/device/cuda/norm.rs.
#define LRC_ACT_IDENTITY 0
#define LRC_ACT_LEAKY 1

// Forward over `planes` planes of `plane_len` values; channel of plane p is p % channels.
struct NormForwardParams {
    const float* x;
    const float* gamma;  // channels
    const float* beta;   // channels
    float* y;
    float* mean;     // planes
    float* inv_std;  // planes
    int planes;
    int channels;
    int plane_len;
    int act;
    float slope;
    float eps;
};
static_assert(sizeof(NormForwardParams) == 72, "NormForwardParams must match its Rust mirror");
static_assert(offsetof(NormForwardParams, planes) == 48, "NormForwardParams must match its Rust mirror");
static_assert(offsetof(NormForwardParams, eps) == 68, "NormForwardParams must match its Rust mirror");

// Backward: dx, and per plane the sums that become dgamma and dbeta.
struct NormBackwardParams {
    const float* x;
    const float* dy;  // gradient of the activated output
    const float* gamma;
    const float* beta;  // read only for an activation (the mask needs z)
    const float* mean;
    const float* inv_std;
    float* dx;
    float* dgamma_part;  // planes: sum of g * xhat
    float* dbeta_part;   // planes: sum of g
    int planes;
    int channels;
    int plane_len;
    int act;
    float slope;
    int reserved;
};
static_assert(sizeof(NormBackwardParams) == 96, "NormBackwardParams must match its Rust mirror");
static_assert(offsetof(NormBackwardParams, planes) == 72, "NormBackwardParams must match its Rust mirror");
static_assert(offsetof(NormBackwardParams, slope) == 88, "NormBackwardParams must match its Rust mirror");

// dgamma[c] = sum over images i of dgamma_part[i * channels + c], in image order; dbeta alike.
struct NormChannelSumParams {
    const float* dgamma_part;
    const float* dbeta_part;
    float* dgamma;
    float* dbeta;
    int images;
    int channels;
};
static_assert(sizeof(NormChannelSumParams) == 40, "NormChannelSumParams must match its Rust mirror");
static_assert(offsetof(NormChannelSumParams, images) == 32, "NormChannelSumParams must match its Rust mirror");

// Leaky ReLU alone, element-wise: out = act(x) (forward) or dy * act'(x) (backward).
struct ActivationParams {
    const float* x;
    const float* dy;  // backward only
    float* out;
    int len;
    float slope;
    int vec4;  // x, dy and out are 16-byte aligned: the body runs on float4s
    int reserved;
};
static_assert(sizeof(ActivationParams) == 40, "ActivationParams must match its Rust mirror");
static_assert(offsetof(ActivationParams, len) == 24, "ActivationParams must match its Rust mirror");

namespace instnorm {

constexpr unsigned FULL = 0xffffffffu;
// Packs per thread kept in registers by the block variants: x alone in the forward, x and dy
// in the backward. With launch bounds of 1024 threads a thread has at most 64 registers; these
// leave room for the rest without spilling.
constexpr int BLOCK_PACKS_FORWARD = 4;
constexpr int BLOCK_PACKS_BACKWARD = 2;
constexpr int WARP_PLANES_PER_BLOCK = 8;

template <int V>
struct Pack {
    float v[V];
};

// Pack i of a read-only global array.
template <int V>
__device__ __forceinline__ Pack<V> load_global(const float* base, int i) {
    Pack<V> r;
    if constexpr (V == 4) {
        const float4 f = __ldg(reinterpret_cast<const float4*>(base) + i);
        r.v[0] = f.x;
        r.v[1] = f.y;
        r.v[2] = f.z;
        r.v[3] = f.w;
    } else {
        r.v[0] = __ldg(base + i);
    }
    return r;
}

// Pack i of an array this thread wrote (shared memory).
template <int V>
__device__ __forceinline__ Pack<V> load_plain(const float* base, int i) {
    Pack<V> r;
    if constexpr (V == 4) {
        const float4 f = reinterpret_cast<const float4*>(base)[i];
        r.v[0] = f.x;
        r.v[1] = f.y;
        r.v[2] = f.z;
        r.v[3] = f.w;
    } else {
        r.v[0] = base[i];
    }
    return r;
}

template <int V>
__device__ __forceinline__ void store(float* base, int i, const Pack<V>& r) {
    if constexpr (V == 4) {
        reinterpret_cast<float4*>(base)[i] = make_float4(r.v[0], r.v[1], r.v[2], r.v[3]);
    } else {
        base[i] = r.v[0];
    }
}

template <int V>
__device__ __forceinline__ Pack<V> zeros() {
    Pack<V> r;
#pragma unroll
    for (int j = 0; j < V; ++j) {
        r.v[j] = 0.0f;
    }
    return r;
}

// The pre-activation. Forward and backward both call this with the same float operands, so the
// backward's sign of z is the forward's, bit for bit.
__device__ __forceinline__ float preact(float x, float mean, float scale, float shift) {
    return fmaf(x - mean, scale, shift);
}

__device__ __forceinline__ float activate(float z, int act, float slope) {
    return (act == LRC_ACT_IDENTITY || z > 0.0f) ? z : z * slope;
}

__device__ __forceinline__ float activate_grad(float z, float g, int act, float slope) {
    return (act == LRC_ACT_IDENTITY || z > 0.0f) ? g : g * slope;
}

// The threads that share one plane: a warp, or the whole block. `sum` returns the same value,
// bit for bit, in every thread of the group (the xor butterfly adds commutative pairs; the block
// version has every thread add the warp sums in warp order).
struct WarpGroup {
    int rank;
    static constexpr int size = lrc::WARP;
    __device__ float sum(float v) const { return lrc::warp_sum(v); }
    __device__ void sum2(float& a, float& b) const {
        a = lrc::warp_sum(a);
        b = lrc::warp_sum(b);
    }
};

struct BlockGroup {
    int rank;
    int size;
    __device__ float sum(float v) const {
        __shared__ float partial[lrc::WARP];
        v = lrc::warp_sum(v);
        if (rank % lrc::WARP == 0) {
            partial[rank / lrc::WARP] = v;
        }
        __syncthreads();
        float s = 0.0f;
        for (int w = 0; w < size / lrc::WARP; ++w) {
            s += partial[w];
        }
        __syncthreads();  // the next call may overwrite partial
        return s;
    }
    __device__ void sum2(float& a, float& b) const {
        __shared__ float partial[2][lrc::WARP];
        a = lrc::warp_sum(a);
        b = lrc::warp_sum(b);
        if (rank % lrc::WARP == 0) {
            partial[0][rank / lrc::WARP] = a;
            partial[1][rank / lrc::WARP] = b;
        }
        __syncthreads();
        a = 0.0f;
        b = 0.0f;
        for (int w = 0; w < size / lrc::WARP; ++w) {
            a += partial[0][w];
            b += partial[1][w];
        }
        __syncthreads();
    }
};

// ---------------------------------------------------------------------------------------------
// Forward, plane held by the group (registers, then shared memory for the rest).
// ---------------------------------------------------------------------------------------------

template <int V, int R, class Group>
__device__ __forceinline__ void forward_resident(const NormForwardParams& p, int plane, const Group& grp,
                                                 float* tail) {
    const int len = p.plane_len;
    const int packs = len / V;
    const size_t offset = static_cast<size_t>(plane) * len;
    const float* x = p.x + offset;
    float* y = p.y + offset;
    const int first_tail = R * grp.size;

    Pack<V> r[R];
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < R; ++k) {
        const int i = k * grp.size + grp.rank;
        r[k] = i < packs ? load_global<V>(x, i) : zeros<V>();
#pragma unroll
        for (int j = 0; j < V; ++j) {
            sum += r[k].v[j];
        }
    }
#pragma unroll 4
    for (int i = first_tail + grp.rank; i < packs; i += grp.size) {
        const Pack<V> t = load_global<V>(x, i);
        store<V>(tail, i - first_tail, t);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            sum += t.v[j];
        }
    }
    const float mean = grp.sum(sum) / static_cast<float>(len);

    // Sum of squared deviations from the values held (zeros past the plane are skipped).
    float sq = 0.0f;
#pragma unroll
    for (int k = 0; k < R; ++k) {
        if (k * grp.size + grp.rank < packs) {
#pragma unroll
            for (int j = 0; j < V; ++j) {
                const float d = r[k].v[j] - mean;
                sq = fmaf(d, d, sq);
            }
        }
    }
    for (int i = first_tail + grp.rank; i < packs; i += grp.size) {
        const Pack<V> t = load_plain<V>(tail, i - first_tail);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            const float d = t.v[j] - mean;
            sq = fmaf(d, d, sq);
        }
    }
    const float var = grp.sum(sq) / static_cast<float>(len);
    const float inv_std = 1.0f / sqrtf(var + p.eps);

    const int c = plane % p.channels;
    const float scale = __ldg(p.gamma + c) * inv_std;
    const float shift = __ldg(p.beta + c);
#pragma unroll
    for (int k = 0; k < R; ++k) {
        const int i = k * grp.size + grp.rank;
        if (i < packs) {
            Pack<V> o;
#pragma unroll
            for (int j = 0; j < V; ++j) {
                o.v[j] = activate(preact(r[k].v[j], mean, scale, shift), p.act, p.slope);
            }
            store<V>(y, i, o);
        }
    }
    for (int i = first_tail + grp.rank; i < packs; i += grp.size) {
        Pack<V> o = load_plain<V>(tail, i - first_tail);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            o.v[j] = activate(preact(o.v[j], mean, scale, shift), p.act, p.slope);
        }
        store<V>(y, i, o);
    }
    if (grp.rank == 0) {
        p.mean[plane] = mean;
        p.inv_std[plane] = inv_std;
    }
}

template <int V, int R>
__device__ __forceinline__ void forward_warp(const NormForwardParams& p) {
    const int plane = blockIdx.x * WARP_PLANES_PER_BLOCK + threadIdx.x / lrc::WARP;
    if (plane >= p.planes) {
        return;  // the whole warp: no block barrier follows
    }
    forward_resident<V, R>(p, plane, WarpGroup{static_cast<int>(threadIdx.x % lrc::WARP)}, nullptr);
}

template <int V>
__device__ __forceinline__ void forward_block(const NormForwardParams& p, float* tail) {
    forward_resident<V, BLOCK_PACKS_FORWARD>(p, blockIdx.x,
                                             BlockGroup{static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x)},
                                             tail);
}

// ---------------------------------------------------------------------------------------------
// Forward, plane streamed twice: Welford statistics, then the output.
// ---------------------------------------------------------------------------------------------

// Count, mean and sum of squared deviations of some values.
struct Moments {
    float n;
    float mean;
    float m2;
};

// Chan et al.'s pairwise update; either side may be empty.
__device__ __forceinline__ Moments merge(const Moments& a, const Moments& b) {
    const float n = a.n + b.n;
    if (n == 0.0f) {
        return a;
    }
    const float d = b.mean - a.mean;
    const float wb = b.n / n;
    return Moments{n, fmaf(d, wb, a.mean), a.m2 + b.m2 + d * d * a.n * wb};
}

template <int V>
__device__ __forceinline__ Moments moments_of(const Pack<V>& t) {
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < V; ++j) {
        s += t.v[j];
    }
    const float m = s / static_cast<float>(V);
    float m2 = 0.0f;
#pragma unroll
    for (int j = 0; j < V; ++j) {
        const float d = t.v[j] - m;
        m2 = fmaf(d, d, m2);
    }
    return Moments{static_cast<float>(V), m, m2};
}

// The block's moments in every thread: a shuffle-down tree per warp (valid in lane 0), then
// every thread merges the warps' moments in warp order.
__device__ __forceinline__ Moments block_moments(Moments m) {
    __shared__ float part[3][lrc::WARP];
#pragma unroll
    for (int offset = lrc::WARP / 2; offset > 0; offset /= 2) {
        const Moments other{__shfl_down_sync(FULL, m.n, offset), __shfl_down_sync(FULL, m.mean, offset),
                            __shfl_down_sync(FULL, m.m2, offset)};
        m = merge(m, other);
    }
    const int warp = threadIdx.x / lrc::WARP;
    if (threadIdx.x % lrc::WARP == 0) {
        part[0][warp] = m.n;
        part[1][warp] = m.mean;
        part[2][warp] = m.m2;
    }
    __syncthreads();
    Moments total{0.0f, 0.0f, 0.0f};
    for (int w = 0; w < static_cast<int>(blockDim.x) / lrc::WARP; ++w) {
        total = merge(total, Moments{part[0][w], part[1][w], part[2][w]});
    }
    __syncthreads();
    return total;
}

template <int V>
__device__ __forceinline__ void forward_stream(const NormForwardParams& p) {
    const int plane = blockIdx.x;
    const int len = p.plane_len;
    const int packs = len / V;
    const size_t offset = static_cast<size_t>(plane) * len;
    const float* x = p.x + offset;
    float* y = p.y + offset;
    const int rank = threadIdx.x;
    const int size = blockDim.x;

    Moments m{0.0f, 0.0f, 0.0f};
#pragma unroll 4
    for (int i = rank; i < packs; i += size) {
        m = merge(m, moments_of<V>(load_global<V>(x, i)));
    }
    const Moments total = block_moments(m);
    const float mean = total.mean;
    const float inv_std = 1.0f / sqrtf(total.m2 / static_cast<float>(len) + p.eps);

    const int c = plane % p.channels;
    const float scale = __ldg(p.gamma + c) * inv_std;
    const float shift = __ldg(p.beta + c);
#pragma unroll 4
    for (int i = rank; i < packs; i += size) {
        Pack<V> o = load_global<V>(x, i);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            o.v[j] = activate(preact(o.v[j], mean, scale, shift), p.act, p.slope);
        }
        store<V>(y, i, o);
    }
    if (rank == 0) {
        p.mean[plane] = mean;
        p.inv_std[plane] = inv_std;
    }
}

// ---------------------------------------------------------------------------------------------
// Backward.
// ---------------------------------------------------------------------------------------------

// Per-plane constants of the backward.
struct PlaneBackward {
    float mean, inv_std, scale, shift;
    __device__ PlaneBackward(const NormBackwardParams& p, int plane) {
        mean = __ldg(p.mean + plane);
        inv_std = __ldg(p.inv_std + plane);
        const int c = plane % p.channels;
        scale = __ldg(p.gamma + c) * inv_std;
        shift = p.act == LRC_ACT_IDENTITY ? 0.0f : __ldg(p.beta + c);
    }
    // Turns (x, dy) into (xhat, g) in place and adds to the sums of g and g * xhat.
    __device__ __forceinline__ void prepare(const NormBackwardParams& p, float& x, float& dy, float& sum_g,
                                            float& sum_gx) const {
        const float g = activate_grad(preact(x, mean, scale, shift), dy, p.act, p.slope);
        const float xhat = (x - mean) * inv_std;
        x = xhat;
        dy = g;
        sum_g += g;
        sum_gx = fmaf(g, xhat, sum_gx);
    }
};

__device__ __forceinline__ float input_grad(float scale, float xhat, float g, float mean_g, float mean_gx) {
    return scale * (g - fmaf(xhat, mean_gx, mean_g));
}

template <int V, int R, class Group>
__device__ __forceinline__ void backward_resident(const NormBackwardParams& p, int plane, const Group& grp,
                                                  float* tail) {
    const int len = p.plane_len;
    const int packs = len / V;
    const size_t offset = static_cast<size_t>(plane) * len;
    const float* x = p.x + offset;
    const float* dy = p.dy + offset;
    float* dx = p.dx + offset;
    const int first_tail = R * grp.size;
    // The tail holds xhat of packs [first_tail, packs) and then g of the same packs.
    const int tail_packs = packs > first_tail ? packs - first_tail : 0;
    const PlaneBackward pb(p, plane);

    Pack<V> xr[R];
    Pack<V> gr[R];
    float sum_g = 0.0f;
    float sum_gx = 0.0f;
#pragma unroll
    for (int k = 0; k < R; ++k) {
        const int i = k * grp.size + grp.rank;
        if (i < packs) {
            xr[k] = load_global<V>(x, i);
            gr[k] = load_global<V>(dy, i);
        } else {
            xr[k] = zeros<V>();
            gr[k] = zeros<V>();
        }
    }
#pragma unroll
    for (int k = 0; k < R; ++k) {
        if (k * grp.size + grp.rank < packs) {
#pragma unroll
            for (int j = 0; j < V; ++j) {
                pb.prepare(p, xr[k].v[j], gr[k].v[j], sum_g, sum_gx);
            }
        }
    }
#pragma unroll 4
    for (int i = first_tail + grp.rank; i < packs; i += grp.size) {
        Pack<V> xt = load_global<V>(x, i);
        Pack<V> gt = load_global<V>(dy, i);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            pb.prepare(p, xt.v[j], gt.v[j], sum_g, sum_gx);
        }
        store<V>(tail, i - first_tail, xt);
        store<V>(tail, tail_packs + i - first_tail, gt);
    }
    grp.sum2(sum_g, sum_gx);
    const float mean_g = sum_g / static_cast<float>(len);
    const float mean_gx = sum_gx / static_cast<float>(len);
#pragma unroll
    for (int k = 0; k < R; ++k) {
        const int i = k * grp.size + grp.rank;
        if (i < packs) {
            Pack<V> o;
#pragma unroll
            for (int j = 0; j < V; ++j) {
                o.v[j] = input_grad(pb.scale, xr[k].v[j], gr[k].v[j], mean_g, mean_gx);
            }
            store<V>(dx, i, o);
        }
    }
    for (int i = first_tail + grp.rank; i < packs; i += grp.size) {
        const Pack<V> xt = load_plain<V>(tail, i - first_tail);
        const Pack<V> gt = load_plain<V>(tail, tail_packs + i - first_tail);
        Pack<V> o;
#pragma unroll
        for (int j = 0; j < V; ++j) {
            o.v[j] = input_grad(pb.scale, xt.v[j], gt.v[j], mean_g, mean_gx);
        }
        store<V>(dx, i, o);
    }
    if (grp.rank == 0) {
        p.dgamma_part[plane] = sum_gx;
        p.dbeta_part[plane] = sum_g;
    }
}

template <int V, int R>
__device__ __forceinline__ void backward_warp(const NormBackwardParams& p) {
    const int plane = blockIdx.x * WARP_PLANES_PER_BLOCK + threadIdx.x / lrc::WARP;
    if (plane >= p.planes) {
        return;
    }
    backward_resident<V, R>(p, plane, WarpGroup{static_cast<int>(threadIdx.x % lrc::WARP)}, nullptr);
}

template <int V>
__device__ __forceinline__ void backward_block(const NormBackwardParams& p, float* tail) {
    backward_resident<V, BLOCK_PACKS_BACKWARD>(
        p, blockIdx.x, BlockGroup{static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x)}, tail);
}

template <int V>
__device__ __forceinline__ void backward_stream(const NormBackwardParams& p) {
    const int plane = blockIdx.x;
    const int len = p.plane_len;
    const int packs = len / V;
    const size_t offset = static_cast<size_t>(plane) * len;
    const float* x = p.x + offset;
    const float* dy = p.dy + offset;
    float* dx = p.dx + offset;
    const BlockGroup grp{static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x)};
    const PlaneBackward pb(p, plane);

    float sum_g = 0.0f;
    float sum_gx = 0.0f;
#pragma unroll 4
    for (int i = grp.rank; i < packs; i += grp.size) {
        Pack<V> xt = load_global<V>(x, i);
        Pack<V> gt = load_global<V>(dy, i);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            pb.prepare(p, xt.v[j], gt.v[j], sum_g, sum_gx);
        }
    }
    grp.sum2(sum_g, sum_gx);
    const float mean_g = sum_g / static_cast<float>(len);
    const float mean_gx = sum_gx / static_cast<float>(len);
    float unused_g = 0.0f;
    float unused_gx = 0.0f;
#pragma unroll 4
    for (int i = grp.rank; i < packs; i += grp.size) {
        Pack<V> xt = load_global<V>(x, i);
        Pack<V> gt = load_global<V>(dy, i);
        Pack<V> o;
#pragma unroll
        for (int j = 0; j < V; ++j) {
            pb.prepare(p, xt.v[j], gt.v[j], unused_g, unused_gx);
            o.v[j] = input_grad(pb.scale, xt.v[j], gt.v[j], mean_g, mean_gx);
        }
        store<V>(dx, i, o);
    }
    if (grp.rank == 0) {
        p.dgamma_part[plane] = sum_gx;
        p.dbeta_part[plane] = sum_g;
    }
}

}  // namespace instnorm

// ---------------------------------------------------------------------------------------------
// Kernels.
// ---------------------------------------------------------------------------------------------

// Grid ceil(planes / 8), 256 threads; no shared memory.
#define LRC_NORM_WARP(R, V)                                                         \
    LRC_KERNEL(norm_fwd_warp##R##_v##V, NormForwardParams, 256) {                   \
        instnorm::forward_warp<V, R>(p);                                            \
    }                                                                               \
    LRC_KERNEL(norm_bwd_warp##R##_v##V, NormBackwardParams, 256) {                  \
        instnorm::backward_warp<V, R>(p);                                           \
    }

LRC_NORM_WARP(2, 1)
LRC_NORM_WARP(2, 4)
LRC_NORM_WARP(8, 1)
LRC_NORM_WARP(8, 4)

// Grid (planes), 32..1024 threads; dynamic shared memory for the packs past the registers
// (forward: x; backward: xhat then g), none when the plane fits the registers. The explicit
// minimum of one block per multiprocessor lets ptxas use up to 64 registers; without it ptxas
// aimed at two 1024-thread blocks (32 registers) and spilled.
#define LRC_NORM_BLOCK(V)                                                           \
    LRC_KERNEL(norm_fwd_block_v##V, NormForwardParams, 1024, 1) {                   \
        LRC_DYNAMIC_SHARED(float, tail);                                            \
        instnorm::forward_block<V>(p, tail);                                        \
    }                                                                               \
    LRC_KERNEL(norm_bwd_block_v##V, NormBackwardParams, 1024, 1) {                  \
        LRC_DYNAMIC_SHARED(float, tail);                                            \
        instnorm::backward_block<V>(p, tail);                                       \
    }

LRC_NORM_BLOCK(1)
LRC_NORM_BLOCK(4)

// Grid (planes), up to 1024 threads; no dynamic shared memory.
#define LRC_NORM_STREAM(V)                                                          \
    LRC_KERNEL(norm_fwd_stream_v##V, NormForwardParams, 1024, 1) {                  \
        instnorm::forward_stream<V>(p);                                             \
    }                                                                               \
    LRC_KERNEL(norm_bwd_stream_v##V, NormBackwardParams, 1024, 1) {                 \
        instnorm::backward_stream<V>(p);                                            \
    }

LRC_NORM_STREAM(1)
LRC_NORM_STREAM(4)

// Grid ceil(channels / 256), 256 threads.
LRC_KERNEL(norm_channel_sums, NormChannelSumParams, 256) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= p.channels) {
        return;
    }
    float dg = 0.0f;
    float db = 0.0f;
    for (int i = 0; i < p.images; ++i) {
        dg += p.dgamma_part[static_cast<size_t>(i) * p.channels + c];
        db += p.dbeta_part[static_cast<size_t>(i) * p.channels + c];
    }
    p.dgamma[c] = dg;
    p.dbeta[c] = db;
}

// Element-wise activations: a grid-stride loop over float4s when the operands are aligned, then
// over the remaining values one by one. Grid of 256-thread blocks, any size.
LRC_KERNEL(activation_forward, ActivationParams, 256) {
    const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
    const size_t start = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const size_t len = static_cast<size_t>(p.len);
    const size_t quads = p.vec4 ? len / 4 : 0;
    for (size_t i = start; i < quads; i += stride) {
        float4 v = __ldg(reinterpret_cast<const float4*>(p.x) + i);
        v.x = instnorm::activate(v.x, LRC_ACT_LEAKY, p.slope);
        v.y = instnorm::activate(v.y, LRC_ACT_LEAKY, p.slope);
        v.z = instnorm::activate(v.z, LRC_ACT_LEAKY, p.slope);
        v.w = instnorm::activate(v.w, LRC_ACT_LEAKY, p.slope);
        reinterpret_cast<float4*>(p.out)[i] = v;
    }
    for (size_t i = quads * 4 + start; i < len; i += stride) {
        p.out[i] = instnorm::activate(__ldg(p.x + i), LRC_ACT_LEAKY, p.slope);
    }
}

LRC_KERNEL(activation_backward, ActivationParams, 256) {
    const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
    const size_t start = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const size_t len = static_cast<size_t>(p.len);
    const size_t quads = p.vec4 ? len / 4 : 0;
    for (size_t i = start; i < quads; i += stride) {
        const float4 v = __ldg(reinterpret_cast<const float4*>(p.x) + i);
        float4 g = __ldg(reinterpret_cast<const float4*>(p.dy) + i);
        g.x = instnorm::activate_grad(v.x, g.x, LRC_ACT_LEAKY, p.slope);
        g.y = instnorm::activate_grad(v.y, g.y, LRC_ACT_LEAKY, p.slope);
        g.z = instnorm::activate_grad(v.z, g.z, LRC_ACT_LEAKY, p.slope);
        g.w = instnorm::activate_grad(v.w, g.w, LRC_ACT_LEAKY, p.slope);
        reinterpret_cast<float4*>(p.out)[i] = g;
    }
    for (size_t i = quads * 4 + start; i < len; i += stride) {
        p.out[i] = instnorm::activate_grad(__ldg(p.x + i), __ldg(p.dy + i), LRC_ACT_LEAKY, p.slope);
    }
}
