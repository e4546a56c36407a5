// The CT clean-up of Felzenszwalb segments into training regions, batched over slices: the twin of
// `body_mask` + `clean_regions` in src/superpixel/cleanup.rs, label for label.
//
// The body mask, per slice:
//   cl_threshold         candidates = image > threshold (the f32 compare of the CPU); the label
//                        tables and the per-slice "largest component" keys start empty
//   cl_square_pass       one axis of a square erosion or dilation of radius r (window clipped at
//                        the border): the min or max of the mask over [x - r, x + r] along rows,
//                        then along columns, which is the CPU's separable filter
//   cl_union, cl_flatten 4-connected components by union-find (below); per root the component's
//                        size, or whether it touches the image border
//   cl_largest           per slice the key (size, then smallest root) of the largest component
//   cl_select            dst = the pixels of that component
//   cl_grow              dst = candidates within the dilated core (all candidates without a core)
// so that, with radius r > 0: opening, largest component (the core), dilation, within the
// candidates, largest component again; with r = 0: the largest component of the candidates. Hole
// filling labels the background's components and takes back every one that does not touch the
// border.
// The regions:
//   cl_body_counts       the final body; per label its pixels inside the body and its first pixel
//   cl_rank_keys         sort keys (count descending, label ascending) of the labels that pass
//                        min_region_pixels; radix_sort.cu sorts them (stable, labels go in in order)
//   cl_order_keys        the first max_regions labels of that order are kept; keys = their first
//                        pixel, for a second sort that puts the kept labels in raster order
//   cl_number            new label = 1 + position in that order (0 for every other label)
//   cl_write             the u16 labels: the pixel's new label inside the body, 0 elsewhere
//
// Components. Union-find over the pixels of a slice, the larger root linked under the smaller
// with atomicCAS (as in felzenszwalb.cu): every pixel joins its right and lower neighbours of the
// same class in one pass. Each thread retries its own union until its compare-and-swap holds; a
// retry happens only when another thread linked a root meanwhile, which happens at most h * w - 1
// times per slice, so the loop is bounded and there are no rounds: nothing needs a host read-back
// or a device-side "done" flag. A link always points at a smaller index, so
// the root of a component is its smallest pixel index, its first pixel in raster order: the CPU's
// tie rule ("the first in raster order among equals") is the smallest root. cl_flatten then
// writes every pixel's root (read-only walks, each thread storing only its own pixel, so what any
// thread sees is an ancestor or the root).
//
// Determinism: everything is integer. Sizes, counts and first pixels are atomic adds and minima,
// the largest component a 64-bit atomic maximum of (size << 32 | ~root), unions end in the same
// partition whatever the order; so the output does not depend on scheduling.
//
// Labels: per slice below h * w (what Felzenszwalb gives); a larger one is treated as no region
// (0) and raises the status word.

#include "common.cuh"

struct CleanupParams {
    const float* images;         // n x plane, normalised slices
    const unsigned* segments;    // n x plane, labels below plane
    const unsigned char* src;    // per call: the mask read
    unsigned char* dst;          // per call: the mask written
    const unsigned char* aux;    // per call: a second mask read (cl_grow: the candidates)
    unsigned char* body;         // n x plane: the body mask (final after cl_body_counts)
    unsigned* parent;            // n x plane: union-find forest; later a sort buffer
    unsigned* size;              // n x plane: per root, size or border flag; later a sort buffer
    unsigned long long* best;    // n x 2: key of the largest component, per slice and pass
    unsigned* counts;            // n x plane: per label, its pixels inside the body
    unsigned* first;             // n x plane: per label, its first pixel inside the body
    const unsigned* keys;        // per call: sorted keys read (n x plane)
    const unsigned* vals;        // per call: sorted values read (n x plane)
    unsigned* keys_out;          // per call: keys written (n x plane)
    unsigned* vals_out;          // per call: values written (n x plane)
    unsigned* new_label;         // n x plane: per label, its output label (0: dropped)
    unsigned short* labels;      // n x plane: the output
    unsigned* status;            // 1 word: 1 when a label is not below plane
    float threshold;             // body candidates are pixels above it
    int n;
    int h;
    int w;
    int radius;        // cl_square_pass
    int axis;          // cl_square_pass: 0 along rows (x), 1 along columns (y)
    int erode;         // cl_square_pass: 1 erosion (all), 0 dilation (any)
    int foreground;    // cl_union, cl_flatten, cl_largest, cl_select: the mask value labelled (0 or 1)
    int pass;          // cl_largest, cl_select, cl_grow: which slot of `best`
    int border_flags;  // cl_flatten: 0 sizes per root, 1 per root whether it touches the border
    int reset_forest;  // any per-pixel kernel: also make every pixel its own root, size 0
    int fill_holes;    // cl_body_counts
    int min_region_pixels;
    int max_regions;
};
static_assert(sizeof(CleanupParams) == 200, "CleanupParams must match its Rust mirror");
static_assert(offsetof(CleanupParams, threshold) == 144, "CleanupParams must match its Rust mirror");
static_assert(offsetof(CleanupParams, radius) == 160, "CleanupParams must match its Rust mirror");
static_assert(offsetof(CleanupParams, max_regions) == 196, "CleanupParams must match its Rust mirror");

