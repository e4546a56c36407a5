//! `lrc superpixels`: Felzenszwalb regions of every axial slice of a CT volume (or of one),
//! written as a label map in the volume's own geometry, with an optional PNG of one slice's
//! region boundaries over the CT.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, ValueEnum};

use crate::data::intensity::{Normalization, check_ct};
use crate::data::nifti::{VoxelType, read_volume, write_volume};
use crate::data::orient::Reorientation;
use crate::data::png::{SOFT_TISSUE, window};
use crate::data::volume::{Geometry, Volume, dims_text};
use crate::device::Device;
use crate::device::cuda::CudaDevice;
use crate::error::{Error, Result};
use crate::superpixel::cuda::volume_regions_cuda;
use crate::superpixel::overlay::{draw_boundaries, to_gray_u8, write_rgb_png};
use crate::superpixel::{CleanupConfig, FelzenszwalbParams, SuperpixelConfig, volume_regions};

/// The HU window slices are clipped to and mapped onto [0, 1] from before segmentation.
pub const HU_WINDOW: (f32, f32) = (-1000.0, 1000.0);

/// The largest label stored as int16; larger maps are stored as float32.
const I16_MAX_LABEL: u32 = i16::MAX as u32;

/// Integers up to this value are exact in float32.
const F32_EXACT_MAX: u32 = 1 << 24;

/// Grey levels of the PNG.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PngWindow {
    /// [-1000, 1000] HU: the intensities exactly as the segmentation sees them.
    Ct,
    /// Soft-tissue window (level 40, width 400 HU): organ contrast, bone and air saturated.
    Soft,
}

/// Options of `lrc superpixels`.
#[derive(Args, Debug, Clone)]
pub struct SuperpixelsArgs {
    /// CT volume (.nii / .nii.gz) in Hounsfield units.
    #[arg(short, long)]
    pub input: PathBuf,
    /// Output label map (.nii.gz or .nii), on the input's grid and affine.
    #[arg(short, long)]
    pub out: PathBuf,
    /// Segment only this slice (0-based index along the stored third axis, k); others are 0.
    #[arg(long)]
    pub slice: Option<usize>,
    /// Also write a PNG of one slice (--slice, else the middle one) with region boundaries.
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Grey-level window of the PNG.
    #[arg(long, value_enum, default_value_t = PngWindow::Ct)]
    pub png_window: PngWindow,
    /// Felzenszwalb scale (larger: fewer, larger regions).
    #[arg(long, default_value_t = 100.0)]
    pub scale: f64,
    /// Felzenszwalb Gaussian pre-smoothing in pixels.
    #[arg(long, default_value_t = 0.8)]
    pub sigma: f64,
    /// Felzenszwalb minimum segment size in pixels.
    #[arg(long, default_value_t = 50)]
    pub min_size: usize,
    /// Plain Felzenszwalb labels + 1 (as scikit-image gives them), without the CT clean-up.
    #[arg(long)]
    pub raw: bool,
    /// cpu (the default: exact, scikit-image's labels) or cuda / cuda:N (the GPU Felzenszwalb:
    /// close to the exact labels, not equal; then the GPU clean-up, equal to the CPU's on the
    /// same segments).
    #[arg(long)]
    pub device: Option<String>,
}

impl SuperpixelsArgs {
    /// The segmentation settings: these Felzenszwalb parameters and the default CT clean-up for
    /// slices normalised from [`HU_WINDOW`].
    pub fn config(&self) -> SuperpixelConfig {
        SuperpixelConfig {
            felzenszwalb: FelzenszwalbParams {
                scale: self.scale,
                sigma: self.sigma,
                min_size: self.min_size,
            },
            cleanup: CleanupConfig {
                hu_window: HU_WINDOW,
                ..CleanupConfig::default()
            },
        }
    }
}

/// The GPU that segments, or `None` for the CPU: `cpu` (or nothing), `cuda` or `cuda:N` (an
/// error that says why when that GPU cannot be used).
fn open_device(spec: Option<&str>) -> Result<Option<Arc<CudaDevice>>> {
    match Device::parse(spec.unwrap_or("cpu"))? {
        Device::Cpu => Ok(None),
        Device::Cuda(d) => Ok(Some(d)),
    }
}

/// HU clipped to [`HU_WINDOW`] and mapped to [0, 1]: `(clamp(v) + 1000) * (1 / 2000)` in f32.
pub fn normalise_hu(data: &[f32]) -> Vec<f32> {
    let mut out = data.to_vec();
    Normalization::Ct {
        lo: HU_WINDOW.0,
        hi: HU_WINDOW.1,
    }
    .apply(&mut out);
    out
}

/// Region labels of a normalised volume (`dims` z, y, x), per slice of the stored array: every
/// slice, or only `slice` with 0 elsewhere. See [`volume_regions`] for `raw`.
pub fn label_slices(
    normalised: &[f32],
    dims: [usize; 3],
    cfg: &SuperpixelConfig,
    raw: bool,
    slice: Option<usize>,
) -> Vec<u32> {
    label_slices_on(None, normalised, dims, cfg, raw, slice).expect("the CPU path cannot fail")
}

