// Forward and backward-data of the 3x3, stride 1, pad 1 convolution by halo tiles (tf32-mma-halo,
// TF32), for 64 output channels or fewer:
//   forward        y[co][p] = bias[co] + sum over (ci, ky, kx) of x[ci][p + (ky - 1, kx - 1)] w[co][ci][ky][kx]
//   backward-data  dx[ci][p] = sum over (co, ky, kx) of dy[co][p + (ky - 1, kx - 1)] w[co][ci][2 - ky][2 - kx]
// The second is the first with dy as the input and the weights transposed and turned half way
// round, which their packing does (pack_halo_weight), so one kernel serves both.
//
// The implicit GEMM of the tap-major kernels (m = output pixel, n = output channel, k = (tap,
// channel)) gathers the input once per tap: each value is fetched, checked, rounded and stored
// nine times, and with 32 or 64 output channels a gathered value serves that many products only.
// Here a block owns BN = 32 or 64 output channels and 256 or 128 output pixels of one image (R
// rows of WT columns: 8 x 32 or 16 x 16; 4 x 32 or 8 x 16), and for each chunk of 8 input
// channels stages the pixels it reads once: R + 2 rows
// of WT + 2 columns (the halo) by cp.async (16 bytes for the columns, laid out 16-byte aligned,
// 4 bytes for the borders; zeros stored where the halo leaves the image), with the chunk's
// packed weights of all nine taps (one contiguous block). Each thread rounds its own words in
// place once they land; one barrier a chunk, two stages (the next chunk's copies land in one
// while the mma read the other). Every tap's A fragment is the halo read at that tap's offset.
//
// Warps: 8 (BN = 32) or 4 (BN = 64) along the pixels, 32 each (two m16 tiles: 16 columns of a
// row each), x 1 or 2 along the output channels, 32 each (four n8 tiles): per tap and chunk, 8
// mma from 2 A fragments (4 words each) and 4 B fragments (one 64-bit load each): 256 bytes of
// shared-memory reads per HMMA.
//
// Shapes (the host's halo_forward_applies): 3x3, stride 1, pad 1; input channels a multiple
// of 8; W a multiple of 32 (WT = 32) or of 16 (WT = 16); any H (rows past it are zeros and are
// not stored) and any number of output channels (grid y: blocks of BN; rows past them are the
// packing's zeros); input and output offsets within an image below 2^31; the input 16-byte
// aligned (whole device blocks are).
// Grid: (n * ceil(H / R) * (W / WT), ceil(outputs / BN)), 256 threads; BN = 64 takes
// Tile::DYNAMIC_BYTES of dynamic shared memory (its stages pass the 48 KiB of static).
//
// Shared memory, per stage:
//   halo: [8 channels][PLANE] words; a channel's halo row-major, rows HC = WT + 4 words apart,
//         the left border at word 3, the WT columns from word 4 (16-byte aligned), the right
//         border after them (the next row's unused word 0). A fragment word (pixel g, channel t) of a tap lies at t PLANE +
//         g + offset: PLANE = 8 mod 32 puts the 32 lanes on 32 banks.
//   weights: [9 taps][BN output channels][8 words], a row's words in the order k = 0, 4, 1,
//         5, 2, 6, 3, 7, so that b = {B[t][g], B[t + 4][g]} is one 64-bit load at word 2t
//         (a half warp's loads: 32 distinct banks).
namespace halo_fwd {

constexpr int THREADS = 256;
constexpr int WARPS = THREADS / WARP;
constexpr int CHUNK = 8;  // input channels a stage: one mma k step
constexpr int TAPS = 9;

template <int WT_, int BN_>
struct Tile {
    static constexpr int WT = WT_, BN = BN_;
    static_assert(WT == 32 || WT == 16, "tiles 32 or 16 columns wide");
    static_assert(BN == 32 || BN == 64, "32 or 64 output channels a block");
    static constexpr int WARPS_N = BN / 32;           // warps along the output channels
    static constexpr int WARPS_P = WARPS / WARPS_N;   // and along the pixels, 32 each
    static constexpr int PIXELS = 32 * WARPS_P;       // output pixels a block
    static constexpr int W_WORDS = TAPS * BN * CHUNK;
    static constexpr int R = PIXELS / WT;  // output rows
    static constexpr int HR = R + 2;       // halo rows
    static constexpr int HC = WT + 4;      // words a halo row
    static constexpr int LEFT = 3;
    // A row's right border is the next row's word 0 (unused there): the last one needs a word
    // past the rows.
    static constexpr int PLANE = BN == 32 ? 392 : 232;
    static_assert(PLANE >= (HR - 1) * HC + LEFT + WT + 2 && PLANE % 32 == 8,
                  "a channel's halo fits its plane, lanes on distinct banks");
    static constexpr int HALO_WORDS = CHUNK * PLANE;
    static constexpr int STAGE = HALO_WORDS + W_WORDS;
    static_assert(HALO_WORDS % 4 == 0 && STAGE % 4 == 0, "16-byte copies aligned in every stage");
    // Two stages in static shared memory up to its 48 KiB, else dynamic (what the host passes).
    static constexpr bool DYNAMIC = 2 * STAGE * sizeof(uint32_t) > 48 * 1024;
    static constexpr unsigned DYNAMIC_BYTES = DYNAMIC ? 2 * STAGE * sizeof(uint32_t) : 0;
    // Copies of a chunk: the halo's columns, 16 bytes each (WT / 4 a row), a pass of the block
    // covering ROWS_AT_ONCE rows of all 8 channels (thread: row tid / (8 WT / 4) + pass
    // ROWS_AT_ONCE, channel (tid / (WT / 4)) % 8, columns 4 (tid % (WT / 4))); the border words,
    // 4 bytes each (e = tid + pass 256: side e % 2, channel (e / 2) % 8, row e / 16); the
    // weights, 16 bytes each (piece tid + pass 256).
    static constexpr int PIECES_PER_ROW = WT / 4;
    static constexpr int ROWS_AT_ONCE = THREADS / (CHUNK * PIECES_PER_ROW);
    static constexpr int PASSES = (HR + ROWS_AT_ONCE - 1) / ROWS_AT_ONCE;
    static constexpr int EDGES = CHUNK * HR * 2;
    static constexpr int EDGE_PASSES = (EDGES + THREADS - 1) / THREADS;
    static constexpr int W_PIECES = W_WORDS / 4;
    static constexpr int W_PASSES = (W_PIECES + THREADS - 1) / THREADS;
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
        : row(threadIdx.x / (CHUNK * T::PIECES_PER_ROW)),
          to(threadIdx.x / T::PIECES_PER_ROW % CHUNK * T::PLANE + row * T::HC + T::LEFT + 1 +
             threadIdx.x % T::PIECES_PER_ROW * 4),
          from(threadIdx.x / T::PIECES_PER_ROW % CHUNK * p.h * p.w + threadIdx.x % T::PIECES_PER_ROW * 4) {}

