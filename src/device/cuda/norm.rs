//! Instance normalisation fused with its activation, and the activations alone, on the GPU: the
//! host side of `kernels/norm.cu`.
//!
//! Each (image, channel) plane is normalised by one group of threads, chosen by plane length
//! ([`choose_launch`]):
//! - [`NormLaunch::Warp`] for planes of up to 1024 values (256 when read one value at a time):
//!   one warp per plane, eight planes per block, the plane held in registers (2 packs a lane up
//!   to 256 values, 8 beyond), so `x` is read once and the statistics need only warp shuffles
//!   (the U-Net's 16x16 and 32x32 levels have thousands of such planes, enough to fill the GPU
//!   many times over).
//! - [`NormLaunch::Block`] for longer planes that fit one block's registers plus its shared
//!   memory: still one read of `x` (and `dy`). The block has 512 threads (fewer for planes that
//!   need fewer) so that two or more blocks share a multiprocessor and one block's reduction
//!   overlaps another's memory traffic; when the shared memory a plane needs would allow only one
//!   block per multiprocessor anyway, 1024 threads hold more of it in registers instead. On an
//!   H100 this serves the forward pass of every U-Net level down from 256x256 and the backward
//!   pass down from 128x128.
//! - [`NormLaunch::Stream`] for planes that do not fit (the 256x256 backward: `x` and `dy`
//!   together are 512 KiB): the statistics from a first read, the results from a second, in
//!   blocks of 512 threads so that two share a multiprocessor.
//!
//! One group per plane keeps every reduction in one place and in a fixed order, so results are
//! deterministic without a second pass over partial sums; dgamma and dbeta add the per-plane sums
//! over the images in image order. With fewer planes than about twice the multiprocessors (batch 1
//! at the top level) the streaming and block launches leave part of the GPU idle; no launch splits
//! a plane across blocks yet.

use super::call::{KernelCall, blocks_for};
use super::launch::dim;
use super::operand::{check_len, common_device};
use super::{CudaDevice, CudaStorage};
use crate::error::{Error, Result};
use crate::ops::instance_norm::Activation;

const MODULE: &str = "norm";

/// `NormForwardParams` of `kernels/norm.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NormForwardParams {
    pub x: u64,
    pub gamma: u64,
    pub beta: u64,
    pub y: u64,
    pub mean: u64,
    pub inv_std: u64,
    pub planes: i32,
    pub channels: i32,
    pub plane_len: i32,
    pub act: i32,
    pub slope: f32,
    pub eps: f32,
}

const _: () = assert!(size_of::<NormForwardParams>() == 72);
const _: () = assert!(std::mem::offset_of!(NormForwardParams, planes) == 48);
const _: () = assert!(std::mem::offset_of!(NormForwardParams, eps) == 68);

/// `NormBackwardParams` of `kernels/norm.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NormBackwardParams {
    pub x: u64,
    pub dy: u64,
    pub gamma: u64,
    pub beta: u64,
    pub mean: u64,
    pub inv_std: u64,
    pub dx: u64,
    pub dgamma_part: u64,
    pub dbeta_part: u64,
    pub planes: i32,
    pub channels: i32,
    pub plane_len: i32,
    pub act: i32,
    pub slope: f32,
    pub reserved: i32,
}

const _: () = assert!(size_of::<NormBackwardParams>() == 96);
const _: () = assert!(std::mem::offset_of!(NormBackwardParams, planes) == 72);
const _: () = assert!(std::mem::offset_of!(NormBackwardParams, slope) == 88);

/// `NormChannelSumParams` of `kernels/norm.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NormChannelSumParams {
    pub dgamma_part: u64,
    pub dbeta_part: u64,
    pub dgamma: u64,
    pub dbeta: u64,
    pub images: i32,
    pub channels: i32,
}

const _: () = assert!(size_of::<NormChannelSumParams>() == 40);
const _: () = assert!(std::mem::offset_of!(NormChannelSumParams, images) == 32);

