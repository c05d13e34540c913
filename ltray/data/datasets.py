"""torch Datasets over the prepared splits.

:class:`TensorImageDataset` holds decoded uint8 images in memory and augments a whole batch at
once: the DataLoader's fetcher calls ``__getitems__(indices)`` with a batch of indices, so the
random crop/flip and the normalisation run as a few tensor ops per batch. Items are still
``(x, y)`` pairs, so the default collate (or any caller's loop) works unchanged.

:class:`FileImageDataset` decodes one image per item with PIL (ImageNet-LT-sized sets, too big
to keep in memory).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ltray.data.listfiles import line_of
from ltray.data.transforms import FamilySpec, augment_batch, normalize_batch
from ltray.errors import DataError

__all__ = ["TensorImageDataset", "FileImageDataset", "fast_collate"]


class TensorImageDataset(Dataset):
    """Items ``(x float32 [C, S, S] normalised, y int)`` from in-memory uint8 images.

    Args:
        images: uint8 [N, C, H, W] (numpy array or tensor; kept as a numpy array).
        labels: [N] int64.
        spec: the family's constants (pad, flip, mean, std).
        augment: random shift (+ flip where the family allows it).
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

    @staticmethod
    def _generator() -> np.random.Generator:
        # Drawn from torch's global RNG, like torchvision's transforms: torch.manual_seed makes
        # the augmentation reproducible, and DataLoader workers (seeded apart) differ.
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(x float32 [B, C, S, S], y int64 [B]) for ``indices``, augmented as configured."""
        idx = np.asarray(indices, dtype=np.int64)
        x = self.images[idx]
        if self.augment:
            x = augment_batch(x, self.spec, rng=self._generator())
        x_t = normalize_batch(x, self.spec, out_size=self.out_size)
        return x_t, torch.from_numpy(self.labels[idx])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        x, y = self.get_batch(indices)
        return _BatchItems(x, y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, y = self.get_batch([int(index)])
        return x[0], int(y[0])


class _BatchItems(list):
    """A list of ``(x, y)`` items that also remembers the stacked batch, so
    :func:`fast_collate` skips the unbind + re-stack (the default collate still works)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        super().__init__(zip(x.unbind(0), y.tolist(), strict=True))
        self.x = x
        self.y = y


def fast_collate(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate ``(x, y)`` items into (x [B, ...], y int64 [B]); a pre-stacked batch from
    :meth:`TensorImageDataset.__getitems__` is passed through as is."""
    if isinstance(items, _BatchItems):
        return items.x, items.y
    xs, ys = zip(*items, strict=True)
    return torch.stack(xs), torch.as_tensor(ys, dtype=torch.int64)


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
