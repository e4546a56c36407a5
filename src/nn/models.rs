//! The thesis' models: the pre-training network (global MoCo head, local LRC head, or both)
//! and the fine-tuning segmentation model that concatenates both branches.
//!
//! Parameter names: pre-training `enc.*`, `dec.*` (local head), `proj.{weight,bias}` (global
//! head), `embed.{weight,bias}` (local head); segmentation model `global.enc.*`, `global.dec.*` (the global
//! branch, when present), `local.enc.*`, `local.dec.*` and `head.{weight,bias}`.

use serde::{Deserialize, Serialize};

use super::layers::{Conv2d, Linear};
use super::params::{Bound, ParamStore};
use super::unet::{Decoder, Encoder, UNet, UNetConfig};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// The pre-training network: a U-Net encoder with, for global contrast (MoCo), global average
/// pooling and a linear projection (`proj`, 128-d in the thesis; not normalised, InfoNCE callers
/// normalise it), and for Local Region Contrast the decoder and a 1x1 convolution (`embed`, no
/// activation) giving D-channel pixel embeddings normalised to unit length per pixel (a ReLU
/// would confine them to one orthant of the sphere). Both heads at once train one model on
/// both losses.
#[derive(Clone, Debug)]
pub struct ContrastModel {
    pub encoder: Encoder,
    pub decoder: Option<Decoder>,
    pub proj: Option<Linear>,
    pub embed: Option<Conv2d>,
}

impl ContrastModel {
    /// `global_dim`: the projection size, if the model has the global head; `local_dim`: the
    /// pixel embedding size, if it has the local one.
    pub fn new(
        store: &mut ParamStore,
        config: UNetConfig,
        global_dim: Option<usize>,
        local_dim: Option<usize>,
        rng: &mut Rng,
    ) -> Result<ContrastModel> {
        if global_dim.is_none() && local_dim.is_none() {
            return Err(Error::config("a contrast model needs a global or a local head"));
        }
        let encoder = Encoder::new(store, "", config, rng)?;
        let decoder = local_dim.map(|_| Decoder::new(store, "", config, rng));
        let width = *config.widths().last().expect("depth >= 1");
        let proj = global_dim.map(|d| Linear::new(store, "proj", width, d, rng));
        let embed = local_dim.map(|d| Conv2d::new(store, "embed", config.base_width, d, 1, 1, 0, true, rng));
        Ok(ContrastModel {
            encoder,
            decoder,
            proj,
            embed,
        })
    }

    /// The global model of MoCo: encoder + GAP + projection.
    pub fn global(store: &mut ParamStore, config: UNetConfig, dim: usize, rng: &mut Rng) -> Result<ContrastModel> {
        ContrastModel::new(store, config, Some(dim), None, rng)
    }

    /// The LRC model: U-Net + 1x1 embedding + per-pixel normalisation.
    pub fn local(store: &mut ParamStore, config: UNetConfig, dim: usize, rng: &mut Rng) -> Result<ContrastModel> {
        ContrastModel::new(store, config, None, Some(dim), rng)
    }

    /// `[B, C, H, W] -> [B, dim]` (unnormalised).
    pub fn forward_global(&self, tape: &mut Tape, p: &Bound, x: Var) -> Result<Var> {
        let proj = self
            .proj
            .as_ref()
            .ok_or_else(|| Error::config("this model has no global head"))?;
        let feats = self.encoder.forward(tape, p, x)?;
        let pooled = tape.global_avg_pool(*feats.last().expect("depth >= 1"))?;
        proj.forward(tape, p, pooled)
    }

    /// `[B, C, H, W] -> [B, D, H, W]` unit pixel embeddings.
    pub fn forward_local(&self, tape: &mut Tape, p: &Bound, x: Var) -> Result<Var> {
        self.forward_local_with(tape, p, x, true)
    }

    /// The pixel embeddings, normalised per pixel when `normalize` (the fused local loss can
    /// normalise only the pixels it samples instead: `LocalLossConfig::normalize_pixels`).
    pub fn forward_local_with(&self, tape: &mut Tape, p: &Bound, x: Var, normalize: bool) -> Result<Var> {
        let (Some(decoder), Some(embed)) = (&self.decoder, &self.embed) else {
            return Err(Error::config("this model has no local head"));
        };
        let feats = self.encoder.forward(tape, p, x)?;
        let f = decoder.forward(tape, p, &feats)?;
        let e = embed.forward(tape, p, f)?;
        if normalize { tape.l2_normalize(e) } else { Ok(e) }
    }

    /// Both heads from one encoder pass: (global vector, pixel embeddings).
    pub fn forward_both(&self, tape: &mut Tape, p: &Bound, x: Var) -> Result<(Var, Var)> {
        self.forward_both_with(tape, p, x, true)
    }

    /// Both heads, the pixel embeddings normalised per pixel when `normalize`.
    pub fn forward_both_with(&self, tape: &mut Tape, p: &Bound, x: Var, normalize: bool) -> Result<(Var, Var)> {
        let (Some(proj), Some(decoder), Some(embed)) = (&self.proj, &self.decoder, &self.embed) else {
            return Err(Error::config("this model lacks the global or the local head"));
        };
        let feats = self.encoder.forward(tape, p, x)?;
        let pooled = tape.global_avg_pool(*feats.last().expect("depth >= 1"))?;
        let g = proj.forward(tape, p, pooled)?;
        let f = decoder.forward(tape, p, &feats)?;
        let e = embed.forward(tape, p, f)?;
        let e = if normalize { tape.l2_normalize(e)? } else { e };
        Ok((g, e))
    }
}

/// Which branches the segmentation model has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Branches {
    /// One U-Net (the random / single-pretraining baselines).
    Single,
    /// Global encoder + fresh decoder beside the LRC U-Net, features concatenated.
    Combined,
}

/// U-Net branch(es) + a 1x1 convolution to class logits.
#[derive(Clone, Debug)]
pub struct SegModel {
    pub branches: Branches,
    pub global: Option<UNet>,
    pub local: UNet,
    pub head: Conv2d,
    pub classes: usize,
}

impl SegModel {
    pub fn new(
        store: &mut ParamStore,
        config: UNetConfig,
        branches: Branches,
        classes: usize,
        rng: &mut Rng,
    ) -> Result<SegModel> {
        let global = match branches {
            Branches::Combined => Some(UNet::new(store, "global.", config, rng)?),
            Branches::Single => None,
        };
        let local = UNet::new(store, "local.", config, rng)?;
        let feat = config.base_width * if global.is_some() { 2 } else { 1 };
        let head = Conv2d::new(store, "head", feat, classes, 1, 1, 0, true, rng);
        Ok(SegModel {
            branches,
            global,
            local,
            head,
            classes,
        })
    }

    /// `[B, C, H, W] -> [B, classes, H, W]` logits.
    pub fn forward(&self, tape: &mut Tape, p: &Bound, x: Var) -> Result<Var> {
        let local = self.local.forward(tape, p, x)?;
        let feats = match &self.global {
            Some(g) => {
                let gf = g.forward(tape, p, x)?;
                tape.concat(gf, local)?
            }
            None => local,
        };
        self.head.forward(tape, p, feats)
    }
}