/// `ActivationParams` of `kernels/norm.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ActivationParams {
    pub x: u64,
    pub dy: u64,
    pub out: u64,
    pub len: i32,
    pub slope: f32,
    pub vec4: i32,
    pub reserved: i32,
}

const _: () = assert!(size_of::<ActivationParams>() == 40);
const _: () = assert!(std::mem::offset_of!(ActivationParams, len) == 24);

// Activation codes of norm.cu.
const ACT_IDENTITY: i32 = 0;
const ACT_LEAKY: i32 = 1;

/// Threads of the warp-per-plane kernels' blocks, and the planes each block serves.
const WARP_BLOCK_THREADS: usize = 256;
const WARP_PLANES_PER_BLOCK: usize = WARP_BLOCK_THREADS / 32;
/// Packs per lane of the two warp kernels (`norm_*_warp2_*`, `norm_*_warp8_*`).
const WARP_PACKS: [usize; 2] = [2, 8];
/// Packs per thread the block kernels hold in registers (norm.cu's BLOCK_PACKS_*).
const BLOCK_PACKS_FORWARD: usize = 4;
const BLOCK_PACKS_BACKWARD: usize = 2;
/// Threads of a block kernel unless the plane needs fewer, or one block per multiprocessor is
/// all its shared memory allows.
const PREFERRED_BLOCK_THREADS: usize = 512;
const MIN_BLOCK_THREADS: usize = 64;
const MAX_BLOCK_THREADS: usize = 1024;
/// Threads of a streaming block: with up to 64 registers a thread (the kernels' launch bounds),
/// two such blocks fit a multiprocessor, so one's reduction overlaps another's reads.
const STREAM_THREADS: usize = 512;
/// Shared memory the block kernels declare statically (reduction scratch), kept free of the
/// dynamic part, with a margin.
const STATIC_SHARED_RESERVE: usize = 1024;
/// Threads per block of the element-wise and channel-sum kernels.
const ELEMENTWISE_THREADS: u32 = 256;

/// A pass of the fused op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormPass {
    Forward,
    Backward,
}

impl NormPass {
    /// Packs per thread the block kernel keeps in registers.
    fn block_packs(self) -> usize {
        match self {
            NormPass::Forward => BLOCK_PACKS_FORWARD,
            NormPass::Backward => BLOCK_PACKS_BACKWARD,
        }
    }

    /// Plane-sized arrays the kernel holds: x, or x and dy.
    fn arrays(self) -> usize {
        match self {
            NormPass::Forward => 1,
            NormPass::Backward => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            NormPass::Forward => "forward",
            NormPass::Backward => "backward",
        }
    }
}

/// How the threads of a launch share out the planes (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormLaunch {
    /// One warp per plane, each lane holding `packs` (2 or 8) packs of the plane.
    Warp { packs: usize },
    /// One block of `threads` per plane: registers, then dynamic shared memory.
    Block { threads: usize },
    /// One block of `threads` per plane, the plane read twice.
    Stream { threads: usize },
}

impl NormLaunch {
    /// A short name for tables: `warp2`, `block512`, `stream512`.
    pub fn name(&self) -> String {
        match self {
            NormLaunch::Warp { packs } => format!("warp{packs}"),
            NormLaunch::Block { threads } => format!("block{threads}"),
            NormLaunch::Stream { threads } => format!("stream{threads}"),
        }
    }

    /// How many times the kernel reads each input value from memory.
    pub fn reads(&self) -> usize {
        match self {
            NormLaunch::Stream { .. } => 2,
            _ => 1,
        }
    }

    /// The dynamic shared memory of a launch for planes of `plane_len` read in packs of `vec`.
    pub fn shared_bytes(&self, pass: NormPass, plane_len: usize, vec: usize) -> usize {
        match *self {
            NormLaunch::Block { threads } => {
                let held = threads * pass.block_packs() * vec;
                plane_len.saturating_sub(held) * 4 * pass.arrays()
            }
            _ => 0,
        }
    }

