// A CPU emulation of the parts of the CUDA execution model the kernels use, so that the kernel
// sources run unchanged (compiled by a host C++ compiler with LRC_EMULATE) on machines without a
// GPU: blocks run one after another; the threads of a block are coroutines on one OS thread that
// switch at barriers; __shared__ becomes static storage (one block at a time uses it).
//
// Emulated: threadIdx/blockIdx/blockDim/gridDim (1-D blocks), float4, uint2 (lrc::load_pair
// checks its alignment, as the hardware would fault), cp.async (made at the wait; see
// cp_async below), __syncthreads, full-warp
// __shfl_xor_sync/__shfl_down_sync/__shfl_up_sync/__shfl_sync on 32-bit values, __ballot_sync,
// __any_sync/__all_sync, __syncwarp, atomics on float and int, dynamic shared memory
// (LRC_DYNAMIC_SHARED), float4 and float2 with make_float4 and make_float2, the correctly rounded float32/float64 intrinsics
// (__dadd_rn, __fmul_rn, __double2float_rn, ...), the kernel registry behind LRC_KERNEL, and the
// inline PTX of common.cuh.
// Barriers are checked: a __syncthreads that not every live thread of the block reaches, or a
// warp collective (shuffle, mma) that not all 32 lanes reach, stops the program with a message.
// mma.sync follows the fragment layout of the PTX ISA for m16n8k8 .tf32. Kernels round to TF32
// with common.cuh's integer code (sm_80's); cvt_rn_tf32 below models the sm_90 instruction for
// the harness to check that code against.
// wgmma (sm_90a warpgroup MMA, see the section "Warpgroup MMA" below): fence, mma_async with A in
// registers and B in dynamic shared memory through a matrix descriptor, commit_group and
// wait_group, asynchronous as on the hardware: a committed group runs when its warpgroup waits
// for it, reading shared memory and the A registers then.
//
// Checks, the CPU counterparts of compute-sanitizer's memcheck and racecheck:
// - Schedules: `emu::reverse_schedule` runs the blocks of a grid in reverse order and, at every
//   phase between barriers, the threads of a block (so its warps too) from the last to the
//   first, warp by warp: each warp runs through its warp collectives until it waits at a
//   block barrier (or a warpgroup collective) or ends before the next one starts, so one warp
//   runs ahead of the others as far as the block's barriers let it. Code that reads what another thread of its block writes
//   without a barrier in between, or that depends on the order of blocks, gives different
//   results under the two schedules; the runner's caller compares them.
// - Compiled with AddressSanitizer (-fsanitize=address), every access is checked: the runner
//   poisons whatever in the memory image is not a live allocation, dynamic shared memory is
//   exactly the bytes the launch asks for, static __shared__ arrays get ASan's global red zones,
//   and the coroutine switches are announced to ASan (__sanitizer_*_switch_fiber) so that it
//   follows the stacks. `emu::where()` names the launch, block and thread for a report.
// - Each coroutine stack sits above a guard page: an overflow faults instead of corrupting.
// Not seen: races between blocks of one launch (blocks run in turn, only their order is
// reversed), and reads of static __shared__ memory no thread of the block wrote (it keeps what
// the previous block left).
#pragma once

#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define LRC_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LRC_EMU_ASAN 1
#endif
#endif
#ifdef LRC_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

// The vector type of 16-byte loads and stores.
struct alignas(16) float4 {
    float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
// And of 8-byte ones.
struct alignas(8) float2 {
    float x, y;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }

// The vector types of 8- and 16-byte loads and stores of words.
struct alignas(8) uint2 {
    unsigned x, y;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};

namespace emu {

// Coroutine contexts. On x86-64 a switch saves the callee-saved registers and the floating-point
// control words on the old stack and pops them from the new one: no system call (swapcontext
// sets the signal mask on every switch, which cost as much as the kernels themselves), and
// nothing for ASan to intercept (its swapcontext interceptor clears the target stack's shadow on
// every switch). Elsewhere, ucontext.
#if defined(__x86_64__)
struct Context {
    void* sp = nullptr;
};
extern "C" void lrc_emu_switch(void** save_sp, void* load_sp);
// Weak: every translation unit that includes this header defines it.
asm(R"(
    .text
    .weak lrc_emu_switch
    .type lrc_emu_switch, @function
lrc_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size lrc_emu_switch, .-lrc_emu_switch
)");
// A context that starts `fn` on [stack, stack + bytes): the frame lrc_emu_switch pops, returning
// into fn as if fn had been called (a null return address above it ends backtraces).
inline void make_context(Context& c, char* stack, size_t bytes, void (*fn)()) {
    auto* top = reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(stack + bytes) & ~uintptr_t{15});
    uint64_t* sp = top - 9;
    uint32_t mxcsr;
    uint16_t fpcw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpcw));
    sp[0] = mxcsr | (static_cast<uint64_t>(fpcw) << 32);
    for (int r = 1; r <= 6; ++r) sp[r] = 0;  // r15, r14, r13, r12, rbx, rbp
    sp[7] = reinterpret_cast<uint64_t>(fn);
    sp[8] = 0;
    c.sp = sp;
}
inline void swap_context(Context& from, Context& to) { lrc_emu_switch(&from.sp, to.sp); }
#else
struct Context {
    ucontext_t uc{};
};
inline void make_context(Context& c, char* stack, size_t bytes, void (*fn)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, fn, 0);
}
inline void swap_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

