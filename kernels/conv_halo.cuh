// Backward-weight of the 3x3, stride 1, pad 1 convolution by halo tiles (tf32-mma-halo):
//   dW[co][ci][ky][kx] = sum over pixels p of dy[co][p] * x[ci][p + (ky - 1, kx - 1)].
// v2's implicit GEMM (m = c_out, n = (ci, tap), k = pixel) gathers B, the image, once per tap:
// each input value is fetched, bounds-checked, rounded and stored nine times, and dy once per
// column tile. Here a block owns every tap of its input channels: it stages a k tile of 32
// output pixels of one image (R = 32 / WT rows of WT columns), their dy (BM rows of 32), and the
// input they read, the same pixels with a one-pixel border (the halo: R + 2 rows of WT + 2
// columns per input channel), once; each tap's B fragment is then the halo read at that tap's
// offset, and a warp runs 9 mma per A fragment. Per k tile a thread issues 1-2 16-byte copies
// of dy, 2-3 of the halo's columns and at most one 4-byte copy of its border (cp.async), rounds
// its own words in place once they land, and the block passes one barrier.
//
// Shapes (the host's halo_applies): 3x3, stride 1, pad 1; c_in a multiple of BC = 32; an image
// width W that is a multiple of 32 (WT = 32: a k tile is 32 pixels of one row) or 16 with an
// even height (WT = 16: two rows), so that k tiles never straddle images or rows; c_in h w below
// 2^31 (offsets within an image in 32-bit integers); any c_out (rows past it are zeros); x and
// dy 16-byte aligned (whole device blocks are), so that rows of 4 pixels copy as 16 bytes.
//
// Block tile: BM output channels x BC = 32 input channels (8 per warp, 4 warps) x 9 taps. The
// other factor of 2 in the 8 warps goes along c_out (BM = 64: 32 a warp, MT = 2) or, for BM =
// 32, along k (KS = 2 k groups: each warp all 32 output channels, MT = 2, over half of each k
// tile's slices; the second group's sums are added to the first's at the end), so that every
// warp reads each B fragment for two m16 tiles. Each warp holds MT x 9 mma accumulator tiles
// (72 floats a thread). Grid: (c_in / 32, ceil(c_out / BM), splits); the launch plan's columns are the
// (ci, tap) pairs, 288 a block. Split partial sums and bias-gradient partial sums are laid out
// as v2's ([split][c_out][c_in 9], [split][c_out]) and reduced by split_reduce.
//
// Shared memory, two stages (the next tile's copies land in one while the mma read the other):
//   A: [BM][32 + 4] words (K-major; rows 36 words apart, so ldmatrix's 8 rows of 16 bytes sit
//      on distinct banks);
//   B: [32 channels][PLANE] words, a channel's halo row-major (see Tile: columns 16-byte
//      aligned, borders beside them). A B fragment word is halo(channel wc + g, tap and pixel
//      offsets + t): channels PLANE = 4 mod 8 words apart put the 8 channels x 4 pixels of a
//      warp's load on 32 distinct banks.
namespace halo {

using v2::BK;
constexpr int BC = 32;  // input channels a block owns
constexpr int TAPS = 9;
constexpr int A_STRIDE = BK + 4;
constexpr int THREADS = 256;
constexpr int WARPS = THREADS / WARP;
constexpr int WARPS_C = 4;
static_assert(2 * WARPS_C == WARPS && WARPS_C * 8 == BC, "warps: 2 along c_out or k, 4 x 8 along c_in");

template <int MT_, int WT_, int KS_ = 1>
struct Tile {
    static constexpr int MT = MT_, WT = WT_, KS = KS_;
    static_assert(WT == 32 || WT == 16, "a k tile is one row of 32 pixels or two of 16");
    static_assert(KS == 1 || KS == 2, "warps in 1 or 2 k groups");
    static constexpr int WARPS_M = 2 / KS;   // warps along c_out
    static constexpr int WM = 16 * MT;       // output channels per warp
    static constexpr int BM = WARPS_M * WM;  // and per block
    static constexpr int R = BK / WT;        // image rows of a k tile
    static constexpr int HR = R + 2;         // halo rows
    // A halo row: the left border at word 3, the WT columns from word 4 (16-byte aligned, so
    // that they arrive as 16-byte copies), the right border after them; rows HC words apart.
    static constexpr int HC = WT + 4;
    static constexpr int LEFT = 3;
    // Words per input channel: the rows, rounded up to 4 mod 8 (12 mod 32 for 32-column tiles,
    // 20 mod 32 for 16), so that a warp's B fragment load (8 channels x 4 pixels) meets 32 banks.
    static constexpr int PLANE = WT == 32 ? 116 : 84;
    static_assert(PLANE >= (HR - 1) * HC + LEFT + WT + 2 && PLANE % 8 == 4, "a channel's halo fits its plane");
    static constexpr int A_WORDS = BM * A_STRIDE;
    static constexpr int STAGE = A_WORDS + BC * PLANE;
    static_assert(A_WORDS % 4 == 0 && STAGE % 4 == 0, "16-byte copies and ldmatrix rows aligned in every stage");
    // Copies of a k tile, 16 bytes each but the borders: dy, rows tid / 8 + 32 j, 4 pixels
    // a copy; the halo's columns, ROWS_AT_ONCE rows of all BC channels a pass (row
    // tid / (8 WT), channel (tid % (8 WT)) / (WT / 4), 4 columns a copy); the border words,
    // one a thread at most (row e / 64, channel (e / 2) % 32, side e % 2).
    static constexpr int A_PIECES = BM * BK / 4 / THREADS;
    static constexpr int PIECES_PER_ROW = WT / 4;
    static constexpr int ROWS_AT_ONCE = THREADS / (BC * PIECES_PER_ROW);
    static_assert(HR % ROWS_AT_ONCE == 0, "whole halo rows per pass");
    static constexpr int PASSES = HR / ROWS_AT_ONCE;
    static constexpr int EDGES = BC * HR * 2;
    static_assert(EDGES <= THREADS, "one border word a thread at most");
    // The 8-pixel slices of a k tile unrolled at once: all four, but two in the 64-channel
    // two-row tile, where ptxas spills at four (72-76 bytes at 128 registers).
    static constexpr int SLICES_UNROLLED = MT == 2 && WT == 16 ? 2 : 4;
    // K group wk's part of a k tile starts at pixel wk BK / KS: the start of an image row (WT =
    // 16: the second group takes the second row), or within the tile's one row (WT = 32), so
    // that its slices lie where the first group's would, shifted by one offset (row_start).
    static_assert((BK / KS) % WT == 0 || BK <= WT, "a k group's slices keep the first group's rows");
    __device__ static constexpr int group_pixel(int wk) { return wk * (BK / KS); }
    // That shift in a halo plane (TF32) and in a plane of pairs (BF16; whole pairs).
    __device__ static constexpr int group_halo(int wk) { return group_pixel(wk) / WT * HC + group_pixel(wk) % WT; }
    __device__ static constexpr int group_pairs(int wk) {
        return group_pixel(wk) / WT * ROW16 + group_pixel(wk) % WT / 2;
    }
    // BF16 (backward_weight_bf16): the staged FP32 words converted into pairs, k = pixels
    // (2j, 2j + 1) in word j, lower pixel in the low half. dy: [BM][16 + 4] words (ldmatrix
    // rows on distinct banks). Halo rows twice, as the pairs a tap reads: E[j] = (h[2j],
    // h[2j + 1]) for the even column offsets (kx = 0, 2), O[j] = (h[2j + 1], h[2j + 2]) for the
    // odd one, h being the row with its border (h[0] the left one); E at word 0 (WT / 2 + 1
    // words), O at word WT / 2 + 2 (WT / 2 words, 8-byte aligned), rows ROW16 words apart,
    // channels PLANE16 = 4 mod 8 words apart.
    static constexpr int A16_STRIDE = BK / 2 + 4;
    static constexpr int A16_WORDS = BM * A16_STRIDE;
    static constexpr int ODD = WT / 2 + 2;
    static constexpr int ROW16 = WT + 2;
    static constexpr int PLANE16 = WT == 32 ? 108 : 76;
    static_assert(PLANE16 >= HR * ROW16 && PLANE16 % 8 == 4, "a channel's pairs fit their plane");
    static constexpr int PACKED = A16_WORDS + BC * PLANE16;
};

// The next k tile to copy: image, first row and column, stepping 32 pixels at a time.
struct TileCursor {
    int img, y0, x0;
    __device__ TileCursor(const ConvParams& p, int k) {
        const int hw = p.h * p.w;
        img = k / hw;
        const int pix = k - img * hw;
        y0 = pix / p.w;
        x0 = pix - y0 * p.w;
    }
    template <int WT>
    __device__ void next(const ConvParams& p) {
        if constexpr (WT == 32) {
            x0 += WT;
            if (x0 == p.w) {
                x0 = 0;
                ++y0;
            }
        } else {
            y0 += BK / WT;
        }
        if (y0 == p.h) {
            y0 = 0;
            ++img;
        }
    }
};

// Rounds four words of shared memory in place.
template <class Math>
__device__ __forceinline__ void round4(uint32_t* w) {
    float4 v = *reinterpret_cast<float4*>(w);
    v.x = __uint_as_float(Math::word(v.x, 0.0f));
    v.y = __uint_as_float(Math::word(v.y, 0.0f));
    v.z = __uint_as_float(Math::word(v.z, 0.0f));
    v.w = __uint_as_float(Math::word(v.w, 0.0f));
    *reinterpret_cast<float4*>(w) = v;
}

// This thread's copies of a k tile, the same in every tile: where they come from relative to the
// tile (channel offsets within an image fit an int: c_in h w < 2^31) and where they go in a
// stage (see Tile for the assignment).
template <class T>
struct Copies {
    int a_row, a_pixel, a_to;                      // dy: rows a_row + 32 j, pixels a_pixel + 0..3
    int b_row, b_channel, b_column, b_from, b_to;  // halo: row b_row + ROWS_AT_ONCE pass
    bool edge;                                     // a border word, this one:
    int e_row, e_side, e_from, e_to;
    __device__ Copies(int tid, int hw)
        : a_row(tid / 8),
          a_pixel(tid % 8 * 4),
          a_to(a_row * A_STRIDE + a_pixel),
          b_row(tid / (BC * T::PIECES_PER_ROW)),
          b_channel(tid % (BC * T::PIECES_PER_ROW) / T::PIECES_PER_ROW),
          b_column(tid % T::PIECES_PER_ROW * 4),
          b_from(b_channel * hw + b_column),
          b_to(T::A_WORDS + b_channel * T::PLANE + b_row * T::HC + T::LEFT + 1 + b_column),
          edge(tid < T::EDGES),
          e_row(tid / (2 * BC)),
          e_side(tid % 2),
          e_from(tid / 2 % BC * hw + (e_side ? T::WT : -1)),
          e_to(T::A_WORDS + tid / 2 % BC * T::PLANE + e_row * T::HC + (e_side ? T::LEFT + 1 + T::WT : T::LEFT)) {}

