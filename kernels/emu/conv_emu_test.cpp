// Runs the kernels of conv.cu on the CPU through cuda_emu.h and compares every kernel variant
// with a direct double-precision definition of the convolution, on awkward shapes, with outputs
// poisoned with NaN so that an element a kernel fails to write is caught. Launch geometry
// mirrors src/device/cuda/conv.rs. Built and run by tests/cuda_emulated.rs:
//   g++ -std=c++20 -O2 -I kernels kernels/emu/conv_emu_test.cpp && ./a.out
// Exit status 0 when every check passes.
#define LRC_EMULATE 1
#include "cuda_emu.h"

// The kernels under test, compiled for the host.
#include "../conv.cu"

#include <string>

namespace {

struct Geom {
    int n, c_in, h, w, c_out, kh, kw, stride, pad;
    int h_out() const { return (h + 2 * pad - kh) / stride + 1; }
    int w_out() const { return (w + 2 * pad - kw) / stride + 1; }
};

uint64_t rng_state = 0x9e3779b97f4a7c15ull;
float uniform() {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return static_cast<float>((rng_state >> 40) * (1.0 / (1ull << 24)) * 2.0 - 1.0);
}
std::vector<float> random_vec(size_t n) {
    std::vector<float> v(n);
    for (float& x : v) {
        x = uniform();
    }
    return v;
}
std::vector<float> poisoned(size_t n) { return std::vector<float>(n, std::nanf("")); }

// y = conv2d(x, w) + b, in double.
std::vector<double> ref_forward(const Geom& g, const std::vector<float>& x, const std::vector<float>& w,
                                const float* b) {
    std::vector<double> y(static_cast<size_t>(g.n) * g.c_out * g.h_out() * g.w_out());
    for (int i = 0; i < g.n; ++i)
        for (int co = 0; co < g.c_out; ++co)
            for (int oy = 0; oy < g.h_out(); ++oy)
                for (int ox = 0; ox < g.w_out(); ++ox) {
                    double s = b ? b[co] : 0.0;
                    for (int ci = 0; ci < g.c_in; ++ci)
                        for (int ky = 0; ky < g.kh; ++ky)
                            for (int kx = 0; kx < g.kw; ++kx) {
                                const int iy = oy * g.stride - g.pad + ky, ix = ox * g.stride - g.pad + kx;
                                if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) continue;
                                s += double(x[((size_t(i) * g.c_in + ci) * g.h + iy) * g.w + ix]) *
                                     w[((size_t(co) * g.c_in + ci) * g.kh + ky) * g.kw + kx];
                            }
                    y[((size_t(i) * g.c_out + co) * g.h_out() + oy) * g.w_out() + ox] = s;
                }
    return y;
}

// dx from dy, as the adjoint of ref_forward, plus an optional per-channel bias (the transposed
// convolution's forward pass).
std::vector<double> ref_backward_data(const Geom& g, const std::vector<float>& dy, const std::vector<float>& w,
                                      const float* bias) {
    std::vector<double> dx(static_cast<size_t>(g.n) * g.c_in * g.h * g.w, 0.0);
    for (int i = 0; i < g.n; ++i)
        for (int co = 0; co < g.c_out; ++co)
            for (int oy = 0; oy < g.h_out(); ++oy)
                for (int ox = 0; ox < g.w_out(); ++ox) {
                    const double d = dy[((size_t(i) * g.c_out + co) * g.h_out() + oy) * g.w_out() + ox];
                    for (int ci = 0; ci < g.c_in; ++ci)
                        for (int ky = 0; ky < g.kh; ++ky)
                            for (int kx = 0; kx < g.kw; ++kx) {
                                const int iy = oy * g.stride - g.pad + ky, ix = ox * g.stride - g.pad + kx;
                                if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) continue;
                                dx[((size_t(i) * g.c_in + ci) * g.h + iy) * g.w + ix] +=
                                    d * w[((size_t(co) * g.c_in + ci) * g.kh + ky) * g.kw + kx];
                            }
                }
    if (bias) {
        for (size_t e = 0; e < dx.size(); ++e) dx[e] += bias[(e / (size_t(g.h) * g.w)) % g.c_in];
    }
    return dx;
}

