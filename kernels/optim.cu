// Optimizer steps and the MoCo momentum update applied to many tensors in one launch
// ("multi-tensor apply"), and the MoCo key queue's ring-buffer write.
//
// The addresses of up to MAX_TENSORS tensors travel in the launch's parameter struct, so that no
// address table is copied to the device at each step; a model with more tensors takes several
// launches. Tensor t covers elements [offset[t], offset[t+1]) of a virtual flat index space that
// the grid tiles in chunks of CHUNK elements; a thread finds the tensor of its element by walking
// the offsets (they only grow along its loop).
//
// Update rules, element by element, as src/optim.rs (torch.optim) in f32 arithmetic:
//   SGD:   d = g + wd p; buf = first ? d : momentum buf + d; p -= lr buf  (buf only if momentum != 0)
//   Adam:  d = g + wd p; m = b1 m + (1-b1) d; v = b2 v + (1-b2) d^2;
//          p -= step_size m / (sqrt(v) / sqrt_bc2 + eps), step_size = lr / (1 - b1^t)
//   AdamW: p *= 1 - lr wd first, then Adam with wd = 0 in d.
//   Lerp:  p = m p + (1 - m) q   (q in the gradient slot: the key encoder's momentum update)
#include "common.cuh"

namespace optim {

constexpr int MAX_TENSORS = 96;
constexpr int THREADS = 256;
constexpr int CHUNK = 4096;

enum Kind : int { SGD = 0, ADAM = 1, ADAMW = 2, LERP = 3 };

}  // namespace optim

struct MultiTensorParams {
    float* param[optim::MAX_TENSORS];
    const float* grad[optim::MAX_TENSORS];   // Lerp: the values mixed in
    float* state1[optim::MAX_TENSORS];       // SGD momentum buffer, Adam first moment (or null)
    float* state2[optim::MAX_TENSORS];       // Adam second moment (or null)
    int offset[optim::MAX_TENSORS + 1];      // prefix sums of the tensors' lengths
    int tensors;
    int kind;
    int first_step;  // SGD: the momentum buffer starts as d
    float lr;
    float momentum;  // SGD momentum; Lerp: the weight m of the old value
    float weight_decay;
    float beta1;
    float beta2;
    float eps;
    float step_size;  // lr / (1 - beta1^t)
    float sqrt_bc2;   // sqrt(1 - beta2^t)
};
static_assert(sizeof(MultiTensorParams) == 3504, "MultiTensorParams must match its Rust mirror");
static_assert(offsetof(MultiTensorParams, offset) == 3072, "MultiTensorParams must match its Rust mirror");
static_assert(offsetof(MultiTensorParams, tensors) == 3460, "MultiTensorParams must match its Rust mirror");

// dst rows [row, row + rows) of a queue of `capacity` rows of `dim` values, wrapping around, from
// `src` (rows x dim): the MoCo queue's enqueue, on the device.
struct QueueWriteParams {
    float* queue;
    const float* src;
    int capacity;
    int dim;
    int rows;
    int row;
};
static_assert(sizeof(QueueWriteParams) == 32, "QueueWriteParams must match its Rust mirror");

namespace optim {

__device__ __forceinline__ void update(const MultiTensorParams& p, int t, int j) {
    float* param = p.param[t];
    const float g = p.grad[t][j];
    float w = param[j];
    switch (p.kind) {
        case SGD: {
            float d = g + p.weight_decay * w;
            if (p.momentum != 0.0f) {
                float* buf = p.state1[t];
                d = p.first_step ? d : p.momentum * buf[j] + d;
                buf[j] = d;
            }
            param[j] = w - p.lr * d;
            break;
        }
        case ADAM:
        case ADAMW: {
            float d = g;
            if (p.kind == ADAMW) {
                w *= 1.0f - p.lr * p.weight_decay;
            } else {
                d += p.weight_decay * w;
            }
            float* m1 = p.state1[t];
            float* m2 = p.state2[t];
            const float m = p.beta1 * m1[j] + (1.0f - p.beta1) * d;
            const float v = p.beta2 * m2[j] + (1.0f - p.beta2) * d * d;
            m1[j] = m;
            m2[j] = v;
            param[j] = w - p.step_size * m / (sqrtf(v) / p.sqrt_bc2 + p.eps);
            break;
        }
        default:  // LERP
            param[j] = p.momentum * w + (1.0f - p.momentum) * g;
            break;
    }
}

}  // namespace optim

// Grid ceil(offset[tensors] / CHUNK), 256 threads.
LRC_KERNEL(multi_tensor_step, MultiTensorParams, optim::THREADS) {
    using namespace optim;
    const int total = p.offset[p.tensors];
    const int start = blockIdx.x * CHUNK;
    const int end = min(start + CHUNK, total);
    int t = 0;
    for (int i = start + threadIdx.x; i < end; i += THREADS) {
        while (p.offset[t + 1] <= i) {
            ++t;
        }
        update(p, t, i - p.offset[t]);
    }
}

// Grid ceil(rows * dim / 256), 256 threads.
LRC_KERNEL(queue_write, QueueWriteParams, 256) {
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e < p.rows * p.dim) {
        const int r = e / p.dim;
        const int row = (p.row + r) % p.capacity;
        p.queue[static_cast<size_t>(row) * p.dim + e % p.dim] = p.src[e];
    }
}
