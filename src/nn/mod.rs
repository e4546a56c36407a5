//! Models and their parameters.

pub mod layers;
pub mod models;
pub mod params;
pub mod unet;

pub use models::{Branches, ContrastModel, SegModel};
pub use params::{Bound, Param, ParamId, ParamStore};
pub use unet::{UNet, UNetConfig};