void ref_backward_weight(const Geom& g, const std::vector<float>& x, const std::vector<float>& dy,
                         std::vector<double>& dw, std::vector<double>& db) {
    dw.assign(size_t(g.c_out) * g.c_in * g.kh * g.kw, 0.0);
    db.assign(g.c_out, 0.0);
    for (int i = 0; i < g.n; ++i)
        for (int co = 0; co < g.c_out; ++co)
            for (int oy = 0; oy < g.h_out(); ++oy)
                for (int ox = 0; ox < g.w_out(); ++ox) {
                    const double d = dy[((size_t(i) * g.c_out + co) * g.h_out() + oy) * g.w_out() + ox];
                    db[co] += d;
                    for (int ci = 0; ci < g.c_in; ++ci)
                        for (int ky = 0; ky < g.kh; ++ky)
                            for (int kx = 0; kx < g.kw; ++kx) {
                                const int iy = oy * g.stride - g.pad + ky, ix = ox * g.stride - g.pad + kx;
                                if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) continue;
                                dw[((size_t(co) * g.c_in + ci) * g.kh + ky) * g.kw + kx] +=
                                    d * x[((size_t(i) * g.c_in + ci) * g.h + iy) * g.w + ix];
                            }
                }
}

int failures = 0;

// Same rule as tests/cuda_conv.rs: |got - want| <= atol + rtol |want| with atol scaled by the
// size of the terms (sqrt(depth) * max|a| * max|b|, inputs here in [-1, 1)).
void check(const std::string& what, const std::vector<float>& got, const std::vector<double>& want, int depth,
           bool tf32) {
    const double scale = std::sqrt(double(std::max(depth, 1)));
    const double atol = tf32 ? 4.0 * std::ldexp(1.0, -10) * scale : 1e-5 * scale;
    const double rtol = tf32 ? 5e-3 : 1e-5;
    double worst = 0.0;
    size_t at = 0;
    bool bad = got.size() != want.size();
    for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
        const double err = std::fabs(double(got[i]) - want[i]);
        const double tol = atol + rtol * std::fabs(want[i]);
        const double ratio = std::isnan(err) ? INFINITY : err / tol;
        if (ratio > worst) {
            worst = ratio;
            at = i;
        }
    }
    bad = bad || !(worst <= 1.0);
    std::printf("%-4s %-58s worst %.3f of tolerance at %zu (got %.7g want %.7g)\n", bad ? "FAIL" : "ok", what.c_str(),
                worst, at, at < got.size() ? got[at] : 0.0, at < want.size() ? want[at] : 0.0);
    failures += bad;
}

using Kernel = void (*)(const ConvParams);

// conv.cu's TF32 kernels by [pass][k1, k2, k3, kany][wide, narrow], as in conv.rs.
const Kernel TF32[3][4][2] = {
    {{conv_fwd_tf32_k1_n64, conv_fwd_tf32_k1_n32},
     {conv_fwd_tf32_k2_n64, conv_fwd_tf32_k2_n32},
     {conv_fwd_tf32_k3_n64, conv_fwd_tf32_k3_n32},
     {conv_fwd_tf32_kany_n64, conv_fwd_tf32_kany_n32}},
    {{conv_bwd_data_tf32_k1_n64, conv_bwd_data_tf32_k1_n32},
     {conv_bwd_data_tf32_k2_n64, conv_bwd_data_tf32_k2_n32},
     {conv_bwd_data_tf32_k3_n64, conv_bwd_data_tf32_k3_n32},
     {conv_bwd_data_tf32_kany_n64, conv_bwd_data_tf32_kany_n32}},
    {{conv_bwd_weight_tf32_k1_m64, conv_bwd_weight_tf32_k1_m32},
     {conv_bwd_weight_tf32_k2_m64, conv_bwd_weight_tf32_k2_m32},
     {conv_bwd_weight_tf32_k3_m64, conv_bwd_weight_tf32_k3_m32},
     {conv_bwd_weight_tf32_kany_m64, conv_bwd_weight_tf32_kany_m32}},
};
const Kernel FP32[3] = {conv_fwd_fp32, conv_bwd_data_fp32, conv_bwd_weight_fp32};

enum Pass { Forward = 0, BackwardData = 1, BackwardWeight = 2 };

