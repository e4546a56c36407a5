// Runs the kernels of conv.cu on the CPU through cuda_emu.h, following launch plans made by the
// Rust host code (src/device/cuda/conv.rs, written out by tests/cuda_emulated.rs), and compares
// every result with a direct double-precision definition of the convolution, with outputs
// poisoned with NaN so that an element a kernel fails to write is caught. Every case runs under
// the forward and the reverse schedule of cuda_emu.h, whose outputs must agree bit for bit (a
// race between threads of a block, or a dependence on the order of blocks, would make them
// differ); built with -fsanitize=address, every access is checked as well (the buffers are
// exact-size heap vectors, dynamic shared memory exact-size in cuda_emu.h).
//
// Tolerances: every element within a worst-case bound of its own,
//   |got - want| <= rel * S,
// S being the sum of |a| |b| over the element's products (+ |bias|), or of |dy| for a bias
// gradient, computed exactly by the same definitions on the inputs' magnitudes. So an element
// whose products are small or cancel gets a small tolerance, and a term dropped, doubled or
// misplaced shows even there. rel follows from the operand precision and the longest chain of
// FP32 roundings any term passes through on its way into the element:
//   fp32  operands exact; rel = gamma(chain) = chain 2^-24 / (1 - chain 2^-24), the bound of
//         chain FP32 roundings (additions, with or without FMA: an FMA chain rounds once per
//         term, and without FMA the first addition, 0 + product, is exact). fp32-tiled sums an
//         element's products in one accumulator, one FMA per k of its block's range (the 16-deep
//         k tiles continue it; their zero padding adds exactly); a split backward-weight adds
//         the splits' partials in split_reduce (splits - 1 roundings); the bias is one more:
//           chain = L + (splits - 1) + 1,  L = split_len (depth when unsplit),
//         at most depth + 1 (L + splits - 1 <= depth since L (splits - 1) < depth).
//   tf32  operands rounded to 10-bit significands (nearest even), u = 2^-11;
//   bf16  operands rounded to 8-bit significands (nearest even), u = 2^-8:
//         each operand is off by at most u of itself, so each product by at most 2u + u^2 of
//         itself, and each tensor-core addition errs by at most 2^-23 of the running magnitude
//         (2^-24 when rounding, 2^-23 allowing for truncation):
//           rel = 2u + u^2 + chain 2^-23 (1 + u)^2,  chain = depth + ceil(depth / 32) + 1
//         (the k loop, at most one split partial per 32-deep k tile, the bias; splits of
//         backward-weight, and of v2's forward and backward-data where the plan splits their
//         depth, each at least 32 deep).
//   bias gradients (FP32 sums of dy in every version, no products): rel = gamma(chain) with
//         chain = ceil(values / lanes) + tree levels + (partials - 1): backward-weight's lanes
//         sum every 32nd k of the block's range, warp_sum adds them (5 levels), split_reduce the
//         splits; the transposed convolution's plane_sum has 256 threads sum every 256th value of
//         a plane, block_sum adds them (two warp_sums, 10 levels), split_reduce the images.
// Worst-case bounds (to first order for the tensor cores), so no correct kernel exceeds them
// whatever order it sums in. The tensor-core bound is dominated by the rounding term 2u of S,
// loose enough to let a small term dropped from a long sum pass; so every bf16 case runs again
// on inputs that are BF16 values already, where the products are exact and only the
// accumulation remains, rel = chain 2^-23.
//
//   conv_emu_test PLAN_FILE      runs every case of the plan; exit status 0 when all pass
//   conv_emu_test --kernels      lists the kernels it can run
//
// A plan line: LABEL KIND PASS n c_in h w c_out kh kw stride pad KERNEL gx gy gz split_len splits
// [shared_bytes [PACK words]] (the dynamic shared memory of the launch, 0 when left out; the
// kernel that packs the weights first, into a block of `words` words the convolution then reads
// as its weights, or - for none).
// KIND is conv (geometry of a convolution) or transposed (of a transposed convolution, weights
// c_in x c_out x kh x kw, run through the kernel planned for the convolution it transposes, or,
// for a forward pass whose kernel tiles the output, through the per-tap kernels conv_tfwd_*
// (or, 2x2 stride 2, the all-taps ones conv_tfwd_*_k2s2_*),
// whose elements sum c_in products: depth c_in in the chains above; every transposed forward
// pass runs with and without a bias); PASS is forward, backward_data or backward_weight.
#define LRC_EMULATE 1
#include "cuda_emu.h"

// The kernels under test, compiled for the host.
#include "../conv.cu"
#include "../conv_sm90.cu"

#include <cstring>
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

// The operand precision of a kernel, from its name.
enum class Precision { Fp32, Tf32, Bf16 };

// A launch of a kernel as the host code plans it.
struct Plan {
    std::string kernel;
    unsigned gx, gy, gz;
    int split_len, splits;
    unsigned shared_bytes = 0;
    std::string pack;  // empty: none
    size_t pack_words = 0;
    Precision precision() const {
        if (kernel.find("_tf32_") != std::string::npos) return Precision::Tf32;
        if (kernel.find("_bf16_") != std::string::npos) return Precision::Bf16;
        return Precision::Fp32;
    }
};

