"""A plain PyTorch CE loop on a long-tailed ImageFolder: the yardstick for `ltray train` on a
user's own folder.

No ltray code: the ResNet-32 of ``plain_resnet.py``, the images of ``ROOT/train`` and
``ROOT/test`` (``ROOT/val`` when present, else ``--val-per-class`` images per class carved out
of test with a fixed seed, the rest is test), decoded once with PIL and held in memory as uint8,
SGD with momentum. Every way a pipeline can handle such a folder differently is an option, so
the candidates of a gap can be switched one at a time:

    --size        network input: native (as decoded) or S (PIL bilinear resize at load)
    --channels    1 (gray) or 3 (converted to RGB)
    --pad         random shift: zero padding (on the uint8 image) + random crop back
    --flip        random horizontal flip
    --norm        own (per-channel mean/std of the train split), mnist (0.1307/0.3081), none
    --schedule    onecycle (torch OneCycleLR, 5% warm-up, cosine, momentum cycled 0.95-0.85)
                  | warmcos (linear warm-up over --warmup-epochs whole epochs at (e+1)/W,
                  then cosine to 0 per step, momentum 0.9: ltray's train.schedule=cosine)
    --select      last epoch, or best val linear accuracy
    --init        kaiming (kaiming_normal_ on conv and linear weights, He et al.) | torch

Reports linear Many / Medium / Few / Overall on test (a group is the mean of its classes'
accuracies, overall the mean over all classes; groups by train count: many > 100, few < 20) and
a cosine NCM over full-pass class means of the train features (eval mode, after training); one
JSON line, also written to ``--out``.

    python scripts/plain_imagefolder.py .devdata/mnist-lt --epochs 12 --seed 0 --threads 1
    python scripts/plain_imagefolder.py .devdata/mnist-lt --size native --channels 1 --pad 2
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from plain_resnet import resnet32
from torch import nn
from torch.nn import functional as F

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp"}
MNIST_STATS = ((0.1307,), (0.3081,))


def scan(split_dir: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    paths, labels = [], []
    for c, name in enumerate(classes):
        files = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in EXTENSIONS)
        paths += files
        labels += [c] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


def decode(paths: list[Path], *, channels: int, size: int | None) -> torch.Tensor:
    """uint8 [N, C, S, S]: each file converted to L or RGB, resized (bilinear) to ``size``."""
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
        out.append(a[:, :, None] if a.ndim == 2 else a)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def load(root: Path, args: argparse.Namespace) -> dict:
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    size = None if args.size == "native" else int(args.size)
    splits = {s: scan(root / s, classes) for s in ("train", "test")}
    if (root / "val").is_dir():
        splits["val"] = scan(root / "val", classes)
    else:  # carve a balanced val out of test; the split does not depend on the training seed
        paths, labels = splits["test"]
        rng = np.random.default_rng(12345)
        val_idx = np.concatenate(
            [
                rng.permutation(np.flatnonzero(labels == c))[: args.val_per_class]
                for c in range(len(classes))
            ]
        )
        rest = np.setdiff1d(np.arange(len(labels)), val_idx)
        splits["val"] = ([paths[i] for i in np.sort(val_idx)], labels[np.sort(val_idx)])
        splits["test"] = ([paths[i] for i in rest], labels[rest])
    data = {"classes": classes}
    for s, (paths, labels) in splits.items():
        data[s] = (decode(paths, channels=args.channels, size=size), torch.from_numpy(labels))
    return data


def stats(x: torch.Tensor, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std in [0, 255] units, shaped [1, C, 1, 1]."""
    c = x.shape[1]
    if norm == "own":
        f = x.double().div(255).transpose(0, 1).reshape(c, -1)
        mean, std = f.mean(1).float(), f.std(1).float()
    elif norm == "mnist":
        mean, std = torch.full((c,), MNIST_STATS[0][0]), torch.full((c,), MNIST_STATS[1][0])
    else:
        mean, std = torch.zeros(c), torch.ones(c)
    return (mean * 255).view(1, c, 1, 1), (std * 255).view(1, c, 1, 1)


