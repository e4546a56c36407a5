#!/usr/bin/env python3
"""Write the Felzenszwalb fixtures of tests/fixtures/felzenszwalb/.

Each fixture is an input image and the label map that scikit-image's
`skimage.segmentation.felzenszwalb` returns for it with given (scale, sigma, min_size),
computed with two changes that make the result well defined:

1. `np.argsort` is replaced, while skimage runs, by a stable argsort. skimage sorts the edge
   weights with numpy's default (unstable) quicksort, so the order of equal weights, and with it
   the labels, depends on the numpy build and the CPU. The Rust implementation sorts stably.
2. numpy runs with its AVX-512 dispatch disabled (NPY_DISABLE_CPU_FEATURES), so that `np.exp`,
   used by scipy to build the Gaussian kernel, is the C library's `exp`. numpy's AVX-512 `exp`
   differs from it by one ulp on a few percent of arguments, which moves smoothed values by an
   ulp and can reorder nearly equal edge weights.

For every fixture the script also records whether skimage's own output, unchanged, equals the
reference: with its default quicksort (`equals_skimage_quicksort`) and with numpy's native CPU
dispatch (`equals_skimage_native_numpy`, stable sort). These flags are informational.

Usage: python3 scripts/felzenszwalb_fixtures.py [OUTDIR]   (default tests/fixtures/felzenszwalb)

Format (all little-endian, every binary file gzip-compressed):
  manifest.json   {"skimage": version, "scipy": ..., "numpy": ...,
                   "images": [{"name", "file", "dtype": "f64"|"f32"|"u8", "h", "w"}],
                   "cases": [{"image", "scale", "sigma", "min_size", "k", "labels",
                              "equals_skimage_quicksort", "equals_skimage_native_numpy"}],
                   "kernels": [{"sigma", "bits": [u64 as hex string]}],
                   "smoothed": [{"image", "sigma", "file"}]}
  images/NAME.bin.gz      h*w pixels, row-major, of the stated dtype
  labels/CASE.u32.gz      h*w u32 labels, row-major
  smoothed/NAME_S.f64.gz  h*w f64, the image after scipy's gaussian_filter (reference check)
"""

import gzip
import json
import math
import os
import subprocess
import sys
import tempfile

REFERENCE_ENV = {"NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"}

PARAMS = [
    # (scale, sigma, min_size)
    (1.0, 0.8, 20),  # skimage's defaults
    (1.0, 0.0, 0),
    (100.0, 0.5, 20),
    (100.0, 0.8, 50),
    (500.0, 0.8, 50),
    (500.0, 0.0, 0),
    (10.0, 1.5, 5),
    (50.0, 0.0, 10),
]
KERNEL_SIGMAS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 3.3, 5.0, 17.0]
SMOOTHED = [("tiny_3x5", 1.5), ("odd_37x53", 0.8), ("ct_like_noise10", 0.8)]


def make_images():
    """Deterministic test images: name -> numpy array (float64, float32 or uint8)."""
    import numpy as np
    from scipy import ndimage as ndi

    rng = np.random.default_rng(20261126)
    images = {}

    def smooth_noise(h, w, s):
        x = ndi.gaussian_filter(rng.random((h, w)), s, mode="wrap")
        return (x - x.min()) / (x.max() - x.min())

    images["smooth_noise_f64_128"] = smooth_noise(128, 128, 3.0)
    images["smooth_noise_f32_96x80"] = smooth_noise(96, 80, 2.0).astype(np.float32)
    images["quantised_8_levels_64"] = np.round(smooth_noise(64, 64, 2.5) * 7) / 7
    images["quantised_3_levels_128x112"] = np.round(smooth_noise(128, 112, 4.0) * 2) / 2

    pc = np.full((100, 120), 0.2)
    yy, xx = np.mgrid[:100, :120]
    for _ in range(12):
        cy, cx, r = rng.integers(0, 100), rng.integers(0, 120), rng.integers(5, 30)
        pc[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0])
    for _ in range(6):
        y0, x0 = rng.integers(0, 90), rng.integers(0, 110)
        pc[y0 : y0 + rng.integers(3, 40), x0 : x0 + rng.integers(3, 40)] = rng.choice([0.1, 0.6, 0.9])
    images["piecewise_constant_100x120"] = pc

    images["ct_like_noise10"] = ct_like_slice(np, rng, 128, 128, noise_hu=10.0)
    images["ct_like_noise25"] = ct_like_slice(np, rng, 128, 128, noise_hu=25.0)
    images["ct_like_112x96"] = ct_like_slice(np, rng, 112, 96, noise_hu=15.0)

    images["u8_smooth_noise_128"] = np.round(smooth_noise(128, 128, 3.0) * 255).astype(np.uint8)
    u8 = np.clip(pc * 200 + rng.normal(0, 6, pc.shape), 0, 255).astype(np.uint8)
    images["u8_piecewise_noisy_100x120"] = u8

    images["constant_20x30"] = np.full((20, 30), 0.5)
    images["checkerboard_24x24"] = ((yy[:24, :24] + xx[:24, :24]) % 2).astype(np.float64)
    images["tiny_1x1"] = np.array([[0.3]])
    images["tiny_1x17"] = rng.random((1, 17))
    images["tiny_13x1"] = rng.random((13, 1))
    images["tiny_2x2"] = np.array([[0.0, 1.0], [0.5, 0.25]])
    images["tiny_3x5"] = np.round(rng.random((3, 5)) * 3) / 3
    images["odd_37x53"] = rng.random((37, 53))
    return images


