// Forward and backward-data of the 3x3, stride 1, pad 1 convolution by halo tiles (tf32-mma-halo,
// bf16-mma-halo), in blocks of 32 or 64 output channels (more take more blocks, each staging its
// halo anew):
//   forward        y[co][p] = bias[co] + sum over (ci, ky, kx) of x[ci][p + (ky - 1, kx - 1)] w[co][ci][ky][kx]
//   backward-data  dx[ci][p] = sum over (co, ky, kx) of dy[co][p + (ky - 1, kx - 1)] w[co][ci][2 - ky][2 - kx]
// The second is the first with dy as the input and the weights transposed and turned half way
// round, which their packing does (pack_weight), so one kernel serves both.
//
// The implicit GEMM of the tap-major kernels (m = output pixel, n = output channel, k = (tap,
// channel)) gathers the input once per tap: each value is fetched, checked, rounded and stored
// nine times, and with 32 or 64 output channels a gathered value serves that many products only.
// Here a block owns BN = 32 or 64 output channels and 256 or 128 output pixels of one image (R
// rows of WT columns: 8 x 32 or 16 x 16; 4 x 32 or 8 x 16), and for each chunk of CH input
// channels (8 TF32, 16 BF16: one mma k step) stages the pixels it reads once: R + 2 rows of
// WT + 2 columns (the halo) by cp.async (16 bytes for the columns, laid out 16-byte aligned, 4
// bytes for the borders; zeros stored where the halo leaves the image), with the chunk's packed
// weights of all nine taps (one contiguous block, rounded beforehand). Every tap's A fragment is
// the halo read at that tap's offset. TF32: each thread rounds its own words in place once they
// land; one barrier a chunk, two stages (the next chunk's copies land in one while the mma read
// the other). BF16 (m16n8k16, two channels a register): the block converts the FP32 halo into
// pairs of channels (a pair's two channels are other threads' copies, so after a barrier), which
// the mma read as TF32 reads its channels; one FP32 halo, one of pairs, two weight stages, two
// barriers a chunk.
//
// Warps: 8 (BN = 32) or 4 (BN = 64) along the pixels, 32 each (two m16 tiles: 16 columns of a
// row each), x 1 or 2 along the output channels, 32 each (four n8 tiles): per tap and chunk, 8
// mma from 2 A fragments (4 words each) and 4 B fragments (one 64-bit load each): 256 bytes of
// shared-memory reads per HMMA.
//
// Shapes (the host's halo_forward_applies): 3x3, stride 1, pad 1; input channels a multiple
// of CH; W a multiple of 32 (WT = 32) or of 16 (WT = 16); any H (rows past it are zeros and are
// not stored) and any number of output channels (grid y: blocks of BN; rows past them are the
// packing's zeros); input and output offsets within an image below 2^31; the input 16-byte
// aligned (whole device blocks are).
// Grid: (n * ceil(H / R) * (W / WT), ceil(outputs / BN)), 256 threads; tiles whose buffers pass
// the 48 KiB of static shared memory take Tile::DYNAMIC_BYTES of dynamic shared memory.
//
// Shared memory:
//   halo: [CH channels][PLANE] words; a channel's halo row-major, rows HC = WT + 4 words apart,
//         the left border at word 3, the WT columns from word 4 (16-byte aligned), the right
//         border after them (the next row's unused word 0). A fragment word (pixel g, k word t)
//         of a tap lies at t PLANE + g + offset: PLANE = 8 mod 32 puts the 32 lanes on 32 banks.
//         BF16's pairs: [8][PLANE] words laid out alike, word (c 2j, c 2j + 1) of a pixel in
//         plane j, the lower channel in the low half.
//   weights: [9 taps][BN output channels][8 words], a row's k words in the order 0, 4, 1, 5, 2,
//         6, 3, 7, so that b = {B[t][g], B[t + 4][g]} is one 64-bit load at word 2t (a half
//         warp's loads: 32 distinct banks).
namespace halo_fwd {

constexpr int THREADS = 256;
constexpr int WARPS = THREADS / WARP;
constexpr int K_WORDS = 8;  // words of k a stage: one mma k step (8 TF32, 16 BF16 in pairs)
constexpr int TAPS = 9;

template <int WT_, int BN_, int PACK_>
struct Tile {
    static constexpr int WT = WT_, BN = BN_, PACK = PACK_;
    static_assert(WT == 32 || WT == 16, "tiles 32 or 16 columns wide");
    static_assert(BN == 32 || BN == 64, "32 or 64 output channels a block");
    static_assert(PACK == 1 || PACK == 2, "TF32 or BF16 pairs");
    static constexpr int CH = K_WORDS * PACK;         // input channels a chunk
    static constexpr int WARPS_N = BN / 32;           // warps along the output channels
    static constexpr int WARPS_P = WARPS / WARPS_N;   // and along the pixels, 32 each
    static constexpr int PIXELS = 32 * WARPS_P;       // output pixels a block
    static constexpr int W_WORDS = TAPS * BN * K_WORDS;
    static constexpr int R = PIXELS / WT;  // output rows
    static constexpr int HR = R + 2;       // halo rows
    static constexpr int HC = WT + 4;      // words a halo row
    static constexpr int LEFT = 3;
    // A row's right border is the next row's word 0 (unused there): the last one needs a word
    // past the rows.
    static constexpr int PLANE = BN == 32 ? 392 : 232;
    static_assert(PLANE >= (HR - 1) * HC + LEFT + WT + 2 && PLANE % 32 == 8,
                  "a channel's halo fits its plane, lanes on distinct banks");
    static constexpr int HALO_WORDS = CH * PLANE;  // the FP32 halo of a chunk
    static constexpr int PAIR_WORDS = K_WORDS * PLANE;  // BF16: the same as pairs of channels
    static_assert(HALO_WORDS % 4 == 0 && W_WORDS % 4 == 0, "16-byte copies aligned in every buffer");
    // TF32: two stages of [halo][weights]. BF16: one FP32 halo, its pairs, two weight stages.
    static constexpr int WORDS = PACK == 1 ? 2 * (HALO_WORDS + W_WORDS) : HALO_WORDS + PAIR_WORDS + 2 * W_WORDS;
    // Static shared memory up to its 48 KiB, else dynamic (what the host passes).
    static constexpr bool DYNAMIC = WORDS * sizeof(uint32_t) > 48 * 1024;
    static constexpr unsigned DYNAMIC_BYTES = DYNAMIC ? WORDS * sizeof(uint32_t) : 0;
    // Copies of a chunk: the halo's columns, 16 bytes each (WT / 4 a row), a pass of the block
    // covering ROWS_AT_ONCE rows of all CH channels (thread: row tid / (CH WT / 4) + pass
    // ROWS_AT_ONCE, channel (tid / (WT / 4)) % CH, columns 4 (tid % (WT / 4))); the border
    // words, 4 bytes each (e = tid + pass 256: side e % 2, channel (e / 2) % CH, row e / 2 CH);
    // the weights, 16 bytes each (piece tid + pass 256). BF16's pairs are made likewise with
    // K_WORDS pairs in place of the CH channels.
    static constexpr int PIECES_PER_ROW = WT / 4;
    static constexpr int ROWS_AT_ONCE = THREADS / (CH * PIECES_PER_ROW);
    static constexpr int PASSES = (HR + ROWS_AT_ONCE - 1) / ROWS_AT_ONCE;
    static constexpr int EDGES = CH * HR * 2;
    static constexpr int EDGE_PASSES = (EDGES + THREADS - 1) / THREADS;
    static constexpr int W_PIECES = W_WORDS / 4;
    static constexpr int W_PASSES = (W_PIECES + THREADS - 1) / THREADS;
    static constexpr int PAIR_ROWS_AT_ONCE = THREADS / (K_WORDS * PIECES_PER_ROW);
    static constexpr int PAIR_PASSES = (HR + PAIR_ROWS_AT_ONCE - 1) / PAIR_ROWS_AT_ONCE;
    static constexpr int PAIR_EDGES = K_WORDS * HR * 2;
    static constexpr int PAIR_EDGE_PASSES = (PAIR_EDGES + THREADS - 1) / THREADS;
};

// Where this block stands: its image, first output row and column, first output channel.
struct Place {
    int img, y0, x0, n0;
    template <class T>
    __device__ static Place of(int height, int width) {
        const int row_tiles = (height + T::R - 1) / T::R;
        const int col_tiles = width / T::WT;
        const int b = blockIdx.x;
        const int img = b / (row_tiles * col_tiles);
        const int rest = b - img * row_tiles * col_tiles;
        const int ty = rest / col_tiles;
        return Place{img, ty * T::R, (rest - ty * col_tiles) * T::WT, static_cast<int>(blockIdx.y) * T::BN};
    }
};

// The pass as the kernel sees it: forward reads x (c_in channels) and writes y (c_out);
// backward-data reads dy (c_out) and writes dx (c_in).
struct Pass {
    const float* in;
    float* out;
    int in_channels, out_channels;
    template <bool BACKWARD_DATA>
    __device__ static Pass of(const ConvParams& p) {
        if constexpr (BACKWARD_DATA) {
            return Pass{p.dy, p.out, p.c_out, p.c_in};
        } else {
            return Pass{p.x, p.out, p.c_in, p.c_out};
        }
    }
};

// This thread's share of a chunk's copies (see Tile), the same in every chunk.
template <class T>
struct Copies {
    int row, to, from;  // halo columns: first row, word in a stage, offset in the chunk's image
    __device__ Copies(const ConvParams& p)
        : row(threadIdx.x / (T::CH * T::PIECES_PER_ROW)),
          to(threadIdx.x / T::PIECES_PER_ROW % T::CH * T::PLANE + row * T::HC + T::LEFT + 1 +
             threadIdx.x % T::PIECES_PER_ROW * 4),
          from(threadIdx.x / T::PIECES_PER_ROW % T::CH * p.h * p.w + threadIdx.x % T::PIECES_PER_ROW * 4) {}

