// Pixel sampling of the Local Region Contrast loss on the GPU, the twin of
// src/superpixel/sampling.rs: for every region (label > 0) present in both the query view and the
// positive view of an image, `samples` pixel indices drawn uniformly with replacement in each
// view; regions empty in either view are dropped; optionally a uniformly random subset of at
// most `max_regions` regions, still in increasing label order.
//   rs_clear    zero the label counts and the error flag
//   rs_prepare  count the pixels of each label in each view; keys = labels, values = pixel
//               indices, for radix_sort.cu to group the pixels of each label (raster order within)
//   rs_select   per image: where each label's pixels start, the regions present in both views
//               (label order), and the random subset when there are more than max_regions
//   rs_draw     per (image, region, sample): one pixel of the region in each view
// The draws come from a counter-based generator (SplitMix64's mixer over seed, image, label,
// sample and view), so the samples follow the CPU's distribution, not its stream: GPU and CPU
// agree on which regions are kept (without a subset) and in distribution on the pixels.

#include "common.cuh"

struct RegionSampleParams {
    const unsigned* q_labels;  // n x pixels
    const unsigned* p_labels;  // n x pixels
    unsigned* keys;            // 2n x pixels: segment 2i is image i's query view, 2i+1 its positive
    unsigned* vals;            // 2n x pixels
    unsigned* counts;          // n x 2 x (max_label + 1)
    unsigned* candidates;      // n x 5 x max_label: label, q start, q count, p start, p count
    unsigned* regions;         // n x 5 x max_label: the kept regions, same layout
    unsigned* region_counts;   // n
    unsigned* q_out;           // n x max_label x samples (rows past the kept regions are 0)
    unsigned* p_out;           // n x max_label x samples
    unsigned* error;           // 1 word: set to 1 when a label exceeds max_label
    unsigned long long seed;
    int n;
    int pixels;
    int max_label;
    int samples;
    int max_regions;  // -1: no limit
    int reserved;
};
static_assert(sizeof(RegionSampleParams) == 120, "RegionSampleParams must match its Rust mirror");
static_assert(offsetof(RegionSampleParams, seed) == 88, "RegionSampleParams must match its Rust mirror");
static_assert(offsetof(RegionSampleParams, max_regions) == 112, "RegionSampleParams must match its Rust mirror");

namespace sampling {

constexpr int THREADS = 256;
constexpr int BLOCK_THREADS = 1024;
constexpr int FIELDS = 5;  // label, q start, q count, p start, p count
constexpr unsigned long long SUBSET_SALT = 0x5851f42d4c957f2dull;

// SplitMix64's output function: a bijection of 64-bit words with good avalanche.
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ unsigned long long draw(unsigned long long seed, unsigned image, unsigned label,
                                                   unsigned long long counter) {
    return mix64(mix64(mix64(seed ^ image) ^ label) ^ counter);
}


}  // namespace sampling

// Grid (ceil(2 * (max_label + 1) / 256), n), 256 threads.
LRC_KERNEL(rs_clear, RegionSampleParams, sampling::THREADS) {
    const int per_image = 2 * (p.max_label + 1);
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < per_image) p.counts[static_cast<size_t>(blockIdx.y) * per_image + i] = 0;
    if (i == 0 && blockIdx.y == 0) *p.error = 0;
}

// Grid (ceil(pixels / 256), n), 256 threads. A label above max_label raises the error flag and is
// treated as background.
LRC_KERNEL(rs_prepare, RegionSampleParams, sampling::THREADS) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.pixels) return;
    const size_t image = blockIdx.y;
    const unsigned* maps[2] = {p.q_labels, p.p_labels};
    for (int view = 0; view < 2; ++view) {
        unsigned label = maps[view][image * p.pixels + i];
        if (label > static_cast<unsigned>(p.max_label)) {
            atomicMax(p.error, 1u);
            label = 0;
        }
        atomicAdd(p.counts + (image * 2 + view) * (p.max_label + 1) + label, 1u);
        const size_t slot = (image * 2 + view) * p.pixels + i;
        p.keys[slot] = label;
        p.vals[slot] = static_cast<unsigned>(i);
    }
}