namespace cleanup {

constexpr int THREADS = 256;
constexpr unsigned NONE = 0xffffffffu;

// The pixel of this thread in its slice (blockIdx.y), or -1 past the slice.
__device__ __forceinline__ int pixel_index(const CleanupParams& p) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    return i < p.h * p.w ? i : -1;
}

__device__ __forceinline__ size_t slice_offset(const CleanupParams& p) {
    return static_cast<size_t>(blockIdx.y) * p.h * p.w;
}

__device__ __forceinline__ void reset_forest(const CleanupParams& p, size_t at, int i) {
    p.parent[at] = static_cast<unsigned>(i);
    p.size[at] = 0;
}

// The root of x's tree without writing (lrc::find_root halves paths): for the pass where every
// thread stores its own pixel's root, so that no stale halving can overwrite a root with an
// ancestor.
__device__ __forceinline__ unsigned walk_to_root(const unsigned* parent, unsigned x) {
    const volatile unsigned* vp = parent;
    unsigned q = vp[x];
    while (q != x) {
        x = q;
        q = vp[x];
    }
    return x;
}

__device__ __forceinline__ bool in_class(const unsigned char* mask, int i, int foreground) {
    return (mask[i] != 0) == (foreground != 0);
}

// The largest component's root from its key, or NONE when the mask was empty.
__device__ __forceinline__ unsigned best_root(unsigned long long key) {
    return key == 0 ? NONE : ~static_cast<unsigned>(key);
}

}  // namespace cleanup

// Grid (ceil(plane / 256), n), 256 threads. Candidates; empty label tables and keys. The status
// word is cleared by the first thread of the grid: later kernels raise it.
LRC_KERNEL(cl_threshold, CleanupParams, cleanup::THREADS) {
    const int i = cleanup::pixel_index(p);
    if (i < 0) return;
    const size_t at = cleanup::slice_offset(p) + i;
    p.dst[at] = p.images[at] > p.threshold ? 1 : 0;
    p.counts[at] = 0;
    p.first[at] = cleanup::NONE;
    if (i == 0) {
        p.best[2 * blockIdx.y] = 0;
        p.best[2 * blockIdx.y + 1] = 0;
        if (blockIdx.y == 0) *p.status = 0;
    }
    if (p.reset_forest) cleanup::reset_forest(p, at, i);
}

// Grid (ceil(plane / 256), n), 256 threads. One axis of a square erosion (all) or dilation (any)
// of radius p.radius, the window clipped at the border.
LRC_KERNEL(cl_square_pass, CleanupParams, cleanup::THREADS) {
    const int i = cleanup::pixel_index(p);
    if (i < 0) return;
    const size_t base = cleanup::slice_offset(p);
    const int y = i / p.w, x = i % p.w;
    const int along = p.axis == 0 ? x : y;
    const int len = p.axis == 0 ? p.w : p.h;
    const int stride = p.axis == 0 ? 1 : p.w;
    const int lo = max(along - p.radius, 0), hi = min(along + p.radius, len - 1);
    const unsigned char* line = p.src + base + (i - along * stride);
    // Erosion is 0 as soon as the window holds a 0, dilation 1 as soon as it holds a 1.
    const bool decisive = p.erode == 0;
    bool seen = false;
    for (int j = lo; j <= hi && !seen; ++j) seen = (line[j * stride] != 0) == decisive;
    p.dst[base + i] = (seen == decisive) ? 1 : 0;
    if (p.reset_forest) cleanup::reset_forest(p, base + i, i);
}

