#!/usr/bin/env python3
"""PyTorch reference of lrc's models and losses, with the same parameter names.

  python3 scripts/torch_reference.py --check parity.safetensors
      Recomputes, in float64 PyTorch on the CPU, every output and gradient that `lrc parity`
      wrote (U-Net, global model + InfoNCE, LRC model + local loss, combined segmentation
      model + Dice + cross-entropy, three steps of SGD / Adam / AdamW) from the same weights
      and inputs, and prints the worst relative error per tensor. Exit status 1 if any exceeds
      --tol (default 1e-4; lrc computes in f32, so ~1e-6..1e-5 is expected).

  python3 scripts/torch_reference.py --bench step|pretrain|conv|norm|lrc-loss [...]
      Times the same work in PyTorch (step: the U-Net training step of `lrc bench step`;
      pretrain --method global|local|joint: a pre-training step of `lrc pretrain`; the others:
      scripts/torch_bench.py).

Parameter names: U-Net `enc.{l}.conv{1,2}/norm{1,2}.{weight,bias}`, `dec.{l}.up` and
`dec.{l}.conv{1,2}/norm{1,2}`; global model adds `proj`; LRC model adds `embed`; the
segmentation model prefixes `global.` / `local.` and adds `head`.
"""
import argparse
import json
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBlock(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm1 = nn.InstanceNorm2d(c_out, affine=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm2 = nn.InstanceNorm2d(c_out, affine=True)

    def forward(self, x):
        x = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(x)))


class UpBlock(ConvBlock):
    def __init__(self, c_low, c):
        super().__init__(2 * c, c)
        self.up = nn.ConvTranspose2d(c_low, c, 2, stride=2)


def widths(cfg):
    return [min(cfg["base_width"] << l, cfg["max_width"]) for l in range(cfg["depth"])]


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        w = widths(cfg)
        self.enc = nn.ModuleList(
            [ConvBlock(cfg["in_channels"] if l == 0 else w[l - 1], w[l]) for l in range(cfg["depth"])]
        )

    def features(self, x):
        feats = []
        for l, block in enumerate(self.enc):
            if l > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            feats.append(x)
        return feats


class UNet(Encoder):
    def __init__(self, cfg):
        super().__init__(cfg)
        w = widths(cfg)
        self.dec = nn.ModuleDict({str(l): UpBlock(w[l + 1], w[l]) for l in reversed(range(cfg["depth"] - 1))})

    def forward(self, x):
        feats = self.features(x)
        h = feats[-1]
        for l in reversed(range(len(feats) - 1)):
            block = self.dec[str(l)]
            h = block(torch.cat([feats[l], block.up(h)], dim=1))
        return h


class GlobalModel(Encoder):
    def __init__(self, cfg, dim):
        super().__init__(cfg)
        self.proj = nn.Linear(widths(cfg)[-1], dim)

    def forward(self, x):
        return self.proj(self.features(x)[-1].mean(dim=(2, 3)))


class LocalModel(UNet):
    def __init__(self, cfg, dim):
        super().__init__(cfg)
        self.embed = nn.Conv2d(cfg["base_width"], dim, 1)

    def forward(self, x):
        return F.normalize(self.embed(super().forward(x)), dim=1)


class SegModel(nn.Module):
    def __init__(self, cfg, classes, combined=True):
        super().__init__()
        self.combined = combined
        if combined:
            setattr(self, "global", UNet(cfg))
        self.local = UNet(cfg)
        self.head = nn.Conv2d(cfg["base_width"] * (2 if combined else 1), classes, 1)

    def forward(self, x):
        f = self.local(x)
        if self.combined:
            f = torch.cat([getattr(self, "global")(x), f], dim=1)
        return self.head(f)


def infonce(q, k, queue, t):
    """MoCo: logits [q.k, q.queue^T] / t, cross-entropy with target 0."""
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.t()], dim=1) / t
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long))


