// The Local Region Contrast loss (thesis section 3.1.2) of pixel embeddings f_q, f_p
// (B x D x H x W, NCHW, FP32 or BF16), forward and backward, fused: the sampled pixels are gathered
// straight from the embedding maps (optionally normalised to unit length on the fly), averaged
// into region means, and the K x K blocks q.p / t and q.q / t are formed and reduced with an
// online, max-shifted log-sum-exp without ever being stored. Memory beyond the inputs is
// O(rows * D) (rows = sum over images of K): the region means, their gradients and a few values
// per region; never a B x K x N x D gather.
//
// Per image b: K_b regions, n_b samples per region and view. The host uploads one table of 32-bit
// words per call (src/device/cuda/local_contrast.rs): region and sample offsets per image, the
// samples per region, the blocks of the row kernels and the pixel indices of both views. Regions
// of all images are numbered consecutively ("rows"), so that grids cover exactly the regions present:
// images with fewer regions cost nothing. The row kernels give each block 4 rows of one image (so
// that its warps share the staged means of that image); the padding is the unused warps of each
// image's last block, fewer than 4 rows per image.
//
// Loss per image, exactly as the CPU twin (src/ops/local_contrast.rs):
//   l_k = log(sum_j exp(a_k.b_j / t) + sum_{j != k} exp(a_k.a_j / t)) - a_k.b_k / t
//   L   = mean over images with K_b > 0 of (mean over k of l_k)
// where a, b are the region means of the q and p views (unit length when renormalize_means).
//
// Input element type: the two kernels that read f_q / f_p (means, scatter) exist for FP32 and, with
// the suffix _bf16, for BF16: one source, a template over the element reader (Fp32Embedding,
// Bf16Embedding). BF16 maps are packed 16-bit values in NCHW order, two per 32-bit word (element
// 2i in the low half of word i; an odd count's last word has an unused high half). A BF16 value
// is the upper half of an FP32, so widening on load is exact, and everything after the load is
// the FP32 arithmetic: on BF16-representable inputs both variants give the same bits. The
// gradients grad_q / grad_p are FP32 whatever the input type: the autograd and the optimiser
// work in FP32, and rounding a gradient that is scattered to a few sampled pixels to 8 bits
// would save nothing worth its error (the maps are zeroed and written in FP32 either way).
//
// Launches (all kernels take LocalContrastParams):
//   forward:  local_contrast_means[_bf16] (rows, 2) x 128, local_contrast_rows (row blocks) x 128,
//             local_contrast_loss_sum 1 x 256
//   backward: local_contrast_zero (blocks, 2) x 256, local_contrast_link (ceil(samples/256), 2)
//             x 256, local_contrast_mean_grads (row blocks) x 128, local_contrast_scatter[_bf16]
//             (ceil(samples/256), 2) x 256
// with row blocks = sum over images of ceil(K_b / 4). Limits: D <= 128 (MAX_D, registers and
// static shared memory of the row kernels); K and N are not limited (both are walked in chunks
// of 32).
//
// Determinism: every float sum runs in a fixed order (no float atomics, whose results would
// depend on scheduling; the price is one small linking kernel), so results are bitwise
// reproducible. Samples are drawn with replacement, so several may hit one pixel (within a region
// or, for arbitrary inputs, across regions). The scatter groups them without a sort: a linking
// pass threads every sample onto a list per (view, image, pixel) with an integer atomicExch
// (the list order varies between runs, its membership does not); the smallest sample number of
// each list then adds its members' contributions in increasing sample order and alone writes the
// pixel's gradient. The list heads cost one 32-bit word per pixel and view (1/D of a gradient
// map); finding the members in order costs O(r^2) for a pixel hit r times (r stays small when
// N samples are drawn from a region of many pixels).
#include "common.cuh"