def augment(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """uint8 [B, C, S, S] → shifted (zero pad, random crop) and maybe flipped, per image."""
    b, _, h, w = x.shape
    if pad:
        xp = F.pad(x, (pad, pad, pad, pad))
        rows = torch.randint(0, 2 * pad + 1, (b, 1), generator=gen) + torch.arange(h)
        cols = torch.randint(0, 2 * pad + 1, (b, 1), generator=gen) + torch.arange(w)
        x = xp[
            torch.arange(b)[:, None, None, None],
            torch.arange(x.shape[1])[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
    if flip:
        f = torch.rand(b, generator=gen) < 0.5
        x = torch.where(f[:, None, None, None], x.flip(3), x)
    return x


def build_model(num_classes: int, channels: int, init: str) -> nn.Module:
    net = resnet32(num_classes, in_channels=channels)
    if init == "kaiming":
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
    return net


def schedule(opt: torch.optim.Optimizer, args: argparse.Namespace, steps_per_epoch: int):
    total = args.epochs * steps_per_epoch
    if args.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, args.lr, total_steps=total, pct_start=0.05, anneal_strategy="cos"
        )
    w = args.warmup_epochs

    def factor(step: int) -> float:
        e = step / steps_per_epoch
        if w and e < w:
            return (math.floor(e) + 1) / w
        t = min(max(e - w, 0.0) / max(args.epochs - w, 1e-8), 1.0)
        return 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.no_grad()
def forward_all(net: nn.Module, x: torch.Tensor, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    net.eval()
    feats, logits = [], []
    for b in range(0, len(x), 500):
        xb = ((x[b : b + 500].float() - mean) / std).contiguous(memory_format=torch.channels_last)
        h = net[0](xb)
        feats.append(h)
        logits.append(net[1](h))
    return torch.cat(feats), torch.cat(logits)


def group_scores(pred: torch.Tensor, y: torch.Tensor, counts: np.ndarray) -> dict:
    acc = np.array([(pred[y == c] == c).float().mean().item() * 100 for c in range(len(counts))])

    def mean(mask: np.ndarray) -> float | None:
        return round(float(acc[mask].mean()), 2) if mask.any() else None

    return {
        "many": mean(counts > 100),
        "medium": mean((counts >= 20) & (counts <= 100)),
        "few": mean(counts < 20),
        "overall": round(float(acc.mean()), 2),
    }


def per_epoch_choices(history: list[dict]) -> dict:
    """With per-epoch test scores: those of the last epoch and of the first best-val epoch."""
    if "test" not in history[-1]:
        return {}
    best = max(history, key=lambda h: h["val"])  # the first of equal vals, as --select best
    return {
        "linear_last": history[-1]["test"],
        "linear_best_val": {**best["test"], "epoch": best["epoch"]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("root", type=Path, help="ImageFolder with train/ and test/ (val/ optional)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--wd", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", default="32", help="'native' or an input size S")
    ap.add_argument("--channels", type=int, choices=(1, 3), default=3)
    ap.add_argument("--pad", type=int, default=4)
    ap.add_argument("--flip", action="store_true")
    ap.add_argument("--norm", choices=("own", "mnist", "none"), default="own")
    ap.add_argument("--schedule", choices=("onecycle", "warmcos"), default="onecycle")
    ap.add_argument("--warmup-epochs", type=int, default=1)
    ap.add_argument("--select", choices=("last", "best"), default="last")
    ap.add_argument("--init", choices=("kaiming", "torch"), default="kaiming")
    ap.add_argument("--val-per-class", type=int, default=20, help="carved out of test w/o val/")
    ap.add_argument(
        "--test-every-epoch",
        action="store_true",
        help="also score test (linear) after every epoch: one run then gives the test numbers "
        "of both --select choices (reported as linear_last / linear_best_val)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, help="also write the JSON result here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.time()
    data = load(args.root, args)
    xtr, ytr = data["train"]
    num_classes = len(data["classes"])
    counts = np.bincount(ytr.numpy(), minlength=num_classes)
    mean, std = stats(xtr, args.norm)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    net = build_model(num_classes, args.channels, args.init).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.wd)
    steps = -(-len(ytr) // args.batch)
    sched = schedule(opt, args, steps)
    best = (-1.0, -1, None)
    history = []
    t_train = 0.0
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(ytr), generator=gen)
        t0, loss_sum = time.time(), 0.0
        for b in range(0, len(ytr), args.batch):
            idx = perm[b : b + args.batch]
            x = augment(xtr[idx], args.pad, args.flip, gen)
            x = ((x.float() - mean) / std).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(net(x), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
        t_train += time.time() - t0
        _, zval = forward_all(net, data["val"][0], mean, std)
        val_acc = (zval.argmax(1) == data["val"][1]).float().mean().item() * 100
        history.append({"epoch": epoch + 1, "loss": loss_sum / len(ytr), "val": round(val_acc, 2)})
        if args.test_every_epoch:
            _, z = forward_all(net, data["test"][0], mean, std)
            history[-1]["test"] = group_scores(z.argmax(1), data["test"][1], counts)
        print(json.dumps(history[-1]), flush=True)
        if args.select == "best" and val_acc > best[0]:
            best = (val_acc, epoch + 1, copy.deepcopy(net.state_dict()))
    chosen = args.epochs
    if args.select == "best":
        chosen = best[1]
        net.load_state_dict(best[2])
    htr, _ = forward_all(net, xtr, mean, std)
    hte, zte = forward_all(net, data["test"][0], mean, std)
    yte = data["test"][1]
    hn = F.normalize(htr, dim=1)
    means = torch.stack([hn[ytr == c].mean(0) for c in range(num_classes)])
    ncm = F.normalize(hte, dim=1) @ F.normalize(means, dim=1).T
    result = {
        "root": str(args.root),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "epoch_used": chosen,
        "linear": group_scores(zte.argmax(1), yte, counts),
        **per_epoch_choices(history),
        "ncm_cosine": group_scores(ncm.argmax(1), yte, counts),
        "mean": (mean.flatten() / 255).tolist(),
        "std": (std.flatten() / 255).tolist(),
        "train_counts": counts.tolist(),
        "sizes": {s: len(data[s][1]) for s in ("train", "val", "test")},
        "train_img_per_s": round(args.epochs * len(ytr) / max(t_train, 1e-9), 1),
        "wall_s": round(time.time() - t_start, 1),
        "threads": torch.get_num_threads(),
        "history": history,
    }
    line = json.dumps(result)
    print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")


if __name__ == "__main__":
    main()
