// Elastic deformation of a batch of slices (n x h x w), the GPU twin of src/augment/elastic.rs.
//
// The random displacement noise comes from the host, drawn from the same generator as the CPU
// draws it; these kernels smooth it and warp with it. Every float operation is the CPU's, in the
// CPU's order and rounded the same way (the _rn intrinsics keep nvcc from fusing a multiply and
// an add), so the fields and the warped images equal the CPU's bit for bit.
//   elastic_smooth_columns  planes (the dy and dx noise of every image) along axis 0
//   elastic_smooth_rows     along axis 1, then times alpha
//   elastic_warp            bilinear image (edge pixels outside), nearest-neighbour labels (0 outside)

#include "common.cuh"

// out = taps (*) in along one axis with reflect boundaries, times `scale` (rows pass only).
struct ElasticSmoothParams {
    const float* in;    // planes x h x w
    float* out;         // planes x h x w
    const float* taps;  // 2 * radius + 1 normalised taps
    int planes;
    int h;
    int w;
    int radius;
    float scale;
    int reserved;
};
static_assert(sizeof(ElasticSmoothParams) == 48, "ElasticSmoothParams must match its Rust mirror");
static_assert(offsetof(ElasticSmoothParams, planes) == 24, "ElasticSmoothParams must match its Rust mirror");

// Output pixel p of image i samples the input at (y + dy, x + dx), dy = field[i][0][p],
// dx = field[i][1][p].
struct ElasticWarpParams {
    const float* image;      // n x h x w
    const unsigned* labels;  // n x h x w, or null
    const float* field;      // n x 2 x h x w
    float* out_image;        // n x h x w
    unsigned* out_labels;    // n x h x w when labels is not null
    int n;
    int h;
    int w;
    int reserved;
};
static_assert(sizeof(ElasticWarpParams) == 56, "ElasticWarpParams must match its Rust mirror");
static_assert(offsetof(ElasticWarpParams, n) == 40, "ElasticWarpParams must match its Rust mirror");

namespace elastic {

constexpr int THREADS = 256;

// Reflect extension (d c b a | a b c d | d c b a), as the CPU's `reflect`.
__device__ __forceinline__ int reflect(int i, int n) {
    const int period = 2 * n;
    int m = i % period;
    if (m < 0) m += period;
    return m < n ? m : period - 1 - m;
}

// k[r] * centre + sum_{j=1..r} k[r-j] * (before(j) + after(j)): the CPU's symmetric_taps.
template <class At>
__device__ __forceinline__ float symmetric_taps(const float* taps, int r, At at) {
    float acc = __fmul_rn(taps[r], at(0));
    for (int j = 1; j <= r; ++j) {
        acc = __fadd_rn(acc, __fmul_rn(taps[r - j], __fadd_rn(at(-j), at(j))));
    }
    return acc;
}

// Rust's f32::clamp for finite bounds (NaN stays NaN).
__device__ __forceinline__ float clamp(float v, float lo, float hi) {
    if (v < lo) v = lo;
    if (v > hi) v = hi;
    return v;
}

}  // namespace elastic

// Grid (ceil(h*w / 256), planes), 256 threads.
LRC_KERNEL(elastic_smooth_columns, ElasticSmoothParams, elastic::THREADS) {
    const int plane = p.h * p.w;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= plane) return;
    const int y = i / p.w, x = i % p.w;
    const float* in = p.in + static_cast<size_t>(blockIdx.y) * plane;
    const float acc = elastic::symmetric_taps(
        p.taps, p.radius, [&](int j) { return in[elastic::reflect(y + j, p.h) * p.w + x]; });
    p.out[static_cast<size_t>(blockIdx.y) * plane + i] = acc;
}

// Grid (ceil(h*w / 256), planes), 256 threads.
LRC_KERNEL(elastic_smooth_rows, ElasticSmoothParams, elastic::THREADS) {
    const int plane = p.h * p.w;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= plane) return;
    const int y = i / p.w, x = i % p.w;
    const float* row = p.in + static_cast<size_t>(blockIdx.y) * plane + static_cast<size_t>(y) * p.w;
    const float acc =
        elastic::symmetric_taps(p.taps, p.radius, [&](int j) { return row[elastic::reflect(x + j, p.w)]; });
    p.out[static_cast<size_t>(blockIdx.y) * plane + i] = __fmul_rn(acc, p.scale);
}

// Grid (ceil(h*w / 256), n), 256 threads.
LRC_KERNEL(elastic_warp, ElasticWarpParams, elastic::THREADS) {
    const int plane = p.h * p.w;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= plane) return;
    const size_t img = static_cast<size_t>(blockIdx.y) * plane;
    const int y = i / p.w, x = i % p.w;
    const float dy = p.field[2 * img + i];
    const float dx = p.field[2 * img + plane + i];
    const float* src = p.image + img;

    const float sy = elastic::clamp(__fadd_rn(static_cast<float>(y), dy), 0.0f, static_cast<float>(p.h - 1));
    const float sx = elastic::clamp(__fadd_rn(static_cast<float>(x), dx), 0.0f, static_cast<float>(p.w - 1));
    // Truncation is floor for these non-negative values (a NaN gives 0, as Rust's cast does).
    const int y0 = sy == sy ? static_cast<int>(sy) : 0;
    const int x0 = sx == sx ? static_cast<int>(sx) : 0;
    const int y1 = min(y0 + 1, p.h - 1), x1 = min(x0 + 1, p.w - 1);
    const float fy = __fsub_rn(sy, static_cast<float>(y0));
    const float fx = __fsub_rn(sx, static_cast<float>(x0));
    const float gx = __fsub_rn(1.0f, fx);
    const float top = __fadd_rn(__fmul_rn(gx, src[y0 * p.w + x0]), __fmul_rn(fx, src[y0 * p.w + x1]));
    const float bottom = __fadd_rn(__fmul_rn(gx, src[y1 * p.w + x0]), __fmul_rn(fx, src[y1 * p.w + x1]));
    p.out_image[img + i] = __fadd_rn(__fmul_rn(__fsub_rn(1.0f, fy), top), __fmul_rn(fy, bottom));

    if (p.labels != nullptr) {
        // Nearest neighbour, rounding half up: inside iff 0 <= floor(s) < n.
        const float ny = __fadd_rn(__fadd_rn(static_cast<float>(y), dy), 0.5f);
        const float nx = __fadd_rn(__fadd_rn(static_cast<float>(x), dx), 0.5f);
        unsigned label = 0;
        if (ny >= 0.0f && nx >= 0.0f && ny < static_cast<float>(p.h) && nx < static_cast<float>(p.w)) {
            label = p.labels[img + static_cast<int>(ny) * p.w + static_cast<int>(nx)];
        }
        p.out_labels[img + i] = label;
    }
}