struct LocalContrastParams {
    const void* f_q;              // B x D x HW, raw (normalize_pixels) or unit embeddings: FP32, or
    const void* f_p;              //   packed BF16 for the _bf16 kernels
    const uint32_t* region_off;   // [images + 1]: first row of each image
    const uint32_t* sample_off;   // [images + 1]: first sample of each image (per view)
    const uint32_t* per_region;   // [images]: samples per region
    const uint32_t* row_blocks;   // [blocks][2]: image and first region (within it) of each row block
    const uint32_t* idx;          // [2][samples]: pixel indices (y * W + x) of the q, then p view
    uint32_t* heads;              // [2][images][hw]: backward scratch, first sample linked per pixel
    uint32_t* next;               // [2][samples]: backward scratch, the next sample on the same pixel
    float* means;                 // [2][rows][d]: region means of q, then p
    float* mean_norms;            // [2][rows]: their lengths before renormalisation
    float* lse;                   // [rows]: log-sum-exp of each row's 2K - 1 logits
    float* row_loss;              // [rows]
    float* loss;                  // [1]
    const float* grad_loss;       // [1]: dL_total / dL, read on the device
    float* mean_grads;            // [2][rows][d]: gradients of the region means
    float* grad_q;                // B x D x HW
    float* grad_p;
    int images;
    int d;
    int hw;
    int rows;
    int samples;
    int normalize_pixels;         // 1: normalise each sampled pixel embedding (the fused path)
    int renormalize_means;        // 1: rescale each region mean to unit length
    float inv_temperature;
    float inv_counted;            // 1 / max(images with regions, 1)
    int reserved;
};
static_assert(sizeof(LocalContrastParams) == 184, "LocalContrastParams must match its Rust mirror");
static_assert(offsetof(LocalContrastParams, images) == 144, "LocalContrastParams must match its Rust mirror");
static_assert(offsetof(LocalContrastParams, inv_temperature) == 172, "LocalContrastParams must match its Rust mirror");

namespace local_contrast {

// Channels a region mean may have: the row kernels keep D / 32 values per lane in registers and
// each warp's own pair of means in static shared memory.
constexpr int MAX_D = 128;
constexpr int LANE_SLOTS = MAX_D / lrc::WARP;
// torch.nn.functional.normalize's clamp of the norm, as ops::normalize.
constexpr float EPS = 1e-12f;
constexpr int ROW_WARPS = 4;
constexpr int ROW_THREADS = ROW_WARPS * lrc::WARP;
constexpr int TILE_STRIDE = MAX_D + 1;  // floats per staged region; the kernels use d | 1 (odd)
constexpr int MEAN_THREADS = 128;
static_assert(MEAN_THREADS >= MAX_D, "one thread per channel of a region mean");
constexpr int MEAN_CHUNK = 32;  // samples staged in shared memory at once
constexpr int SCATTER_THREADS = 256;
constexpr uint32_t END = 0xffffffffu;  // the end of a pixel's list of samples
constexpr int SUM_THREADS = 256;
constexpr int ZERO_THREADS = 256;

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = lrc::WARP / 2; offset > 0; offset /= 2) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    return v;
}

// The image that item x belongs to, given the prefix table off[0..images] (off[images] = total):
// the last b with off[b] <= x, which skips images that hold no items.
__device__ __forceinline__ int image_of(const uint32_t* off, int images, uint32_t x) {
    int lo = 0;
    int hi = images - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (off[mid] <= x) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return lo;
}

// Adds logit x to a running (max, scaled sum) pair.
__device__ __forceinline__ void online_add(float& m, float& s, float x) {
    if (x > m) {
        s = s * expf(m - x) + 1.0f;
        m = x;
    } else {
        s += expf(x - m);
    }
}

// The row block's image: its q means at `a`, p means at `b` (k_count regions of d each), the
// global number of its first region, and this warp's region within the image (`self`; past
// k_count for the padding warps of an image's last block).
struct RowBlock {
    const float* a;
    const float* b;
    int first_row;
    int k_count;
    int self;
};

__device__ __forceinline__ RowBlock row_block(const LocalContrastParams& p, int warp) {
    const int img = static_cast<int>(p.row_blocks[2 * blockIdx.x]);
    RowBlock r;
    r.first_row = static_cast<int>(p.region_off[img]);
    r.k_count = static_cast<int>(p.region_off[img + 1]) - r.first_row;
    r.self = static_cast<int>(p.row_blocks[2 * blockIdx.x + 1]) + warp;
    r.a = p.means + static_cast<size_t>(r.first_row) * p.d;
    r.b = p.means + (static_cast<size_t>(p.rows) + r.first_row) * p.d;
    return r;
}

