// Runs the kernels of conv.cu on the CPU through cuda_emu.h, following launch plans made by the
// Rust host code (src/device/cuda/conv.rs, written out by tests/cuda_emulated.rs), and compares
// every result with a direct double-precision definition of the convolution, with outputs
// poisoned with NaN so that an element a kernel fails to write is caught. Every case runs under
// the forward and the reverse schedule of cuda_emu.h, whose outputs must agree bit for bit (a
// race between threads of a block, or a dependence on the order of blocks, would make them
// differ); built with -fsanitize=address, every access is checked as well (the buffers are
// exact-size heap vectors, dynamic shared memory exact-size in cuda_emu.h).
//
//   conv_emu_test PLAN_FILE      runs every case of the plan; exit status 0 when all pass
//   conv_emu_test --kernels      lists the kernels it can run
//
// A plan line: LABEL KIND PASS n c_in h w c_out kh kw stride pad KERNEL gx gy gz split_len splits
// KIND is conv (geometry of a convolution) or transposed (of a transposed convolution, weights
// c_in x c_out x kh x kw, run through the kernel planned for the convolution it transposes);
// PASS is forward, backward_data or backward_weight.
#define LRC_EMULATE 1
#include "cuda_emu.h"

// The kernels under test, compiled for the host.
#include "../conv.cu"

#include <string>

#ifdef LRC_EMU_ASAN
extern "C" const char* __asan_default_options() {
    return "detect_leaks=0:detect_stack_use_after_return=0:halt_on_error=1";
}
#endif

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

using Outputs = std::vector<std::vector<float>>;

// The case running, for the launch labels that error reports name.
std::string case_tag;
void label_launch(const std::string& kernel) {
    emu::launch_label =
        case_tag + ": kernel " + kernel + (emu::reverse_schedule ? " (reverse schedule)" : " (forward schedule)");
}

// Runs `pass` (launches that return their outputs) under the forward and the reverse schedule;
// the outputs must agree bit for bit. Returns the forward ones.
template <class Pass>
Outputs both_schedules(const std::string& tag, Pass pass) {
    case_tag = tag;
    emu::reverse_schedule = false;
    Outputs forward = pass();
    emu::reverse_schedule = true;
    const Outputs reverse = pass();
    emu::reverse_schedule = false;
    for (size_t k = 0; k < forward.size(); ++k) {
        const std::vector<float>& f = forward[k];
        const std::vector<float>& r = reverse[k];
        for (size_t i = 0; i < f.size(); ++i) {
            if (std::memcmp(&f[i], &r[i], sizeof(float)) != 0) {
                std::printf("FAIL %s: output %zu differs under the reverse schedule at %zu (%.9g forward, %.9g reverse)\n",
                            tag.c_str(), k, i, f[i], r[i]);
                ++failures;
                break;
            }
        }
    }
    return forward;
}

using Kernel = void (*)(const ConvParams);

