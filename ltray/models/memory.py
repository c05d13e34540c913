"""Class-mean memory of normalised features and nearest-class-mean logits
(docs/methods.md#memory-module, docs/methods.md#ncm).

Pure functions (:func:`normalize`, :func:`class_sums`, :func:`ncm_logits`, :func:`d_scale`) plus
:class:`ClassMemory`, which holds M ∈ R^{C×d} as buffers so that it travels in ``state_dict``
checkpoints. Typical use in a training loop:

    sums, counts = class_sums(normalize(h), y, num_classes=C)   # summed over a full pass
    sums, counts = reduce_class_sums(sums, counts)              # all workers, if distributed
    memory.set_from_sums(sums, counts)                          # full-pass init (epoch k)
    ...
    memory.step(h, y)                                           # after every optimiser step
    z_d = memory.logits(h)                                      # NCM logits [B, C]
    z_teacher = d_scale(z_l, z_d)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Metric",
    "normalize",
    "class_sums",
    "reduce_class_sums",
    "ncm_logits",
    "d_scale",
    "ClassMemory",
]

Metric = Literal["cosine", "euclidean"]

_EPS = 1e-12


def normalize(h: Tensor, *, eps: float = _EPS) -> Tensor:
    """L2-normalise rows: [B, d] -> [B, d]; an all-zero row stays zero instead of NaN."""
    return F.normalize(h, p=2.0, dim=1, eps=eps)


def class_sums(feat_n: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class sums and counts of (normalised) features.

    Args:
        feat_n: [B, d] features, usually ``normalize(h)``.
        labels: [B] integer labels in ``[0, num_classes)``.
        num_classes: C.

    Returns:
        sums [C, d] (dtype of ``feat_n``) and counts [C] (float, same dtype) — sums rather than
        means so that batches and workers can be added before dividing.
    """
    if feat_n.dim() != 2 or labels.shape != feat_n.shape[:1]:
        raise ValueError(
            "class_sums needs feat_n [B, d] and labels [B], got "
            f"({tuple(feat_n.shape)}, {tuple(labels.shape)})"
        )
    labels = labels.long()
    # Checked on CPU only: on a GPU the check would force a host sync every step, and
    # index_add_ fails there on its own.
    if (
        labels.device.type == "cpu"
        and labels.numel()
        and not (int(labels.min()) >= 0 and int(labels.max()) < num_classes)
    ):
        raise ValueError(
            f"labels must be in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]"
        )
    sums = feat_n.new_zeros(num_classes, feat_n.shape[1]).index_add_(0, labels, feat_n)
    counts = feat_n.new_zeros(num_classes).index_add_(
        0, labels, torch.ones_like(labels, dtype=feat_n.dtype)
    )
    return sums, counts


