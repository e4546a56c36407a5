//! The Local Region Contrast loss on the GPU: the host side of `kernels/local_contrast.cu`.
//!
//! One call of the loss uploads one table of 32-bit words built from the batch's
//! [`RegionSamples`] ([`SampleTable`], a linear pass over the samples): per-image region and
//! sample offsets, the samples per region, the blocks of the row kernels (4 regions of one image
//! each) and the pixel indices of both views. That upload is the batch's sample input (it lives
//! on the host, drawn by the data pipeline) and happens once per forward call; the backward pass
//! reuses the uploaded table, and reads the upstream gradient on the device. Nothing else
//! crosses between host and device.
//!
//! The embeddings may be FP32 or BF16 ([`EmbeddingType`]): BF16 maps are packed two values per
//! 32-bit word (as `pointwise::bf16_from_f32` writes them) and read by the `_bf16` variants of
//! the two kernels that load them; the arithmetic, the saved values and the gradients are FP32
//! either way. [`local_contrast_bf16`] runs both passes on BF16 maps.
//!
//! Limits: D <= [`MAX_CHANNELS`] (the row kernels hold a region mean in registers and static
//! shared memory); K is unbounded (the K x K blocks are streamed 32 regions at a time), and so
//! is N.

use std::sync::Arc;

use super::call::{KernelCall, blocks_for};
use super::launch::dim;
use super::operand::{check_len, common_device};
use super::{CudaDevice, CudaStorage};
use crate::error::{Error, Result};
use crate::ops::local_contrast::{LocalLossConfig, RegionSamples};

const MODULE: &str = "local_contrast";
const OP: &str = "local_contrast";

/// The most channels (D) the kernels take.
pub const MAX_CHANNELS: usize = 128;
/// Rows (regions) per block of the row kernels, all of one image: one warp each.
pub const ROW_WARPS: usize = 4;
const ROW_THREADS: u32 = 128;
const MEAN_THREADS: u32 = 128;
const SCATTER_THREADS: u32 = 256;
const SUM_THREADS: u32 = 256;
const ZERO_THREADS: u32 = 256;
/// Blocks of the zero fill per view; each thread strides over the rest.
const ZERO_MAX_BLOCKS: usize = 2048;

/// `LocalContrastParams` of `kernels/local_contrast.cu`: every kernel of the family takes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LocalContrastParams {
    pub f_q: u64,
    pub f_p: u64,
    pub region_off: u64,
    pub sample_off: u64,
    pub per_region: u64,
    pub row_blocks: u64,
    pub idx: u64,
    pub heads: u64,
    pub next: u64,
    pub means: u64,
    pub mean_norms: u64,
    pub lse: u64,
    pub row_loss: u64,
    pub loss: u64,
    pub grad_loss: u64,
    pub mean_grads: u64,
    pub grad_q: u64,
    pub grad_p: u64,
    pub images: i32,
    pub d: i32,
    pub hw: i32,
    pub rows: i32,
    pub samples: i32,
    pub normalize_pixels: i32,
    pub renormalize_means: i32,
    pub inv_temperature: f32,
    pub inv_counted: f32,
    pub reserved: i32,
}

const _: () = assert!(size_of::<LocalContrastParams>() == 184);
const _: () = assert!(std::mem::offset_of!(LocalContrastParams, images) == 144);
const _: () = assert!(std::mem::offset_of!(LocalContrastParams, inv_temperature) == 172);

/// The element type of the embedding maps f_q, f_p the kernels read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EmbeddingType {
    /// One FP32 value per word.
    #[default]
    F32,
    /// BF16 values packed two per word, element 2i in the low half of word i (see
    /// `pointwise::pack_bf16`); widened to FP32 on load, exactly.
    Bf16,
}

impl EmbeddingType {
    pub const ALL: [EmbeddingType; 2] = [EmbeddingType::F32, EmbeddingType::Bf16];

