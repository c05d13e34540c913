"""One head of a run as a plain ``nn.Module`` (images → logits tensor) and its MLflow model.

MLflow's PyTorch flavour, TorchScript and ONNX want a module whose ``forward`` returns a tensor;
:class:`~ltray.models.LTNet` returns a :class:`~ltray.models.NetOutput`. :class:`HeadModel` wraps
the network and one head:

    model = ltray.load_run(run_dir).model("kt")        # nn.Module, eval mode
    logits = model(x)                                  # [B, C]

:func:`log_model` logs it to an MLflow run under the artifact path ``model`` (input example,
signature, class names and the input spec as metadata), so that
``mlflow.pytorch.load_model("runs:/<run id>/model")`` gives the module back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ltray.models import LTNet, ncm_logits
from ltray.tracking.models import LoggedModel, log_pytorch_model, register_model
from ltray.tracking.models import using_tracking_uri as _using_tracking_uri  # noqa: F401

if TYPE_CHECKING:
    from ltray.inference.load import LoadedRun

__all__ = ["HeadModel", "log_model", "register_model", "MODEL_ARTIFACT"]

MODEL_ARTIFACT = "model"


class HeadModel(nn.Module):
    """Images [B, C_in, S, S] (normalised as the run's ``input`` spec says) → logits [B, C] of
    one head.

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
            from ltray.errors import ConfigError

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


def log_model(
    run: LoadedRun, *, run_id: str, tracking_uri: str, head: str | None = None
) -> LoggedModel:
    """Log ``run``'s ``head`` (default: its ``eval.select_head``) to the MLflow run ``run_id`` in
    the PyTorch flavour under ``model``, with an input example (2 zero-mean images), the
    signature inferred from it, and the classes and input spec as metadata (the MLflow calls:
    :func:`ltray.tracking.models.log_pytorch_model`). Returns the model's ``runs:/<run id>/model``
    URI and MLflow model id."""
    import ltray

    head = head or run.config.eval.select_head
    if head not in run.heads:
        head = "linear"
    model = run.model(head).cpu()
    s = run.input
    example = torch.zeros(2, s.in_channels, s.image_size, s.image_size)
    with torch.inference_mode():
        out = model(example)
    metadata: dict[str, Any] = {
        "ltray_version": ltray.__version__,
        "head": head,
        "class_names": run.class_names,
        "input": {k: v for k, v in vars(s).items()},
        "run_dir": str(run.run_dir),
    }
    torch_req = f"torch=={torch.__version__.split('+')[0]}"
    # torch.export (``pt2``) first: the saved graph loads without ltray installed. A network
    # export cannot trace is pickled instead, which needs ltray to load.
    return log_pytorch_model(
        model,
        example.numpy(),
        out.numpy(),
        run_id=run_id,
        tracking_uri=tracking_uri,
        name=MODEL_ARTIFACT,
        metadata=metadata,
        requirements=[("pt2", [torch_req]), ("pickle", [torch_req, f"ltray=={ltray.__version__}"])],
    )
