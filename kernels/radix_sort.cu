// Segmented LSD radix sort of (u32 key, u32 value) pairs: `segments` independent arrays of `len`
// pairs, stored one after another, each sorted by key. Stable: equal keys keep their input order,
// which the Felzenszwalb edge order (weight, then edge index) and the region pixel lists (label,
// then raster order) rely on.
//
// One pass per 8-bit digit, three kernels a pass, each segment on its own grid row (blockIdx.y):
//   radix_count    per tile of TILE pairs, the count of each digit        -> counts[seg][digit][tile]
//   radix_scan     per segment, the exclusive prefix of those counts in (digit, tile) order: the
//                  first output slot of each digit of each tile
//   radix_scatter  per tile, each pair to its slot: tile offset + rank among the tile's earlier
//                  pairs with the same digit (ballots within a warp, a per-digit table across warps)
// Every pass moves the data between two buffers; an even number of passes ends where it began.
// All counts are exact integers, so the result does not depend on scheduling.

#include "common.cuh"

struct RadixPassParams {
    const unsigned* keys_in;
    const unsigned* vals_in;
    unsigned* keys_out;
    unsigned* vals_out;
    unsigned* counts;  // [segments][256][tiles]: digit counts, then their exclusive prefix
    int len;           // pairs per segment
    int tiles;         // tiles per segment, ceil(len / TILE)
    int shift;         // lowest bit of this pass's digit
    int reserved;
};
static_assert(sizeof(RadixPassParams) == 56, "RadixPassParams must match its Rust mirror");
static_assert(offsetof(RadixPassParams, len) == 40, "RadixPassParams must match its Rust mirror");
static_assert(offsetof(RadixPassParams, shift) == 48, "RadixPassParams must match its Rust mirror");

namespace radix {

constexpr int THREADS = 256;
constexpr int ITEMS = 8;
constexpr int TILE = THREADS * ITEMS;  // pairs per tile
constexpr int DIGITS = 256;
constexpr int WARPS = THREADS / lrc::WARP;
constexpr unsigned INVALID = DIGITS;  // the digit of a slot past the end of the segment
constexpr int SCAN_THREADS = 1024;

__device__ __forceinline__ unsigned digit_of(unsigned key, int shift) { return (key >> shift) & (DIGITS - 1); }


}  // namespace radix

// Grid (tiles, segments), 256 threads.
LRC_KERNEL(radix_count, RadixPassParams, radix::THREADS) {
    __shared__ unsigned hist[radix::DIGITS];
    const int seg = blockIdx.y;
    const int tile = blockIdx.x;
    for (int d = threadIdx.x; d < radix::DIGITS; d += blockDim.x) hist[d] = 0;
    __syncthreads();
    const unsigned* keys = p.keys_in + static_cast<size_t>(seg) * p.len;
    const int begin = tile * radix::TILE;
    const int end = min(begin + radix::TILE, p.len);
    for (int i = begin + threadIdx.x; i < end; i += blockDim.x) {
        atomicAdd(&hist[radix::digit_of(keys[i], p.shift)], 1u);
    }
    __syncthreads();
    unsigned* counts = p.counts + static_cast<size_t>(seg) * radix::DIGITS * p.tiles;
    for (int d = threadIdx.x; d < radix::DIGITS; d += blockDim.x) {
        counts[static_cast<size_t>(d) * p.tiles + tile] = hist[d];
    }
}

// Grid (1, segments), 32 to 1024 threads: counts[seg] (256 * tiles values) becomes its exclusive
// prefix.
LRC_KERNEL(radix_scan, RadixPassParams, radix::SCAN_THREADS) {
    unsigned* counts = p.counts + static_cast<size_t>(blockIdx.y) * radix::DIGITS * p.tiles;
    const int n = radix::DIGITS * p.tiles;
    const int per = (n + blockDim.x - 1) / blockDim.x;
    const int begin = min(static_cast<int>(threadIdx.x) * per, n);
    const int end = min(begin + per, n);
    unsigned sum = 0;
    for (int i = begin; i < end; ++i) sum += counts[i];
    unsigned total;
    unsigned running = lrc::block_exclusive_sum(sum, &total);
    for (int i = begin; i < end; ++i) {
        const unsigned c = counts[i];
        counts[i] = running;
        running += c;
    }
}

// Grid (tiles, segments), 256 threads. The tile is read in ITEMS rounds of one pair per thread,
// round-major, which is the input order; ranks are given in that order, so the sort is stable.
LRC_KERNEL(radix_scatter, RadixPassParams, radix::THREADS) {
    __shared__ unsigned base[radix::DIGITS];                     // next slot of each digit
    __shared__ unsigned warp_digit[radix::WARPS][radix::DIGITS];  // per round: count, then offset
    const int seg = blockIdx.y;
    const int tile = blockIdx.x;
    const int lane = threadIdx.x % lrc::WARP;
    const int warp = threadIdx.x / lrc::WARP;
    const size_t seg_start = static_cast<size_t>(seg) * p.len;
    const unsigned* counts = p.counts + static_cast<size_t>(seg) * radix::DIGITS * p.tiles;
    for (int d = threadIdx.x; d < radix::DIGITS; d += blockDim.x) {
        base[d] = counts[static_cast<size_t>(d) * p.tiles + tile];
    }
    const unsigned lanes_below = (1u << lane) - 1u;
    for (int round = 0; round < radix::ITEMS; ++round) {
        for (int i = threadIdx.x; i < radix::WARPS * radix::DIGITS; i += blockDim.x) {
            warp_digit[i / radix::DIGITS][i % radix::DIGITS] = 0;
        }
        __syncthreads();
        const int i = tile * radix::TILE + round * radix::THREADS + threadIdx.x;
        const bool valid = i < p.len;
        const unsigned key = valid ? p.keys_in[seg_start + i] : 0u;
        const unsigned digit = valid ? radix::digit_of(key, p.shift) : radix::INVALID;
        // Lanes holding the same digit: agree on each of its 9 bits (bit 8 marks INVALID).
        unsigned peers = 0xffffffffu;
        for (int b = 0; b < 9; ++b) {
            const unsigned bit = (digit >> b) & 1u;
            const unsigned votes = __ballot_sync(0xffffffffu, bit);
            peers &= bit ? votes : ~votes;
        }
        const unsigned rank_in_warp = __popc(peers & lanes_below);
        const bool last_of_digit = (peers >> lane) == 1u;
        if (valid && last_of_digit) warp_digit[warp][digit] = rank_in_warp + 1;
        __syncthreads();
        for (int d = threadIdx.x; d < radix::DIGITS; d += blockDim.x) {
            unsigned run = base[d];
            for (int w = 0; w < radix::WARPS; ++w) {
                const unsigned c = warp_digit[w][d];
                warp_digit[w][d] = run;
                run += c;
            }
            base[d] = run;
        }
        __syncthreads();
        if (valid) {
            const size_t slot = seg_start + warp_digit[warp][digit] + rank_in_warp;
            p.keys_out[slot] = key;
            p.vals_out[slot] = p.vals_in[seg_start + i];
        }
        __syncthreads();
    }
}
