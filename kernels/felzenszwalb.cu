// Felzenszwalb-Huttenlocher segmentation of a batch of slices (n x h x w f32), close to the exact
// CPU version (src/superpixel/felzenszwalb.rs, label for label scikit-image's).
//
// The steps, one slice per grid row (blockIdx.y) or per block where a step is sequential in spirit:
//   fz_smooth_columns, fz_smooth_rows  scipy's reflect-mode Gaussian in float64, with the CPU's
//                        taps and its exact order of operations (no fused multiply-adds), so the
//                        smoothed image is bit for bit the CPU's;
//   fz_edge_keys         the 8-connected edges in the CPU's order (four blocks, raster order),
//                        keyed by their float64 weight |difference|;
//   radix_sort.cu        a stable segmented sort by the low, then the high half of the keys:
//                        edges by weight, ties by index, exactly the CPU's order;
//   fz_init              one segment per pixel;
//   fz_merge             the merging pass (below), one block per slice;
//   fz_min_size          the min_size pass, exact, one block per slice;
//   fz_label             labels 0..K-1 in the raster order of each segment's first pixel.
//
// The merging pass. The sequential algorithm walks the sorted edges and merges the segments
// (roots) a and b of edge e when w_e < min(thr_a, thr_b), thr = float32(int + k / size), int the
// weight of the segment's last merge. Weights only grow along the walk, so a segment with
// thr <= w can never merge again, and a merge lifts thr above the current weight by k / size. Every decision depends on all earlier
// ones touching the same segments, and a few large segments (air, a big organ) touch a long run
// of edges: processing exactly in parallel takes thousands of dependent rounds per slice.
//
// Here the sorted edges are cut into windows of `window` consecutive edges (about edges / 768).
// Within a window every decision is made in parallel from the segments as they were when the
// window began:
//   - a segment that has not merged earlier in the window is active at edge e iff its
//     window-start threshold exceeds w_e (exactly as in the sequential algorithm);
//   - a segment that has merged earlier in the window, last at edge L (the latest merge before e
//     touching its window-start root), is taken as active iff w_e < w_L + k / (s_a + s_b), the
//     threshold right after L computed with the window-start sizes of L's two segments;
//   - an edge merges iff both its segments are active.
// A decision depends only on decisions of earlier edges of the window, so a Jacobi iteration
// (all decisions again from the previous round's merges) reaches the one consistent set of
// decisions after at most as many rounds as the longest chain of such dependencies: 2 to 3 on
// average, a dozen at most on CT slices (capped at 64, where the last round stands).
// Then the window's merges are applied (union-find with atomics; the root of a union is the
// smaller pixel index, as on the CPU), sizes added, and each merged segment gets
// thr = float32(max merged weight + k / size). What differs from the sequential algorithm is only
// the state used for segments that merge more than once within a window: the latest merge stands
// for the chain of merges before it, and its two segments' window-start sizes for the size at e.
// A segment that grew through several merges is thus seen a little smaller (its threshold a
// little higher) than it is, for at most `window` edges, a weight span that is tiny where edges
// are dense. With a window of one edge the algorithm is the sequential one. In a CPU model of
// these kernels (tests/superpixel_support, which the emulated kernels match label for label) and
// 768 windows, the labels agree with the exact ones to an adjusted Rand index above 0.99 on every
// CT-like slice of 256 and 512 pixels tried (mean 0.999), region counts within a few per cent,
// and as closely on the scikit-image fixtures (tests/superpixel_gpu_model.rs).
//
// Within a window the latest merge touching each segment before each edge is found by sorting
// the window's (root, position) incidences in shared memory (bitonic) and a segmented max-scan.
//
// The min_size pass is exact given the merging pass's result: an edge is decided exactly when it
// is the first remaining edge of each of its segments that is still small (smaller than min_size):
// a segment that is already large never becomes small again, so merging small segments into it
// commutes with its other decisions. Rounds of reservations (atomicMin of the edge position on
// each small root) commit those edges in parallel; on CT slices a handful of rounds suffice.
//
// Determinism: decisions depend only on edge positions in the sorted order and on integer sizes;
// unions link the larger root under the smaller, so the segments' roots are their first pixels
// and the labels do not depend on the order threads run in. The only float reductions are maxima.

