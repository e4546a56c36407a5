"""PyTorch timings of what `lrc bench conv`, `lrc bench norm` and `lrc bench lrc-loss` time, for comparison.

--bench conv: the convolutions (cuDNN). Same layers, same passes (forward, backward-data,
backward-weight), same statistics (median of warm repeats timed with CUDA events, TFLOP/s from
2 x multiply-adds), same table and JSON-lines fields, with "engine": "torch", at two operand
precisions (--precisions, default both), each the reference of the lrc version at that precision:
  tf32  "algo": "cudnn-tf32": FP32 tensors with TF32 allowed in cuDNN and matmuls (tf32-mma);
  bf16  "algo": "cudnn-bf16": the same convolutions on BF16 copies of the tensors, as
        torch.autocast hands them to cuDNN: BF16 operands and outputs, FP32 accumulation
        (bf16-mma). lrc's bf16-mma rounds FP32 tensors as it stages them and writes FP32, so
        cuDNN moves half the bytes: a strict reference where a layer is memory-bound.
The casts are made once, outside the timed calls.

--bench norm: torch.nn.functional.instance_norm (affine, eps 1e-5) followed by relu, forward and
backward (autograd from the gradient of the ReLU output to x, weight and bias), one shape per
U-Net level, as `lrc bench norm`; GB/s counts one read of each input and one write of each
output (8 bytes per value forward, 12 backward), the "eff GB/s" of lrc's table.

    python3 scripts/torch_bench.py --bench conv|norm [--batch 16 --size 256 --base 32 --depth 5
        --repeats 20 --warmup 3 --precisions tf32,bf16 --json torch-bench-conv.jsonl]

--bench lrc-loss: the LRC local loss written plainly (gather / mean / bmm / logsumexp, autograd
for the backward pass), on the cases of `lrc bench lrc-loss` (src/cli/bench/lrc_loss.rs): every
D x K, raw embeddings normalised per sampled pixel inside the loss or unit ones, passes forward
and forward_backward, median of warm repeats timed with CUDA events and the peak of CUDA memory
beyond the two embedding maps; same table and JSON-lines fields. Before timing, the loss and its
gradients are checked in float64 against `local_contrast` of scripts/torch_reference.py, which
`lrc parity` checks against the CPU twin. Matmuls run in full FP32 (no TF32), as lrc's kernels.
--dtypes (default f32,bf16, as `lrc bench lrc-loss --dtype all`) picks the embedding type, one
row each ("dtype" in the JSON lines): bf16 embeddings (leaf tensors, cast once outside the timed
calls) are gathered in BF16 and upcast to FP32 right after the gather, as a PyTorch user keeping
the loss's precision writes it (an all-BF16 loss would round the logits a.b / t to 8 bits, about
0.05 at t = 0.07: not the computation lrc does); their gradients come back in BF16 (autograd
gives a leaf its own dtype), where lrc's are FP32.

    python3 scripts/torch_bench.py --bench lrc-loss [--batch 16 --size 256 --dims 32,64
        --regions 64,256 --samples 32 --repeats 20 --warmup 3 --dtypes f32,bf16
        --json torch-bench-lrc-loss.jsonl]

`bench_conv(args)`, `bench_norm(args)` and `bench_lrc_loss(args)` take the parsed arguments (any
missing one gets its default), so that scripts/torch_reference.py can dispatch `--bench ...`
here; `add_conv_args(parser)` (conv, norm) and `add_lrc_loss_args(parser)` add them.
"""

import argparse
import json
import statistics
import sys
import time

DEFAULTS = {
    "batch": 16,
    "size": 256,
    "base": 32,
    "depth": 5,
    "in_channels": 1,
    "classes": 14,
    "repeats": 20,
    "warmup": 3,
    "json": None,
    "device": "cuda",
    "list": False,
    "precisions": "tf32,bf16",
}

PASSES = ("forward", "backward_data", "backward_weight")