    fn kernel(&self, pass: NormPass, vec: usize) -> Result<&'static str> {
        let name = match (pass, *self, vec) {
            (NormPass::Forward, NormLaunch::Warp { packs: 2 }, 1) => "norm_fwd_warp2_v1",
            (NormPass::Forward, NormLaunch::Warp { packs: 2 }, 4) => "norm_fwd_warp2_v4",
            (NormPass::Forward, NormLaunch::Warp { packs: 8 }, 1) => "norm_fwd_warp8_v1",
            (NormPass::Forward, NormLaunch::Warp { packs: 8 }, 4) => "norm_fwd_warp8_v4",
            (NormPass::Forward, NormLaunch::Block { .. }, 1) => "norm_fwd_block_v1",
            (NormPass::Forward, NormLaunch::Block { .. }, 4) => "norm_fwd_block_v4",
            (NormPass::Forward, NormLaunch::Stream { .. }, 1) => "norm_fwd_stream_v1",
            (NormPass::Forward, NormLaunch::Stream { .. }, 4) => "norm_fwd_stream_v4",
            (NormPass::Backward, NormLaunch::Warp { packs: 2 }, 1) => "norm_bwd_warp2_v1",
            (NormPass::Backward, NormLaunch::Warp { packs: 2 }, 4) => "norm_bwd_warp2_v4",
            (NormPass::Backward, NormLaunch::Warp { packs: 8 }, 1) => "norm_bwd_warp8_v1",
            (NormPass::Backward, NormLaunch::Warp { packs: 8 }, 4) => "norm_bwd_warp8_v4",
            (NormPass::Backward, NormLaunch::Block { .. }, 1) => "norm_bwd_block_v1",
            (NormPass::Backward, NormLaunch::Block { .. }, 4) => "norm_bwd_block_v4",
            (NormPass::Backward, NormLaunch::Stream { .. }, 1) => "norm_bwd_stream_v1",
            (NormPass::Backward, NormLaunch::Stream { .. }, 4) => "norm_bwd_stream_v4",
            _ => {
                return Err(Error::shape(
                    "instance_norm",
                    format!("no {} kernel for {self:?} with packs of {vec}", pass.name()),
                ));
            }
        };
        Ok(name)
    }

    /// Checks that the launch can serve planes of `plane_len` (a warp holds at most its
    /// registers' worth; blocks are whole warps, 32 to 1024 threads).
    fn check(&self, pass: NormPass, plane_len: usize, vec: usize) -> Result<()> {
        let ok = match *self {
            NormLaunch::Warp { packs } => WARP_PACKS.contains(&packs) && plane_len <= 32 * packs * vec,
            NormLaunch::Block { threads } | NormLaunch::Stream { threads } => {
                threads.is_multiple_of(32) && (32..=MAX_BLOCK_THREADS).contains(&threads)
            }
        };
        if !ok {
            return Err(Error::shape(
                "instance_norm",
                format!(
                    "{self:?} cannot serve the {} pass over planes of {plane_len} values in packs of {vec}",
                    pass.name()
                ),
            ));
        }
        Ok(())
    }

    fn grid(&self, planes: usize) -> (usize, usize, usize) {
        match self {
            NormLaunch::Warp { .. } => (blocks_for(planes, WARP_PLANES_PER_BLOCK), 1, 1),
            _ => (planes, 1, 1),
        }
    }

    fn threads(&self) -> u32 {
        match *self {
            NormLaunch::Warp { .. } => WARP_BLOCK_THREADS as u32,
            NormLaunch::Block { threads } | NormLaunch::Stream { threads } => threads as u32,
        }
    }
}

