//! Named tensors in safetensors files, written atomically (temporary file, fsync, rename), so
//! that a crash never leaves a half-written checkpoint behind.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// A checkpoint's string metadata.
pub type Metadata = BTreeMap<String, String>;

/// Writes `bytes` to `path` atomically: a sibling temporary file is written, synced and renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::config(format!("{} is not a file path", path.display())))?;
    // One temporary name per target: what a killed write left behind is overwritten by the
    // next write of the same file and renamed away, instead of piling up under process ids.
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(())
}

/// Saves tensors (copied to the host) with string metadata.
pub fn save(path: &Path, tensors: &[(String, Tensor)], metadata: &Metadata) -> Result<()> {
    Snapshot::take(path, tensors, metadata)?.write()
}

/// A tensor's values on the host, in its own type.
enum HostData {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// What [`save`] writes, gathered on the host (from any device) so that another thread can
/// encode and write it.
pub struct Snapshot {
    path: PathBuf,
    tensors: Vec<(String, Vec<usize>, HostData)>,
    metadata: Metadata,
}

impl Snapshot {
    /// Copies `tensors` to the host.
    pub fn take(path: &Path, tensors: &[(String, Tensor)], metadata: &Metadata) -> Result<Snapshot> {
        let tensors = tensors
            .iter()
            .map(|(name, t)| {
                let data = match t.dtype() {
                    DType::F32 => HostData::F32(t.to_f32_vec()?),
                    DType::F64 => HostData::F64(t.to_f64_vec()?),
                };
                Ok((name.clone(), t.shape().to_vec(), data))
            })
            .collect::<Result<_>>()?;
        Ok(Snapshot {
            path: path.to_path_buf(),
            tensors,
            metadata: metadata.clone(),
        })
    }

    /// Encodes the snapshot as safetensors and writes it atomically.
    pub fn write(&self) -> Result<()> {
        let views: Vec<(String, TensorView)> = self
            .tensors
            .iter()
            .map(|(name, shape, data)| {
                let (dtype, bytes): (Dtype, &[u8]) = match data {
                    HostData::F32(v) => (Dtype::F32, bytemuck::cast_slice(v)),
                    HostData::F64(v) => (Dtype::F64, bytemuck::cast_slice(v)),
                };
                let view = TensorView::new(dtype, shape.clone(), bytes).map_err(|e| Error::config(e.to_string()))?;
                Ok((name.clone(), view))
            })
            .collect::<Result<_>>()?;
        let meta: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| Error::Checkpoint {
            path: self.path.clone(),
            msg: e.to_string(),
        })?;
        write_atomic(&self.path, &bytes)
    }
}

/// Writes checkpoints on a background thread while training goes on: the tensors are copied to
/// the host on the caller's thread (the device stays there), then encoded, written and synced
/// behind it. One write at a time, in the order asked, so a run's files become durable in the
/// order it saves them (a fine-tuning run's best model before the state that names it). A
/// failed write is reported by the next `save` or by `wait`; dropping the writer waits too.
#[derive(Default)]
pub struct BackgroundWriter {
    pending: Option<std::thread::JoinHandle<Result<()>>>,
}

impl BackgroundWriter {
    pub fn new() -> BackgroundWriter {
        BackgroundWriter::default()
    }

    /// Starts writing `tensors` and `metadata` to `path` once the previous write is done.
    pub fn save(&mut self, path: &Path, tensors: &[(String, Tensor)], metadata: &Metadata) -> Result<()> {
        let snapshot = Snapshot::take(path, tensors, metadata)?;
        self.wait()?;
        self.pending = Some(std::thread::spawn(move || snapshot.write()));
        Ok(())
    }

    /// Waits for the write in progress, if any, and returns its result.
    pub fn wait(&mut self) -> Result<()> {
        match self.pending.take() {
            Some(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(Error::config("the checkpoint writer thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for BackgroundWriter {
    fn drop(&mut self) {
        // An error here has no caller left to report to; the write itself is atomic.
        let _ = self.wait();
    }
}

/// Tensors and metadata of a safetensors file. F32 and F64 tensors load as such; other
/// element types are an error naming the tensor.
pub fn load(path: &Path) -> Result<(BTreeMap<String, Tensor>, Metadata)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::Checkpoint { path: path.into(), msg };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let metadata: Metadata = header.metadata().clone().unwrap_or_default().into_iter().collect();
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data = view.data();
        let t = match view.dtype() {
            Dtype::F32 => Tensor::from_vec(
                shape,
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect::<Vec<f32>>(),
            )?,
            Dtype::F64 => Tensor::from_vec(
                shape,
                data.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect::<Vec<f64>>(),
            )?,
            other => {
                return Err(bad(format!(
                    "tensor {name} has element type {other:?}; expected F32 or F64"
                )));
            }
        };
        tensors.insert(name, t);
    }
    Ok((tensors, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_write_leaves_nothing_after_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        // What a write killed before its rename leaves.
        std::fs::write(dir.path().join(".m.safetensors.tmp"), b"half").unwrap();
        write_atomic(&path, b"whole").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("m.safetensors")]);
    }

    #[test]
    fn round_trip_keeps_values_shapes_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let a = Tensor::from_vec(vec![2, 3], vec![1.0f32, -2.0, 3.5, 0.0, 1e-8, 7.0]).unwrap();
        let b = Tensor::from_vec(vec![1], vec![0.125f64]).unwrap();
        let meta = BTreeMap::from([("kind".to_string(), "test".to_string())]);
        save(&path, &[("a".into(), a.clone()), ("b".into(), b)], &meta).unwrap();
        let (t, m) = load(&path).unwrap();
        assert_eq!(m, meta);
        assert_eq!(t["a"].shape(), &[2, 3]);
        assert_eq!(t["a"].as_slice::<f32>().unwrap(), a.as_slice::<f32>().unwrap());
        assert_eq!(t["b"].as_slice::<f64>().unwrap(), &[0.125]);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_background_writer_writes_in_order_and_reports_failures() {
        let dir = tempfile::tempdir().unwrap();
        let meta = |step: usize| BTreeMap::from([("step".to_string(), step.to_string())]);
        let mut writer = BackgroundWriter::new();
        let path = dir.path().join("state.safetensors");
        for step in 0..4 {
            let t = Tensor::from_vec(vec![3], vec![step as f32; 3]).unwrap();
            writer.save(&path, &[("t".into(), t)], &meta(step)).unwrap();
        }
        writer.wait().unwrap();
        // The last save is what the file holds, and it is whole.
        let (t, m) = load(&path).unwrap();
        assert_eq!((m, t["t"].as_slice::<f32>().unwrap()), (meta(3), &[3.0f32; 3][..]));
        // A write that cannot happen (its folder is a file) is reported, naming the path.
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, b"x").unwrap();
        let t = Tensor::from_vec(vec![1], vec![1.0f32]).unwrap();
        writer
            .save(&blocked.join("m.safetensors"), &[("t".into(), t)], &meta(0))
            .unwrap();
        let err = writer.wait().unwrap_err();
        assert!(err.to_string().contains(&blocked.display().to_string()), "{err}");
        // Once reported, the failure is gone: the writer goes on.
        writer.wait().unwrap();
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        std::fs::write(&path, b"not a checkpoint").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.contains("bad.safetensors") && err.contains("not a safetensors file"),
            "{err}"
        );
    }
}