enum class State { Runnable, AtBlockBarrier, AtWarpBarrier, AtGroupBarrier, Done };

// A cp.async copy issued and not yet waited for.
struct AsyncCopy {
    void* to;
    const void* from;
    size_t bytes;
};

struct Thread {
    Context context;
    dim3 index;
    State state = State::Runnable;
    char* stack = nullptr;       // from the stack pool
    void* fake_stack = nullptr;  // ASan's record of this coroutine's stack
    std::vector<AsyncCopy> copies;  // cp.async copies in issue order
    size_t committed = 0;           // how many of them belong to committed groups
};

constexpr int kWarp = 32;
constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = 64 * 1024;
constexpr size_t kGuardBytes = 4096;

inline dim3 block_index, block_dim, grid_dim;
inline std::vector<Thread> threads;
inline Context scheduler;
// The running coroutine; null while the scheduler runs.
inline Thread* current = nullptr;
inline std::function<void()> body;
inline long long barriers_passed = 0;
// The order of blocks and threads (see the header comment).
inline bool reverse_schedule = false;
// What the caller launches, for error messages ("kernel NAME, launch 2 of 5").
inline std::string launch_label;

inline void reset_warp_slots();
// Warpgroup collectives (wgmma): run by the scheduler when all 128 threads of a warpgroup wait.
constexpr int kWarpgroup = 128;
inline void reset_warpgroups(int threads);
inline void release_warpgroup(int group);
inline void check_warpgroups_idle();

// Where the program is: launch, block and, inside a coroutine, thread. Writes into a static
// buffer so that error paths (an ASan report callback) need not allocate.
inline const char* where() {
    static char text[512];
    int used = std::snprintf(text, sizeof(text), "%s, block (%u,%u,%u)",
                             launch_label.empty() ? "emulated launch" : launch_label.c_str(), block_index.x,
                             block_index.y, block_index.z);
    if (current != nullptr && used > 0 && static_cast<size_t>(used) < sizeof(text)) {
        std::snprintf(text + used, sizeof(text) - used, ", thread %u", current->index.x);
    }
    return text;
}

inline void fail(const char* what) {
    std::fprintf(stderr, "emulated kernel error: %s (%s)\n", what, where());
    std::exit(2);
}

// A vector access must be aligned to its size: the hardware faults ("misaligned address")
// where a plain CPU load would not.
inline void check_aligned(const void* p, size_t bytes) {
    if (reinterpret_cast<uintptr_t>(p) % bytes != 0) {
        fail("misaligned vector access");
    }
}

// cp.async: a copy is recorded when issued and made when its thread waits for its group, the
// latest moment the hardware may make it, so that reading the destination before the wait (or,
// from another thread, before a barrier after the wait) sees the old contents. Both addresses
// must be aligned to the copy's size, as the hardware requires.
inline void cp_async(void* to, const void* from, size_t bytes) {
    check_aligned(to, bytes);
    check_aligned(from, bytes);
    current->copies.push_back(AsyncCopy{to, from, bytes});
}
inline void cp_async_commit() { current->committed = current->copies.size(); }
inline void cp_async_wait_all() {
    Thread& t = *current;
    for (size_t i = 0; i < t.committed; ++i) {
        std::memcpy(t.copies[i].to, t.copies[i].from, t.copies[i].bytes);
    }
    t.copies.erase(t.copies.begin(), t.copies.begin() + static_cast<std::ptrdiff_t>(t.committed));
    t.committed = 0;
}