// Copies regions k0 .. k0 + chunk of both views' means into the block's tiles, `stride` floats
// per region: consecutive threads read consecutive floats.
__device__ __forceinline__ void stage_chunk(const RowBlock& r, int d, int stride, int k0, int chunk, float* tile_a,
                                            float* tile_b) {
    const float* a = r.a + static_cast<size_t>(k0) * d;
    const float* b = r.b + static_cast<size_t>(k0) * d;
    for (int i = threadIdx.x; i < chunk * d; i += blockDim.x) {
        const int j = i / d;
        const int e = i - j * d;
        tile_a[j * stride + e] = __ldg(a + i);
        tile_b[j * stride + e] = __ldg(b + i);
    }
}

// The readers of an embedding map, element i of the NCHW map at `base` as an FP32 value.
struct Fp32Embedding {
    const float* base;
    __device__ __forceinline__ explicit Fp32Embedding(const void* map, size_t offset)
        : base(static_cast<const float*>(map) + offset) {}
    __device__ __forceinline__ float operator[](size_t i) const { return __ldg(base + i); }
};

// BF16 is the upper half of an FP32: widening is a shift, exact. A plain 16-bit load: with
// __ldg (16- or 32-bit) ptxas 13.0 holds the scatter kernel to 32 registers for sm_80 and spills.
struct Bf16Embedding {
    const uint16_t* base;
    __device__ __forceinline__ explicit Bf16Embedding(const void* map, size_t offset)
        : base(static_cast<const uint16_t*>(map) + offset) {}
    __device__ __forceinline__ float operator[](size_t i) const {
        return __uint_as_float(static_cast<uint32_t>(base[i]) << 16);
    }
};

// The list of samples on one pixel: `heads` for the pixel's view and image, `next` for the view.
struct PixelList {
    uint32_t first;
    const uint32_t* next;
};

// The smallest member of `list` above `after` (END if none); END as `after` asks for the smallest.
__device__ __forceinline__ uint32_t next_member(const PixelList& list, uint32_t after) {
    uint32_t best = END;
    for (uint32_t t = list.first; t != END; t = list.next[t]) {
        if ((after == END || t > after) && t < best) {
            best = t;
        }
    }
    return best;
}

}  // namespace local_contrast

using namespace local_contrast;

namespace local_contrast {

// Grid (rows, 2 views), 128 threads: the mean of one region's samples in one view. Samples are
// staged 32 at a time as a [sample][channel] tile (odd row stride: no bank conflicts when one
// thread per sample sums its squares); thread e then adds channel e over the samples in order.
template <typename Embedding>
__device__ __forceinline__ void region_means(const LocalContrastParams& p) {
    __shared__ float tile[MEAN_CHUNK * (MAX_D + 1)];
    __shared__ float inv_norm[MEAN_CHUNK];
    __shared__ float mean_norm;
    const int row = blockIdx.x;
    const int view = blockIdx.y;
    const int d = p.d;
    const int stride = d | 1;
    const int img = image_of(p.region_off, p.images, static_cast<uint32_t>(row));
    const int region = row - static_cast<int>(p.region_off[img]);
    const int n = static_cast<int>(p.per_region[img]);
    const uint32_t* idx = p.idx + static_cast<size_t>(view) * p.samples + p.sample_off[img] +
                          static_cast<size_t>(region) * n;
    const Embedding f(view == 0 ? p.f_q : p.f_p, static_cast<size_t>(img) * d * p.hw);
    const int e = threadIdx.x;
    float acc = 0.0f;
    for (int j0 = 0; j0 < n; j0 += MEAN_CHUNK) {
        const int chunk = min(MEAN_CHUNK, n - j0);
        // Sample-fastest, so that a warp reads one channel plane at pixels of one region.
        for (int i = threadIdx.x; i < chunk * d; i += blockDim.x) {
            const int j = i % chunk;
            const int c = i / chunk;
            tile[j * stride + c] = f[static_cast<size_t>(c) * p.hw + idx[j0 + j]];
        }
        __syncthreads();
        if (static_cast<int>(threadIdx.x) < chunk) {
            float inv = 1.0f;
            if (p.normalize_pixels) {
                float sq = 0.0f;
                for (int c = 0; c < d; ++c) {
                    const float x = tile[threadIdx.x * stride + c];
                    sq += x * x;
                }
                inv = 1.0f / fmaxf(sqrtf(sq), EPS);
            }
            inv_norm[threadIdx.x] = inv;
        }
        __syncthreads();
        if (e < d) {
            for (int j = 0; j < chunk; ++j) {
                acc += tile[j * stride + e] * inv_norm[j];
            }
        }
        __syncthreads();
    }
    const float mean = acc / static_cast<float>(n);  // 0 for threads past the channels
    const float sq = lrc::block_sum(mean * mean);
    if (threadIdx.x == 0) {
        mean_norm = fmaxf(sqrtf(sq), EPS);
    }
    __syncthreads();
    const float norm = mean_norm;
    if (e < d) {
        p.means[(static_cast<size_t>(view) * p.rows + row) * d + e] = p.renormalize_means ? mean / norm : mean;
    }
    if (threadIdx.x == 0) {
        p.mean_norms[static_cast<size_t>(view) * p.rows + row] = norm;
    }
}

}  // namespace local_contrast