#include "common.cuh"

// Gaussian smoothing along one axis: out = taps (*) in, reflect boundaries, in float64.
struct FzSmoothParams {
    const float* in_f32;   // columns pass: the images (n x h x w)
    const double* in_f64;  // rows pass: the column-smoothed images
    const double* taps;    // 2 * radius + 1 normalised taps
    double* out;           // n x h x w
    int n;
    int h;
    int w;
    int radius;
};
static_assert(sizeof(FzSmoothParams) == 48, "FzSmoothParams must match its Rust mirror");
static_assert(offsetof(FzSmoothParams, n) == 32, "FzSmoothParams must match its Rust mirror");

// Sort keys of the edges of each slice: one 32-bit half of the float64 weight's order key.
struct FzEdgeParams {
    const double* smoothed;  // n x h x w
    unsigned* keys;          // n x edges
    unsigned* vals;          // n x edges: edge indices (written by the low pass, read by the high)
    int n;
    int h;
    int w;
    int edges;
    int high;  // 0: key = low half of edge e's order key, value = e; 1: key = high half of vals[i]
    int reserved;
};
static_assert(sizeof(FzEdgeParams) == 48, "FzEdgeParams must match its Rust mirror");
static_assert(offsetof(FzEdgeParams, high) == 40, "FzEdgeParams must match its Rust mirror");

// The union-find state of every slice, and the passes that work on it.
struct FzMergeParams {
    const double* smoothed;         // n x h x w
    const unsigned* order;          // n x edges: edge indices sorted by weight
    unsigned* parent;               // n x h x w
    unsigned* size;                 // n x h x w (valid at roots)
    float* threshold;               // n x h x w (valid at roots)
    unsigned long long* merged_max; // n x h x w: 0, or 1 + bits of the largest weight merged in a window
    unsigned* reserve;              // n x h x w: min_size pass reservations, all ~0 between rounds
    unsigned* claim;                // n x h x w: min_size pass size-update claims, all 0 between rounds
    unsigned* list;                 // n x edges: min_size pass, positions still undecided
    unsigned* kept;                 // n x 3 x edges: min_size pass, a round's candidate edges
    unsigned* labels;               // n x h x w: fz_label output
    unsigned* counts;               // n: fz_label output, segments per slice
    double k;                       // scale / 255
    float initial_threshold;        // float32(0 + k / 1)
    int n;
    int h;
    int w;
    int edges;
    int window;          // fz_merge: edges per window, at most MAX_WINDOW
    int max_iterations;  // fz_merge: fixed-point rounds per window at most
    int min_size;        // fz_min_size
};
static_assert(sizeof(FzMergeParams) == 136, "FzMergeParams must match its Rust mirror");
static_assert(offsetof(FzMergeParams, k) == 96, "FzMergeParams must match its Rust mirror");
static_assert(offsetof(FzMergeParams, min_size) == 132, "FzMergeParams must match its Rust mirror");

