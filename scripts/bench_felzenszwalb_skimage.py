#!/usr/bin/env python3
"""Time scikit-image's felzenszwalb on synthetic abdomen-like slices (the same caricature as
lrc::superpixel::phantom, re-drawn in numpy), for comparison with `cargo bench --bench superpixel`.

Usage: python3 scripts/bench_felzenszwalb_skimage.py [--repeats N] [--sizes 256,512] [--no-batch]
                                                       [--json FILE]
Prints, for one slice of each size, and a batch of 32 256x256 slices (sequential in one process:
skimage has no batch entry point; --no-batch leaves it out), the median wall time and the median
CPU time of the thread (robust on a shared machine), with slices/s for each. With --json, one
object per slice size is appended to FILE, for the superpixel table of scripts/gpu-check.sh.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import skimage
from skimage.segmentation import felzenszwalb

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from felzenszwalb_fixtures import ct_like_slice  # noqa: E402

SCALE, SIGMA, MIN_SIZE = 100.0, 0.8, 50  # lrc's SuperpixelConfig default


def medians(fn, repeats):
    """Median wall and thread-CPU seconds of `fn` over `repeats` runs."""
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.thread_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.thread_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


def report(what, slices, wall, cpu):
    print(f"{what}: wall {wall * 1e3:.1f} ms ({slices / wall:.1f} slices/s), cpu {cpu * 1e3:.1f} ms ({slices / cpu:.1f} slices/s)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--sizes", default="256,512", help="square slice sizes, comma-separated")
    ap.add_argument("--no-batch", action="store_true", help="leave out the batch of 32 slices")
    ap.add_argument("--json", help="append one JSON object per slice size to this file")
    args = ap.parse_args()
    sizes = [int(v) for v in args.sizes.split(",") if v.strip()]
    rng = np.random.default_rng(2026)
    print(f"skimage {skimage.__version__}, numpy {np.__version__}; scale {SCALE} sigma {SIGMA} min_size {MIN_SIZE}")
    for size in sizes:
        img = ct_like_slice(np, rng, size, size, noise_hu=15.0)
        wall, cpu = medians(lambda: felzenszwalb(img, scale=SCALE, sigma=SIGMA, min_size=MIN_SIZE), args.repeats)
        report(f"slice {size}x{size}", 1, wall, cpu)
        if args.json:
            record = {
                "bench": "superpixels-skimage",
                "size": size,
                "skimage": skimage.__version__,
                "repeats": args.repeats,
                "median_wall_ms": wall * 1e3,
                "median_cpu_ms": cpu * 1e3,
                "slices_per_s": 1.0 / wall,
            }
            with open(args.json, "a") as f:
                f.write(json.dumps(record) + "\n")
    if args.no_batch:
        return
    batch = [ct_like_slice(np, rng, 256, 256, noise_hu=15.0) for _ in range(32)]

    def run_batch():
        for img in batch:
            felzenszwalb(img, scale=SCALE, sigma=SIGMA, min_size=MIN_SIZE)

    wall, cpu = medians(run_batch, max(2, args.repeats // 3))
    report("batch 32x256x256", 32, wall, cpu)


if __name__ == "__main__":
    main()