def local_contrast(fq, fp, q_idx, p_idx, t, renormalize=False):
    """Thesis eq. 3.2 per image, mean over regions, then over images (all have regions here)."""
    losses = []
    for b in range(fq.shape[0]):
        d = fq.shape[1]
        eq, ep = fq[b].reshape(d, -1), fp[b].reshape(d, -1)
        mq = eq[:, q_idx[b]].mean(dim=2).t()  # [K, D]
        mp = ep[:, p_idx[b]].mean(dim=2).t()
        if renormalize:
            mq, mp = F.normalize(mq, dim=1), F.normalize(mp, dim=1)
        qq = mq @ mq.t() / t
        qp = mq @ mp.t() / t
        k = qq.shape[0]
        qq = qq.masked_fill(torch.eye(k, dtype=torch.bool), float("-inf"))
        lse = torch.logsumexp(torch.cat([qq, qp], dim=1), dim=1)
        losses.append((lse - qp.diagonal()).mean())
    return torch.stack(losses).mean()


def dice_loss(logits, targets, eps=1e-5, skip_background=False):
    p = logits.softmax(dim=1)
    g = F.one_hot(targets, logits.shape[1]).permute(0, 3, 1, 2).to(p.dtype)
    dims = (0, 2, 3)
    dice = 2 * (p * g).sum(dims) / (p.sum(dims) + g.sum(dims) + eps)
    if skip_background:
        dice = dice[1:]
    return 1 - dice.mean()


def load_params(module, tensors, prefix):
    state = {name[len(prefix) :]: t for name, t in tensors.items() if name.startswith(prefix)}
    return module.load_state_dict(state, strict=True)


class Report:
    """Worst relative error per tensor: max|ours - ref| / max(max|ref|, floor), where the floor is
    1e-3 of the largest |ref| among the tensors of the same group (e.g. all `unet/grad/*`).
    The floor matters for gradients that are exactly zero in exact arithmetic, such as the bias
    of a convolution followed by instance norm: both sides hold rounding noise there."""

    def __init__(self, tol):
        self.tol, self.items = tol, []

    def compare(self, name, ours, ref):
        ours, ref = ours.double(), ref.detach().double().reshape(ours.shape) if ours.numel() == ref.numel() else ref
        if ours.shape != ref.shape:
            raise SystemExit(f"{name}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}")
        self.items.append((name, (ours - ref).abs().max().item(), ref.abs().max().item()))

    @staticmethod
    def zero_in_exact_arithmetic(name):
        # The bias of a convolution followed by instance norm cancels in the normalisation.
        return "/grad/" in name and (name.endswith("conv1.bias") or name.endswith("conv2.bias"))

    def print(self):
        def group(name):
            return name.rsplit("/", 1)[0] if name.count("/") >= 2 else name

        group_scale = {}
        for name, _, scale in self.items:
            if not self.zero_in_exact_arithmetic(name):
                group_scale[group(name)] = max(group_scale.get(group(name), 0.0), scale)
        rows, zero_rows = [], []
        for name, diff, scale in self.items:
            if self.zero_in_exact_arithmetic(name):
                zero_rows.append((diff / group_scale[group(name)], name))
            else:
                rows.append((diff / max(scale, 1e-3 * group_scale[group(name)], 1e-30), name))
        rows.sort(reverse=True)
        zero_rows.sort(reverse=True)
        for err, name in rows[:10]:
            print(f"{err:10.3e}  {name}")
        worst = rows[0][0]
        print(f"checked {len(rows)} tensors; worst relative error {worst:.3e} (tolerance {self.tol:.0e})")
        zworst = zero_rows[0][0] if zero_rows else 0.0
        if zero_rows:
            print(
                f"{len(zero_rows)} gradients that are exactly zero in exact arithmetic (conv bias before instance "
                f"norm): largest difference {zworst:.3e} of the largest gradient of their model ({zero_rows[0][1]})"
            )
        return worst <= self.tol and zworst <= 1e-2


