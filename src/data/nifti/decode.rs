//! From a parsed header and the file's bytes to voxels and geometry, validating every field
//! the result depends on.

use super::header::{DataType, HEADER_SIZE, Header};
use crate::data::affine::{self, IDENTITY, Mat4, Quatern};
use crate::data::volume::{Geometry, SpatialHeader, unravel};

/// What the header says about the voxel data, validated against the bytes that follow it.
#[derive(Clone, Debug)]
pub struct Layout {
    pub dtype: DataType,
    pub big_endian: bool,
    /// Byte offset of the first voxel.
    pub offset: usize,
    /// Scaling to apply (`raw * slope + inter`), identity when the header sets none.
    pub slope: f64,
    pub inter: f64,
    pub geometry: Geometry,
}

impl Layout {
    /// Whether the header asks for a scaling other than the identity.
    pub fn scaled(&self) -> bool {
        self.slope != 1.0 || self.inter != 0.0
    }
}

/// Validates the header against `file_len` bytes of (decompressed) file.
pub fn layout(h: &Header, file_len: usize) -> Result<Layout, String> {
    let dtype = DataType::from_code(h.datatype)?;
    let dims_ijk = spatial_dims(h)?;
    let voxels = dims_ijk
        .iter()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n))
        .ok_or("dims overflow")?;
    let needed = voxels.checked_mul(dtype.size()).ok_or("dims overflow")?;

    if !h.vox_offset.is_finite() || h.vox_offset < HEADER_SIZE as f32 {
        return Err(format!(
            "vox_offset {} is before the end of the 348-byte header",
            h.vox_offset
        ));
    }
    let offset = h.vox_offset as usize;
    let available = file_len.saturating_sub(offset);
    if available < needed {
        return Err(format!(
            "header dims {} x {} x {} ({}) need {needed} bytes of voxel data after offset {offset}, \
             but only {available} follow: truncated file, or dims that do not match the data",
            dims_ijk[0],
            dims_ijk[1],
            dims_ijk[2],
            dtype.name()
        ));
    }

    // NIfTI: a zero (or non-finite) slope means "no scaling".
    let (slope, inter) = if h.scl_slope == 0.0 || !h.scl_slope.is_finite() {
        (1.0, 0.0)
    } else {
        let inter = if h.scl_inter.is_finite() {
            h.scl_inter as f64
        } else {
            0.0
        };
        (h.scl_slope as f64, inter)
    };

    let geometry = geometry(h, dims_ijk)?;
    Ok(Layout {
        dtype,
        big_endian: h.big_endian,
        offset,
        slope,
        inter,
        geometry,
    })
}

/// The three spatial dims (i, j, k); rejects anything with more than one 3-D volume.
fn spatial_dims(h: &Header) -> Result<[usize; 3], String> {
    let ndim = h.dim[0];
    if !(1..=7).contains(&ndim) {
        return Err(format!("dim[0] = {ndim}: the number of dimensions must be 1 to 7"));
    }
    let ndim = ndim as usize;
    let mut out = [1usize; 3];
    for (axis, slot) in out.iter_mut().enumerate() {
        if axis < ndim {
            let n = h.dim[axis + 1];
            if n <= 0 {
                return Err(format!("dim[{}] = {n}: every dimension must be at least 1", axis + 1));
            }
            *slot = n as usize;
        }
    }
    for axis in 3..ndim {
        let n = h.dim[axis + 1];
        if n <= 0 {
            return Err(format!("dim[{}] = {n}: every dimension must be at least 1", axis + 1));
        }
        if n > 1 {
            let what = if axis == 3 {
                "time points or channels"
            } else {
                "entries"
            };
            return Err(format!(
                "{ndim}-D image with dim[{}] = {n} {what}: lrc needs a single 3-D CT volume; \
                 split it into 3-D volumes first",
                axis + 1
            ));
        }
    }
    Ok(out)
}

/// The header's spatial fields as sanitised values: qfac as +1/-1, the spacings with a
/// single-voxel axis's missing spacing taken as 1 mm.
fn pixdims(h: &Header, dims_ijk: [usize; 3]) -> (f64, [f64; 3]) {
    let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
    let mut p = [h.pixdim[1] as f64, h.pixdim[2] as f64, h.pixdim[3] as f64];
    for axis in 0..3 {
        if dims_ijk[axis] == 1 && (p[axis] == 0.0 || !p[axis].is_finite()) {
            p[axis] = 1.0;
        }
    }
    (qfac, p)
}

