//! Synthetic CT phantoms: the built-in data when no real CT is at hand.
//!
//! Each case is drawn from a seed: patient size, fat, position on the table and contrast phase
//! vary; organs are analytic shapes (deformed ellipsoids, tubes) placed relative to the body
//! and spine, smoothly deformed per case; tissues get realistic HU with texture; the image
//! gets partial-volume edges, the reconstruction blur and correlated CT noise, and is stored
//! as int16 HU like a scanner's output. Regions: abdomen, thorax, head and neck (with the
//! small structures that make that region hard: optic nerves and chiasm).

mod abdomen;
mod anatomy;
mod field;
mod head;
mod render;
mod shape;
mod thorax;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use super::affine::Mat4;
use super::dataset::write_dataset_json;
use super::nifti::{self, VoxelType};
use super::volume::{Geometry, LabelVolume, Volume};
use crate::error::{Error, Result};
use crate::rng::Rng;

pub use field::{ValueNoise, add_ct_noise, blur121};

/// Body region of a phantom.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Region {
    Abdomen,
    Thorax,
    Head,
}

impl Region {
    /// Label names, index = label value (0 = background).
    pub fn label_names(self) -> &'static [&'static str] {
        match self {
            Region::Abdomen => &abdomen::LABELS,
            Region::Thorax => &thorax::LABELS,
            Region::Head => &head::LABELS,
        }
    }

    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Region::Abdomen => "abdomen",
            Region::Thorax => "thorax",
            Region::Head => "head",
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Region {
    type Err = Error;
    fn from_str(s: &str) -> Result<Region> {
        match s.to_ascii_lowercase().as_str() {
            "abdomen" => Ok(Region::Abdomen),
            "thorax" | "chest" => Ok(Region::Thorax),
            "head" | "han" | "head-neck" => Ok(Region::Head),
            other => Err(Error::config(format!(
                "unknown region {other:?}: use abdomen, thorax or head"
            ))),
        }
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct SynthConfig {
    pub region: Region,
    /// Axial slices per case.
    pub slices: usize,
    /// In-plane size (pixels, square).
    pub size: usize,
    /// Master seed; case `i` uses an independent stream derived from it.
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            region: Region::Abdomen,
            slices: 64,
            size: 256,
            seed: 0,
        }
    }
}

impl SynthConfig {
    /// Checks the sizes.
    pub fn validate(&self) -> Result<()> {
        if !(8..=1024).contains(&self.slices) {
            return Err(Error::config(format!("--slices {} must be 8 to 1024", self.slices)));
        }
        if !(64..=1024).contains(&self.size) {
            return Err(Error::config(format!("--size {} must be 64 to 1024", self.size)));
        }
        Ok(())
    }
}

/// Generates case `case_index`: the CT (HU, integers), its label map and the label names.
/// Deterministic in (`cfg`, `case_index`).
pub fn synth_case(cfg: &SynthConfig, case_index: usize) -> Result<(Volume, LabelVolume, Vec<String>)> {
    cfg.validate()?;
    let root = Rng::new(cfg.seed ^ region_salt(cfg.region));
    let mut rng = root.fork(case_index as u64);
    let (scene, grid) = match cfg.region {
        Region::Abdomen => abdomen::build(&mut rng, cfg.size, cfg.slices),
        Region::Thorax => thorax::build(&mut rng, cfg.size, cfg.slices),
        Region::Head => head::build(&mut rng, cfg.size, cfg.slices),
    };
    let (hu, labels) = render::render(&scene, &grid, &mut rng.fork(99));
    // Patient coordinates are LPS; NIfTI world is RAS: x and y change sign. The table sits at
    // some height in the scanner's frame.
    let table_z = rng.range(-650.0, -100.0);
    let affine: Mat4 = [
        [-grid.px, 0.0, 0.0, -grid.x0],
        [0.0, -grid.px, 0.0, -grid.y0],
        [0.0, 0.0, grid.dz, grid.z0 + table_z],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let geometry = Geometry::from_affine([grid.nz, grid.ny, grid.nx], affine);
    let names = cfg.region.label_names().iter().map(|s| s.to_string()).collect();
    Ok((
        Volume {
            data: hu,
            geometry: geometry.clone(),
        },
        LabelVolume { data: labels, geometry },
        names,
    ))
}

fn region_salt(r: Region) -> u64 {
    match r {
        Region::Abdomen => 0xabd0,
        Region::Thorax => 0x0074_07a8,
        Region::Head => 0x4ead,
    }
}

/// How [`write_dataset`] runs.
#[derive(Clone, Debug, Default)]
pub struct DatasetOptions {
    pub cases: usize,
    /// Write images only (no labelsTr).
    pub unlabeled: bool,
    /// Worker threads (0: all cores).
    pub threads: usize,
    /// Also write PNGs of the middle slice of each case under `preview/`.
    pub preview: bool,
    pub progress: bool,
}

/// The case name of case `i`.
pub fn case_name(region: Region, i: usize) -> String {
    format!("{}_{i:03}", region.name())
}

/// Writes `opts.cases` phantoms in the nnU-Net v2 layout: `imagesTr/NAME_0000.nii.gz`
/// (int16 HU), `labelsTr/NAME.nii.gz` (uint8, unless unlabeled) and `dataset.json`.
/// The start of the `name` of every dataset.json this module writes.
const DATASET_NAME_PREFIX: &str = "lrc synthetic";

/// An error when `out` holds anything but an earlier synthetic dataset, finished (its
/// dataset.json is ours) or interrupted (only the folders this module makes): it is rewritten
/// case by case, and a user's data there would be overwritten.
fn check_output_folder(out: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Ok(()); // missing: created below; a file: creating the folders reports it
    };
    let names: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
    if names
        .iter()
        .all(|n| ["imagesTr", "labelsTr", "preview"].iter().any(|ours| n == ours))
    {
        return Ok(());
    }
    let json = out.join("dataset.json");
    let ours = std::fs::read_to_string(&json)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| {
            v.get("name")
                .and_then(|n| n.as_str())
                .map(|n| n.starts_with(DATASET_NAME_PREFIX))
        })
        .unwrap_or(false);
    if ours {
        Ok(())
    } else {
        Err(Error::format(
            out,
            "exists, is not empty and holds no dataset written by `lrc synth`: choose another output folder",
        ))
    }
}