    // Border word e of `planes` planes: its plane, halo row, side (right or left), its word
    // within the plane, and its word.
    __device__ static int edge_plane(int e, int planes) { return e / 2 % planes; }
    __device__ static int edge_row(int e, int planes) { return e / (2 * planes); }
    __device__ static bool edge_right(int e) { return e % 2 != 0; }
    __device__ static int edge_at(int e, int planes) {
        return edge_row(e, planes) * T::HC + (edge_right(e) ? T::LEFT + 1 + T::WT : T::LEFT);
    }
    __device__ static int edge_to(int e, int planes) { return edge_plane(e, planes) * T::PLANE + edge_at(e, planes); }

    // Issues the copies of chunk `chunk`, as one group: the halo's columns and borders into
    // `halo` (zeros where they leave the image) and the chunk's packed weights into `weights`.
    __device__ void issue(const ConvParams& p, const Pass& pass, const Place& at, int chunk, uint32_t* halo,
                          uint32_t* weights) const {
        const int hw = p.h * p.w;
        const float* in = pass.in + (static_cast<size_t>(at.img) * pass.in_channels + chunk * T::CH) * hw;
#pragma unroll
        for (int k = 0; k < T::PASSES; ++k) {
            const int r = row + k * T::ROWS_AT_ONCE;
            if (T::HR % T::ROWS_AT_ONCE == 0 || r < T::HR) {
                uint32_t* dst = halo + to + k * T::ROWS_AT_ONCE * T::HC;
                const int y = at.y0 - 1 + r;
                if (static_cast<unsigned>(y) < static_cast<unsigned>(p.h)) {
                    lrc::cp_async_16(dst, in + (from + y * p.w + at.x0));
                } else {
                    *reinterpret_cast<float4*>(dst) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                }
            }
        }
#pragma unroll
        for (int k = 0; k < T::EDGE_PASSES; ++k) {
            const int e = static_cast<int>(threadIdx.x) + k * THREADS;
            if (T::EDGES % THREADS == 0 || e < T::EDGES) {
                uint32_t* dst = halo + edge_to(e, T::CH);
                const int y = at.y0 - 1 + edge_row(e, T::CH);
                const int x = at.x0 + (edge_right(e) ? T::WT : -1);
                if (static_cast<unsigned>(y) < static_cast<unsigned>(p.h) &&
                    static_cast<unsigned>(x) < static_cast<unsigned>(p.w)) {
                    lrc::cp_async_4(dst, in + (edge_plane(e, T::CH) * hw + y * p.w + x));
                } else {
                    *dst = 0u;
                }
            }
        }
        // Packed weights: [column block][chunk][tap][BN][8].
        const float* w =
            p.weight + (static_cast<size_t>(blockIdx.y) * (pass.in_channels / T::CH) + chunk) * T::W_WORDS;
#pragma unroll
        for (int k = 0; k < T::W_PASSES; ++k) {
            const int e = static_cast<int>(threadIdx.x) + k * THREADS;
            if (T::W_PIECES % THREADS == 0 || e < T::W_PIECES) {
                lrc::cp_async_16(weights + 4 * e, w + 4 * e);
            }
        }
        lrc::cp_async_commit();
    }

