//! Evaluation metrics: Dice of segmentations ([`dice`]), agreement of clusterings
//! ([`clustering`]: ARI, AMI), k-means ([`mod@kmeans`]), and the thesis' cluster evaluation of
//! pixel embeddings against superpixel regions ([`mod@eval_clusters`]).

pub mod clustering;
pub mod dice;
pub mod eval_clusters;
pub mod kmeans;

pub use clustering::{Contingency, adjusted_mutual_info, adjusted_rand_index};
pub use dice::{DiceReport, DiceTable, EmptyClass, OverlapCounts, dice_per_class, dice_per_class_with};
pub use eval_clusters::{ClusterScores, eval_clusters, eval_clusters_with};
pub use kmeans::{KMeans, KMeansConfig, kmeans};