    /// `f32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            EmbeddingType::F32 => "f32",
            EmbeddingType::Bf16 => "bf16",
        }
    }

    /// 32-bit words of storage that hold `len` values.
    pub fn words(self, len: usize) -> usize {
        match self {
            EmbeddingType::F32 => len,
            EmbeddingType::Bf16 => len.div_ceil(2),
        }
    }

    /// Bytes of `len` values.
    pub fn bytes(self, len: usize) -> usize {
        match self {
            EmbeddingType::F32 => 4 * len,
            EmbeddingType::Bf16 => 2 * len,
        }
    }

    fn means_kernel(self) -> &'static str {
        match self {
            EmbeddingType::F32 => "local_contrast_means",
            EmbeddingType::Bf16 => "local_contrast_means_bf16",
        }
    }

    fn scatter_kernel(self) -> &'static str {
        match self {
            EmbeddingType::F32 => "local_contrast_scatter",
            EmbeddingType::Bf16 => "local_contrast_scatter_bf16",
        }
    }
}

impl std::str::FromStr for EmbeddingType {
    type Err = Error;

    fn from_str(s: &str) -> Result<EmbeddingType> {
        match s {
            "f32" | "fp32" => Ok(EmbeddingType::F32),
            "bf16" => Ok(EmbeddingType::Bf16),
            _ => Err(Error::config(format!("unknown embedding type {s:?} (f32 or bf16)"))),
        }
    }
}

/// Word offsets of the parts of a [`SampleTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableLayout {
    /// `images + 1` words: the first row (region) of each image, then the total.
    pub region_off: usize,
    /// `images + 1` words: the first sample of each image (in either view), then the total.
    pub sample_off: usize,
    /// `images` words: samples per region.
    pub per_region: usize,
    /// `2 * blocks` words: the image and its first region of each block of the row kernels;
    /// each image with K regions has ceil(K / 4) blocks, in image order.
    pub row_blocks: usize,
    /// `2 * samples` words: pixel indices of the q view, then of the p view.
    pub idx: usize,
    /// Words in all.
    pub len: usize,
}

impl TableLayout {
    fn of(images: usize, blocks: usize, samples: usize) -> TableLayout {
        let region_off = 0;
        let sample_off = images + 1;
        let per_region = 2 * (images + 1);
        let row_blocks = per_region + images;
        let idx = row_blocks + 2 * blocks;
        TableLayout {
            region_off,
            sample_off,
            per_region,
            row_blocks,
            idx,
            len: idx + 2 * samples,
        }
    }
}

/// The samples of a batch in the form the kernels read, built on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleTable {
    words: Vec<u32>,
    pub images: usize,
    /// Regions of all images.
    pub rows: usize,
    /// Samples of all images, per view.
    pub samples: usize,
    /// Blocks of the row kernels: sum over images of ceil(K / 4).
    pub row_blocks: usize,
    /// Images with at least one region (the loss averages over them).
    pub counted: usize,
    pub layout: TableLayout,
}

impl SampleTable {
    /// The table of `samples` (one entry per image) for images of `hw` pixels.
    pub fn new(samples: &[RegionSamples], hw: usize) -> Result<SampleTable> {
        let images = samples.len();
        let rows: usize = samples.iter().map(RegionSamples::regions).sum();
        let total: usize = samples.iter().map(|s| s.q.len()).sum();
        let blocks: usize = samples.iter().map(|s| s.regions().div_ceil(ROW_WARPS)).sum();
        dim(OP, "regions of the batch", rows)?;
        dim(OP, "samples of the batch", 2 * total)?;
        dim(OP, "pixels per image", hw)?;
        let layout = TableLayout::of(images, blocks, total);
        let mut words = vec![0u32; layout.len];
        let (mut row, mut sample, mut block) = (0usize, 0usize, 0usize);
        for (i, s) in samples.iter().enumerate() {
            let want = s.regions() * s.n;
            if s.q.len() != want || s.p.len() != want || (s.n == 0 && s.regions() > 0) {
                return Err(Error::shape(
                    OP,
                    format!(
                        "image {i}: {} regions x {} samples but {} q and {} p indices",
                        s.regions(),
                        s.n,
                        s.q.len(),
                        s.p.len()
                    ),
                ));
            }
            if let Some(&bad) = s.q.iter().chain(&s.p).find(|&&p| p as usize >= hw) {
                return Err(Error::shape(
                    OP,
                    format!("image {i}: pixel index {bad} outside an image of {hw} pixels"),
                ));
            }
            words[layout.region_off + i] = row as u32;
            words[layout.sample_off + i] = sample as u32;
            words[layout.per_region + i] = dim(OP, "samples per region", s.n)? as u32;
            for first in (0..s.regions()).step_by(ROW_WARPS) {
                words[layout.row_blocks + 2 * block] = i as u32;
                words[layout.row_blocks + 2 * block + 1] = first as u32;
                block += 1;
            }
            words[layout.idx + sample..][..want].copy_from_slice(&s.q);
            words[layout.idx + total + sample..][..want].copy_from_slice(&s.p);
            row += s.regions();
            sample += want;
        }
        words[layout.region_off + images] = row as u32;
        words[layout.sample_off + images] = sample as u32;
        Ok(SampleTable {
            words,
            images,
            rows,
            samples: total,
            row_blocks: blocks,
            counted: samples.iter().filter(|s| s.regions() > 0).count(),
            layout,
        })
    }