struct Choice {
    bool tf32;
    bool generic;  // use the kany kernels whatever the kernel size
    const char* name() const { return tf32 ? (generic ? "tf32-kany" : "tf32") : "fp32"; }
};

int size_variant(const Geom& g, bool generic) {
    if (generic) return 3;
    if (g.kh == 1 && g.kw == 1) return 0;
    if (g.kh == 2 && g.kw == 2) return 1;
    if (g.kh == 3 && g.kw == 3) return 2;
    return 3;
}

struct Tiling {
    Kernel kernel;
    int rows, cols, depth;
};

Tiling tiling(Choice c, Pass pass, const Geom& g, int narrow_dim) {
    if (!c.tf32) return {FP32[pass], 64, 64, 16};
    const bool narrow = narrow_dim <= 32;
    Kernel k = TF32[pass][size_variant(g, c.generic)][narrow];
    if (pass == BackwardWeight) return narrow ? Tiling{k, 32, 128, 32} : Tiling{k, 64, 64, 32};
    return narrow ? Tiling{k, 128, 32, 32} : Tiling{k, 128, 64, 32};
}

int ceil_div(long long a, long long b) { return static_cast<int>((a + b - 1) / b); }

ConvParams params_of(const Geom& g) {
    ConvParams p{};
    p.n = g.n;
    p.c_in = g.c_in;
    p.h = g.h;
    p.w = g.w;
    p.c_out = g.c_out;
    p.kh = g.kh;
    p.kw = g.kw;
    p.stride = g.stride;
    p.pad = g.pad;
    p.h_out = g.h_out();
    p.w_out = g.w_out();
    return p;
}

void run(Kernel k, dim3 grid, const ConvParams& p) {
    emu::launch(grid, dim3{256, 1, 1}, [&] { k(p); });
}

void forward(Choice c, const Geom& g, const ConvParams& p) {
    const Tiling t = tiling(c, Forward, g, g.c_out);
    run(t.kernel, dim3{unsigned(ceil_div(g.n * g.h_out() * g.w_out(), t.rows)), unsigned(ceil_div(g.c_out, t.cols)), 1},
        p);
}

void backward_data(Choice c, const Geom& g, const ConvParams& p) {
    const Tiling t = tiling(c, BackwardData, g, g.c_in);
    run(t.kernel, dim3{unsigned(ceil_div(g.n * g.h * g.w, t.rows)), unsigned(ceil_div(g.c_in, t.cols)), 1}, p);
}

// As split_plan in conv.rs, with a small GPU so that shapes this size get several splits.
void backward_weight(Choice c, const Geom& g, ConvParams p, int multiprocessors) {
    const int m = g.c_out, n = g.c_in * g.kh * g.kw, r = g.n * g.h_out() * g.w_out();
    const Tiling t = tiling(c, BackwardWeight, g, g.c_out);
    const int tiles = ceil_div(m, t.rows) * ceil_div(n, t.cols);
    const int wanted = ceil_div(4 * multiprocessors, tiles);
    const int most = std::clamp(ceil_div(r, 512), 1, 4096);
    const int splits0 = std::clamp(wanted, 1, most);
    const int split_len = std::max(ceil_div(ceil_div(r, splits0), t.depth), 1) * t.depth;
    const int splits = std::max(ceil_div(r, split_len), 1);
    p.split_len = split_len;
    p.splits = splits;
    const dim3 grid{unsigned(ceil_div(n, t.cols)), unsigned(ceil_div(m, t.rows)), unsigned(splits)};
    if (splits == 1) {
        run(t.kernel, grid, p);
        return;
    }
    std::vector<float> partial = poisoned(size_t(splits) * m * n);
    std::vector<float> partial_bias = poisoned(size_t(splits) * m);
    ConvParams q = p;
    q.out = partial.data();
    q.out_bias = p.out_bias ? partial_bias.data() : nullptr;
    run(t.kernel, grid, q);
    SplitReduceParams s{partial.data(), p.out, q.out_bias, p.out_bias, m * n, p.out_bias ? m : 0, splits, 0};
    emu::launch(dim3{unsigned(ceil_div(std::max(m * n, m), 256)), 1, 1}, dim3{256, 1, 1}, [&] { split_reduce(s); });
}