    // Rounds the halo words this thread copied into stage s to TF32, once they have landed (its
    // own copies: no other thread's need be waited for). The weights arrive rounded.
    template <class Math>
    __device__ void round_own(uint32_t* s) const {
#pragma unroll
        for (int k = 0; k < T::PASSES; ++k) {
            if (T::HR % T::ROWS_AT_ONCE == 0 || row + k * T::ROWS_AT_ONCE < T::HR) {
                halo::round4<Math>(s + to + k * T::ROWS_AT_ONCE * T::HC);
            }
        }
#pragma unroll
        for (int k = 0; k < T::EDGE_PASSES; ++k) {
            const int e = static_cast<int>(threadIdx.x) + k * THREADS;
            if (T::EDGES % THREADS == 0 || e < T::EDGES) {
                uint32_t* w = s + edge_to(e, T::CH);
                *w = Math::word(__uint_as_float(*w), 0.0f);
            }
        }
    }

    // BF16: converts the FP32 halo of a chunk into pairs of channels, word (c 2j, c 2j + 1) of
    // a pixel in plane j (the lower channel in the low half), every word of it (a pair's two
    // channels were copied by other threads: the halo must be whole, after a barrier).
    template <class Math>
    __device__ static void make_pairs(const uint32_t* halo, uint32_t* pairs) {
        const int prow = threadIdx.x / (K_WORDS * T::PIECES_PER_ROW);
        const int j = threadIdx.x / T::PIECES_PER_ROW % K_WORDS;
        const int at = prow * T::HC + T::LEFT + 1 + threadIdx.x % T::PIECES_PER_ROW * 4;
#pragma unroll
        for (int k = 0; k < T::PAIR_PASSES; ++k) {
            if (T::HR % T::PAIR_ROWS_AT_ONCE == 0 || prow + k * T::PAIR_ROWS_AT_ONCE < T::HR) {
                const int w = at + k * T::PAIR_ROWS_AT_ONCE * T::HC;
                const float4 lo = *reinterpret_cast<const float4*>(halo + 2 * j * T::PLANE + w);
                const float4 hi = *reinterpret_cast<const float4*>(halo + (2 * j + 1) * T::PLANE + w);
                *reinterpret_cast<uint4*>(pairs + j * T::PLANE + w) =
                    uint4{Math::word(lo.x, hi.x), Math::word(lo.y, hi.y), Math::word(lo.z, hi.z), Math::word(lo.w, hi.w)};
            }
        }
#pragma unroll
        for (int k = 0; k < T::PAIR_EDGE_PASSES; ++k) {
            const int e = static_cast<int>(threadIdx.x) + k * THREADS;
            if (T::PAIR_EDGES % THREADS == 0 || e < T::PAIR_EDGES) {
                const int w = edge_at(e, K_WORDS);
                const int pj = edge_plane(e, K_WORDS);
                pairs[pj * T::PLANE + w] = Math::word(__uint_as_float(halo[2 * pj * T::PLANE + w]),
                                                      __uint_as_float(halo[(2 * pj + 1) * T::PLANE + w]));
            }
        }
    }
};

// The mma of one chunk: for each tap, this warp's A fragments read at the tap's offset from
// `a` (TF32: the halo; BF16: its pairs; a_at: a thread's word of each m16 tile at tap (0, 0)),
// and its B fragments from the chunk's weights `sw` (b_at: a thread's word; wn: the warp's
// first output channel).
template <class T, class Math>
__device__ __forceinline__ void mma_chunk(float (&acc)[2][4][4], const uint32_t* a, const uint32_t* sw,
                                          const int (&a_at)[2], int b_at, int wn) {
#pragma unroll
    for (int ky = 0; ky < 3; ++ky) {
#pragma unroll
        for (int kx = 0; kx < 3; ++kx) {
            // a = {A[g][t], A[g + 8][t], A[g][t + 4], A[g + 8][t + 4]}: pixels g and g + 8 of the
            // tile, k words t and t + 4 (channels, or pairs of channels), at the tap's offset.
            uint32_t af[2][4];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const uint32_t* at = a + a_at[mt] + ky * T::HC + kx;
                af[mt][0] = at[0];
                af[mt][1] = at[8];
                af[mt][2] = at[4 * T::PLANE];
                af[mt][3] = at[4 * T::PLANE + 8];
            }
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
                const uint2 b2 = lrc::load_pair(sw + ((ky * 3 + kx) * T::BN + wn + nt * 8) * K_WORDS + b_at);
                const uint32_t b[2] = {b2.x, b2.y};
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    Math::mma(acc[mt][nt], af[mt], b);
                }
            }
        }
    }
}