// FNV-1a of the values' bits: a change of kernel code that should leave every result as it was
// (a shared-memory layout, an addressing scheme) shows as the same fingerprints in two reports.
uint32_t bits_fingerprint(const std::vector<float>& v) {
    uint32_t h = 2166136261u;
    for (const float x : v) {
        uint32_t u;
        std::memcpy(&u, &x, 4);
        for (int byte = 0; byte < 4; ++byte) h = (h ^ ((u >> (8 * byte)) & 0xffu)) * 16777619u;
    }
    return h;
}

// Fails unless |got[i] - want[i]| <= tolerance(i) for every i; prints the worst element and the
// fingerprint of the results.
template <class Tolerance>
void check_each(const std::string& what, const std::vector<float>& got, const std::vector<double>& want,
                Tolerance tolerance) {
    double worst = 0.0;
    size_t at = 0;
    bool bad = got.size() != want.size();
    for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
        const double err = std::fabs(double(got[i]) - want[i]);
        const double ratio = std::isnan(err) ? INFINITY : err / tolerance(i);
        if (ratio > worst) {
            worst = ratio;
            at = i;
        }
    }
    bad = bad || !(worst <= 1.0);
    std::printf("%-4s %-64s worst %.3f of tolerance at %zu (got %.7g want %.7g) bits %08x\n", bad ? "FAIL" : "ok",
                what.c_str(), worst, at, at < got.size() ? got[at] : 0.0, at < want.size() ? want[at] : 0.0,
                bits_fingerprint(got));
    failures += bad;
}

// The relative error bound of `chain` FP32 roundings (additions, with or without FMA):
// gamma = chain 2^-24 / (1 - chain 2^-24).
double gamma_fp32(int chain) {
    const double nu = chain * std::ldexp(1.0, -24);
    return nu / (1.0 - nu);
}

// The bound of an element relative to its S (see the top of this file). FP32 operands are exact,
// so only the accumulation errs; TF32 and BF16 operands are rounded with unit roundoff u, each
// product then off by at most 2u + u^2 of itself, and the tensor cores' additions err by at most
// 2^-23 each (allowing for truncation). `rounded_inputs`: the operands were BF16 values already.
double relative_bound(Precision precision, int chain, bool rounded_inputs) {
    if (precision == Precision::Fp32) return gamma_fp32(chain);
    const double u = std::ldexp(1.0, precision == Precision::Tf32 ? -11 : -8);
    const double accumulation = chain * std::ldexp(1.0, -23);
    return rounded_inputs ? accumulation : 2 * u + u * u + accumulation * (1 + u) * (1 + u);
}

// Fails unless |got[i] - want[i]| <= rel * magnitude[i] for every i.
void check_bound(const std::string& what, const std::vector<float>& got, const std::vector<double>& want,
                 const std::vector<double>& magnitude, double rel) {
    if (magnitude.size() != want.size()) {
        std::printf("FAIL %s: no magnitude per element\n", what.c_str());
        ++failures;
        return;
    }
    // The smallest positive double keeps exact zeros (empty sums) exact.
    check_each(what, got, want, [&](size_t i) { return std::max(rel * magnitude[i], 1e-300); });
}

// The k range one block sums for an element of a pass of `depth` products: the split's, when
// backward-weight splits its reduction, else all of it.
int split_run(int depth, const Plan& plan) { return plan.splits > 1 ? std::min(plan.split_len, depth) : depth; }

// The longest chain of FP32 roundings a term passes through on its way into an element.
// Tensor cores: at most depth additions, one split partial per 32-deep k tile, the bias.
int mma_chain(int depth) { return depth + (depth + 31) / 32 + 1; }
// fp32-tiled: one FMA per k of the block's range (the k tiles continue one accumulator; zero
// padding adds exactly), splits - 1 additions in split_reduce (its first is 0 + partial), the bias.
int tiled_chain(int depth, const Plan& plan) { return split_run(depth, plan) + (plan.splits - 1) + 1; }
// A sum of `values` values (no products) spread over `lanes` sequential partial sums, combined
// by a tree `levels` deep, then `partials` such sums added in turn by split_reduce.
int sum_chain(int values, int lanes, int levels, int partials) {
    return (values + lanes - 1) / lanes + levels + (partials - 1);
}

// The comparisons of one case: the kernel's precision and plan fix the bound of each element.
struct Checker {
    Precision precision;
    bool rounded_inputs;
    Plan plan;
    std::string suffix() const { return rounded_inputs ? " (bf16 inputs)" : ""; }
    // A result with `depth` products per element.
    void operator()(const std::string& what, const std::vector<float>& got, const std::vector<double>& want,
                    const std::vector<double>& magnitude, int depth) const {
        const int chain = precision == Precision::Fp32 ? tiled_chain(depth, plan) : mma_chain(depth);
        check_bound(what + suffix(), got, want, magnitude, relative_bound(precision, chain, rounded_inputs));
    }
    // A bias gradient, an FP32 sum of dy in every version, its roundings `chain` deep.
    void bias_gradient(const std::string& what, const std::vector<float>& got, const std::vector<double>& want,
                       const std::vector<double>& magnitude, int chain) const {
        check_bound(what + suffix(), got, want, magnitude, gamma_fp32(chain));
    }
};

std::vector<float> magnitudes(const std::vector<float>& v) {
    std::vector<float> m(v.size());
    for (size_t i = 0; i < v.size(); ++i) m[i] = std::fabs(v[i]);
    return m;
}