const struct {
    const char* name;
    Kernel kernel;
} KERNELS[] = {
#define LRC_ENTRY(k) {#k, k}
    LRC_ENTRY(conv_fwd_fp32),
    LRC_ENTRY(conv_bwd_data_fp32),
    LRC_ENTRY(conv_bwd_weight_fp32),
#define LRC_TF32_ENTRIES(KS)                                                                           \
    LRC_ENTRY(conv_fwd_tf32_##KS##_n64), LRC_ENTRY(conv_fwd_tf32_##KS##_n32),                          \
        LRC_ENTRY(conv_bwd_data_tf32_##KS##_n64), LRC_ENTRY(conv_bwd_data_tf32_##KS##_n32),            \
        LRC_ENTRY(conv_bwd_weight_tf32_##KS##_m64), LRC_ENTRY(conv_bwd_weight_tf32_##KS##_m32)
    LRC_TF32_ENTRIES(k1),
    LRC_TF32_ENTRIES(k2),
    LRC_TF32_ENTRIES(k3),
    LRC_TF32_ENTRIES(kany),
#undef LRC_TF32_ENTRIES
#undef LRC_ENTRY
};

Kernel kernel_named(const std::string& name) {
    for (const auto& k : KERNELS) {
        if (name == k.name) return k.kernel;
    }
    std::fprintf(stderr, "unknown kernel %s\n", name.c_str());
    std::exit(2);
}

struct Plan {
    std::string kernel;
    unsigned gx, gy, gz;
    int split_len, splits;
    bool tf32() const { return kernel.find("tf32") != std::string::npos; }
};

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

void launch(const Plan& plan, const ConvParams& p) {
    const Kernel k = kernel_named(plan.kernel);
    label_launch(plan.kernel);
    emu::launch(dim3{plan.gx, plan.gy, plan.gz}, dim3{256, 1, 1}, [&] { k(p); });
}

// As run_backward_weight in conv.rs: one split writes dw (and db) itself; more write partial
// sums that split_reduce adds.
void launch_backward_weight(const Plan& plan, ConvParams p, int m, int n) {
    p.split_len = plan.split_len;
    p.splits = plan.splits;
    if (plan.splits == 1) {
        launch(plan, p);
        return;
    }
    std::vector<float> partial = poisoned(size_t(plan.splits) * m * n);
    std::vector<float> partial_bias = poisoned(size_t(plan.splits) * m);
    ConvParams q = p;
    q.out = partial.data();
    q.out_bias = p.out_bias ? partial_bias.data() : nullptr;
    launch(plan, q);
    SplitReduceParams s{partial.data(), p.out, q.out_bias, p.out_bias, m * n, p.out_bias ? m : 0, plan.splits, 0};
    label_launch("split_reduce");
    emu::launch(dim3{unsigned(ceil_div(std::max(m * n, m), 256)), 1, 1}, dim3{256, 1, 1}, [&] { split_reduce(s); });
}

void conv_case(const std::string& tag, const std::string& pass, const Geom& g, const Plan& plan) {
    const auto x = random_vec(size_t(g.n) * g.c_in * g.h * g.w);
    const auto w = random_vec(size_t(g.c_out) * g.c_in * g.kh * g.kw);
    const auto b = random_vec(g.c_out);
    const auto dy = random_vec(size_t(g.n) * g.c_out * g.h_out() * g.w_out());
    const ConvParams p = params_of(g);
    if (pass == "forward") {
        const Outputs out = both_schedules(tag, [&] {
            auto y = poisoned(dy.size());
            ConvParams q = p;
            q.x = x.data();
            q.weight = w.data();
            q.bias = b.data();
            q.out = y.data();
            launch(plan, q);
            return Outputs{y};
        });
        check(tag, out[0], ref_forward(g, x, w, b.data()), g.c_in * g.kh * g.kw, plan.tf32());
    } else if (pass == "backward_data") {
        const Outputs out = both_schedules(tag, [&] {
            auto dx = poisoned(x.size());
            ConvParams q = p;
            q.dy = dy.data();
            q.weight = w.data();
            q.out = dx.data();
            launch(plan, q);
            return Outputs{dx};
        });
        check(tag, out[0], ref_backward_data(g, dy, w, nullptr), g.c_out * g.kh * g.kw, plan.tf32());
    } else {
        const Outputs out = both_schedules(tag, [&] {
            auto dw = poisoned(w.size());
            auto db = poisoned(g.c_out);
            ConvParams q = p;
            q.x = x.data();
            q.dy = dy.data();
            q.out = dw.data();
            q.out_bias = db.data();
            launch_backward_weight(plan, q, g.c_out, g.c_in * g.kh * g.kw);
            return Outputs{dw, db};
        });
        std::vector<double> want_dw, want_db;
        ref_backward_weight(g, x, dy, want_dw, want_db);
        const int reduction = g.n * g.h_out() * g.w_out();
        check(tag + " dw", out[0], want_dw, reduction, plan.tf32());
        // The bias gradient sums dy in FP32 in both versions.
        check(tag + " db", out[1], want_db, reduction, false);
    }
}

// A transposed convolution t (weights c_in x c_out x kh x kw) through the kernel planned for the
// convolution it transposes, as conv.rs runs it, against a direct scatter definition.
void transposed_case(const std::string& tag, const std::string& pass, const Geom& t, const Plan& plan) {
    const int ho = (t.h - 1) * t.stride + t.kh - 2 * t.pad, wo = (t.w - 1) * t.stride + t.kw - 2 * t.pad;
    const Geom conv{t.n, t.c_out, ho, wo, t.c_in, t.kh, t.kw, t.stride, t.pad};
    const auto x = random_vec(size_t(t.n) * t.c_in * t.h * t.w);
    const auto wt = random_vec(size_t(t.c_in) * t.c_out * t.kh * t.kw);
    const auto b = random_vec(t.c_out);
    const auto dy = random_vec(size_t(t.n) * t.c_out * ho * wo);

    // y[i][co][iy*s - pad + ky][ix*s - pad + kx] += x[i][ci][iy][ix] w[ci][co][ky][kx]
    std::vector<double> want_y(dy.size(), 0.0), want_dx(x.size(), 0.0), want_dw(wt.size(), 0.0),
        want_db(t.c_out, 0.0);
    for (int i = 0; i < t.n; ++i)
        for (int ci = 0; ci < t.c_in; ++ci)
            for (int iy = 0; iy < t.h; ++iy)
                for (int ix = 0; ix < t.w; ++ix)
                    for (int co = 0; co < t.c_out; ++co)
                        for (int ky = 0; ky < t.kh; ++ky)
                            for (int kx = 0; kx < t.kw; ++kx) {
                                const int oy = iy * t.stride - t.pad + ky, ox = ix * t.stride - t.pad + kx;
                                if (oy < 0 || oy >= ho || ox < 0 || ox >= wo) continue;
                                const size_t xi = ((size_t(i) * t.c_in + ci) * t.h + iy) * t.w + ix;
                                const size_t wi = ((size_t(ci) * t.c_out + co) * t.kh + ky) * t.kw + kx;
                                const size_t yi = ((size_t(i) * t.c_out + co) * ho + oy) * wo + ox;
                                want_y[yi] += double(x[xi]) * wt[wi];
                                want_dx[xi] += double(dy[yi]) * wt[wi];
                                want_dw[wi] += double(dy[yi]) * x[xi];
                            }
    for (size_t e = 0; e < want_y.size(); ++e) want_y[e] += b[(e / (size_t(ho) * wo)) % t.c_out];
    for (size_t e = 0; e < dy.size(); ++e) want_db[(e / (size_t(ho) * wo)) % t.c_out] += dy[e];

    const ConvParams p = params_of(conv);
    if (pass == "forward") {
        const Outputs out = both_schedules(tag, [&] {
            auto y = poisoned(want_y.size());
            ConvParams q = p;
            q.dy = x.data();
            q.weight = wt.data();
            q.bias = b.data();
            q.out = y.data();
            launch(plan, q);
            return Outputs{y};
        });
        check(tag, out[0], want_y, t.c_in * t.kh * t.kw, plan.tf32());
    } else if (pass == "backward_data") {
        const Outputs out = both_schedules(tag, [&] {
            auto dx = poisoned(x.size());
            ConvParams q = p;
            q.x = dy.data();
            q.weight = wt.data();
            q.out = dx.data();
            launch(plan, q);
            return Outputs{dx};
        });
        check(tag, out[0], want_dx, t.c_out * t.kh * t.kw, plan.tf32());
    } else {
        const Outputs out = both_schedules(tag, [&] {
            auto dw = poisoned(wt.size());
            ConvParams q = p;
            q.x = dy.data();
            q.dy = x.data();
            q.out = dw.data();
            launch_backward_weight(plan, q, conv.c_out, conv.c_in * conv.kh * conv.kw);
            // As channel_sums in conv.rs.
            auto per_image = poisoned(size_t(t.n) * t.c_out);
            auto db = poisoned(t.c_out);
            PlaneSumParams ps{dy.data(), per_image.data(), t.n * t.c_out, ho * wo};
            label_launch("plane_sum");
            emu::launch(dim3{unsigned(t.n * t.c_out), 1, 1}, dim3{256, 1, 1}, [&] { plane_sum(ps); });
            SplitReduceParams sr{per_image.data(), db.data(), nullptr, nullptr, t.c_out, 0, t.n, 0};
            label_launch("split_reduce");
            emu::launch(dim3{unsigned(ceil_div(t.c_out, 256)), 1, 1}, dim3{256, 1, 1}, [&] { split_reduce(sr); });
            return Outputs{dw, db};
        });
        check(tag + " dw", out[0], want_dw, t.n * t.h * t.w, plan.tf32());
        check(tag + " db", out[1], want_db, t.n * ho * wo, false);
    }
}

}  // namespace

int main(int argc, char** argv) {
#ifdef LRC_EMU_ASAN
    __asan_set_error_report_callback(
        [](const char*) { std::fprintf(stderr, "conv_emu_test: the error is in %s\n", emu::where()); });
#endif
    if (argc == 2 && std::string(argv[1]) == "--kernels") {
        for (const auto& k : KERNELS) std::printf("%s\n", k.name);
        return 0;
    }
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s PLAN_FILE | --kernels\n", argv[0]);
        return 2;
    }
    FILE* f = std::fopen(argv[1], "r");
    if (!f) {
        std::fprintf(stderr, "cannot open %s\n", argv[1]);
        return 2;
    }
    char label[256], kind[32], pass[32], kernel[64];
    Geom g{};
    Plan plan{};
    int cases = 0;
    while (std::fscanf(f, "%255s %31s %31s %d %d %d %d %d %d %d %d %d %63s %u %u %u %d %d", label, kind, pass, &g.n,
                       &g.c_in, &g.h, &g.w, &g.c_out, &g.kh, &g.kw, &g.stride, &g.pad, kernel, &plan.gx, &plan.gy,
                       &plan.gz, &plan.split_len, &plan.splits) == 18) {
        plan.kernel = kernel;
        const std::string tag = std::string(label) + " " + pass + " " + kernel;
        if (std::string(kind) == "conv") {
            conv_case(tag, pass, g, plan);
        } else {
            transposed_case(tag, pass, g, plan);
        }
        ++cases;
    }
    std::fclose(f);
    if (cases == 0) {
        std::fprintf(stderr, "no cases in %s\n", argv[1]);
        return 2;
    }
    std::printf("%s: %d check(s) failed in %d case(s); %lld block barriers passed\n", failures ? "FAILED" : "passed",
                failures, cases, emu::barriers_passed);
    return failures ? 1 : 0;
}