def ct_like_slice(np, rng, h, w, noise_hu):
    """A simple abdomen-like slice: HU clipped to [-1000, 1000], mapped to [0, 1], float32."""
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    cy, cx = h * 0.47, w * 0.5
    hu = np.full((h, w), -1000.0)

    def ellipse(y0, x0, ry, rx):
        return ((yy - y0) / ry) ** 2 + ((xx - x0) / rx) ** 2 < 1.0

    hu[ellipse(h * 0.9, cx, h * 0.04, w * 0.45)] = 100.0  # the table
    hu[ellipse(cy, cx, h * 0.36, w * 0.44)] = -100.0  # subcutaneous fat
    hu[ellipse(cy, cx, h * 0.32, w * 0.40)] = 40.0  # muscle and soft tissue
    hu[ellipse(cy - h * 0.05, cx - w * 0.17, h * 0.18, w * 0.17)] = 60.0  # liver
    hu[ellipse(cy - h * 0.08, cx + w * 0.22, h * 0.08, w * 0.08)] = 50.0  # spleen
    hu[ellipse(cy + h * 0.1, cx - w * 0.14, h * 0.06, w * 0.045)] = 150.0  # kidneys
    hu[ellipse(cy + h * 0.1, cx + w * 0.14, h * 0.06, w * 0.045)] = 150.0
    hu[ellipse(cy + h * 0.18, cx, h * 0.06, w * 0.06)] = 700.0  # vertebra
    hu[ellipse(cy + h * 0.06, cx + w * 0.03, h * 0.03, w * 0.03)] = 200.0  # aorta
    for _ in range(4):  # bowel gas
        gy = cy + rng.uniform(-0.1, 0.05) * h
        gx = cx + rng.uniform(-0.05, 0.2) * w
        hu[ellipse(gy, gx, rng.uniform(0.02, 0.04) * h, rng.uniform(0.02, 0.05) * w)] = -900.0
    hu += rng.normal(0.0, noise_hu, hu.shape)
    return ((np.clip(hu, -1000.0, 1000.0) + 1000.0) / 2000.0).astype(np.float32)


def case_name(image, scale, sigma, min_size):
    return f"{image}__s{scale:g}_g{sigma:g}_m{min_size}"


