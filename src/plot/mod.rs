//! PNG figures.
