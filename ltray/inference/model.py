"""One head of a run as a plain ``nn.Module`` (images → logits tensor) and its MLflow model.

MLflow's PyTorch flavour, TorchScript and ONNX want a module whose ``forward`` returns a tensor;
:class:`~ltray.models.LTNet` returns a :class:`~ltray.models.NetOutput`. Two wrappers:

- :class:`PixelModel` takes images as a user has them — **uint8 [B, C_in, N, N], values
  0..255, channels first** (gray: 1 channel; colour: RGB), N = the run's pixel size
  (``run.input.pixel_size``: 8 for digits, 28 for MNIST, 32 for CIFAR, the crop size S for
  the imagenet family, whose images are resized to S·256/224 and centre-cropped to S first,
  as ``ltray predict`` does) — and normalises inside with the run's own input spec (mean and
  std per channel, resize to the network's input size), then scores one head. In Python it
  also takes float images in [0, 1]; the exported MLflow model takes uint8 only (the
  ``torch.export`` graph is traced on uint8, another dtype is refused);
- :class:`HeadModel` takes images already normalised as ``run.input`` says (what
  ``run.logits`` takes).

    model = ltray.load_run(run_dir).model("kt")        # PixelModel, eval mode
    logits = model(images)                             # uint8 [B, C_in, N, N] → [B, C]

:func:`ltray.tracking.models.log_model` logs the :class:`PixelModel` to an MLflow run under
the artifact path ``model`` (a real image of the run's data as input example, the uint8
signature inferred from it, class names and input spec as metadata), so that
``mlflow.pytorch.load_model("runs:/<run id>/model")(images)`` gives what ``ltray predict``
gives for the same files.

Mean and std come from the run's recorded input spec (``run.input``, read from its cache's
``meta.json`` by :func:`ltray.inference.load.load_run`) and nowhere else: never from the
family's constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ltray.errors import ConfigError
from ltray.models import LTNet, ncm_logits

if TYPE_CHECKING:
    from ltray.inference.load import LoadedRun

__all__ = ["InputSpec", "HeadModel", "PixelModel"]


@dataclass(frozen=True)
class InputSpec:
    """How an image enters the network.

    ``native_size``: the size images are decoded at (in-memory families: 8 for digits, 32 for
    CIFAR); ``image_size``: the network's input size S; ``mean``/``std``: per channel, of
    images scaled to [0, 1].
    """

    family: str
    in_channels: int
    image_size: int
    native_size: int
    small_input: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def pixel_size(self) -> int:
        """The size N of the raw images the run's :class:`~ltray.inference.model.PixelModel`
        takes: the decode size of in-memory families (resized to ``image_size`` inside), the
        crop size of the imagenet family (resize + centre crop happen before)."""
        return self.image_size if self.family == "imagenet" else self.native_size

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        return cls(
            family=str(d["family"]),
            in_channels=int(d["in_channels"]),
            image_size=int(d["image_size"]),
            native_size=int(d.get("native_size", d["image_size"])),
            small_input=bool(d["small_input"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
        )


class HeadModel(nn.Module):
    """Images [B, C_in, S, S] normalised as the run's ``input`` spec says → logits [B, C] of
    one head (:class:`PixelModel` takes raw pixels).

    Args:
        net: the trained network.
        head: ``linear``, ``kt``, ``ncm_ema`` (the network's EMA memory) or ``ncm_full``
            (``means``/``valid`` given).
        metric: the NCM metric (``cosine`` or ``euclidean``).
        means: [C, d] full-pass class means for ``ncm_full``.
        valid: [C] bool, classes with train images.
        class_names: [C] names, kept with the model.
    """

    def __init__(
        self,
        net: LTNet,
        *,
        head: str,
        metric: str = "cosine",
        means: Tensor | None = None,
        valid: Tensor | None = None,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        if head == "kt" and getattr(net, "kt_head", None) is None:
            raise ValueError("head 'kt': this network has no KT head")
        if head == "ncm_ema" and (net.memory is None or not bool(net.memory.initialized)):
            raise ValueError("head 'ncm_ema': this network has no initialised memory")
        if head == "ncm_full" and means is None:
            raise ValueError("head 'ncm_full' needs the full-pass class means")
        if head not in ("linear", "kt", "ncm_ema", "ncm_full"):
            raise ValueError(f"unknown head {head!r}; known: linear, ncm_ema, ncm_full, kt")
        self.net = net
        self.head = head
        self.metric = metric
        self.class_names = list(class_names or [])
        self.register_buffer("means", means.clone() if means is not None else None)
        self.register_buffer("valid", valid.clone() if valid is not None else None)
        self.eval()

    @classmethod
    def from_run(cls, run: LoadedRun, head: str) -> HeadModel:
        if head not in run.heads:
            raise ConfigError(
                f"head {head!r}: not available in {run.run_dir}; its heads: {', '.join(run.heads)}"
            )
        full = head == "ncm_full"
        return cls(
            run.net,
            head=head,
            metric=run.config.memory.metric,
            means=run.ncm_full_means if full else None,
            valid=run.ncm_full_valid if full else None,
            class_names=run.class_names,
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.net.backbone(x)
        if self.head == "linear":
            return self.net.linear(h).float()
        if self.head == "kt":
            return self.net.kt_head(h).float()  # type: ignore[misc]
        if self.head == "ncm_ema":
            mem = self.net.memory
            return ncm_logits(h, mem.means, metric=self.metric, valid=mem.valid)  # type: ignore[union-attr]
        return ncm_logits(h, self.means, metric=self.metric, valid=self.valid)


class PixelModel(nn.Module):
    """Images as a user has them → logits [B, C] of one head.

    Input: uint8 [B, C_in, N, N] with values 0..255 (or, in Python, float in [0, 1]),
    channels first, N = ``spec.pixel_size``. Inside: ``(x/255 − mean)/std`` per channel with
    the run's recorded mean and std (the loaders' formula, :func:`~ltray.data.device.
    normalize_nhwc`), a bilinear resize to ``spec.image_size`` where the run trained at another
    size, then the head (:class:`HeadModel`).

    Args:
        head: the head's module (normalised images → logits).
        spec: the run's input spec (``run.input``): the one source of mean and std.
    """

    def __init__(self, head: HeadModel, spec: InputSpec) -> None:
        super().__init__()
        self.head = head
        self.in_channels = int(spec.in_channels)
        self.pixel_size = int(spec.pixel_size)
        self.image_size = int(spec.image_size)
        device = next(head.parameters()).device  # the run's device (cpu, cuda)
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=device)
        std = torch.tensor(spec.std, dtype=torch.float32, device=device)
        # The same two constants as normalize_nhwc: the same float results, element by element.
        self.register_buffer("shift", (-mean / std).view(1, -1, 1, 1))
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, -1, 1, 1))
        self.class_names = head.class_names
        self.eval()

    @classmethod
    def from_run(cls, run: LoadedRun, head: str) -> PixelModel:
        return cls(HeadModel.from_run(run, head), run.input)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[-1] != self.pixel_size:
            raise ValueError(
                f"expected images [B, {self.in_channels}, {self.pixel_size}, {self.pixel_size}] "
                f"(channels first), got {list(x.shape)}"
            )
        if x.dtype == torch.uint8:
            pixels = x.float()
        elif x.is_floating_point():
            pixels = x.float() * 255.0  # [0, 1] images
        else:
            raise ValueError(f"expected uint8 (0..255) or float ([0, 1]) images, got {x.dtype}")
        y = torch.addcmul(self.shift, pixels, self.scale)
        if self.image_size != self.pixel_size:
            y = nn.functional.interpolate(
                y, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        return self.head(y)