// The coroutine stacks, mapped once for the largest block: each one sits above a PROT_NONE
// guard page, so that an overflow faults at once.
inline char* stack_of(int rank) {
    static char* pool = [] {
        const size_t total = kMaxThreads * (kStackBytes + kGuardBytes);
        void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            std::fprintf(stderr, "emulator: cannot map the coroutine stacks\n");
            std::exit(2);
        }
        char* base = static_cast<char*>(p);
        for (int i = 0; i < kMaxThreads; ++i) {
            mprotect(base + i * (kStackBytes + kGuardBytes), kGuardBytes, PROT_NONE);
        }
        return base;
    }();
    return pool + rank * (kStackBytes + kGuardBytes) + kGuardBytes;
}

// The scheduler's own stack, learnt from ASan on the first switch into a coroutine.
inline const void* scheduler_stack_bottom = nullptr;
inline size_t scheduler_stack_size = 0;
inline void* scheduler_fake_stack = nullptr;

// Scheduler -> coroutine `t`, until it yields.
inline void switch_to(Thread& t) {
    current = &t;
#ifdef LRC_EMU_ASAN
    __sanitizer_start_switch_fiber(&scheduler_fake_stack, t.stack, kStackBytes);
#endif
    swap_context(scheduler, t.context);
#ifdef LRC_EMU_ASAN
    __sanitizer_finish_switch_fiber(scheduler_fake_stack, nullptr, nullptr);
#endif
    current = nullptr;
}

// Coroutine -> scheduler; returns when the scheduler runs this thread again.
inline void yield(State s) {
    Thread* self = current;
    self->state = s;
#ifdef LRC_EMU_ASAN
    __sanitizer_start_switch_fiber(&self->fake_stack, scheduler_stack_bottom, scheduler_stack_size);
#endif
    swap_context(self->context, scheduler);
#ifdef LRC_EMU_ASAN
    __sanitizer_finish_switch_fiber(self->fake_stack, nullptr, nullptr);
#endif
}

// A coroutine's first frame. It never returns (the final switch leaves it), so it is kept
// uninstrumented: no red zones of its own stay poisoned on the stack that the next block reuses.
#ifdef LRC_EMU_ASAN
__attribute__((no_sanitize_address))
#endif
inline void entry() {
#ifdef LRC_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &scheduler_stack_bottom, &scheduler_stack_size);
#endif
    body();
    if (!current->copies.empty()) {
        fail("the thread ended with cp.async copies it never waited for");
    }
    current->state = State::Done;
#ifdef LRC_EMU_ASAN
    // A null save slot tells ASan this coroutine ends.
    __sanitizer_start_switch_fiber(nullptr, scheduler_stack_bottom, scheduler_stack_size);
#endif
    swap_context(current->context, scheduler);
}

inline int thread_rank(const Thread& t) { return static_cast<int>(t.index.x); }