def check(path, tol):
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k).double() for k in f.keys()}
    torch.set_default_dtype(torch.float64)
    cfg = json.loads(meta["unet_config"])
    temp = float(meta["temperature"])
    rep = Report(tol)
    x1, x2 = t["inputs/x1"], t["inputs/x2"]

    def grads_of(model, prefix):
        for name, p in model.named_parameters():
            rep.compare(f"{prefix}/grad/{name}", t[f"{prefix}/grad/{name}"], p.grad)

    # U-Net under a fixed projection, plus the optimizers from its gradients.
    unet = UNet(cfg)
    load_params(unet, t, "unet/param/")
    x = x1.clone().requires_grad_(True)
    y = unet(x)
    loss = (y * t["inputs/projection"]).sum()
    loss.backward()
    rep.compare("unet/out", t["unet/out"], y)
    rep.compare("unet/loss", t["unet/loss"], loss.reshape(1))
    rep.compare("unet/grad_input", t["unet/grad_input"], x.grad)
    grads_of(unet, "unet")
    optimizers = {
        "sgd": lambda ps: torch.optim.SGD(ps, lr=0.03, momentum=0.9, weight_decay=1e-4),
        "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3, weight_decay=1e-4),
        "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=1e-2),
    }
    for name, make in optimizers.items():
        model = UNet(cfg)
        load_params(model, t, "unet/param/")
        for n_, p in model.named_parameters():
            p.grad = t[f"unet/grad/{n_}"].clone()
        opt = make(list(model.parameters()))
        for _ in range(3):
            opt.step()
        for n_, p in model.named_parameters():
            rep.compare(f"optim/{name}/{n_}", t[f"optim/{name}/{n_}"], p)

    # Global model + InfoNCE.
    g = GlobalModel(cfg, int(meta["proj_dim"]))
    load_params(g, t, "global/param/")
    q = g(x1)
    loss = infonce(F.normalize(q, dim=1), F.normalize(g(x2), dim=1), F.normalize(t["inputs/queue"], dim=1), temp)
    loss.backward()
    rep.compare("global/out", t["global/out"], q)
    rep.compare("global/loss", t["global/loss"], loss.reshape(1))
    grads_of(g, "global")

    # LRC model + local loss.
    m = LocalModel(cfg, int(meta["embed_dim"]))
    load_params(m, t, "local/param/")
    fq = m(x1)
    loss = local_contrast(fq, m(x2), t["inputs/q_idx"].long(), t["inputs/p_idx"].long(), temp)
    loss.backward()
    rep.compare("local/out", t["local/out"], fq)
    rep.compare("local/loss", t["local/loss"], loss.reshape(1))
    grads_of(m, "local")

    # Combined segmentation model + Dice + cross-entropy.
    s = SegModel(cfg, int(meta["classes"]))
    load_params(s, t, "seg/param/")
    logits = s(x1)
    targets = t["inputs/targets"].long()
    loss = dice_loss(logits, targets) + F.cross_entropy(logits, targets)
    loss.backward()
    rep.compare("seg/out", t["seg/out"], logits)
    rep.compare("seg/loss", t["seg/loss"], loss.reshape(1))
    grads_of(s, "seg")
    return rep.print()


def bench_device(name):
    """The device to time on, with PyTorch's defaults for convolutions stated on a GPU: TF32
    operands (as lrc's default convolutions) and the fastest algorithm for these fixed shapes
    (the warm-up steps run the search)."""
    dev = torch.device(name)
    if dev.type == "cuda":
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return dev


