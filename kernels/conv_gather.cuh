// What the versions of the convolution in conv.cu (v1, v2) and conv_sm90.cu (v3) share: the
// gathers of their implicit GEMMs (see conv.cu's comment), kernel sizes and the values of x and
// dy that one tap of the kernel reads, zero outside the tensors; and the list of the tensor-core
// versions' specialisations. The emulator's conv harness includes both files in one translation
// unit.

#pragma once

#include "common.cuh"

namespace gather {

// Reduction index k = (c, ky, kx) over a channel's taps: its channel and kernel position.
struct Tap {
    int c = 0, ky = 0, kx = 0;
};

// Kernel size, fixed at compile time when KH, KW > 0, else read from the parameters.
template <int KH, int KW>
struct KernelSize {
    int kh, kw;
    __device__ explicit KernelSize(const ConvParams& p) : kh(KH > 0 ? KH : p.kh), kw(KW > 0 ? KW : p.kw) {}
    __device__ int taps() const { return kh * kw; }
    __device__ Tap tap(int k) const {
        const int c = k / taps();
        const int t = k - c * taps();
        const int ky = t / kw;
        return Tap{c, ky, t - ky * kw};
    }
};

// What output pixel m (over n x h_out x w_out) reads of x: its image and the input position of
// its window's top-left tap, (oy * stride - pad, ox * stride - pad).
struct Window {
    const float* x_img = nullptr;
    int iy0 = 0, ix0 = 0;
};
__device__ __forceinline__ Window window(const ConvParams& p, int m) {
    const int hw = p.h_out * p.w_out;
    const int img = m / hw;
    const int pix = m - img * hw;
    const int oy = pix / p.w_out;
    const int ox = pix - oy * p.w_out;
    return Window{p.x + static_cast<size_t>(img) * p.c_in * p.h * p.w, oy * p.stride - p.pad, ox * p.stride - p.pad};
}

// Input pixel m (over n x h x w) as the backward-data gathers see it: the image of dy it reads
// and its position (iy, ix).
struct InputPixel {
    const float* dy_img = nullptr;
    int iy = 0, ix = 0;
};
__device__ __forceinline__ InputPixel input_pixel(const ConvParams& p, int m) {
    const int hw = p.h * p.w;
    const int img = m / hw;
    const int pix = m - img * hw;
    const int iy = pix / p.w;
    return InputPixel{p.dy + static_cast<size_t>(img) * p.c_out * p.h_out * p.w_out, iy, pix - iy * p.w};
}

// Where x (the image at x_img) holds channel ci at input position (iy, ix); null in the padding.
__device__ __forceinline__ const float* x_at(const ConvParams& p, const float* x_img, int iy, int ix, int ci) {
    if (static_cast<unsigned>(iy) >= static_cast<unsigned>(p.h) ||
        static_cast<unsigned>(ix) >= static_cast<unsigned>(p.w)) {
        return nullptr;
    }
    return x_img + (static_cast<size_t>(ci) * p.h + iy) * p.w + ix;
}

// x at the input position of output pixel (oy0, ox0) = (oy*s - pad, ox*s - pad) seen through tap
// (ky, kx) of input channel ci; zero in the padding.
__device__ __forceinline__ float x_tap(const ConvParams& p, const float* x_img, int iy0, int ix0, int ci, int ky,
                                       int kx) {
    // The same test and address as x_at, written out: through x_at (a pointer, then a load or
    // zero) ptxas 13.0 allocates the v2 and v3 kernels' registers differently, and the v2
    // backward-weight kernels spill 8 bytes.
    const int iy = iy0 + ky;
    const int ix = ix0 + kx;
    if (static_cast<unsigned>(iy) >= static_cast<unsigned>(p.h) ||
        static_cast<unsigned>(ix) >= static_cast<unsigned>(p.w)) {
        return 0.0f;
    }
    return x_img[(static_cast<size_t>(ci) * p.h + iy) * p.w + ix];
}

// Where dy (the image at dy_img) holds, for input pixel (iy, ix), output channel co of the
// output pixel whose window puts tap (ky, kx) on (iy, ix); null where there is none.
__device__ __forceinline__ const float* dy_at(const ConvParams& p, const float* dy_img, int iy, int ix, int co, int ky,
                                              int kx) {
    int ty = iy + p.pad - ky;
    int tx = ix + p.pad - kx;
    if (ty < 0 || tx < 0) {
        return nullptr;
    }
    if (p.stride != 1) {
        if (ty % p.stride != 0 || tx % p.stride != 0) {
            return nullptr;
        }
        ty /= p.stride;
        tx /= p.stride;
    }
    if (ty >= p.h_out || tx >= p.w_out) {
        return nullptr;
    }
    return dy_img + (static_cast<size_t>(co) * p.h_out + ty) * p.w_out + tx;
}

// dy seen from input pixel (iy, ix) through tap (ky, kx) of output channel co; zero where no
// output pixel's window puts that tap there.
__device__ __forceinline__ float dy_tap(const ConvParams& p, const float* dy_img, int iy, int ix, int co, int ky,
                                        int kx) {
    // dy_at's tests and address, written out for the reason given at x_tap.
    int ty = iy + p.pad - ky;
    int tx = ix + p.pad - kx;
    if (ty < 0 || tx < 0) {
        return 0.0f;
    }
    if (p.stride != 1) {
        if (ty % p.stride != 0 || tx % p.stride != 0) {
            return 0.0f;
        }
        ty /= p.stride;
        tx /= p.stride;
    }
    if (ty >= p.h_out || tx >= p.w_out) {
        return 0.0f;
    }
    return dy_img[(static_cast<size_t>(co) * p.h_out + ty) * p.w_out + tx];
}

}  // namespace gather

// The specialisations of the tensor-core versions: X(PREC, MATH, KS, KH, KW) declares one
// version's kernels for an operand precision (tf32 / bf16 in the kernel names, Tf32 / Bf16 the
// version's math) and a kernel size (k1, k2, k3: 1x1, 2x2, 3x3 fixed at compile time; kany:
// KH = KW = 0, read from the parameters).
#define LRC_CONV_SIZES(X, PREC, MATH) \
    X(PREC, MATH, k1, 1, 1)           \
    X(PREC, MATH, k2, 2, 2)           \
    X(PREC, MATH, k3, 3, 3)           \
    X(PREC, MATH, kany, 0, 0)

#define LRC_CONV_SPECIALISATIONS(X) \
    LRC_CONV_SIZES(X, tf32, Tf32)   \
    LRC_CONV_SIZES(X, bf16, Bf16)