namespace fz {

constexpr int THREADS = 256;
constexpr int BLOCK_THREADS = 1024;  // the per-slice kernels
constexpr int POS_BITS = 11;         // window positions in an incidence key
constexpr int MAX_WINDOW = 1 << POS_BITS;
constexpr unsigned POS_MASK = MAX_WINDOW - 1;
constexpr unsigned NONE = 0xffffffffu;
constexpr unsigned COMMITTED = 0x80000000u;
constexpr unsigned SMALL = 0x80000000u;

// scipy's "reflect" extension (d c b a | a b c d | d c b a), repeated as often as needed.
__device__ __forceinline__ int reflect(int i, int n) {
    const int period = 2 * n;
    int m = i % period;
    if (m < 0) m += period;
    return m < n ? m : period - 1 - m;
}

// Edge `e` of an h x w grid in the CPU's order: (y,x+1)-(y,x), (y+1,x)-(y,x), (y+1,x+1)-(y,x),
// (y,x+1)-(y+1,x), each block in raster order. Returns the pixel pair (a, b).
__device__ __forceinline__ void edge_pixels(int e, int h, int w, int& a, int& b) {
    const int horizontal = h * (w - 1);
    const int vertical = (h - 1) * w;
    const int diagonal = (h - 1) * (w - 1);
    if (e < horizontal) {
        const int y = e / (w - 1), x = e % (w - 1);
        a = y * w + x + 1;
        b = y * w + x;
        return;
    }
    e -= horizontal;
    if (e < vertical) {
        const int y = e / w, x = e % w;
        a = (y + 1) * w + x;
        b = y * w + x;
        return;
    }
    e -= vertical;
    const int y = e % diagonal / (w - 1), x = e % diagonal % (w - 1);
    if (e < diagonal) {
        a = (y + 1) * w + x + 1;
        b = y * w + x;
    } else {
        a = y * w + x + 1;
        b = (y + 1) * w + x;
    }
}

// sqrt(d * d) of the difference, as the CPU computes it.
__device__ __forceinline__ double edge_weight(const double* img, int a, int b) {
    const double d = __dsub_rn(img[a], img[b]);
    return __dsqrt_rn(__dmul_rn(d, d));
}

// A (segment starts here, max since the segment start) pair of the segmented max-scan.
struct SegMax {
    int head;
    int value;
};

__device__ __forceinline__ SegMax seg_combine(SegMax earlier, SegMax later) {
    return {earlier.head | later.head, later.head ? later.value : max(earlier.value, later.value)};
}

// Exclusive segmented max-scan over the block's values (-1 is the identity). Ends with a barrier.
__device__ __forceinline__ int block_exclusive_segmax(SegMax v) {
    __shared__ int warp_head[lrc::WARP];
    __shared__ int warp_value[lrc::WARP];
    const int lane = threadIdx.x % lrc::WARP;
    const int warp = threadIdx.x / lrc::WARP;
    const int warps = blockDim.x / lrc::WARP;
    SegMax incl = v;
    for (int off = 1; off < lrc::WARP; off *= 2) {
        const SegMax other = {__shfl_up_sync(0xffffffffu, incl.head, off),
                              __shfl_up_sync(0xffffffffu, incl.value, off)};
        if (lane >= off) incl = seg_combine(other, incl);
    }
    // This lane's exclusive prefix within the warp.
    SegMax excl = {__shfl_up_sync(0xffffffffu, incl.head, 1), __shfl_up_sync(0xffffffffu, incl.value, 1)};
    if (lane == 0) excl = {0, -1};
    if (lane == lrc::WARP - 1) {
        warp_head[warp] = incl.head;
        warp_value[warp] = incl.value;
    }
    __syncthreads();
    if (warp == 0) {
        SegMax s = lane < warps ? SegMax{warp_head[lane], warp_value[lane]} : SegMax{0, -1};
        for (int off = 1; off < lrc::WARP; off *= 2) {
            const SegMax other = {__shfl_up_sync(0xffffffffu, s.head, off),
                                  __shfl_up_sync(0xffffffffu, s.value, off)};
            if (lane >= off) s = seg_combine(other, s);
        }
        warp_head[lane] = s.head;
        warp_value[lane] = s.value;
    }
    __syncthreads();
    const SegMax before = warp == 0 ? SegMax{0, -1} : SegMax{warp_head[warp - 1], warp_value[warp - 1]};
    const SegMax result = seg_combine(before, excl);
    __syncthreads();
    return result.value;
}

// Ascending bitonic sort of `count` (a power of two) keys in shared memory. Ends with a barrier.
__device__ __forceinline__ void bitonic_sort(unsigned* keys, int count) {
    for (int size = 2; size <= count; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int t = threadIdx.x; t < count / 2; t += blockDim.x) {
                const int low = t & (stride - 1);
                const int i = ((t - low) << 1) + low;
                const int j = i + stride;
                const bool ascending = (i & size) == 0;
                const unsigned a = keys[i], b = keys[j];
                if ((a > b) == ascending) {
                    keys[i] = b;
                    keys[j] = a;
                }
            }
            __syncthreads();
        }
    }
}

__device__ __forceinline__ int next_pow2(int v) {
    int p = 1;
    while (p < v) p <<= 1;
    return p;
}

}  // namespace fz

