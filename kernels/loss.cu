// Ops over the channel (class) axis of an (outer, channels, inner) tensor - L2 normalisation,
// log-softmax, cross-entropy, soft Dice - and the fused InfoNCE of MoCo.
//
// A "position" is one (o, i) pair: its vector holds x[(o * channels + c) * inner + i] for every
// c. Position kernels come in two layouts, chosen by the host:
//   _thread  one thread per position, looping over the channels. Threads of a warp read
//            consecutive i, so loads coalesce when inner is large (pixel embeddings, logits).
//   _warp    one warp per position, its lanes striding the channels and reducing with shuffles.
//            For inner == 1 (the MoCo head's [N, D] rows) where a vector is contiguous.
//
// Every loss is written to a one-element device buffer, and every backward reads the upstream
// gradient of the loss from a device address, so a training step needs no host copy.
//
// Determinism: no float atomics. A loss is reduced per block (a fixed tree over the block's
// threads) into per-block partial sums, which a single-block kernel adds in a fixed order.

#include "common.cuh"

using lrc::WARP;

// l2norm_fwd_*: out = x / max(|x|, eps) per position, norms = max(|x|, eps).
// l2norm_bwd_*: out = (dy - y (y . dy)) / norm, or dy / norm where the norm was clamped
//               (x = the forward's output y).
struct L2NormParams {
    const float* x;
    const float* dy;
    const float* norms;  // backward: the forward's norms
    float* norms_out;    // forward
    float* out;
    int positions;
    int channels;
    int inner;
    float eps;
};
static_assert(sizeof(L2NormParams) == 56, "L2NormParams must match its Rust mirror");
static_assert(offsetof(L2NormParams, positions) == 40, "L2NormParams must match its Rust mirror");

// log_softmax_fwd_*: out = x - logsumexp(x) per position.
// log_softmax_bwd_*: out = dy - exp(y) * sum(dy)   (x = the forward's output y).
struct LogSoftmaxParams {
    const float* x;
    const float* dy;
    float* out;
    int positions;
    int channels;
    int inner;
    int reserved;
};
static_assert(sizeof(LogSoftmaxParams) == 40, "LogSoftmaxParams must match its Rust mirror");
static_assert(offsetof(LogSoftmaxParams, positions) == 24, "LogSoftmaxParams must match its Rust mirror");

// cross_entropy_fwd_*: lse[pos] = logsumexp of the position's logits, partial[block] = the sum
//                      over the block's positions of lse - x[target].
// cross_entropy_bwd_*: dx = upstream / count * (exp(x - lse) - onehot(target)).
struct CrossEntropyParams {
    const float* x;
    const uint32_t* targets;  // one class per position, position order (o, i)
    const float* upstream;    // backward: the loss's gradient, one value
    float* lse;               // written by the forward, read by the backward
    float* partial;           // forward: one value per block
    float* dx;                // backward
    int positions;
    int channels;
    int inner;
    float count;  // positions, the divisor of the mean
};
static_assert(sizeof(CrossEntropyParams) == 64, "CrossEntropyParams must match its Rust mirror");
static_assert(offsetof(CrossEntropyParams, positions) == 48, "CrossEntropyParams must match its Rust mirror");

// out[0] = (sum of x[0..len]) / divisor, summed in a fixed order by one block.
struct MeanParams {
    const float* x;
    float* out;
    int len;
    float divisor;
};
static_assert(sizeof(MeanParams) == 24, "MeanParams must match its Rust mirror");
static_assert(offsetof(MeanParams, len) == 16, "MeanParams must match its Rust mirror");