    /// The words to upload.
    pub fn words(&self) -> &[u32] {
        &self.words
    }
}

/// Everything a launch of the family needs to know besides addresses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LocalContrastGeom {
    pub images: usize,
    /// Channels of the embeddings.
    pub d: usize,
    /// Pixels per image.
    pub hw: usize,
    pub rows: usize,
    pub samples: usize,
    pub row_blocks: usize,
    pub counted: usize,
    pub temperature: f64,
    pub normalize_pixels: bool,
    pub renormalize_means: bool,
    /// The element type of f_q and f_p (FP32 unless set with [`LocalContrastGeom::with_input`]).
    pub input: EmbeddingType,
}

impl LocalContrastGeom {
    /// The geometry of FP32 embeddings `[images, d, h, w]` with the samples of `table`.
    pub fn new(dims: [usize; 4], table: &SampleTable, cfg: &LocalLossConfig) -> Result<LocalContrastGeom> {
        let [images, d, h, w] = dims;
        if images != table.images {
            return Err(Error::shape(
                OP,
                format!("{} sample sets for a batch of {images}", table.images),
            ));
        }
        if d > MAX_CHANNELS {
            return Err(Error::shape(
                OP,
                format!(
                    "{d} channels: the CUDA kernels take at most {MAX_CHANNELS} (run the loss on the CPU, or project the embeddings down)"
                ),
            ));
        }
        if cfg.temperature.is_nan() || cfg.temperature <= 0.0 || !((1.0 / cfg.temperature) as f32).is_finite() {
            return Err(Error::config(format!(
                "local loss temperature must be > 0, got {}",
                cfg.temperature
            )));
        }
        Ok(LocalContrastGeom {
            images,
            d,
            hw: h * w,
            rows: table.rows,
            samples: table.samples,
            row_blocks: table.row_blocks,
            counted: table.counted,
            temperature: cfg.temperature,
            normalize_pixels: cfg.normalize_pixels,
            renormalize_means: cfg.renormalize_means,
            input: EmbeddingType::F32,
        })
    }

    /// The same geometry with embeddings of element type `input`.
    pub fn with_input(self, input: EmbeddingType) -> LocalContrastGeom {
        LocalContrastGeom { input, ..self }
    }

    /// 32-bit words of each embedding map in its element type (the gradients are FP32:
    /// [`LocalContrastGeom::embedding_len`] values).
    pub fn embedding_words(&self) -> usize {
        self.input.words(self.embedding_len())
    }

    /// Values of each embedding map (and of each gradient).
    pub fn embedding_len(&self) -> usize {
        self.images * self.d * self.hw
    }

    /// Values of the region means of both views (and of their gradients).
    pub fn means_len(&self) -> usize {
        2 * self.rows * self.d
    }

    /// Values of the mean lengths of both views.
    pub fn norms_len(&self) -> usize {
        2 * self.rows
    }

    /// Words of the backward pass's pixel-list heads: one per pixel of both views.
    pub fn heads_len(&self) -> usize {
        2 * self.images * self.hw
    }

    /// Words of the backward pass's pixel-list links: one per sample of both views.
    pub fn next_len(&self) -> usize {
        2 * self.samples
    }
}

