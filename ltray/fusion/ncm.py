"""Class-mean memory from cached features, NCM logits and d-scaling (docs/methods.md#ncm).

Small pure functions over tensors; no I/O. The post-hoc stage builds the full-pass memory from
the cached TRAIN features (computed in eval mode with eval transforms), so it never needs the
backbone again. The NCM and d-scaling math is the training code's own
(:mod:`ltray.models.memory`), so post-hoc and in-training NCM cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ltray.models import memory as _mem

__all__ = ["Metric", "Memory", "normalize", "class_means", "ncm_logits", "d_scale"]

Metric = Literal["cosine", "euclidean"]


@dataclass(frozen=True)
class Memory:
    """Class means ``means`` [C, d] of normalised features; ``valid`` [C] is False for a class
    with no images (its NCM logit is ``-inf``). ``source`` is ``"full"`` or ``"ema"``."""

    means: torch.Tensor
    valid: torch.Tensor
    source: str


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` [N, d] scaled to unit L2 norm (a zero row stays zero)."""
    return _mem.normalize(x)


def class_means(
    features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, num_classes: int
) -> Memory:
    """Full-pass memory: M_c = mean over images of class c of ĥ.

    ``features`` [N, d], ``labels`` [N] → :class:`Memory` with ``means`` [C, d]. A class with no
    image gets a zero row and ``valid[c] = False`` (masked, never NaN).
    """
    h = normalize(torch.as_tensor(np.array(features, dtype=np.float32, copy=True)))
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    sums = torch.zeros(num_classes, h.shape[1], dtype=torch.float32).index_add_(0, y, h)
    counts = torch.bincount(y, minlength=num_classes).to(torch.float32)
    valid = counts > 0
    return Memory(means=sums / counts.clamp_min(1.0)[:, None], valid=valid, source="full")


def ncm_logits(
    features: torch.Tensor, memory: Memory, *, metric: Metric = "cosine"
) -> torch.Tensor:
    """NCM logits [N, C] of raw features [N, d] (L2-normalised inside).

    cosine: z_d[c] = ĥ · M_c / ‖M_c‖; euclidean: z_d[c] = −‖ĥ − M_c‖². Invalid classes → −inf.
    """
    return _mem.ncm_logits(features, memory.means, metric=metric, valid=memory.valid)


def d_scale(z_l: torch.Tensor, z_d: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max map of z_d [N, C] onto the range of z_l [N, C] (no parameter).

    z̃_d = min z_l + (z_d − min z_d)·(max z_l − min z_l)/(max z_d − min z_d) over the finite
    entries of each row; ``-inf`` stays ``-inf``; a zero range maps every finite entry to min z_l.
    """
    return _mem.d_scale(z_l, z_d)