// InfoNCE of queries q [rows, dim] against positive keys k [rows, dim] and negatives whose
// logits (already divided by the temperature) fill `probs` [rows, queue_len].
// infonce_rows: per row, the positive logit, a max-shifted log-sum-exp over the positive and the
//   negatives left in by the mask, the row's loss, and the softmax written over the logits in
//   place (0 for excluded negatives) plus the positive's probability.
// infonce_bwd_pos: dq = c (p0 - 1) k, dk = c (p0 - 1) q with c = upstream / (rows t); the
//   negatives' share of dq is added afterwards by a GEMM (probs x queue).
struct InfoNceParams {
    const float* q;
    const float* k;
    const uint32_t* mask;  // [rows][mask_words] bits, bit j set: negative j is left out; or null
    const float* upstream;
    float* probs;      // rows x queue_len: logits in, probabilities out
    float* pos_probs;  // rows
    float* row_loss;   // rows
    float* dq;         // backward, or null
    float* dk;         // backward, or null
    int rows;
    int queue_len;
    int dim;
    int mask_words;
    float inv_t;     // 1 / t, the scale of the positive logit
    float rows_t;    // rows * t, the divisor of the gradient
};
static_assert(sizeof(InfoNceParams) == 96, "InfoNceParams must match its Rust mirror");
static_assert(offsetof(InfoNceParams, rows) == 72, "InfoNceParams must match its Rust mirror");

// class_arg_max_thread: out[pos] = the channel of the position's largest value as one byte,
// the first on ties; a NaN never replaces the best so far (it compares false), as the CPU twin
// compares. Only the labels then cross to the host, one byte per position instead of a float per
// channel.
struct ArgMaxParams {
    const float* x;
    unsigned char* out;
    int positions;
    int channels;  // 1 to 256
    int inner;
    int reserved;
};
static_assert(sizeof(ArgMaxParams) == 32, "ArgMaxParams must match its Rust mirror");
static_assert(offsetof(ArgMaxParams, positions) == 16, "ArgMaxParams must match its Rust mirror");

// Soft Dice over softmax probabilities of logits x [outer, classes, inner] (see ops/dice.rs).
// dice_partials: per block of positions and per class, (sum p, sum p over the class's pixels,
//   count of the class's pixels) into partial[block][3][classes].
// dice_finish: one block adds the partials in block order, writes the loss and the per-class
//   coefficients coef[0..classes] = a, coef[classes..2 classes] = b of dL/dp_k = a_k + b_k g_k.
// dice_bwd: dx = upstream * p_k (dL/dp_k - sum_j p_j dL/dp_j) per position.
struct DiceParams {
    const float* x;
    const uint32_t* targets;
    const float* upstream;
    float* partial;
    float* coef;
    float* loss;
    float* dx;
    int positions;
    int classes;
    int inner;
    int first_class;  // 1 when the background is left out of the average
    int blocks;       // partial blocks (dice_finish)
    float eps;
};
static_assert(sizeof(DiceParams) == 80, "DiceParams must match its Rust mirror");
static_assert(offsetof(DiceParams, positions) == 56, "DiceParams must match its Rust mirror");

namespace loss {

constexpr int THREADS = 256;
constexpr int WARPS = THREADS / WARP;

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = WARP / 2; offset > 0; offset /= 2) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    return v;
}

// The sum (or max) over the block, returned to every thread; the same fixed tree for every
// thread and every run. Safe to call back to back: the trailing barrier keeps the next call
// from overwriting the warp partials before all threads have read them.
template <bool MAX>
__device__ __forceinline__ float block_all(float v) {
    __shared__ float partial[WARPS];
    const int lane = threadIdx.x % WARP;
    const int warp = threadIdx.x / WARP;
    v = MAX ? warp_max(v) : lrc::warp_sum(v);
    if (lane == 0) {
        partial[warp] = v;
    }
    __syncthreads();
    float r = partial[0];
    for (int w = 1; w < WARPS; ++w) {
        r = MAX ? fmaxf(r, partial[w]) : r + partial[w];
    }
    __syncthreads();
    return r;
}

// One thread per position.
struct Thread {
    static constexpr int SIZE = 1;
    __device__ static int position() { return blockIdx.x * blockDim.x + threadIdx.x; }
    __device__ static int rank() { return 0; }
    __device__ static float sum(float v) { return v; }
    __device__ static float max(float v) { return v; }
};

// One warp per position; sums and maxima are returned to every lane.
struct Warp {
    static constexpr int SIZE = WARP;
    __device__ static int position() { return (blockIdx.x * blockDim.x + threadIdx.x) / WARP; }
    __device__ static int rank() { return threadIdx.x % WARP; }
    __device__ static float sum(float v) { return lrc::warp_sum(v); }
    __device__ static float max(float v) { return warp_max(v); }
};