// Grid (ceil(plane / 256), n), 256 threads. Every pixel of the class joins its right and lower
// neighbours of the class. The forest must have been reset (reset_forest of an earlier kernel).
LRC_KERNEL(cl_union, CleanupParams, cleanup::THREADS) {
    const int i = cleanup::pixel_index(p);
    if (i < 0) return;
    const size_t base = cleanup::slice_offset(p);
    const unsigned char* mask = p.src + base;
    if (!cleanup::in_class(mask, i, p.foreground)) return;
    unsigned* parent = p.parent + base;
    const int y = i / p.w, x = i % p.w;
    if (x + 1 < p.w && cleanup::in_class(mask, i + 1, p.foreground)) {
        lrc::unite(parent, static_cast<unsigned>(i), static_cast<unsigned>(i + 1));
    }
    if (y + 1 < p.h && cleanup::in_class(mask, i + p.w, p.foreground)) {
        lrc::unite(parent, static_cast<unsigned>(i), static_cast<unsigned>(i + p.w));
    }
}

// Grid (ceil(plane / 256), n), 256 threads, after cl_union. Every pixel of the class gets its root
// as parent; per root, the component's size (border_flags 0) or 1 if any of its pixels lies on
// the image border (border_flags 1; the sizes were reset to 0).
LRC_KERNEL(cl_flatten, CleanupParams, cleanup::THREADS) {
    const int i = cleanup::pixel_index(p);
    if (i < 0) return;
    const size_t base = cleanup::slice_offset(p);
    if (!cleanup::in_class(p.src + base, i, p.foreground)) return;
    unsigned* parent = p.parent + base;
    const unsigned root = cleanup::walk_to_root(parent, static_cast<unsigned>(i));
    parent[i] = root;
    if (!p.border_flags) {
        atomicAdd(p.size + base + root, 1u);
        return;
    }
    const int y = i / p.w, x = i % p.w;
    if (y == 0 || x == 0 || y + 1 == p.h || x + 1 == p.w) atomicMax(p.size + base + root, 1u);
}

// Grid (ceil(plane / 256), n), 256 threads, after cl_flatten (sizes). best[slice][pass] = the
// maximum over roots of (size << 32 | ~root): the largest component, the smallest root among
// equals. A block reduces in shared memory first, then one atomic per block.
LRC_KERNEL(cl_largest, CleanupParams, cleanup::THREADS) {
    __shared__ unsigned long long block_best;
    if (threadIdx.x == 0) block_best = 0;
    __syncthreads();
    const int i = cleanup::pixel_index(p);
    if (i >= 0) {
        const size_t base = cleanup::slice_offset(p);
        if (cleanup::in_class(p.src + base, i, p.foreground) && p.parent[base + i] == static_cast<unsigned>(i)) {
            const unsigned long long key =
                static_cast<unsigned long long>(p.size[base + i]) << 32 | static_cast<unsigned>(~static_cast<unsigned>(i));
            atomicMax(&block_best, key);
        }
    }
    __syncthreads();
    if (threadIdx.x == 0 && block_best != 0) atomicMax(p.best + 2 * blockIdx.y + p.pass, block_best);
}

// Grid (ceil(plane / 256), n), 256 threads, after cl_largest: dst = the pixels of the largest
// component of src (none if src was empty).
LRC_KERNEL(cl_select, CleanupParams, cleanup::THREADS) {
    const int i = cleanup::pixel_index(p);
    if (i < 0) return;
    const size_t at = cleanup::slice_offset(p) + i;
    const unsigned root = cleanup::best_root(p.best[2 * blockIdx.y + p.pass]);
    const bool inside = cleanup::in_class(p.src + cleanup::slice_offset(p), i, p.foreground) && p.parent[at] == root;
    p.dst[at] = inside ? 1 : 0;
    if (p.reset_forest) cleanup::reset_forest(p, at, i);
}

