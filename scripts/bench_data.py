"""Is the data loader fast enough? CIFAR-10-LT train loader vs a ResNet-32 training step, on CPU.

    LTRAY_DATA_DIR=../shared/data python scripts/bench_data.py [--batches 300] [--threads 2]

Prints the loader's images/s (augment on, batch 128, num_workers 0), the images/s of a ResNet-32
forward + backward + SGD step on the same batches, and their ratio (target: loader >= 3x step).
Uses ``ltray.models.backbones.build_backbone("resnet32")`` when it exists, else a local
ResNet-32 (docs/methods.md#backbones).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ltray.config import DataConfig
from ltray.data import make_loader, prepare_data
from ltray.models.backbones import build_backbone


def build_model(num_classes: int) -> tuple[nn.Module, str]:
    backbone = build_backbone("resnet32", in_channels=3, small_input=True)
    return nn.Sequential(backbone, nn.Linear(backbone.feat_dim, num_classes)), "ltray.models"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("LTRAY_DATA_DIR", "../shared/data"))
    ap.add_argument("--batches", type=int, default=300, help="loader batches to time")
    ap.add_argument("--steps", type=int, default=10, help="training steps to time")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    data = prepare_data(
        DataConfig(
            name="cifar10-lt", root=str(Path(args.data_dir) / "cifar10"), imbalance_ratio=100
        )
    )
    print(f"prepare_data: {time.perf_counter() - t0:.1f} s, {int(data.class_counts.sum())} train")

    loader = make_loader(data, "train", batch_size=128, augment=True, num_workers=0)
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    n, epoch = 0, 0
    t0 = time.perf_counter()
    while len(batches) < args.batches:
        loader.sampler.set_epoch(epoch)
        for x, y in loader:
            batches.append((x, y))
            n += len(y)
            if len(batches) == args.batches:
                break
        epoch += 1
    load_ips = n / (time.perf_counter() - t0)

    model, origin = build_model(data.num_classes)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for x, y in batches[:3]:  # warm-up
        step(x, y)
    n = 0
    t0 = time.perf_counter()
    for x, y in batches[3 : 3 + args.steps]:
        step(x, y)
        n += len(y)
    step_ips = n / (time.perf_counter() - t0)

    print(
        f"loader (augment, batch 128, num_workers 0, {args.batches} batches): "
        f"{load_ips:,.0f} images/s"
    )
    print(
        f"ResNet-32 ({origin}) train step, CPU, {args.threads} threads, {args.steps} steps: "
        f"{step_ips:,.0f} images/s"
    )
    ratio = load_ips / step_ips
    print(f"loader / step = {ratio:.1f}x (target >= 3x): {'OK' if ratio >= 3 else 'TOO SLOW'}")


if __name__ == "__main__":
    main()