template <class T, class Math, bool BACKWARD_DATA>
__device__ void convolve(const ConvParams& p) {
    static_assert(Math::PACK == T::PACK, "the tile's precision");
    const Pass pass = Pass::of<BACKWARD_DATA>(p);
    const Place at = Place::of<T>(p.h, p.w);
    const Copies<T> c(p);
    const int lane = threadIdx.x % WARP;
    const int warp = threadIdx.x / WARP % T::WARPS_P;     // this warp's pixels
    const int wn = threadIdx.x / WARP / T::WARPS_P * 32;  // and its first output channel
    const int g = lane / 4;
    const int t = lane % 4;

    uint32_t* words;
    if constexpr (T::DYNAMIC) {
        LRC_DYNAMIC_SHARED(uint32_t, dynamic);
        words = dynamic;
    } else {
        alignas(16) __shared__ uint32_t fixed[T::WORDS];
        words = fixed;
    }

    // This warp's pixels: m16 tile mt holds pixels 32 warp + 16 mt + (0..15) of the block,
    // 16 columns of one row (WT >= 16): its lane g reads column col + g (and + 8) of that row.
    int a_at[2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
        const int first = 32 * warp + 16 * mt;
        a_at[mt] = t * T::PLANE + (first / T::WT) * T::HC + T::LEFT + first % T::WT + g;
    }
    const int b_at = g * K_WORDS + 2 * t;

    float acc[2][4][4] = {};
    const int chunks = pass.in_channels / T::CH;
    if constexpr (T::PACK == 1) {
        // Two stages of [halo][weights]; each thread rounds its own halo words once they land.
        constexpr int STAGE = T::HALO_WORDS + T::W_WORDS;
        c.issue(p, pass, at, 0, words, words + T::HALO_WORDS);
        for (int chunk = 0; chunk < chunks; ++chunk) {
            uint32_t* s = words + (chunk % 2) * STAGE;
            lrc::cp_async_wait_all();
            c.template round_own<Math>(s);
            // Every thread's words of this stage are rounded, and every thread is done with the
            // other stage (read by the previous chunk's mma), which the next copies overwrite.
            __syncthreads();
            if (chunk + 1 < chunks) {
                uint32_t* next = words + ((chunk + 1) % 2) * STAGE;
                c.issue(p, pass, at, chunk + 1, next, next + T::HALO_WORDS);
            }
            mma_chunk<T, Math>(acc, s, s + T::HALO_WORDS, a_at, b_at, wn);
        }
    } else {
        // One FP32 halo, its pairs, two weight stages: two barriers a chunk.
        uint32_t* halo = words;
        uint32_t* pairs = words + T::HALO_WORDS;
        uint32_t* weights = pairs + T::PAIR_WORDS;
        c.issue(p, pass, at, 0, halo, weights);
        for (int chunk = 0; chunk < chunks; ++chunk) {
            lrc::cp_async_wait_all();
            // Every thread's copies of this chunk have landed, and every warp is done with the
            // previous chunk's pairs.
            __syncthreads();
            Copies<T>::template make_pairs<Math>(halo, pairs);
            // The pairs are whole; the FP32 halo may take the next chunk, and so may the other
            // weight stage (read by the previous chunk's mma, before the barrier above).
            __syncthreads();
            if (chunk + 1 < chunks) {
                c.issue(p, pass, at, chunk + 1, halo, weights + ((chunk + 1) % 2) * T::W_WORDS);
            }
            mma_chunk<T, Math>(acc, pairs, weights + (chunk % 2) * T::W_WORDS, a_at, b_at, wn);
        }
    }

    // acc[mt][nt] = {D[g][2t], D[g][2t + 1], D[g + 8][2t], D[g + 8][2t + 1]}: pixels of tile
    // mt, output channels n0 + wn + 8 nt + 2t (+ 1).
    const int hw = p.h * p.w;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
        const int first = 32 * warp + 16 * mt;
        const int y = at.y0 + first / T::WT;
        if (y >= p.h) {
            continue;
        }
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int co = at.n0 + wn + 8 * nt + 2 * t + j;
                if (co >= pass.out_channels) {
                    continue;
                }
                const float bias = p.bias != nullptr ? p.bias[co] : 0.0f;
                float* o = pass.out + (static_cast<size_t>(at.img) * pass.out_channels + co) * hw + y * p.w + at.x0 +
                           first % T::WT + g;
                o[0] = acc[mt][nt][j] + bias;
                o[8] = acc[mt][nt][2 + j] + bias;
            }
        }
    }
}