/// The launch for planes of `plane_len` values read in packs of `vec` (1 or 4), on a GPU whose
/// blocks may have `max_shared` bytes of shared memory (static and dynamic together).
pub fn choose_launch(pass: NormPass, plane_len: usize, vec: usize, max_shared: usize) -> NormLaunch {
    if let Some(&packs) = WARP_PACKS.iter().find(|&&packs| plane_len <= 32 * packs * vec) {
        return NormLaunch::Warp { packs };
    }
    let per_thread = pass.block_packs() * vec;
    let dynamic_limit = max_shared.saturating_sub(STATIC_SHARED_RESERVE);
    let tail = |threads: usize| NormLaunch::Block { threads }.shared_bytes(pass, plane_len, vec);
    let mut threads =
        (plane_len.div_ceil(per_thread).div_ceil(32) * 32).clamp(MIN_BLOCK_THREADS, PREFERRED_BLOCK_THREADS);
    if tail(threads) > dynamic_limit / 2 {
        // At most one such block per multiprocessor: let it hold more in registers.
        threads = MAX_BLOCK_THREADS;
    }
    if tail(threads) <= dynamic_limit {
        NormLaunch::Block { threads }
    } else {
        NormLaunch::Stream {
            threads: STREAM_THREADS,
        }
    }
}

/// Packs of 4 (float4) when the plane length and every address allow 16-byte accesses, else 1.
pub fn vector_width(plane_len: usize, addresses: &[u64]) -> usize {
    if plane_len.is_multiple_of(4) && addresses.iter().all(|a| a % 16 == 0) {
        4
    } else {
        1
    }
}

/// An `n x c x plane` tensor normalised per plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormGeom {
    pub n: usize,
    pub c: usize,
    pub plane: usize,
}

impl NormGeom {
    pub fn planes(&self) -> usize {
        self.n * self.c
    }

    pub fn len(&self) -> usize {
        self.n * self.c * self.plane
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The activation's code and slope for the kernels.
fn act_code(act: Activation) -> (i32, f32) {
    match act.slope() {
        None => (ACT_IDENTITY, 0.0),
        Some(slope) => (ACT_LEAKY, slope as f32),
    }
}

/// Device addresses of the forward pass: inputs `x` (n*c*plane), `gamma`, `beta` (c); outputs
/// `y` (n*c*plane), `mean`, `inv_std` (n*c).
#[derive(Clone, Copy, Debug, Default)]
pub struct NormForwardOperands {
    pub x: u64,
    pub gamma: u64,
    pub beta: u64,
    pub y: u64,
    pub mean: u64,
    pub inv_std: u64,
}

/// Device addresses of the backward pass: inputs `x`, `dy` (n*c*plane), `gamma`, `beta` (c; beta
/// only read with an activation), `mean`, `inv_std` (n*c); scratch `dgamma_part`, `dbeta_part`
/// (n*c); outputs `dx` (n*c*plane), `dgamma`, `dbeta` (c).
#[derive(Clone, Copy, Debug, Default)]
pub struct NormBackwardOperands {
    pub x: u64,
    pub dy: u64,
    pub gamma: u64,
    pub beta: u64,
    pub mean: u64,
    pub inv_std: u64,
    pub dx: u64,
    pub dgamma_part: u64,
    pub dbeta_part: u64,
    pub dgamma: u64,
    pub dbeta: u64,
}

fn check_geometry(op: &'static str, g: &NormGeom) -> Result<()> {
    if g.planes() > 0 && g.plane == 0 {
        return Err(Error::shape(op, "planes of zero values have no statistics"));
    }
    dim(op, "n x c", g.planes())?;
    dim(op, "plane length", g.plane)?;
    Ok(())
}

fn check_vec(op: &'static str, plane_len: usize, vec: usize, addresses: &[u64]) -> Result<()> {
    if vec == 1 || (vec == 4 && vector_width(plane_len, addresses) == 4) {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!("packs of {vec} need planes of a multiple of 4 values at 16-byte aligned addresses"),
        ))
    }
}

