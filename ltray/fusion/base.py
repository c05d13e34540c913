"""The contract every post-hoc method follows, and the registry of methods.

A method is a ``fit(train, val, ctx, settings) -> Fitted`` function. It receives only the TRAIN
and VAL arrays and a :class:`FitContext` (train class counts, the head's parameters) — never the
cache and never the test split, so a choice made on test is impossible by construction. The
:class:`Fitted` it returns maps any split to scores; only :func:`ltray.fusion.methods.run_method`
ever hands it the test split, after fitting has returned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ltray.errors import ConfigError
from ltray.fusion.cache import SplitArrays
from ltray.fusion.ncm import Memory, Metric, class_means, d_scale, ncm_logits
from ltray.registry import Registry

__all__ = [
    "FitContext",
    "Scores",
    "Fitted",
    "MethodSpec",
    "FUSION_METHODS",
    "register_method",
    "MethodSettings",
    "NCMSettings",
    "TrainSettings",
    "parse_settings",
    "build_memory",
    "branches",
    "tensor",
]


@dataclass(frozen=True)
class FitContext:
    """What a method may know besides train and val: TRAIN class counts [C], shot groups [C],
    the head's parameters (``linear_weight`` [C, d], ``linear_bias`` [C], ``memory_ema`` [C, d])."""

    num_classes: int
    class_counts: np.ndarray
    groups: np.ndarray
    params: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Scores:
    """Scores [N, C] whose row-wise argmax is the prediction; ``probs`` [N, C] (rows summing to 1)
    when the method has its own probabilities, else ECE uses softmax(scores)."""

    scores: np.ndarray
    probs: np.ndarray | None = None


class Fitted(Protocol):
    """A fitted method: ``chosen`` holds every value selected on val (w, τ, epoch, threshold...)
    and ``extras`` arrays worth saving (e.g. LLW's a₁, a₂)."""

    chosen: dict[str, Any]
    extras: dict[str, np.ndarray]

    def scores(self, split: SplitArrays) -> Scores: ...


class MethodSettings(BaseModel):
    """Settings of a method with no knob; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")

    def sgd(self) -> dict[str, Any]:
        """The SGD keywords every ``train_and_select`` call takes from these settings."""
        keys = ("epochs", "lr", "momentum", "weight_decay", "batch_size")
        return {k: getattr(self, k) for k in keys}


class NCMSettings(MethodSettings):
    memory: Literal["full", "ema"] = Field(
        "full", description="full: class means of cached train features; ema: the run's EMA memory"
    )
    metric: Metric = "cosine"


class TrainSettings(MethodSettings):
    """Knobs of a method trained by SGD over cached train features."""

    lr: float = Field(0.2, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(512, ge=1)
    seed: int = 0


FitFn = Callable[[SplitArrays, SplitArrays, FitContext, Any], Fitted]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its fit function, settings model, what the cache must hold
    (``"kt_logits"``, ``"memory_ema"``, ``"linear_weight"``), and whether fitting reads the
    train split's arrays whatever its settings (``fits_on_train``: LLW, ASM, cRT, LWS; a method
    with a ``memory`` setting reads them for ``memory=full`` only)."""

    name: str
    fit: FitFn
    settings: type[MethodSettings]
    requires: tuple[str, ...] = ()
    summary: str = ""
    fits_on_train: bool = False


FUSION_METHODS: Registry[MethodSpec] = Registry("post-hoc method")


def register_method(
    name: str,
    settings: type[MethodSettings] = MethodSettings,
    *,
    requires: tuple[str, ...] = (),
    summary: str = "",
    fits_on_train: bool = False,
) -> Callable[[FitFn], FitFn]:
    """Decorator registering ``fit`` under ``name`` in :data:`FUSION_METHODS`."""

    def deco(fit: FitFn) -> FitFn:
        summary_text = summary or (fit.__doc__ or "").split("\n")[0]
        FUSION_METHODS.register(name)(
            MethodSpec(name, fit, settings, requires, summary_text, fits_on_train)
        )
        return fit

    return deco


def parse_settings(name: str, values: Mapping[str, Any] | None) -> MethodSettings:
    """Validate ``values`` against method ``name``'s settings; every problem in one ConfigError
    naming the key, the rule and the valid keys."""
    spec = FUSION_METHODS.get(name, key="method")
    try:
        return spec.settings(**dict(values or {}))
    except ValidationError as exc:
        valid = ", ".join(spec.settings.model_fields) or "(none)"
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"{name}.{key}: unknown setting")
            else:
                problems.append(f"{name}.{key}={err.get('input')!r}: {err['msg']}")
        raise ConfigError("; ".join(problems) + f" (valid keys of {name}: {valid})") from None


def tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """float32 torch tensor of a cached array (a view when possible; read-only arrays, as
    Arrow hands them out, are copied so torch never aliases read-only memory)."""
    if isinstance(x, torch.Tensor):
        return x.to(torch.float32)
    arr = np.ascontiguousarray(x, dtype=np.float32)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def build_memory(train: SplitArrays, ctx: FitContext, source: str) -> Memory:
    """The NCM memory: class means of the cached TRAIN features, or the run's EMA memory."""
    if source == "full":
        return class_means(train.features, train.labels, ctx.num_classes)
    if "memory_ema" not in ctx.params:
        raise ConfigError(
            "memory=ema: this cache has no EMA memory (params.npz lacks memory_ema); "
            "use memory=full or train with memory.enabled=true"
        )
    means = tensor(ctx.params["memory_ema"])
    if "memory_ema_valid" in ctx.params:  # the run's own mask: classes the memory has seen
        valid = tensor(ctx.params["memory_ema_valid"]) > 0.5
    else:  # a cache written before the mask was saved
        valid = means.norm(dim=1) > 0
    return Memory(means=means, valid=valid, source="ema")


def branches(
    split: SplitArrays, memory: Memory, metric: Metric
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two branches of a split: linear z_l [N, C] and d-scaled NCM z̃_d [N, C]."""
    z_l = tensor(split.logits)
    return z_l, d_scale(z_l, ncm_logits(tensor(split.features), memory, metric=metric))