pub fn write_dataset(cfg: &SynthConfig, out: &Path, opts: &DatasetOptions) -> Result<()> {
    cfg.validate()?;
    if opts.cases == 0 {
        return Err(Error::config("--cases must be at least 1"));
    }
    check_output_folder(out)?;
    let images = out.join("imagesTr");
    let labels = out.join("labelsTr");
    let preview = out.join("preview");
    std::fs::create_dir_all(&images).map_err(|e| Error::io(&images, e))?;
    if !opts.unlabeled {
        std::fs::create_dir_all(&labels).map_err(|e| Error::io(&labels, e))?;
    }
    if opts.preview {
        std::fs::create_dir_all(&preview).map_err(|e| Error::io(&preview, e))?;
    }
    let pb = if opts.progress {
        indicatif::ProgressBar::new(opts.cases as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .map_err(|e| Error::config(format!("cannot start worker threads: {e}")))?;
    pool.install(|| {
        use rayon::prelude::*;
        (0..opts.cases).into_par_iter().try_for_each(|i| -> Result<()> {
            let (vol, lab, _) = synth_case(cfg, i)?;
            let name = case_name(cfg.region, i);
            nifti::write_volume(images.join(format!("{name}_0000.nii.gz")), &vol, VoxelType::I16)?;
            if !opts.unlabeled {
                nifti::write_mask(labels.join(format!("{name}.nii.gz")), &lab)?;
            }
            if opts.preview {
                write_preview(&preview, &name, &vol, &lab, cfg.region)?;
            }
            pb.inc(1);
            Ok(())
        })
    })?;
    pb.finish_and_clear();
    let names = cfg.region.label_names();
    let label_names: &[&str] = if opts.unlabeled { &names[..1] } else { names };
    write_dataset_json(
        &out.join("dataset.json"),
        &format!("{DATASET_NAME_PREFIX} {} phantoms (seed {})", cfg.region, cfg.seed),
        label_names,
        opts.cases,
    )
}

/// PNGs of the middle slice: soft-tissue window, lung window for the thorax, and label outlines.
pub fn write_preview(dir: &Path, name: &str, vol: &Volume, lab: &LabelVolume, region: Region) -> Result<()> {
    let [nz, h, w] = vol.geometry.dims;
    let z = nz / 2;
    let (level, width) = match region {
        Region::Head => (40.0, 120.0),
        _ => super::png::SOFT_TISSUE,
    };
    let gray = super::png::window(vol.slice(z), level, width);
    super::png::write_gray_png(dir.join(format!("{name}.png")), &gray, w, h)?;
    let soft = super::png::window(vol.slice(z), super::png::SOFT_TISSUE.0, super::png::SOFT_TISSUE.1);
    let outlined = super::png::outline_labels(&soft, lab.slice(z), w, h);
    super::png::write_rgb_png(dir.join(format!("{name}_labels.png")), &outlined, w, h)?;
    if region == Region::Thorax {
        let lung = super::png::window(vol.slice(z), super::png::LUNG.0, super::png::LUNG.1);
        super::png::write_gray_png(dir.join(format!("{name}_lung.png")), &lung, w, h)?;
    }
    Ok(())
}