/// Device addresses of the operands; those a pass does not use may be 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalContrastBuffers {
    /// Embeddings, `embedding_words` each (`embedding_len` values of the geometry's type).
    pub f_q: u64,
    pub f_p: u64,
    /// The uploaded [`SampleTable`].
    pub table: u64,
    /// Forward outputs kept for the backward pass: `means_len`, `norms_len`, `rows` values.
    pub means: u64,
    pub mean_norms: u64,
    pub lse: u64,
    /// Forward scratch: `rows` values.
    pub row_loss: u64,
    /// The loss, 1 value.
    pub loss: u64,
    /// Backward: the upstream gradient (1 value), scratch of `means_len` values and of
    /// `heads_len` and `next_len` words, the gradients of the embeddings (`embedding_len` each).
    pub grad_loss: u64,
    pub mean_grads: u64,
    pub heads: u64,
    pub next: u64,
    pub grad_q: u64,
    pub grad_p: u64,
}

fn params(g: &LocalContrastGeom, layout: &TableLayout, a: &LocalContrastBuffers) -> Result<LocalContrastParams> {
    let word = |offset: usize| a.table + 4 * offset as u64;
    Ok(LocalContrastParams {
        f_q: a.f_q,
        f_p: a.f_p,
        region_off: word(layout.region_off),
        sample_off: word(layout.sample_off),
        per_region: word(layout.per_region),
        row_blocks: word(layout.row_blocks),
        idx: word(layout.idx),
        heads: a.heads,
        next: a.next,
        means: a.means,
        mean_norms: a.mean_norms,
        lse: a.lse,
        row_loss: a.row_loss,
        loss: a.loss,
        grad_loss: a.grad_loss,
        mean_grads: a.mean_grads,
        grad_q: a.grad_q,
        grad_p: a.grad_p,
        images: dim(OP, "images", g.images)?,
        d: dim(OP, "channels", g.d)?,
        hw: dim(OP, "pixels per image", g.hw)?,
        rows: dim(OP, "regions of the batch", g.rows)?,
        samples: dim(OP, "samples of the batch", g.samples)?,
        normalize_pixels: g.normalize_pixels as i32,
        renormalize_means: g.renormalize_means as i32,
        inv_temperature: (1.0 / g.temperature) as f32,
        inv_counted: 1.0 / g.counted.max(1) as f32,
        reserved: 0,
    })
}

/// The table layout a geometry was made with.
fn layout_of(g: &LocalContrastGeom) -> TableLayout {
    TableLayout::of(g.images, g.row_blocks, g.samples)
}

/// The forward launches: region means (grid rows x 2 views), per-row log-sum-exp and loss
/// (one block of 4 warps per 4 regions of an image), and the loss (one block). Writes `means`, `mean_norms`,
/// `lse`, `row_loss` and `loss`.
pub fn forward_calls(g: &LocalContrastGeom, a: &LocalContrastBuffers) -> Result<Vec<KernelCall>> {
    let p = params(g, &layout_of(g), a)?;
    let mut calls = Vec::new();
    if g.rows > 0 {
        calls.push(KernelCall::new(
            MODULE,
            g.input.means_kernel(),
            (g.rows, 2, 1),
            MEAN_THREADS,
            &p,
        ));
        calls.push(KernelCall::new(
            MODULE,
            "local_contrast_rows",
            (g.row_blocks, 1, 1),
            ROW_THREADS,
            &p,
        ));
    }
    calls.push(KernelCall::new(
        MODULE,
        "local_contrast_loss_sum",
        (1, 1, 1),
        SUM_THREADS,
        &p,
    ));
    Ok(calls)
}

/// The backward launches: zero both gradient maps and empty the pixel lists, link each sample
/// onto its pixel's list, the gradients of the region means (one warp per region, 4 regions of
/// an image per block), and the deterministic scatter to the sampled pixels (one thread per
/// sample, both views). Reads what [`forward_calls`] wrote and the upstream gradient at
/// `grad_loss`; writes `heads`, `next`, `mean_grads`, `grad_q` and `grad_p`.
pub fn backward_calls(g: &LocalContrastGeom, a: &LocalContrastBuffers) -> Result<Vec<KernelCall>> {
    let p = params(g, &layout_of(g), a)?;
    let mut calls = Vec::new();
    let len = g.embedding_len().max(g.images * g.hw);
    if len > 0 {
        let blocks = blocks_for(len, ZERO_THREADS as usize).min(ZERO_MAX_BLOCKS);
        calls.push(KernelCall::new(
            MODULE,
            "local_contrast_zero",
            (blocks, 2, 1),
            ZERO_THREADS,
            &p,
        ));
    }
    if g.rows > 0 {
        let sample_blocks = blocks_for(g.samples, SCATTER_THREADS as usize);
        calls.push(KernelCall::new(
            MODULE,
            "local_contrast_link",
            (sample_blocks, 2, 1),
            SCATTER_THREADS,
            &p,
        ));
        calls.push(KernelCall::new(
            MODULE,
            "local_contrast_mean_grads",
            (g.row_blocks, 1, 1),
            ROW_THREADS,
            &p,
        ));
        calls.push(KernelCall::new(
            MODULE,
            g.input.scatter_kernel(),
            (sample_blocks, 2, 1),
            SCATTER_THREADS,
            &p,
        ));
    }
    Ok(calls)
}