/// The affine of a header, chosen as nibabel does: the sform when its code is set, else the
/// qform when its code is set, else the scaling-only affine of NIfTI method 1.
pub fn affine_of(h: &Header, dims_ijk: [usize; 3]) -> Result<Mat4, String> {
    let (qfac, p) = pixdims(h, dims_ijk);
    if h.sform_code > 0 {
        let mut a = IDENTITY;
        for (row, srow) in a.iter_mut().zip(&h.srow) {
            for (v, s) in row.iter_mut().zip(srow) {
                *v = *s as f64;
            }
        }
        if a.iter().flatten().any(|v| !v.is_finite()) {
            return Err(format!(
                "sform_code {} but srow_x/y/z hold non-finite values",
                h.sform_code
            ));
        }
        return Ok(a);
    }
    if h.qform_code > 0 {
        let q = Quatern {
            b: h.quatern[0] as f64,
            c: h.quatern[1] as f64,
            d: h.quatern[2] as f64,
            offset: [h.qoffset[0] as f64, h.qoffset[1] as f64, h.qoffset[2] as f64],
            qfac,
        };
        if [q.b, q.c, q.d, q.offset[0], q.offset[1], q.offset[2]]
            .iter()
            .any(|v| !v.is_finite())
        {
            return Err(format!(
                "qform_code {} but the quaternion fields are not finite",
                h.qform_code
            ));
        }
        return Ok(affine::quatern_to_affine(&q, p));
    }
    let mut a = IDENTITY;
    for axis in 0..3 {
        a[axis][axis] = p[axis].abs();
    }
    Ok(a)
}

fn geometry(h: &Header, dims_ijk: [usize; 3]) -> Result<Geometry, String> {
    let a = affine_of(h, dims_ijk)?;
    let n = affine::column_norms(&a);
    let source = if h.sform_code > 0 {
        "sform"
    } else if h.qform_code > 0 {
        "qform and pixdim"
    } else {
        "pixdim"
    };
    for (axis, name) in ["i (x)", "j (y)", "k (z)"].iter().enumerate() {
        if n[axis].is_nan() || n[axis] <= 0.0 || !n[axis].is_finite() {
            return Err(format!(
                "zero or invalid voxel spacing along {name} (pixdim[{}] = {}, affine from the {source}): \
                 spacing must be positive",
                axis + 1,
                h.pixdim[axis + 1]
            ));
        }
    }
    if affine::inverse(&a).is_none() {
        return Err(format!(
            "the affine from the {source} is singular: axes are not independent"
        ));
    }
    let (qfac, _) = pixdims(h, dims_ijk);
    let raw = SpatialHeader {
        pixdim: [qfac as f32, h.pixdim[1], h.pixdim[2], h.pixdim[3]],
        quatern: h.quatern,
        qoffset: h.qoffset,
        srow: h.srow,
        qform_code: h.qform_code,
        sform_code: h.sform_code,
        xyzt_units: h.xyzt_units,
    };
    let all_finite = raw
        .pixdim
        .iter()
        .chain(&raw.quatern)
        .chain(&raw.qoffset)
        .chain(raw.srow.iter().flatten())
        .all(|v| v.is_finite());
    Ok(Geometry {
        dims: [dims_ijk[2], dims_ijk[1], dims_ijk[0]],
        spacing: [n[2], n[1], n[0]],
        affine: a,
        qform_code: h.qform_code.max(0),
        sform_code: h.sform_code.max(0),
        header: all_finite.then_some(raw),
    })
}

/// The header a [`SpatialHeader`] stands for, for recomputing its affine.
pub fn header_from_spatial(s: &SpatialHeader, dims: [usize; 3]) -> Header {
    Header {
        dim: [3, dims[2] as i16, dims[1] as i16, dims[0] as i16, 1, 1, 1, 1],
        pixdim: [s.pixdim[0], s.pixdim[1], s.pixdim[2], s.pixdim[3], 0.0, 0.0, 0.0, 0.0],
        quatern: s.quatern,
        qoffset: s.qoffset,
        srow: s.srow,
        qform_code: s.qform_code,
        sform_code: s.sform_code,
        xyzt_units: s.xyzt_units,
        ..Header::default()
    }
}