// The weights of the 3x3 convolution (OIHW) as convolve reads them, rounded to M's precision:
// [column block][chunk][tap][BN output channels][8 words], a row's words k = 0, 4, 1, 5, 2, 6,
// 3, 7 (k words of PACK input channels: chunk CH + PACK k + (0, PACK - 1), the lower in the low
// half); forward: w[o][i][tap], backward-data (o = input channel, i = output channel of the
// convolution): w[i][o][8 - tap]; zero past the output channels. One thread per word,
// grid-stride.
template <class M, int BN, bool BACKWARD_DATA>
__device__ void pack_weight(const ConvParams& p) {
    constexpr int W_WORDS = TAPS * BN * K_WORDS;
    constexpr int CH = K_WORDS * M::PACK;
    const int outs = BACKWARD_DATA ? p.c_in : p.c_out;
    const int ins = BACKWARD_DATA ? p.c_out : p.c_in;
    const int chunks = ins / CH;
    const size_t words = static_cast<size_t>((outs + BN - 1) / BN) * chunks * W_WORDS;
    uint32_t* out = reinterpret_cast<uint32_t*>(p.out);
    for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < words;
         i += static_cast<size_t>(gridDim.x) * blockDim.x) {
        const int j = static_cast<int>(i % K_WORDS);
        const int row = static_cast<int>(i / K_WORDS % BN);
        const int tap = static_cast<int>(i / (K_WORDS * BN) % TAPS);
        const size_t block_chunk = i / W_WORDS;
        const int chunk = static_cast<int>(block_chunk % chunks);
        const int o = static_cast<int>(block_chunk / chunks) * BN + row;
        const int k = j / 2 + (j % 2) * 4;  // word j holds k = 0, 4, 1, 5, ...
        float v[2] = {0.0f, 0.0f};
        if (o < outs) {
#pragma unroll
            for (int h = 0; h < M::PACK; ++h) {
                const int in = chunk * CH + k * M::PACK + h;
                v[h] = BACKWARD_DATA ? p.weight[(static_cast<size_t>(in) * p.c_in + o) * TAPS + (TAPS - 1 - tap)]
                                     : p.weight[(static_cast<size_t>(o) * p.c_in + in) * TAPS + tap];
            }
        }
        out[i] = M::word(v[0], v[1]);
    }
}

}  // namespace halo_fwd
