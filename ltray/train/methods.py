"""Training methods, registered by ``train.method``: each owns its rules and its step.

The loop (:mod:`ltray.train.loop`) owns data, optimiser, schedule, memory updates, evaluation,
checkpoints and reporting; a :class:`TrainMethod` owns everything particular to one method:

- its **rules**, read by :mod:`ltray.validate` before anything starts (so this module and every
  method class import no torch): whether mixup applies, the heads its network has, whether it
  keeps the class-mean memory, the config sections it reads, the sampler it trains with, and the
  problems of a config (a stage-1 run it needs, experts, a shot group);
- its **hooks**, called by the loop: ``prepare_data`` → ``build`` → ``param_groups`` →
  ``wrap``, then ``loss`` once per batch; and ``restore``, the untrained network of a finished
  run's architecture that :func:`ltray.inference.load_run` loads the weights into.

A method class is light: its network and loss live in a module of their own, imported when the
loop first calls a hook (:mod:`ltray.train.standard` for the built-in ``kt`` and ``ce``;
:mod:`ltray.previous.oltr` and :mod:`ltray.previous.lfme` for the previous works, whose method
classes are in :mod:`ltray.previous.methods`). :func:`ltray.train.catalog.get_method` resolves
``train.method`` over all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ltray.config import Config
from ltray.registry import Registry
from ltray.train.step import StepContext, StepResult

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ltray.data import LTData
    from ltray.models import LTNet

__all__ = [
    "StepContext",
    "StepResult",
    "Checks",
    "TrainMethod",
    "MethodDefaults",
    "TRAIN_METHODS",
    "StandardMethod",
]


@dataclass(frozen=True)
class Checks:
    """What a method's :meth:`~TrainMethod.problems` may ask about a config beyond its keys,
    answered by :mod:`ltray.validate` without reading images: the shot groups the train split
    will not have (→ why), and the problems of a run directory a key names."""

    empty_groups: Callable[[], dict[str, str]]
    run_dir: Callable[[str, str, str], list[str]]  # (key, run dir, how to train it) → problems


class TrainMethod(Protocol):
    """A training method: its rules (no torch) and the hooks the loop calls."""

    #: whether ``mixup.variant`` may be set (the previous works are not defined with it)
    mixup: bool
    #: config sections of its own that it reads (``kt``, ``oltr``, ``lfme``): the others' keys,
    #: set away from their defaults, are noted as unused
    sections: tuple[str, ...]

    def heads(self, cfg: Config) -> tuple[str, ...]:
        """The trained heads of its network: ``("linear",)`` or ``("linear", "kt")``."""
        ...

    def has_memory(self, cfg: Config) -> bool:
        """Whether its network keeps the class-mean memory (and so has NCM heads)."""
        ...

    def sampler(self, cfg: Config) -> str:
        """The train sampler's registered name: ``data.sampler``, or the method's own (OLTR:
        class-aware sampling)."""
        ...

    def problems(self, cfg: Config, checks: Checks) -> list[str]:
        """What stops ``cfg`` from training with this method, each with its key and fix."""
        ...

    def prepare_data(self, data: LTData, cfg: Config) -> LTData:
        """Called before ``build``; may narrow the data (an LFME expert keeps one shot group's
        train images)."""
        ...

    def build(
        self, cfg: Config, *, num_classes: int, in_channels: int, small_input: bool, data: Any
    ) -> LTNet:
        """The network to train: an :class:`LTNet` or a subclass (``backbone``, ``linear``,
        ``kt_head``, ``memory``; ``forward`` → :class:`NetOutput`)."""
        ...

    def restore(
        self,
        cfg: Config,
        *,
        num_classes: int,
        in_channels: int,
        small_input: bool,
        class_counts: Any,
    ) -> LTNet:
        """An untrained network of the architecture ``build`` gave this config, built without
        data or other runs; a finished run's checkpoint is loaded into it."""
        ...

    def param_groups(self, net: LTNet, cfg: Config) -> list[dict[str, Any]]:
        """SGD parameter groups; a group's ``"lr_scale"`` multiplies the scheduled lr."""
        ...

    def wrap(self, net: LTNet, cfg: Config) -> nn.Module:
        """The module DDP wraps: its ``forward`` must cover every trained parameter."""
        ...

    def loss(
        self, net: LTNet, fwd: nn.Module, x: torch.Tensor, y: torch.Tensor, sc: StepContext
    ) -> StepResult:
        """One batch's loss (x [B, ...], y [B]) and what the loop records of it."""
        ...