/// What the forward pass keeps on the device for the backward pass: the uploaded table, the
/// region means, their lengths and the per-row log-sum-exps (O(rows * D) in all).
#[derive(Clone, Debug)]
pub struct LocalContrastSaved {
    pub geom: LocalContrastGeom,
    table: CudaStorage,
    means: CudaStorage,
    mean_norms: CudaStorage,
    lse: CudaStorage,
}

/// The loss (a 1-element device buffer) of FP32 embeddings `f_q`, `f_p` of shape `dims`
/// (`[B, D, H, W]`) over `samples`, and what its backward pass needs.
pub fn local_contrast_forward(
    f_q: &CudaStorage,
    f_p: &CudaStorage,
    dims: [usize; 4],
    samples: &[RegionSamples],
    cfg: &LocalLossConfig,
) -> Result<(CudaStorage, LocalContrastSaved)> {
    local_contrast_forward_as(EmbeddingType::F32, f_q, f_p, dims, samples, cfg)
}

/// [`local_contrast_forward`] on embeddings of element type `input`: for BF16, `f_q` and `f_p`
/// hold the packed values (`input.words(B * D * H * W)` words each).
pub fn local_contrast_forward_as(
    input: EmbeddingType,
    f_q: &CudaStorage,
    f_p: &CudaStorage,
    dims: [usize; 4],
    samples: &[RegionSamples],
    cfg: &LocalLossConfig,
) -> Result<(CudaStorage, LocalContrastSaved)> {
    let device = common_device(OP, &[f_q, f_p])?;
    let uploaded = UploadedSamples::new(&device, samples, dims[2] * dims[3])?;
    local_contrast_forward_uploaded(input, f_q, f_p, dims, &uploaded, cfg)
}

/// A batch's sample table on the device, beside the host's account of it: what
/// [`local_contrast_forward_as`] builds and uploads on every call, made once. For a caller that
/// uploads a batch's samples ahead of its forward pass, and for timing the kernels alone.
pub struct UploadedSamples {
    table: SampleTable,
    hw: usize,
    words: CudaStorage,
}

impl UploadedSamples {
    /// The table of `samples` (one entry per image, pixel indices below `hw`) on `device`.
    pub fn new(device: &Arc<CudaDevice>, samples: &[RegionSamples], hw: usize) -> Result<UploadedSamples> {
        let table = SampleTable::new(samples, hw)?;
        let words = CudaStorage::from_host_u32(device, table.words())?;
        Ok(UploadedSamples { table, hw, words })
    }
}

/// [`local_contrast_forward_as`] with the samples already on the device.
pub fn local_contrast_forward_uploaded(
    input: EmbeddingType,
    f_q: &CudaStorage,
    f_p: &CudaStorage,
    dims: [usize; 4],
    samples: &UploadedSamples,
    cfg: &LocalLossConfig,
) -> Result<(CudaStorage, LocalContrastSaved)> {
    let device = common_device(OP, &[f_q, f_p, &samples.words])?;
    if samples.hw != dims[2] * dims[3] {
        return Err(Error::shape(
            OP,
            format!(
                "samples drawn for images of {} pixels, embeddings of {} x {}",
                samples.hw, dims[2], dims[3]
            ),
        ));
    }
    let g = LocalContrastGeom::new(dims, &samples.table, cfg)?.with_input(input);
    check_input_len(OP, "f_q", f_q, &g)?;
    check_input_len(OP, "f_p", f_p, &g)?;
    let uploaded = samples.words.clone();
    let means = CudaStorage::alloc(&device, g.means_len())?;
    let mean_norms = CudaStorage::alloc(&device, g.norms_len())?;
    let lse = CudaStorage::alloc(&device, g.rows)?;
    let row_loss = CudaStorage::alloc(&device, g.rows)?;
    let loss = CudaStorage::alloc(&device, 1)?;
    let a = LocalContrastBuffers {
        f_q: f_q.device_ptr(),
        f_p: f_p.device_ptr(),
        table: uploaded.device_ptr(),
        means: means.device_ptr(),
        mean_norms: mean_norms.device_ptr(),
        lse: lse.device_ptr(),
        row_loss: row_loss.device_ptr(),
        loss: loss.device_ptr(),
        ..Default::default()
    };
    let calls = forward_calls(&g, &a)?;
    // SAFETY: the embeddings hold embedding_words words (checked above), the table was uploaded
    // from a SampleTable with this geometry (its indices checked against hw), and the outputs
    // were allocated with the lengths forward_calls documents. row_loss returns to the cache
    // when this function ends, which is safe because later users queue behind these kernels on
    // the same stream.
    unsafe { device.run(&calls) }?;
    Ok((
        loss,
        LocalContrastSaved {
            geom: g,
            table: uploaded,
            means,
            mean_norms,
            lse,
        },
    ))
}

