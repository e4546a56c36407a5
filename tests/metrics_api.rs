//! Metrics against hand computations, independent implementations and scikit-learn values.

use std::collections::HashSet;

use lrc::metrics::clustering::Contingency;
use lrc::metrics::{
    DiceTable, EmptyClass, KMeansConfig, OverlapCounts, adjusted_mutual_info, adjusted_rand_index, dice_per_class,
    dice_per_class_with, eval_clusters, kmeans,
};
use lrc::rng::Rng;

// ---------------------------------------------------------------- Dice

#[test]
fn dice_of_hand_made_masks() {
    // 3x3 masks. Class 1: pred {0,1,2}, truth {1,2,5} -> 2*2/6. Class 2: pred {4}, truth {4,7}
    // -> 2*1/3. Class 3 only predicted -> 0. Class 4 nowhere -> None.
    let pred: [u8; 9] = [1, 1, 1, 0, 2, 0, 3, 0, 0];
    let truth: [u8; 9] = [0, 1, 1, 0, 2, 1, 0, 2, 0];
    let d = dice_per_class(&pred, &truth, &[1, 2, 3, 4]).unwrap();
    assert_eq!(d, vec![Some(2.0 / 3.0), Some(2.0 / 3.0), Some(0.0), None]);
    let d1 = dice_per_class_with(&pred, &truth, &[4], EmptyClass::CountAsOne).unwrap();
    assert_eq!(d1, vec![Some(1.0)]);
    // Identical maps score 1 for every present class.
    let same = dice_per_class(&truth, &truth, &[0, 1, 2]).unwrap();
    assert_eq!(same, vec![Some(1.0); 3]);
}

/// Dice from sets of pixel indices, written independently of the counting implementation.
fn dice_by_sets(pred: &[u32], truth: &[u32], class: u32) -> Option<f64> {
    let p: HashSet<usize> = (0..pred.len()).filter(|&i| pred[i] == class).collect();
    let t: HashSet<usize> = (0..truth.len()).filter(|&i| truth[i] == class).collect();
    let total = p.len() + t.len();
    (total > 0).then(|| 2.0 * p.intersection(&t).count() as f64 / total as f64)
}

#[test]
fn dice_agrees_with_set_computation_on_random_masks() {
    let mut rng = Rng::new(11);
    // 70_000 labels exceed the parallel chunk size, so the chunked path is covered too.
    for &(n, classes) in &[(1usize, 3u32), (97, 5), (4096, 14), (70_000, 9)] {
        let truth: Vec<u32> = (0..n).map(|_| rng.below(classes as u64) as u32).collect();
        // Predictions that agree with the truth about 70% of the time.
        let pred: Vec<u32> = truth
            .iter()
            .map(|&t| {
                if rng.uniform() < 0.7 {
                    t
                } else {
                    rng.below(classes as u64 + 1) as u32
                }
            })
            .collect();
        let class_list: Vec<u32> = (0..=classes + 1).collect();
        let got = dice_per_class(&pred, &truth, &class_list).unwrap();
        for (&c, &g) in class_list.iter().zip(&got) {
            let want = dice_by_sets(&pred, &truth, c);
            // Both are 2a/b of the same integers: the f64 results must be identical.
            assert_eq!(g, want, "n={n} class={c}");
        }
        // u8 maps give the same answer as u32 maps.
        let pred8: Vec<u8> = pred.iter().map(|&v| v as u8).collect();
        let truth8: Vec<u8> = truth.iter().map(|&v| v as u8).collect();
        assert_eq!(dice_per_class(&pred8, &truth8, &class_list).unwrap(), got);
    }
}

#[test]
fn overlap_counts_accumulate_slices_like_the_whole_volume() {
    let mut rng = Rng::new(3);
    let (slices, hw) = (7, 333);
    let truth: Vec<u16> = (0..slices * hw).map(|_| rng.below(4) as u16).collect();
    let pred: Vec<u16> = (0..slices * hw).map(|_| rng.below(4) as u16).collect();
    let mut counts = OverlapCounts::new(&[1, 2, 3]).unwrap();
    for s in 0..slices {
        let r = s * hw..(s + 1) * hw;
        counts.add(&pred[r.clone()], &truth[r]).unwrap();
    }
    let whole = dice_per_class(&pred, &truth, &[1, 2, 3]).unwrap();
    assert_eq!(counts.dice(EmptyClass::Exclude), whole);
    assert_eq!(
        counts.truth().iter().sum::<u64>(),
        truth.iter().filter(|&&t| t > 0).count() as u64
    );
}

