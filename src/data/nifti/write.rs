//! Writing volumes and masks with a reference geometry.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::decode;
use super::header::{DataType, Header};
use crate::data::affine;
use crate::data::volume::{Geometry, LabelVolume, Volume};
use crate::error::{Error, Result};

/// On-disk voxel type for [`write_volume`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoxelType {
    /// Rounded and clamped to 0..=255.
    U8,
    /// Rounded and clamped to -32768..=32767 (CT in HU).
    I16,
    /// Stored as is.
    F32,
}

/// Writes a label map as uint8 with its geometry (`.nii.gz` compressed, `.nii` plain).
pub fn write_mask(path: impl AsRef<Path>, labels: &LabelVolume) -> Result<()> {
    write_labels(path, &labels.data, &labels.geometry)
}

/// Writes `data` (z, y, x) as a uint8 label map on `geometry`'s grid: same dims, pixdim,
/// qform, sform and codes as the file the geometry was read from.
pub fn write_labels(path: impl AsRef<Path>, data: &[u8], geometry: &Geometry) -> Result<()> {
    let path = path.as_ref();
    check_len(path, data.len(), geometry)?;
    let h = header_for(path, geometry, DataType::U8)?;
    write_file(path, &h, data)
}

/// Writes a volume with its geometry, converting voxels to `ty`.
pub fn write_volume(path: impl AsRef<Path>, volume: &Volume, ty: VoxelType) -> Result<()> {
    let path = path.as_ref();
    let g = &volume.geometry;
    check_len(path, volume.data.len(), g)?;
    let (dtype, bytes): (DataType, Vec<u8>) = match ty {
        VoxelType::U8 => (
            DataType::U8,
            volume.data.iter().map(|&v| v.round().clamp(0.0, 255.0) as u8).collect(),
        ),
        VoxelType::I16 => (
            DataType::I16,
            volume
                .data
                .iter()
                .flat_map(|&v| (v.round().clamp(-32768.0, 32767.0) as i16).to_le_bytes())
                .collect(),
        ),
        VoxelType::F32 => (
            DataType::F32,
            volume.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    };
    let h = header_for(path, g, dtype)?;
    write_file(path, &h, &bytes)
}

fn check_len(path: &Path, len: usize, g: &Geometry) -> Result<()> {
    if len != g.voxel_count() {
        return Err(Error::format(
            path,
            format!(
                "cannot write {len} voxels on a grid of {} = {} voxels",
                crate::data::volume::dims_text(g.dims),
                g.voxel_count()
            ),
        ));
    }
    Ok(())
}

/// The header for `g`: its raw spatial fields when they still describe its affine, otherwise
/// a qform and sform derived from the affine.
fn header_for(path: &Path, g: &Geometry, dtype: DataType) -> Result<Header> {
    for (axis, &n) in g.dims.iter().enumerate() {
        if n == 0 || n > i16::MAX as usize {
            return Err(Error::format(
                path,
                format!("dimension {axis} of size {n} cannot be stored in a NIfTI-1 header (1..=32767)"),
            ));
        }
    }
    let mut h = Header {
        dim: [3, g.dims[2] as i16, g.dims[1] as i16, g.dims[0] as i16, 1, 1, 1, 1],
        datatype: dtype.code(),
        bitpix: (dtype.size() * 8) as i16,
        scl_slope: 1.0,
        scl_inter: 0.0,
        ..Header::default()
    };
    h.set_descrip("lrc");
    // The raw fields are written when they still describe the affine (up to the last bits of
    // an f64 that went through text): then the file gets its source's header byte for byte.
    let raw_fits = g.header.as_ref().is_some_and(|raw| {
        let rh = decode::header_from_spatial(raw, g.dims);
        decode::affine_of(&rh, [g.dims[2], g.dims[1], g.dims[0]]).is_ok_and(|a| {
            a.iter()
                .flatten()
                .zip(g.affine.iter().flatten())
                .all(|(x, y)| (x - y).abs() <= 1e-9 * (1.0 + x.abs()))
        })
    });
    if let (true, Some(raw)) = (raw_fits, &g.header) {
        h.pixdim[..4].copy_from_slice(&raw.pixdim);
        h.quatern = raw.quatern;
        h.qoffset = raw.qoffset;
        h.srow = raw.srow;
        h.qform_code = raw.qform_code;
        h.sform_code = raw.sform_code;
        h.xyzt_units = raw.xyzt_units;
        return Ok(h);
    }
    if g.affine.iter().flatten().any(|v| !v.is_finite()) || affine::inverse(&g.affine).is_none() {
        return Err(Error::format(
            path,
            "cannot write a volume whose affine is singular or not finite",
        ));
    }
    let (q, spacing) = affine::affine_to_quatern(&g.affine);
    h.pixdim[0] = q.qfac as f32;
    for (p, s) in h.pixdim[1..4].iter_mut().zip(spacing) {
        *p = s as f32;
    }
    h.quatern = [q.b as f32, q.c as f32, q.d as f32];
    h.qoffset = [q.offset[0] as f32, q.offset[1] as f32, q.offset[2] as f32];
    for r in 0..3 {
        for c in 0..4 {
            h.srow[r][c] = g.affine[r][c] as f32;
        }
    }
    let (mut qcode, mut scode) = (g.qform_code.max(0), g.sform_code.max(0));
    if qcode == 0 && scode == 0 {
        // Without a code, readers ignore the affine; a derived grid needs it honoured.
        qcode = 1;
        scode = 1;
    }
    h.qform_code = qcode;
    h.sform_code = scode;
    h.xyzt_units = 2; // millimetres
    Ok(h)
}

/// Writes header + voxels to a temporary name, then renames, so that a reader never sees a
/// half-written file.
fn write_file(path: &Path, h: &Header, voxels: &[u8]) -> Result<()> {
    let gz = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    let mut tmp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    tmp_name.push(".partial");
    let tmp: PathBuf = path.with_file_name(tmp_name);
    let result = (|| -> std::io::Result<()> {
        let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        if gz {
            // Level 1: CT and masks compress nearly as well as at level 6, several times faster.
            let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::new(1));
            enc.write_all(&h.to_bytes())?;
            enc.write_all(voxels)?;
            enc.finish()?.flush()?;
        } else {
            let mut file = file;
            file.write_all(&h.to_bytes())?;
            file.write_all(voxels)?;
            file.flush()?;
        }
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}
