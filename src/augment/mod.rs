//! Augmentations: elastic transform, intensity jitter.
