"""GPU throughput of ltray, held against the independent reference loop on the same device.

Every number comes from this invocation, one job after the other (ratios are what count):

  [ref]  the independent reference loop ``../shared/reference/plain_ce_cifar10lt.py`` with
         ``REF_DEVICE=cuda`` (data on the GPU, batched crop/flip, channels_last, SGD):
         CIFAR-10-LT rho=100, ResNet-32, batch 128;
  [1]    one `ltray train` trial on the same split, model, batch and epochs (CE, GPU fast path:
         uint8 data on the device, crop/flip/normalise there, bf16 autocast, channels_last):
         train images/s / reference;
  [2]    four trials packed on the one GPU by `ltray tune` (``scaling.gpus_per_worker=0.25``,
         ``max_concurrent=4``): their summed train images/s / one trial's, and / reference;
  [3]    ResNet-10 at 224 px on synthetic data (an ImageFolder of generated JPEGs, decoded by
         ltray's file-backed loader with pinned, non-blocking copies): loader images/s (decode +
         augment + transfer) / train-step images/s (bf16, channels_last); >= 1 keeps the GPU fed.

    LTRAY_DATA_DIR=../shared/data python scripts/bench_gpu.py --json gpu.json   # ~10 min on a GPU
    python scripts/bench_gpu.py --only 3                                        # no shared data
    python scripts/bench_gpu.py --device cpu --smoke                            # checks the script

``--smoke`` runs every part at toy size (digits for [1]/[2], 64 px for [3], no reference) so the
script itself can be checked on a CPU; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import REPO, _run, cifar_args, ltray_train, reference, verdict  # noqa: E402


def _space(overrides: list[str], samples: int, gpu_share: float, use_gpu: bool) -> dict[str, Any]:
    """A train space of ``samples`` identical trials but for their seed (nothing to search)."""
    base: dict[str, Any] = {}
    for item in overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        base.setdefault(section, {})[name] = _yaml_value(value)
    scaling = {"num_workers": 1, "cpus_per_worker": 1, "use_gpu": use_gpu}
    if use_gpu:
        scaling["gpus_per_worker"] = gpu_share
    return {
        "kind": "train",
        "base": base,
        "space": {"train.seed": {"type": "int", "low": 0, "high": 10_000}},
        "search": {
            "metric": "val_linear_overall",
            "mode": "max",
            "num_samples": samples,
            "max_concurrent": samples,
            "scheduler": "none",
            "sampler": "random",
            "seed": 0,
        },
        "scaling": scaling,
    }


def _yaml_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def packed_trials(
    overrides: list[str], samples: int, gpu_share: float, use_gpu: bool, work: Path
) -> dict[str, Any]:
    """`ltray tune` with ``samples`` trials at once; summed and per-trial train images/s."""
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    space_file = work / "packed.yaml"
    space_file.write_text(yaml.safe_dump(_space(overrides, samples, gpu_share, use_gpu)))
    home = work / "home"
    env = {**os.environ, "LTRAY_HOME": str(home)}
    cmd = [sys.executable, "-m", "ltray.cli", "tune", "--space", str(space_file), "--no-mlflow"]
    wall = _run(cmd, work / "packed.log", env)
    per_trial = []
    for metrics in sorted(home.glob("sweeps/**/trials/*/metrics.jsonl")):
        rec = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        rec = [r for r in rec if "images_per_s" in r and "epoch_time_s" in r]
        seen = sum(r["images_per_s"] * r["epoch_time_s"] for r in rec)
        per_trial.append(seen / sum(r["epoch_time_s"] for r in rec))
    if len(per_trial) != samples:
        sys.exit(f"[2] expected {samples} finished trials, found {len(per_trial)}; see {work}")
    # The trials run side by side over (nearly) the same window, so their rates add up.
    return {"wall_s": wall, "per_trial": per_trial, "images_per_s": sum(per_trial)}


def _jpeg_folder(root: Path, classes: int, per_class: int, size: int) -> None:
    """train/val/test ImageFolder of smooth random JPEGs (decoding cost like real photos)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 4), ("test", 4)):
        for c in range(classes):
            d = root / split / f"class{c:02d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
                img = Image.fromarray(small).resize((size, size), Image.BILINEAR)
                img.save(d / f"{i:04d}.jpg", quality=90)


