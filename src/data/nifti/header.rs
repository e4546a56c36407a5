//! The 348-byte NIfTI-1 header: parsing (either byte order) and serialisation (little-endian).
//!
//! Parsing never panics: every field is read through bounds-checked helpers, and anything the
//! reader cannot honour comes back as a plain message for the caller to attach to the path.

/// Size of a NIfTI-1 header in bytes.
pub const HEADER_SIZE: usize = 348;
/// Offset of the voxel data in files this crate writes (header + 4-byte extension flag).
pub const DATA_OFFSET: usize = 352;

/// Voxel types of NIfTI-1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    U8,
    I16,
    I32,
    F32,
    F64,
    I8,
    U16,
    U32,
    I64,
    U64,
}

impl DataType {
    /// The type for a NIfTI `datatype` code, or a message naming an unsupported one.
    pub fn from_code(code: i16) -> Result<DataType, String> {
        Ok(match code {
            2 => DataType::U8,
            4 => DataType::I16,
            8 => DataType::I32,
            16 => DataType::F32,
            64 => DataType::F64,
            256 => DataType::I8,
            512 => DataType::U16,
            768 => DataType::U32,
            1024 => DataType::I64,
            1280 => DataType::U64,
            1 => return Err("datatype 1 (binary, 1 bit per voxel) is not supported".into()),
            32 | 1792 | 2048 => return Err(format!("datatype {code} (complex) is not supported: CT is real-valued")),
            128 | 2304 => {
                return Err(format!(
                    "datatype {code} (RGB colour) is not supported: CT is a single-channel image"
                ));
            }
            1536 => return Err("datatype 1536 (float128) is not supported".into()),
            0 => return Err("datatype 0 (unknown) in header".into()),
            other => return Err(format!("unknown datatype code {other}")),
        })
    }

    /// The NIfTI `datatype` code.
    pub fn code(self) -> i16 {
        match self {
            DataType::U8 => 2,
            DataType::I16 => 4,
            DataType::I32 => 8,
            DataType::F32 => 16,
            DataType::F64 => 64,
            DataType::I8 => 256,
            DataType::U16 => 512,
            DataType::U32 => 768,
            DataType::I64 => 1024,
            DataType::U64 => 1280,
        }
    }

    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            DataType::U8 | DataType::I8 => 1,
            DataType::I16 | DataType::U16 => 2,
            DataType::I32 | DataType::U32 | DataType::F32 => 4,
            DataType::F64 | DataType::I64 | DataType::U64 => 8,
        }
    }

    /// Whether values are floating point.
    pub fn is_float(self) -> bool {
        matches!(self, DataType::F32 | DataType::F64)
    }

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            DataType::U8 => "uint8",
            DataType::I16 => "int16",
            DataType::I32 => "int32",
            DataType::F32 => "float32",
            DataType::F64 => "float64",
            DataType::I8 => "int8",
            DataType::U16 => "uint16",
            DataType::U32 => "uint32",
            DataType::I64 => "int64",
            DataType::U64 => "uint64",
        }
    }
}

/// The header fields this crate reads or writes. Others are written as zero.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub big_endian: bool,
    pub dim_info: u8,
    pub dim: [i16; 8],
    pub intent_code: i16,
    pub datatype: i16,
    pub bitpix: i16,
    pub pixdim: [f32; 8],
    pub vox_offset: f32,
    pub scl_slope: f32,
    pub scl_inter: f32,
    pub xyzt_units: u8,
    pub cal_max: f32,
    pub cal_min: f32,
    pub descrip: [u8; 80],
    pub qform_code: i16,
    pub sform_code: i16,
    pub quatern: [f32; 3],
    pub qoffset: [f32; 3],
    pub srow: [[f32; 4]; 3],
    pub magic: [u8; 4],
}

impl Default for Header {
    fn default() -> Self {
        Header {
            big_endian: false,
            dim_info: 0,
            dim: [0; 8],
            intent_code: 0,
            datatype: 0,
            bitpix: 0,
            pixdim: [0.0; 8],
            vox_offset: DATA_OFFSET as f32,
            scl_slope: 1.0,
            scl_inter: 0.0,
            xyzt_units: 0,
            cal_max: 0.0,
            cal_min: 0.0,
            descrip: [0; 80],
            qform_code: 0,
            sform_code: 0,
            quatern: [0.0; 3],
            qoffset: [0.0; 3],
            srow: [[0.0; 4]; 3],
            magic: *b"n+1\0",
        }
    }
}