// Grid (ceil(h*w / 256), n), 256 threads. Axis 0: out = in[y]*k[r] + sum_{j=r..1} (in[y-j] +
// in[y+j]) * k[r-j], the CPU's (scipy's) order of operations.
LRC_KERNEL(fz_smooth_columns, FzSmoothParams, fz::THREADS) {
    const int plane = p.h * p.w;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= plane) return;
    const int y = i / p.w, x = i % p.w;
    const float* img = p.in_f32 + static_cast<size_t>(blockIdx.y) * plane;
    const int r = p.radius;
    double acc = __dmul_rn(static_cast<double>(img[i]), p.taps[r]);
    for (int j = r; j >= 1; --j) {
        const double up = img[fz::reflect(y - j, p.h) * p.w + x];
        const double down = img[fz::reflect(y + j, p.h) * p.w + x];
        acc = __dadd_rn(acc, __dmul_rn(__dadd_rn(up, down), p.taps[r - j]));
    }
    p.out[static_cast<size_t>(blockIdx.y) * plane + i] = acc;
}

// Grid (ceil(h*w / 256), n), 256 threads. Axis 1, the same order of operations along each row.
LRC_KERNEL(fz_smooth_rows, FzSmoothParams, fz::THREADS) {
    const int plane = p.h * p.w;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= plane) return;
    const int y = i / p.w, x = i % p.w;
    const double* row = p.in_f64 + static_cast<size_t>(blockIdx.y) * plane + static_cast<size_t>(y) * p.w;
    const int r = p.radius;
    double acc = __dmul_rn(row[x], p.taps[r]);
    for (int j = r; j >= 1; --j) {
        const double left = row[fz::reflect(x - j, p.w)];
        const double right = row[fz::reflect(x + j, p.w)];
        acc = __dadd_rn(acc, __dmul_rn(__dadd_rn(left, right), p.taps[r - j]));
    }
    p.out[static_cast<size_t>(blockIdx.y) * plane + i] = acc;
}

// Grid (ceil(edges / 256), n), 256 threads. Weights are +0, positive or NaN, so their bit
// patterns with the top bit set order as the weights do, NaN last (the CPU's order key). A stable
// sort by the low half of the key, then by the high half (the `high` pass reads the edge indices
// in their order after the first sort), orders the edges by weight exactly as the CPU does, ties
// by edge index.
LRC_KERNEL(fz_edge_keys, FzEdgeParams, fz::THREADS) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.edges) return;
    const double* img = p.smoothed + static_cast<size_t>(blockIdx.y) * p.h * p.w;
    const size_t slot = static_cast<size_t>(blockIdx.y) * p.edges + i;
    const int e = p.high ? static_cast<int>(p.vals[slot]) : i;
    int a, b;
    fz::edge_pixels(e, p.h, p.w, a, b);
    const double weight = fz::edge_weight(img, a, b);
    const unsigned long long key = weight != weight
                                       ? ~0ull
                                       : static_cast<unsigned long long>(__double_as_longlong(weight)) | (1ull << 63);
    p.keys[slot] = p.high ? static_cast<unsigned>(key >> 32) : static_cast<unsigned>(key);
    if (!p.high) p.vals[slot] = static_cast<unsigned>(e);
}

// Grid (ceil(h*w / 256), n), 256 threads: every pixel its own segment; scratch in its rest state.
LRC_KERNEL(fz_init, FzMergeParams, fz::THREADS) {
    const int plane = p.h * p.w;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= plane) return;
    const size_t slot = static_cast<size_t>(blockIdx.y) * plane + i;
    p.parent[slot] = static_cast<unsigned>(i);
    p.size[slot] = 1;
    p.threshold[slot] = p.initial_threshold;
    p.merged_max[slot] = 0;
    p.reserve[slot] = fz::NONE;
    p.claim[slot] = 0;
}