#[test]
fn dice_table_text_and_json() {
    let mut table = DiceTable::new(["liver", "kidney_l"]);
    table.add_case("case_001", vec![Some(0.95), Some(2.0 / 3.0)]).unwrap();
    table.add_case("case_002", vec![Some(0.85), None]).unwrap();
    let text = table.to_text();
    let expected = "\
case       liver  kidney_l    mean
----------------------------------
case_001  0.9500    0.6667  0.8083
case_002  0.8500         -  0.8500
----------------------------------
mean      0.9000    0.6667  0.7833
";
    assert_eq!(text, expected);

    let json: serde_json::Value = serde_json::from_str(&table.to_json()).unwrap();
    assert_eq!(json["organs"], serde_json::json!(["liver", "kidney_l"]));
    assert_eq!(json["cases"][0]["dice"], serde_json::json!([0.95, 0.6667]));
    assert_eq!(json["cases"][1]["dice"], serde_json::json!([0.85, null]));
    assert_eq!(json["organ_means"], serde_json::json!([0.9, 0.6667]));
    assert_eq!(json["mean"], serde_json::json!(0.7833));
}

// ---------------------------------------------------------------- ARI / AMI

#[test]
fn identical_and_permuted_labelings_score_one() {
    let truth = [0u32, 0, 1, 1, 2, 2, 2, 3];
    let permuted = [7u8, 7, 2, 2, 9, 9, 9, 0];
    for pred in [&truth[..], &[0, 0, 1, 1, 2, 2, 2, 3]] {
        assert_eq!(adjusted_rand_index(&truth, pred).unwrap(), 1.0);
        assert!((adjusted_mutual_info(&truth, pred).unwrap() - 1.0).abs() < 1e-14);
    }
    assert_eq!(adjusted_rand_index(&truth, &permuted).unwrap(), 1.0);
    assert!((adjusted_mutual_info(&truth, &permuted).unwrap() - 1.0).abs() < 1e-14);
}

#[test]
fn textbook_values() {
    // Pairs: sum C(n_ij,2) = 1, sum C(a_i,2) = 1, sum C(b_j,2) = 2, C(4,2) = 6:
    // ARI = (1 - 1*2/6) / ((1+2)/2 - 1*2/6) = 4/7.
    let ari = adjusted_rand_index(&[0, 0, 1, 2], &[0, 0, 1, 1]).unwrap();
    assert!((ari - 4.0 / 7.0).abs() < 1e-15);
    // One labeling a single cluster: ARI = AMI = 0; both single clusters: 1.
    assert_eq!(adjusted_rand_index(&[0, 0, 0, 0], &[0, 1, 2, 3]).unwrap(), 0.0);
    assert_eq!(adjusted_mutual_info(&[0, 0, 0, 0], &[0, 1, 2, 3]).unwrap(), 0.0);
    assert_eq!(adjusted_mutual_info(&[5, 5, 5], &[1, 1, 1]).unwrap(), 1.0);
    assert_eq!(adjusted_rand_index(&[5, 5, 5], &[1, 1, 1]).unwrap(), 1.0);
    assert!(adjusted_rand_index(&[1, 2], &[1]).is_err());
}

/// SplitMix64, as in scripts/metrics_reference.py.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn reference_labelings(n: usize, k_true: u64, k_pred: u64, keep: u64, seed: u64) -> (Vec<u64>, Vec<u64>) {
    let mut rng = SplitMix64(seed);
    let (mut truth, mut pred) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = rng.next() % k_true;
        truth.push(3 * t + 1);
        pred.push(if rng.next() % 100 < keep {
            (7 * t + 3) % k_pred
        } else {
            rng.next() % k_pred
        });
    }
    (truth, pred)
}