// The address of channel 0 of a position; channel c is at + c * inner.
__device__ __forceinline__ size_t base(int pos, int channels, int inner) {
    const int o = pos / inner;
    const int i = pos - o * inner;
    return static_cast<size_t>(o) * channels * inner + i;
}

// Max and log-sum-exp of a position's values, returned to every member of the team.
template <class Team>
__device__ __forceinline__ float logsumexp(const float* x, size_t at, int channels, int inner) {
    float m = -INFINITY;
    for (int c = Team::rank(); c < channels; c += Team::SIZE) {
        m = fmaxf(m, x[at + static_cast<size_t>(c) * inner]);
    }
    m = Team::max(m);
    float z = 0.0f;
    for (int c = Team::rank(); c < channels; c += Team::SIZE) {
        z += expf(x[at + static_cast<size_t>(c) * inner] - m);
    }
    z = Team::sum(z);
    return m + logf(z);
}

template <class Team>
__device__ void l2norm_forward(const L2NormParams& p) {
    const int pos = Team::position();
    if (pos >= p.positions) {
        return;  // whole teams leave together
    }
    const size_t at = base(pos, p.channels, p.inner);
    float sq = 0.0f;
    for (int c = Team::rank(); c < p.channels; c += Team::SIZE) {
        const float v = p.x[at + static_cast<size_t>(c) * p.inner];
        sq = fmaf(v, v, sq);
    }
    const float norm = fmaxf(sqrtf(Team::sum(sq)), p.eps);
    for (int c = Team::rank(); c < p.channels; c += Team::SIZE) {
        const size_t e = at + static_cast<size_t>(c) * p.inner;
        p.out[e] = p.x[e] / norm;
    }
    if (Team::rank() == 0) {
        p.norms_out[pos] = norm;
    }
}

template <class Team>
__device__ void l2norm_backward(const L2NormParams& p) {
    const int pos = Team::position();
    if (pos >= p.positions) {
        return;
    }
    const size_t at = base(pos, p.channels, p.inner);
    const float norm = p.norms[pos];
    float dot = 0.0f;
    for (int c = Team::rank(); c < p.channels; c += Team::SIZE) {
        const size_t e = at + static_cast<size_t>(c) * p.inner;
        dot = fmaf(p.x[e], p.dy[e], dot);
    }
    dot = Team::sum(dot);
    // A clamped norm is a constant: the gradient is dy / eps.
    if (!(norm > p.eps)) {
        dot = 0.0f;
    }
    for (int c = Team::rank(); c < p.channels; c += Team::SIZE) {
        const size_t e = at + static_cast<size_t>(c) * p.inner;
        p.out[e] = (p.dy[e] - p.x[e] * dot) / norm;
    }
}

template <class Team>
__device__ void log_softmax_forward(const LogSoftmaxParams& p) {
    const int pos = Team::position();
    if (pos >= p.positions) {
        return;
    }
    const size_t at = base(pos, p.channels, p.inner);
    const float lse = logsumexp<Team>(p.x, at, p.channels, p.inner);
    for (int c = Team::rank(); c < p.channels; c += Team::SIZE) {
        const size_t e = at + static_cast<size_t>(c) * p.inner;
        p.out[e] = p.x[e] - lse;
    }
}

template <class Team>
__device__ void log_softmax_backward(const LogSoftmaxParams& p) {
    const int pos = Team::position();
    if (pos >= p.positions) {
        return;
    }
    const size_t at = base(pos, p.channels, p.inner);
    float s = 0.0f;
    for (int c = Team::rank(); c < p.channels; c += Team::SIZE) {
        s += p.dy[at + static_cast<size_t>(c) * p.inner];
    }
    s = Team::sum(s);
    for (int c = Team::rank(); c < p.channels; c += Team::SIZE) {
        const size_t e = at + static_cast<size_t>(c) * p.inner;
        p.out[e] = p.dy[e] - expf(p.x[e]) * s;
    }
}

