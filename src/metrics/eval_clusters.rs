//! How well pixel embeddings separate the regions of a reference over-segmentation (thesis
//! section 4.3.1): k-means on the embeddings of the labelled pixels with k = number of regions,
//! then ARI and AMI of the clusters against the regions.

use std::collections::HashSet;

use serde::Serialize;

use super::clustering::Contingency;
use super::kmeans::{KMeansConfig, kmeans};
use crate::error::{Error, Result};

/// Agreement of embedding clusters with reference regions.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ClusterScores {
    /// Adjusted Rand index.
    pub ari: f64,
    /// Adjusted mutual information (arithmetic normaliser).
    pub ami: f64,
    /// Number of regions, and so of k-means clusters.
    pub k: usize,
}

/// Scores the embeddings of one image against its region map, with the default k-means
/// settings ([`KMeansConfig::new`]) and k = number of distinct regions > 0.
///
/// `embeddings` is `[d, h, w]` channel-major (one image of an NCHW tensor); `regions` is
/// `[h, w]` with 0 marking pixels to ignore (e.g. outside the body). The embeddings are
/// clustered as given (LRC embeddings are already unit vectors, so Euclidean k-means on them is
/// cosine k-means).
pub fn eval_clusters(
    embeddings: &[f32],
    d: usize,
    h: usize,
    w: usize,
    regions: &[u16],
    seed: u64,
) -> Result<ClusterScores> {
    eval_clusters_with(embeddings, d, h, w, regions, |k| KMeansConfig::new(k, seed))
}

/// [`eval_clusters`] with the k-means settings made by `config(k)`; its `k` is used as given.
pub fn eval_clusters_with(
    embeddings: &[f32],
    d: usize,
    h: usize,
    w: usize,
    regions: &[u16],
    config: impl FnOnce(usize) -> KMeansConfig,
) -> Result<ClusterScores> {
    let hw = h * w;
    if embeddings.len() != d * hw || regions.len() != hw {
        return Err(Error::shape(
            "eval_clusters",
            format!(
                "embeddings of {} values and regions of {} for d={d}, h={h}, w={w}",
                embeddings.len(),
                regions.len()
            ),
        ));
    }
    let pixels: Vec<usize> = (0..hw).filter(|&p| regions[p] > 0).collect();
    if pixels.is_empty() {
        return Err(Error::config("eval_clusters: no pixel has a region label > 0"));
    }
    let k = regions.iter().filter(|&&r| r > 0).collect::<HashSet<_>>().len();
    // Channel-major planes to one row per labelled pixel.
    let mut rows = vec![0.0f32; pixels.len() * d];
    for (c, plane) in embeddings.chunks_exact(hw).enumerate() {
        for (row, &p) in pixels.iter().enumerate() {
            rows[row * d + c] = plane[p];
        }
    }
    let fit = kmeans(&rows, d, &config(k))?;
    let truth: Vec<u16> = pixels.iter().map(|&p| regions[p]).collect();
    let table = Contingency::new(&truth, &fit.labels)?;
    Ok(ClusterScores {
        ari: table.adjusted_rand_index(),
        ami: table.adjusted_mutual_info(),
        k,
    })
}