/// [`label_slices`] with the segmentation on `gpu` when given ([`volume_regions_cuda`]).
pub fn label_slices_on(
    gpu: Option<&Arc<CudaDevice>>,
    normalised: &[f32],
    dims: [usize; 3],
    cfg: &SuperpixelConfig,
    raw: bool,
    slice: Option<usize>,
) -> Result<Vec<u32>> {
    let regions = |volume: &[f32], dims: [usize; 3]| match gpu {
        Some(d) => volume_regions_cuda(d, volume, dims, cfg, raw),
        None => Ok(volume_regions(volume, dims, cfg, raw)),
    };
    let Some(z) = slice else {
        return regions(normalised, dims);
    };
    let plane = dims[1] * dims[2];
    let one = regions(&normalised[z * plane..(z + 1) * plane], [1, dims[1], dims[2]])?;
    let mut out = vec![0u32; normalised.len()];
    out[z * plane..(z + 1) * plane].copy_from_slice(&one);
    Ok(out)
}

/// Writes a label map on `geometry` as int16 when every label fits (always, short of a
/// `--raw` run with a tiny `min_size` on a huge slice), else as float32, which holds the
/// integers exactly. Returns the NIfTI type written.
pub fn write_label_map(path: &Path, labels: &[u32], geometry: &Geometry) -> Result<&'static str> {
    let max = labels.iter().copied().max().unwrap_or(0);
    if max > F32_EXACT_MAX {
        return Err(Error::format(
            path,
            format!("a slice has {max} regions: more than a NIfTI float32 label map holds exactly"),
        ));
    }
    let (ty, name) = if max <= I16_MAX_LABEL {
        (VoxelType::I16, "int16")
    } else {
        (VoxelType::F32, "float32")
    };
    let volume = Volume {
        data: labels.iter().map(|&l| l as f32).collect(),
        geometry: geometry.clone(),
    };
    write_volume(path, &volume, ty)?;
    Ok(name)
}

/// The reorientation that shows an axial slice in the radiological view (anterior up, the
/// patient's right on the left), or `None` when the stored third axis is not the body's
/// superior-inferior axis (a sagittal or coronal stack), which is then shown as stored.
pub fn display_orientation(geometry: &Geometry) -> Option<Reorientation> {
    let r = Reorientation::to_canonical(&geometry.affine);
    (r.src[2] == 2).then_some(Reorientation {
        flip: [r.flip[0], r.flip[1], false],
        ..r
    })
}

/// Writes slice `z` of `volume` (HU) with the boundaries of `labels` drawn over it; returns
/// whether the slice was turned to the radiological view.
pub fn write_overlay(path: &Path, volume: &Volume, labels: &[u32], z: usize, grey_window: PngWindow) -> Result<bool> {
    let [_, h, w] = volume.geometry.dims;
    let plane = h * w;
    let hu = volume.slice(z);
    let grey = match grey_window {
        PngWindow::Ct => to_gray_u8(&normalise_hu(hu)),
        PngWindow::Soft => window(hu, SOFT_TISSUE.0, SOFT_TISSUE.1),
    };
    let slice_labels = &labels[z * plane..(z + 1) * plane];
    let orientation = display_orientation(&volume.geometry);
    let (grey, slice_labels, h, w) = match orientation {
        Some(r) => {
            let [_, dh, dw] = r.dims([1, h, w]);
            (r.apply(&grey, [1, h, w]), r.apply(slice_labels, [1, h, w]), dh, dw)
        }
        None => (grey, slice_labels.to_vec(), h, w),
    };
    let rgb = draw_boundaries(&grey, &slice_labels, h, w);
    write_rgb_png(path, &rgb, h, w)?;
    Ok(orientation.is_some())
}

/// Number of distinct labels > 0 in each slice.
pub fn regions_per_slice(labels: &[u32], plane: usize) -> Vec<usize> {
    labels
        .chunks(plane.max(1))
        .map(|s| {
            let mut v: Vec<u32> = s.iter().copied().filter(|&l| l > 0).collect();
            v.sort_unstable();
            v.dedup();
            v.len()
        })
        .collect()
}

fn check_output_folder(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("the output folder {} does not exist", dir.display()),
            ),
        )),
        _ => Ok(()),
    }
}