# The operand precisions of --bench conv and the "algo" each is reported as (on the GPU).
CONV_PRECISIONS = {"tf32": "cudnn-tf32", "bf16": "cudnn-bf16"}


def add_conv_args(parser):
    """Adds the options of `lrc bench conv` to an argparse parser."""
    parser.add_argument("--batch", type=int, default=DEFAULTS["batch"], help="images per batch")
    parser.add_argument("--size", type=int, default=DEFAULTS["size"], help="height and width of the slices")
    parser.add_argument("--base", type=int, default=DEFAULTS["base"], help="channels of the first level")
    parser.add_argument("--depth", type=int, default=DEFAULTS["depth"], help="levels, bottleneck included")
    parser.add_argument("--in-channels", type=int, default=DEFAULTS["in_channels"])
    parser.add_argument("--classes", type=int, default=DEFAULTS["classes"])
    parser.add_argument("--repeats", type=int, default=DEFAULTS["repeats"], help="timed runs per pass")
    parser.add_argument("--warmup", type=int, default=DEFAULTS["warmup"], help="untimed runs before them")
    parser.add_argument(
        "--json", default=None, help="where to write the JSON lines (default torch-bench-<bench>.jsonl)"
    )
    parser.add_argument("--device", default=DEFAULTS["device"], help="cuda (timed with events) or cpu")
    parser.add_argument("--list", action="store_true", help="print the convolutions and exit")
    parser.add_argument(
        "--precisions",
        default=DEFAULTS["precisions"],
        help="conv: operand precisions to time, comma-separated: tf32 (FP32 tensors, TF32 allowed), bf16",
    )


def conv_precisions(text):
    """The precisions of --precisions, in the order given; raises ValueError for others."""
    names = [p.strip() for p in str(text).split(",") if p.strip()]
    unknown = [p for p in names if p not in CONV_PRECISIONS]
    if not names or unknown:
        raise ValueError(f"--precisions takes a comma-separated subset of {', '.join(CONV_PRECISIONS)}")
    return list(dict.fromkeys(names))


