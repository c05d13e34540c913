"""A small, realistic synthetic cache: long-tailed Gaussian class clusters and a linear head
trained on them with plain (instance-balanced) cross-entropy, so the head is biased to the head
classes the way a real stage-1 model is. Used by tests, the benchmark and demos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ltray.fusion.cache import SplitArrays, write_meta, write_split

__all__ = ["exp_counts", "make_synthetic_cache"]


def exp_counts(num_classes: int, n_max: int, rho: float) -> np.ndarray:
    """Exponential profile n_i = ⌊n_max·(1/ρ)^(i/(C−1))⌋ [C] (docs/methods.md#long-tailed-data)."""
    i = np.arange(num_classes)
    return np.floor(n_max * (1.0 / rho) ** (i / max(num_classes - 1, 1))).astype(np.int64)


def _draw(
    means: np.ndarray, counts: np.ndarray, noise: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(len(counts)), counts)
    feats = means[labels] + noise * rng.standard_normal((len(labels), means.shape[1]))
    return np.maximum(feats, 0.0).astype(np.float32), labels  # h >= 0, as after ReLU + GAP


def make_synthetic_cache(
    cache_dir: str | Path,
    *,
    num_classes: int = 20,
    feat_dim: int = 32,
    n_max: int = 300,
    rho: float = 100.0,
    val_per_class: int = 20,
    test_per_class: int = 50,
    noise: float = 0.9,
    head_epochs: int = 60,
    with_kt: bool = True,
    with_ema: bool = True,
    seed: int = 0,
) -> Path:
    """Write a synthetic cache under ``cache_dir`` and return it.

    Train counts follow the exponential profile (n_max .. n_max/ρ); val and test are balanced.
    The linear head [C, d] is trained with instance-balanced CE (Adam, full batch); the KT head
    is the linear head with logit adjustment; the EMA memory is the class means plus noise.
    """
    rng = np.random.default_rng(seed)
    counts = exp_counts(num_classes, n_max, rho)
    means = np.abs(rng.standard_normal((num_classes, feat_dim))) * 1.5
    x_tr, y_tr = _draw(means, counts, noise, rng)
    x_va, y_va = _draw(means, np.full(num_classes, val_per_class), noise, rng)
    x_te, y_te = _draw(means, np.full(num_classes, test_per_class), noise, rng)

    torch.manual_seed(seed)
    head = torch.nn.Linear(feat_dim, num_classes)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    for _ in range(head_epochs):
        opt.zero_grad()
        F.cross_entropy(head(xt), yt).backward()
        opt.step()
    w = head.weight.detach().numpy().astype(np.float32)
    b = head.bias.detach().numpy().astype(np.float32)
    log_pi = np.log(counts / counts.sum()).astype(np.float32)

    out = Path(cache_dir)
    for split, x, y in (("train", x_tr, y_tr), ("val", x_va, y_va), ("test", x_te, y_te)):
        z = x @ w.T + b
        write_split(
            out,
            split,
            SplitArrays(
                features=x, logits=z, labels=y, kt_logits=(z - log_pi) if with_kt else None
            ),
            config_hash="synthetic",
        )
    params = {"linear_weight": w, "linear_bias": b}
    if with_ema:
        h = x_tr / np.maximum(np.linalg.norm(x_tr, axis=1, keepdims=True), 1e-12)
        ema = np.stack([h[y_tr == c].mean(0) for c in range(num_classes)])
        params["memory_ema"] = ema + 0.01 * rng.standard_normal(ema.shape)
    write_meta(
        out,
        config_hash="synthetic",
        class_counts=counts,
        many_threshold=100,
        few_threshold=20,
        val_protocol="carve",
        params=params,
        extra={"synthetic": True, "seed": seed},
    )
    return out
