//! CT data: NIfTI I/O with geometry, preprocessing, the slice store, synthetic phantoms.
