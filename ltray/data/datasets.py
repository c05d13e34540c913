"""torch Datasets over the prepared splits.

:class:`TensorImageDataset` gives item access to decoded uint8 images held in memory (the
training loop batches them on its device instead, :mod:`ltray.data.device`).

:class:`FileImageDataset` decodes one image per item with PIL (ImageNet-LT-sized sets, too big
to keep in memory).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ltray.data.device import normalize_nhwc, train_batch
from ltray.data.listfiles import line_of
from ltray.data.transforms import FamilySpec
from ltray.errors import DataError

__all__ = ["TensorImageDataset", "FileImageDataset"]


class TensorImageDataset(Dataset):
    """Items ``(x float32 [C, S, S] normalised, y int)`` from in-memory uint8 images.

    Item access for callers that want a ``Dataset``; training and evaluation loops batch the
    same images on their device with :class:`~ltray.data.device.DeviceBatches` (the same
    augmentation and normalisation code).

    Args:
        images: uint8 [N, C, H, W] (numpy array or tensor; kept as a numpy array).
        labels: [N] int64.
        spec: the family's constants (pad, flip, crop scale, jitter, mean, std).
        augment: the spec's train transform (:func:`~ltray.data.device.train_batch`).
        out_size: model input size S (bilinear resize when it differs from H).

    The augmentation of each batch is seeded from torch's global RNG.
    """

    def __init__(
        self,
        *,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray,
        spec: FamilySpec,
        augment: bool,
        out_size: int | None = None,
    ) -> None:
        arr = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if arr.dtype != np.uint8 or arr.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {arr.dtype} {arr.shape}")
        if len(arr) != len(labels):
            raise ValueError(f"{len(arr)} images but {len(labels)} labels")
        self.images = arr
        self.labels = np.asarray(labels, dtype=np.int64)
        self.spec = spec
        self.augment = augment
        self.out_size = out_size

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(x float32 [B, C, S, S], y int64 [B]) for ``indices``, augmented as configured."""
        idx = np.asarray(indices, dtype=np.int64)
        x = torch.from_numpy(self.images[idx]).permute(0, 2, 3, 1)
        if self.augment:
            # Drawn from torch's global RNG, like torchvision's transforms: torch.manual_seed
            # makes the augmentation reproducible.
            gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
            x_t = train_batch(x, self.spec, generator=gen, out_size=self.out_size).contiguous()
        else:
            x_t = normalize_nhwc(x, self.spec, out_size=self.out_size).contiguous()
        return x_t, torch.from_numpy(self.labels[idx])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, y = self.get_batch([int(index)])
        return x[0], int(y[0])


class FileImageDataset(Dataset):
    """Items ``(x float32 [3, S, S], y int)`` decoded from image files with PIL.

    Args:
        root: folder the relative paths are under.
        paths: [N] relative paths.
        labels: [N] int64.
        transform: PIL image → tensor.
        list_file: the list file the entries came from, in order (named in error messages).
    """

    def __init__(
        self,
        *,
        root: str | Path,
        paths: Sequence[str],
        labels: np.ndarray,
        transform: Callable[[object], torch.Tensor],
        list_file: Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.list_file = list_file

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path = self.root / self.paths[index]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except (OSError, ValueError) as exc:
            at = f" ({line_of(self.list_file, index)})" if self.list_file else ""
            raise DataError(
                f"image {path}{at} cannot be read ({exc}); replace the file or drop its line"
            ) from None
        return self.transform(img), int(self.labels[index])
