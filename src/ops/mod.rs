//! Differentiable ops. Each module holds the CPU reference kernels (generic over f32/f64), the
//! device dispatch, and the `Tape` method that records the op with its backward.

pub mod activation;
pub mod concat;
pub mod conv;
pub mod conv_transpose;
pub mod dice;
pub mod gemm;
pub mod infonce;
pub mod instance_norm;
pub mod labels;
pub mod linear;
pub mod local_contrast;
pub mod normalize;
pub mod pointwise;
pub mod pool;
pub mod softmax;
