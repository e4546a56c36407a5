//! The thesis' three models: the global (MoCo) encoder, the LRC embedding U-Net, and the
//! fine-tuning segmentation model that concatenates both branches.
//!
//! Parameter names: global model `enc.*` + `proj.{weight,bias}`; LRC model `enc.*`, `dec.*` +
//! `embed.{weight,bias}`; segmentation model `global.enc.*`, `global.dec.*` (the global
//! branch, when present), `local.enc.*`, `local.dec.*` and `head.{weight,bias}`.

use serde::{Deserialize, Serialize};

use super::layers::{Conv2d, Linear};
use super::params::{Bound, ParamStore};
use super::unet::{Encoder, UNet, UNetConfig};
use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::rng::Rng;

/// Encoder + global average pooling + linear projection (128-d in the thesis). The output is
/// not normalised: InfoNCE callers normalise it.
#[derive(Clone, Debug)]
pub struct GlobalModel {
    pub encoder: Encoder,
    pub proj: Linear,
    pub dim: usize,
}

impl GlobalModel {
    pub fn new(store: &mut ParamStore, config: UNetConfig, dim: usize, rng: &mut Rng) -> Result<GlobalModel> {
        let encoder = Encoder::new(store, "", config, rng)?;
        let width = *config.widths().last().expect("depth >= 1");
        let proj = Linear::new(store, "proj", width, dim, rng);
        Ok(GlobalModel { encoder, proj, dim })
    }

    /// `[B, C, H, W] -> [B, dim]`.
    pub fn forward(&self, tape: &mut Tape, p: &Bound, x: Var) -> Result<Var> {
        let feats = self.encoder.forward(tape, p, x)?;
        let pooled = tape.global_avg_pool(*feats.last().expect("depth >= 1"))?;
        self.proj.forward(tape, p, pooled)
    }
}

/// The LRC U-Net: a 1x1 convolution (no activation) on the last decoder block gives D-channel
/// pixel embeddings, normalised to unit length per pixel (a ReLU would confine them to one
/// orthant of the sphere).
#[derive(Clone, Debug)]
pub struct LocalModel {
    pub unet: UNet,
    pub embed: Conv2d,
    pub dim: usize,
}

impl LocalModel {
    pub fn new(store: &mut ParamStore, config: UNetConfig, dim: usize, rng: &mut Rng) -> Result<LocalModel> {
        let unet = UNet::new(store, "", config, rng)?;
        let embed = Conv2d::new(store, "embed", config.base_width, dim, 1, 1, 0, true, rng);
        Ok(LocalModel { unet, embed, dim })
    }

    /// `[B, C, H, W] -> [B, D, H, W]` unit pixel embeddings.
    pub fn forward(&self, tape: &mut Tape, p: &Bound, x: Var) -> Result<Var> {
        let f = self.unet.forward(tape, p, x)?;
        let e = self.embed.forward(tape, p, f)?;
        tape.l2_normalize(e)
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