    // Issues the copies of the k tile at `at` into stage s (zeros where the halo leaves the
    // image or a dy row is past c_out), as one group.
    __device__ void issue(const ConvParams& p, uint32_t* s, const TileCursor& at, int co0, int ci0, int hw) const {
        // Two-row tiles start at column 0 (W = 16).
        const int x0 = T::WT == 32 ? at.x0 : 0;
        const int corner = at.y0 * p.w + x0;
        const float* dy = p.dy + (static_cast<size_t>(at.img) * p.c_out + co0) * hw + corner + a_pixel;
#pragma unroll
        for (int j = 0; j < T::A_PIECES; ++j) {
            const int row = a_row + 32 * j;
            uint32_t* to = s + a_to + 32 * j * A_STRIDE;
            if (co0 + row < p.c_out) {
                lrc::cp_async_16(to, dy + row * hw);
            } else {
                *reinterpret_cast<float4*>(to) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
        }
        const float* x = p.x + (static_cast<size_t>(at.img) * p.c_in + ci0) * hw;
#pragma unroll
        for (int pass = 0; pass < T::PASSES; ++pass) {
            const int y = at.y0 - 1 + b_row + pass * T::ROWS_AT_ONCE;
            uint32_t* to = s + b_to + pass * T::ROWS_AT_ONCE * T::HC;
            if (static_cast<unsigned>(y) < static_cast<unsigned>(p.h)) {
                lrc::cp_async_16(to, x + (b_from + y * p.w + x0));
            } else {
                *reinterpret_cast<float4*>(to) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
        }
        if (edge) {
            const int y = at.y0 - 1 + e_row;
            const int xx = x0 + (e_side ? T::WT : -1);
            if (static_cast<unsigned>(y) < static_cast<unsigned>(p.h) &&
                static_cast<unsigned>(xx) < static_cast<unsigned>(p.w)) {
                lrc::cp_async_4(s + e_to, x + (e_from + y * p.w + x0));
            } else {
                s[e_to] = 0u;
            }
        }
        lrc::cp_async_commit();
    }
};

// Where this block and thread stand: the block's split of the pixels [k_begin, k_end), its
// first output and input channels, and the thread's place in its warp's tiles (first output
// channel wm, input channel wc, k group wk).
template <class T>
struct Place {
    int hw, k_begin, k_end, ci0, co0, lane, g, t, wm, wc, wk;
    bool bias_block;
    __device__ explicit Place(const ConvParams& p)
        : hw(p.h * p.w),
          k_begin(blockIdx.z * p.split_len),
          k_end(min(k_begin + p.split_len, p.n * hw)),
          ci0(blockIdx.x * BC),
          co0(blockIdx.y * T::BM),
          lane(threadIdx.x % WARP),
          g(lane / 4),
          t(lane % 4),
          wm(T::KS == 1 ? threadIdx.x / WARP / WARPS_C * T::WM : 0),
          wc(threadIdx.x / WARP % WARPS_C * 8),
          wk(T::KS == 1 ? 0 : threadIdx.x / WARP / WARPS_C),
          bias_block(p.out_bias != nullptr && blockIdx.x == 0) {}
};

// With two k groups: the second group's warps hand their sums to the first's (the warp 4
// apart, the same tiles), which add them in, a row of taps (ky) at a time through `scratch`
// (WARPS_C x 32 x MT x 3 x 4 words: 3072), whose earlier contents every thread is done with.
template <class T>
__device__ void add_k_groups(float (&acc)[T::MT][TAPS][4], uint32_t* scratch, int wk) {
    static_assert(T::KS == 2, "two k groups");
    constexpr int GROUP = WARPS_C * WARP;  // threads of a k group
    float* hand = reinterpret_cast<float*>(scratch);
    const int slot = threadIdx.x % GROUP;
#pragma unroll
    for (int ky = 0; ky < 3; ++ky) {
        // Calls f(sum, its word of scratch) for this thread's sums of the taps of row ky.
        auto each = [&](auto f) {
#pragma unroll
            for (int mt = 0; mt < T::MT; ++mt) {
#pragma unroll
                for (int kx = 0; kx < 3; ++kx) {
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        f(acc[mt][ky * 3 + kx][i], hand[((mt * 3 + kx) * 4 + i) * GROUP + slot]);
                    }
                }
            }
        };
        // The mma of the last tile (or the previous row's additions) are done with scratch.
        __syncthreads();
        if (wk == 1) {
            each([](float& sum, float& word) { word = sum; });
        }
        __syncthreads();
        if (wk == 0) {
            each([](float& sum, float& word) { sum += word; });
        }
    }
}

// acc[mt][tap] = {D[g][2t], D[g][2t + 1], D[g + 8][2t], D[g + 8][2t + 1]}: rows c_out, columns
// c_in, stored at the OIHW position (co, ci, tap) of this split's partial sums (by the first k
// group's warps, which hold the whole sums); then, in the bias block, the bias gradient's
// partial sum of each dy row: the 8 lanes of a row (lanes 8i .. 8i + 7) summed 4 pixels each of
// every k tile, added in a fixed order.
template <class T>
__device__ void store_sums(const ConvParams& p, const Place<T>& place, const float (&acc)[T::MT][TAPS][4],
                           const float (&a_sum)[T::A_PIECES], int a_row) {
    const int M = p.c_out;
    const int N = p.c_in * TAPS;
    const int co0 = place.co0, ci0 = place.ci0, g = place.g, t = place.t, wm = place.wm, wc = place.wc;
    float* out = p.out + static_cast<size_t>(blockIdx.z) * M * N;
    const bool holds_sums = T::KS == 1 || place.wk == 0;
#pragma unroll
    for (int mt = 0; mt < T::MT && holds_sums; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int co = co0 + wm + mt * 16 + g + 8 * half;
            if (co >= M) {
                continue;
            }
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                float* o = out + static_cast<size_t>(co) * N + (ci0 + wc + 2 * t + j) * TAPS;
#pragma unroll
                for (int tap = 0; tap < TAPS; ++tap) {
                    o[tap] = acc[mt][tap][2 * half + j];
                }
            }
        }
    }
    if (place.bias_block) {
#pragma unroll
        for (int j = 0; j < T::A_PIECES; ++j) {
            float sum = a_sum[j];
#pragma unroll
            for (int offset = 1; offset < 8; offset *= 2) {
                sum += __shfl_xor_sync(0xffffffffu, sum, offset);
            }
            const int co = co0 + a_row + 32 * j;
            if (threadIdx.x % 8 == 0 && co < M) {
                p.out_bias[static_cast<size_t>(blockIdx.z) * M + co] = sum;
            }
        }
    }
}