/// The launch that writes `y = act(instance_norm(x))` and the per-plane statistics, with
/// `launch` and packs of `vec` values.
pub fn forward_calls(
    g: &NormGeom,
    act: Activation,
    eps: f64,
    launch: NormLaunch,
    vec: usize,
    o: &NormForwardOperands,
) -> Result<Vec<KernelCall>> {
    const OP: &str = "instance_norm";
    check_geometry(OP, g)?;
    if g.planes() == 0 {
        return Ok(Vec::new());
    }
    check_vec(OP, g.plane, vec, &[o.x, o.y])?;
    launch.check(NormPass::Forward, g.plane, vec)?;
    let (act, slope) = act_code(act);
    let p = NormForwardParams {
        x: o.x,
        gamma: o.gamma,
        beta: o.beta,
        y: o.y,
        mean: o.mean,
        inv_std: o.inv_std,
        planes: dim(OP, "n x c", g.planes())?,
        channels: dim(OP, "channels", g.c)?,
        plane_len: dim(OP, "plane length", g.plane)?,
        act,
        slope,
        eps: eps as f32,
    };
    let call = KernelCall::new(
        MODULE,
        launch.kernel(NormPass::Forward, vec)?,
        launch.grid(g.planes()),
        launch.threads(),
        &p,
    )
    .with_shared(launch.shared_bytes(NormPass::Forward, g.plane, vec));
    Ok(vec![call])
}

/// The launches that write dx and, through per-plane sums added over the images in order,
/// dgamma and dbeta, with `launch` and packs of `vec` values.
pub fn backward_calls(
    g: &NormGeom,
    act: Activation,
    launch: NormLaunch,
    vec: usize,
    o: &NormBackwardOperands,
) -> Result<Vec<KernelCall>> {
    const OP: &str = "instance_norm backward";
    check_geometry(OP, g)?;
    if g.c == 0 {
        return Ok(Vec::new());
    }
    let (act, slope) = act_code(act);
    let mut calls = Vec::with_capacity(2);
    if g.planes() > 0 {
        check_vec(OP, g.plane, vec, &[o.x, o.dy, o.dx])?;
        launch.check(NormPass::Backward, g.plane, vec)?;
        let p = NormBackwardParams {
            x: o.x,
            dy: o.dy,
            gamma: o.gamma,
            beta: o.beta,
            mean: o.mean,
            inv_std: o.inv_std,
            dx: o.dx,
            dgamma_part: o.dgamma_part,
            dbeta_part: o.dbeta_part,
            planes: dim(OP, "n x c", g.planes())?,
            channels: dim(OP, "channels", g.c)?,
            plane_len: dim(OP, "plane length", g.plane)?,
            act,
            slope,
            reserved: 0,
        };
        calls.push(
            KernelCall::new(
                MODULE,
                launch.kernel(NormPass::Backward, vec)?,
                launch.grid(g.planes()),
                launch.threads(),
                &p,
            )
            .with_shared(launch.shared_bytes(NormPass::Backward, g.plane, vec)),
        );
    }
    // With no images the sums are zero, which this kernel writes too.
    let sums = NormChannelSumParams {
        dgamma_part: o.dgamma_part,
        dbeta_part: o.dbeta_part,
        dgamma: o.dgamma,
        dbeta: o.dbeta,
        images: dim(OP, "images", g.n)?,
        channels: dim(OP, "channels", g.c)?,
    };
    calls.push(KernelCall::new(
        MODULE,
        "norm_channel_sums",
        (blocks_for(g.c, ELEMENTWISE_THREADS as usize), 1, 1),
        ELEMENTWISE_THREADS,
        &sums,
    ));
    Ok(calls)
}

/// Blocks of the element-wise kernels: one thread per float4 (or value), grid-stride beyond.
fn elementwise_grid(len: usize, vec4: bool) -> (usize, usize, usize) {
    const MAX_BLOCKS: usize = 1 << 20;
    let items = if vec4 { len.div_ceil(4) } else { len };
    (blocks_for(items, ELEMENTWISE_THREADS as usize).min(MAX_BLOCKS), 1, 1)
}

/// The launch that writes `out = leaky_relu(x, slope)` for `len` values (ReLU: slope 0).
pub fn activation_forward_calls(len: usize, slope: f64, x: u64, out: u64) -> Result<Vec<KernelCall>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let vec4 = vector_width(4, &[x, out]) == 4;
    let p = ActivationParams {
        x,
        dy: 0,
        out,
        len: dim("leaky_relu", "length", len)?,
        slope: slope as f32,
        vec4: vec4 as i32,
        reserved: 0,
    };
    Ok(vec![KernelCall::new(
        MODULE,
        "activation_forward",
        elementwise_grid(len, vec4),
        ELEMENTWISE_THREADS,
        &p,
    )])
}

