#!/usr/bin/env python3
"""Reference ARI/AMI values from scikit-learn for tests/metrics_api.rs.

Labelings come from SplitMix64 so the Rust test regenerates exactly the same inputs:
truth class t = next() % k_true (stored as label 3t+1, to use non-contiguous label values);
with probability keep% the predicted cluster follows the truth, (7t+3) % k_pred, otherwise it is
next() % k_pred. Prints one Rust tuple per case:
(n, k_true, k_pred, keep_percent, seed, ari, ami).

Usage: pip install scikit-learn && python3 scripts/metrics_reference.py
"""
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

MASK = (1 << 64) - 1

CASES = [
    # n, k_true, k_pred, keep %, seed
    (50, 2, 3, 0, 1),
    (50, 5, 5, 60, 2),
    (64, 40, 40, 50, 3),
    (200, 10, 8, 30, 4),
    (500, 3, 40, 0, 5),
    (777, 13, 7, 40, 6),
    (1000, 20, 20, 80, 7),
    (1500, 40, 40, 0, 8),
    (2000, 40, 35, 50, 9),
    (2000, 2, 2, 95, 10),
]


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)


def labelings(n, k_true, k_pred, keep, seed):
    rng = SplitMix64(seed)
    truth, pred = [], []
    for _ in range(n):
        t = rng.next() % k_true
        truth.append(3 * t + 1)
        if rng.next() % 100 < keep:
            pred.append((7 * t + 3) % k_pred)
        else:
            pred.append(rng.next() % k_pred)
    return truth, pred


def main():
    for n, kt, kp, keep, seed in CASES:
        truth, pred = labelings(n, kt, kp, keep, seed)
        ari = adjusted_rand_score(truth, pred)
        ami = adjusted_mutual_info_score(truth, pred)
        print(f"({n}, {kt}, {kp}, {keep}, {seed}, {ari!r}, {ami!r}),")


if __name__ == "__main__":
    main()
