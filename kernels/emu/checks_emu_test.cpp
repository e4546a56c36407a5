// Kernels with planted bugs, for the tests of the emulator's own checks (tests/emu_checks.rs):
// each one does what compute-sanitizer's memcheck or racecheck would report on a GPU, beside a
// correct control. Built into a runner of their own (lrc::device::emu::test_runner), never into
// the shipped one: kernels/*.cu all ship.
#include "common.cuh"

struct PlantedParams {
    const float* in;
    float* out;
    int* counter;
    int n;
    int pad;
};
static_assert(sizeof(PlantedParams) == 32, "PlantedParams layout");

namespace planted {
__device__ __forceinline__ int global_index() { return blockIdx.x * blockDim.x + threadIdx.x; }
}  // namespace planted

// Control: out = in.
LRC_KERNEL(planted_copy, PlantedParams, 64) {
    const int i = planted::global_index();
    if (i < p.n) p.out[i] = p.in[i];
}

// The last thread reads in[n].
LRC_KERNEL(planted_read_past_end, PlantedParams, 64) {
    const int i = planted::global_index();
    if (i < p.n) p.out[i] = p.in[i] + p.in[i + 1];
}

// One thread too many writes: out[n].
LRC_KERNEL(planted_write_past_end, PlantedParams, 64) {
    const int i = planted::global_index();
    if (i <= p.n) p.out[i] = p.in[i < p.n ? i : 0];
}

// float4 loads one float past the input's start: 4-byte aligned, not 16 (on the GPU: a
// misaligned address error).
LRC_KERNEL(planted_misaligned_float4, PlantedParams, 64) {
    const int i = planted::global_index();
    if (4 * i + 8 <= p.n) {
        const float4 v = reinterpret_cast<const float4*>(p.in + 1)[i];
        p.out[i] = v.x + v.y + v.z + v.w;
    }
}

// Dynamic shared memory of n floats, written at 1..n.
LRC_KERNEL(planted_dynamic_shared_overrun, PlantedParams, 64) {
    LRC_DYNAMIC_SHARED(float, s);
    const int t = threadIdx.x;
    if (t < p.n) s[t + 1] = p.in[t];
    __syncthreads();
    if (t < p.n) p.out[t] = s[t];
}

// A static shared array of 32 floats, written at 1..32.
LRC_KERNEL(planted_static_shared_overrun, PlantedParams, 32) {
    __shared__ float s[32];
    const int t = threadIdx.x;
    s[t + 1] = p.in[t];
    __syncthreads();
    p.out[t] = s[t];
}

// Thread 0 writes shared memory and thread 1 reads it with no barrier in between.
LRC_KERNEL(planted_shared_race, PlantedParams, 64) {
    __shared__ float s;
    if (threadIdx.x == 0) s = p.in[blockIdx.x];
    if (threadIdx.x == 1) p.out[blockIdx.x] = s;
}

// Control: the same with the barrier.
LRC_KERNEL(planted_shared_with_barrier, PlantedParams, 64) {
    __shared__ float s;
    if (threadIdx.x == 0) s = p.in[blockIdx.x];
    __syncthreads();
    if (threadIdx.x == 1) p.out[blockIdx.x] = s;
}

// Each thread writes its word of shared memory between two warp collectives and reads its
// partner's in the other warp with no block barrier in between: a warp that runs ahead of the
// other reads a word not yet written.
LRC_KERNEL(planted_warp_runs_ahead, PlantedParams, 64) {
    __shared__ float s[64];
    const int t = threadIdx.x;
    const float v = __shfl_xor_sync(0xffffffffu, p.in[t], 1);
    s[t] = v;
    const float w = __shfl_xor_sync(0xffffffffu, v, 1);
    p.out[t] = s[t ^ 32] + 0.0f * w;
}

// Control: the same with the barrier.
LRC_KERNEL(planted_warp_waits, PlantedParams, 64) {
    __shared__ float s[64];
    const int t = threadIdx.x;
    const float v = __shfl_xor_sync(0xffffffffu, p.in[t], 1);
    s[t] = v;
    __syncthreads();
    const float w = __shfl_xor_sync(0xffffffffu, v, 1);
    p.out[t] = s[t ^ 32] + 0.0f * w;
}

// Every block writes out[0]: the last one to run wins.
LRC_KERNEL(planted_last_block_wins, PlantedParams, 64) {
    if (threadIdx.x == 0) p.out[0] = static_cast<float>(blockIdx.x);
}

// Each thread claims a slot of out with an atomic counter and writes its index there: out holds
// 0..n-1 in an order that depends on the schedule, the final count does not.
LRC_KERNEL(planted_claimed_slots, PlantedParams, 64) {
    const int i = planted::global_index();
    if (i < p.n) p.out[atomicAdd(p.counter, 1)] = static_cast<float>(i);
}

// Warpgroup MMA used right (p.pad = 0) and wrongly: one warpgroup multiplies A = 1 (64 x 8, TF32
// from registers) by B = 1 (64 x 8 in dynamic shared memory, 2048 bytes: core matrices 128 bytes
// apart along k, 256 along n), so every thread's first accumulator is 8 (out[thread]). Misuses:
// 1 an mma_async without wgmma.fence, 2 half the warpgroup skipping the fence, 3 the group never
// waited for, 4 one thread giving another descriptor.
LRC_KERNEL(planted_wgmma, PlantedParams, 128) {
    LRC_DYNAMIC_SHARED(uint32_t, s);
    const int t = threadIdx.x;
    for (int i = t; i < 512; i += 128) s[i] = 0x3f800000u;
    __syncthreads();
    const uint32_t one = 0x3f800000u;
    const uint32_t a[4] = {one, one, one, one};
    float d[32] = {};
    const uint32_t base = lrc::shared_address(s);
    const bool odd_one = p.pad == 4 && t == 5;
    const uint64_t desc = odd_one ? lrc::wgmma_descriptor(base, 256, 128) : lrc::wgmma_descriptor(base, 128, 256);
    if (p.pad != 1 && (p.pad != 2 || t < 64)) lrc::wgmma_fence();
    lrc::wgmma_tf32_m64n64k8(d, a, desc);
    lrc::wgmma_commit();
    if (p.pad != 3) lrc::wgmma_wait<0>();
    p.out[t] = d[0];
}
