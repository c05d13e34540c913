"""The previous works as training methods: their rules here, their networks and losses in
:mod:`ltray.previous.oltr` and :mod:`ltray.previous.lfme` (imported when a hook first runs, so
:mod:`ltray.validate` reads these rules without torch).

- ``oltr``: OLTR stage 2 on top of a stage-1 run (``oltr.stage1``), class-aware sampling;
- ``lfme_expert``: an LFME expert, trained on one shot group (``lfme.subset``);
- ``lfme``: the LFME student, distilled from the experts (``lfme.experts``).

None of them is defined with mixup, and none has a KT head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ltray.config import Config
from ltray.metrics import shot_groups
from ltray.train.methods import TRAIN_METHODS, Checks, MethodDefaults, StepContext, StepResult

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ltray.models import LTNet

__all__ = ["OLTRMethod", "ExpertMethod", "StudentMethod"]


class OLTRMethod(MethodDefaults):
    """``train.method=oltr``: OLTR's stage 2 (docs/methods.md#oltr)."""

    mixup = False
    sections = ("oltr",)

    def sampler(self, cfg: Config) -> str:
        return "class_balanced"  # OLTR's class-aware sampling

    def problems(self, cfg: Config, checks: Checks) -> list[str]:
        if cfg.oltr.stage1 is None:
            return [
                "oltr.stage1 is not set; train.method=oltr is OLTR's stage 2 on top of a "
                "stage-1 run: train one with `ltray train train.method=ce` (same data.* and "
                "model.backbone) and pass oltr.stage1=RUN_DIR"
            ]
        return checks.run_dir("oltr.stage1", cfg.oltr.stage1, "train.method=ce")

    def build(
        self, cfg: Config, *, num_classes: int, in_channels: int, small_input: bool, data: Any
    ) -> LTNet:
        from ltray.previous.oltr import build_oltr

        return build_oltr(
            cfg,
            num_classes=num_classes,
            in_channels=in_channels,
            small_input=small_input,
            data=data,
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
        from ltray.previous.oltr import oltr_skeleton

        return oltr_skeleton(
            cfg, num_classes=num_classes, in_channels=in_channels, small_input=small_input
        )

    def param_groups(self, net: LTNet, cfg: Config) -> list[dict[str, Any]]:
        from ltray.previous.oltr import oltr_param_groups

        return oltr_param_groups(net, cfg)

    def wrap(self, net: LTNet, cfg: Config) -> nn.Module:
        from ltray.previous.oltr import oltr_wrap

        return oltr_wrap(net, cfg)

    def loss(
        self, net: LTNet, fwd: nn.Module, x: torch.Tensor, y: torch.Tensor, sc: StepContext
    ) -> StepResult:
        from ltray.previous.oltr import oltr_loss

        return oltr_loss(net, fwd, x, y, sc)


class _LFMEMethod(MethodDefaults):
    mixup = False
    sections = ("lfme",)

    def wrap(self, net: LTNet, cfg: Config) -> nn.Module:
        from ltray.train.standard import TrainForward

        return TrainForward(net, detach_kt=True)


class ExpertMethod(_LFMEMethod):
    """``train.method=lfme_expert``: CE among one shot group's classes, on its images only."""

    def problems(self, cfg: Config, checks: Checks) -> list[str]:
        subset = cfg.lfme.subset
        if subset is None:
            return ["lfme.subset is not set; train.method=lfme_expert needs many, medium or few"]
        if why := checks.empty_groups().get(str(subset)):
            return [
                f"lfme.subset={subset}: {why}; the expert would have no train image: train "
                "experts of the groups the split has"
            ]
        return []

    def prepare_data(self, data: Any, cfg: Config) -> Any:
        from ltray.previous.lfme import expert_data

        return expert_data(data, cfg)

    def build(
        self, cfg: Config, *, num_classes: int, in_channels: int, small_input: bool, data: Any
    ) -> LTNet:
        from ltray.previous.lfme import build_expert

        return build_expert(
            cfg,
            num_classes=num_classes,
            in_channels=in_channels,
            small_input=small_input,
            groups=None if data is None else data.groups,
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
        from ltray.previous.lfme import build_expert

        groups = shot_groups(class_counts, cfg.data.many_threshold, cfg.data.few_threshold)
        return build_expert(
            cfg,
            num_classes=num_classes,
            in_channels=in_channels,
            small_input=small_input,
            groups=groups,
        )

    def loss(
        self, net: LTNet, fwd: nn.Module, x: torch.Tensor, y: torch.Tensor, sc: StepContext
    ) -> StepResult:
        from ltray.previous.lfme import expert_loss

        return expert_loss(net, fwd, x, y, sc)


class StudentMethod(_LFMEMethod):
    """``train.method=lfme``: the student, distilled from frozen experts with self-paced expert
    and curriculum instance selection (docs/methods.md#lfme)."""

    def __init__(self) -> None:
        self.student: Any = None  # ltray.previous.lfme.Student, made by build

    @property
    def experts(self) -> list[Any]:
        return [] if self.student is None else self.student.experts

    def problems(self, cfg: Config, checks: Checks) -> list[str]:
        if not cfg.lfme.experts:
            return [
                "lfme.experts is empty; train.method=lfme distils shot-group experts: train them "
                "with `ltray train train.method=lfme_expert lfme.subset=many` (and medium, few) "
                "and pass lfme.experts=[RUN_MANY,RUN_MEDIUM,RUN_FEW]"
            ]
        out: list[str] = []
        for run in cfg.lfme.experts:
            out += checks.run_dir("lfme.experts", run, "train.method=lfme_expert")
        return out

    def build(
        self, cfg: Config, *, num_classes: int, in_channels: int, small_input: bool, data: Any
    ) -> LTNet:
        from ltray.previous.lfme import Student

        self.student = Student()
        return self.student.build(
            cfg,
            num_classes=num_classes,
            in_channels=in_channels,
            small_input=small_input,
            data=data,
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
        # The student is a plain network: its experts are not part of its weights.
        return MethodDefaults.build(
            self,
            cfg,
            num_classes=num_classes,
            in_channels=in_channels,
            small_input=small_input,
            data=None,
        )

    def loss(
        self, net: LTNet, fwd: nn.Module, x: torch.Tensor, y: torch.Tensor, sc: StepContext
    ) -> StepResult:
        return self.student.loss(net, fwd, x, y, sc)


TRAIN_METHODS.register("oltr")(OLTRMethod)
TRAIN_METHODS.register("lfme_expert")(ExpertMethod)
TRAIN_METHODS.register("lfme")(StudentMethod)
