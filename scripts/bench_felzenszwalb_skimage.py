#!/usr/bin/env python3
"""Time scikit-image's felzenszwalb on synthetic abdomen-like slices (the same caricature as
lrc::superpixel::phantom, re-drawn in numpy), for comparison with `cargo bench --bench superpixel`.

Usage: python3 scripts/bench_felzenszwalb_skimage.py [--repeats N]
Prints slices/s for one 256x256 slice, one 512x512 slice, and a batch of 32 256x256 slices
(sequential, one process: skimage has no batch entry point).
"""

import argparse
import os
import sys
import time

import numpy as np
import skimage
from skimage.segmentation import felzenszwalb

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from felzenszwalb_fixtures import ct_like_slice  # noqa: E402

SCALE, SIGMA, MIN_SIZE = 100.0, 0.8, 50  # lrc's SuperpixelConfig default


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    rng = np.random.default_rng(2026)
    print(f"skimage {skimage.__version__}, numpy {np.__version__}; scale {SCALE} sigma {SIGMA} min_size {MIN_SIZE}")
    for size in (256, 512):
        img = ct_like_slice(np, rng, size, size, noise_hu=15.0)
        best, median = best_of(lambda: felzenszwalb(img, scale=SCALE, sigma=SIGMA, min_size=MIN_SIZE), args.repeats)
        print(f"slice {size}x{size}: best {best * 1e3:.1f} ms, median {median * 1e3:.1f} ms, {1 / median:.1f} slices/s")
    batch = [ct_like_slice(np, rng, 256, 256, noise_hu=15.0) for _ in range(32)]

    def run_batch():
        for img in batch:
            felzenszwalb(img, scale=SCALE, sigma=SIGMA, min_size=MIN_SIZE)

    best, median = best_of(run_batch, max(2, args.repeats // 3))
    print(f"batch 32x256x256: best {best * 1e3:.1f} ms, median {median * 1e3:.1f} ms, {32 / median:.1f} slices/s")


if __name__ == "__main__":
    main()
