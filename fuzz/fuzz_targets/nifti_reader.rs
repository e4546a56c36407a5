//! Fuzzes the NIfTI-1 reader (header parsing, validation, gzip, voxel decoding): any input must
//! give a volume or an error, never a panic or an out-of-memory abort.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.nii");
    if let Ok(v) = lrc::data::nifti::read_volume_from_bytes(data, path) {
        assert_eq!(v.data.len(), v.geometry.voxel_count());
        assert!(v.geometry.spacing.iter().all(|s| *s > 0.0 && s.is_finite()));
    }
    if let Ok(l) = lrc::data::nifti::read_labels_from_bytes(data, path) {
        assert_eq!(l.data.len(), l.geometry.voxel_count());
    }
});