// Grid (n), blockDim a power of two from 32 to 1024, dynamic shared memory for one window of
// p.window edges (see the planner). The merging pass described at the top of this file.
LRC_KERNEL(fz_merge, FzMergeParams, fz::BLOCK_THREADS, 1) {
    const int plane = p.h * p.w;
    const size_t slice = blockIdx.x;
    const double* img = p.smoothed + slice * plane;
    const unsigned* order = p.order + slice * p.edges;
    unsigned* parent = p.parent + slice * plane;
    unsigned* size = p.size + slice * plane;
    float* threshold = p.threshold + slice * plane;
    unsigned long long* merged_max = p.merged_max + slice * plane;

    const int W = p.window;
    const int max_keys = fz::next_pow2(2 * W);
    LRC_DYNAMIC_SHARED(unsigned char, shared);
    double* ew = reinterpret_cast<double*>(shared);               // weight
    unsigned* keys = reinterpret_cast<unsigned*>(ew + W);           // (root << POS_BITS | position)
    unsigned* ex = keys + max_keys;                                 // window-start root of a
    unsigned* ey = ex + W;                                          // window-start root of b
    float* tx = reinterpret_cast<float*>(ey + W);                   // their thresholds
    float* ty = tx + W;
    unsigned* pair_size = reinterpret_cast<unsigned*>(ty + W);      // size(ex) + size(ey)
    int* merges = reinterpret_cast<int*>(pair_size + W);            // the edge merges
    int* latest_x = merges + W;                                     // latest merge before, per side
    int* latest_y = latest_x + W;
    __shared__ int changed[2];

    for (int start = 0; start < p.edges; start += W) {
        const int m = min(W, p.edges - start);
        const int key_count = fz::next_pow2(2 * m);
        for (int i = threadIdx.x; i < m; i += blockDim.x) {
            int a, b;
            fz::edge_pixels(static_cast<int>(order[start + i]), p.h, p.w, a, b);
            const unsigned x = lrc::find_root(parent, a);
            const unsigned y = lrc::find_root(parent, b);
            ew[i] = fz::edge_weight(img, a, b);
            ex[i] = x;
            ey[i] = y;
            tx[i] = threshold[x];
            ty[i] = threshold[y];
            pair_size[i] = size[x] + size[y];
            merges[i] = 0;
            keys[2 * i] = x != y ? (x << fz::POS_BITS | i) : fz::NONE;
            keys[2 * i + 1] = x != y ? (y << fz::POS_BITS | i) : fz::NONE;
        }
        for (int j = 2 * m + threadIdx.x; j < key_count; j += blockDim.x) keys[j] = fz::NONE;
        if (threadIdx.x == 0) changed[0] = 0;
        __syncthreads();
        fz::bitonic_sort(keys, key_count);

        const int per = (key_count + blockDim.x - 1) / blockDim.x;
        const int kbegin = min(static_cast<int>(threadIdx.x) * per, key_count);
        const int kend = min(kbegin + per, key_count);
        for (int it = 0; it < p.max_iterations; ++it) {
            // The latest merging edge before each incidence with the same root: a segmented
            // exclusive max-scan over the sorted incidences, chunked per thread.
            fz::SegMax agg = {0, -1};
            for (int j = kbegin; j < kend; ++j) {
                const unsigned key = keys[j];
                const bool head = j == 0 || (keys[j - 1] >> fz::POS_BITS) != (key >> fz::POS_BITS);
                const int pos = static_cast<int>(key & fz::POS_MASK);
                const int value = key != fz::NONE && merges[pos] ? pos : -1;
                agg = fz::seg_combine(agg, fz::SegMax{head ? 1 : 0, value});
            }
            int running = fz::block_exclusive_segmax(agg);
            for (int j = kbegin; j < kend; ++j) {
                const unsigned key = keys[j];
                const unsigned root = key >> fz::POS_BITS;
                if (j == 0 || (keys[j - 1] >> fz::POS_BITS) != root) running = -1;
                if (key == fz::NONE) continue;
                const int pos = static_cast<int>(key & fz::POS_MASK);
                if (ex[pos] == root) {
                    latest_x[pos] = running;
                } else {
                    latest_y[pos] = running;
                }
                if (merges[pos]) running = max(running, pos);
            }
            if (threadIdx.x == 0) changed[(it + 1) & 1] = 0;
            __syncthreads();
            // Jacobi step: every decision again from the merges of the previous step.
            int any = 0;
            for (int i = threadIdx.x; i < m; i += blockDim.x) {
                if (ex[i] == ey[i]) continue;
                const double w = ew[i];
                const int lx = latest_x[i], ly = latest_y[i];
                const bool active_x = lx < 0 ? static_cast<double>(tx[i]) > w
                                             : w < __dadd_rn(ew[lx], __ddiv_rn(p.k, static_cast<double>(pair_size[lx])));
                const bool active_y = ly < 0 ? static_cast<double>(ty[i]) > w
                                             : w < __dadd_rn(ew[ly], __ddiv_rn(p.k, static_cast<double>(pair_size[ly])));
                const int merge = active_x && active_y;
                if (merge != merges[i]) {
                    merges[i] = merge;
                    any = 1;
                }
            }
            if (any) changed[it & 1] = 1;
            __syncthreads();
            if (!changed[it & 1]) break;
        }

        // Apply the window's merges.
        for (int i = threadIdx.x; i < m; i += blockDim.x) {
            if (merges[i]) lrc::unite(parent, ex[i], ey[i]);
        }
        __syncthreads();
        for (int j = kbegin; j < kend; ++j) {
            const unsigned key = keys[j];
            const unsigned root = key >> fz::POS_BITS;
            if (key == fz::NONE || (j > 0 && (keys[j - 1] >> fz::POS_BITS) == root)) continue;
            const unsigned r = lrc::find_root(parent, root);
            if (r != root) atomicAdd(size + r, size[root]);
        }
        for (int i = threadIdx.x; i < m; i += blockDim.x) {
            if (merges[i]) {
                const unsigned r = lrc::find_root(parent, ex[i]);
                atomicMax(merged_max + r, static_cast<unsigned long long>(__double_as_longlong(ew[i])) + 1ull);
            }
        }
        __syncthreads();
        for (int j = kbegin; j < kend; ++j) {
            const unsigned key = keys[j];
            const unsigned root = key >> fz::POS_BITS;
            if (key == fz::NONE || (j > 0 && (keys[j - 1] >> fz::POS_BITS) == root)) continue;
            const unsigned long long bits = merged_max[root];
            if (bits != 0) {
                const double w = __longlong_as_double(static_cast<long long>(bits - 1ull));
                threshold[root] =
                    __double2float_rn(__dadd_rn(w, __ddiv_rn(p.k, static_cast<double>(size[root]))));
                merged_max[root] = 0;
            }
        }
        __syncthreads();
    }
}