LRC_KERNEL(local_contrast_means, LocalContrastParams, MEAN_THREADS) { region_means<Fp32Embedding>(p); }
LRC_KERNEL(local_contrast_means_bf16, LocalContrastParams, MEAN_THREADS) { region_means<Bf16Embedding>(p); }

// Grid (row blocks), 128 threads, one warp per region k of the block's image. The block stages
// the image's means 32 regions at a time in shared memory; lane j of each warp takes region
// k0 + j of the chunk and keeps a running max-shifted sum of exp over its logits a_k.b_j / t and
// (j != k) a_k.a_j / t; the warp then merges the 32 partial sums. Writes the row's log-sum-exp
// (kept for the backward pass) and its loss.
LRC_KERNEL(local_contrast_rows, LocalContrastParams, ROW_THREADS) {
    __shared__ float tile_a[lrc::WARP * TILE_STRIDE];
    __shared__ float tile_b[lrc::WARP * TILE_STRIDE];
    __shared__ float own[ROW_WARPS][2][MAX_D];
    const int warp = threadIdx.x / lrc::WARP;
    const int lane = threadIdx.x % lrc::WARP;
    const RowBlock r = row_block(p, warp);
    const bool active = r.self < r.k_count;  // the same for the whole warp
    const int d = p.d;
    const int stride = d | 1;  // odd: lane j reading float e of region j hits bank (j * stride + e) % 32
    float* a_own = own[warp][0];
    float* b_own = own[warp][1];
    if (active) {
        for (int e = lane; e < d; e += lrc::WARP) {
            a_own[e] = r.a[static_cast<size_t>(r.self) * d + e];
            b_own[e] = r.b[static_cast<size_t>(r.self) * d + e];
        }
    }
    float m = __uint_as_float(0xff800000u);  // -inf
    float s = 0.0f;
    for (int k0 = 0; k0 < r.k_count; k0 += lrc::WARP) {
        const int chunk = min(lrc::WARP, r.k_count - k0);
        __syncthreads();  // the previous chunk is used up (and a_own, b_own are written)
        stage_chunk(r, d, stride, k0, chunk, tile_a, tile_b);
        __syncthreads();
        if (active && lane < chunk) {
            const float* ak = tile_a + lane * stride;
            const float* bk = tile_b + lane * stride;
            float qp = 0.0f;
            float qq = 0.0f;
            for (int e = 0; e < d; ++e) {
                const float x = a_own[e];
                qp += x * bk[e];
                qq += x * ak[e];
            }
            online_add(m, s, qp * p.inv_temperature);
            if (k0 + lane != r.self) {
                online_add(m, s, qq * p.inv_temperature);
            }
        }
    }
    if (!active) {
        return;  // the whole warp, after the last barrier
    }
    // Lanes without logits hold (-inf, 0) and add nothing; lane self always has a_k.b_k.
    const float m_all = warp_max(m);
    const float s_all = lrc::warp_sum(s * expf(m - m_all));
    const float lse = m_all + logf(s_all);
    float pos = 0.0f;
    for (int e = lane; e < d; e += lrc::WARP) {
        pos += a_own[e] * b_own[e];
    }
    pos = lrc::warp_sum(pos) * p.inv_temperature;
    if (lane == 0) {
        const int row = r.first_row + r.self;
        p.lse[row] = lse;
        p.row_loss[row] = lse - pos;
    }
}