// The mma of one k slice for all nine taps: tap (ky, kx) reads its B fragment at sb[at(ky, kx)]
// and 4 words on (the fragment's second k half), channel wc + g's words at sb.
template <class T, class Math, class At>
__device__ __forceinline__ void mma_taps(float (&acc)[T::MT][TAPS][4], const uint32_t (&af)[T::MT][4],
                                         const uint32_t* sb, At at) {
#pragma unroll
    for (int ky = 0; ky < 3; ++ky) {
#pragma unroll
        for (int kx = 0; kx < 3; ++kx) {
            const int i = at(ky, kx);
            const uint32_t b[2] = {sb[i], sb[i + 4]};
#pragma unroll
            for (int mt = 0; mt < T::MT; ++mt) {
                Math::mma(acc[mt][ky * 3 + kx], af[mt], b);
            }
        }
    }
}

template <class T, class Math>
__device__ void backward_weight(const ConvParams& p) {
    static_assert(Math::PACK == 1, "one operand value a word (TF32)");
    const Place<T> place(p);
    const int hw = place.hw, k_begin = place.k_begin, k_end = place.k_end, ci0 = place.ci0, co0 = place.co0;
    const int lane = place.lane, g = place.g, t = place.t, wm = place.wm, wc = place.wc, wk = place.wk;
    const bool bias_block = place.bias_block;

    alignas(16) __shared__ uint32_t stages[2 * T::STAGE];
    static_assert(T::KS == 1 || 2 * T::STAGE >= 3072, "add_k_groups' scratch fits the stages");
    const Copies<T> c(threadIdx.x, hw);

    // Rounds the words this thread copied into stage s, once they have landed (its own copies:
    // no other thread's need be waited for), adding its dy values to the bias sums first.
    float a_sum[T::A_PIECES] = {};
    auto round_own = [&](uint32_t* s) {
#pragma unroll
        for (int j = 0; j < T::A_PIECES; ++j) {
            uint32_t* w = s + c.a_to + 32 * j * A_STRIDE;
            if (bias_block) {
                const float4 v = *reinterpret_cast<const float4*>(w);
                a_sum[j] += (v.x + v.y) + (v.z + v.w);
            }
            round4<Math>(w);
        }
#pragma unroll
        for (int pass = 0; pass < T::PASSES; ++pass) {
            round4<Math>(s + c.b_to + pass * T::ROWS_AT_ONCE * T::HC);
        }
        if (c.edge) {
            s[c.e_to] = Math::word(__uint_as_float(s[c.e_to]), 0.0f);
        }
    };

    float acc[T::MT][TAPS][4] = {};
    const int a_shift = T::group_pixel(wk), b_shift = T::group_halo(wk);
    if (k_begin < k_end) {
        TileCursor next(p, k_begin);
        c.issue(p, stages, next, co0, ci0, hw);
        next.next<T::WT>(p);
        int stage = 0;
        for (int k0 = k_begin; k0 < k_end; k0 += BK) {
            uint32_t* s = stages + stage * T::STAGE;
            lrc::cp_async_wait_all();
            round_own(s);
            // Every thread's words of this stage are rounded, and every thread is done with
            // the other stage (read by the previous tile's mma), which the next copies overwrite.
            __syncthreads();
            if (k0 + BK < k_end) {
                c.issue(p, stages + (stage ^ 1) * T::STAGE, next, co0, ci0, hw);
                next.next<T::WT>(p);
            }
            // This warp's slices of 8 pixels: all four, or its k group's two, which lie as the
            // first group's do, shifted (Tile::group_pixel, group_halo).
            const uint32_t* sb = s + T::A_WORDS + (wc + g) * T::PLANE + T::LEFT + t + b_shift;
#pragma unroll(T::SLICES_UNROLLED)
            for (int slice = 0; slice < BK / 8 / T::KS; ++slice) {
                uint32_t af[T::MT][4];
#pragma unroll
                for (int mt = 0; mt < T::MT; ++mt) {
                    // Lanes 8q..8q+7 give the rows of matrix q: rows 0-7 and 8-15 of the
                    // fragment at words 8 slice (q = 0, 1) and 8 slice + 4 (q = 2, 3).
                    const int row = wm + mt * 16 + lane % 16;
                    lrc::load_matrix_x4(af[mt], s, row * A_STRIDE + a_shift + 8 * slice + (lane / 16) * 4);
                }
                // Pixels 8 slice .. 8 slice + 7 of the tile lie in one image row (WT >= 8):
                // row r, columns c .. c + 7.
                const int r = 8 * slice / T::WT;
                const int col = 8 * slice % T::WT;
                // b = {B[t][g], B[t + 4][g]}: columns c + t and c + t + 4 of row r, channel
                // wc + g, read at the tap's offset (image column - 1 + kx).
                mma_taps<T, Math>(acc, af, sb, [&](int ky, int kx) { return (r + ky) * T::HC + col + kx; });
            }
            stage ^= 1;
        }
    }
    if constexpr (T::KS == 2) {
        add_k_groups<T>(acc, stages, wk);
    }
    store_sums<T>(p, place, acc, a_sum, c.a_row);
}

