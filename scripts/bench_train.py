"""Training-speed benchmark, every ratio measured side by side in one run.

1. KT + EMA step time / CE step time (ResNet-32, batch 128, 3×32×32): target <= 1.10.
2. Ray Train 1-worker epoch throughput / a plain PyTorch loop on the same data: target >= 0.95.
3. Ray Train 2-worker / 1-worker throughput.

    python scripts/bench_train.py                      # CIFAR-10-LT from $LTRAY_DATA_DIR
    python scripts/bench_train.py --data digits-lt     # offline, tiny (ratios only roughly)

Throughputs are train-phase images/s (evaluation excluded) as the loop reports them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ltray.config import load_config
from ltray.data import make_loader, prepare_data
from ltray.models import build_backbone, build_network
from ltray.train.methods import StandardMethod, StepContext


def step_times(steps: int, batch: int, threads: int) -> tuple[float, float]:
    """Median seconds per optimiser step: (CE only, KT + EMA memory), interleaved blocks."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg_kt = load_config(None, ["model.backbone=resnet32"])
    cfg_ce = load_config(
        None, ["model.backbone=resnet32", "kt.enabled=false", "memory.enabled=false"]
    )
    nets, methods, opts = {}, {}, {}
    for name, cfg, method in (
        ("ce", cfg_ce, StandardMethod(kt=False)),
        ("kt", cfg_kt, StandardMethod(kt=True)),
    ):
        net = build_network(cfg, num_classes=10, in_channels=3, small_input=True)
        if net.memory is not None:  # after the init epoch: the teacher and EMA are live
            net.memory.set_from_sums(torch.rand(10, net.feat_dim), torch.ones(10))
        nets[name], methods[name] = (net, cfg), method
        opts[name] = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    counts = torch.linspace(5000, 50, 10)
    groups = torch.zeros(10, dtype=torch.long)
    times: dict[str, list[float]] = {"ce": [], "kt": []}
    for block in range(2 * steps):
        name = "ce" if block % 2 == 0 else "kt"
        (net, cfg), method, opt = nets[name], methods[name], opts[name]
        fwd = method.wrap(net, cfg)
        sc = StepContext(cfg, counts, groups, 1, torch.Generator().manual_seed(block))
        t0 = time.perf_counter()
        res = method.loss(net, fwd, x, y, sc)
        opt.zero_grad()
        res.loss.backward()
        opt.step()
        if net.memory is not None:
            net.memory.step(res.out.features.detach(), res.memory_labels, all_reduce=False)
        if block >= 2:  # skip one warm-up step of each
            times[name].append(time.perf_counter() - t0)
    return statistics.median(times["ce"]), statistics.median(times["kt"])


def plain_loop_throughput(data_args: list[str], threads: int, epochs: int) -> float:
    """A bare PyTorch loop: ltray's loader and ResNet-32, CE, SGD; train-phase images/s."""
    torch.set_num_threads(threads)
    cfg = load_config(None, data_args)
    data = prepare_data(cfg.data)
    loader = make_loader(data, "train", batch_size=cfg.data.batch_size, augment=True, seed=0)
    model = torch.nn.Sequential(
        build_backbone("resnet32", in_channels=data.in_channels, small_input=True),
        torch.nn.Linear(64, data.num_classes),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    seen, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(y)
    return seen / (time.perf_counter() - t0)


def ray_throughput(data_args: list[str], workers: int, threads: int, epochs: int) -> float:
    """`ltray train` through a Ray Train TorchTrainer, CE only (same work as the plain loop)."""
    from ltray.train.driver import train

    cfg = load_config(
        None,
        data_args
        + [
            "train.method=ce",
            "kt.enabled=false",
            "memory.enabled=false",
            f"train.epochs={epochs}",
            f"scaling.num_workers={workers}",
            f"train.threads={threads}",
            f"scaling.cpus_per_worker={threads}",
        ],
    )
    out = Path(tempfile.mkdtemp(prefix="bench-train-")) / "run"
    run_dir, _ = train(cfg, out=out)
    rec = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # Train-phase images/s over all epochs (images / summed epoch train time).
    images = sum(r["images_per_s"] * r["epoch_time_s"] for r in rec)
    return images / sum(r["epoch_time_s"] for r in rec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="cifar10-lt", choices=["cifar10-lt", "digits-lt"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rho", type=float, default=100)
    ap.add_argument("--epochs", type=int, default=1, help="epochs per throughput run")
    ap.add_argument("--skip-throughput", action="store_true", help="only the step-time ratio")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.data == "cifar10-lt":
        root = Path(os.environ.get("LTRAY_DATA_DIR", "../shared/data")) / "cifar10"
        data_args = [
            "data.name=cifar10-lt",
            f"data.root={root}",
            f"data.imbalance_ratio={args.rho}",
            "data.batch_size=128",
            "model.backbone=resnet32",
        ]
    else:
        data_args = []  # the embedded default: digits-LT, batch 32
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, data {args.data}", flush=True)

    ce, kt = step_times(args.steps, 128, threads=2)
    print(
        f"[1] step time, ResNet-32, batch 128, 2 threads: CE {1000 * ce:.0f} ms, "
        f"KT+EMA {1000 * kt:.0f} ms, ratio {kt / ce:.3f} (target <= 1.10)",
        flush=True,
    )

    if args.skip_throughput:
        return
    plain = plain_loop_throughput(data_args, threads=1, epochs=args.epochs)
    ray1 = ray_throughput(data_args, workers=1, threads=1, epochs=args.epochs)
    ray2 = ray_throughput(data_args, workers=2, threads=1, epochs=args.epochs)
    print(
        f"[2] 1 thread/worker: plain loop {plain:.0f} img/s, Ray Train 1 worker "
        f"{ray1:.0f} img/s, ratio {ray1 / plain:.3f} (target >= 0.95)"
    )
    print(
        f"[3] Ray Train 2 workers {ray2:.0f} img/s / 1 worker {ray1:.0f} img/s = {ray2 / ray1:.2f}x"
    )


if __name__ == "__main__":
    main()