// Grid 1, 256 threads: the loss, the mean over images with regions of each image's mean row loss,
// summed in a fixed order.
LRC_KERNEL(local_contrast_loss_sum, LocalContrastParams, SUM_THREADS) {
    float total = 0.0f;  // meaningful in thread 0
    for (int img = 0; img < p.images; ++img) {
        const int first = static_cast<int>(p.region_off[img]);
        const int k_count = static_cast<int>(p.region_off[img + 1]) - first;
        if (k_count == 0) {
            continue;  // the same for every thread
        }
        float s = 0.0f;
        for (int i = threadIdx.x; i < k_count; i += blockDim.x) {
            s += p.row_loss[first + i];
        }
        s = lrc::block_sum(s);
        if (threadIdx.x == 0) {
            total += s / static_cast<float>(k_count);
        }
        __syncthreads();  // block_sum's slots are written again for the next image
    }
    if (threadIdx.x == 0) {
        p.loss[0] = total * p.inv_counted;
    }
}

// Grid (blocks, 2), 256 threads: zeros the gradient map of view blockIdx.y (the scatter then
// writes the sampled pixels) and empties its pixel lists.
LRC_KERNEL(local_contrast_zero, LocalContrastParams, ZERO_THREADS) {
    const int view = blockIdx.y;
    float* out = view == 0 ? p.grad_q : p.grad_p;
    const size_t len = static_cast<size_t>(p.images) * p.d * p.hw;
    const size_t step = static_cast<size_t>(gridDim.x) * blockDim.x;
    const size_t first = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    for (size_t i = first; i < len; i += step) {
        out[i] = 0.0f;
    }
    uint32_t* heads = p.heads + static_cast<size_t>(view) * p.images * p.hw;
    const size_t pixels = static_cast<size_t>(p.images) * p.hw;
    for (size_t i = first; i < pixels; i += step) {
        heads[i] = END;
    }
}

// Grid (ceil(samples / 256), 2 views), 256 threads, one thread per sample: pushes the sample onto
// its pixel's list. Must run after local_contrast_zero.
LRC_KERNEL(local_contrast_link, LocalContrastParams, SCATTER_THREADS) {
    const int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= p.samples) {
        return;
    }
    const int view = blockIdx.y;
    const int img = image_of(p.sample_off, p.images, static_cast<uint32_t>(s));
    const uint32_t pixel = p.idx[static_cast<size_t>(view) * p.samples + s];
    uint32_t* head = p.heads + (static_cast<size_t>(view) * p.images + img) * p.hw + pixel;
    p.next[static_cast<size_t>(view) * p.samples + s] = atomicExch(head, static_cast<uint32_t>(s));
}