/// Bounds-checked field reads in one byte order.
struct Fields<'a> {
    bytes: &'a [u8],
    big_endian: bool,
}

impl Fields<'_> {
    fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.bytes.get(at..at + N) {
            out.copy_from_slice(src);
        }
        out
    }
    fn i16(&self, at: usize) -> i16 {
        let b = self.array::<2>(at);
        if self.big_endian {
            i16::from_be_bytes(b)
        } else {
            i16::from_le_bytes(b)
        }
    }
    fn i32(&self, at: usize) -> i32 {
        let b = self.array::<4>(at);
        if self.big_endian {
            i32::from_be_bytes(b)
        } else {
            i32::from_le_bytes(b)
        }
    }
    fn f32(&self, at: usize) -> f32 {
        let b = self.array::<4>(at);
        if self.big_endian {
            f32::from_be_bytes(b)
        } else {
            f32::from_le_bytes(b)
        }
    }
    fn u8(&self, at: usize) -> u8 {
        self.bytes.get(at).copied().unwrap_or(0)
    }
}

impl Header {
    /// Parses the first 348 bytes. Checks only what identifies the format (size field and magic);
    /// the meaning of the fields is validated by the reader.
    pub fn parse(bytes: &[u8]) -> Result<Header, String> {
        if bytes.len() < HEADER_SIZE {
            return Err(format!(
                "file too short for a NIfTI-1 header: {} bytes, a header needs {HEADER_SIZE}",
                bytes.len()
            ));
        }
        let le = Fields {
            bytes,
            big_endian: false,
        };
        let be = Fields {
            bytes,
            big_endian: true,
        };
        let f = match (le.i32(0), be.i32(0)) {
            (348, _) => le,
            (_, 348) => be,
            (540, _) | (_, 540) => {
                return Err("NIfTI-2 header (sizeof_hdr = 540): only NIfTI-1 is supported; \
                     convert with e.g. nibabel or c3d"
                    .into());
            }
            (n, _) => return Err(format!("not a NIfTI-1 file: sizeof_hdr is {n}, expected 348")),
        };
        let magic = f.array::<4>(344);
        match &magic {
            b"n+1\0" => {}
            b"ni1\0" => {
                return Err("NIfTI-1 header/image pair (.hdr + .img) is not supported; \
                     convert to a single .nii or .nii.gz file"
                    .into());
            }
            _ => {
                return Err(format!(
                    "no NIfTI-1 magic (found {:?}): an Analyze 7.5 file or not a NIfTI file",
                    String::from_utf8_lossy(&magic)
                ));
            }
        }
        let mut h = Header {
            big_endian: f.big_endian,
            dim_info: f.u8(39),
            intent_code: f.i16(68),
            datatype: f.i16(70),
            bitpix: f.i16(72),
            vox_offset: f.f32(108),
            scl_slope: f.f32(112),
            scl_inter: f.f32(116),
            xyzt_units: f.u8(123),
            cal_max: f.f32(124),
            cal_min: f.f32(128),
            descrip: f.array::<80>(148),
            qform_code: f.i16(252),
            sform_code: f.i16(254),
            quatern: [f.f32(256), f.f32(260), f.f32(264)],
            qoffset: [f.f32(268), f.f32(272), f.f32(276)],
            magic,
            ..Header::default()
        };
        for i in 0..8 {
            h.dim[i] = f.i16(40 + 2 * i);
            h.pixdim[i] = f.f32(76 + 4 * i);
        }
        for r in 0..3 {
            for c in 0..4 {
                h.srow[r][c] = f.f32(280 + 16 * r + 4 * c);
            }
        }
        Ok(h)
    }