macro_rules! decode_loop {
    ($raw:expr, $out:expr, $ty:ty, $n:expr, $be:expr, $map:expr) => {{
        let map = $map;
        if $be {
            for c in $raw.chunks_exact($n) {
                let mut a = [0u8; $n];
                a.copy_from_slice(c);
                $out.push(map(<$ty>::from_be_bytes(a)));
            }
        } else {
            for c in $raw.chunks_exact($n) {
                let mut a = [0u8; $n];
                a.copy_from_slice(c);
                $out.push(map(<$ty>::from_le_bytes(a)));
            }
        }
    }};
}

/// Decodes `raw` (exactly voxels * size bytes) to f64 values through `f`, type by type.
fn decode_with<T>(raw: &[u8], dtype: DataType, be: bool, out: &mut Vec<T>, f: impl Fn(f64) -> T) {
    match dtype {
        DataType::U8 => out.extend(raw.iter().map(|&v| f(v as f64))),
        DataType::I8 => out.extend(raw.iter().map(|&v| f(v as i8 as f64))),
        DataType::I16 => decode_loop!(raw, out, i16, 2, be, |v: i16| f(v as f64)),
        DataType::U16 => decode_loop!(raw, out, u16, 2, be, |v: u16| f(v as f64)),
        DataType::I32 => decode_loop!(raw, out, i32, 4, be, |v: i32| f(v as f64)),
        DataType::U32 => decode_loop!(raw, out, u32, 4, be, |v: u32| f(v as f64)),
        DataType::F32 => decode_loop!(raw, out, f32, 4, be, |v: f32| f(v as f64)),
        DataType::F64 => decode_loop!(raw, out, f64, 8, be, |v: f64| f(v)),
        DataType::I64 => decode_loop!(raw, out, i64, 8, be, |v: i64| f(v as f64)),
        DataType::U64 => decode_loop!(raw, out, u64, 8, be, |v: u64| f(v as f64)),
    }
}

/// The voxels as f32 intensities with the header's scaling applied.
pub fn decode_f32(bytes: &[u8], l: &Layout) -> Vec<f32> {
    let n = l.geometry.voxel_count();
    let raw = &bytes[l.offset..l.offset + n * l.dtype.size()];
    let mut out = Vec::with_capacity(n);
    // The common unscaled little-endian int16 CT gets a direct loop (the hot path of `lrc prep`).
    if !l.scaled() && !l.big_endian && l.dtype == DataType::I16 {
        out.extend(raw.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f32));
        return out;
    }
    if l.scaled() {
        let (s, i) = (l.slope, l.inter);
        decode_with(raw, l.dtype, l.big_endian, &mut out, |v| (v * s + i) as f32);
    } else {
        decode_with(raw, l.dtype, l.big_endian, &mut out, |v| v as f32);
    }
    out
}

/// The voxels as labels: each scaled value must be an integer in 0..=255.
pub fn decode_labels(bytes: &[u8], l: &Layout) -> Result<Vec<u8>, String> {
    let n = l.geometry.voxel_count();
    let raw = &bytes[l.offset..l.offset + n * l.dtype.size()];
    if l.dtype == DataType::U8 && !l.scaled() {
        return Ok(raw.to_vec());
    }
    // Straight to u8, remembering the first value that is not a label (no wide temporary).
    let (s, i) = (l.slope, l.inter);
    let position = std::cell::Cell::new(0usize);
    let first_bad: std::cell::Cell<Option<(usize, f64)>> = std::cell::Cell::new(None);
    let mut out = Vec::with_capacity(n);
    decode_with(raw, l.dtype, l.big_endian, &mut out, |v| {
        let value = v * s + i;
        let at = position.get();
        position.set(at + 1);
        if (0.0..=255.0).contains(&value) && value.fract() == 0.0 {
            value as u8
        } else {
            if first_bad.get().is_none() {
                first_bad.set(Some((at, value)));
            }
            0
        }
    });
    if let Some((idx, v)) = first_bad.get() {
        let zyx = unravel(idx, l.geometry.dims);
        let why = if v.is_nan() {
            "NaN".to_string()
        } else if v.fract() != 0.0 {
            format!("the non-integer value {v}")
        } else {
            format!("the value {v}")
        };
        return Err(format!(
            "label map holds {why} at voxel (z, y, x) = {zyx:?}: labels must be integers 0 to 255"
        ));
    }
    Ok(out)
}