// -log of the smallest positive double: the CPU twin clamps the probability there.
constexpr float MAX_NLL = 708.3964f;

template <class Team>
__device__ void cross_entropy_forward(const CrossEntropyParams& p) {
    // No early exit: every thread takes part in the block sum.
    const int pos = Team::position();
    const bool valid = pos < p.positions;
    float nll = 0.0f;
    if (valid) {
        const size_t at = base(pos, p.channels, p.inner);
        const float lse = logsumexp<Team>(p.x, at, p.channels, p.inner);
        const uint32_t t = p.targets[pos];
        // The host checks the targets; an out-of-range one gives NaN, not a stray read.
        const float xt = t < static_cast<uint32_t>(p.channels) ? p.x[at + static_cast<size_t>(t) * p.inner] : NAN;
        nll = fminf(lse - xt, MAX_NLL);
        if (Team::rank() == 0) {
            p.lse[pos] = lse;
        }
    }
    const float total = block_all<false>(Team::rank() == 0 ? nll : 0.0f);
    if (threadIdx.x == 0) {
        p.partial[blockIdx.x] = total;
    }
}

template <class Team>
__device__ void cross_entropy_backward(const CrossEntropyParams& p) {
    const int pos = Team::position();
    if (pos >= p.positions) {
        return;
    }
    const size_t at = base(pos, p.channels, p.inner);
    const float lse = p.lse[pos];
    const uint32_t t = p.targets[pos];
    const float g = *p.upstream / p.count;
    for (int c = Team::rank(); c < p.channels; c += Team::SIZE) {
        const size_t e = at + static_cast<size_t>(c) * p.inner;
        const float prob = expf(p.x[e] - lse);
        p.dx[e] = g * (static_cast<uint32_t>(c) == t ? prob - 1.0f : prob);
    }
}

// One thread per position: threads of a warp read consecutive pixels of each class plane.
__device__ void class_arg_max(const ArgMaxParams& p) {
    const int pos = Thread::position();
    if (pos >= p.positions) {
        return;
    }
    const size_t at = base(pos, p.channels, p.inner);
    float top = p.x[at];
    int best = 0;
    for (int c = 1; c < p.channels; ++c) {
        const float v = p.x[at + static_cast<size_t>(c) * p.inner];
        if (v > top) {
            top = v;
            best = c;
        }
    }
    p.out[pos] = static_cast<unsigned char>(best);
}

// Positions per thread in dice_partials.
constexpr int DICE_ITEMS = 4;
constexpr int DICE_POSITIONS_PER_BLOCK = DICE_ITEMS * THREADS;

}  // namespace loss

// Thread layout: grid ceil(positions / 256), 256 threads. Warp layout: grid ceil(positions / 8),
// 256 threads. The cross-entropy forward writes one partial sum per block.
#define LRC_POSITION_KERNELS(NAME, PARAMS, FN)                              \
    LRC_KERNEL(NAME##_thread, PARAMS, loss::THREADS) {                      \
        loss::FN<loss::Thread>(p);                                          \
    }                                                                       \
    LRC_KERNEL(NAME##_warp, PARAMS, loss::THREADS) {                        \
        loss::FN<loss::Warp>(p);                                            \
    }

LRC_POSITION_KERNELS(l2norm_fwd, L2NormParams, l2norm_forward)
LRC_POSITION_KERNELS(l2norm_bwd, L2NormParams, l2norm_backward)
LRC_POSITION_KERNELS(log_softmax_fwd, LogSoftmaxParams, log_softmax_forward)
LRC_POSITION_KERNELS(log_softmax_bwd, LogSoftmaxParams, log_softmax_backward)
LRC_POSITION_KERNELS(cross_entropy_fwd, CrossEntropyParams, cross_entropy_forward)
LRC_POSITION_KERNELS(cross_entropy_bwd, CrossEntropyParams, cross_entropy_backward)

// Grid ceil(positions / 256), 256 threads.
LRC_KERNEL(class_arg_max_thread, ArgMaxParams, loss::THREADS) {
    loss::class_arg_max(p);
}

