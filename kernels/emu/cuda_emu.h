// A CPU emulation of the parts of the CUDA execution model the kernels use, so that the kernel
// sources run unchanged (compiled by a host C++ compiler with LRC_EMULATE) on machines without a
// GPU: blocks run one after another; the threads of a block are coroutines on one OS thread that
// switch at barriers; __shared__ becomes static storage (one block at a time uses it).
//
// Emulated: threadIdx/blockIdx/blockDim/gridDim (1-D blocks), __syncthreads, full-warp
// __shfl_xor_sync/__shfl_down_sync/__shfl_sync, atomicAdd, and the inline PTX of common.cuh.
// Barriers are checked: a __syncthreads that not every live thread of the block reaches, or a
// warp collective (shuffle, mma) that not all 32 lanes reach, stops the program with a message.
// mma.sync follows the fragment layout of the PTX ISA for m16n8k8 .tf32; cvt.rna.tf32.f32 rounds
// to nearest with ties away from zero.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace emu {

enum class State { Runnable, AtBlockBarrier, AtWarpBarrier, Done };

struct Thread {
    ucontext_t context{};
    dim3 index;
    State state = State::Runnable;
    std::unique_ptr<char[]> stack;
};

constexpr int kWarp = 32;
constexpr size_t kStackBytes = 64 * 1024;

inline dim3 block_index, block_dim, grid_dim;
inline std::vector<Thread> threads;
inline ucontext_t scheduler;
inline Thread* current = nullptr;
inline std::function<void()> body;
inline long long barriers_passed = 0;

inline void reset_warp_slots();

inline void fail(const char* what) {
    std::fprintf(stderr, "emulated kernel error: %s (block %u,%u,%u)\n", what, block_index.x, block_index.y,
                 block_index.z);
    std::exit(2);
}

inline void yield(State s) {
    current->state = s;
    swapcontext(&current->context, &scheduler);
}

inline void entry() {
    body();
    current->state = State::Done;
    swapcontext(&current->context, &scheduler);
}

inline int thread_rank(const Thread& t) { return static_cast<int>(t.index.x); }

// Runs one block to completion.
inline void run_block() {
    const int n = static_cast<int>(block_dim.x);
    threads.clear();
    threads.resize(n);
    reset_warp_slots();
    for (int i = 0; i < n; ++i) {
        Thread& t = threads[i];
        t.index.x = i;
        t.stack.reset(new char[kStackBytes]);
        getcontext(&t.context);
        t.context.uc_stack.ss_sp = t.stack.get();
        t.context.uc_stack.ss_size = kStackBytes;
        t.context.uc_link = nullptr;
        makecontext(&t.context, entry, 0);
    }
    for (;;) {
        for (Thread& t : threads) {
            while (t.state == State::Runnable) {
                current = &t;
                swapcontext(&scheduler, &t.context);
            }
        }
        bool all_done = true;
        bool released = false;
        // Warp collectives: all 32 lanes must be waiting.
        for (int w = 0; w * kWarp < n; ++w) {
            int waiting = 0;
            for (int l = 0; l < kWarp && w * kWarp + l < n; ++l) {
                waiting += threads[w * kWarp + l].state == State::AtWarpBarrier;
            }
            if (waiting == kWarp) {
                for (int l = 0; l < kWarp; ++l) {
                    threads[w * kWarp + l].state = State::Runnable;
                }
                released = true;
            }
        }
        if (released) {
            continue;
        }
        int live = 0, at_block = 0;
        for (const Thread& t : threads) {
            all_done = all_done && t.state == State::Done;
            live += t.state != State::Done;
            at_block += t.state == State::AtBlockBarrier;
        }
        if (all_done) {
            break;
        }
        if (at_block == live) {
            for (Thread& t : threads) {
                if (t.state == State::AtBlockBarrier) {
                    t.state = State::Runnable;
                }
            }
            ++barriers_passed;
            continue;
        }
        fail("deadlock: divergent __syncthreads or a warp collective without all 32 lanes");
    }
    threads.clear();
}

// Runs the kernel call `f` over the grid, one block at a time.
inline void launch(dim3 grid, dim3 block, const std::function<void()>& f) {
    if (block.y != 1 || block.z != 1 || block.x % kWarp != 0) {
        fail("only 1-D blocks of whole warps are emulated");
    }
    grid_dim = grid;
    block_dim = block;
    body = f;
    for (unsigned z = 0; z < grid.z; ++z) {
        for (unsigned y = 0; y < grid.y; ++y) {
            for (unsigned x = 0; x < grid.x; ++x) {
                block_index = {x, y, z};
                run_block();
            }
        }
    }
}