// The values rounded to BF16, as floats.
std::vector<float> bf16_values(std::vector<float> v) {
    for (float& x : v) x = emu::bf16_value(emu::cvt_rn_bf16(x));
    return v;
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
#define LRC_MMA_ENTRIES(PREC, KS)                                                                      \
    LRC_ENTRY(conv_fwd_##PREC##_##KS##_n64), LRC_ENTRY(conv_fwd_##PREC##_##KS##_n32),                  \
        LRC_ENTRY(conv_bwd_data_##PREC##_##KS##_n64), LRC_ENTRY(conv_bwd_data_##PREC##_##KS##_n32),    \
        LRC_ENTRY(conv_bwd_weight_##PREC##_##KS##_m64), LRC_ENTRY(conv_bwd_weight_##PREC##_##KS##_m32)
#define LRC_MMA_ROW(PREC, MATH, KS, KH, KW) LRC_MMA_ENTRIES(PREC, KS),
    LRC_CONV_SPECIALISATIONS(LRC_MMA_ROW)
#define LRC_TAP2_ENTRIES(PREC)                                                                      \
    LRC_ENTRY(conv_fwd_##PREC##_k2t_n64), LRC_ENTRY(conv_fwd_##PREC##_k2t_n32), LRC_ENTRY(conv_fwd_##PREC##_k2t_n128), \
        LRC_ENTRY(conv_bwd_weight_##PREC##_k2t_m64), LRC_ENTRY(conv_bwd_weight_##PREC##_k2t_m32),                     \
        LRC_ENTRY(conv_bwd_weight_##PREC##_k2t_m64n128)
    LRC_TAP2_ENTRIES(tf32),
    LRC_TAP2_ENTRIES(bf16),
#undef LRC_TAP2_ENTRIES
    LRC_ENTRY(conv_fwd_tf32_k3t_n64),
    LRC_ENTRY(conv_fwd_tf32_k3t_n32),
    LRC_ENTRY(conv_bwd_data_tf32_k3t_n64),
    LRC_ENTRY(conv_bwd_data_tf32_k3t_n32),
    LRC_ENTRY(conv_fwd_bf16_k3t_n64),
    LRC_ENTRY(conv_fwd_bf16_k3t_n32),
    LRC_ENTRY(conv_bwd_data_bf16_k3t_n64),
    LRC_ENTRY(conv_bwd_data_bf16_k3t_n32),
    LRC_ENTRY(conv_bwd_weight_tf32_k3t_m64),
    LRC_ENTRY(conv_bwd_weight_tf32_k3t_m32),
    LRC_ENTRY(conv_bwd_weight_bf16_k3t_m64),
    LRC_ENTRY(conv_bwd_weight_bf16_k3t_m32),
    LRC_ENTRY(conv_fwd_tf32_k3t_n128),
    LRC_ENTRY(conv_bwd_data_tf32_k3t_n128),
    LRC_ENTRY(conv_fwd_bf16_k3t_n128),
    LRC_ENTRY(conv_bwd_data_bf16_k3t_n128),
    LRC_ENTRY(conv_bwd_weight_tf32_k3t_m64n128),
    LRC_ENTRY(conv_bwd_weight_bf16_k3t_m64n128),
    LRC_ENTRY(conv_bwd_weight_tf32_k3h_m64_w32),
    LRC_ENTRY(conv_bwd_weight_tf32_k3h_m64_w16),
    LRC_ENTRY(conv_bwd_weight_tf32_k3h_m32_w32),
    LRC_ENTRY(conv_bwd_weight_tf32_k3h_m32_w16),
    LRC_ENTRY(conv_bwd_weight_bf16_k3h_m64_w32),
    LRC_ENTRY(conv_bwd_weight_bf16_k3h_m64_w16),
    LRC_ENTRY(conv_bwd_weight_bf16_k3h_m32_w32),
    LRC_ENTRY(conv_bwd_weight_bf16_k3h_m32_w16),
    LRC_ENTRY(conv_fwd_tf32_k3h_n32_w32),
    LRC_ENTRY(conv_fwd_tf32_k3h_n32_w16),
    LRC_ENTRY(conv_bwd_data_tf32_k3h_n32_w32),
    LRC_ENTRY(conv_bwd_data_tf32_k3h_n32_w16),
    LRC_ENTRY(conv_fwd_tf32_k3h_n64_w32),
    LRC_ENTRY(conv_fwd_tf32_k3h_n64_w16),
    LRC_ENTRY(conv_bwd_data_tf32_k3h_n64_w32),
    LRC_ENTRY(conv_bwd_data_tf32_k3h_n64_w16),
    LRC_ENTRY(conv_pack_fwd_halo_tf32_n32),
    LRC_ENTRY(conv_pack_bwd_data_halo_tf32_n32),
    LRC_ENTRY(conv_pack_fwd_halo_tf32_n64),
    LRC_ENTRY(conv_pack_bwd_data_halo_tf32_n64),
    LRC_ENTRY(conv_fwd_bf16_k3h_n32_w32),
    LRC_ENTRY(conv_fwd_bf16_k3h_n32_w16),
    LRC_ENTRY(conv_bwd_data_bf16_k3h_n32_w32),
    LRC_ENTRY(conv_bwd_data_bf16_k3h_n32_w16),
    LRC_ENTRY(conv_fwd_bf16_k3h_n64_w32),
    LRC_ENTRY(conv_fwd_bf16_k3h_n64_w16),
    LRC_ENTRY(conv_bwd_data_bf16_k3h_n64_w32),
    LRC_ENTRY(conv_bwd_data_bf16_k3h_n64_w16),
    LRC_ENTRY(conv_pack_fwd_halo_bf16_n32),
    LRC_ENTRY(conv_pack_bwd_data_halo_bf16_n32),
    LRC_ENTRY(conv_pack_fwd_halo_bf16_n64),
    LRC_ENTRY(conv_pack_bwd_data_halo_bf16_n64),
    LRC_ENTRY(conv_pack_fwd_tf32),
    LRC_ENTRY(conv_pack_bwd_data_tf32),
    LRC_ENTRY(conv_pack_fwd_bf16),
    LRC_ENTRY(conv_pack_bwd_data_bf16),
    LRC_ENTRY(conv_tfwd_fp32),
    LRC_ENTRY(conv_tfwd_tf32_n64),
    LRC_ENTRY(conv_tfwd_tf32_n32),
    LRC_ENTRY(conv_tfwd_bf16_n64),
    LRC_ENTRY(conv_tfwd_bf16_n32),
    LRC_ENTRY(conv_tfwd_tf32_k2s2_n64),
    LRC_ENTRY(conv_tfwd_tf32_k2s2_n32),
    LRC_ENTRY(conv_tfwd_bf16_k2s2_n64),
    LRC_ENTRY(conv_tfwd_bf16_k2s2_n32),
#define LRC_DIRECT_ENTRIES(PREC, KO) LRC_ENTRY(conv_fwd_##PREC##_##KO), LRC_ENTRY(conv_bwd_data_##PREC##_##KO)
    LRC_DIRECT_ENTRIES(tf32, k1d_o16),
    LRC_DIRECT_ENTRIES(tf32, k1d_o32),
    LRC_DIRECT_ENTRIES(tf32, k3d_o4),
    LRC_DIRECT_ENTRIES(tf32, k3d_o32),
    LRC_DIRECT_ENTRIES(bf16, k1d_o16),
    LRC_DIRECT_ENTRIES(bf16, k1d_o32),
    LRC_DIRECT_ENTRIES(bf16, k3d_o4),
    LRC_DIRECT_ENTRIES(bf16, k3d_o32),
#undef LRC_DIRECT_ENTRIES
#define LRC_WGMMA_ENTRIES(PREC, KS)                                                                  \
    LRC_ENTRY(conv_fwd_wgmma_##PREC##_##KS##_n64), LRC_ENTRY(conv_bwd_data_wgmma_##PREC##_##KS##_n64), \
        LRC_ENTRY(conv_bwd_weight_wgmma_##PREC##_##KS##_m64), LRC_ENTRY(conv_fwd_wgmma_##PREC##_##KS##_n32), \
        LRC_ENTRY(conv_bwd_data_wgmma_##PREC##_##KS##_n32), LRC_ENTRY(conv_bwd_weight_wgmma_##PREC##_##KS##_m32)
#define LRC_WGMMA_ROW(PREC, MATH, KS, KH, KW) LRC_WGMMA_ENTRIES(PREC, KS),
    LRC_CONV_SPECIALISATIONS(LRC_WGMMA_ROW)
#undef LRC_WGMMA_ROW
#undef LRC_WGMMA_ENTRIES
#undef LRC_MMA_ROW
#undef LRC_MMA_ENTRIES
#undef LRC_ENTRY
};

Kernel kernel_named(const std::string& name) {
    for (const auto& k : KERNELS) {
        if (name == k.name) return k.kernel;
    }
    std::fprintf(stderr, "unknown kernel %s\n", name.c_str());
    std::exit(2);
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

// The dynamic shared memory a kernel needs (the v3 wgmma kernels stage B there; the wide
// tap-major kernels and the 64-channel halo forward ones keep their tiles there where they pass
// the static limit).
unsigned shared_needed(const std::string& kernel) {
    if (kernel.find("_k3h_n") != std::string::npos) {
        // The halo forward kernels (the same for both row widths).
        const bool bf16 = kernel.find("_bf16_") != std::string::npos;
        if (kernel.find("_k3h_n64_") != std::string::npos) {
            return bf16 ? halo_fwd::Tile<32, 64, 2>::DYNAMIC_BYTES : halo_fwd::Tile<32, 64, 1>::DYNAMIC_BYTES;
        }
        return bf16 ? halo_fwd::Tile<32, 32, 2>::DYNAMIC_BYTES : halo_fwd::Tile<32, 32, 1>::DYNAMIC_BYTES;
    }
    if (kernel.find("_k3t_n128") != std::string::npos || kernel.find("_k2t_n128") != std::string::npos) {
        return kernel.find("_tf32_") != std::string::npos ? v2::wide_tap_shared_bytes<v2::Tf32>()
                                                           : v2::wide_tap_shared_bytes<v2::Bf16>();
    }
    const bool narrow = kernel.size() > 2 && kernel.compare(kernel.size() - 2, 2, "32") == 0;
    if (kernel.find("_wgmma_tf32_") != std::string::npos) {
        return narrow ? v3::shared_bytes<v3::Tf32, 32>() : v3::shared_bytes<v3::Tf32, 64>();
    }
    if (kernel.find("_wgmma_bf16_") != std::string::npos) {
        return narrow ? v3::shared_bytes<v3::Bf16, 32>() : v3::shared_bytes<v3::Bf16, 64>();
    }
    return 0;
}

void launch(const Plan& plan, const ConvParams& p) {
    const Kernel k = kernel_named(plan.kernel);
    // As run_single in conv.rs: a packing first, into an exact-size block (poisoned, so that a
    // word it fails to write shows), which the convolution reads as its weights.
    ConvParams conv = p;
    std::vector<float> packed;
    if (!plan.pack.empty()) {
        packed = poisoned(plan.pack_words);
        ConvParams q = p;
        q.out = packed.data();
        const Kernel pack = kernel_named(plan.pack);
        label_launch(plan.pack);
        emu::launch(dim3{unsigned(ceil_div(static_cast<long long>(plan.pack_words), 256)), 1, 1}, dim3{256, 1, 1},
                    [&] { pack(q); });
        conv.weight = packed.data();
    }
    label_launch(plan.kernel);
    // The launch gets exactly what the host planned: too little shows as an overrun under ASan,
    // and a plan that differs from the kernel's own number fails here.
    if (plan.shared_bytes != shared_needed(plan.kernel)) {
        std::printf("FAIL %s: the plan gives %u bytes of dynamic shared memory, the kernel needs %u\n",
                    plan.kernel.c_str(), plan.shared_bytes, shared_needed(plan.kernel));
        ++failures;
    }
    emu::launch(dim3{plan.gx, plan.gy, plan.gz}, dim3{256, 1, 1}, [&] { k(conv); }, plan.shared_bytes);
}

// As run_single in conv.rs: a forward or backward-data pass whose plan splits its depth writes
// partial outputs of out_len values each (poisoned, so that an element a split leaves unwritten
// shows), which split_reduce adds into p.out; unsplit, p.out itself.
void launch_output(const Plan& plan, ConvParams p, int out_len) {
    if (plan.splits <= 1) {
        launch(plan, p);
        return;
    }
    std::vector<float> partial = poisoned(size_t(plan.splits) * out_len);
    float* out = p.out;
    p.out = partial.data();
    p.split_len = plan.split_len;
    p.splits = plan.splits;
    launch(plan, p);
    SplitReduceParams s{partial.data(), out, nullptr, nullptr, out_len, 0, plan.splits, 0};
    label_launch("split_reduce");
    emu::launch(dim3{unsigned(ceil_div(out_len, 256)), 1, 1}, dim3{256, 1, 1}, [&] { split_reduce(s); });
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

// The operands of a case: uniform in [-1, 1), or those values rounded to BF16.
std::vector<float> operand(size_t n, bool rounded) {
    auto v = random_vec(n);
    return rounded ? bf16_values(std::move(v)) : v;
}

void conv_case(const std::string& tag, const std::string& pass, const Geom& g, const Plan& plan, const Checker& check) {
    const bool rounded = check.rounded_inputs;
    const auto x = operand(size_t(g.n) * g.c_in * g.h * g.w, rounded);
    const auto w = operand(size_t(g.c_out) * g.c_in * g.kh * g.kw, rounded);
    const auto b = random_vec(g.c_out);
    const auto dy = operand(size_t(g.n) * g.c_out * g.h_out() * g.w_out(), rounded);
    const auto ax = magnitudes(x), aw = magnitudes(w), ab = magnitudes(b), ady = magnitudes(dy);
    const ConvParams p = params_of(g);
    if (pass == "forward") {
        const Outputs out = both_schedules(tag, [&] {
            auto y = poisoned(dy.size());
            ConvParams q = p;
            q.x = x.data();
            q.weight = w.data();
            q.bias = b.data();
            q.out = y.data();
            launch_output(plan, q, int(y.size()));
            return Outputs{y};
        });
        check(tag, out[0], ref_forward(g, x, w, b.data()), ref_forward(g, ax, aw, ab.data()), g.c_in * g.kh * g.kw);
        if (plan.kernel.find("_wgmma_") != std::string::npos || plan.splits > 1) {
            // v3, and split plans (split 0 adds the bias), also without a bias (v1 and v2 are
            // checked so on the GPU).
            const Outputs plain = both_schedules(tag + " without bias", [&] {
                auto y = poisoned(dy.size());
                ConvParams q = p;
                q.x = x.data();
                q.weight = w.data();
                q.out = y.data();
                launch_output(plan, q, int(y.size()));
                return Outputs{y};
            });
            check(tag + " without bias", plain[0], ref_forward(g, x, w, nullptr), ref_forward(g, ax, aw, nullptr),
                  g.c_in * g.kh * g.kw);
        }
    } else if (pass == "backward_data") {
        const Outputs out = both_schedules(tag, [&] {
            auto dx = poisoned(x.size());
            ConvParams q = p;
            q.dy = dy.data();
            q.weight = w.data();
            q.out = dx.data();
            launch_output(plan, q, int(dx.size()));
            return Outputs{dx};
        });
        check(tag, out[0], ref_backward_data(g, dy, w, nullptr), ref_backward_data(g, ady, aw, nullptr),
              g.c_out * g.kh * g.kw);
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
        std::vector<double> want_dw, want_db, scale_dw, scale_db;
        ref_backward_weight(g, x, dy, want_dw, want_db);
        ref_backward_weight(g, ax, ady, scale_dw, scale_db);
        const int reduction = g.n * g.h_out() * g.w_out();
        check(tag + " dw", out[0], want_dw, scale_dw, reduction);
        // In every version lane l of a warp sums k = l (mod 32) of the block's range, warp_sum
        // adds the lanes (5 levels), split_reduce the splits. (The halo kernels' lanes add 4
        // consecutive k of each 32 in two levels, then 8 lanes in 3: no longer a chain.)
        check.bias_gradient(tag + " db", out[1], want_db, scale_db,
                            sum_chain(split_run(reduction, plan), 32, 5, plan.splits));
    }
}

// The transposed convolution t of weights w (c_in x c_out x kh x kw) by its definition, as
// scatters: y = conv_transpose(x, w) + b, and for output gradient dy: dx, dw, db.
struct TransposedReference {
    std::vector<double> y, dx, dw, db;
    TransposedReference(const Geom& t, int ho, int wo, const std::vector<float>& x, const std::vector<float>& w,
                        const std::vector<float>& b, const std::vector<float>& dy)
        : y(dy.size(), 0.0), dx(x.size(), 0.0), dw(w.size(), 0.0), db(t.c_out, 0.0) {
        // y[i][co][iy*s - pad + ky][ix*s - pad + kx] += x[i][ci][iy][ix] w[ci][co][ky][kx]
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
                                    y[yi] += double(x[xi]) * w[wi];
                                    dx[xi] += double(dy[yi]) * w[wi];
                                    dw[wi] += double(dy[yi]) * x[xi];
                                }
        for (size_t e = 0; e < y.size(); ++e) y[e] += b[(e / (size_t(ho) * wo)) % t.c_out];
        for (size_t e = 0; e < dy.size(); ++e) db[(e / (size_t(ho) * wo)) % t.c_out] += dy[e];
    }
};

// A transposed convolution t (weights c_in x c_out x kh x kw) through the kernel planned for the
// convolution it transposes, as conv.rs runs it, against a direct scatter definition.
void transposed_case(const std::string& tag, const std::string& pass, const Geom& t, const Plan& plan,
                     const Checker& check) {
    const int ho = (t.h - 1) * t.stride + t.kh - 2 * t.pad, wo = (t.w - 1) * t.stride + t.kw - 2 * t.pad;
    const Geom conv{t.n, t.c_out, ho, wo, t.c_in, t.kh, t.kw, t.stride, t.pad};
    const bool rounded = check.rounded_inputs;
    const auto x = operand(size_t(t.n) * t.c_in * t.h * t.w, rounded);
    const auto wt = operand(size_t(t.c_in) * t.c_out * t.kh * t.kw, rounded);
    const auto b = random_vec(t.c_out);
    const auto dy = operand(size_t(t.n) * t.c_out * ho * wo, rounded);
    const TransposedReference want(t, ho, wo, x, wt, b, dy);
    const TransposedReference scale(t, ho, wo, magnitudes(x), magnitudes(wt), magnitudes(b), magnitudes(dy));

    const ConvParams p = params_of(conv);
    if (pass == "forward") {
        // The per-tap kernels (tfwd) sum c_in products per element, the strided backward-data
        // pass c_in x kh x kw (most of them zero); both run with and without a bias.
        const int depth = plan.kernel.find("_tfwd_") != std::string::npos ? t.c_in : t.c_in * t.kh * t.kw;
        const std::vector<float> no_bias(t.c_out, 0.0f);
        const TransposedReference unbiased(t, ho, wo, x, wt, no_bias, dy);
        const TransposedReference unbiased_scale(t, ho, wo, magnitudes(x), magnitudes(wt), no_bias, magnitudes(dy));
        for (const bool biased : {true, false}) {
            const std::string what = tag + (biased ? "" : " no bias");
            const Outputs out = both_schedules(what, [&] {
                auto y = poisoned(want.y.size());
                ConvParams q = p;
                q.dy = x.data();
                q.weight = wt.data();
                q.bias = biased ? b.data() : nullptr;
                q.out = y.data();
                launch_output(plan, q, int(y.size()));
                return Outputs{y};
            });
            check(what, out[0], biased ? want.y : unbiased.y, biased ? scale.y : unbiased_scale.y, depth);
        }
    } else if (pass == "backward_data") {
        const Outputs out = both_schedules(tag, [&] {
            auto dx = poisoned(x.size());
            ConvParams q = p;
            q.x = dy.data();
            q.weight = wt.data();
            q.out = dx.data();
            launch_output(plan, q, int(dx.size()));
            return Outputs{dx};
        });
        check(tag, out[0], want.dx, scale.dx, t.c_out * t.kh * t.kw);
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
        check(tag + " dw", out[0], want.dw, scale.dw, t.n * t.h * t.w);
        // Each of plane_sum's 256 threads sums its share of a plane, block_sum adds them (two
        // warp_sums, 10 levels), split_reduce the images.
        check.bias_gradient(tag + " db", out[1], want.db, scale.db, sum_chain(ho * wo, 256, 10, t.n));
    }
}

// Operands round as documented: a 1x1 convolution of one channel with weight 1 copies each
// input, rounded to the kernel's operand precision, into the output (one exact product). Inputs
// 1 + k 2^-12 (scaled, both signs): exact ties of TF32 (k = 2 mod 4) and of BF16 (k = 16, 48).
void rounding_case(const std::string& kernel, Precision precision) {
    std::vector<float> x;
    for (int k = 0; k < 64; ++k) {
        const float v = std::ldexp(1.0f + std::ldexp(float(k), -12), k % 7 - 3);
        x.push_back(k % 2 ? -v : v);
    }
    const Geom g{1, 1, 1, int(x.size()), 1, 1, 1, 1, 0};
    const std::vector<float> w{1.0f};
    auto y = poisoned(x.size());
    ConvParams p = params_of(g);
    p.x = x.data();
    p.weight = w.data();
    p.out = y.data();
    launch(Plan{kernel, 1, 1, 1, 0, 1, shared_needed(kernel), "", 0}, p);
    size_t bad = 0;
    for (size_t i = 0; i < x.size(); ++i) {
        const float want = precision == Precision::Bf16 ? emu::bf16_value(emu::cvt_rn_bf16(x[i]))
                                                        : emu::as_float(emu::cvt_rn_tf32(x[i]));
        bad += std::memcmp(&y[i], &want, 4) != 0;
    }
    std::printf("%-4s %-64s %zu of %zu operands rounded otherwise\n", bad ? "FAIL" : "ok",
                ("rounding " + kernel).c_str(), bad, x.size());
    failures += bad != 0;
}

// The emulated conversion itself, on values whose BF16 rounding is known: ties go to the even
// neighbour, past the largest BF16 to infinity, NaN to the canonical NaN.
void bf16_conversion_case() {
    const struct {
        float x;
        uint16_t want;
    } cases[] = {
        {1.0f, 0x3f80},
        {1.0f + 0x1p-8f, 0x3f80},            // tie, even below
        {1.0f + 3 * 0x1p-8f, 0x3f82},        // tie, even above
        {1.0f + 0x1p-8f + 0x1p-20f, 0x3f81}, // just past the tie
        {-(1.0f + 3 * 0x1p-8f), 0xbf82},
        {3.4e38f, 0x7f80},
        {-0.0f, 0x8000},
        {std::nanf(""), 0x7fff},
    };
    int bad = 0;
    for (const auto& c : cases) bad += emu::cvt_rn_bf16(c.x) != c.want;
    bad += emu::cvt_rn_bf16x2(2.0f, 1.0f) != 0x40003f80u;  // hi in the upper half
    std::printf("%-4s %-64s %d wrong\n", bad ? "FAIL" : "ok", "cvt.rn.bf16(x2).f32 emulation", bad);
    failures += bad != 0;
}

// The emulated conversion itself, on values whose TF32 rounding is known: ties go to the even
// neighbour, past the largest TF32 to infinity, inf and NaN stay what they are.
void tf32_conversion_case() {
    const struct {
        float x;
        uint32_t want;
    } cases[] = {
        {1.0f, 0x3f800000u},
        {1.0f + 0x1p-11f, 0x3f800000u},             // tie, even below
        {1.0f + 3 * 0x1p-11f, 0x3f804000u},         // tie, even above
        {1.0f + 0x1p-11f + 0x1p-23f, 0x3f802000u},  // just past the tie
        {1.0f + 0x1p-11f - 0x1p-23f, 0x3f800000u},  // just short of it
        {-(1.0f + 3 * 0x1p-11f), 0xbf804000u},
        {3.4028235e38f, 0x7f800000u},
        {-0.0f, 0x80000000u},
        {INFINITY, 0x7f800000u},
    };
    int bad = 0;
    for (const auto& c : cases) bad += emu::cvt_rn_tf32(c.x) != c.want;
    bad += !std::isnan(emu::as_float(emu::cvt_rn_tf32(std::nanf(""))));
    std::printf("%-4s %-64s %d wrong\n", bad ? "FAIL" : "ok", "cvt.rn.tf32.f32 emulation", bad);
    failures += bad != 0;
}

// The wgmma emulation itself against a plain matrix product: one warpgroup computes
// D (64 x 64) = A (64 x 2kv) B^T with two m64n64 wgmma (kv = 8 TF32 or 16 BF16 values of k
// each), A from registers in the fragment layout, B (64 rows x 2kv, K-major) in dynamic shared
// memory without swizzle, its core matrices placed LBO = 144 bytes apart along k and SBO = 576
// along n (4 core matrices along k take 3 LBO + 128), the second wgmma's matrix starting 2 LBO
// further, so that a swapped or misread offset reads other words. Small integers: every product
// and sum is exact. The same product with LBO and SBO swapped in the descriptor must come out
// wrong.
void wgmma_emulation_case(emu::WgmmaType type) {
    const bool tf32 = type == emu::WgmmaType::Tf32;
    const int kv = tf32 ? 8 : 16;  // values of k per wgmma
    const int pack = tf32 ? 1 : 2;
    constexpr uint32_t LBO = 144, SBO = 576;
    const size_t bytes = 7 * SBO + 3 * LBO + 128;  // 8 core-matrix rows along n, 4 along k
    std::vector<float> A(64 * 2 * kv), B(64 * 2 * kv);
    for (size_t i = 0; i < A.size(); ++i) A[i] = float(int(i * 7 % 11) - 5);
    for (size_t i = 0; i < B.size(); ++i) B[i] = float(int(i * 5 % 13) - 6);
    // Values as words: TF32 the float itself, BF16 two per word (lower k low).
    const auto word = [&](const std::vector<float>& m, int row, int w) -> uint32_t {
        const int k = w * pack;
        return tf32 ? emu::cvt_rn_tf32(m[row * 2 * kv + k])
                    : emu::cvt_rn_bf16x2(m[row * 2 * kv + k + 1], m[row * 2 * kv + k]);
    };
    const auto run = [&](bool swap) {
        std::vector<float> D(64 * 64, std::nanf(""));
        emu::launch_label = "wgmma emulation check";
        emu::launch(dim3{1, 1, 1}, dim3{128, 1, 1}, [&] {
            auto* smem = static_cast<unsigned char*>(emu::dynamic_shared());
            const int th = threadIdx.x;
            if (th == 0) {
                for (int n = 0; n < 64; ++n) {
                    for (int w = 0; w < 16; ++w) {  // 16 words of k: 4 core matrices along k
                        const uint32_t v = word(B, n, w);
                        std::memcpy(smem + (w / 4) * LBO + (n / 8) * SBO + (n % 8) * 16 + (w % 4) * 4, &v, 4);
                    }
                }
            }
            __syncthreads();
            const int warp = th / 32, g = (th % 32) / 4, t = th % 4;
            uint32_t a[2][4];
            for (int s = 0; s < 2; ++s) {
                for (int r = 0; r < 4; ++r) {
                    a[s][r] = word(A, 16 * warp + g + 8 * (r % 2), 8 * s + t + 4 * (r / 2));
                }
            }
            float d[32] = {};
            const uint32_t base = lrc::shared_address(smem);
            lrc::wgmma_fence();
            for (int s = 0; s < 2; ++s) {
                const uint64_t desc = swap ? lrc::wgmma_descriptor(base + 2 * s * LBO, SBO, LBO)
                                           : lrc::wgmma_descriptor(base + 2 * s * LBO, LBO, SBO);
                if (tf32) {
                    lrc::wgmma_tf32_m64n64k8(d, a[s], desc);
                } else {
                    lrc::wgmma_bf16_m64n64k16(d, a[s], desc);
                }
            }
            lrc::wgmma_commit();
            lrc::wgmma_wait<0>();
            for (int i = 0; i < 32; ++i) {
                D[(16 * warp + g + 8 * ((i / 2) % 2)) * 64 + 8 * (i / 4) + 2 * t + i % 2] = d[i];
            }
        }, bytes);
        return D;
    };
    std::vector<double> want(64 * 64, 0.0);
    for (int m = 0; m < 64; ++m)
        for (int n = 0; n < 64; ++n)
            for (int k = 0; k < 2 * kv; ++k) want[m * 64 + n] += double(A[m * 2 * kv + k]) * B[n * 2 * kv + k];
    const auto mismatches = [&](const std::vector<float>& got) {
        int bad = 0;
        for (size_t i = 0; i < want.size(); ++i) bad += !(double(got[i]) == want[i]);
        return bad;
    };
    const int bad = mismatches(run(false));
    const int swapped = mismatches(run(true));
    const bool ok = bad == 0 && swapped > 0;
    std::printf("%-4s %-64s %d wrong; %d wrong with LBO and SBO swapped\n", ok ? "ok" : "FAIL",
                tf32 ? "wgmma m64n64k8 tf32 emulation" : "wgmma m64n64k16 bf16 emulation", bad, swapped);
    failures += !ok;
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
    char label[256], kind[32], pass[32], kernel[64], pack[64] = "-";
    char text[1024];
    int cases = 0;
    while (std::fgets(text, sizeof(text), f) != nullptr) {
        Geom g{};
        Plan plan{};
        std::strcpy(pack, "-");
        const int fields = std::sscanf(
            text, "%255s %31s %31s %d %d %d %d %d %d %d %d %d %63s %u %u %u %d %d %u %63s %zu", label, kind, pass, &g.n,
            &g.c_in, &g.h, &g.w, &g.c_out, &g.kh, &g.kw, &g.stride, &g.pad, kernel, &plan.gx, &plan.gy, &plan.gz,
            &plan.split_len, &plan.splits, &plan.shared_bytes, pack, &plan.pack_words);
        if (fields < 18) {
            if (fields > 0) {
                std::fprintf(stderr, "bad plan line: %s", text);
                return 2;
            }
            continue;
        }
        plan.kernel = kernel;
        if (std::strcmp(pack, "-") != 0) {
            plan.pack = pack;
        }
        const std::string tag = std::string(label) + " " + pass + " " + kernel;
        // BF16 kernels run twice: on FP32 inputs, and on inputs that are BF16 values already.
        const Precision precision = plan.precision();
        for (const bool rounded : {false, true}) {
            if (rounded && precision != Precision::Bf16) continue;
            const Checker check{precision, rounded, plan};
            if (std::string(kind) == "conv") {
                conv_case(tag, pass, g, plan, check);
            } else {
                transposed_case(tag, pass, g, plan, check);
            }
        }
        ++cases;
    }
    std::fclose(f);
    bf16_conversion_case();
    tf32_conversion_case();
    rounding_case("conv_fwd_tf32_k1_n32", Precision::Tf32);
    rounding_case("conv_fwd_bf16_k1_n32", Precision::Bf16);
    rounding_case("conv_fwd_wgmma_tf32_k1_n32", Precision::Tf32);
    rounding_case("conv_fwd_wgmma_bf16_k1_n32", Precision::Bf16);
    wgmma_emulation_case(emu::WgmmaType::Tf32);
    wgmma_emulation_case(emu::WgmmaType::Bf16);
    if (cases == 0) {
        std::fprintf(stderr, "no cases in %s\n", argv[1]);
        return 2;
    }
    std::printf("%s: %d check(s) failed in %d case(s); %lld block barriers passed\n", failures ? "FAILED" : "passed",
                failures, cases, emu::barriers_passed);
    return failures ? 1 : 0;
}