def run_worker(mode, workdir):
    """Compute labels for every (image, params) in this process's numpy build."""
    import numpy as np
    import scipy
    import skimage
    from scipy import ndimage as ndi
    from scipy.ndimage import _filters as ndi_filters
    from skimage.segmentation import felzenszwalb

    if mode == "reference":
        args = np.random.default_rng(0).uniform(-60.0, 0.0, 20000)
        mismatches = int((np.exp(args) != np.array([math.exp(a) for a in args])).sum())
        if mismatches:
            sys.exit(f"numpy's exp still differs from libm's on {mismatches} arguments; extend REFERENCE_ENV")

    original_argsort = np.argsort
    calls = [0]

    def stable_argsort(a, *args, **kwargs):
        calls[0] += 1
        kwargs["kind"] = "stable"
        return original_argsort(a, *args, **kwargs)

    def skimage_labels(img, scale, sigma, min_size, stable):
        if stable:
            np.argsort = stable_argsort
        try:
            before = calls[0]
            out = felzenszwalb(img, scale=scale, sigma=sigma, min_size=min_size)
            if stable and calls[0] != before + 1:
                sys.exit("the stable argsort was not used by skimage: the monkeypatch no longer works")
            return out.astype(np.uint32)
        finally:
            np.argsort = original_argsort

    data = np.load(os.path.join(workdir, "images.npz"))
    result = {}
    for name in data.files:
        img = data[name]
        for scale, sigma, min_size in PARAMS:
            key = case_name(name, scale, sigma, min_size)
            result["stable/" + key] = skimage_labels(img, scale, sigma, min_size, True)
            if mode == "reference":
                result["quick/" + key] = skimage_labels(img, scale, sigma, min_size, False)
    if mode == "reference":
        for s in KERNEL_SIGMAS:
            result[f"kernel/{s:g}"] = ndi_filters._gaussian_kernel1d(s, 0, int(4.0 * s + 0.5))
        for name, s in SMOOTHED:
            result[f"smoothed/{name}/{s:g}"] = ndi.gaussian_filter(
                data[name].astype(np.float64), s, mode="reflect", truncate=4.0
            )
        result["versions"] = np.array([skimage.__version__, scipy.__version__, np.__version__])
    np.savez(os.path.join(workdir, f"{mode}.npz"), **result)


def write_gz(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(array.tobytes())


def main():
    import numpy as np

    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join("tests", "fixtures", "felzenszwalb")
    images = make_images()
    with tempfile.TemporaryDirectory() as workdir:
        np.savez(os.path.join(workdir, "images.npz"), **images)
        for mode, extra_env in [("reference", REFERENCE_ENV), ("native", {})]:
            env = dict(os.environ)
            env.pop("NPY_DISABLE_CPU_FEATURES", None)
            env.update(extra_env)
            subprocess.run([sys.executable, __file__, "--worker", mode, workdir], check=True, env=env)
        ref = np.load(os.path.join(workdir, "reference.npz"))
        native = np.load(os.path.join(workdir, "native.npz"))

        manifest = {"skimage": str(ref["versions"][0]), "scipy": str(ref["versions"][1])}
        manifest["numpy"] = str(ref["versions"][2])
        manifest["images"], manifest["cases"], manifest["kernels"], manifest["smoothed"] = [], [], [], []
        dtype_names = {np.dtype(np.float64): "f64", np.dtype(np.float32): "f32", np.dtype(np.uint8): "u8"}
        for name, img in images.items():
            img = np.ascontiguousarray(img)
            le = img.astype(img.dtype.newbyteorder("<"))
            file = f"images/{name}.bin.gz"
            write_gz(os.path.join(outdir, file), le)
            h, w = img.shape
            manifest["images"].append({"name": name, "file": file, "dtype": dtype_names[img.dtype], "h": h, "w": w})
            for scale, sigma, min_size in PARAMS:
                key = case_name(name, scale, sigma, min_size)
                labels = ref["stable/" + key]
                file = f"labels/{key}.u32.gz"
                write_gz(os.path.join(outdir, file), labels.astype("<u4"))
                manifest["cases"].append(
                    {
                        "image": name,
                        "scale": scale,
                        "sigma": sigma,
                        "min_size": min_size,
                        "k": int(labels.max()) + 1,
                        "labels": file,
                        "equals_skimage_quicksort": bool(np.array_equal(labels, ref["quick/" + key])),
                        "equals_skimage_native_numpy": bool(np.array_equal(labels, native["stable/" + key])),
                    }
                )
        for s in KERNEL_SIGMAS:
            bits = ref[f"kernel/{s:g}"].astype("<f8").view("<u8")
            manifest["kernels"].append({"sigma": s, "bits": [f"{int(b):016x}" for b in bits]})
        for name, s in SMOOTHED:
            file = f"smoothed/{name}_{s:g}.f64.gz"
            write_gz(os.path.join(outdir, file), ref[f"smoothed/{name}/{s:g}"].astype("<f8"))
            manifest["smoothed"].append({"image": name, "sigma": s, "file": file})
    with open(os.path.join(outdir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    cases = manifest["cases"]
    print(f"{len(images)} images, {len(cases)} cases written to {outdir}")
    print(f"  equal to skimage with its default quicksort: {sum(c['equals_skimage_quicksort'] for c in cases)}")
    print(f"  equal to skimage with native numpy dispatch: {sum(c['equals_skimage_native_numpy'] for c in cases)}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        run_worker(sys.argv[2], sys.argv[3])
    else:
        main()