inline void sync_block() { yield(State::AtBlockBarrier); }

// Per-warp exchange slots, double-buffered by call parity so one barrier per collective suffices:
// a lane can only post into a buffer again after every lane has passed the next barrier, by which
// time all of them have read it.
struct WarpSlots {
    float f[2][kWarp];
    uint32_t a[2][kWarp][4];
    uint32_t b[2][kWarp][2];
    int generation[kWarp];
};
inline std::vector<WarpSlots> warp_slots(32);

inline void reset_warp_slots() {
    for (WarpSlots& s : warp_slots) {
        std::memset(s.generation, 0, sizeof(s.generation));
    }
}

inline WarpSlots& my_warp(int& lane, int& parity) {
    const int rank = thread_rank(*current);
    lane = rank % kWarp;
    WarpSlots& s = warp_slots[rank / kWarp];
    parity = s.generation[lane]++ & 1;
    return s;
}

// Lane `lane` receives the value of lane source(lane).
template <class Source>
inline float shuffle(float v, Source source) {
    int lane, parity;
    WarpSlots& s = my_warp(lane, parity);
    s.f[parity][lane] = v;
    yield(State::AtWarpBarrier);
    const int from = source(lane);
    return s.f[parity][(from >= 0 && from < kWarp) ? from : lane];
}

inline float shfl_xor(float v, int offset) {
    return shuffle(v, [offset](int lane) { return lane ^ offset; });
}

inline float as_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline uint32_t cvt_rna_tf32(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) {
        return u;  // inf and NaN pass through
    }
    // Add half of the dropped part's unit to the magnitude, then truncate: ties go away from zero.
    return (u + 0x1000u) & ~0x1fffu;
}

inline void mma_tf32_16x8x8(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    int lane, parity;
    WarpSlots& s = my_warp(lane, parity);
    std::memcpy(s.a[parity][lane], a, sizeof(a));
    std::memcpy(s.b[parity][lane], b, sizeof(b));
    yield(State::AtWarpBarrier);
    float A[16][8], B[8][8];
    for (int l = 0; l < kWarp; ++l) {
        const int g = l / 4, t = l % 4;
        // The hardware reads only the TF32 bits of each operand register.
        A[g][t] = as_float(s.a[parity][l][0] & ~0x1fffu);
        A[g + 8][t] = as_float(s.a[parity][l][1] & ~0x1fffu);
        A[g][t + 4] = as_float(s.a[parity][l][2] & ~0x1fffu);
        A[g + 8][t + 4] = as_float(s.a[parity][l][3] & ~0x1fffu);
        B[t][g] = as_float(s.b[parity][l][0] & ~0x1fffu);
        B[t + 4][g] = as_float(s.b[parity][l][1] & ~0x1fffu);
    }
    const int g = lane / 4, t = lane % 4;
    const int rows[4] = {g, g, g + 8, g + 8};
    const int cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int i = 0; i < 4; ++i) {
        float acc = d[i];
        for (int k = 0; k < 8; ++k) {
            acc += A[rows[i]][k] * B[k][cols[i]];
        }
        d[i] = acc;
    }
}

}  // namespace emu

#define threadIdx (emu::current->index)
#define blockIdx (emu::block_index)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

inline void __syncthreads() { emu::sync_block(); }
inline float __shfl_xor_sync(unsigned mask, float v, int offset) {
    if (mask != 0xffffffffu) {
        emu::fail("only full-warp shuffles are emulated");
    }
    return emu::shfl_xor(v, offset);
}
inline float __shfl_down_sync(unsigned mask, float v, unsigned delta) {
    if (mask != 0xffffffffu) {
        emu::fail("only full-warp shuffles are emulated");
    }
    // Lanes whose source is past the warp keep their own value.
    return emu::shuffle(v, [delta](int lane) { return lane + static_cast<int>(delta); });
}
inline float __shfl_sync(unsigned mask, float v, int src_lane) {
    if (mask != 0xffffffffu) {
        emu::fail("only full-warp shuffles are emulated");
    }
    return emu::shuffle(v, [src_lane](int) { return src_lane % emu::kWarp; });
}
// One OS thread runs every emulated thread, so read-modify-write is atomic as written.
inline float atomicAdd(float* address, float v) {
    const float old = *address;
    *address = old + v;
    return old;
}
inline int atomicAdd(int* address, int v) {
    const int old = *address;
    *address = old + v;
    return old;
}
inline int min(int a, int b) { return std::min(a, b); }
inline int max(int a, int b) { return std::max(a, b); }
