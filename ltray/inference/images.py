"""New images in the form a run's network expects.

:func:`collect_images` expands files and folders into image paths; :func:`load_pixels` decodes
one file with PIL into the raw uint8 image the run's :class:`~ltray.inference.model.PixelModel`
(and its exported MLflow model) takes: in-memory families (digits, MNIST, CIFAR) at their
native size (resized to it when the file differs), the imagenet family through the eval
transform's Resize + CenterCrop. :func:`load_image` goes one step further, as the run's
evaluation did: scaled to [0, 1], normalised and resized to the input size on the tensor
(:func:`~ltray.data.device.normalize_nhwc`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ltray.data.device import normalize_nhwc
from ltray.data.sources import IMAGE_EXTENSIONS
from ltray.data.transforms import imagenet_transform
from ltray.errors import DataError
from ltray.inference.load import InputSpec

__all__ = ["collect_images", "load_pixels", "load_image"]


def collect_images(items: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for image files (sorted), in order.

    Raises:
        DataError: a path does not exist, or nothing to predict was found.
    """
    out: list[Path] = []
    missing: list[str] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            missing.append(str(item))
    if missing:
        raise DataError(f"no such file or folder: {', '.join(missing)}")
    if not out:
        raise DataError(
            "no images found in the given folders (extensions: "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return out


def load_pixels(path: Path, spec: InputSpec) -> Tensor:
    """One image file → uint8 [C_in, N, N], N = ``spec.pixel_size`` (what the exported model
    takes). Raises ``OSError``/``ValueError`` when PIL cannot read it."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        img = im.convert("L" if spec.in_channels == 1 else "RGB")
    if spec.family == "imagenet":
        crop = imagenet_transform(train=False, size=spec.image_size, spec=spec, normalize=False)  # type: ignore[arg-type]
        return crop(img)
    if img.size != (spec.native_size, spec.native_size):
        img = img.resize((spec.native_size, spec.native_size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def load_image(path: Path, spec: InputSpec) -> Tensor:
    """One image file → float32 [C_in, S, S] normalised. Raises ``OSError``/``ValueError`` when
    PIL cannot read it."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        img = im.convert("L" if spec.in_channels == 1 else "RGB")
    if spec.family == "imagenet":
        return imagenet_transform(train=False, size=spec.image_size, spec=spec)(img)  # type: ignore[arg-type]

    if img.size != (spec.native_size, spec.native_size):
        img = img.resize((spec.native_size, spec.native_size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    x = torch.from_numpy(arr.copy()).unsqueeze(0)  # [1, H, W, C]
    return normalize_nhwc(x, spec, out_size=spec.image_size)[0].contiguous()  # type: ignore[arg-type]
