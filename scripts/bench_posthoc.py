"""Benchmark the post-hoc stage on this machine (CPU).

(a) LLW fitted on the feature cache vs the same LLW fit re-running the frozen backbone
    (ResNet-32, 2,000 random 32×32 images) every epoch. The re-run path is timed for a few epochs
    and extrapolated linearly to the full schedule (said so in the output).
(b) 1,000 evaluations of the weighted rule (argmax of w·z_l + (1−w)·z̃_d, then val accuracy) over a
    20,000 × 1,000 val cache (ImageNet-LT's val size), z̃_d precomputed once.

    python scripts/bench_posthoc.py [--threads 2] [--images 2000] [--epochs 10]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from ltray.fusion.llw import init_llw, llw_logits
from ltray.fusion.ncm import class_means, d_scale, ncm_logits
from ltray.fusion.select import class_balanced_indices, weighted_scores
from ltray.models.backbones import build_backbone


def backbone() -> tuple[nn.Module, str]:
    net = build_backbone("resnet32", in_channels=3, small_input=True)
    feats = getattr(net, "forward_features", net)
    return _Features(net, feats), "ltray.models.backbones resnet32"


class _Features(nn.Module):
    def __init__(self, net: nn.Module, fn: object) -> None:
        super().__init__()
        self.net, self.fn = net, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fn(x)  # type: ignore[operator]
        out = getattr(out, "features", out)
        return out.flatten(1) if out.dim() > 2 else out


def bench_llw(
    n_images: int, epochs: int, rerun_epochs: int, threads: int, batch: int = 512, classes: int = 10
) -> None:
    torch.manual_seed(0)
    net, what = backbone()
    net.eval()
    images = torch.randn(n_images, 3, 32, 32)
    labels = torch.randint(classes, (n_images,))
    print(f"(a) LLW, {n_images} images, {classes} classes, batch {batch}, backbone: {what}")

    t0 = time.perf_counter()
    with torch.no_grad():
        feats = torch.cat([net(images[i : i + 256]) for i in range(0, n_images, 256)])
    t_cache = time.perf_counter() - t0
    head = nn.Linear(feats.shape[1], classes).requires_grad_(False)
    memory = class_means(feats.numpy(), labels.numpy(), classes)

    def branches_of(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_l = head(h)
        return z_l, d_scale(z_l, ncm_logits(h, memory))

    def run(epochs_: int, get: object, threads: int) -> float:
        torch.set_num_threads(threads)
        p = init_llw(classes)
        opt = torch.optim.SGD(p.tensors(), lr=0.2, momentum=0.9)
        gen = torch.Generator().manual_seed(0)
        t = time.perf_counter()
        for _ in range(epochs_):
            idx = class_balanced_indices(labels, n_images, gen)
            for s in range(0, n_images, batch):
                b = idx[s : s + batch]
                z_l, z_d = get(b)  # type: ignore[operator]
                opt.zero_grad()
                F.cross_entropy(llw_logits(z_l, z_d, p), labels[b]).backward()
                opt.step()
        return (time.perf_counter() - t) / max(epochs_, 1)

    t0 = time.perf_counter()
    zl_all, zd_all = branches_of(feats)
    t_pre = time.perf_counter() - t0
    # Tiny [512, C] ops run fastest on one thread (threads only add sync overhead); the
    # backbone path keeps all threads.
    per_cached = run(epochs, lambda b: (zl_all[b], zd_all[b]), 1)

    def rerun(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return branches_of(net(images[b]))

    per_rerun = run(rerun_epochs, rerun, threads)
    cached_total = t_cache + t_pre + epochs * per_cached
    rerun_total = epochs * per_rerun
    print(
        f"    one backbone pass to build the cache: {t_cache:.2f} s; branches z_l, z̃_d: "
        f"{t_pre * 1e3:.1f} ms"
    )
    print(
        f"    per epoch   cached: {per_cached * 1e3:8.2f} ms   re-run backbone: "
        f"{per_rerun * 1e3:8.1f} ms   speed-up per epoch: {per_rerun / per_cached:,.0f}x"
    )
    print(
        f"    {epochs} epochs  cached: {epochs * per_cached:.3f} s (+ cache {t_cache:.2f} s, "
        f"once)   re-run: {rerun_total:.1f} s  [re-run EXTRAPOLATED from {rerun_epochs} measured "
        f"epoch(s) x {epochs}]"
    )
    print(
        f"    fit only: {rerun_total / (epochs * per_cached):,.0f}x faster; including the one-off "
        f"cache pass: {rerun_total / cached_total:.1f}x (the cache is shared by every method "
        "and every tuning trial)"
    )


def bench_weighted(n: int = 20_000, classes: int = 1_000, evals: int = 1_000) -> None:
    g = torch.Generator().manual_seed(0)
    z_l = torch.randn(n, classes, generator=g) * 3
    z_d_raw = torch.randn(n, classes, generator=g)
    labels = torch.arange(n) % classes
    t0 = time.perf_counter()
    z_d = d_scale(z_l, z_d_raw)
    t_scale = time.perf_counter() - t0
    ws = [i / (evals - 1) for i in range(evals)]
    t0 = time.perf_counter()
    scores = weighted_scores(z_l, z_d, labels, ws, classes)
    dt = time.perf_counter() - t0
    assert len(scores) == evals
    print(
        f"(b) weighted rule, val cache {n:,} x {classes:,}: d-scaling once {t_scale:.2f} s; "
        f"{evals:,} evaluations (argmax + val accuracy) {dt:.1f} s = {dt / evals * 1e3:.1f} ms "
        f"each (target < 60 s)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rerun-epochs", type=int, default=1)
    ap.add_argument("--skip-llw", action="store_true")
    ap.add_argument("--skip-weighted", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    if not args.skip_llw:
        bench_llw(args.images, args.epochs, args.rerun_epochs, args.threads)
        torch.set_num_threads(args.threads)
    if not args.skip_weighted:
        bench_weighted()


if __name__ == "__main__":
    main()