// BF16: the k tile is staged in FP32 as above (one stage), then each thread converts the words
// it copied into BF16 pairs (Tile's E, O and dy layout; a value's pair partner may be another
// thread's, so pairs are written in 16-bit halves where they straddle two threads' copies), and
// the mma (m16n8k16) read the pairs. Two barriers a tile: before the conversion (every warp is
// done with the previous tile's pairs) and after it (the pairs are whole).
template <class T>
__device__ void backward_weight_bf16(const ConvParams& p) {
    using Math = v2::Bf16;
    const Place<T> place(p);
    const int hw = place.hw, k_begin = place.k_begin, k_end = place.k_end, ci0 = place.ci0, co0 = place.co0;
    const int lane = place.lane, g = place.g, t = place.t, wm = place.wm, wc = place.wc, wk = place.wk;
    const bool bias_block = place.bias_block;

    alignas(16) __shared__ uint32_t staged[T::STAGE];
    alignas(16) __shared__ uint32_t packed[T::PACKED];
    static_assert(T::KS == 1 || T::PACKED >= 3072, "add_k_groups' scratch fits the pairs");
    const Copies<T> c(threadIdx.x, hw);

    // This thread's staged values, converted: dy's 4 pixels to 2 pairs; a halo piece
    // h[4q + 1 .. 4q + 4] (q = b_column / 4) to O[2q], O[2q + 1], E[2q + 1] whole and the high
    // half of E[2q], the low half of E[2q + 2]; a border word to E[0]'s low half (left) or
    // E[WT / 2]'s high half (right). The dy values go to the bias sums first.
    float a_sum[T::A_PIECES] = {};
    auto convert_own = [&]() {
#pragma unroll
        for (int j = 0; j < T::A_PIECES; ++j) {
            const float4 v = *reinterpret_cast<const float4*>(staged + c.a_to + 32 * j * A_STRIDE);
            if (bias_block) {
                a_sum[j] += (v.x + v.y) + (v.z + v.w);
            }
            *reinterpret_cast<uint2*>(packed + (c.a_row + 32 * j) * T::A16_STRIDE + c.a_pixel / 2) =
                uint2{Math::word(v.x, v.y), Math::word(v.z, v.w)};
        }
        const int q2 = c.b_column / 2;
#pragma unroll
        for (int pass = 0; pass < T::PASSES; ++pass) {
            const float4 v = *reinterpret_cast<const float4*>(staged + c.b_to + pass * T::ROWS_AT_ONCE * T::HC);
            const int halo_row = c.b_row + pass * T::ROWS_AT_ONCE;
            uint32_t* row = packed + T::A16_WORDS + c.b_channel * T::PLANE16 + halo_row * T::ROW16;
            *reinterpret_cast<uint2*>(row + T::ODD + q2) = uint2{Math::word(v.x, v.y), Math::word(v.z, v.w)};
            row[q2 + 1] = Math::word(v.y, v.z);
            uint16_t* halves = reinterpret_cast<uint16_t*>(row);
            halves[2 * q2 + 1] = static_cast<uint16_t>(Math::word(v.x, 0.0f));
            halves[2 * q2 + 4] = static_cast<uint16_t>(Math::word(v.w, 0.0f));
        }
        if (c.edge) {
            const int channel = threadIdx.x / 2 % BC;
            uint32_t* row = packed + T::A16_WORDS + channel * T::PLANE16 + c.e_row * T::ROW16;
            const uint32_t pair = Math::word(__uint_as_float(staged[c.e_to]), 0.0f);
            reinterpret_cast<uint16_t*>(row)[c.e_side ? T::WT + 1 : 0] = static_cast<uint16_t>(pair);
        }
    };

    float acc[T::MT][TAPS][4] = {};
    const int a_shift = T::group_pixel(wk) / 2, b_shift = T::group_pairs(wk);
    if (k_begin < k_end) {
        TileCursor next(p, k_begin);
        c.issue(p, staged, next, co0, ci0, hw);
        next.next<T::WT>(p);
        for (int k0 = k_begin; k0 < k_end; k0 += BK) {
            lrc::cp_async_wait_all();
            __syncthreads();
            convert_own();
            __syncthreads();
            // This thread's staged words are converted: the next tile's copies may land there.
            if (k0 + BK < k_end) {
                c.issue(p, staged, next, co0, ci0, hw);
                next.next<T::WT>(p);
            }
            // This warp's slices of 16 pixels: both, or its k group's one, shifted as in TF32.
            const uint32_t* sb = packed + T::A16_WORDS + (wc + g) * T::PLANE16 + t + b_shift;
#pragma unroll
            for (int slice = 0; slice < BK / 16 / T::KS; ++slice) {
                uint32_t af[T::MT][4];
#pragma unroll
                for (int mt = 0; mt < T::MT; ++mt) {
                    // As in TF32, in words of two pixels: 8 words per 16-pixel slice.
                    const int row = wm + mt * 16 + lane % 16;
                    lrc::load_matrix_x4(af[mt], packed, row * T::A16_STRIDE + a_shift + 8 * slice + (lane / 16) * 4);
                }
                // Pixels 16 slice .. 16 slice + 15 lie in one image row: row r, columns c .. c + 15.
                const int r = 16 * slice / T::WT;
                const int col = 16 * slice % T::WT;
                // b = {B[2t, 2t + 1][g], B[2t + 8, 2t + 9][g]}: pixels c + 2t (+ 8) read at the
                // tap's offset, h[c + 2t + kx]: E's word (c + 2t + kx) / 2 for an even kx, O's
                // (c + 2t + kx - 1) / 2 for kx = 1.
                mma_taps<T, Math>(acc, af, sb, [&](int ky, int kx) {
                    return (r + ky) * T::ROW16 + (kx % 2 == 0 ? col / 2 + kx / 2 : T::ODD + col / 2);
                });
            }
        }
    }
    if constexpr (T::KS == 2) {
        add_k_groups<T>(acc, packed, wk);
    }
    store_sums<T>(p, place, acc, a_sum, c.a_row);
}

}  // namespace halo