    // Border word e: its halo row, side (right or left), and word in a stage.
    __device__ static int edge_row(int e) { return e / (2 * CHUNK); }
    __device__ static bool edge_right(int e) { return e % 2 != 0; }
    __device__ static int edge_to(int e) {
        return e / 2 % CHUNK * T::PLANE + edge_row(e) * T::HC + (edge_right(e) ? T::LEFT + 1 + T::WT : T::LEFT);
    }

    // Issues the copies of chunk `chunk` into stage s, as one group: the halo's columns and
    // borders (zeros where they leave the image) and the chunk's packed weights.
    __device__ void issue(const ConvParams& p, const Pass& pass, const Place& at, int chunk, uint32_t* s) const {
        const int hw = p.h * p.w;
        const float* in = pass.in + (static_cast<size_t>(at.img) * pass.in_channels + chunk * CHUNK) * hw;
#pragma unroll
        for (int k = 0; k < T::PASSES; ++k) {
            const int r = row + k * T::ROWS_AT_ONCE;
            if (T::HR % T::ROWS_AT_ONCE == 0 || r < T::HR) {
                uint32_t* dst = s + to + k * T::ROWS_AT_ONCE * T::HC;
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
                uint32_t* dst = s + edge_to(e);
                const int y = at.y0 - 1 + edge_row(e);
                const int x = at.x0 + (edge_right(e) ? T::WT : -1);
                if (static_cast<unsigned>(y) < static_cast<unsigned>(p.h) &&
                    static_cast<unsigned>(x) < static_cast<unsigned>(p.w)) {
                    lrc::cp_async_4(dst, in + (e / 2 % CHUNK * hw + y * p.w + x));
                } else {
                    *dst = 0u;
                }
            }
        }
        // Packed weights: [column block][chunk][tap][BN][8].
        const float* w =
            p.weight + (static_cast<size_t>(blockIdx.y) * (pass.in_channels / CHUNK) + chunk) * T::W_WORDS;
#pragma unroll
        for (int k = 0; k < T::W_PASSES; ++k) {
            const int e = static_cast<int>(threadIdx.x) + k * THREADS;
            if (T::W_PIECES % THREADS == 0 || e < T::W_PIECES) {
                lrc::cp_async_16(s + T::HALO_WORDS + 4 * e, w + 4 * e);
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
                uint32_t* w = s + edge_to(e);
                *w = Math::word(__uint_as_float(*w), 0.0f);
            }
        }
    }
};

template <class T, class Math, bool BACKWARD_DATA>
__device__ void convolve(const ConvParams& p) {
    static_assert(Math::PACK == 1, "one operand value a word (TF32)");
    const Pass pass = Pass::of<BACKWARD_DATA>(p);
    const Place at = Place::of<T>(p.h, p.w);
    const Copies<T> c(p);
    const int lane = threadIdx.x % WARP;
    const int warp = threadIdx.x / WARP % T::WARPS_P;  // this warp's pixels
    const int wn = threadIdx.x / WARP / T::WARPS_P * 32;  // and its first output channel
    const int g = lane / 4;
    const int t = lane % 4;

    uint32_t* stages;
    if constexpr (T::DYNAMIC) {
        LRC_DYNAMIC_SHARED(uint32_t, words);
        stages = words;
    } else {
        alignas(16) __shared__ uint32_t words[2 * T::STAGE];
        stages = words;
    }

    // This warp's pixels: m16 tile mt holds pixels 32 warp + 16 mt + (0..15) of the block,
    // 16 columns of one row (WT >= 16): its lane g reads column col + g (and + 8) of that row.
    int a_at[2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
        const int first = 32 * warp + 16 * mt;
        a_at[mt] = t * T::PLANE + (first / T::WT) * T::HC + T::LEFT + first % T::WT + g;
    }
    const int b_at = g * CHUNK + 2 * t;

    float acc[2][4][4] = {};
    const int chunks = pass.in_channels / CHUNK;
    c.issue(p, pass, at, 0, stages);
    for (int chunk = 0; chunk < chunks; ++chunk) {
        uint32_t* s = stages + (chunk % 2) * T::STAGE;
        lrc::cp_async_wait_all();
        c.template round_own<Math>(s);
        // Every thread's words of this stage are rounded, and every thread is done with the
        // other stage (read by the previous chunk's mma), which the next copies overwrite.
        __syncthreads();
        if (chunk + 1 < chunks) {
            c.issue(p, pass, at, chunk + 1, stages + ((chunk + 1) % 2) * T::STAGE);
        }
        const uint32_t* sw = s + T::HALO_WORDS;
#pragma unroll
        for (int ky = 0; ky < 3; ++ky) {
#pragma unroll
            for (int kx = 0; kx < 3; ++kx) {
                // a = {A[g][t], A[g + 8][t], A[g][t + 4], A[g + 8][t + 4]}: pixels g and g + 8
                // of the tile, channels t and t + 4, read at the tap's offset.
                uint32_t af[2][4];
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    const uint32_t* a = s + a_at[mt] + ky * T::HC + kx;
                    af[mt][0] = a[0];
                    af[mt][1] = a[8];
                    af[mt][2] = a[4 * T::PLANE];
                    af[mt][3] = a[4 * T::PLANE + 8];
                }
#pragma unroll
                for (int nt = 0; nt < 4; ++nt) {
                    const uint2 b2 = lrc::load_pair(sw + ((ky * 3 + kx) * T::BN + wn + nt * 8) * CHUNK + b_at);
                    const uint32_t b[2] = {b2.x, b2.y};
#pragma unroll
                    for (int mt = 0; mt < 2; ++mt) {
                        Math::mma(acc[mt][nt], af[mt], b);
                    }
                }
            }
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

// The weights of the 3x3 convolution (OIHW) as convolve reads them, rounded to TF32:
// [column block][chunk][tap][BN output channels][8 words], a row's words k = 0, 4, 1, 5, 2, 6,
// 3, 7 (input channels chunk 8 + k); forward: w[o][i][tap], backward-data (o = input channel,
// i = output channel of the convolution): w[i][o][8 - tap]; zero past the output channels.
// One thread per word, grid-stride.
template <class M, int BN, bool BACKWARD_DATA>
__device__ void pack_weight(const ConvParams& p) {
    constexpr int W_WORDS = TAPS * BN * CHUNK;
    const int outs = BACKWARD_DATA ? p.c_in : p.c_out;
    const int ins = BACKWARD_DATA ? p.c_out : p.c_in;
    const int chunks = ins / CHUNK;
    const size_t words = static_cast<size_t>((outs + BN - 1) / BN) * chunks * W_WORDS;
    uint32_t* out = reinterpret_cast<uint32_t*>(p.out);
    for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < words;
         i += static_cast<size_t>(gridDim.x) * blockDim.x) {
        const int j = static_cast<int>(i % CHUNK);
        const int row = static_cast<int>(i / CHUNK % BN);
        const int tap = static_cast<int>(i / (CHUNK * BN) % TAPS);
        const size_t block_chunk = i / W_WORDS;
        const int chunk = static_cast<int>(block_chunk % chunks);
        const int o = static_cast<int>(block_chunk / chunks) * BN + row;
        const int k = j / 2 + (j % 2) * 4;  // word j holds k = 0, 4, 1, 5, ...
        const int in = chunk * CHUNK + k;
        float v = 0.0f;
        if (o < outs) {
            v = BACKWARD_DATA ? p.weight[(static_cast<size_t>(in) * p.c_in + o) * TAPS + (TAPS - 1 - tap)]
                              : p.weight[(static_cast<size_t>(o) * p.c_in + in) * TAPS + tap];
        }
        out[i] = M::word(v, 0.0f);
    }
}

}  // namespace halo_fwd
