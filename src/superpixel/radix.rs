//! A stable LSD radix sort of graph edges by their f64 weight.
//!
//! The weight is mapped to a u64 whose unsigned order is the float order (numpy's order: -0.0
//! equals 0.0 and NaN sorts last). The records are sorted by the high 32 bits of the key (sign,
//! exponent and 20 mantissa bits) with four stable passes of 8 bits, skipping passes in which all
//! keys share the digit; runs that tie on the high half, short unless the weights tie exactly,
//! are then stably sorted by the whole key. This halves the memory traffic of a full 64-bit LSD
//! sort, which is what bounds it on images of 512 x 512 and more.

/// An edge between pixels `a` and `b` with its weight as an order-preserving key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyedEdge {
    pub key: u64,
    pub a: u32,
    pub b: u32,
}

const DIGIT_BITS: u32 = 8;
const BUCKETS: usize = 1 << DIGIT_BITS;
/// Bits of the key sorted by radix passes (the high ones); the rest settle ties.
const RADIX_LOW_BIT: u32 = 32;
const PASSES: usize = ((64 - RADIX_LOW_BIT) / DIGIT_BITS) as usize;

/// Map `x` to a u64 whose unsigned order is the order of the floats; all NaNs map to the largest
/// key and both zeros to the same key.
#[inline]
pub(crate) fn f64_order_key(x: f64) -> u64 {
    if x.is_nan() {
        return u64::MAX;
    }
    let bits = if x == 0.0 { 0 } else { x.to_bits() };
    if bits >> 63 == 1 { !bits } else { bits | (1 << 63) }
}

/// The float a key came from (a NaN for the NaN key, +0.0 for zeros).
#[inline]
pub(crate) fn f64_from_order_key(key: u64) -> f64 {
    if key >> 63 == 1 {
        f64::from_bits(key & !(1 << 63))
    } else {
        f64::from_bits(!key)
    }
}

/// Sort `edges` by key, keeping the input order of equal keys. `scratch` is reused storage.
pub(crate) fn radix_sort_edges(edges: &mut Vec<KeyedEdge>, scratch: &mut Vec<KeyedEdge>) {
    let n = edges.len();
    if n < 2 {
        return;
    }
    let mut counts = [[0u32; BUCKETS]; PASSES];
    for e in edges.iter() {
        for (p, c) in counts.iter_mut().enumerate() {
            c[digit(e.key, p)] += 1;
        }
    }
    scratch.clear();
    scratch.resize(n, KeyedEdge::default());
    for (p, c) in counts.iter().enumerate() {
        if c.iter().any(|&k| k as usize == n) {
            continue; // every key has the same digit here: the pass would not move anything
        }
        let mut offsets = [0u32; BUCKETS];
        let mut running = 0u32;
        for (o, &k) in offsets.iter_mut().zip(c.iter()) {
            *o = running;
            running += k;
        }
        for e in edges.iter() {
            let d = digit(e.key, p);
            scratch[offsets[d] as usize] = *e;
            offsets[d] += 1;
        }
        std::mem::swap(edges, scratch);
    }
    // Settle runs that tie on the high half by the full key; the sort is stable, so equal keys
    // keep their input order, and a run of exactly equal keys is already sorted (linear).
    let mut start = 0;
    while start < n {
        let high = edges[start].key >> RADIX_LOW_BIT;
        let mut end = start + 1;
        while end < n && edges[end].key >> RADIX_LOW_BIT == high {
            end += 1;
        }
        if end - start > 1 {
            edges[start..end].sort_by_key(|e| e.key);
        }
        start = end;
    }
}

#[inline]
fn digit(key: u64, pass: usize) -> usize {
    ((key >> (RADIX_LOW_BIT + pass as u32 * DIGIT_BITS)) as usize) & (BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn key_order_is_float_order() {
        let xs = [
            f64::NEG_INFINITY,
            -1e300,
            -1.0,
            -1e-310,
            -0.0,
            0.0,
            1e-310,
            0.1,
            1.0,
            1e300,
            f64::INFINITY,
            f64::NAN,
        ];
        for pair in xs.windows(2) {
            let (a, b) = (f64_order_key(pair[0]), f64_order_key(pair[1]));
            if pair[0] == pair[1] {
                assert_eq!(a, b);
            } else {
                assert!(a < b, "{} !< {}", pair[0], pair[1]);
            }
        }
        for &x in &xs[..xs.len() - 1] {
            let back = f64_from_order_key(f64_order_key(x));
            assert!(back == x && back.is_sign_negative() == (x < 0.0), "{x} -> {back}");
        }
        assert!(f64_from_order_key(f64_order_key(f64::NAN)).is_nan());
    }

    #[test]
    fn sort_is_stable_and_ordered_with_many_ties() {
        let mut rng = Rng::new(5);
        for &(n, distinct) in &[
            (0usize, 1u64),
            (1, 1),
            (2, 1),
            (1000, 3),
            (50_000, 40),
            (50_000, u64::MAX),
            (20_000, 0),
        ] {
            let values: Vec<f64> = (0..n)
                .map(|_| {
                    let v = match distinct {
                        u64::MAX => rng.uniform(),
                        // Equal in the high 32 bits of the key, different in the low ones.
                        0 => 0.25 + rng.below(100) as f64 * (-45f64).exp2(),
                        _ => rng.below(distinct) as f64 / 7.0,
                    };
                    if rng.below(50) == 0 { -v } else { v }
                })
                .collect();
            let mut edges: Vec<KeyedEdge> = values
                .iter()
                .enumerate()
                .map(|(i, &v)| KeyedEdge {
                    key: f64_order_key(v),
                    a: i as u32,
                    b: (n - i) as u32,
                })
                .collect();
            let mut scratch = Vec::new();
            radix_sort_edges(&mut edges, &mut scratch);
            // Ordered by value (-0.0 == 0.0, as in numpy), equal values in input order.
            for w in edges.windows(2) {
                let (va, vb) = (values[w[0].a as usize], values[w[1].a as usize]);
                assert!(va < vb || (va == vb && w[0].a < w[1].a), "order broken at {va} {vb}");
            }
            let mut seen: Vec<u32> = edges.iter().map(|e| e.a).collect();
            seen.sort_unstable();
            assert!(
                seen.iter().enumerate().all(|(i, &a)| a as usize == i),
                "not a permutation"
            );
            assert!(
                edges.iter().all(|e| e.a + e.b == n as u32),
                "payload separated from key"
            );
        }
    }
}