// Grid (row blocks), 128 threads, one warp per region k of the block's image: the gradients of
// the region means a_k and b_k. With w_qp[i][j] = exp(a_i.b_j / t - lse_i),
// w_qq[i][j] = exp(a_i.a_j / t - lse_i) (0 on the diagonal) and c = dL * inv_counted / (K t):
//   dL/da_k = c * sum_j [(w_qp[k][j] - [j == k]) b_j + (w_qq[k][j] + w_qq[j][k]) a_j]
//   dL/db_k = c * sum_j (w_qp[j][k] - [j == k]) a_j
// The block stages the image's means 32 regions at a time; lane j first computes the three
// coefficients of region k0 + j (one dot product each, the softmax weights recomputed from the
// saved log-sum-exps) into the warp's shared slots; the warp then adds the chunk's regions with
// lanes over channels, reading the coefficients as broadcasts.
LRC_KERNEL(local_contrast_mean_grads, LocalContrastParams, ROW_THREADS) {
    __shared__ float tile_a[lrc::WARP * TILE_STRIDE];
    __shared__ float tile_b[lrc::WARP * TILE_STRIDE];
    __shared__ float own[ROW_WARPS][2][MAX_D];
    __shared__ float coefs[ROW_WARPS][lrc::WARP][4];
    const int warp = threadIdx.x / lrc::WARP;
    const int lane = threadIdx.x % lrc::WARP;
    const RowBlock r = row_block(p, warp);
    const bool active = r.self < r.k_count;  // the same for the whole warp
    const int d = p.d;
    const int stride = d | 1;
    float* a_own = own[warp][0];
    float* b_own = own[warp][1];
    if (active) {
        for (int e = lane; e < d; e += lrc::WARP) {
            a_own[e] = r.a[static_cast<size_t>(r.self) * d + e];
            b_own[e] = r.b[static_cast<size_t>(r.self) * d + e];
        }
    }
    const int row = r.first_row + r.self;
    const float lse_own = active ? p.lse[row] : 0.0f;
    const float inv_t = p.inv_temperature;
    float acc_a[LANE_SLOTS] = {};
    float acc_b[LANE_SLOTS] = {};
    for (int k0 = 0; k0 < r.k_count; k0 += lrc::WARP) {
        const int chunk = min(lrc::WARP, r.k_count - k0);
        __syncthreads();  // the previous chunk and its coefficients are used up
        stage_chunk(r, d, stride, k0, chunk, tile_a, tile_b);
        __syncthreads();
        if (!active) {
            continue;  // the whole warp; it still takes part in the barriers
        }
        const int k = k0 + lane;
        float coef_b = 0.0f;  // of b_k in dL/da_own
        float coef_a = 0.0f;  // of a_k in dL/da_own
        float coef_p = 0.0f;  // of a_k in dL/db_own
        if (lane < chunk) {
            const float* ak = tile_a + lane * stride;
            const float* bk = tile_b + lane * stride;
            float own_bk = 0.0f;
            float own_ak = 0.0f;
            float ak_own = 0.0f;
            for (int e = 0; e < d; ++e) {
                const float x = ak[e];
                own_bk += a_own[e] * bk[e];
                own_ak += a_own[e] * x;
                ak_own += x * b_own[e];
            }
            const float lse_k = p.lse[r.first_row + k];
            const float diagonal = k == r.self ? 1.0f : 0.0f;
            coef_b = expf(own_bk * inv_t - lse_own) - diagonal;
            coef_a = k == r.self ? 0.0f : expf(own_ak * inv_t - lse_own) + expf(own_ak * inv_t - lse_k);
            coef_p = expf(ak_own * inv_t - lse_k) - diagonal;
        }
        coefs[warp][lane][0] = coef_b;
        coefs[warp][lane][1] = coef_a;
        coefs[warp][lane][2] = coef_p;
        __syncwarp();
        for (int j = 0; j < chunk; ++j) {
            const float cb = coefs[warp][j][0];
            const float ca = coefs[warp][j][1];
            const float cp = coefs[warp][j][2];
#pragma unroll
            for (int slot = 0; slot < LANE_SLOTS; ++slot) {
                const int e = lane + slot * lrc::WARP;
                if (e < d) {
                    const float x = tile_a[j * stride + e];
                    acc_a[slot] += cb * tile_b[j * stride + e] + ca * x;
                    acc_b[slot] += cp * x;
                }
            }
        }
    }
    if (!active) {
        return;  // the whole warp, after the last barrier
    }
    // The upstream gradient stays on the device: no host round trip in a training step.
    const float scale = __ldg(p.grad_loss) * p.inv_counted / static_cast<float>(r.k_count) * inv_t;
#pragma unroll
    for (int slot = 0; slot < LANE_SLOTS; ++slot) {
        acc_a[slot] *= scale;
        acc_b[slot] *= scale;
    }
    if (p.renormalize_means) {
        // Backward of u = m / |m| (own holds u): dm = (du - u (u . du)) / |m|.
        float dot_a = 0.0f;
        float dot_b = 0.0f;
#pragma unroll
        for (int slot = 0; slot < LANE_SLOTS; ++slot) {
            const int e = lane + slot * lrc::WARP;
            if (e < d) {
                dot_a += a_own[e] * acc_a[slot];
                dot_b += b_own[e] * acc_b[slot];
            }
        }
        dot_a = lrc::warp_sum(dot_a);
        dot_b = lrc::warp_sum(dot_b);
        const float norm_a = p.mean_norms[row];
        const float norm_b = p.mean_norms[static_cast<size_t>(p.rows) + row];
#pragma unroll
        for (int slot = 0; slot < LANE_SLOTS; ++slot) {
            const int e = lane + slot * lrc::WARP;
            if (e < d) {
                acc_a[slot] = (acc_a[slot] - a_own[e] * dot_a) / norm_a;
                acc_b[slot] = (acc_b[slot] - b_own[e] * dot_b) / norm_b;
            }
        }
    }
#pragma unroll
    for (int slot = 0; slot < LANE_SLOTS; ++slot) {
        const int e = lane + slot * lrc::WARP;
        if (e < d) {
            p.mean_grads[static_cast<size_t>(row) * d + e] = acc_a[slot];
            p.mean_grads[(static_cast<size_t>(p.rows) + row) * d + e] = acc_b[slot];
        }
    }
}