void test_conv(const std::string& label, const Geom& g, Choice c, int multiprocessors) {
    const auto x = random_vec(size_t(g.n) * g.c_in * g.h * g.w);
    const auto w = random_vec(size_t(g.c_out) * g.c_in * g.kh * g.kw);
    const auto b = random_vec(g.c_out);
    const auto dy = random_vec(size_t(g.n) * g.c_out * g.h_out() * g.w_out());
    const std::string tag = label + " " + c.name();

    auto y = poisoned(size_t(g.n) * g.c_out * g.h_out() * g.w_out());
    ConvParams p = params_of(g);
    p.x = x.data();
    p.weight = w.data();
    p.bias = b.data();
    p.out = y.data();
    forward(c, g, p);
    check(tag + " forward", y, ref_forward(g, x, w, b.data()), g.c_in * g.kh * g.kw, c.tf32);

    auto dx = poisoned(size_t(g.n) * g.c_in * g.h * g.w);
    p = params_of(g);
    p.dy = dy.data();
    p.weight = w.data();
    p.out = dx.data();
    backward_data(c, g, p);
    check(tag + " backward-data", dx, ref_backward_data(g, dy, w, nullptr), g.c_out * g.kh * g.kw, c.tf32);

    auto dw = poisoned(w.size());
    auto db = poisoned(g.c_out);
    p = params_of(g);
    p.x = x.data();
    p.dy = dy.data();
    p.out = dw.data();
    p.out_bias = db.data();
    backward_weight(c, g, p, multiprocessors);
    std::vector<double> want_dw, want_db;
    ref_backward_weight(g, x, dy, want_dw, want_db);
    const int reduction = g.n * g.h_out() * g.w_out();
    check(tag + " backward-weight dw", dw, want_dw, reduction, c.tf32);
    // The bias gradient sums dy in FP32 in both versions.
    check(tag + " backward-weight db", db, want_db, reduction, false);
}

// A transposed convolution (weights c_in x c_out x kh x kw) through the kernels of the
// convolution it transposes, as conv.rs does, against a direct scatter definition.
void test_conv_transpose(const std::string& label, int n, int c_in, int h, int w, int c_out, int k, int s, int pad,
                         Choice c) {
    const int ho = (h - 1) * s + k - 2 * pad, wo = (w - 1) * s + k - 2 * pad;
    const Geom conv{n, c_out, ho, wo, c_in, k, k, s, pad};  // the convolution it transposes
    const auto x = random_vec(size_t(n) * c_in * h * w);
    const auto wt = random_vec(size_t(c_in) * c_out * k * k);
    const auto b = random_vec(c_out);
    const auto dy = random_vec(size_t(n) * c_out * ho * wo);
    const std::string tag = label + " " + c.name();

    // Direct definition: y[i][co][iy*s - pad + ky][ix*s - pad + kx] += x[i][ci][iy][ix] w[ci][co][ky][kx].
    std::vector<double> want_y(size_t(n) * c_out * ho * wo, 0.0), want_dx(x.size(), 0.0), want_dw(wt.size(), 0.0),
        want_db(c_out, 0.0);
    for (int i = 0; i < n; ++i)
        for (int ci = 0; ci < c_in; ++ci)
            for (int iy = 0; iy < h; ++iy)
                for (int ix = 0; ix < w; ++ix)
                    for (int co = 0; co < c_out; ++co)
                        for (int ky = 0; ky < k; ++ky)
                            for (int kx = 0; kx < k; ++kx) {
                                const int oy = iy * s - pad + ky, ox = ix * s - pad + kx;
                                if (oy < 0 || oy >= ho || ox < 0 || ox >= wo) continue;
                                const size_t xi = ((size_t(i) * c_in + ci) * h + iy) * w + ix;
                                const size_t wi = ((size_t(ci) * c_out + co) * k + ky) * k + kx;
                                const size_t yi = ((size_t(i) * c_out + co) * ho + oy) * wo + ox;
                                want_y[yi] += double(x[xi]) * wt[wi];
                                want_dx[xi] += double(dy[yi]) * wt[wi];
                                want_dw[wi] += double(dy[yi]) * x[xi];
                            }
    for (size_t e = 0; e < want_y.size(); ++e) want_y[e] += b[(e / (size_t(ho) * wo)) % c_out];
    for (size_t e = 0; e < dy.size(); ++e) want_db[(e / (size_t(ho) * wo)) % c_out] += dy[e];

    auto y = poisoned(want_y.size());
    ConvParams p = params_of(conv);
    p.dy = x.data();
    p.weight = wt.data();
    p.bias = b.data();
    p.out = y.data();
    backward_data(c, conv, p);
    check(tag + " transposed forward", y, want_y, c_in * k * k, c.tf32);

    auto dx = poisoned(x.size());
    p = params_of(conv);
    p.x = dy.data();
    p.weight = wt.data();
    p.out = dx.data();
    forward(c, conv, p);
    check(tag + " transposed backward-data", dx, want_dx, c_out * k * k, c.tf32);

    auto dw = poisoned(wt.size());
    p = params_of(conv);
    p.x = dy.data();
    p.dy = x.data();
    p.out = dw.data();
    backward_weight(c, conv, p, 4);
    check(tag + " transposed backward-weight dw", dw, want_dw, n * h * w, c.tf32);

    auto per_image = poisoned(size_t(n) * c_out);
    auto db = poisoned(c_out);
    PlaneSumParams ps{dy.data(), per_image.data(), n * c_out, ho * wo};
    emu::launch(dim3{unsigned(n * c_out), 1, 1}, dim3{256, 1, 1}, [&] { plane_sum(ps); });
    SplitReduceParams sr{per_image.data(), db.data(), nullptr, nullptr, c_out, 0, n, 0};
    emu::launch(dim3{unsigned(ceil_div(c_out, 256)), 1, 1}, dim3{256, 1, 1}, [&] { split_reduce(sr); });
    check(tag + " transposed backward-weight db", db, want_db, n * ho * wo, false);
}

}  // namespace

