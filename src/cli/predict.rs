//! `lrc predict`: whole-volume segmentation written in the input's geometry.

use std::path::{Path, PathBuf};

use crate::data::nifti::{read_volume, write_mask};
use crate::data::prep::PrepTransform;
use crate::data::volume::{LabelVolume, Volume};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::train::finetune::Segmenter;

/// True for `.nii` and `.nii.gz` files.
pub fn is_nifti(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    name.ends_with(".nii") || name.ends_with(".nii.gz")
}

/// The case name of an image file: the file name without `.nii[.gz]` and without nnU-Net's
/// channel suffix `_0000`.
pub fn case_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".gz").unwrap_or(&name);
    let stem = stem.strip_suffix(".nii").unwrap_or(stem);
    stem.strip_suffix("_0000").unwrap_or(stem).to_string()
}

/// The segmentation of a volume on its own grid: prepared as the model's training data was,
/// segmented slice by slice, resampled back.
pub fn predict_volume(seg: &Segmenter, volume: &Volume, batch: usize) -> Result<LabelVolume> {
    let transform = PrepTransform::checked(&volume.geometry, seg.prep.spacing)?;
    let mut prepared = transform.image_to_prepared(&volume.data);
    seg.prep.normalization.apply(&mut prepared);
    let [z, h, w] = transform.prepared.dims;
    let slices: Vec<&[f32]> = prepared.chunks(h * w).take(z).collect();
    let labels: Vec<u8> = seg.segment(&slices, h, w, batch)?.concat();
    transform.labels_to_original(&labels)
}

/// Segments one volume and writes the mask (uint8, the input's shape and affine).
pub fn predict_file(seg: &Segmenter, input: &Path, output: &Path, batch: usize) -> Result<()> {
    let volume = read_volume(input)?;
    let mask = predict_volume(seg, &volume, batch).map_err(|e| match e {
        Error::Config(msg) => Error::format(input, msg),
        e => e,
    })?;
    write_mask(output, &mask)
}

/// `input` and `output` are both files, or both folders (every NIfTI file of `input` is
/// segmented into `output/CASE.nii.gz`). Returns the files written.
pub fn run(model: &Path, input: &Path, output: &Path, batch: usize, device: &Device) -> Result<Vec<PathBuf>> {
    crate::output::refuse_overwriting_input(output, &[input, model])?;
    let (mut seg, _) = Segmenter::load(model)?;
    // Inference runs where the parameters are.
    seg.params = seg.params.for_device(device)?;
    if input.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(input)
            .map_err(|e| Error::io(input, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_nifti(p))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::format(input, "holds no .nii or .nii.gz files"));
        }
        // Two inputs of one case name (`a_0000.nii.gz` and `a.nii.gz`, `b.nii` and `b.nii.gz`)
        // would write one mask over the other.
        let mut by_case: std::collections::BTreeMap<String, &PathBuf> = std::collections::BTreeMap::new();
        for f in &files {
            if let Some(first) = by_case.insert(case_name(f), f) {
                return Err(Error::format(
                    input,
                    format!(
                        "{} and {} name the same case {:?}, whose mask would be written twice: rename one",
                        first.display(),
                        f.display(),
                        case_name(f)
                    ),
                ));
            }
        }
        std::fs::create_dir_all(output).map_err(|e| Error::io(output, e))?;
        let mut written = Vec::new();
        for f in files {
            let out = output.join(format!("{}.nii.gz", case_name(&f)));
            predict_file(&seg, &f, &out, batch)?;
            written.push(out);
        }
        Ok(written)
    } else {
        if !input.exists() {
            return Err(Error::format(input, "does not exist"));
        }
        predict_file(&seg, input, output, batch)?;
        Ok(vec![output.to_path_buf()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_names_follow_nnunet() {
        assert_eq!(case_name(Path::new("/a/abd_003_0000.nii.gz")), "abd_003");
        assert_eq!(case_name(Path::new("ct.nii")), "ct");
        assert!(is_nifti(Path::new("x.NII.GZ")) && !is_nifti(Path::new("x.json")));
    }
}

/// Options of `lrc predict`.
#[derive(clap::Args, Debug, Clone)]
pub struct PredictArgs {
    /// Model written by `lrc finetune`.
    #[arg(short, long)]
    pub model: PathBuf,
    /// A CT volume (.nii/.nii.gz) or a folder of them.
    #[arg(short, long)]
    pub input: PathBuf,
    /// The mask file, or a folder (one CASE.nii.gz per input).
    #[arg(short, long)]
    pub out: PathBuf,
    /// Slices per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// cpu, cuda or cuda:N (default: a usable GPU, else the CPU).
    #[arg(long)]
    pub device: Option<String>,
}

/// Runs `lrc predict`.
pub fn run_args(args: PredictArgs) -> Result<()> {
    let device = super::device::select(args.device.as_deref())?;
    for f in run(&args.model, &args.input, &args.out, args.batch, &device)? {
        println!("wrote {}", f.display());
    }
    Ok(())
}
