// Forward and backward-data of convolutions with few channels, computed directly on the FP32
// cores, for tf32-mma-tap and the versions built on it: the 1x1 ones (stride 1, pad 0: the
// segmentation head, 32 or 64 feature channels -> 14 classes, and back) and the 3x3 ones
// (stride 1, pad 1) whose inputs times outputs are 64 or fewer (the first layer: 1 -> 32
// forward, 32 -> 1 backward-data):
//   forward        y[img][o][q] = bias[o] + sum over (i, tap) of x[img][i][q + tap] w[o][i][tap]
//   backward-data  dx[img][o][q] = sum over (i, tap) of dy[img][i][q + tap] w[i][o][8 - tap]
// (q + tap: the pixel at offset (ky - K/2, kx - K/2), zero outside the image; i < c_in, o <
// c_out forward; i < c_out, o < c_in backward-data, whose weights turn half way round).
// A pixel there moves about (ins + outs) x 4 bytes (the 3x3 window's other values come from the
// caches: neighbouring threads read them) for ins x outs x K^2 multiply-adds: at most 6.4 a byte
// (1x1, 128 x 32) or 4.5 (3x3, 64 a pixel), where an H100 does about 10 FP32 multiply-adds per
// byte of HBM bandwidth: memory bound on any cores. The tensor-core tiles spend most of their
// work on padding there (14 columns of 32; a 14-deep reduction in a 32-deep k tile; a 9-deep
// one forward of the first layer; 1 output column of 32 backward-data) and run v2's gathers
// per element.
// Each thread owns one output pixel: for CHUNK input channels at a time it loads the values its
// taps read (all in flight at once; a warp reads 32 consecutive pixels of a plane: 128 bytes a
// tap), rounds each to the version's operand precision (TF32 or BF16, nearest even, as the
// tensor-core kernels round theirs: a version's results differ from its tensor-core kernels'
// in the order of the sum alone, the products of rounded operands being exact in FP32), and
// accumulates its OUTS outputs in registers, the chunk's weights read from shared memory
// (rounded likewise when the block stages them; zeros past the outputs and inputs; every lane
// of a warp reads the same four weights at once: a 16-byte broadcast). The outputs are stored
// plane by plane (128 bytes a warp).
// Shapes (the host's direct_kernel): 1x1 stride 1 pad 0, or 3x3 stride 1 pad 1; outputs <= OUTS;
// any number of inputs (the host keeps to 128 or fewer for 1x1, 64 / outputs for 3x3); n h w
// below 2^31.
// Grid: ceil(n h w / 256), 256 threads.
namespace direct {

constexpr int THREADS = 256;

// v rounded to the operand precision of Math (TF32 or BF16), as a float.
template <class Math>
__device__ __forceinline__ float rounded(float v) {
    if constexpr (Math::PACK == 1) {
        return __uint_as_float(Math::word(v, 0.0f));
    } else {
        return __uint_as_float(Math::word(0.0f, v) & 0xffff0000u);  // the high half: v
    }
}

template <class Math, int K, int OUTS, bool BACKWARD_DATA>
__device__ void convolve(const ConvParams& p) {
    static_assert(K == 1 || K == 3, "1x1 or 3x3");
    static_assert(OUTS % 4 == 0, "weights read four at a time");
    constexpr int TAPS = K * K;
    // Input channels a thread holds the values of, and whose weights a block stages, at a time:
    // CHUNK x TAPS values in flight, few enough beside the OUTS sums for two blocks a
    // multiprocessor (128 registers) without spills.
    constexpr int CHUNK = K == 1 ? 16 : (OUTS > 4 ? 2 : 4);
    const int ins = BACKWARD_DATA ? p.c_out : p.c_in;
    const int outs = BACKWARD_DATA ? p.c_in : p.c_out;
    const float* in = BACKWARD_DATA ? p.dy : p.x;
    const int hw = p.h * p.w;
    const int q = static_cast<int>(blockIdx.x) * THREADS + static_cast<int>(threadIdx.x);
    const bool live = q < p.n * hw;
    const int img = live ? q / hw : 0;
    const int pix = q - img * hw;
    const int y = pix / p.w;
    const int x = pix - y * p.w;
    const float* plane0 = in + static_cast<size_t>(img) * ins * hw;

    alignas(16) __shared__ float sw[CHUNK][TAPS][OUTS];
    float acc[OUTS] = {};
    for (int c0 = 0; c0 < ins; c0 += CHUNK) {
        // Every thread is done with the previous chunk's weights.
        __syncthreads();
        for (int e = static_cast<int>(threadIdx.x); e < CHUNK * TAPS * OUTS; e += THREADS) {
            const int i = c0 + e / (TAPS * OUTS);
            const int tap = e / OUTS % TAPS;
            const int o = e % OUTS;
            float w = 0.0f;
            if (i < ins && o < outs) {
                w = BACKWARD_DATA ? p.weight[(static_cast<size_t>(i) * p.c_in + o) * TAPS + (TAPS - 1 - tap)]
                                  : p.weight[(static_cast<size_t>(o) * p.c_in + i) * TAPS + tap];
            }
            sw[e / (TAPS * OUTS)][tap][o] = rounded<Math>(w);
        }
        __syncthreads();
        if (!live) {
            continue;
        }
        // The chunk's loads first, all in flight at once; zeros past the inputs (they meet zero
        // weights) and outside the image.
        float v[CHUNK][TAPS];
#pragma unroll
        for (int i = 0; i < CHUNK; ++i) {
            const float* plane = plane0 + static_cast<size_t>(c0 + i) * hw;
#pragma unroll
            for (int tap = 0; tap < TAPS; ++tap) {
                const int yy = y + tap / K - K / 2;
                const int xx = x + tap % K - K / 2;
                const bool inside = K == 1 || (static_cast<unsigned>(yy) < static_cast<unsigned>(p.h) &&
                                               static_cast<unsigned>(xx) < static_cast<unsigned>(p.w));
                v[i][tap] = c0 + i < ins && inside ? rounded<Math>(plane[yy * p.w + xx]) : 0.0f;
            }
        }
#pragma unroll
        for (int i = 0; i < CHUNK; ++i) {
#pragma unroll
            for (int tap = 0; tap < TAPS; ++tap) {
#pragma unroll
                for (int o = 0; o < OUTS; o += 4) {
                    const float4 w = *reinterpret_cast<const float4*>(&sw[i][tap][o]);
                    acc[o] = fmaf(v[i][tap], w.x, acc[o]);
                    acc[o + 1] = fmaf(v[i][tap], w.y, acc[o + 1]);
                    acc[o + 2] = fmaf(v[i][tap], w.z, acc[o + 2]);
                    acc[o + 3] = fmaf(v[i][tap], w.w, acc[o + 3]);
                }
            }
        }
    }
    if (!live) {
        return;
    }
    float* to = p.out + static_cast<size_t>(img) * outs * hw + pix;
#pragma unroll
    for (int o = 0; o < OUTS; ++o) {
        if (o < outs) {
            to[static_cast<size_t>(o) * hw] = acc[o] + (p.bias != nullptr ? p.bias[o] : 0.0f);
        }
    }
}

}  // namespace direct