// Grid (n), 32 to 1024 threads.
LRC_KERNEL(rs_select, RegionSampleParams, sampling::BLOCK_THREADS) {
    const size_t image = blockIdx.x;
    const int labels = p.max_label + 1;
    const unsigned* count_q = p.counts + image * 2 * labels;
    const unsigned* count_p = count_q + labels;
    const size_t cap = p.max_label;
    unsigned* cand = p.candidates + image * sampling::FIELDS * cap;
    unsigned* out = p.regions + image * sampling::FIELDS * cap;

    // Label l's pixels start at the sum of the counts below l; regions numbered in label order.
    const int per = (labels + blockDim.x - 1) / blockDim.x;
    const int begin = min(static_cast<int>(threadIdx.x) * per, labels);
    const int end = min(begin + per, labels);
    unsigned sum_q = 0, sum_p = 0, kept = 0;
    for (int l = begin; l < end; ++l) {
        sum_q += count_q[l];
        sum_p += count_p[l];
        kept += l > 0 && count_q[l] > 0 && count_p[l] > 0;
    }
    unsigned total;
    unsigned start_q = lrc::block_exclusive_sum(sum_q, &total);
    unsigned start_p = lrc::block_exclusive_sum(sum_p, &total);
    unsigned k = lrc::block_exclusive_sum(kept, &total);
    const unsigned candidates = total;
    for (int l = begin; l < end; ++l) {
        if (l > 0 && count_q[l] > 0 && count_p[l] > 0) {
            cand[k] = l;
            cand[cap + k] = start_q;
            cand[2 * cap + k] = count_q[l];
            cand[3 * cap + k] = start_p;
            cand[4 * cap + k] = count_p[l];
            ++k;
        }
        start_q += count_q[l];
        start_p += count_p[l];
    }
    __syncthreads();

    // The subset: the max_regions candidates with the smallest random keys (ties: lower label),
    // a uniformly random subset, kept in label order.
    const bool subset = p.max_regions >= 0 && candidates > static_cast<unsigned>(p.max_regions);
    const int cper = (static_cast<int>(candidates) + blockDim.x - 1) / blockDim.x;
    const int cbegin = min(static_cast<int>(threadIdx.x) * cper, static_cast<int>(candidates));
    const int cend = min(cbegin + cper, static_cast<int>(candidates));
    unsigned chosen = 0;
    for (int c = cbegin; c < cend; ++c) {
        bool keep = true;
        if (subset) {
            const unsigned long long key = sampling::draw(p.seed ^ sampling::SUBSET_SALT, image, cand[c], 0);
            unsigned rank = 0;
            for (unsigned o = 0; o < candidates; ++o) {
                const unsigned long long other = sampling::draw(p.seed ^ sampling::SUBSET_SALT, image, cand[o], 0);
                rank += other < key || (other == key && o < static_cast<unsigned>(c));
            }
            keep = rank < static_cast<unsigned>(p.max_regions);
        }
        chosen += keep;
    }
    unsigned kept_total;
    unsigned slot = lrc::block_exclusive_sum(chosen, &kept_total);
    for (int c = cbegin; c < cend; ++c) {
        bool keep = true;
        if (subset) {
            const unsigned long long key = sampling::draw(p.seed ^ sampling::SUBSET_SALT, image, cand[c], 0);
            unsigned rank = 0;
            for (unsigned o = 0; o < candidates; ++o) {
                const unsigned long long other = sampling::draw(p.seed ^ sampling::SUBSET_SALT, image, cand[o], 0);
                rank += other < key || (other == key && o < static_cast<unsigned>(c));
            }
            keep = rank < static_cast<unsigned>(p.max_regions);
        }
        if (keep) {
            for (int f = 0; f < sampling::FIELDS; ++f) out[f * cap + slot] = cand[f * cap + c];
            ++slot;
        }
    }
    if (threadIdx.x == 0) p.region_counts[image] = kept_total;
}

// Grid (ceil(max_label * samples / 256), n), 256 threads: thread t draws sample t % samples of
// region t / samples in both views.
LRC_KERNEL(rs_draw, RegionSampleParams, sampling::THREADS) {
    const size_t image = blockIdx.y;
    const size_t cap = p.max_label;
    const size_t t = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (t >= cap * p.samples) return;
    const unsigned k = static_cast<unsigned>(t / p.samples);
    const unsigned s = static_cast<unsigned>(t % p.samples);
    const unsigned* region = p.regions + image * sampling::FIELDS * cap;
    unsigned* outs[2] = {p.q_out, p.p_out};
    const size_t slot = image * cap * p.samples + t;
    if (k >= p.region_counts[image]) {
        outs[0][slot] = 0;
        outs[1][slot] = 0;
        return;
    }
    const unsigned label = region[k];
    for (int view = 0; view < 2; ++view) {
        const unsigned start = region[(1 + 2 * view) * cap + k];
        const unsigned count = region[(2 + 2 * view) * cap + k];
        const unsigned long long u = sampling::draw(p.seed, image, label, 2ull * s + view);
        // floor(u * count / 2^64): uniform on 0..count-1 up to a bias below count / 2^64.
        const unsigned j = static_cast<unsigned>(__umul64hi(u, count));
        outs[view][slot] = p.vals[(image * 2 + view) * p.pixels + start + j];
    }
}