// Grid (ceil(plane / 256), n), 256 threads: dst = candidates (aux) within the dilated core (src),
// or every candidate when the opening left no core (best[slice][pass] is 0).
LRC_KERNEL(cl_grow, CleanupParams, cleanup::THREADS) {
    const int i = cleanup::pixel_index(p);
    if (i < 0) return;
    const size_t at = cleanup::slice_offset(p) + i;
    const bool no_core = p.best[2 * blockIdx.y + p.pass] == 0;
    p.dst[at] = p.aux[at] != 0 && (no_core || p.src[at] != 0) ? 1 : 0;
    if (p.reset_forest) cleanup::reset_forest(p, at, i);
}

// Grid (ceil(plane / 256), n), 256 threads. The final body (with fill_holes, after the background
// of `body` went through cl_union / cl_flatten with border flags: a background pixel whose
// component does not touch the border is a hole, and joins the body); per label, its pixels in
// the body and its first one.
LRC_KERNEL(cl_body_counts, CleanupParams, cleanup::THREADS) {
    const int i = cleanup::pixel_index(p);
    if (i < 0) return;
    const size_t base = cleanup::slice_offset(p);
    const size_t at = base + i;
    bool inside = p.body[at] != 0;
    if (!inside && p.fill_holes) inside = p.size[base + p.parent[at]] == 0;
    p.body[at] = inside ? 1 : 0;
    const unsigned label = p.segments[at];
    if (label >= static_cast<unsigned>(p.h * p.w)) {
        atomicMax(p.status, 1u);
        return;
    }
    if (!inside) return;
    atomicAdd(p.counts + base + label, 1u);
    atomicMin(p.first + base + label, static_cast<unsigned>(i));
}

// Grid (ceil(plane / 256), n), 256 threads, one per label. Keys for the largest-first order:
// plane - count for the labels that are present and pass min_region_pixels, plane for the others
// (after all of them); values are the labels, in order, so the stable sort breaks ties by label.
LRC_KERNEL(cl_rank_keys, CleanupParams, cleanup::THREADS) {
    const int l = cleanup::pixel_index(p);
    if (l < 0) return;
    const size_t at = cleanup::slice_offset(p) + l;
    const unsigned plane = static_cast<unsigned>(p.h * p.w);
    const unsigned c = p.counts[at];
    const bool candidate = c > 0 && c >= static_cast<unsigned>(p.min_region_pixels);
    p.keys_out[at] = candidate ? plane - c : plane;
    p.vals_out[at] = static_cast<unsigned>(l);
}

// Grid (ceil(plane / 256), n), 256 threads, one per position of the largest-first order. The
// labels at the first max_regions positions that are candidates are kept; keys = their first
// pixel (plane for every other label), values = labels, for the raster-order sort.
LRC_KERNEL(cl_order_keys, CleanupParams, cleanup::THREADS) {
    const int i = cleanup::pixel_index(p);
    if (i < 0) return;
    const size_t base = cleanup::slice_offset(p);
    const unsigned plane = static_cast<unsigned>(p.h * p.w);
    const unsigned label = p.vals[base + i];
    const bool kept = p.keys[base + i] < plane && i < p.max_regions;
    p.keys_out[base + label] = kept ? p.first[base + label] : plane;
    p.vals_out[base + label] = label;
}

// Grid (ceil(plane / 256), n), 256 threads, one per position of the raster order of the kept
// labels' first pixels: the kept label at position i becomes i + 1, every other label 0.
LRC_KERNEL(cl_number, CleanupParams, cleanup::THREADS) {
    const int i = cleanup::pixel_index(p);
    if (i < 0) return;
    const size_t base = cleanup::slice_offset(p);
    const unsigned plane = static_cast<unsigned>(p.h * p.w);
    const unsigned label = p.vals[base + i];
    p.new_label[base + label] = p.keys[base + i] < plane ? static_cast<unsigned>(i) + 1u : 0u;
}

// Grid (ceil(plane / 256), n), 256 threads: the output labels.
LRC_KERNEL(cl_write, CleanupParams, cleanup::THREADS) {
    const int i = cleanup::pixel_index(p);
    if (i < 0) return;
    const size_t base = cleanup::slice_offset(p);
    const size_t at = base + i;
    const unsigned label = p.segments[at];
    const bool valid = label < static_cast<unsigned>(p.h * p.w);
    p.labels[at] = static_cast<unsigned short>(p.body[at] != 0 && valid ? p.new_label[base + label] : 0u);
}