def unet_convs(batch, size, base, depth, in_channels, classes):
    """The convolutions of the U-Net, named and ordered as in `lrc bench conv` (src/cli/bench.rs)."""
    if min(batch, base, depth, in_channels, classes) <= 0:
        raise ValueError("batch, base, depth, in-channels and classes must be positive")
    down = 1 << (depth - 1)
    if size < down or size % down:
        raise ValueError(f"size {size} must be a positive multiple of 2^(depth-1) = 2^{depth - 1}")

    def conv(name, c_in, c_out, s, k):
        return dict(name=name, kind="conv", n=batch, c_in=c_in, h=s, w=s, c_out=c_out, k=k, stride=1, pad=k // 2)

    layers = []
    for level in range(depth):
        s, c = size >> level, base << level
        c_in = in_channels if level == 0 else c // 2
        layers.append(conv(f"enc{level + 1}.conv1", c_in, c, s, 3))
        layers.append(conv(f"enc{level + 1}.conv2", c, c, s, 3))
    for level in reversed(range(depth - 1)):
        s, c = size >> level, base << level
        layers.append(
            dict(
                name=f"dec{level + 1}.up",
                kind="conv_transpose",
                n=batch,
                c_in=2 * c,
                h=s // 2,
                w=s // 2,
                c_out=c,
                k=2,
                stride=2,
                pad=0,
            )
        )
        layers.append(conv(f"dec{level + 1}.conv1", 2 * c, c, s, 3))
        layers.append(conv(f"dec{level + 1}.conv2", c, c, s, 3))
    layers.append(conv("head", base, classes, size, 1))
    for layer in layers:
        if layer["kind"] == "conv":
            layer["h_out"] = (layer["h"] + 2 * layer["pad"] - layer["k"]) // layer["stride"] + 1
            layer["w_out"] = (layer["w"] + 2 * layer["pad"] - layer["k"]) // layer["stride"] + 1
            layer["macs"] = layer["n"] * layer["c_out"] * layer["h_out"] * layer["w_out"] * layer["c_in"] * layer["k"] ** 2
        else:
            layer["h_out"] = (layer["h"] - 1) * layer["stride"] + layer["k"] - 2 * layer["pad"]
            layer["w_out"] = (layer["w"] - 1) * layer["stride"] + layer["k"] - 2 * layer["pad"]
            layer["macs"] = layer["n"] * layer["c_in"] * layer["h"] * layer["w"] * layer["c_out"] * layer["k"] ** 2
    return layers


def _pass_fn(torch, layer, pass_name, x, w, b, dy):
    """A closure running one pass of one layer."""
    F = torch.nn.functional
    s, p = layer["stride"], layer["pad"]
    transposed = layer["kind"] == "conv_transpose"
    if pass_name == "forward":
        if transposed:
            return lambda: F.conv_transpose2d(x, w, b, stride=s, padding=p)
        return lambda: F.conv2d(x, w, b, stride=s, padding=p)
    mask = [True, False, False] if pass_name == "backward_data" else [False, True, True]
    return lambda: torch.ops.aten.convolution_backward(
        dy, x, w, [layer["c_out"]], [s, s], [p, p], [1, 1], transposed, [0, 0], 1, mask
    )


def _time(torch, fn, warmup, repeats, on_cuda):
    """Milliseconds of each timed run."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if on_cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def bench_conv(args):
    """Times every layer and pass; prints a table, writes JSON lines, returns the result dicts."""
    opt = {k: getattr(args, k, v) for k, v in DEFAULTS.items()}
    opt["json"] = opt["json"] or "torch-bench-conv.jsonl"
    layers = unet_convs(opt["batch"], opt["size"], opt["base"], opt["depth"], opt["in_channels"], opt["classes"])
    if opt["list"]:
        for layer in layers:
            dims = [layer[k] for k in ("n", "c_in", "h", "w", "c_out")] + [layer["k"], layer["k"]]
            dims += [layer[k] for k in ("stride", "pad", "h_out", "w_out")]
            print(f"{layer['name']:<12} {layer['kind']:<14} {dims}")
        return []
    if opt["repeats"] < 1:
        raise ValueError("--repeats must be at least 1")
    precisions = conv_precisions(opt["precisions"])

    import torch

    on_cuda = opt["device"] == "cuda"
    if on_cuda and not torch.cuda.is_available():
        raise RuntimeError("PyTorch sees no CUDA GPU (use --device cpu for a functional run)")
    device = torch.device(opt["device"])
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    device_name = torch.cuda.get_device_name(device) if on_cuda else "cpu"
    generator = torch.Generator(device="cpu").manual_seed(0xC0FFEE)

    def uniform(*shape):
        return (torch.rand(*shape, generator=generator) * 2 - 1).to(device=device, dtype=torch.float32)

    print(
        f"{device_name} (torch {torch.__version__}, {'cuDNN' if on_cuda else 'CPU'} with "
        f"{' and '.join(p.upper() for p in precisions)} "
        f"operands), batch {opt['batch']} size {opt['size']} base {opt['base']} depth {opt['depth']}, "
        f"median of {opt['repeats']} runs"
    )
    algos = {p: CONV_PRECISIONS[p] if on_cuda else f"torch-cpu-{p}" for p in precisions}
    print(f"{'layer':<12} {'pass':<15} {'shape':<22} {'algo':<10} {'ms':>10} {'TFLOP/s':>9}")
    results = []
    totals = dict.fromkeys(precisions, 0.0)
    with torch.no_grad(), open(opt["json"], "w") as out:
        for layer in layers:
            n, c_in, h, w_, c_out, k = (layer[key] for key in ("n", "c_in", "h", "w", "c_out", "k"))
            x = uniform(n, c_in, h, w_)
            if layer["kind"] == "conv":
                weight = uniform(c_out, c_in, k, k)
            else:
                weight = uniform(c_in, c_out, k, k)
            bias = uniform(c_out)
            dy = uniform(n, c_out, layer["h_out"], layer["w_out"])
            fp32 = (x, weight, bias, dy)
            operands = {p: fp32 if p == "tf32" else tuple(t.to(torch.bfloat16) for t in fp32) for p in precisions}
            shape = f"{n}x{c_in}x{h}x{w_}>{c_out} k{k}"
            for pass_name, precision in ((a, b) for a in PASSES for b in precisions):
                algo = algos[precision]
                fn = _pass_fn(torch, layer, pass_name, *operands[precision])
                times = _time(torch, fn, opt["warmup"], opt["repeats"], on_cuda)
                ms = statistics.median(times)
                totals[precision] += ms
                flop = 2.0 * layer["macs"]
                tflops = flop / (ms * 1e-3) / 1e12
                print(f"{layer['name']:<12} {pass_name:<15} {shape:<22} {algo:<10} {ms:>10.4f} {tflops:>9.2f}")
                record = {
                    "bench": "conv",
                    "engine": "torch",
                    "device": device_name,
                    "layer": layer["name"],
                    "kind": layer["kind"],
                    "pass": pass_name,
                    "algo": algo,
                    "precision": precision,
                    "n": n,
                    "c_in": c_in,
                    "h": h,
                    "w": w_,
                    "c_out": c_out,
                    "kh": k,
                    "kw": k,
                    "stride": layer["stride"],
                    "pad": layer["pad"],
                    "h_out": layer["h_out"],
                    "w_out": layer["w_out"],
                    "gflop": flop / 1e9,
                    "median_ms": ms,
                    "min_ms": min(times),
                    "tflops": tflops,
                    "repeats": opt["repeats"],
                }
                out.write(json.dumps(record) + "\n")
                results.append(record)
    for precision, total in totals.items():
        print(f"total {algos[precision]:<10} {total:>10.3f} ms")
    print(f"JSON lines written to {opt['json']}")
    return results


def unet_norms(batch, size, base, depth):
    """The instance-norm shapes of the U-Net, one per level, named as in `lrc bench norm`."""
    if min(batch, base, depth) <= 0:
        raise ValueError("batch, base and depth must be positive")
    down = 1 << (depth - 1)
    if size < down or size % down:
        raise ValueError(f"size {size} must be a positive multiple of 2^(depth-1) = 2^{depth - 1}")
    return [dict(name=f"level{l + 1}", n=batch, c=base << l, side=size >> l) for l in range(depth)]


def bench_norm(args):
    """Times instance norm + ReLU forward and backward per level; prints a table, writes JSON lines."""
    opt = {k: getattr(args, k, v) for k, v in DEFAULTS.items()}
    opt["json"] = opt["json"] or "torch-bench-norm.jsonl"
    layers = unet_norms(opt["batch"], opt["size"], opt["base"], opt["depth"])
    if opt["list"]:
        for layer in layers:
            print(f"{layer['name']:<8} instance_norm+relu {layer['n']}x{layer['c']}x{layer['side']}x{layer['side']}")
        return []
    if opt["repeats"] < 1:
        raise ValueError("--repeats must be at least 1")

    import torch

    F = torch.nn.functional
    on_cuda = opt["device"] == "cuda"
    if on_cuda and not torch.cuda.is_available():
        raise RuntimeError("PyTorch sees no CUDA GPU (use --device cpu for a functional run)")
    device = torch.device(opt["device"])
    device_name = torch.cuda.get_device_name(device) if on_cuda else "cpu"
    generator = torch.Generator(device="cpu").manual_seed(0xC0FFEE)

    def uniform(*shape):
        return (torch.rand(*shape, generator=generator) * 2 - 1).to(device=device, dtype=torch.float32)

    print(
        f"{device_name} (torch {torch.__version__}), batch {opt['batch']} size {opt['size']} "
        f"base {opt['base']} depth {opt['depth']}, instance norm + ReLU, median of {opt['repeats']} runs"
    )
    algo = "torch-eager" if on_cuda else "torch-cpu"
    print(f"{'layer':<8} {'pass':<9} {'shape':<18} {'algo':<14} {'ms':>10} {'eff GB/s':>9}")
    results = []
    total = 0.0
    with open(opt["json"], "w") as out:
        for layer in layers:
            n, c, side = layer["n"], layer["c"], layer["side"]
            x = uniform(n, c, side, side).requires_grad_(True)
            weight = uniform(c).requires_grad_(True)
            bias = uniform(c).requires_grad_(True)
            dy = uniform(n, c, side, side)
            shape = f"{n}x{c}x{side}x{side}"

            def forward():
                return F.relu(F.instance_norm(x, weight=weight, bias=bias, eps=1e-5))

            y = forward()
            passes = {
                "forward": lambda: forward().detach_(),
                "backward": lambda: torch.autograd.grad(y, (x, weight, bias), dy, retain_graph=True),
            }
            values = 4.0 * n * c * side * side
            for pass_name, fn in passes.items():
                if pass_name == "forward":
                    with torch.no_grad():
                        times = _time(torch, fn, opt["warmup"], opt["repeats"], on_cuda)
                else:
                    times = _time(torch, fn, opt["warmup"], opt["repeats"], on_cuda)
                ms = statistics.median(times)
                total += ms
                min_bytes = values * (2.0 if pass_name == "forward" else 3.0)
                eff_gbps = min_bytes / (ms * 1e-3) / 1e9
                print(f"{layer['name']:<8} {pass_name:<9} {shape:<18} {algo:<14} {ms:>10.4f} {eff_gbps:>9.1f}")
                record = {
                    "bench": "norm",
                    "engine": "torch",
                    "device": device_name,
                    "layer": layer["name"],
                    "pass": pass_name,
                    "algo": algo,
                    "act": "relu",
                    "n": n,
                    "c": c,
                    "h": side,
                    "w": side,
                    "min_bytes": min_bytes,
                    "median_ms": ms,
                    "min_ms": min(times),
                    "eff_gbps": eff_gbps,
                    "repeats": opt["repeats"],
                }
                out.write(json.dumps(record) + "\n")
                results.append(record)
            del y
    print(f"total {algo:<10} {total:>10.3f} ms")
    print(f"JSON lines written to {opt['json']}")
    return results


LRC_DEFAULTS = {
    "batch": 16,
    "size": 256,
    "dims": "32,64",
    "regions": "64,256",
    "samples": 32,
    "temperature": 0.07,
    "repeats": 20,
    "warmup": 3,
    "json": "torch-bench-lrc-loss.jsonl",
    "device": "cuda",
    "list": False,
    "dtypes": "f32,bf16",
}

LRC_PASSES = ("forward", "forward_backward")
# The embedding types of --dtypes, by the names `lrc bench lrc-loss --dtype` uses.
LRC_DTYPES = ("f32", "bf16")
LRC_PIXELS = ("raw", "unit")


def add_lrc_loss_args(parser):
    """Adds the options of `lrc bench lrc-loss` to an argparse parser."""
    d = LRC_DEFAULTS
    parser.add_argument("--batch", type=int, default=d["batch"], help="images per batch")
    parser.add_argument("--size", type=int, default=d["size"], help="height and width of the embedding maps")
    parser.add_argument("--dims", default=d["dims"], help="embedding channels D, comma-separated")
    parser.add_argument("--regions", default=d["regions"], help="regions per image K, comma-separated")
    parser.add_argument("--samples", type=int, default=d["samples"], help="samples per region and view N")
    parser.add_argument("--temperature", type=float, default=d["temperature"])
    parser.add_argument("--repeats", type=int, default=d["repeats"], help="timed runs per case and pass")
    parser.add_argument("--warmup", type=int, default=d["warmup"], help="untimed runs before them")
    parser.add_argument("--json", default=d["json"], help="where to write the JSON lines")
    parser.add_argument("--device", default=d["device"], help="cuda (timed with events) or cpu")
    parser.add_argument("--list", action="store_true", help="print the cases and exit")
    parser.add_argument("--dtypes", default=d["dtypes"], help="embedding types, comma-separated: f32, bf16")


def lrc_dtypes(text):
    """The embedding types of --dtypes, in the order given (`all` for both)."""
    names = list(LRC_DTYPES) if str(text) == "all" else [v.strip() for v in str(text).split(",") if v.strip()]
    bad = [n for n in names if n not in LRC_DTYPES]
    if bad or not names:
        raise ValueError(f"--dtypes takes f32 and bf16, comma-separated, not {text!r}")
    return names


def _ints(text):
    if isinstance(text, (list, tuple)):
        return [int(v) for v in text]
    return [int(v) for v in str(text).split(",") if v.strip()]


def _grid(k):
    """Rows and columns of the grid of region cells, as `grid` in src/cli/bench/lrc_loss.rs."""
    cols = 1
    while cols * cols < k:
        cols += 1
    return -(-k // cols), cols


def lrc_cases(opt):
    """The cases of `lrc bench lrc-loss`, in its order: D, then K, then raw / unit pixels."""
    dims, regions = _ints(opt["dims"]), _ints(opt["regions"])
    if min(opt["batch"], opt["samples"], opt["size"]) <= 0 or not dims or not regions:
        raise ValueError("batch, size and samples must be positive, and --dims and --regions non-empty")
    cases = []
    for d in dims:
        for k in regions:
            rows, cols = _grid(k)
            if d <= 0 or k <= 0 or rows > opt["size"] or cols > opt["size"]:
                raise ValueError(
                    f"D = {d} and K = {k} must be positive, and a {rows} x {cols} grid of regions must fit "
                    f"{opt['size']} x {opt['size']} pixels"
                )
            for pixels in LRC_PIXELS:
                cases.append(
                    dict(
                        name=f"d{d}-k{k}-{pixels}",
                        batch=opt["batch"],
                        d=d,
                        regions=k,
                        samples=opt["samples"],
                        size=opt["size"],
                        pixels=pixels,
                    )
                )
    return cases


def lrc_loss(torch, fq, fp, q_idx, p_idx, t, normalize_pixels, renormalize=False):
    """The local loss of the CPU twin (src/ops/local_contrast.rs) written plainly, for batches
    whose images all hold K regions of N samples: fq, fp [B, D, H, W]; q_idx, p_idx [B, K, N]
    pixel indices. With normalize_pixels, each gathered pixel embedding is scaled to unit length
    (F.normalize, eps 1e-12, as ops::normalize). Mean over regions, then over images."""
    F = torch.nn.functional
    b, d = fq.shape[:2]
    k, n = q_idx.shape[1:]

    def means(f, idx):
        flat = f.reshape(b, d, -1)
        g = torch.gather(flat, 2, idx.reshape(b, 1, k * n).expand(b, d, k * n))  # [B, D, K*N]
        if g.dtype in (torch.bfloat16, torch.float16):
            g = g.float()  # FP32 arithmetic from the gathered values on, as lrc's kernels
        if normalize_pixels:
            g = F.normalize(g, dim=1)
        return g.reshape(b, d, k, n).mean(dim=3).transpose(1, 2)  # [B, K, D]

    mq, mp = means(fq, q_idx), means(fp, p_idx)
    if renormalize:
        mq, mp = F.normalize(mq, dim=2), F.normalize(mp, dim=2)
    qq = torch.bmm(mq, mq.transpose(1, 2)) / t
    qp = torch.bmm(mq, mp.transpose(1, 2)) / t
    eye = torch.eye(k, dtype=torch.bool, device=fq.device)
    qq = qq.masked_fill(eye, float("-inf"))
    lse = torch.logsumexp(torch.cat([qq, qp], dim=2), dim=2)  # [B, K]
    return (lse - qp.diagonal(dim1=1, dim2=2)).mean(dim=1).mean()


def grid_samples(torch, case, generator):
    """Pixel indices [B, K, N] of both views: region r of an image is cell (r // cols, r % cols)
    of the grid, N pixels drawn uniformly in it per view (as grid_samples in
    src/cli/bench/lrc_loss.rs; the draws themselves differ)."""
    rows, cols = _grid(case["regions"])
    s, k, n, b = case["size"], case["regions"], case["samples"], case["batch"]
    r = torch.arange(k)
    y0, y1 = (r // cols) * s // rows, (r // cols + 1) * s // rows
    x0, x1 = (r % cols) * s // cols, (r % cols + 1) * s // cols

    def view():
        u = torch.rand(b, k, n, 2, generator=generator, dtype=torch.float64)
        y = y0[None, :, None] + (u[..., 0] * (y1 - y0)[None, :, None]).long()
        x = x0[None, :, None] + (u[..., 1] * (x1 - x0)[None, :, None]).long()
        return y * s + x

    return view(), view()


def check_lrc_loss(torch):
    """lrc_loss against torch_reference.local_contrast (the loss `lrc parity` checks) in float64:
    loss and gradients, with and without pixel normalisation and mean renormalisation. Raises
    RuntimeError if they differ."""
    import os

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_reference

    F = torch.nn.functional
    g = torch.Generator().manual_seed(7)
    b, d, h, w, k, n = 3, 5, 6, 7, 4, 3
    q_idx = torch.randint(0, h * w, (b, k, n), generator=g)
    p_idx = torch.randint(0, h * w, (b, k, n), generator=g)
    q_idx[:, :, 1] = q_idx[:, :, 0]  # duplicates accumulate
    for normalize_pixels in (False, True):
        for renormalize in (False, True):
            grads = []
            for plain in (True, False):
                gen = torch.Generator().manual_seed(11)
                fq = torch.rand(b, d, h, w, generator=gen, dtype=torch.float64) * 2 - 1
                fp = torch.rand(b, d, h, w, generator=gen, dtype=torch.float64) * 2 - 1
                fq.requires_grad_(True)
                fp.requires_grad_(True)
                if plain:
                    loss = lrc_loss(torch, fq, fp, q_idx, p_idx, 0.2, normalize_pixels, renormalize)
                else:
                    q, p = (F.normalize(fq, dim=1), F.normalize(fp, dim=1)) if normalize_pixels else (fq, fp)
                    loss = torch_reference.local_contrast(q, p, q_idx, p_idx, 0.2, renormalize)
                loss.backward()
                grads.append((loss.detach(), fq.grad, fp.grad))
            for a, r in zip(grads[0], grads[1]):
                err = (a - r).abs().max().item()
                if not err <= 1e-10 * max(1.0, r.abs().max().item()):
                    raise RuntimeError(
                        f"lrc_loss differs from torch_reference.local_contrast by {err:.3e} "
                        f"(normalize_pixels {normalize_pixels}, renormalize {renormalize})"
                    )


def bench_lrc_loss(args):
    """Times every case and pass at every embedding type; prints a table, writes JSON lines,
    returns the result dicts."""
    opt = {k: getattr(args, k, v) for k, v in LRC_DEFAULTS.items()}
    cases = lrc_cases(opt)
    dtypes = lrc_dtypes(opt["dtypes"])
    if opt["list"]:
        for c in cases:
            print(
                f"{c['name']:<16} batch {c['batch']} D {c['d']} K {c['regions']} N {c['samples']} "
                f"{c['size']}x{c['size']} {c['pixels']} pixels, {' and '.join(dtypes)}"
            )
        return []
    if opt["repeats"] < 1:
        raise ValueError("--repeats must be at least 1")

    import torch

    check_lrc_loss(torch)
    on_cuda = opt["device"] == "cuda"
    if on_cuda and not torch.cuda.is_available():
        raise RuntimeError("PyTorch sees no CUDA GPU (use --device cpu for a functional run)")
    device = torch.device(opt["device"])
    torch.backends.cuda.matmul.allow_tf32 = False
    device_name = torch.cuda.get_device_name(device) if on_cuda else "cpu"
    generator = torch.Generator(device="cpu").manual_seed(0xC0FFEE)
    t = opt["temperature"]
    print(
        f"{device_name} (torch {torch.__version__}), batch {opt['batch']}, {opt['size']}x{opt['size']} pixels, "
        f"N = {opt['samples']}, t = {t}, median of {opt['repeats']} runs"
    )
    algo = "eager"
    print(f"{'case':<16} {'pass':<17} {'dtype':<6} {'algo':<8} {'ms':>10} {'peak MiB':>10} {'input MiB':>10}")
    mib = float(1 << 20)
    results = []
    with open(opt["json"], "w") as out:
        for case in cases:
            b, d, s = case["batch"], case["d"], case["size"]
            q_idx, p_idx = (i.to(device) for i in grid_samples(torch, case, generator))
            values = []
            for _ in range(2):
                f = torch.rand(b, d, s, s, generator=generator) * 2 - 1
                if case["pixels"] == "unit":
                    f = torch.nn.functional.normalize(f, dim=1)
                values.append(f)
            normalize_pixels = case["pixels"] == "raw"
            for dtype_name in dtypes:
                dtype = torch.float32 if dtype_name == "f32" else torch.bfloat16
                fq, fp = (f.to(device=device, dtype=dtype).requires_grad_(True) for f in values)
                inputs_mib = 2 * fq.numel() * fq.element_size() / mib
                for pass_name in LRC_PASSES:

                    def fn():
                        fq.grad = None
                        fp.grad = None
                        loss = lrc_loss(torch, fq, fp, q_idx, p_idx, t, normalize_pixels)
                        if pass_name == "forward_backward":
                            loss.backward()

                    times = _time(torch, fn, opt["warmup"], opt["repeats"], on_cuda)
                    peak = None
                    if on_cuda:
                        fq.grad = None
                        fp.grad = None
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats(device)
                        before = torch.cuda.memory_allocated(device)
                        fn()
                        torch.cuda.synchronize()
                        peak = (torch.cuda.max_memory_allocated(device) - before) / mib
                    ms = statistics.median(times)
                    peak_text = f"{peak:>10.1f}" if peak is not None else f"{'-':>10}"
                    print(
                        f"{case['name']:<16} {pass_name:<17} {dtype_name:<6} {algo:<8} {ms:>10.4f} {peak_text} "
                        f"{inputs_mib:>10.1f}"
                    )
                    record = {
                        "bench": "lrc-loss",
                        "engine": "torch",
                        "device": device_name,
                        "case": case["name"],
                        "pass": pass_name,
                        "dtype": dtype_name,
                        "algo": algo,
                        "batch": b,
                        "d": d,
                        "regions": case["regions"],
                        "samples": case["samples"],
                        "h": s,
                        "w": s,
                        "pixels": case["pixels"],
                        "temperature": t,
                        "median_ms": ms,
                        "min_ms": min(times),
                        "repeats": opt["repeats"],
                        "peak_mib": peak,
                        "inputs_mib": inputs_mib,
                    }
                    out.write(json.dumps(record) + "\n")
                    results.append(record)
    print(f"JSON lines written to {opt['json']}")
    return results


BENCHES = {
    "conv": (add_conv_args, bench_conv),
    "norm": (add_conv_args, bench_norm),
    "lrc-loss": (add_lrc_loss_args, bench_lrc_loss),
}


def main(argv=None):
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--bench", choices=sorted(BENCHES))
    known, _ = first.parse_known_args(argv)
    add_args, bench = BENCHES[known.bench or "conv"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", required=True, choices=sorted(BENCHES), help="what to time")
    add_args(parser)
    args = parser.parse_args(argv)
    try:
        bench(args)
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