/// `f_q` or `f_p` against the geometry: its words in the geometry's element type.
fn check_input_len(op: &'static str, what: &str, f: &CudaStorage, g: &LocalContrastGeom) -> Result<()> {
    match g.input {
        EmbeddingType::F32 => check_len(op, what, f, g.embedding_words()),
        EmbeddingType::Bf16 => check_len(op, &format!("{what} (packed BF16 words)"), f, g.embedding_words()),
    }
}

/// The gradients with respect to `f_q` and `f_p` of the loss of [`local_contrast_forward`] (or
/// [`local_contrast_forward_as`]), given its upstream gradient `grad_loss` (1 value, read on the
/// device). `f_q`, `f_p` are the forward pass's embeddings, in its element type; the gradients
/// are FP32 (`B * D * H * W` values each) whatever that type.
pub fn local_contrast_backward(
    saved: &LocalContrastSaved,
    f_q: &CudaStorage,
    f_p: &CudaStorage,
    grad_loss: &CudaStorage,
) -> Result<(CudaStorage, CudaStorage)> {
    const BACKWARD: &str = "local_contrast backward";
    let g = &saved.geom;
    let device: Arc<CudaDevice> = common_device(BACKWARD, &[f_q, f_p, grad_loss, &saved.table])?;
    check_input_len(BACKWARD, "f_q", f_q, g)?;
    check_input_len(BACKWARD, "f_p", f_p, g)?;
    check_len(BACKWARD, "loss gradient", grad_loss, 1)?;
    let grad_q = CudaStorage::alloc(&device, g.embedding_len())?;
    let grad_p = CudaStorage::alloc(&device, g.embedding_len())?;
    let mean_grads = CudaStorage::alloc(&device, g.means_len())?;
    let heads = CudaStorage::alloc(&device, g.heads_len())?;
    let next = CudaStorage::alloc(&device, g.next_len())?;
    let a = LocalContrastBuffers {
        f_q: f_q.device_ptr(),
        f_p: f_p.device_ptr(),
        table: saved.table.device_ptr(),
        means: saved.means.device_ptr(),
        mean_norms: saved.mean_norms.device_ptr(),
        lse: saved.lse.device_ptr(),
        grad_loss: grad_loss.device_ptr(),
        mean_grads: mean_grads.device_ptr(),
        heads: heads.device_ptr(),
        next: next.device_ptr(),
        grad_q: grad_q.device_ptr(),
        grad_p: grad_p.device_ptr(),
        ..Default::default()
    };
    let calls = backward_calls(g, &a)?;
    // SAFETY: the saved buffers were made by local_contrast_forward for this geometry and are
    // alive (held by `saved`); the embeddings and the upstream gradient were checked above;
    // the outputs and the scratch have the lengths backward_calls documents. The scratch returns
    // to the cache after this call, which is safe because later users queue behind these
    // kernels on the same stream.
    unsafe { device.run(&calls) }?;
    Ok((grad_q, grad_p))
}