namespace local_contrast {

// Grid (ceil(samples / 256), 2 views), 256 threads, one thread per sample: the smallest sample
// of each pixel's list adds the region-mean gradients of the list's samples, in increasing sample
// order, into the pixel's gradient (its own: no other thread writes that pixel), divides by the
// samples per region, and applies the backward of the on-the-fly normalisation when it is on:
// dx = (v - y (y . v)) / |x| with y = x / |x|, or v / eps where the norm was clamped (as
// ops::normalize). Must run after local_contrast_link and local_contrast_mean_grads.
template <typename Embedding>
__device__ __forceinline__ void scatter(const LocalContrastParams& p) {
    const int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= p.samples) {
        return;
    }
    const int view = blockIdx.y;
    const int img = image_of(p.sample_off, p.images, static_cast<uint32_t>(s));
    const uint32_t pixel = p.idx[static_cast<size_t>(view) * p.samples + s];
    PixelList list;
    list.first = p.heads[(static_cast<size_t>(view) * p.images + img) * p.hw + pixel];
    list.next = p.next + static_cast<size_t>(view) * p.samples;
    if (next_member(list, END) != static_cast<uint32_t>(s)) {
        return;  // another sample of this pixel writes it
    }
    const uint32_t first_sample = p.sample_off[img];
    const int n = static_cast<int>(p.per_region[img]);
    const int first_row = static_cast<int>(p.region_off[img]);
    const int d = p.d;
    const float* grads = p.mean_grads + static_cast<size_t>(view) * p.rows * d;
    float* out = (view == 0 ? p.grad_q : p.grad_p) + static_cast<size_t>(img) * d * p.hw + pixel;
    // out starts at 0 (local_contrast_zero) and belongs to this thread alone.
    for (uint32_t t = static_cast<uint32_t>(s); t != END; t = next_member(list, t)) {
        const float* g = grads + static_cast<size_t>(first_row + static_cast<int>(t - first_sample) / n) * d;
        for (int e = 0; e < d; ++e) {
            out[static_cast<size_t>(e) * p.hw] += g[e];
        }
    }
    const float inv_n = 1.0f / static_cast<float>(n);
    if (!p.normalize_pixels) {
        for (int e = 0; e < d; ++e) {
            out[static_cast<size_t>(e) * p.hw] *= inv_n;
        }
        return;
    }
    const Embedding x(view == 0 ? p.f_q : p.f_p, static_cast<size_t>(img) * d * p.hw + pixel);
    float sq = 0.0f;
    float dot = 0.0f;
    for (int e = 0; e < d; ++e) {
        const float xe = x[static_cast<size_t>(e) * p.hw];
        sq += xe * xe;
        dot += xe * (out[static_cast<size_t>(e) * p.hw] * inv_n);
    }
    const float norm = sqrtf(sq);
    if (norm > EPS) {
        const float inv = 1.0f / norm;
        const float c = dot * inv * inv;  // (y . v) / |x|
        for (int e = 0; e < d; ++e) {
            const float v = out[static_cast<size_t>(e) * p.hw] * inv_n;
            out[static_cast<size_t>(e) * p.hw] = (v - x[static_cast<size_t>(e) * p.hw] * c) * inv;
        }
    } else {
        for (int e = 0; e < d; ++e) {
            out[static_cast<size_t>(e) * p.hw] = out[static_cast<size_t>(e) * p.hw] * inv_n / EPS;
        }
    }
}

}  // namespace local_contrast

LRC_KERNEL(local_contrast_scatter, LocalContrastParams, SCATTER_THREADS) { scatter<Fp32Embedding>(p); }
LRC_KERNEL(local_contrast_scatter_bf16, LocalContrastParams, SCATTER_THREADS) { scatter<Bf16Embedding>(p); }