/// The launch that writes `out = dy * leaky_relu'(x, slope)` for `len` values.
pub fn activation_backward_calls(len: usize, slope: f64, x: u64, dy: u64, out: u64) -> Result<Vec<KernelCall>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let vec4 = vector_width(4, &[x, dy, out]) == 4;
    let p = ActivationParams {
        x,
        dy,
        out,
        len: dim("leaky_relu backward", "length", len)?,
        slope: slope as f32,
        vec4: vec4 as i32,
        reserved: 0,
    };
    Ok(vec![KernelCall::new(
        MODULE,
        "activation_backward",
        elementwise_grid(len, vec4),
        ELEMENTWISE_THREADS,
        &p,
    )])
}

/// Every kernel of `kernels/norm.cu` this module may launch.
pub fn kernel_names() -> Vec<&'static str> {
    let mut names = Vec::new();
    for pass in [NormPass::Forward, NormPass::Backward] {
        for launch in [
            NormLaunch::Warp { packs: 2 },
            NormLaunch::Warp { packs: 8 },
            NormLaunch::Block { threads: 256 },
            NormLaunch::Stream { threads: 256 },
        ] {
            for vec in [1, 4] {
                names.push(launch.kernel(pass, vec).expect("a kernel for every launch"));
            }
        }
    }
    names.extend(["norm_channel_sums", "activation_forward", "activation_backward"]);
    names
}

/// The launch ops use on `device` for planes of `plane_len` values at aligned addresses.
pub fn launch_for(device: &CudaDevice, pass: NormPass, plane_len: usize) -> (NormLaunch, usize) {
    let vec = vector_width(plane_len, &[]);
    (choose_launch(pass, plane_len, vec, device.max_shared_per_block()), vec)
}

/// `(y, mean, inv_std)` of `y = act(instance_norm(x, gamma, beta, eps))` for `x` of geometry
/// `g` (NCHW with the spatial dimensions flattened), `gamma` and `beta` of `g.c` values.
pub fn instance_norm_forward(
    g: &NormGeom,
    x: &CudaStorage,
    gamma: &CudaStorage,
    beta: &CudaStorage,
    eps: f64,
    act: Activation,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    const OP: &str = "instance_norm";
    check_len(OP, "input", x, g.len())?;
    check_len(OP, "gamma", gamma, g.c)?;
    check_len(OP, "beta", beta, g.c)?;
    let device = common_device(OP, &[x, gamma, beta])?;
    let y = CudaStorage::alloc(&device, g.len())?;
    let mean = CudaStorage::alloc(&device, g.planes())?;
    let inv_std = CudaStorage::alloc(&device, g.planes())?;
    let o = NormForwardOperands {
        x: x.device_ptr(),
        gamma: gamma.device_ptr(),
        beta: beta.device_ptr(),
        y: y.device_ptr(),
        mean: mean.device_ptr(),
        inv_std: inv_std.device_ptr(),
    };
    let vec = vector_width(g.plane, &[o.x, o.y]);
    let launch = choose_launch(NormPass::Forward, g.plane, vec, device.max_shared_per_block());
    let calls = forward_calls(g, act, eps, launch, vec, &o)?;
    // SAFETY: x and y hold n*c planes of g.plane values, gamma and beta g.c values, mean and
    // inv_std n*c values (checked or allocated above); all live until the calls are queued, and
    // blocks freed afterwards are reused only by work queued behind these calls on the stream.
    unsafe { device.run(&calls) }?;
    Ok((y, mean, inv_std))
}