def resnet10_224(
    device: str, batch: int, steps: int, loader_workers: int, size: int, work: Path
) -> dict[str, Any]:
    """Loader images/s vs ResNet-10 train-step images/s at ``size`` px."""
    import torch
    import torch.nn.functional as F

    from ltray.config import DataConfig, load_config
    from ltray.data import make_loader, prepare_data
    from ltray.models import build_network

    dev = torch.device(device)
    root = work / "folder"
    per_class = max(batch * (steps + 2) // 10, 8)
    _jpeg_folder(root, 10, per_class, size + size // 7)  # e.g. 256 px files for 224 crops
    data = prepare_data(
        DataConfig(
            name="imagefolder",
            root=str(root),
            imbalance_ratio=1.0,
            image_size=size,
            batch_size=batch,
            val_per_class=1,
        ),
        write_splits=False,
    )
    loader = make_loader(
        data,
        "train",
        batch_size=batch,
        augment=True,
        num_workers=loader_workers,
        drop_last=True,
        device=dev,
    )
    n, t0 = 0, time.perf_counter()
    for batches, (x, y) in enumerate(loader, start=1):
        x = x.to(dev, non_blocking=True)
        n += len(y)
        if batches == 2:  # the workers' start-up is not throughput
            n, t0 = 0, time.perf_counter()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    load_ips = n / (time.perf_counter() - t0)

    cfg = load_config(None, ["model.backbone=resnet10", "kt.enabled=false"])
    net = build_network(cfg, num_classes=10, in_channels=3, small_input=False).to(dev)
    net = net.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=dev)
    amp = dev.type == "cuda" and torch.cuda.is_bf16_supported()

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(net(x).logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    step_ips = steps * batch / (time.perf_counter() - t0)
    return {"loader_images_per_s": load_ips, "step_images_per_s": step_ips, "bf16": amp}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("LTRAY_DATA_DIR", "../shared/data"))
    ap.add_argument("--reference", default=str(REPO.parent / "shared" / "reference"))
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --smoke)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of [ref], [1] and each of [2]")
    ap.add_argument("--packed", type=int, default=4, help="trials packed on the GPU in [2]")
    ap.add_argument("--steps", type=int, default=20, help="ResNet-10 steps timed in [3]")
    ap.add_argument("--batch-224", type=int, default=128, help="ResNet-10 batch in [3]")
    ap.add_argument("--loader-workers", type=int, default=8, help="decoding processes in [3]")
    ap.add_argument("--only", nargs="*", type=int, help="run only these parts (1-3)")
    ap.add_argument("--smoke", action="store_true", help="toy sizes, to check the script")
    ap.add_argument("--json", help="also write every number to this JSON file")
    args = ap.parse_args()
    parts = set(args.only or [1, 2, 3])
    use_gpu = args.device == "cuda"
    if use_gpu:
        import torch

        if not torch.cuda.is_available():
            sys.exit(
                "no CUDA device here: run on a GPU machine, or check the script with "
                "--device cpu --smoke"
            )
    out: dict[str, Any] = {"device": args.device, "smoke": args.smoke}
    work = Path(tempfile.mkdtemp(prefix="ltray-bench-gpu-"))
    print(f"work dir {work}")

    if args.smoke:
        train_args = ["train.method=ce", "train.epochs=1", "data.batch_size=32"]
    else:
        train_args = cifar_args(Path(args.data_dir, "cifar10").resolve(), args.epochs)
    device_args = [f"scaling.use_gpu={str(use_gpu).lower()}", "scaling.cpus_per_worker=1"]

    if parts & {1, 2} and not args.smoke:
        script = Path(args.reference) / "plain_ce_cifar10lt.py"
        os.environ["REF_DEVICE"] = args.device
        ref = reference(script, Path(args.data_dir, "cifar10"), args.epochs, work, threads=4)
        out["reference"] = ref
        print(
            f"[ref] reference loop, {args.device}: {ref['images_per_s']:.0f} train images/s, "
            f"wall {ref['wall_s']:.0f} s"
        )
    one = None
    if parts & {1, 2}:
        one = ltray_train([*train_args, *device_args], work / "one", work / "one.log")
        out["one_trial"] = {k: one[k] for k in ("wall_s", "images_per_s", "timing")}
        line = f"[1] ltray train, one trial: {one['images_per_s']:.0f} train images/s"
        if "reference" in out:
            r = one["images_per_s"] / out["reference"]["images_per_s"]
            out["ratio_one_vs_reference"] = r
            line += f"; / reference {r:.3f} ({verdict(r >= 0.95)}, target >= 0.95)"
        print(line)
    if 2 in parts and one is not None:
        share = 1.0 / args.packed
        packed = packed_trials(train_args, args.packed, share, use_gpu, work / "packed")
        out["packed"] = packed
        gain = packed["images_per_s"] / one["images_per_s"]
        out["ratio_packed_vs_one"] = gain
        line = (
            f"[2] {args.packed} trials packed (gpus_per_worker={share:g}): "
            f"{packed['images_per_s']:.0f} train images/s in all "
            f"({', '.join(f'{v:.0f}' for v in packed['per_trial'])}); / one trial {gain:.2f}x"
        )
        if "reference" in out:
            vs_ref = packed["images_per_s"] / out["reference"]["images_per_s"]
            line += f"; / reference {vs_ref:.2f}x"
        print(line)
    if 3 in parts:
        size, batch, steps = (64, 16, 3) if args.smoke else (224, args.batch_224, args.steps)
        workers = min(args.loader_workers, os.cpu_count() or 1)
        r10 = resnet10_224(args.device, batch, steps, workers, size, work / "r10")
        out["resnet10"] = r10
        ratio = r10["loader_images_per_s"] / r10["step_images_per_s"]
        out["ratio_loader_vs_step"] = ratio
        print(
            f"[3] ResNet-10 {size} px, batch {batch}, {workers} loader workers: loader "
            f"{r10['loader_images_per_s']:.0f} images/s, step {r10['step_images_per_s']:.0f} "
            f"images/s (bf16 {r10['bf16']}); loader / step {ratio:.2f} "
            f"({verdict(ratio >= 1.0)}, target >= 1)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