def median_step_seconds(step, dev, repeats):
    """Median wall time of `repeats` calls of `step`, each between two device synchronisations."""
    import statistics
    import time

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_step(argv):
    """Median time of one U-Net training step (forward, mean loss, backward, Adam) in PyTorch."""

    ap = argparse.ArgumentParser(prog="torch_reference.py --bench step")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--base", type=int, default=32)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--json", help="append a JSON line with the result to this file")
    a = ap.parse_args(argv)
    dev = bench_device(a.device)
    cfg = {"in_channels": 1, "base_width": a.base, "depth": a.depth, "max_width": 512}
    model = UNet(cfg).to(dev)
    fwd = torch.compile(model) if a.compile else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(a.batch, 1, a.size, a.size, device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = fwd(x).mean()
        loss.backward()
        opt.step()

    for i in range(a.warmup):
        if a.compile and i == 0:
            # torch.compile compiles at the first call: a failure there is reported, not fatal,
            # so that the check keeps the eager figure and its other steps.
            try:
                step()
            except Exception as e:  # noqa: BLE001 - any compiler failure
                print(f"torch {torch.__version__} {a.device} compile: torch.compile failed: "
                      f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                return 0
        else:
            step()
    med = median_step_seconds(step, dev, a.repeats)
    mode = "compile" if a.compile else "eager"
    print(
        f"torch {torch.__version__} {a.device} {mode}: U-Net step batch {a.batch} 1x{a.size}x{a.size} base {a.base} "
        f"depth {a.depth}: median {med * 1e3:.1f} ms over {a.repeats} (threads {torch.get_num_threads()})"
    )
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps({"bench": "step", "impl": f"torch-{mode}", "device": a.device, "batch": a.batch,
                                "size": a.size, "base": a.base, "depth": a.depth, "median_ms": med * 1e3}) + "\n")
    return 0


class JointModel(UNet):
    """Both heads on one U-Net (as lrc's joint pre-training): the encoder's deepest features
    pooled and projected for MoCo, the decoder's output embedded per pixel for LRC."""

    def __init__(self, cfg, proj_dim, embed_dim):
        super().__init__(cfg)
        self.proj = nn.Linear(widths(cfg)[-1], proj_dim)
        self.embed = nn.Conv2d(cfg["base_width"], embed_dim, 1)

    def global_head(self, feats):
        return self.proj(feats[-1].mean(dim=(2, 3)))

    def local_head(self, feats):
        h = feats[-1]
        for l in reversed(range(len(feats) - 1)):
            block = self.dec[str(l)]
            h = block(torch.cat([feats[l], block.up(h)], dim=1))
        return F.normalize(self.embed(h), dim=1)


def bench_pretrain(argv):
    """Median time of one pre-training step in PyTorch, the step `lrc pretrain` takes with the
    thesis's settings: MoCo (global: encoder + pooling + projection to 128, a momentum key
    encoder, a queue of 4096 keys, InfoNCE at temperature 0.07, SGD lr 0.03 momentum 0.9), LRC
    (local: the U-Net on both views, 1x1 embedding normalised per pixel, the local loss over K
    regions of N samples per view, Adam lr 1e-4) or both on one network (joint: their sum, Adam).
    The batch and the sample indices are on the device before timing (K regions on a grid, as
    `lrc bench lrc-loss` draws them): no data loading and no loss read back, which `lrc
    pretrain`'s own figures include."""
    import copy
    import os

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_bench

    ap = argparse.ArgumentParser(prog="torch_reference.py --bench pretrain")
    ap.add_argument("--method", choices=["global", "local", "joint"], required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--base", type=int, default=32)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--regions", type=int, default=64, help="K regions per image (local, joint)")
    ap.add_argument("--samples", type=int, default=32, help="N samples per region and view")
    ap.add_argument("--queue", type=int, default=4096)
    ap.add_argument("--proj", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", help="append a JSON line with the result to this file")
    a = ap.parse_args(argv)
    dev = bench_device(a.device)
    torch.manual_seed(0)
    cfg = {"in_channels": 1, "base_width": a.base, "depth": a.depth, "max_width": 512}
    t, momentum = 0.07, 0.999
    uses_global = a.method in ("global", "joint")
    uses_local = a.method in ("local", "joint")
    if a.method == "global":
        model = GlobalModel(cfg, a.proj).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    elif a.method == "local":
        model = LocalModel(cfg, a.base).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    else:
        model = JointModel(cfg, a.proj, a.base).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    x = torch.rand(a.batch, 1, a.size, a.size, device=dev)
    x_pos = torch.rand(a.batch, 1, a.size, a.size, device=dev)
    if uses_global:
        key = copy.deepcopy(model).requires_grad_(False)
        key_params, query_params = list(key.parameters()), list(model.parameters())
        queue = F.normalize(torch.randn(a.queue, a.proj, device=dev), dim=1)
        ptr = [0]
    if uses_local:
        case = {"regions": a.regions, "size": a.size, "samples": a.samples, "batch": a.batch}
        q_idx, p_idx = (i.to(dev) for i in torch_bench.grid_samples(torch, case, torch.Generator().manual_seed(0)))
    labels = torch.zeros(a.batch, dtype=torch.long, device=dev)

    def global_loss(q, k):
        q = F.normalize(q, dim=1)
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.t()], dim=1) / t
        return F.cross_entropy(logits, labels)

    def keys():
        # The key encoder moves toward the query encoder before it encodes (as lrc and MoCo).
        with torch.no_grad():
            torch._foreach_mul_(key_params, momentum)
            torch._foreach_add_(key_params, query_params, alpha=1 - momentum)
            k = key(x_pos) if a.method == "global" else key.global_head(key.features(x_pos))
            return F.normalize(k, dim=1)

    def step():
        k = keys() if uses_global else None
        opt.zero_grad(set_to_none=True)
        if a.method == "global":
            loss = global_loss(model(x), k)
        elif a.method == "local":
            loss = torch_bench.lrc_loss(torch, model(x), model(x_pos), q_idx, p_idx, t, False)
        else:
            feats = model.features(x)
            fq = model.local_head(feats)
            fp = model.local_head(model.features(x_pos))
            loss = global_loss(model.global_head(feats), k) + torch_bench.lrc_loss(
                torch, fq, fp, q_idx, p_idx, t, False
            )
        loss.backward()
        opt.step()
        if uses_global:
            with torch.no_grad():
                queue[ptr[0] : ptr[0] + a.batch] = k
            ptr[0] = (ptr[0] + a.batch) % a.queue

    for _ in range(a.warmup):
        step()
    med = median_step_seconds(step, dev, a.repeats)
    print(
        f"torch {torch.__version__} {a.device} eager: {a.method} pre-training step batch {a.batch} "
        f"1x{a.size}x{a.size} base {a.base} depth {a.depth}: median {med * 1e3:.1f} ms over {a.repeats}"
    )
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps({"bench": "pretrain", "impl": "torch-eager", "method": a.method, "device": a.device,
                                "batch": a.batch, "size": a.size, "base": a.base, "depth": a.depth,
                                "regions": a.regions if uses_local else None, "samples": a.samples,
                                "queue": a.queue, "median_ms": med * 1e3}) + "\n")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", metavar="FILE", help="safetensors file written by `lrc parity`")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--bench", choices=["step", "pretrain", "conv", "norm", "lrc-loss"],
                    help="time PyTorch (step, pretrain: here; the others: torch_bench.py)")
    args, rest = ap.parse_known_args()
    if args.check:
        sys.exit(0 if check(args.check, args.tol) else 1)
    if args.bench == "step":
        sys.exit(bench_step(rest))
    if args.bench == "pretrain":
        sys.exit(bench_pretrain(rest))
    if args.bench:
        import os

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import torch_bench

        sys.exit(torch_bench.main(["--bench", args.bench] + rest))
    ap.print_help()


if __name__ == "__main__":
    main()