/// `(dx, dgamma, dbeta)` of [`instance_norm_forward`] from the gradient `dy` of its (activated)
/// output and its saved statistics. `beta` is needed with an activation (the mask depends on the
/// pre-activation), not with [`Activation::Identity`].
#[allow(clippy::too_many_arguments)]
pub fn instance_norm_backward(
    g: &NormGeom,
    x: &CudaStorage,
    dy: &CudaStorage,
    gamma: &CudaStorage,
    beta: Option<&CudaStorage>,
    mean: &CudaStorage,
    inv_std: &CudaStorage,
    act: Activation,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    const OP: &str = "instance_norm backward";
    check_len(OP, "input", x, g.len())?;
    check_len(OP, "output gradient", dy, g.len())?;
    check_len(OP, "gamma", gamma, g.c)?;
    check_len(OP, "mean", mean, g.planes())?;
    check_len(OP, "inv_std", inv_std, g.planes())?;
    let mut operands = vec![x, dy, gamma, mean, inv_std];
    match beta {
        Some(b) => {
            check_len(OP, "beta", b, g.c)?;
            operands.push(b);
        }
        None if act.slope().is_some() => {
            return Err(Error::shape(OP, "the activation's mask needs beta"));
        }
        None => {}
    }
    let device = common_device(OP, &operands)?;
    let dx = CudaStorage::alloc(&device, g.len())?;
    let dgamma = CudaStorage::alloc(&device, g.c)?;
    let dbeta = CudaStorage::alloc(&device, g.c)?;
    let dgamma_part = CudaStorage::alloc(&device, g.planes())?;
    let dbeta_part = CudaStorage::alloc(&device, g.planes())?;
    let o = NormBackwardOperands {
        x: x.device_ptr(),
        dy: dy.device_ptr(),
        gamma: gamma.device_ptr(),
        beta: beta.map_or(0, CudaStorage::device_ptr),
        mean: mean.device_ptr(),
        inv_std: inv_std.device_ptr(),
        dx: dx.device_ptr(),
        dgamma_part: dgamma_part.device_ptr(),
        dbeta_part: dbeta_part.device_ptr(),
        dgamma: dgamma.device_ptr(),
        dbeta: dbeta.device_ptr(),
    };
    let vec = vector_width(g.plane, &[o.x, o.dy, o.dx]);
    let launch = choose_launch(NormPass::Backward, g.plane, vec, device.max_shared_per_block());
    let calls = backward_calls(g, act, launch, vec, &o)?;
    // SAFETY: x, dy and dx hold n*c planes of g.plane values, gamma (and beta when read) g.c,
    // mean, inv_std and the two scratch blocks n*c, dgamma and dbeta g.c values. The scratch
    // blocks return to the cache after this call, which is safe because later users queue
    // behind these kernels on the same stream.
    unsafe { device.run(&calls) }?;
    Ok((dx, dgamma, dbeta))
}

/// `leaky_relu(x, slope)` (ReLU: slope 0).
pub fn activation_forward(x: &CudaStorage, slope: f64) -> Result<CudaStorage> {
    let device = x.device();
    let out = CudaStorage::alloc(&device, x.len())?;
    let calls = activation_forward_calls(x.len(), slope, x.device_ptr(), out.device_ptr())?;
    // SAFETY: x and out hold x.len() values each and live until the call is queued.
    unsafe { device.run(&calls) }?;
    Ok(out)
}