// Grid (n), one block of 32 to 1024 threads per slice. The exact min_size pass by rounds of
// reservations (see the top).
LRC_KERNEL(fz_min_size, FzMergeParams, fz::BLOCK_THREADS) {
    const int plane = p.h * p.w;
    const size_t slice = blockIdx.x;
    const unsigned* order = p.order + slice * p.edges;
    unsigned* parent = p.parent + slice * plane;
    unsigned* size = p.size + slice * plane;
    unsigned* reserve = p.reserve + slice * plane;
    unsigned* claim = p.claim + slice * plane;
    unsigned* list = p.list + slice * p.edges;
    unsigned* kept_pos = p.kept + slice * 3 * p.edges;
    unsigned* kept_x = kept_pos + p.edges;
    unsigned* kept_y = kept_x + p.edges;
    const unsigned min_size = static_cast<unsigned>(p.min_size);
    __shared__ unsigned kept_count, next_count;

    if (threadIdx.x == 0) kept_count = 0;
    __syncthreads();
    int len = p.edges;
    bool first = true;  // the first round reads every position without a list
    for (;;) {
        // Candidates: edges between two segments of which one is small; reserve the small ones.
        for (int s = threadIdx.x; s < len; s += blockDim.x) {
            const unsigned pos = first ? static_cast<unsigned>(s) : list[s];
            int a, b;
            fz::edge_pixels(static_cast<int>(order[pos]), p.h, p.w, a, b);
            const unsigned x = lrc::find_root(parent, a);
            const unsigned y = lrc::find_root(parent, b);
            const bool small_x = size[x] < min_size, small_y = size[y] < min_size;
            if (x == y || !(small_x || small_y)) continue;
            const unsigned slot = atomicAdd(&kept_count, 1u);
            kept_pos[slot] = pos;
            kept_x[slot] = x | (small_x ? fz::SMALL : 0u);
            kept_y[slot] = y | (small_y ? fz::SMALL : 0u);
            if (small_x) atomicMin(reserve + x, pos);
            if (small_y) atomicMin(reserve + y, pos);
        }
        __syncthreads();
        const unsigned kc = kept_count;
        if (kc == 0) break;
        first = false;
        // Commit the edges that hold the reservation of each of their small segments.
        for (unsigned s = threadIdx.x; s < kc; s += blockDim.x) {
            const unsigned pos = kept_pos[s], xs = kept_x[s], ys = kept_y[s];
            const unsigned x = xs & ~fz::SMALL, y = ys & ~fz::SMALL;
            const bool ok_x = !(xs & fz::SMALL) || reserve[x] == pos;
            const bool ok_y = !(ys & fz::SMALL) || reserve[y] == pos;
            if (ok_x && ok_y) {
                lrc::unite(parent, x, y);
                kept_pos[s] = pos | fz::COMMITTED;
            }
        }
        __syncthreads();
        // Sizes: each round-start root of a committed edge adds its size to its new root, once.
        if (threadIdx.x == 0) next_count = 0;
        for (unsigned s = threadIdx.x; s < kc; s += blockDim.x) {
            if (!(kept_pos[s] & fz::COMMITTED)) continue;
            const unsigned ends[2] = {kept_x[s] & ~fz::SMALL, kept_y[s] & ~fz::SMALL};
            for (const unsigned r : ends) {
                if (atomicExch(claim + r, 1u) != 0u) continue;
                const unsigned root = lrc::find_root(parent, r);
                if (root != r) atomicAdd(size + root, size[r]);
            }
        }
        __syncthreads();
        // Back to the rest state; the undecided candidates form the next round's list.
        if (threadIdx.x == 0) kept_count = 0;
        for (unsigned s = threadIdx.x; s < kc; s += blockDim.x) {
            const unsigned x = kept_x[s] & ~fz::SMALL, y = kept_y[s] & ~fz::SMALL;
            reserve[x] = fz::NONE;
            reserve[y] = fz::NONE;
            claim[x] = 0;
            claim[y] = 0;
            if (!(kept_pos[s] & fz::COMMITTED)) list[atomicAdd(&next_count, 1u)] = kept_pos[s];
        }
        __syncthreads();
        len = static_cast<int>(next_count);
    }
}

