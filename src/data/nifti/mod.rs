//! NIfTI-1 reading and writing (`.nii` and `.nii.gz`) that keeps the geometry.
//!
//! Reading accepts every real-valued NIfTI-1 voxel type (uint8, int8, int16, uint16, int32,
//! uint32, int64, uint64, float32, float64), either byte order, any `vox_offset`, and applies
//! `scl_slope`/`scl_inter` (a zero or non-finite slope means no scaling). The affine is the
//! sform when `sform_code > 0`, else the qform when `qform_code > 0`, else the plain pixdim
//! scaling. Negative pixdims are taken by magnitude (handedness comes from `qfac` and the
//! quaternion); `qfac = pixdim[0]` counts only by its sign (0 or anything not -1 reads as +1).
//!
//! Writing puts the geometry back: a volume read from a file carries that file's raw spatial
//! fields ([`SpatialHeader`](crate::data::SpatialHeader)), and a mask written with that
//! geometry gets the same dims, pixdim, qform, sform and codes, byte for byte, so it opens
//! aligned with its CT in any viewer.
//!
//! Everything a file can get wrong comes back as [`Error::Format`] naming the file; the reader
//! never panics on any input.

mod decode;
pub mod header;
mod write;

use std::io::Read;
use std::path::Path;

use crate::data::volume::{LabelVolume, Volume};
use crate::error::{Error, Result};

pub use header::{DataType, Header};
pub use write::{VoxelType, write_labels, write_mask, write_volume};

/// Reads a CT (or any scalar) volume as f32 in (z, y, x) order with the header's scaling
/// applied. Non-finite voxels are an error (they would poison resampling and training).
pub fn read_volume(path: impl AsRef<Path>) -> Result<Volume> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    read_volume_from_bytes(&bytes, path)
}

/// Reads a label map: every voxel must be an integer 0..=255 after scaling.
pub fn read_labels(path: impl AsRef<Path>) -> Result<LabelVolume> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    read_labels_from_bytes(&bytes, path)
}

/// [`read_volume`] on the bytes of a `.nii` or `.nii.gz` file (gzip is recognised by its
/// magic, not the name); `path` only names the source in errors.
pub fn read_volume_from_bytes(bytes: &[u8], path: &Path) -> Result<Volume> {
    let plain = gunzip_if_needed(bytes, path)?;
    let bytes: &[u8] = plain.as_deref().unwrap_or(bytes);
    let h = Header::parse(bytes).map_err(|m| Error::format(path, m))?;
    let layout = decode::layout(&h, bytes.len()).map_err(|m| Error::format(path, m))?;
    let data = decode::decode_f32(bytes, &layout);
    if let Some(idx) = data.iter().position(|v| !v.is_finite()) {
        let count = data.iter().filter(|v| !v.is_finite()).count();
        let zyx = crate::data::volume::unravel(idx, layout.geometry.dims);
        return Err(Error::format(
            path,
            format!(
                "{count} voxels are NaN or infinite (first at (z, y, x) = {zyx:?}); \
                 lrc needs finite intensities: replace them (e.g. with -1024 HU) first"
            ),
        ));
    }
    Ok(Volume {
        data,
        geometry: layout.geometry,
    })
}

/// [`read_labels`] on the bytes of a `.nii` or `.nii.gz` file.
pub fn read_labels_from_bytes(bytes: &[u8], path: &Path) -> Result<LabelVolume> {
    let plain = gunzip_if_needed(bytes, path)?;
    let bytes: &[u8] = plain.as_deref().unwrap_or(bytes);
    let h = Header::parse(bytes).map_err(|m| Error::format(path, m))?;
    let layout = decode::layout(&h, bytes.len()).map_err(|m| Error::format(path, m))?;
    let data = decode::decode_labels(bytes, &layout).map_err(|m| Error::format(path, m))?;
    Ok(LabelVolume {
        data,
        geometry: layout.geometry,
    })
}

/// Recomputes a geometry's affine and spacing from the raw header fields it carries (exact
/// f32 values), undoing any rounding a text round trip (JSON) left in the f64 affine. Does
/// nothing for derived geometries.
pub fn refresh_geometry(g: &mut crate::data::Geometry) {
    if let Some(raw) = &g.header {
        let h = decode::header_from_spatial(raw, g.dims);
        if let Ok(a) = decode::affine_of(&h, [g.dims[2], g.dims[1], g.dims[0]]) {
            let n = crate::data::affine::column_norms(&a);
            g.affine = a;
            g.spacing = [n[2], n[1], n[0]];
        }
    }
}

/// Decompresses gzip data (all members), or returns `None` for data that is not gzip.
fn gunzip_if_needed(bytes: &[u8], path: &Path) -> Result<Option<Vec<u8>>> {
    if bytes.len() < 2 || bytes[0] != 0x1f || bytes[1] != 0x8b {
        return Ok(None);
    }
    // The gzip trailer holds the uncompressed size mod 2^32: a capacity hint, capped by the
    // largest expansion deflate allows so a corrupt trailer cannot ask for absurd memory.
    let hint = if bytes.len() >= 18 {
        let t = &bytes[bytes.len() - 4..];
        u32::from_le_bytes([t[0], t[1], t[2], t[3]]) as usize
    } else {
        0
    };
    let cap = hint.min(bytes.len().saturating_mul(1032)).saturating_add(1 << 16);
    let mut out = Vec::new();
    // Only a hint: if the memory is not there, decompression reports the real need itself.
    let _ = out.try_reserve(cap);
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| {
            let what = match e.kind() {
                std::io::ErrorKind::UnexpectedEof => "truncated gzip stream (the file ends early)".to_string(),
                _ => format!("corrupt gzip stream ({e})"),
            };
            Error::format(path, what)
        })?;
    Ok(Some(out))
}
