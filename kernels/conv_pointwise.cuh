// Forward and backward-data of the 1x1, stride 1, pad 0 convolution with few channels (the
// segmentation head: 32 or 64 feature channels -> 14 classes, and back) on the FP32 cores, for
// tf32-mma-tap and the versions built on it:
//   forward        y[img][o][p] = bias[o] + sum over i of x[img][i][p] w[o][i]    (o < c_out, i < c_in)
//   backward-data  dx[img][o][p] = sum over i of dy[img][i][p] w[i][o]           (o < c_in, i < c_out)
// With 128 inputs or fewer and 32 outputs or fewer a pixel moves (ins + outs) x 4 bytes for
// ins x outs multiply-adds, at most 6.4 a byte where an H100 does about 10 FP32 multiply-adds
// per byte of HBM bandwidth: memory bound on any cores. The tensor-core tiles (128 pixels x 32
// or 64 columns x 32 deep) spend most of their work on padding there (14 columns of 32, a
// 14-deep reduction in a 32-deep k tile) and run v2's gathers per element.
// Each thread owns one pixel: it loads CHUNK of the pixel's input values at a time (a warp reads
// 32 consecutive pixels of a plane: 128 bytes), rounds each to the version's operand precision
// (TF32 or BF16, nearest even, as the tensor-core kernels round theirs: a version's results
// differ from its tensor-core kernels' in the order of the sum alone), and accumulates its OUTS
// outputs in registers, the chunk's weights read from shared memory (rounded likewise when the
// block stages them; zeros past the outputs; every lane of a warp reads the same row: a
// broadcast, four weights a load). Outputs are stored plane by plane (128 bytes a warp).
// Shapes (the host's pointwise_applies): 1x1, stride 1, pad 0, outputs <= OUTS, any number of
// inputs (the host keeps to 128 or fewer), n h w below 2^31.
// Grid: ceil(n h w / 256), 256 threads.
namespace pointwise {

constexpr int THREADS = 256;

constexpr int CHUNK = 16;  // input channels a thread holds, and whose weights a block stages, at a time

// v rounded to the operand precision of Math (TF32 or BF16), as a float.
template <class Math>
__device__ __forceinline__ float rounded(float v) {
    if constexpr (Math::PACK == 1) {
        return __uint_as_float(Math::word(v, 0.0f));
    } else {
        return __uint_as_float(Math::word(0.0f, v) & 0xffff0000u);  // the high half: v
    }
}

template <class Math, int OUTS, bool BACKWARD_DATA>
__device__ void convolve(const ConvParams& p) {
    static_assert(OUTS == 16 || OUTS == 32, "16 or 32 sums a thread");
    const int ins = BACKWARD_DATA ? p.c_out : p.c_in;
    const int outs = BACKWARD_DATA ? p.c_in : p.c_out;
    const float* in = BACKWARD_DATA ? p.dy : p.x;
    const int hw = p.h * p.w;
    const int q = static_cast<int>(blockIdx.x) * THREADS + static_cast<int>(threadIdx.x);
    const bool live = q < p.n * hw;
    const int img = live ? q / hw : 0;
    const int pix = q - img * hw;
    const float* from = in + static_cast<size_t>(img) * ins * hw + pix;

    alignas(16) __shared__ float sw[CHUNK][OUTS];
    float acc[OUTS] = {};
    for (int c0 = 0; c0 < ins; c0 += CHUNK) {
        // Every thread is done with the previous chunk's weights.
        __syncthreads();
        for (int e = static_cast<int>(threadIdx.x); e < CHUNK * OUTS; e += THREADS) {
            const int i = c0 + e / OUTS;
            const int o = e % OUTS;
            float w = 0.0f;
            if (i < ins && o < outs) {
                w = BACKWARD_DATA ? p.weight[static_cast<size_t>(i) * p.c_in + o]
                                  : p.weight[static_cast<size_t>(o) * p.c_in + i];
            }
            sw[e / OUTS][o] = rounded<Math>(w);
        }
        __syncthreads();
        if (!live) {
            continue;
        }
        // The chunk's loads first, all in flight at once; zeros past the inputs meet zero weights.
        float v[CHUNK];
#pragma unroll
        for (int i = 0; i < CHUNK; ++i) {
            v[i] = c0 + i < ins ? rounded<Math>(from[static_cast<size_t>(c0 + i) * hw]) : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < CHUNK; ++i) {
#pragma unroll
            for (int o = 0; o < OUTS; o += 4) {
                const float4 w = *reinterpret_cast<const float4*>(&sw[i][o]);
                acc[o] = fmaf(v[i], w.x, acc[o]);
                acc[o + 1] = fmaf(v[i], w.y, acc[o + 1]);
                acc[o + 2] = fmaf(v[i], w.z, acc[o + 2]);
                acc[o + 3] = fmaf(v[i], w.w, acc[o + 3]);
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

}  // namespace pointwise
