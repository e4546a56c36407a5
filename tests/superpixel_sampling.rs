//! Region sampling for the Local Region Contrast loss.

use lrc::rng::Rng;
use lrc::superpixel::sampling::sample_regions;

/// A 4 x 6 query map and its positive view. Region 1 and 2 exist in both; region 3 only in the
/// query; region 4 only in the positive view; 0 is background.
const Q: [u16; 24] = [
    0, 1, 1, 1, 2, 2, //
    0, 1, 1, 3, 2, 2, //
    0, 1, 1, 3, 0, 0, //
    0, 0, 0, 0, 0, 0, //
];
const P: [u16; 24] = [
    0, 0, 1, 1, 1, 0, //
    0, 2, 1, 1, 0, 4, //
    2, 2, 2, 2, 2, 4, //
    0, 0, 0, 0, 0, 0, //
];

#[test]
fn every_sample_lies_in_its_region_and_absent_regions_are_dropped() {
    let mut rng = Rng::new(3);
    let s = sample_regions(&Q, &P, 9, None, &mut rng);
    assert_eq!(s.labels, vec![1, 2]);
    assert_eq!(s.n, 9);
    assert_eq!((s.q.len(), s.p.len()), (18, 18));
    for (k, &label) in s.labels.iter().enumerate() {
        assert!(s.q[k * 9..(k + 1) * 9].iter().all(|&i| Q[i as usize] as u32 == label));
        assert!(s.p[k * 9..(k + 1) * 9].iter().all(|&i| P[i as usize] as u32 == label));
    }
}

#[test]
fn no_common_region_gives_no_samples() {
    let q = [0u16, 1, 1, 0];
    let p = [2u16, 0, 0, 2];
    let s = sample_regions(&q, &p, 4, None, &mut Rng::new(1));
    assert_eq!(s.regions(), 0);
    assert!(s.q.is_empty() && s.p.is_empty());
    let empty = sample_regions(&[], &[], 4, None, &mut Rng::new(1));
    assert_eq!(empty.regions(), 0);
}

#[test]
fn same_seed_same_samples_other_seed_other_samples() {
    let a = sample_regions(&Q, &P, 50, None, &mut Rng::new(8));
    let b = sample_regions(&Q, &P, 50, None, &mut Rng::new(8));
    let c = sample_regions(&Q, &P, 50, None, &mut Rng::new(9));
    assert_eq!(a, b);
    assert_eq!(a.labels, c.labels);
    assert_ne!(a.q, c.q);
}

/// Each pixel of a region should be drawn equally often. The Pearson chi-square statistic summed
/// over the four (view, region) groups has 6 + 4 + 3 + 5 = 18 degrees of freedom (pixels per
/// group minus one); 42.31 is its 0.999 quantile, so a uniform sampler fails this with
/// probability 0.001 for a random seed (the seed here is fixed, so the test is deterministic).
/// A 10% excess on one pixel of the 7-pixel group adds about 29 to the expected 18, and any
/// systematic bias (e.g. never drawing the last pixel: +2857) fails by far.
#[test]
fn draws_are_uniform_within_each_region_chi_square() {
    let n = 20_000;
    let s = sample_regions(&Q, &P, n, None, &mut Rng::new(2026));
    let mut statistic = 0.0;
    let mut dof = 0;
    for (k, &label) in s.labels.iter().enumerate() {
        for (map, draws) in [(&Q, &s.q), (&P, &s.p)] {
            let pixels: Vec<usize> = (0..map.len()).filter(|&i| map[i] as u32 == label).collect();
            let expected = n as f64 / pixels.len() as f64;
            for &px in &pixels {
                let observed = draws[k * n..(k + 1) * n].iter().filter(|&&i| i as usize == px).count() as f64;
                statistic += (observed - expected).powi(2) / expected;
            }
            dof += pixels.len() - 1;
        }
    }
    assert_eq!(dof, 18);
    assert!(statistic < 42.31, "chi-square {statistic:.2} with {dof} dof");
}

#[test]
fn max_regions_keeps_a_random_sorted_subset() {
    // 30 regions of 2 pixels each, identical in both views.
    let labels: Vec<u16> = (0..60).map(|i| (i / 2 + 1) as u16).collect();
    let mut chosen = [0usize; 31];
    for seed in 0..300 {
        let s = sample_regions(&labels, &labels, 3, Some(10), &mut Rng::new(seed));
        assert_eq!(s.regions(), 10);
        assert!(s.labels.windows(2).all(|w| w[0] < w[1]), "{:?}", s.labels);
        assert_eq!(s.q.len(), 30);
        for &l in &s.labels {
            chosen[l as usize] += 1;
        }
    }
    // Each region is chosen with probability 1/3: 100 expected in 300 draws, sd 8.2; the loose
    // bounds (6 sd) only catch a subset that is not random (e.g. always the first ten).
    assert!(chosen[1..].iter().all(|&c| (50..150).contains(&c)), "{chosen:?}");
    // A cap above the count keeps everything.
    assert_eq!(
        sample_regions(&labels, &labels, 1, Some(100), &mut Rng::new(0)).regions(),
        30
    );
}
