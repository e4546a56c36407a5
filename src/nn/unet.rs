//! The thesis' 2-D U-Net: per level two [conv3x3 -> instance norm -> ReLU], 2x2 max-pool down,
//! 2x2 stride-2 transposed convolution up, skip connections by channel concatenation.
//!
//! Parameter names (stable; checkpoints and scripts/torch_reference.py rely on them):
//! `{prefix}enc.{l}.conv{1,2}.{weight,bias}`, `{prefix}enc.{l}.norm{1,2}.{weight,bias}` for
//! levels l = 0..depth-1 (the last one is the bottleneck), and for decoder levels
//! l = depth-2..0: `{prefix}dec.{l}.up.{weight,bias}` (from `width[l+1]` to `width[l]`) followed by
//! `{prefix}dec.{l}.conv{1,2}` / `norm{1,2}` (conv1 reads the concatenation [skip, up]).

use serde::{Deserialize, Serialize};

use super::layers::{Conv2d, ConvTranspose2d, InstanceNorm2d};
use super::params::{Bound, ParamStore};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::ops::instance_norm::Activation;
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UNetConfig {
    pub in_channels: usize,
    /// Width of level 0; doubles per level.
    pub base_width: usize,
    /// Number of resolution levels (the bottleneck included).
    pub depth: usize,
    /// Cap on the width of any level.
    pub max_width: usize,
}

impl Default for UNetConfig {
    fn default() -> Self {
        UNetConfig {
            in_channels: 1,
            base_width: 32,
            depth: 5,
            max_width: 512,
        }
    }
}

/// Most channels of any level (the thesis' U-Net reaches 512).
pub const MAX_WIDTH: usize = 8192;

impl UNetConfig {
    pub fn widths(&self) -> Vec<usize> {
        (0..self.depth)
            .map(|l| (self.base_width << l).min(self.max_width))
            .collect()
    }

    /// Input sides must be multiples of this (one halving per pooling).
    pub fn size_multiple(&self) -> usize {
        1 << (self.depth - 1)
    }

    pub fn validate(&self) -> Result<()> {
        let widths_ok = [self.base_width, self.max_width, self.in_channels]
            .iter()
            .all(|&w| (1..=MAX_WIDTH).contains(&w));
        if self.depth == 0 || self.depth > 10 || !widths_ok {
            return Err(Error::config(format!(
                "invalid U-Net: depth {} (1 to 10), base width {}, widest level {} and input channels {} \
                 (each 1 to {MAX_WIDTH})",
                self.depth, self.base_width, self.max_width, self.in_channels
            )));
        }
        Ok(())
    }

    /// A shape error unless an input of `h` x `w` passes through every pooling evenly.
    pub fn check_input(&self, h: usize, w: usize) -> Result<()> {
        let m = self.size_multiple();
        if !h.is_multiple_of(m) || !w.is_multiple_of(m) || h == 0 || w == 0 {
            return Err(Error::shape(
                "unet",
                format!(
                    "input {h}x{w}: sides must be positive multiples of {m} for depth {}; pad the slice",
                    self.depth
                ),
            ));
        }
        Ok(())
    }
}

/// [conv3x3 -> instance norm -> ReLU] twice, the norm and its ReLU as one fused op.
#[derive(Clone, Debug)]
pub struct ConvBlock {
    conv1: Conv2d,
    norm1: InstanceNorm2d,
    conv2: Conv2d,
    norm2: InstanceNorm2d,
}

impl ConvBlock {
    pub fn new(store: &mut ParamStore, prefix: &str, c_in: usize, c_out: usize, rng: &mut Rng) -> ConvBlock {
        ConvBlock {
            conv1: Conv2d::new(store, &format!("{prefix}.conv1"), c_in, c_out, 3, 1, 1, true, rng),
            norm1: InstanceNorm2d::new(store, &format!("{prefix}.norm1"), c_out),
            conv2: Conv2d::new(store, &format!("{prefix}.conv2"), c_out, c_out, 3, 1, 1, true, rng),
            norm2: InstanceNorm2d::new(store, &format!("{prefix}.norm2"), c_out),
        }
    }