/// The loss of BF16 embeddings and its gradients: [`local_contrast_forward_as`] and
/// [`local_contrast_backward`] in one call, for upstream gradient `grad_loss` (1 value, read on
/// the device). `f_q`, `f_p` hold `B * D * H * W` packed BF16 values (`pointwise::bf16_from_f32`
/// makes them from FP32); returns the loss (1 value) and the FP32 gradients of both maps.
pub fn local_contrast_bf16(
    f_q: &CudaStorage,
    f_p: &CudaStorage,
    dims: [usize; 4],
    samples: &[RegionSamples],
    cfg: &LocalLossConfig,
    grad_loss: &CudaStorage,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    let (loss, saved) = local_contrast_forward_as(EmbeddingType::Bf16, f_q, f_p, dims, samples, cfg)?;
    let (grad_q, grad_p) = local_contrast_backward(&saved, f_q, f_p, grad_loss)?;
    Ok((loss, grad_q, grad_p))
}

/// The kernels of `kernels/local_contrast.cu` for embeddings of type `input`, in the order a
/// forward and a backward pass launch them.
pub fn kernel_names_for(input: EmbeddingType) -> [&'static str; 7] {
    [
        input.means_kernel(),
        "local_contrast_rows",
        "local_contrast_loss_sum",
        "local_contrast_zero",
        "local_contrast_link",
        "local_contrast_mean_grads",
        input.scatter_kernel(),
    ]
}

/// The kernels of a pass on FP32 embeddings.
pub fn kernel_names() -> [&'static str; 7] {
    kernel_names_for(EmbeddingType::F32)
}