#[test]
fn agrees_with_scikit_learn() {
    // Output of `python3 scripts/metrics_reference.py` (scikit-learn 1.9.1):
    // (n, k_true, k_pred, keep %, seed, adjusted_rand_score, adjusted_mutual_info_score).
    #[allow(clippy::excessive_precision)]
    let cases: [(usize, u64, u64, u64, u64, f64, f64); 10] = [
        (50, 2, 3, 0, 1, -0.013425443169968717, -0.010953062606999383),
        (50, 5, 5, 60, 2, 0.39110529758011775, 0.4102444112632978),
        (64, 40, 40, 50, 3, 0.3993541442411195, 0.38401504111783913),
        (200, 10, 8, 30, 4, 0.08652679815937445, 0.12838585902442232),
        (500, 3, 40, 0, 5, 0.00011243787556832419, -0.0005914815706940178),
        (777, 13, 7, 40, 6, 0.0006574713492361166, 0.0024515590638727654),
        (1000, 20, 20, 80, 7, 0.6404483081529053, 0.6937082811788571),
        (1500, 40, 40, 0, 8, -3.435719942968447e-05, 0.0006031913903035435),
        (2000, 40, 35, 50, 9, 0.1106817719129292, 0.22518861679990212),
        (2000, 2, 2, 95, 10, 0.9062571097969414, 0.8373292195129248),
    ];
    for (n, kt, kp, keep, seed, ari_ref, ami_ref) in cases {
        let (truth, pred) = reference_labelings(n, kt, kp, keep, seed);
        let table = Contingency::new(&truth, &pred).unwrap();
        // Same formulas in f64; the sums run in another order, so allow rounding well above
        // f64 epsilon yet far below any meaningful difference.
        let (ari, ami) = (table.adjusted_rand_index(), table.adjusted_mutual_info());
        assert!(
            (ari - ari_ref).abs() < 1e-10,
            "n={n} seed={seed}: ARI {ari} vs {ari_ref}"
        );
        assert!(
            (ami - ami_ref).abs() < 1e-10,
            "n={n} seed={seed}: AMI {ami} vs {ami_ref}"
        );
        // Both scores are symmetric in their arguments.
        let swapped = Contingency::new(&pred, &truth).unwrap();
        assert!((swapped.adjusted_rand_index() - ari).abs() < 1e-12);
        assert!((swapped.adjusted_mutual_info() - ami).abs() < 1e-12);
    }
}

// ---------------------------------------------------------------- k-means

/// `per` points around each of `centres` (rows of width d), spread `noise` per coordinate.
fn blobs(centres: &[Vec<f32>], per: usize, noise: f64, rng: &mut Rng) -> (Vec<f32>, Vec<u32>) {
    let (mut data, mut truth) = (Vec::new(), Vec::new());
    for i in 0..per * centres.len() {
        let c = i % centres.len();
        data.extend(centres[c].iter().map(|&v| v + (noise * rng.normal()) as f32));
        truth.push(c as u32);
    }
    (data, truth)
}

fn random_centres(k: usize, d: usize, scale: f64, rng: &mut Rng) -> Vec<Vec<f32>> {
    (0..k)
        .map(|_| (0..d).map(|_| (scale * rng.normal()) as f32).collect())
        .collect()
}

#[test]
fn kmeans_recovers_separated_blobs() {
    let mut rng = Rng::new(21);
    let d = 8;
    // Centres a few units apart against noise 0.05: every point is far nearer its own centre.
    let centres = random_centres(12, d, 3.0, &mut rng);
    let (data, truth) = blobs(&centres, 150, 0.05, &mut rng);
    let fit = kmeans(&data, d, &KMeansConfig::new(12, 1)).unwrap();
    assert_eq!(adjusted_rand_index(&truth, &fit.labels).unwrap(), 1.0);
    assert!(fit.converged);
    // The inertia is the one of the blobs' own noise: d * noise^2 per point, within 20%.
    let expected = data.len() as f64 * 0.05 * 0.05;
    assert!(
        (fit.inertia / expected - 1.0).abs() < 0.2,
        "{} vs {expected}",
        fit.inertia
    );
    let (labels, inertia) = fit.predict(&data).unwrap();
    assert_eq!(labels, fit.labels);
    // The fit sums some distances computed in another summation order than predict's scan;
    // each differs by under d * 2^-24 relative.
    assert!((inertia - fit.inertia).abs() <= 1e-6 * inertia);
}