// Grid 1, 256 threads.
LRC_KERNEL(loss_mean, MeanParams, loss::THREADS) {
    float s = 0.0f;
    for (int i = threadIdx.x; i < p.len; i += blockDim.x) {
        s += p.x[i];
    }
    s = loss::block_all<false>(s);
    if (threadIdx.x == 0) {
        p.out[0] = s / p.divisor;
    }
}

// Grid (rows), 256 threads: one block per query row.
LRC_KERNEL(infonce_rows, InfoNceParams, loss::THREADS) {
    const int row = blockIdx.x;
    const float* q = p.q + static_cast<size_t>(row) * p.dim;
    const float* k = p.k + static_cast<size_t>(row) * p.dim;
    float* logits = p.probs + static_cast<size_t>(row) * p.queue_len;
    const uint32_t* mask = p.mask != nullptr ? p.mask + static_cast<size_t>(row) * p.mask_words : nullptr;
    float dot = 0.0f;
    for (int e = threadIdx.x; e < p.dim; e += blockDim.x) {
        dot = fmaf(q[e], k[e], dot);
    }
    const float pos = loss::block_all<false>(dot) * p.inv_t;
    // Each thread owns the same negatives in every pass, so the softmax can overwrite them.
    float m = pos;
    for (int j = threadIdx.x; j < p.queue_len; j += blockDim.x) {
        const bool out = mask != nullptr && ((mask[j / 32] >> (j % 32)) & 1u) != 0;
        if (out) {
            logits[j] = -INFINITY;
        } else {
            m = fmaxf(m, logits[j]);
        }
    }
    m = loss::block_all<true>(m);
    float z = 0.0f;
    for (int j = threadIdx.x; j < p.queue_len; j += blockDim.x) {
        z += expf(logits[j] - m);
    }
    z = loss::block_all<false>(z) + expf(pos - m);
    for (int j = threadIdx.x; j < p.queue_len; j += blockDim.x) {
        logits[j] = expf(logits[j] - m) / z;
    }
    if (threadIdx.x == 0) {
        p.pos_probs[row] = expf(pos - m) / z;
        p.row_loss[row] = m + logf(z) - pos;
    }
}

// Grid ceil(rows * dim / 256), 256 threads: one thread per element of dq and dk.
LRC_KERNEL(infonce_bwd_pos, InfoNceParams, loss::THREADS) {
    const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= static_cast<size_t>(p.rows) * p.dim) {
        return;
    }
    const int row = static_cast<int>(i / p.dim);
    const float g0 = (p.pos_probs[row] - 1.0f) * (*p.upstream / p.rows_t);
    if (p.dq != nullptr) {
        p.dq[i] = g0 * p.k[i];
    }
    if (p.dk != nullptr) {
        p.dk[i] = g0 * p.q[i];
    }
}

// Grid ceil(positions / 1024), 256 threads, each thread DICE_ITEMS positions 256 apart.
LRC_KERNEL(dice_partials, DiceParams, loss::THREADS) {
    using namespace loss;
    float m[DICE_ITEMS];
    float inv_z[DICE_ITEMS];
    size_t at[DICE_ITEMS];
    int target[DICE_ITEMS];
    const int first = blockIdx.x * DICE_POSITIONS_PER_BLOCK + threadIdx.x;
#pragma unroll
    for (int it = 0; it < DICE_ITEMS; ++it) {
        const int pos = first + it * THREADS;
        target[it] = -1;  // no position: contributes nothing
        m[it] = 0.0f;
        inv_z[it] = 0.0f;
        at[it] = 0;
        if (pos < p.positions) {
            at[it] = base(pos, p.classes, p.inner);
            target[it] = static_cast<int>(p.targets[pos]);
            float mx = -INFINITY;
            for (int c = 0; c < p.classes; ++c) {
                mx = fmaxf(mx, p.x[at[it] + static_cast<size_t>(c) * p.inner]);
            }
            float z = 0.0f;
            for (int c = 0; c < p.classes; ++c) {
                z += expf(p.x[at[it] + static_cast<size_t>(c) * p.inner] - mx);
            }
            m[it] = mx;
            inv_z[it] = 1.0f / z;
        }
    }
    float* out = p.partial + static_cast<size_t>(blockIdx.x) * 3 * p.classes;
    for (int c = 0; c < p.classes; ++c) {
        float psum = 0.0f;
        float inter = 0.0f;
        float gsum = 0.0f;
#pragma unroll
        for (int it = 0; it < DICE_ITEMS; ++it) {
            if (target[it] >= 0) {
                const float prob = expf(p.x[at[it] + static_cast<size_t>(c) * p.inner] - m[it]) * inv_z[it];
                psum += prob;
                if (target[it] == c) {
                    inter += prob;
                    gsum += 1.0f;
                }
            }
        }
        psum = block_all<false>(psum);
        inter = block_all<false>(inter);
        gsum = block_all<false>(gsum);
        if (threadIdx.x == 0) {
            out[c] = psum;
            out[p.classes + c] = inter;
            out[2 * p.classes + c] = gsum;
        }
    }
}

