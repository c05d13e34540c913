"""Write MNIST as a long-tailed grayscale ImageFolder of PNGs, the way a user's own data arrives.

No ltray code: the folder is the input of both ``ltray train data.name=imagefolder`` and the
plain loop ``plain_imagefolder.py``, so neither builds the split the other is measured on.

    python scripts/make_gray_lt.py --mnist /work/shared/data --out .devdata/mnist-lt
    python scripts/make_gray_lt.py --mnist /work/shared/data --out .devdata/mnist-lt-inv \
        --invert --class-order 7,1,9,4,2,3,5,6,8,0

Layout: ``OUT/train/<class>/NNNNN.png`` already long-tailed (class i of ``--class-order`` keeps
``floor(n_max * rho^(-i/(C-1)))`` images, 5000 down to 5 at the defaults),
``OUT/test/<class>/NNNNN.png`` balanced (``--test-per-class`` of MNIST's test images), and with
``--val-per-class K`` a balanced ``OUT/val/`` of K unused MNIST train images per class.
``--invert`` writes 255 - pixel (dark ink on a light page, like scanned letters; the dataset's
mean is then about 0.87, far from MNIST's 0.13). The images picked are seeded (``--seed``);
``OUT/manifest.json`` records the arguments and the counts. An existing ``OUT`` is refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def profile(n_max: int, rho: float, num_classes: int) -> list[int]:
    """Exponential profile: class i keeps floor(n_max * rho^(-i/(C-1))) images."""
    return [int(n_max * (1.0 / rho) ** (i / (num_classes - 1))) for i in range(num_classes)]


def _write(folder: Path, images: np.ndarray, invert: bool) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for k, img in enumerate(images):
        Image.fromarray(255 - img if invert else img, mode="L").save(folder / f"{k:05d}.png")


def build(args: argparse.Namespace) -> dict:
    import torchvision

    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out}: already exists; remove it or choose another --out")
    tr = torchvision.datasets.MNIST(args.mnist, train=True, download=False)
    te = torchvision.datasets.MNIST(args.mnist, train=False, download=False)
    xtr, ytr = tr.data.numpy(), tr.targets.numpy()
    xte, yte = te.data.numpy(), te.targets.numpy()
    order = [int(c) for c in args.class_order.split(",")] if args.class_order else list(range(10))
    if sorted(order) != list(range(10)):
        raise SystemExit(f"--class-order must be a permutation of 0..9, got {order}")
    counts = profile(args.n_max, args.rho, len(order))
    rng = np.random.default_rng(args.seed)
    written: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    for rank, digit in enumerate(order):
        name = str(digit)
        pool = rng.permutation(np.flatnonzero(ytr == digit))
        n, k = counts[rank], args.val_per_class
        if n + k > len(pool):
            raise SystemExit(f"digit {digit}: {len(pool)} train images, need {n} + {k} val")
        _write(out / "train" / name, xtr[np.sort(pool[:n])], args.invert)
        written["train"][name] = n
        if k:
            _write(out / "val" / name, xtr[np.sort(pool[n : n + k])], args.invert)
            written["val"][name] = k
        test_pool = rng.permutation(np.flatnonzero(yte == digit))[: args.test_per_class]
        _write(out / "test" / name, xte[np.sort(test_pool)], args.invert)
        written["test"][name] = len(test_pool)
    manifest = {"args": vars(args), "class_order": order, "counts": written}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mnist", required=True, help="folder holding MNIST/raw (torchvision)")
    ap.add_argument("--out", required=True, help="the ImageFolder to write (must not exist)")
    ap.add_argument("--rho", type=float, default=1000.0, help="n_max / n_min of train")
    ap.add_argument("--n-max", type=int, default=5000, help="train images of the head class")
    ap.add_argument("--test-per-class", type=int, default=800, help="balanced test images")
    ap.add_argument("--val-per-class", type=int, default=0, help="balanced val/ (0: none)")
    ap.add_argument("--invert", action="store_true", help="write 255 - pixel")
    ap.add_argument("--class-order", default="", help="head first, e.g. 7,1,9,4,2,3,5,6,8,0")
    ap.add_argument("--seed", type=int, default=0)
    m = build(ap.parse_args())
    print(json.dumps({"out": m["args"]["out"], "train": m["counts"]["train"]}))


if __name__ == "__main__":
    main()