/// Runs `lrc superpixels`.
pub fn run(args: SuperpixelsArgs) -> Result<()> {
    let gpu = open_device(args.device.as_deref())?;
    let cfg = args.config();
    cfg.validate()?;
    check_output_folder(&args.out)?;
    crate::output::refuse_overwriting_input(&args.out, &[&args.input])?;
    if let Some(png) = &args.png {
        check_output_folder(png)?;
        crate::output::refuse_overwriting_input(png, &[&args.input, &args.out])?;
    }
    let start = std::time::Instant::now();
    let volume = read_volume(&args.input)?;
    let dims = volume.geometry.dims;
    if let Some(z) = args.slice
        && z >= dims[0]
    {
        return Err(Error::config(format!(
            "--slice {z} is outside {} of {} (slices 0 to {})",
            dims_text(dims),
            args.input.display(),
            dims[0] - 1
        )));
    }
    if let Err(why) = check_ct(&volume.data) {
        eprintln!("warning: {}: {why}", args.input.display());
    }
    let normalised = normalise_hu(&volume.data);
    let labels = label_slices_on(gpu.as_ref(), &normalised, dims, &cfg, args.raw, args.slice)?;
    let ty = write_label_map(&args.out, &labels, &volume.geometry)?;
    let png_slice = args.slice.unwrap_or(dims[0] / 2);
    let turned = match &args.png {
        Some(png) => Some(write_overlay(png, &volume, &labels, png_slice, args.png_window)?),
        None => None,
    };

    let plane = dims[1] * dims[2];
    let counts = regions_per_slice(&labels, plane);
    let counted: Vec<usize> = match args.slice {
        Some(z) => vec![counts[z]],
        None => counts,
    };
    let (min, max) = (
        counted.iter().min().copied().unwrap_or(0),
        counted.iter().max().copied().unwrap_or(0),
    );
    let mean = counted.iter().sum::<usize>() as f64 / counted.len().max(1) as f64;
    println!(
        "superpixels: {} slice(s) of {} x {} from {} ({}, {}), {min}-{max} regions per slice (mean {mean:.1}); \
         wrote {} ({ty}) in {:.1} s",
        counted.len(),
        dims[1],
        dims[2],
        args.input.display(),
        match &gpu {
            Some(d) => format!("GPU Felzenszwalb on {}", d.name()),
            None => "exact Felzenszwalb on the CPU".to_string(),
        },
        if args.raw {
            "raw Felzenszwalb labels + 1"
        } else {
            "cleaned regions, 0 outside the body"
        },
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    if let (Some(png), Some(turned)) = (&args.png, turned) {
        println!(
            "superpixels: wrote {} (slice {png_slice}, {}, {})",
            png.display(),
            match args.png_window {
                PngWindow::Ct => "grey window [-1000, 1000] HU",
                PngWindow::Soft => "soft-tissue window [-160, 240] HU",
            },
            if turned {
                "radiological view: anterior up, patient's right on the left"
            } else {
                "shown as stored: the third axis is not superior-inferior"
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::nifti::read_volume;

    fn grid(dims: [usize; 3], affine: crate::data::affine::Mat4) -> Geometry {
        Geometry::from_affine(dims, affine)
    }

    const LPS: crate::data::affine::Mat4 = [
        [-1.0, 0.0, 0.0, 0.0],
        [0.0, -1.0, 0.0, 0.0],
        [0.0, 0.0, 2.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];

    #[test]
    fn label_maps_beyond_int16_are_written_exactly_as_float32() {
        let dir = tempfile::tempdir().unwrap();
        let g = grid([1, 2, 3], LPS);
        let small = dir.path().join("small.nii");
        assert_eq!(write_label_map(&small, &[0, 1, 2, 3, 32767, 5], &g).unwrap(), "int16");
        let big = dir.path().join("big.nii");
        let labels = [0, 1, 32768, 65536, 16_777_215, 16_777_216];
        assert_eq!(write_label_map(&big, &labels, &g).unwrap(), "float32");
        let back = read_volume(&big).unwrap();
        assert_eq!(back.data.iter().map(|&v| v as u32).collect::<Vec<_>>(), labels);
        assert!(write_label_map(&big, &[0, 1, 2, 3, 4, 16_777_217], &g).is_err());
    }

    #[test]
    fn display_turns_axial_stacks_only() {
        assert_eq!(
            display_orientation(&grid([2, 3, 4], LPS)),
            Some(Reorientation::identity())
        );
        let mut ras = LPS;
        ras[0][0] = 1.0;
        ras[1][1] = 1.0;
        let r = display_orientation(&grid([2, 3, 4], ras)).unwrap();
        assert_eq!(r.flip, [true, true, false]);
        // Axial data stored with y fastest: turned by a transpose.
        let swapped = [
            [0.0, -1.0, 0.0, 0.0],
            [-1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 2.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let r = display_orientation(&grid([2, 3, 4], swapped)).unwrap();
        assert_eq!(r.src, [1, 0, 2]);
        assert_eq!(r.dims([1, 3, 4]), [1, 4, 3]);
        // A sagittal stack (k along x) is shown as stored.
        let sagittal = [
            [0.0, 0.0, 1.0, 0.0],
            [0.0, -1.0, 0.0, 0.0],
            [-1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert_eq!(display_orientation(&grid([2, 3, 4], sagittal)), None);
    }

    #[test]
    fn devices_are_cpu_or_cuda() {
        assert!(open_device(None).unwrap().is_none());
        assert!(open_device(Some("cpu")).unwrap().is_none());
        assert!(matches!(open_device(Some("gpu")), Err(Error::Config(_))));
        // A GPU that is not there is an error that says so, never a panic.
        if let Err(e) = open_device(Some("cuda:7")) {
            assert!(!e.to_string().is_empty());
        }
    }
}
