//! The Local Region Contrast loss (thesis section 3.1.2).

/// For one image: the regions present in both views and, per region, `n` sampled pixel
/// indices in each view (row-major `y * W + x` within the image), drawn with replacement.
/// Region `k` owns `q[k*n..(k+1)*n]` and `p[k*n..(k+1)*n]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionSamples {
    /// The region label of each kept region, in increasing order.
    pub labels: Vec<u32>,
    /// Samples per region.
    pub n: usize,
    /// Pixel indices in the query view, `labels.len() * n` of them.
    pub q: Vec<u32>,
    /// Pixel indices in the positive (transformed) view, `labels.len() * n` of them.
    pub p: Vec<u32>,
}

impl RegionSamples {
    pub fn regions(&self) -> usize {
        self.labels.len()
    }
}