#[test]
fn kmeans_is_deterministic_and_independent_of_thread_count() {
    let mut rng = Rng::new(4);
    let d = 5;
    let data: Vec<f32> = (0..9000 * d).map(|_| rng.normal() as f32).collect();
    let cfg = KMeansConfig::new(17, 99);
    let a = kmeans(&data, d, &cfg).unwrap();
    let b = kmeans(&data, d, &cfg).unwrap();
    let single = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let c = single.install(|| kmeans(&data, d, &cfg).unwrap());
    for other in [&b, &c] {
        assert_eq!(a.labels, other.labels);
        assert_eq!(a.centroids, other.centroids);
        assert_eq!(a.inertia.to_bits(), other.inertia.to_bits());
    }
    let other_seed = kmeans(&data, d, &KMeansConfig::new(17, 100)).unwrap();
    assert_ne!(a.centroids, other_seed.centroids);
}

#[test]
fn kmeans_inertia_never_increases() {
    let mut rng = Rng::new(8);
    let d = 3;
    // Unstructured data with many clusters takes many iterations, exercising the bounds.
    let data: Vec<f32> = (0..6000 * d).map(|_| rng.uniform() as f32).collect();
    for seed in 0..3 {
        let cfg = KMeansConfig {
            tol: 0.0,
            restarts: 1,
            ..KMeansConfig::new(40, seed)
        };
        let fit = kmeans(&data, d, &cfg).unwrap();
        assert!(fit.inertia_history.len() > 10, "only {} iterations", fit.iterations);
        for pair in fit.inertia_history.windows(2) {
            // Assignments compare f32 distances (relative error < d * 2^-24 each) while the
            // history sums them in f64: an exact Lloyd step cannot increase the inertia, and
            // rounding can only show at the 1e-6 relative level.
            assert!(pair[1] <= pair[0] * (1.0 + 1e-6), "{pair:?}");
        }
        // The stopping rule with tol = 0 is a fixed point: no point changes cluster.
        assert!(fit.converged);
        let (labels, _) = fit.predict(&data).unwrap();
        assert_eq!(labels, fit.labels);
    }
}

#[test]
fn kmeans_handles_duplicates_and_subsampling() {
    // Only 3 distinct points but k = 5: clusters get emptied and re-seeded without panicking.
    let data: Vec<f32> = [[0.0f32, 0.0], [1.0, 1.0], [5.0, 5.0]]
        .iter()
        .cycle()
        .take(30)
        .flatten()
        .copied()
        .collect();
    let fit = kmeans(&data, 2, &KMeansConfig::new(5, 0)).unwrap();
    assert_eq!(fit.labels.len(), 30);
    assert_eq!(fit.inertia, 0.0);

    let mut rng = Rng::new(2);
    let centres = random_centres(6, 4, 4.0, &mut rng);
    let (data, truth) = blobs(&centres, 500, 0.1, &mut rng);
    let cfg = KMeansConfig {
        subsample: Some(300),
        ..KMeansConfig::new(6, 5)
    };
    let fit = kmeans(&data, 4, &cfg).unwrap();
    assert_eq!(fit.labels.len(), truth.len());
    assert_eq!(adjusted_rand_index(&truth, &fit.labels).unwrap(), 1.0);
    let too_small = KMeansConfig {
        subsample: Some(3),
        ..KMeansConfig::new(6, 5)
    };
    assert!(kmeans(&data, 4, &too_small).is_err());
}