// Grid (n), 32 to 1024 threads: labels 0..K-1 numbered by each segment's first pixel in raster order
// (its root, since unions keep the smaller index), and K per slice.
LRC_KERNEL(fz_label, FzMergeParams, fz::BLOCK_THREADS) {
    const int plane = p.h * p.w;
    const size_t slice = blockIdx.x;
    unsigned* parent = p.parent + slice * plane;
    unsigned* rank = p.reserve + slice * plane;  // free after the min_size pass
    unsigned* labels = p.labels + slice * plane;
    const int per = (plane + blockDim.x - 1) / blockDim.x;
    const int begin = min(static_cast<int>(threadIdx.x) * per, plane);
    const int end = min(begin + per, plane);
    unsigned roots = 0;
    for (int i = begin; i < end; ++i) {
        const unsigned r = lrc::find_root(parent, i);
        labels[i] = r;
        roots += r == static_cast<unsigned>(i);
    }
    unsigned total;
    unsigned next = lrc::block_exclusive_sum(roots, &total);
    for (int i = begin; i < end; ++i) {
        if (labels[i] == static_cast<unsigned>(i)) rank[i] = next++;
    }
    __syncthreads();
    for (int i = begin; i < end; ++i) labels[i] = rank[labels[i]];
    // The reservation array returns to its rest state for a later run on the same buffers.
    __syncthreads();
    for (int i = begin; i < end; ++i) rank[i] = fz::NONE;
    if (threadIdx.x == 0) p.counts[slice] = total;
}
