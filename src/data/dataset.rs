//! Finding the volumes of a dataset folder: the nnU-Net v2 layout (`imagesTr/CASE_0000.nii.gz`,
//! `labelsTr/CASE.nii.gz`, `dataset.json`) or a plain folder of `.nii` / `.nii.gz` files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// One case: an image and, when the dataset has labels, its label map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseSource {
    pub name: String,
    pub image: PathBuf,
    pub labels: Option<PathBuf>,
}

/// The cases of a dataset folder, sorted by name, with the label names it declares.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub root: PathBuf,
    pub cases: Vec<CaseSource>,
    /// Label value to name (0 = background), from `dataset.json` when present.
    pub label_names: BTreeMap<u8, String>,
}

/// Whether a file name is a NIfTI file; returns the name without its extension.
fn nifti_stem(name: &str) -> Option<&str> {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".nii.gz") {
        Some(&name[..name.len() - 7])
    } else if lower.ends_with(".nii") {
        Some(&name[..name.len() - 4])
    } else {
        None
    }
}

fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            // Cases are named by their files, and a lossy name would point at no file.
            let lossy = entry.file_name().to_string_lossy().into_owned();
            if nifti_stem(&lossy).is_some() {
                return Err(Error::format(
                    entry.path(),
                    "the file name is not valid UTF-8, and lrc names cases by their files: rename it",
                ));
            }
            continue;
        };
        if !name.starts_with('.') && entry.path().is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Finds the cases under `dir`.
///
/// With `dir/imagesTr`: nnU-Net v2. Images are `CASE_0000` plus the file ending; a second
/// channel (`CASE_0001`) is an error (lrc uses one CT channel). If `labelsTr` exists every
/// case must have `labelsTr/CASE` + ending (a missing one surfaces as that case's read error).
/// Otherwise: every `.nii` / `.nii.gz` directly in `dir`, unlabelled. No volume is an error.
pub fn discover(dir: &Path) -> Result<Dataset> {
    if dir.is_file() {
        return Err(Error::format(
            dir,
            "is a file: give the folder that holds the volumes (nnU-Net layout or plain .nii / .nii.gz files)",
        ));
    }
    if !dir.is_dir() {
        return Err(Error::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "input folder not found"),
        ));
    }
    let json_path = dir.join("dataset.json");
    let (label_names, ending) = if json_path.is_file() {
        parse_dataset_json(&json_path)?
    } else {
        (BTreeMap::new(), None)
    };
    let images = dir.join("imagesTr");
    let cases = if images.is_dir() {
        nnunet_cases(dir, &images, ending.as_deref())?
    } else {
        plain_cases(dir)?
    };
    if cases.is_empty() {
        let msg = match (images.is_dir(), ending.as_deref()) {
            (true, Some(ending)) => format!(
                "no volumes named CASE_0000{ending} (the file_ending of {}); check that it matches the files",
                json_path.display()
            ),
            _ => "no NIfTI volumes found (expected imagesTr/CASE_0000.nii.gz in the nnU-Net layout, \
                  or .nii / .nii.gz files in a plain folder)"
                .to_string(),
        };
        let where_ = if images.is_dir() { images } else { dir.to_path_buf() };
        return Err(Error::format(where_, msg));
    }
    Ok(Dataset {
        root: dir.to_path_buf(),
        cases,
        label_names,
    })
}

fn nnunet_cases(dir: &Path, images: &Path, ending: Option<&str>) -> Result<Vec<CaseSource>> {
    let labels_dir = dir.join("labelsTr");
    let has_labels = labels_dir.is_dir();
    let mut cases = Vec::new();
    for name in list_dir(images)? {
        let (stem, ext) = match ending {
            Some(end) if name.ends_with(end) => (&name[..name.len() - end.len()], end.to_string()),
            Some(_) => continue,
            None => match nifti_stem(&name) {
                Some(stem) => (stem, name[stem.len()..].to_string()),
                None => continue,
            },
        };
        let Some((case, channel)) = stem.rsplit_once('_') else {
            return Err(Error::format(
                images.join(&name),
                "image name lacks the nnU-Net channel suffix (CASE_0000)",
            ));
        };
        if channel.len() != 4 || !channel.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::format(
                images.join(&name),
                "image name lacks the nnU-Net channel suffix (CASE_0000)",
            ));
        }
        if channel != "0000" {
            return Err(Error::format(
                images.join(&name),
                format!("channel {channel} of case {case}: lrc uses a single CT channel (_0000)"),
            ));
        }
        cases.push(CaseSource {
            name: case.to_string(),
            image: images.join(&name),
            labels: has_labels.then(|| labels_dir.join(format!("{case}{ext}"))),
        });
    }
    Ok(cases)
}

fn plain_cases(dir: &Path) -> Result<Vec<CaseSource>> {
    let mut cases: Vec<CaseSource> = Vec::new();
    for name in list_dir(dir)? {
        if let Some(stem) = nifti_stem(&name) {
            if let Some(prev) = cases.iter().find(|c| c.name == stem) {
                return Err(Error::format(
                    dir.join(&name),
                    format!("two volumes named {stem} ({} and this one)", prev.image.display()),
                ));
            }
            cases.push(CaseSource {
                name: stem.to_string(),
                image: dir.join(&name),
                labels: None,
            });
        }
    }
    Ok(cases)
}

type LabelNames = BTreeMap<u8, String>;

/// Label names and file ending from an nnU-Net v2 `dataset.json`.
pub fn parse_dataset_json(path: &Path) -> Result<(LabelNames, Option<String>)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
    let mut names = BTreeMap::new();
    if let Some(labels) = json.get("labels") {
        let Some(obj) = labels.as_object() else {
            return Err(Error::format(path, "\"labels\" must be an object of name: value"));
        };
        for (name, value) in obj {
            let Some(v) = value.as_u64() else {
                return Err(Error::format(
                    path,
                    format!("label {name:?} has value {value}: region-based or non-integer labels are not supported"),
                ));
            };
            if v > 255 {
                return Err(Error::format(
                    path,
                    format!("label {name:?} = {v}: lrc supports values 0 to 255"),
                ));
            }
            names.insert(v as u8, name.clone());
        }
    }
    if let Some(channels) = json.get("channel_names").and_then(Value::as_object)
        && channels.len() > 1
    {
        return Err(Error::format(
            path,
            format!(
                "{} channels in channel_names: lrc uses a single CT channel",
                channels.len()
            ),
        ));
    }
    let ending = json.get("file_ending").and_then(Value::as_str).map(str::to_string);
    Ok((names, ending))
}

/// Writes an nnU-Net v2 `dataset.json` for a CT dataset.
pub fn write_dataset_json(path: &Path, name: &str, label_names: &[&str], num_training: usize) -> Result<()> {
    let mut labels = serde_json::Map::new();
    for (value, label) in label_names.iter().enumerate() {
        labels.insert(label.to_string(), Value::from(value));
    }
    let json = serde_json::json!({
        "name": name,
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": num_training,
        "file_ending": ".nii.gz",
    });
    let text = serde_json::to_string_pretty(&json).map_err(|e| Error::format(path, e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}