class MethodDefaults:
    """The default rules and hooks of :class:`TrainMethod`; methods inherit them and override
    what they change."""

    mixup = True
    sections: tuple[str, ...] = ()

    def heads(self, cfg: Config) -> tuple[str, ...]:
        return ("linear",)

    def has_memory(self, cfg: Config) -> bool:
        return cfg.memory.enabled

    def sampler(self, cfg: Config) -> str:
        return cfg.data.sampler

    def problems(self, cfg: Config, checks: Checks) -> list[str]:
        return []

    def prepare_data(self, data: LTData, cfg: Config) -> LTData:
        return data

    def build(
        self, cfg: Config, *, num_classes: int, in_channels: int, small_input: bool, data: Any
    ) -> LTNet:
        from ltray.models import build_network

        return build_network(
            cfg,
            num_classes=num_classes,
            in_channels=in_channels,
            small_input=small_input,
            kt_head="kt" in self.heads(cfg),
            memory=self.has_memory(cfg),
        )

    def restore(
        self,
        cfg: Config,
        *,
        num_classes: int,
        in_channels: int,
        small_input: bool,
        class_counts: Any,
    ) -> LTNet:
        return self.build(
            cfg,
            num_classes=num_classes,
            in_channels=in_channels,
            small_input=small_input,
            data=None,
        )

    def param_groups(self, net: LTNet, cfg: Config) -> list[dict[str, Any]]:
        return [{"params": [p for p in net.parameters() if p.requires_grad]}]


TRAIN_METHODS: Registry[Callable[[], TrainMethod]] = Registry("training method")


class StandardMethod(MethodDefaults):
    """``kt`` and ``ce``: the linear head by CE / balanced softmax, the KT head distilled from
    the NCM teacher (``kt`` with ``kt.enabled``), mixup (docs/methods.md#kt, #mixup). ``ce`` is
    the same network without the KT head; its memory stays where ``memory.enabled``, so both
    NCM heads are scored."""

    def __init__(self, *, kt: bool) -> None:
        self.kt = kt
        self.sections = ("kt",) if kt else ()

    def heads(self, cfg: Config) -> tuple[str, ...]:
        return ("linear", "kt") if self.kt and cfg.kt.enabled else ("linear",)

    def has_memory(self, cfg: Config) -> bool:
        # the KT head's teacher is read from the memory
        return cfg.memory.enabled or "kt" in self.heads(cfg)

    def problems(self, cfg: Config, checks: Checks) -> list[str]:
        if "kt" in self.heads(cfg) and not cfg.memory.enabled:
            return [
                "memory.enabled=false with train.method=kt: the memory is the KT head's "
                "teacher, so the KT head would train as a second plain CE head and the NCM heads "
                "would still be scored; set kt.enabled=false as well (no memory, no NCM or KT "
                "head: the linear head alone) or keep memory.enabled=true"
            ]
        return []

    def wrap(self, net: LTNet, cfg: Config) -> nn.Module:
        from ltray.train.standard import TrainForward

        return TrainForward(net, detach_kt=cfg.kt.detach_feature)

    def loss(
        self, net: LTNet, fwd: nn.Module, x: torch.Tensor, y: torch.Tensor, sc: StepContext
    ) -> StepResult:
        from ltray.train.standard import standard_loss

        return standard_loss(net, fwd, x, y, sc)


TRAIN_METHODS.register("kt")(lambda: StandardMethod(kt=True))
TRAIN_METHODS.register("ce")(lambda: StandardMethod(kt=False))