/// Timing of the thesis-sized problem; run with
/// `cargo test --release --test metrics_api -- --ignored --nocapture kmeans_timing`.
#[test]
#[ignore]
fn kmeans_timing() {
    let (n, d, k) = (65536usize, 32usize, 50usize);
    let mut rng = Rng::new(1);
    // Unit vectors around 64 directions, like cosine-normalised pixel embeddings.
    let centres = random_centres(64, d, 1.0, &mut rng);
    let mut data = Vec::with_capacity(n * d);
    for i in 0..n {
        let row: Vec<f64> = centres[i % 64].iter().map(|&c| c as f64 + 0.3 * rng.normal()).collect();
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        data.extend(row.iter().map(|v| (v / norm) as f32));
    }
    for cfg in [
        KMeansConfig::new(k, 0),
        KMeansConfig {
            restarts: 1,
            ..KMeansConfig::new(k, 0)
        },
        KMeansConfig {
            subsample: Some(8192),
            ..KMeansConfig::new(k, 0)
        },
    ] {
        let mut times = Vec::new();
        let mut fit = None;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            fit = Some(kmeans(&data, d, &cfg).unwrap());
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let fit = fit.unwrap();
        println!(
            "n={n} d={d} k={k} restarts={} subsample={:?}: median {:.1} ms (min {:.1}), {} iterations, inertia {:.2}, {} threads",
            cfg.restarts,
            cfg.subsample,
            times[2] * 1e3,
            times[0] * 1e3,
            fit.iterations,
            fit.inertia,
            rayon::current_num_threads()
        );
    }
}

// ---------------------------------------------------------------- eval_clusters

/// A region map of `k` vertical stripes with a 0 (ignored) border, and embeddings of dimension
/// `d` that carry a unit vector per region (plus `noise`), channel-major.
fn striped_image(h: usize, w: usize, k: usize, d: usize, noise: f64, rng: &mut Rng) -> (Vec<f32>, Vec<u16>) {
    let regions: Vec<u16> = (0..h * w)
        .map(|p| {
            let (y, x) = (p / w, p % w);
            if y == 0 || x == 0 || y == h - 1 {
                0
            } else {
                (1 + (x * k) / w) as u16
            }
        })
        .collect();
    let directions: Vec<Vec<f64>> = (0..=k)
        .map(|_| {
            let v: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.iter().map(|x| x / norm).collect()
        })
        .collect();
    let mut emb = vec![0.0f32; d * h * w];
    for p in 0..h * w {
        for c in 0..d {
            emb[c * h * w + p] = (directions[regions[p] as usize][c] + noise * rng.normal()) as f32;
        }
    }
    (emb, regions)
}

#[test]
fn eval_clusters_scores_encoded_regions_one_and_random_zero() {
    let mut rng = Rng::new(13);
    let (h, w, k, d) = (48, 60, 10, 16);
    let (emb, regions) = striped_image(h, w, k, d, 0.01, &mut rng);
    let s = eval_clusters(&emb, d, h, w, &regions, 7).unwrap();
    assert_eq!(s.k, k);
    assert_eq!(s.ari, 1.0);
    assert!((s.ami - 1.0).abs() < 1e-12, "{s:?}");

    // Embeddings unrelated to the regions: both scores are chance-corrected, so near 0.
    // For ~2800 points in 10 clusters their spread is about 1e-3; allow 0.02.
    let random: Vec<f32> = (0..d * h * w).map(|_| rng.normal() as f32).collect();
    let s = eval_clusters(&random, d, h, w, &regions, 7).unwrap();
    assert!(s.ari.abs() < 0.02 && s.ami.abs() < 0.02, "{s:?}");

    assert!(eval_clusters(&emb[1..], d, h, w, &regions, 7).is_err());
    assert!(eval_clusters(&emb, d, h, w, &vec![0; h * w], 7).is_err());
}

/// Timing of the thesis' per-slice evaluation (256 x 256 slice, d = 32, 100 regions); run with
/// `cargo test --release --test metrics_api -- --ignored --nocapture eval_clusters_timing`.
#[test]
#[ignore]
fn eval_clusters_timing() {
    let mut rng = Rng::new(5);
    let (h, w, k, d) = (256, 256, 100, 32);
    let (emb, regions) = striped_image(h, w, k, d, 0.3, &mut rng);
    let t = std::time::Instant::now();
    let s = eval_clusters(&emb, d, h, w, &regions, 1).unwrap();
    println!(
        "eval_clusters 256x256, d={d}, k={}: {:.1} ms, {s:?}",
        s.k,
        t.elapsed().as_secs_f64() * 1e3
    );
}