    pub fn forward(&self, tape: &mut Tape, p: &Bound, x: Var) -> Result<Var> {
        let y = self.conv1.forward(tape, p, x)?;
        let y = self.norm1.forward_act(tape, p, y, Activation::Relu)?;
        let y = self.conv2.forward(tape, p, y)?;
        self.norm2.forward_act(tape, p, y, Activation::Relu)
    }
}

/// The contracting half: one block per level, pooling between levels.
#[derive(Clone, Debug)]
pub struct Encoder {
    pub config: UNetConfig,
    blocks: Vec<ConvBlock>,
}

impl Encoder {
    pub fn new(store: &mut ParamStore, prefix: &str, config: UNetConfig, rng: &mut Rng) -> Result<Encoder> {
        config.validate()?;
        let widths = config.widths();
        let blocks = (0..config.depth)
            .map(|l| {
                let c_in = if l == 0 { config.in_channels } else { widths[l - 1] };
                ConvBlock::new(store, &format!("{prefix}enc.{l}"), c_in, widths[l], rng)
            })
            .collect();
        Ok(Encoder { config, blocks })
    }

    /// The features of every level, finest first; the last is the bottleneck.
    pub fn forward(&self, tape: &mut Tape, p: &Bound, x: Var) -> Result<Vec<Var>> {
        let s = tape.value(x).dims4("unet")?;
        self.config.check_input(s[2], s[3])?;
        let mut feats = Vec::with_capacity(self.blocks.len());
        let mut h = x;
        for (l, block) in self.blocks.iter().enumerate() {
            if l > 0 {
                h = tape.max_pool2x2(h)?;
            }
            h = block.forward(tape, p, h)?;
            feats.push(h);
        }
        Ok(feats)
    }
}

/// The expanding half: up-convolution, concatenation with the skip, block.
#[derive(Clone, Debug)]
pub struct Decoder {
    ups: Vec<ConvTranspose2d>,
    blocks: Vec<ConvBlock>,
}

impl Decoder {
    pub fn new(store: &mut ParamStore, prefix: &str, config: UNetConfig, rng: &mut Rng) -> Decoder {
        let widths = config.widths();
        let (mut ups, mut blocks) = (Vec::new(), Vec::new());
        for l in (0..config.depth.saturating_sub(1)).rev() {
            ups.push(ConvTranspose2d::new(
                store,
                &format!("{prefix}dec.{l}.up"),
                widths[l + 1],
                widths[l],
                2,
                2,
                rng,
            ));
            blocks.push(ConvBlock::new(
                store,
                &format!("{prefix}dec.{l}"),
                2 * widths[l],
                widths[l],
                rng,
            ));
        }
        Decoder { ups, blocks }
    }

    /// The full-resolution features (base width channels).
    pub fn forward(&self, tape: &mut Tape, p: &Bound, feats: &[Var]) -> Result<Var> {
        let mut h = *feats.last().expect("encoder yields at least one level");
        for (i, (up, block)) in self.ups.iter().zip(&self.blocks).enumerate() {
            let skip = feats[feats.len() - 2 - i];
            let u = up.forward(tape, p, h)?;
            let cat = tape.concat(skip, u)?;
            h = block.forward(tape, p, cat)?;
        }
        Ok(h)
    }
}

/// Encoder and decoder: image in, base-width features at full resolution out.
#[derive(Clone, Debug)]
pub struct UNet {
    pub encoder: Encoder,
    pub decoder: Decoder,
}

impl UNet {
    pub fn new(store: &mut ParamStore, prefix: &str, config: UNetConfig, rng: &mut Rng) -> Result<UNet> {
        let encoder = Encoder::new(store, prefix, config, rng)?;
        let decoder = Decoder::new(store, prefix, config, rng);
        Ok(UNet { encoder, decoder })
    }

    pub fn config(&self) -> UNetConfig {
        self.encoder.config
    }

    pub fn forward(&self, tape: &mut Tape, p: &Bound, x: Var) -> Result<Var> {
        let feats = self.encoder.forward(tape, p, x)?;
        self.decoder.forward(tape, p, &feats)
    }
}