    /// Serialises to 352 bytes (header plus an all-zero extension flag), little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; DATA_OFFSET];
        let mut put = |at: usize, src: &[u8]| b[at..at + src.len()].copy_from_slice(src);
        put(0, &348i32.to_le_bytes());
        put(38, b"r");
        put(39, &[self.dim_info]);
        for i in 0..8 {
            put(40 + 2 * i, &self.dim[i].to_le_bytes());
            put(76 + 4 * i, &self.pixdim[i].to_le_bytes());
        }
        put(68, &self.intent_code.to_le_bytes());
        put(70, &self.datatype.to_le_bytes());
        put(72, &self.bitpix.to_le_bytes());
        put(108, &self.vox_offset.to_le_bytes());
        put(112, &self.scl_slope.to_le_bytes());
        put(116, &self.scl_inter.to_le_bytes());
        put(123, &[self.xyzt_units]);
        put(124, &self.cal_max.to_le_bytes());
        put(128, &self.cal_min.to_le_bytes());
        put(148, &self.descrip);
        put(252, &self.qform_code.to_le_bytes());
        put(254, &self.sform_code.to_le_bytes());
        for i in 0..3 {
            put(256 + 4 * i, &self.quatern[i].to_le_bytes());
            put(268 + 4 * i, &self.qoffset[i].to_le_bytes());
        }
        for r in 0..3 {
            for c in 0..4 {
                put(280 + 16 * r + 4 * c, &self.srow[r][c].to_le_bytes());
            }
        }
        put(344, &self.magic);
        b
    }

    /// Sets `descrip` from a string (truncated to 79 bytes, NUL-terminated).
    pub fn set_descrip(&mut self, text: &str) {
        self.descrip = [0; 80];
        let n = text.len().min(79);
        self.descrip[..n].copy_from_slice(&text.as_bytes()[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialise_then_parse_keeps_fields() {
        let mut h = Header {
            dim: [3, 4, 5, 6, 1, 1, 1, 1],
            datatype: 4,
            bitpix: 16,
            pixdim: [-1.0, 0.7, 0.8, 2.5, 0.0, 0.0, 0.0, 0.0],
            scl_slope: 2.0,
            scl_inter: -1024.0,
            xyzt_units: 10,
            qform_code: 1,
            sform_code: 2,
            quatern: [0.0, 0.0, 1.0],
            qoffset: [1.5, -2.5, 3.5],
            srow: [[-0.7, 0.0, 0.0, 1.5], [0.0, -0.8, 0.0, -2.5], [0.0, 0.0, 2.5, 3.5]],
            ..Header::default()
        };
        h.set_descrip("lrc test");
        let bytes = h.to_bytes();
        assert_eq!(bytes.len(), DATA_OFFSET);
        assert_eq!(Header::parse(&bytes).unwrap(), h);
    }

    #[test]
    fn big_endian_header_parses() {
        let h = Header {
            dim: [3, 2, 3, 4, 1, 1, 1, 1],
            datatype: 16,
            bitpix: 32,
            pixdim: [1.0, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0],
            ..Header::default()
        };
        let le = h.to_bytes();
        // Byte-swap every multi-byte field by re-encoding through the big-endian layout.
        let mut be = le.clone();
        let swap = |b: &mut Vec<u8>, at: usize, n: usize| b[at..at + n].reverse();
        swap(&mut be, 0, 4);
        for i in 0..8 {
            swap(&mut be, 40 + 2 * i, 2);
            swap(&mut be, 76 + 4 * i, 4);
        }
        for at in [68, 70, 72, 252, 254] {
            swap(&mut be, at, 2);
        }
        for at in [108, 112, 116, 124, 128, 256, 260, 264, 268, 272, 276] {
            swap(&mut be, at, 4);
        }
        for i in 0..12 {
            swap(&mut be, 280 + 4 * i, 4);
        }
        let parsed = Header::parse(&be).unwrap();
        assert!(parsed.big_endian);
        assert_eq!(parsed.dim, h.dim);
        assert_eq!(parsed.pixdim, h.pixdim);
        assert_eq!(parsed.datatype, 16);
    }

    #[test]
    fn rejects_other_formats_with_reasons() {
        assert!(Header::parse(&[0u8; 100]).unwrap_err().contains("too short"));
        let mut b = Header::default().to_bytes();
        b[0..4].copy_from_slice(&540i32.to_le_bytes());
        assert!(Header::parse(&b).unwrap_err().contains("NIfTI-2"));
        let mut b = Header::default().to_bytes();
        b[344..348].copy_from_slice(b"ni1\0");
        assert!(Header::parse(&b).unwrap_err().contains(".hdr"));
        let mut b = Header::default().to_bytes();
        b[344..348].copy_from_slice(b"\0\0\0\0");
        assert!(Header::parse(&b).unwrap_err().contains("magic"));
    }
}
