//! Felzenszwalb superpixels, CT clean-up of regions, region sampling.