/// Every kernel of `kernels/local_contrast.cu`: those of FP32 inputs, then the BF16 variants.
pub fn all_kernel_names() -> Vec<&'static str> {
    let mut names = kernel_names().to_vec();
    names.extend([EmbeddingType::Bf16.means_kernel(), EmbeddingType::Bf16.scatter_kernel()]);
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(labels: usize, n: usize, q: Vec<u32>, p: Vec<u32>) -> RegionSamples {
        RegionSamples {
            labels: (1..=labels as u32).collect(),
            n,
            q,
            p,
        }
    }

    #[test]
    fn the_table_holds_offsets_blocks_and_indices() {
        let samples = vec![
            set(2, 2, vec![5, 3, 3, 0], vec![1, 1, 2, 1]),
            RegionSamples::default(),
            set(1, 3, vec![7, 2, 7], vec![0, 0, 0]),
        ];
        let t = SampleTable::new(&samples, 8).unwrap();
        assert_eq!((t.images, t.rows, t.samples, t.counted, t.row_blocks), (3, 3, 7, 2, 2));
        let w = t.words();
        let l = t.layout;
        assert_eq!(w[l.region_off..l.region_off + 4], [0, 2, 2, 3]);
        assert_eq!(w[l.sample_off..l.sample_off + 4], [0, 4, 4, 7]);
        assert_eq!(w[l.per_region..l.per_region + 3], [2, 0, 3]);
        // One block for image 0 (regions 0..2), none for image 1, one for image 2.
        assert_eq!(w[l.row_blocks..l.row_blocks + 4], [0, 0, 2, 0]);
        assert_eq!(w[l.idx..l.idx + 7], [5, 3, 3, 0, 7, 2, 7]);
        assert_eq!(w[l.idx + 7..l.idx + 14], [1, 1, 2, 1, 0, 0, 0]);
        assert_eq!(l.len, w.len());
        assert_eq!(l.idx + 14, w.len());
    }

    #[test]
    fn row_blocks_hold_four_regions_of_one_image() {
        let sets: Vec<RegionSamples> = [9, 0, 4, 1]
            .iter()
            .map(|&k| set(k, 1, vec![0; k], vec![0; k]))
            .collect();
        let t = SampleTable::new(&sets, 4).unwrap();
        assert_eq!(t.row_blocks, 3 + 1 + 1);
        let w = &t.words()[t.layout.row_blocks..t.layout.row_blocks + 2 * t.row_blocks];
        assert_eq!(w, [0, 0, 0, 4, 0, 8, 2, 0, 3, 0]);
    }

    #[test]
    fn bad_samples_are_refused() {
        let out_of_range = vec![set(1, 2, vec![0, 8], vec![0, 1])];
        assert!(SampleTable::new(&out_of_range, 8).is_err());
        let short = vec![set(2, 2, vec![0, 1, 2], vec![0, 1, 2, 3])];
        assert!(SampleTable::new(&short, 8).is_err());
        let no_samples = vec![set(1, 0, vec![], vec![])];
        assert!(SampleTable::new(&no_samples, 8).is_err());
    }

    #[test]
    fn the_geometry_limits_channels_and_plans_no_empty_grid() {
        let samples = vec![RegionSamples::default(), RegionSamples::default()];
        let t = SampleTable::new(&samples, 12).unwrap();
        let cfg = LocalLossConfig::default();
        assert!(LocalContrastGeom::new([2, MAX_CHANNELS + 1, 3, 4], &t, &cfg).is_err());
        assert!(LocalContrastGeom::new([3, 8, 3, 4], &t, &cfg).is_err());
        let bad_t = LocalLossConfig {
            temperature: 0.0,
            ..cfg
        };
        assert!(LocalContrastGeom::new([2, 8, 3, 4], &t, &bad_t).is_err());
        let g = LocalContrastGeom::new([2, MAX_CHANNELS, 3, 4], &t, &cfg).unwrap();
        let buffers = LocalContrastBuffers::default();
        // No regions: only the loss kernel (which writes 0), and only the zero fill backward.
        let fwd = forward_calls(&g, &buffers).unwrap();
        assert_eq!(
            fwd.iter().map(|c| c.kernel).collect::<Vec<_>>(),
            ["local_contrast_loss_sum"]
        );
        let bwd = backward_calls(&g, &buffers).unwrap();
        assert_eq!(
            bwd.iter().map(|c| c.kernel).collect::<Vec<_>>(),
            ["local_contrast_zero"]
        );
        for call in fwd.iter().chain(&bwd) {
            call.validate().unwrap();
        }
    }

    #[test]
    fn a_batch_with_regions_plans_every_kernel() {
        let samples = vec![set(5, 2, vec![0; 10], vec![1; 10])];
        let t = SampleTable::new(&samples, 4).unwrap();
        let g = LocalContrastGeom::new([1, 3, 2, 2], &t, &LocalLossConfig::default()).unwrap();
        let buffers = LocalContrastBuffers::default();
        let mut calls = forward_calls(&g, &buffers).unwrap();
        calls.extend(backward_calls(&g, &buffers).unwrap());
        let names: Vec<&str> = calls.iter().map(|c| c.kernel).collect();
        assert_eq!(names, kernel_names());
        // Two row blocks for 5 regions; one thread per sample in each view.
        assert_eq!(calls[1].grid, (2, 1, 1));
        assert_eq!(calls[4].grid, (1, 2, 1));
    }

    #[test]
    fn bf16_inputs_change_only_the_kernels_that_load_them() {
        let samples = vec![set(5, 2, vec![0; 10], vec![1; 10])];
        let t = SampleTable::new(&samples, 4).unwrap();
        let f32_geom = LocalContrastGeom::new([1, 3, 2, 2], &t, &LocalLossConfig::default()).unwrap();
        let g = f32_geom.with_input(EmbeddingType::Bf16);
        // 12 values: 6 words of BF16; the gradients stay 12 FP32 values.
        assert_eq!(
            (g.embedding_len(), g.embedding_words(), f32_geom.embedding_words()),
            (12, 6, 12)
        );
        let buffers = LocalContrastBuffers::default();
        let plan = |g: &LocalContrastGeom| {
            let mut calls = forward_calls(g, &buffers).unwrap();
            calls.extend(backward_calls(g, &buffers).unwrap());
            calls
        };
        let (bf16, fp32) = (plan(&g), plan(&f32_geom));
        let names: Vec<&str> = bf16.iter().map(|c| c.kernel).collect();
        assert_eq!(names, kernel_names_for(EmbeddingType::Bf16));
        assert_eq!(names[0], "local_contrast_means_bf16");
        assert_eq!(names[6], "local_contrast_scatter_bf16");
        for (a, b) in bf16.iter().zip(&fp32) {
            assert_eq!((a.grid, a.block, a.param_bytes()), (b.grid, b.block, b.param_bytes()));
        }
        assert_eq!(all_kernel_names().len(), 9);
        assert_eq!(EmbeddingType::Bf16.words(7), 4);
        assert_eq!("bf16".parse::<EmbeddingType>().unwrap(), EmbeddingType::Bf16);
        assert!("f16".parse::<EmbeddingType>().is_err());
    }
}