/// The gradient of [`activation_forward`] at `x` from the output gradient `dy`.
pub fn activation_backward(x: &CudaStorage, dy: &CudaStorage, slope: f64) -> Result<CudaStorage> {
    const OP: &str = "leaky_relu backward";
    check_len(OP, "output gradient", dy, x.len())?;
    let device = common_device(OP, &[x, dy])?;
    let out = CudaStorage::alloc(&device, x.len())?;
    let calls = activation_backward_calls(x.len(), slope, x.device_ptr(), dy.device_ptr(), out.device_ptr())?;
    // SAFETY: x, dy and out hold x.len() values each and live until the call is queued.
    unsafe { device.run(&calls) }?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An H100's opt-in shared memory per block.
    const H100_SHARED: usize = 227 * 1024;

    #[test]
    fn the_unet_levels_get_the_launches_the_module_comment_promises() {
        use NormLaunch::*;
        use NormPass::*;
        let expect = [
            (Forward, 256 * 256, Block { threads: 1024 }),
            (Forward, 128 * 128, Block { threads: 512 }),
            (Forward, 64 * 64, Block { threads: 256 }),
            (Forward, 32 * 32, Warp { packs: 8 }),
            (Forward, 16 * 16, Warp { packs: 2 }),
            (Backward, 256 * 256, Stream { threads: 512 }),
            (Backward, 128 * 128, Block { threads: 512 }),
            (Backward, 64 * 64, Block { threads: 512 }),
            (Backward, 32 * 32, Warp { packs: 8 }),
            (Backward, 16 * 16, Warp { packs: 2 }),
        ];
        for (pass, len, want) in expect {
            let got = choose_launch(pass, len, 4, H100_SHARED);
            assert_eq!(got, want, "{pass:?} {len}");
            let shared = got.shared_bytes(pass, len, 4);
            assert!(
                shared + STATIC_SHARED_RESERVE <= H100_SHARED,
                "{pass:?} {len}: {shared}"
            );
        }
        // The 256x256 forward keeps three quarters of the plane in shared memory.
        assert_eq!(
            Block { threads: 1024 }.shared_bytes(Forward, 256 * 256, 4),
            (65536 - 16384) * 4
        );
        // With less shared memory (an A100 has 163 KiB) it streams.
        assert_eq!(
            choose_launch(Forward, 256 * 256, 4, 163 * 1024),
            Stream { threads: 512 }
        );
    }

    #[test]
    fn every_chosen_launch_serves_its_plane() {
        for pass in [NormPass::Forward, NormPass::Backward] {
            for vec in [1, 4] {
                for len in (1..3000).chain([4096, 9999, 16384, 65536, 1 << 20]) {
                    if vec == 4 && len % 4 != 0 {
                        continue;
                    }
                    let launch = choose_launch(pass, len, vec, H100_SHARED);
                    launch.check(pass, len, vec).unwrap();
                    launch.kernel(pass, vec).unwrap();
                    assert!(launch.shared_bytes(pass, len, vec) + STATIC_SHARED_RESERVE <= H100_SHARED);
                    if let NormLaunch::Block { threads } = launch {
                        assert!((MIN_BLOCK_THREADS..=MAX_BLOCK_THREADS).contains(&threads) && threads % 32 == 0);
                    }
                }
            }
        }
    }

    #[test]
    fn vector_width_needs_length_and_alignment() {
        assert_eq!(vector_width(16, &[0x1000, 0x2010]), 4);
        assert_eq!(vector_width(18, &[0x1000]), 1);
        assert_eq!(vector_width(16, &[0x1004]), 1);
    }

    #[test]
    fn invalid_launches_are_errors() {
        let g = NormGeom { n: 2, c: 3, plane: 300 };
        let o = NormForwardOperands {
            x: 0x1000,
            y: 0x2000,
            ..Default::default()
        };
        // A warp of 2 packs of 4 holds 256 values.
        assert!(forward_calls(&g, Activation::Relu, 1e-5, NormLaunch::Warp { packs: 2 }, 4, &o).is_err());
        assert!(forward_calls(&g, Activation::Relu, 1e-5, NormLaunch::Block { threads: 48 }, 4, &o).is_err());
        let odd = NormGeom { n: 2, c: 3, plane: 301 };
        assert!(forward_calls(&odd, Activation::Relu, 1e-5, NormLaunch::Block { threads: 64 }, 4, &o).is_err());
        assert!(forward_calls(&odd, Activation::Relu, 1e-5, NormLaunch::Block { threads: 64 }, 1, &o).is_ok());
        let empty_planes = NormGeom { n: 2, c: 3, plane: 0 };
        assert!(
            forward_calls(
                &empty_planes,
                Activation::Identity,
                1e-5,
                NormLaunch::Stream { threads: 64 },
                1,
                &o
            )
            .is_err()
        );
    }

    #[test]
    fn every_kernel_name_is_distinct() {
        let mut names = kernel_names();
        let count = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), count);
        assert_eq!(count, 16 + 3);
    }
}