// Grid 1, 256 threads, dynamic shared memory 4 * classes floats.
LRC_KERNEL(dice_finish, DiceParams, loss::THREADS) {
    LRC_DYNAMIC_SHARED(float, shared);
    float* sums = shared;                   // [3][classes]: psum, inter, gsum
    float* terms = shared + 3 * p.classes;  // per class, 2 I / S / counted
    const int lane = threadIdx.x % WARP;
    const int warp = threadIdx.x / WARP;
    const int width = 3 * p.classes;
    // One warp per sum, its lanes striding the blocks; the same order on every run.
    for (int s = warp; s < width; s += loss::WARPS) {
        float acc = 0.0f;
        for (int b = lane; b < p.blocks; b += WARP) {
            acc += p.partial[static_cast<size_t>(b) * width + s];
        }
        acc = lrc::warp_sum(acc);
        if (lane == 0) {
            sums[s] = acc;
        }
    }
    __syncthreads();
    const float counted = static_cast<float>(p.classes - p.first_class);
    for (int c = threadIdx.x; c < p.classes; c += blockDim.x) {
        float a = 0.0f;
        float b = 0.0f;
        float term = 0.0f;
        if (c >= p.first_class) {
            const float inter = sums[p.classes + c];
            const float s = sums[c] + sums[2 * p.classes + c] + p.eps;
            term = 2.0f * inter / s / counted;
            a = term / s;
            b = -2.0f / s / counted;
        }
        terms[c] = term;
        p.coef[c] = a;
        p.coef[p.classes + c] = b;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float loss = 1.0f;
        for (int c = 0; c < p.classes; ++c) {
            loss -= terms[c];
        }
        p.loss[0] = loss;
    }
}

// Grid ceil(positions / 256), 256 threads: one thread per position.
LRC_KERNEL(dice_bwd, DiceParams, loss::THREADS) {
    const int pos = blockIdx.x * blockDim.x + threadIdx.x;
    if (pos >= p.positions) {
        return;
    }
    const size_t at = loss::base(pos, p.classes, p.inner);
    const int target = static_cast<int>(p.targets[pos]);
    float m = -INFINITY;
    for (int c = 0; c < p.classes; ++c) {
        m = fmaxf(m, p.x[at + static_cast<size_t>(c) * p.inner]);
    }
    float z = 0.0f;
    for (int c = 0; c < p.classes; ++c) {
        z += expf(p.x[at + static_cast<size_t>(c) * p.inner] - m);
    }
    const float inv_z = 1.0f / z;
    const float* a = p.coef;
    const float* b = p.coef + p.classes;
    float dot = 0.0f;
    for (int c = 0; c < p.classes; ++c) {
        const float prob = expf(p.x[at + static_cast<size_t>(c) * p.inner] - m) * inv_z;
        dot = fmaf(prob, a[c] + (c == target ? b[c] : 0.0f), dot);
    }
    const float g = *p.upstream;
    for (int c = 0; c < p.classes; ++c) {
        const size_t e = at + static_cast<size_t>(c) * p.inner;
        const float prob = expf(p.x[e] - m) * inv_z;
        p.dx[e] = g * prob * (a[c] + (c == target ? b[c] : 0.0f) - dot);
    }
}