// Runs one block to completion.
inline void run_block() {
    const int n = static_cast<int>(block_dim.x);
    threads.clear();
    threads.resize(n);
    reset_warp_slots();
    reset_warpgroups(n);
    for (int i = 0; i < n; ++i) {
        Thread& t = threads[i];
        t.index.x = i;
        t.stack = stack_of(i);
        make_context(t.context, t.stack, kStackBytes, entry);
    }
    const int warps = (n + kWarp - 1) / kWarp;
    // Releases warp w from a warp collective when all 32 lanes wait there.
    const auto release_warp = [&](int w) {
        int waiting = 0;
        for (int l = 0; l < kWarp && w * kWarp + l < n; ++l) {
            waiting += threads[w * kWarp + l].state == State::AtWarpBarrier;
        }
        if (waiting != kWarp) {
            return false;
        }
        for (int l = 0; l < kWarp; ++l) {
            threads[w * kWarp + l].state = State::Runnable;
        }
        return true;
    };
    for (;;) {
        // One phase: warp by warp in schedule order, each runs (its lanes in schedule order,
        // through its warp collectives) until it waits at a block barrier or a warpgroup
        // collective or ends, before the next warp starts: one warp runs ahead of the others
        // as far as the block's barriers let it, as it may on the hardware, so that a missing
        // barrier (a warp reading a tile others have yet to write, or overwriting one they have
        // yet to read) changes the results of one schedule.
        for (int k = 0; k < warps; ++k) {
            const int w = reverse_schedule ? warps - 1 - k : k;
            const int lanes = std::min(kWarp, n - w * kWarp);
            do {
                for (int j = 0; j < lanes; ++j) {
                    Thread& t = threads[w * kWarp + (reverse_schedule ? lanes - 1 - j : j)];
                    while (t.state == State::Runnable) {
                        switch_to(t);
                    }
                }
            } while (release_warp(w));
        }
        // (A phase leaves no warp whose 32 lanes all wait at a warp collective: it released
        // each as it filled.)
        bool all_done = true;
        bool released = false;
        // Warpgroup collectives: all 128 threads must be waiting. One warpgroup at a time, the
        // first in schedule order, so that the others stay behind: a warpgroup that runs ahead
        // after its wait_group may overwrite shared memory that another one's pending wgmma has
        // yet to read, as it may on the hardware.
        for (int k = 0; k * kWarpgroup < n && !released; ++k) {
            const int groups = (n + kWarpgroup - 1) / kWarpgroup;
            const int g = reverse_schedule ? groups - 1 - k : k;
            int waiting = 0;
            for (int l = 0; l < kWarpgroup && g * kWarpgroup + l < n; ++l) {
                waiting += threads[g * kWarpgroup + l].state == State::AtGroupBarrier;
            }
            if (waiting == kWarpgroup) {
                release_warpgroup(g);
                for (int l = 0; l < kWarpgroup; ++l) {
                    threads[g * kWarpgroup + l].state = State::Runnable;
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
            check_warpgroups_idle();
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
        fail("deadlock: divergent __syncthreads, or a warp (warpgroup) collective without all 32 (128) threads");
    }
    threads.clear();
}

inline void set_dynamic_shared(size_t bytes);

// Runs the kernel call `f` over the grid, one block at a time (in reverse order under
// `reverse_schedule`), with `shared_bytes` of dynamic shared memory (filled with NaN bytes, as
// real shared memory starts undefined).
inline void launch(dim3 grid, dim3 block, const std::function<void()>& f, size_t shared_bytes = 0) {
    if (block.y != 1 || block.z != 1 || block.x % kWarp != 0 || block.x > kMaxThreads) {
        fail("only 1-D blocks of whole warps, at most 1024 threads, are emulated");
    }
    set_dynamic_shared(shared_bytes);
    grid_dim = grid;
    block_dim = block;
    body = f;
    const auto order = [](unsigned i, unsigned n) { return reverse_schedule ? n - 1 - i : i; };
    for (unsigned z = 0; z < grid.z; ++z) {
        for (unsigned y = 0; y < grid.y; ++y) {
            for (unsigned x = 0; x < grid.x; ++x) {
                block_index = {order(x, grid.x), order(y, grid.y), order(z, grid.z)};
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
    uint32_t f[2][kWarp];
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

// Lane `lane` receives the 32-bit value of lane source(lane).
template <class T, class Source>
inline T shuffle(T v, Source source) {
    static_assert(sizeof(T) == 4, "only 32-bit values are shuffled");
    int lane, parity;
    WarpSlots& s = my_warp(lane, parity);
    std::memcpy(&s.f[parity][lane], &v, 4);
    yield(State::AtWarpBarrier);
    const int from = source(lane);
    T out;
    std::memcpy(&out, &s.f[parity][(from >= 0 && from < kWarp) ? from : lane], 4);
    return out;
}

// Every lane receives the 32 predicates of the warp, lane i in bit i.
inline uint32_t ballot(bool predicate) {
    int lane, parity;
    WarpSlots& s = my_warp(lane, parity);
    s.f[parity][lane] = predicate ? 1u : 0u;
    yield(State::AtWarpBarrier);
    uint32_t bits = 0;
    for (int l = 0; l < kWarp; ++l) {
        bits |= (s.f[parity][l] & 1u) << l;
    }
    return bits;
}

inline void check_full_mask(unsigned mask) {
    if (mask != 0xffffffffu) {
        fail("only full-warp collectives are emulated");
    }
}

// Dynamic shared memory of the running launch (LRC_DYNAMIC_SHARED), 16-byte aligned and
// exactly as long as the launch asked for: under ASan the first byte past it is poisoned.
struct AlignedFree {
    void operator()(unsigned char* p) const { ::operator delete[](p, std::align_val_t{16}); }
};
inline std::unique_ptr<unsigned char[], AlignedFree> dynamic_shared_bytes;
inline size_t dynamic_shared_size = 0;
inline void set_dynamic_shared(size_t bytes) {
    dynamic_shared_bytes.reset(static_cast<unsigned char*>(::operator new[](bytes, std::align_val_t{16})));
    std::memset(dynamic_shared_bytes.get(), 0xff, bytes);
    dynamic_shared_size = bytes;
}
inline void* dynamic_shared() {
    return dynamic_shared_bytes.get();
}

// The kernels of every file, by name, for the runner (runner.cpp): LRC_KERNEL registers each one.
struct KernelEntry {
    const char* name;
    size_t param_bytes;
    // The first argument of its __launch_bounds__: a launch with more threads per block fails
    // on the GPU (CUDA_ERROR_INVALID_VALUE), so the runner refuses it too.
    unsigned max_threads;
    std::function<void(const unsigned char*)> call;
};
// The maximum threads per block of a __launch_bounds__(max_threads[, min_blocks[, max_cluster]]).
constexpr unsigned launch_bound_threads(unsigned max_threads, unsigned = 0, unsigned = 0) { return max_threads; }
inline std::vector<KernelEntry>& registry() {
    static std::vector<KernelEntry> entries;
    return entries;
}
struct Registration {
    template <class P>
    Registration(const char* name, void (*kernel)(const P), unsigned max_threads) {
        registry().push_back({name, sizeof(P), max_threads, [kernel](const unsigned char* bytes) {
                                  P p;
                                  std::memcpy(static_cast<void*>(&p), bytes, sizeof(P));
                                  kernel(p);
                              }});
    }
};

inline float as_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// cvt.rn.tf32.f32: the float rounded to a 10-bit significand, to nearest with ties to even
// (the dropped 13 bits cleared); inf and NaN pass through.
inline uint32_t cvt_rn_tf32(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) {
        return u;
    }
    // Just under half of the dropped part's unit, plus the kept part's lowest bit: a tie rounds
    // up only from an odd neighbour.
    return (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu;
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

// cvt.rn.bf16.f32: the upper 16 bits of the float, rounded to nearest even; NaN becomes the
// canonical NaN, and finite values past the largest BF16 round to infinity, as in IEEE.
inline uint16_t cvt_rn_bf16(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return 0x7fffu;
    }
    return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// cvt.rn.bf16x2.f32 d, hi, lo: hi in the upper half, lo in the lower.
inline uint32_t cvt_rn_bf16x2(float hi, float lo) {
    return (static_cast<uint32_t>(cvt_rn_bf16(hi)) << 16) | cvt_rn_bf16(lo);
}

// The float a BF16 value stands for (exact).
inline float bf16_value(uint32_t bits16) { return as_float(bits16 << 16); }

// mma.sync m16n8k16 .bf16 with FP32 accumulation, in the fragment layout of the PTX ISA
// ("Matrix Fragments for mma.m16n8k16 with floating point type"): for g = lane / 4, t = lane % 4
// and element e (low half 0, high half 1) of each register, A register r holds
// A[g + 8 (r % 2)][2t + e + 8 (r / 2)], B register r holds B[2t + e + 8r][g]. A product of two
// BF16 values (8-bit significands) is exact in FP32, so only the additions round; they run in k
// order after the accumulator, one rounding each. The hardware's internal order and rounding of
// the additions are not documented and may differ; the tests' tolerances cover any order.
inline void mma_bf16_16x8x16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    int lane, parity;
    WarpSlots& s = my_warp(lane, parity);
    std::memcpy(s.a[parity][lane], a, sizeof(a));
    std::memcpy(s.b[parity][lane], b, sizeof(b));
    yield(State::AtWarpBarrier);
    float A[16][16], B[16][8];
    for (int l = 0; l < kWarp; ++l) {
        const int g = l / 4, t = l % 4;
        for (int r = 0; r < 4; ++r) {
            for (int e = 0; e < 2; ++e) {
                A[g + 8 * (r % 2)][2 * t + e + 8 * (r / 2)] = bf16_value((s.a[parity][l][r] >> (16 * e)) & 0xffffu);
            }
        }
        for (int r = 0; r < 2; ++r) {
            for (int e = 0; e < 2; ++e) {
                B[2 * t + e + 8 * r][g] = bf16_value((s.b[parity][l][r] >> (16 * e)) & 0xffffu);
            }
        }
    }
    const int g = lane / 4, t = lane % 4;
    const int rows[4] = {g, g, g + 8, g + 8};
    const int cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int i = 0; i < 4; ++i) {
        float acc = d[i];
        for (int k = 0; k < 16; ++k) {
            acc += A[rows[i]][k] * B[k][cols[i]];
        }
        d[i] = acc;
    }
}

// ---------------------------------------------------------------------------------------------
// Warpgroup MMA (wgmma, sm_90a), per the PTX ISA section "Asynchronous Warpgroup Level Matrix
// Multiply-Accumulate Instructions". A warpgroup is 4 consecutive warps (threads 128 g ..
// 128 g + 127); every thread of it must reach each collective (fence, mma_async, commit_group,
// wait_group) and all must agree on it, or the program stops with a message.
// - mma_async queues the operation in the warpgroup's open group, remembering where each
//   thread's accumulator and A registers are; commit_group closes the open group; wait_group N
//   runs the oldest committed groups until at most N remain pending. Only then are shared
//   memory, the A registers and the accumulators read and written, so a kernel that changes a
//   stage, its A registers or reads its accumulators before waiting computes wrong results here
//   as it may on the hardware.
// - The PTX ISA asks for wgmma.fence before the first mma_async and whenever registers it uses
//   were written since; here an mma_async must follow a fence issued after the last
//   commit_group (the pattern fence, mma_async..., commit_group).
// - A block must not end with wgmma operations open or pending.
// Shapes: m64nNk8 .f32.tf32.tf32 and m64nNk16 .f32.bf16.bf16, A from registers (the fragment of
// mma.sync m16n8k8 / m16n8k16 per warp, warp w of the group holding rows 16 w .. 16 w + 15), B
// K-major in shared memory without swizzle, D the accumulator fragment: thread register
// i holds D[16 w + g + 8 ((i / 2) % 2)][8 (i / 4) + 2 t + i % 2] for g = lane / 4, t = lane % 4.
// Matrix descriptor (64 bits): start address >> 4 in bits 0-13, leading-dimension byte offset
// >> 4 in bits 16-29, stride-dimension byte offset >> 4 in bits 32-45, base offset in bits
// 49-51, swizzle mode in bits 62-63 (0: none, the only one emulated; base offset must be 0).
// No-swizzle K-major layout: core matrices of 8 rows x 16 bytes, rows 16 bytes apart; the core
// matrix holding B rows 8 j.. and k bytes 16 i.. starts at start + j SBO + i LBO (LBO: between
// core matrices adjacent along k, SBO: adjacent along n).
// TF32 operands are read as the hardware reads them: the top 19 bits of each 32-bit word.
// Products are summed in k order onto the accumulator, one FP32 rounding each.

enum class GroupOp { None, Fence, Mma, Commit, Wait };
enum class WgmmaType { Tf32, Bf16 };

struct GroupCall {
    GroupOp op = GroupOp::None;
    WgmmaType type = WgmmaType::Tf32;
    int n = 0;
    float* d = nullptr;
    const uint32_t* a = nullptr;
    uint64_t desc = 0;
    bool scale_d = true;
    int pending = 0;
};

struct WgmmaOp {
    WgmmaType type;
    int n;
    uint64_t desc;
    bool scale_d;
    float* d[kWarpgroup];
    const uint32_t* a[kWarpgroup];
};

struct Warpgroup {
    std::vector<WgmmaOp> open;
    std::vector<std::vector<WgmmaOp>> committed;
    bool fenced = false;
};
inline std::vector<Warpgroup> warpgroups;
inline GroupCall group_calls[kMaxThreads];

inline void reset_warpgroups(int threads) {
    warpgroups.assign((threads + kWarpgroup - 1) / kWarpgroup, Warpgroup{});
}

// The emulated shared-memory window: dynamic shared memory starts at shared address 0.
inline uint32_t shared_address(const void* p) {
    const auto* bytes = static_cast<const unsigned char*>(p);
    const unsigned char* base = dynamic_shared_bytes.get();
    if (base == nullptr || bytes < base || bytes > base + dynamic_shared_size) {
        fail("__cvta_generic_to_shared: only dynamic shared memory has a shared address here");
    }
    return static_cast<uint32_t>(bytes - base);
}

// The 32-bit word at shared address `at` (4-byte aligned, inside dynamic shared memory).
inline uint32_t shared_word(uint64_t at) {
    if (at % 4 != 0 || at + 4 > dynamic_shared_size) {
        fail("wgmma: a descriptor addresses a word outside dynamic shared memory");
    }
    uint32_t w;
    std::memcpy(&w, dynamic_shared_bytes.get() + at, 4);
    return w;
}

// Word kw (4 bytes each, 8 per row: 32 bytes of k) of row r of a K-major, no-swizzle B operand.
inline uint32_t descriptor_word(uint64_t desc, int r, int kw) {
    const uint64_t start = (desc & 0x3fffu) << 4;
    const uint64_t lbo = ((desc >> 16) & 0x3fffu) << 4;
    const uint64_t sbo = ((desc >> 32) & 0x3fffu) << 4;
    return shared_word(start + (r / 8) * sbo + (r % 8) * 16 + (kw / 4) * lbo + (kw % 4) * 4);
}

inline void run_wgmma(const WgmmaOp& op) {
    if ((op.desc >> 62) != 0 || ((op.desc >> 49) & 7u) != 0) {
        fail("wgmma: only the no-swizzle layout with base offset 0 is emulated");
    }
    // A: 64 x 8 words; B: n x 8 words; both as floats along k (TF32: 8 values; BF16: 16).
    const int kv = op.type == WgmmaType::Tf32 ? 8 : 16;
    std::vector<float> A(64 * kv), B(static_cast<size_t>(op.n) * kv);
    const auto put = [&](std::vector<float>& m, int row, int word, uint32_t bits) {
        if (op.type == WgmmaType::Tf32) {
            m[row * kv + word] = as_float(bits & ~0x1fffu);
        } else {
            m[row * kv + 2 * word] = as_float(bits << 16);
            m[row * kv + 2 * word + 1] = as_float(bits & 0xffff0000u);
        }
    };
    for (int th = 0; th < kWarpgroup; ++th) {
        const int w = th / kWarp, g = (th % kWarp) / 4, t = th % 4;
        for (int r = 0; r < 4; ++r) {
            put(A, 16 * w + g + 8 * (r % 2), t + 4 * (r / 2), op.a[th][r]);
        }
    }
    for (int r = 0; r < op.n; ++r) {
        for (int kw = 0; kw < 8; ++kw) {
            put(B, r, kw, descriptor_word(op.desc, r, kw));
        }
    }
    for (int th = 0; th < kWarpgroup; ++th) {
        const int w = th / kWarp, g = (th % kWarp) / 4, t = th % 4;
        for (int i = 0; i < op.n / 2; ++i) {
            const int row = 16 * w + g + 8 * ((i / 2) % 2);
            const int col = 8 * (i / 4) + 2 * t + i % 2;
            float acc = op.scale_d ? op.d[th][i] : 0.0f;
            for (int k = 0; k < kv; ++k) {
                acc += A[row * kv + k] * B[col * kv + k];
            }
            op.d[th][i] = acc;
        }
    }
}

// Runs the collective that every thread of warpgroup `group` is waiting at.
inline void release_warpgroup(int group) {
    const GroupCall& first = group_calls[group * kWarpgroup];
    for (int l = 1; l < kWarpgroup; ++l) {
        const GroupCall& c = group_calls[group * kWarpgroup + l];
        if (c.op != first.op || c.type != first.type || c.n != first.n || c.desc != first.desc ||
            c.scale_d != first.scale_d || c.pending != first.pending) {
            fail("wgmma: the threads of a warpgroup reached different collectives or operands");
        }
    }
    Warpgroup& wg = warpgroups[group];
    switch (first.op) {
        case GroupOp::Fence:
            wg.fenced = true;
            break;
        case GroupOp::Mma: {
            if (!wg.fenced) {
                fail("wgmma.mma_async without a wgmma.fence since the last commit_group");
            }
            WgmmaOp op{first.type, first.n, first.desc, first.scale_d, {}, {}};
            for (int l = 0; l < kWarpgroup; ++l) {
                op.d[l] = group_calls[group * kWarpgroup + l].d;
                op.a[l] = group_calls[group * kWarpgroup + l].a;
            }
            wg.open.push_back(op);
            break;
        }
        case GroupOp::Commit:
            wg.committed.push_back(std::move(wg.open));
            wg.open.clear();
            wg.fenced = false;
            break;
        case GroupOp::Wait:
            while (static_cast<int>(wg.committed.size()) > first.pending) {
                for (const WgmmaOp& op : wg.committed.front()) {
                    run_wgmma(op);
                }
                wg.committed.erase(wg.committed.begin());
            }
            break;
        case GroupOp::None:
            fail("wgmma: internal error, a warpgroup released without a collective");
    }
}

inline void check_warpgroups_idle() {
    for (const Warpgroup& wg : warpgroups) {
        if (!wg.open.empty() || !wg.committed.empty()) {
            fail("a block ended with wgmma operations not committed or not waited for");
        }
    }
}

// The calling thread's part of a warpgroup collective.
inline void group_collective(const GroupCall& call) {
    if (block_dim.x % kWarpgroup != 0) {
        fail("wgmma needs blocks of whole warpgroups (a multiple of 128 threads)");
    }
    group_calls[thread_rank(*current)] = call;
    yield(State::AtGroupBarrier);
}

inline void wgmma_fence() { group_collective(GroupCall{GroupOp::Fence}); }
inline void wgmma_commit() { group_collective(GroupCall{GroupOp::Commit}); }
inline void wgmma_wait(int pending) {
    GroupCall c{GroupOp::Wait};
    c.pending = pending;
    group_collective(c);
}
// d (n / 2 accumulators) += A (4 registers) * B (descriptor), when all threads have waited.
inline void wgmma_async(WgmmaType type, int n, float* d, const uint32_t* a, uint64_t desc, bool scale_d) {
    GroupCall c{GroupOp::Mma};
    c.type = type;
    c.n = n;
    c.d = d;
    c.a = a;
    c.desc = desc;
    c.scale_d = scale_d;
    group_collective(c);
}

}  // namespace emu

#define threadIdx (emu::current->index)
#define blockIdx (emu::block_index)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

inline void __syncthreads() { emu::sync_block(); }
// A warp barrier: all 32 lanes must reach it.
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu::check_full_mask(mask);
    (void)emu::ballot(true);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int offset) {
    emu::check_full_mask(mask);
    return emu::shuffle(v, [offset](int lane) { return lane ^ offset; });
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta) {
    emu::check_full_mask(mask);
    // Lanes whose source is past the warp keep their own value.
    return emu::shuffle(v, [delta](int lane) { return lane + static_cast<int>(delta); });
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta) {
    emu::check_full_mask(mask);
    return emu::shuffle(v, [delta](int lane) { return lane - static_cast<int>(delta); });
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src_lane) {
    emu::check_full_mask(mask);
    return emu::shuffle(v, [src_lane](int) { return src_lane % emu::kWarp; });
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
    emu::check_full_mask(mask);
    return emu::ballot(predicate != 0);
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) == 0xffffffffu; }

// One OS thread runs every emulated thread, so read-modify-write is atomic as written.
template <class T>
inline T atomicAdd(T* address, T v) {
    const T old = *address;
    *address = old + v;
    return old;
}
template <class T>
inline T atomicMax(T* address, T v) {
    const T old = *address;
    *address = std::max(old, v);
    return old;
}
template <class T>
inline T atomicMin(T* address, T v) {
    const T old = *address;
    *address = std::min(old, v);
    return old;
}
template <class T>
inline T atomicExch(T* address, T v) {
    const T old = *address;
    *address = v;
    return old;
}
template <class T>
inline T atomicCAS(T* address, T compare, T v) {
    const T old = *address;
    if (old == compare) {
        *address = v;
    }
    return old;
}
template <class T>
inline T __ldg(const T* address) {
    return *address;
}
inline int min(int a, int b) { return std::min(a, b); }
inline int max(int a, int b) { return std::max(a, b); }
inline unsigned min(unsigned a, unsigned b) { return std::min(a, b); }
inline unsigned max(unsigned a, unsigned b) { return std::max(a, b); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __saturatef(float x) { return std::fmin(std::fmax(x, 0.0f), 1.0f); }
inline unsigned __float_as_uint(float x) {
    unsigned u;
    std::memcpy(&u, &x, 4);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}
inline int __float_as_int(float x) { return static_cast<int>(__float_as_uint(x)); }
inline float __int_as_float(int i) { return __uint_as_float(static_cast<unsigned>(i)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
// Correctly rounded arithmetic that the GPU code spells out to keep nvcc from fusing a multiply
// and an add. The host compiler does not contract in ISO C++ mode (-std=c++20), so the plain
// operators round each operation as the intrinsics do.
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __double2float_rn(double x) { return static_cast<float>(x); }
inline long long __double_as_longlong(double x) {
    long long i;
    std::memcpy(&i, &x, 8);
    return i;
}
inline double __longlong_as_double(long long i) {
    double x;
    std::memcpy(&x, &i, 8);
    return x;
}
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
// Shared addresses exist for dynamic shared memory only (see emu::shared_address).
inline size_t __cvta_generic_to_shared(const void* p) { return emu::shared_address(p); }