int main() {
    const Choice fp32{false, false}, tf32{true, false}, tf32_generic{true, true};
    for (Choice c : {fp32, tf32, tf32_generic}) {
        // 3x3 pad 1: odd sizes, channels off the tiles, wide and narrow output tiles, M over
        // several row tiles.
        test_conv("3x3 n2 c5>37 7x9", {2, 5, 7, 9, 37, 3, 3, 1, 1}, c, 4);
        test_conv("3x3 n3 c33>19 5x11", {3, 33, 5, 11, 19, 3, 3, 1, 1}, c, 4);
        test_conv("3x3 n1 c1>70 13x10", {1, 1, 13, 10, 70, 3, 3, 1, 1}, c, 4);
        // 1x1: the U-Net head and a wide one.
        test_conv("1x1 n3 c34>14 6x5", {3, 34, 6, 5, 14, 1, 1, 1, 0}, c, 4);
        test_conv("1x1 n1 c9>65 9x9", {1, 9, 9, 9, 65, 1, 1, 1, 0}, c, 4);
        // Stride 2, and a kernel size with no specialisation.
        test_conv("3x3 s2 n2 c3>6 9x8", {2, 3, 9, 8, 6, 3, 3, 2, 1}, c, 4);
        test_conv("5x3 s1 p1 n1 c4>10 8x7", {1, 4, 8, 7, 10, 5, 3, 1, 1}, c, 4);
        // Transposed 2x2 stride 2 (the U-Net up path) and an overlapping 3x3 stride 2.
        test_conv_transpose("convT 2x2 s2 n3 c40>20 5x7", 3, 40, 5, 7, 20, 2, 2, 0, c);
        test_conv_transpose("convT 2x2 s2 n1 c6>70 4x3", 1, 6, 4, 3, 70, 2, 2, 0, c);
        test_conv_transpose("convT 3x3 s2 p1 n2 c5>4 4x5", 2, 5, 4, 5, 4, 3, 2, 1, c);
    }
    // A long reduction split over many blocks.
    test_conv("3x3 n3 c4>8 23x21 many splits", {3, 4, 23, 21, 8, 3, 3, 1, 1}, tf32, 64);
    test_conv("3x3 n3 c4>8 23x21 many splits", {3, 4, 23, 21, 8, 3, 3, 1, 1}, fp32, 64);
    std::printf("%s: %d check(s) failed; %lld block barriers passed\n", failures ? "FAILED" : "passed", failures,
                emu::barriers_passed);
    return failures ? 1 : 0;
}