def reduce_class_sums(sums: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """All-reduce (SUM) per-class sums [C, d] and counts [C] over the default process group.

    A no-op returning the inputs when ``torch.distributed`` is not initialised or has one process.
    Both are packed into one [C, d+1] tensor so the step costs a single collective.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return sums, counts
    packed = torch.cat([sums, counts.to(sums.dtype).unsqueeze(1)], dim=1)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return packed[:, :-1].contiguous(), packed[:, -1].to(counts.dtype)


def ncm_logits(
    feat: Tensor,
    means: Tensor,
    *,
    metric: Metric = "cosine",
    valid: Tensor | None = None,
) -> Tensor:
    """Nearest-class-mean logits of raw features.

    Args:
        feat: [B, d] raw penultimate features h; normalised here to ĥ.
        means: [C, d] class means M (means of ĥ, not renormalised).
        metric: ``cosine``: z_d[c] = ĥ · M_c/‖M_c‖; ``euclidean``: z_d[c] = −‖ĥ − M_c‖².
        valid: [C] bool; classes marked False (no images seen) get −inf.

    Returns:
        z_d [B, C] in float32 (features under autocast are upcast: NCM differences are small).
    """
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    # Autocast would run the matmul in half precision whatever the input dtype.
    with torch.autocast(device_type=feat.device.type, enabled=False):
        h = normalize(feat.float())
        m = means.float()
        if metric == "cosine":
            z = h @ normalize(m).t()
        else:
            # The expansion avoids a [B, C, d] intermediate (1 GB at B=512, C=1000, d=512);
            # clamping removes tiny negative distances left by cancellation.
            sq = (h * h).sum(1, keepdim=True) + (m * m).sum(1).unsqueeze(0) - 2.0 * (h @ m.t())
            z = -sq.clamp_min(0.0)
    if valid is not None:
        z = z.masked_fill(~valid.to(torch.bool).unsqueeze(0), float("-inf"))
    return z


def d_scale(z_l: Tensor, z_d: Tensor, *, eps: float = _EPS) -> Tensor:
    """Map NCM logits onto the per-sample range of the linear logits (no parameters).

    z̃_d = min z_l + (z_d − min z_d) · (max z_l − min z_l) / (max z_d − min z_d), per row.

    Args:
        z_l: [B, C] linear logits (finite).
        z_d: [B, C] NCM logits; −inf entries (masked classes) are left out of min/max and stay −inf.
        eps: a row whose finite z_d range is <= eps has no ordering to transfer; its finite
            entries all map to min z_l (the formula's limit, since every numerator is 0) instead
            of 0/0 = NaN.

    Returns:
        z̃_d [B, C], dtype of ``z_d``.
    """
    z_l = z_l.to(z_d.dtype)
    finite = torch.isfinite(z_d)
    inf = torch.tensor(float("inf"), dtype=z_d.dtype, device=z_d.device)
    min_d = torch.where(finite, z_d, inf).amin(dim=1, keepdim=True)
    max_d = torch.where(finite, z_d, -inf).amax(dim=1, keepdim=True)
    min_l = z_l.amin(dim=1, keepdim=True)
    range_l = z_l.amax(dim=1, keepdim=True) - min_l
    range_d = max_d - min_d  # -inf for a row without finite entries
    ok = range_d > eps
    scale = torch.where(ok, range_l / torch.where(ok, range_d, torch.ones_like(range_d)), 0.0)
    # Masked entries get a finite stand-in and are put back to -inf at the end: inf - inf = NaN.
    min_d = torch.where(torch.isfinite(min_d), min_d, 0.0)
    shifted = torch.where(finite, z_d - min_d, 0.0)
    out = min_l + shifted * scale
    return out.masked_fill(~finite, float("-inf"))


class ClassMemory(nn.Module):
    """EMA memory of class means of normalised features, M ∈ R^{C×d}.

    Buffers (saved in ``state_dict``): ``means`` [C, d] float32, ``valid`` [C] bool (class has
    had at least one image), ``initialized`` 0-d bool (a full pass has set M).

    Args:
        num_classes: C.
        dim: feature dimension d.
        momentum: EMA momentum in [0, 1); the update weight of the batch mean is α = 1 − momentum.
        metric: NCM metric of :meth:`logits`.
        renormalize: renormalise M_c to unit length after each EMA update (original code: no).
    """

    means: Tensor
    valid: Tensor
    initialized: Tensor

    def __init__(
        self,
        num_classes: int,
        dim: int,
        *,
        momentum: float = 0.9,
        metric: Metric = "cosine",
        renormalize: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"`0 <= momentum < 1` must hold, but got momentum={momentum}")
        if metric not in ("cosine", "euclidean"):
            raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
        self.num_classes = num_classes
        self.dim = dim
        self.momentum = momentum
        self.metric: Metric = metric
        self.renormalize = renormalize
        self.register_buffer("means", torch.zeros(num_classes, dim))
        self.register_buffer("valid", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("initialized", torch.tensor(False))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, dim={self.dim}, momentum={self.momentum}, "
            f"metric={self.metric!r}, renormalize={self.renormalize}"
        )

    @property
    def is_initialized(self) -> bool:
        """Whether a full pass has set M (reads the buffer, so it survives checkpoints)."""
        return bool(self.initialized)

    def _check(self, sums: Tensor, counts: Tensor) -> None:
        if sums.shape != self.means.shape or counts.shape != self.valid.shape:
            raise ValueError(
                f"expected sums {tuple(self.means.shape)} and counts {tuple(self.valid.shape)}, "
                f"got ({tuple(sums.shape)}, {tuple(counts.shape)})"
            )

    @torch.no_grad()
    def set_from_sums(self, sums: Tensor, counts: Tensor) -> None:
        """Full-pass initialisation: M_c = sums_c / counts_c; classes with no image are invalid.

        Args:
            sums: [C, d] per-class sums of ĥ over the whole training set (all workers).
            counts: [C] images per class.
        """
        self._check(sums, counts)
        sums = sums.to(self.means)
        counts = counts.to(self.means)
        present = counts > 0
        mean = sums / counts.clamp_min(1.0).unsqueeze(1)
        self.means.copy_(torch.where(present.unsqueeze(1), mean, torch.zeros_like(mean)))
        self.valid.copy_(present)
        self.initialized.fill_(True)

    @torch.no_grad()
    def ema_update(self, sums: Tensor, counts: Tensor) -> None:
        """EMA step: for classes with counts > 0, M_c ← (1 − α)·M_c + α·(sums_c / counts_c).

        α = 1 − momentum. A class seen for the first time takes its batch mean (there is no old
        mean to keep). With ``renormalize`` the updated rows are scaled to unit length.

        Args:
            sums: [C, d] per-class sums of ĥ in the batch (already summed over workers).
            counts: [C] images per class in the batch.
        """
        self._check(sums, counts)
        sums = sums.to(self.means)
        counts = counts.to(self.means)
        present = counts > 0
        batch_mean = sums / counts.clamp_min(1.0).unsqueeze(1)
        alpha = 1.0 - self.momentum
        blended = (1.0 - alpha) * self.means + alpha * batch_mean
        new = torch.where(self.valid.unsqueeze(1), blended, batch_mean)
        if self.renormalize:
            new = normalize(new)
        self.means.copy_(torch.where(present.unsqueeze(1), new, self.means))
        self.valid.logical_or_(present)

    @torch.no_grad()
    def step(self, feat: Tensor, labels: Tensor, *, all_reduce: bool = True) -> None:
        """Update M from one minibatch of raw features (no-op before the full-pass init).

        Args:
            feat: [B, d] raw features h of this worker's batch; detached and normalised here.
            labels: [B] labels (with mixup: the dominant labels).
            all_reduce: sum the batch statistics over all workers first, so every replica holds
                the M a single process would get from the global batch. Every worker must call
                ``step`` at the same point when this is True (it is a collective).
        """
        if not self.is_initialized:
            return
        feat_n = normalize(feat.detach().to(self.means.dtype))
        sums, counts = class_sums(feat_n, labels, self.num_classes)
        if all_reduce:
            sums, counts = reduce_class_sums(sums, counts)
        self.ema_update(sums, counts)

    def logits(self, feat: Tensor) -> Tensor:
        """NCM logits z_d [B, C] of raw features [B, d]; −inf for classes never seen.

        Raises ``RuntimeError`` before initialisation: every class would be −inf, which turns
        softmax teachers into NaN; callers check :attr:`is_initialized` (docs/methods.md#kt:
        before M exists the KT branch is plain CE).
        """
        if not self.is_initialized:
            raise RuntimeError(
                "ClassMemory.logits called before the memory was initialised; call "
                "set_from_sums (full pass) first, or check `memory.is_initialized`"
            )
        return ncm_logits(feat, self.means, metric=self.metric, valid=self.valid)
