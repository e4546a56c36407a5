//! Checks on a command's output paths, made before any work: an output is never one of the
//! command's inputs, and it can be written (so hours of training are not lost at the end to a
//! folder given for a file, or to a missing permission).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The path as the file system resolves it, for comparing an output with the inputs: the
/// canonical path where it exists, else its canonical parent joined with its name.
fn resolved(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            parent
                .canonicalize()
                .map_or_else(|_| path.to_path_buf(), |p| p.join(name))
        }
        _ => path.to_path_buf(),
    }
}

/// An error when `output` is one of `inputs` (the same file or folder, however spelled), so
/// that a command never overwrites what it reads.
pub fn refuse_overwriting_input(output: &Path, inputs: &[&Path]) -> Result<()> {
    let out = resolved(output);
    match inputs.iter().find(|i| resolved(i) == out) {
        Some(input) => Err(Error::format(
            output,
            format!(
                "is also an input ({}); writing it would destroy what this command reads: choose another output",
                input.display()
            ),
        )),
        None => Ok(()),
    }
}

/// An error when a training run would replace the earlier work at any of `outputs` (a model, its
/// run state) without being told: a run that exists is continued with --resume or replaced with
/// --overwrite, so that a repeated or mistyped command never discards a finished model.
pub fn refuse_replacing_run(outputs: &[&Path], resume: bool, overwrite: bool) -> Result<()> {
    if resume || overwrite {
        return Ok(());
    }
    match outputs.iter().find(|p| p.exists()) {
        Some(existing) => Err(Error::format(
            existing,
            "exists: continue its run with --resume, replace it with --overwrite, or write elsewhere",
        )),
        None => Ok(()),
    }
}

/// An error unless a file can be written at `path`: it is no folder, its folder exists or can
/// be made, and a file can be created there (tried with a probe file, removed at once).
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::format(path, "is a folder; the output must be a file path"));
    }
    let name = path
        .file_name()
        .ok_or_else(|| Error::format(path, "is not a file path"))?
        .to_string_lossy()
        .into_owned();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let probe = dir.join(format!(".{name}.probe{}", std::process::id()));
    std::fs::File::create(&probe).map_err(|e| Error::io(path, e))?;
    std::fs::remove_file(&probe).map_err(|e| Error::io(&probe, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lrc-output-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        dir
    }

    #[test]
    fn an_output_that_is_an_input_is_refused_however_spelled() {
        let dir = scratch("same");
        let input = dir.join("ct.nii.gz");
        std::fs::write(&input, b"x").unwrap();
        for same in [input.clone(), dir.join("sub/../ct.nii.gz"), dir.join("./ct.nii.gz")] {
            let err = refuse_overwriting_input(&same, &[&dir.join("other"), &input]).unwrap_err();
            assert!(err.to_string().contains("is also an input"), "{err}");
        }
        // A new file beside it, and a file in a missing folder, are fine.
        refuse_overwriting_input(&dir.join("mask.nii.gz"), &[&input]).unwrap();
        refuse_overwriting_input(&dir.join("missing/mask.nii.gz"), &[&input]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_existing_run_is_replaced_only_when_told() {
        let dir = scratch("replace");
        let (model, state) = (dir.join("m.safetensors"), dir.join("m.safetensors.state"));
        refuse_replacing_run(&[&model, &state], false, false).unwrap();
        // Either file of the run is enough to refuse, and the error names that file.
        std::fs::write(&state, b"x").unwrap();
        let err = refuse_replacing_run(&[&model, &state], false, false).unwrap_err();
        assert!(err.to_string().contains("m.safetensors.state"), "{err}");
        refuse_replacing_run(&[&model, &state], true, false).unwrap();
        refuse_replacing_run(&[&model, &state], false, true).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_folder_is_no_writable_output_and_the_probe_is_removed() {
        let dir = scratch("writable");
        let err = check_writable(&dir.join("sub")).unwrap_err();
        assert!(err.to_string().contains("is a folder"), "{err}");
        check_writable(&dir.join("new/model.safetensors")).unwrap();
        assert!(dir.join("new").is_dir());
        let left: Vec<_> = std::fs::read_dir(dir.join("new")).unwrap().collect();
        assert!(left.is_empty(), "the probe file was left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
