"""A finished run as a model: ``load_run(run_dir)`` rebuilds the network of an `ltray train` run.

    run = ltray.load_run("~/.ltray/runs/digits-lt-kt-20260101-120000")   # or "runs:/<run id>"
    # (``ltray.load_run`` also opens MLflow URIs: ltray.tracking.models.load_run)
    logits = run.logits(x)                 # {"linear": [B, C], "ncm_ema": ..., "kt": ...}
    run.class_names[logits["kt"].argmax(1)[0]]

The network comes back with every head and the class-mean memory, the best-val weights
(``checkpoints/best.pt``, the ones the run's results and cache were computed with), in eval
mode. The full-pass NCM head is rebuilt from the run's cached train features, as `ltray train`
scored it. What a new image needs (class names, channels, size, normalisation) is read from the
cache's ``meta.json``; runs written before ltray recorded it there fall back to preparing the
run's data split once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ltray.config import Config
from ltray.data import prepare_data
from ltray.errors import RunDirError
from ltray.inference.model import InputSpec, PixelModel
from ltray.metrics import shot_groups
from ltray.models import LTNet, class_sums, ncm_logits, normalize
from ltray.train.catalog import get_method
from ltray.train.rundir import RunDir, input_spec, pixel_examples

__all__ = ["InputSpec", "LoadedRun", "load_run"]

HEAD_ORDER = ("linear", "ncm_ema", "ncm_full", "kt")


@dataclass
class LoadedRun:
    """A trained network and what is needed to use it.

    Attributes:
        net: the network (backbone, linear head, KT head if trained, memory), eval mode.
        config: the run's resolved config.
        class_names: [C] names, index = label.
        class_counts: [C] train images per class (the run's shot groups come from these).
        input: how images are preprocessed for ``net``.
        run_dir: the run directory.
        ncm_full_means: [C, d] full-pass class means of normalised train features, or None.
        ncm_full_valid: [C] bool, classes with train images.
        mlflow_run_id: the MLflow run the model came from (``runs:/`` URIs), else None.
    """

    net: LTNet
    config: Config
    class_names: list[str]
    class_counts: np.ndarray
    input: InputSpec
    run_dir: Path
    ncm_full_means: Tensor | None = None
    ncm_full_valid: Tensor | None = None
    mlflow_run_id: str | None = None
    checkpoint: Path | None = field(default=None)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def groups(self) -> np.ndarray:
        """[C] shot group per class (0 many, 1 medium, 2 few) by the run's thresholds."""
        d = self.config.data
        return shot_groups(self.class_counts, d.many_threshold, d.few_threshold)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def heads(self) -> list[str]:
        """The heads this run can score with, in display order."""
        have = {"linear"}
        mem = self.net.memory
        if mem is not None and bool(mem.initialized):
            have.add("ncm_ema")
        if self.ncm_full_means is not None:
            have.add("ncm_full")
        if getattr(self.net, "kt_head", None) is not None:
            have.add("kt")
        return [h for h in HEAD_ORDER if h in have]

    def to(self, device: torch.device | str) -> LoadedRun:
        self.net.to(device)
        if self.ncm_full_means is not None:
            self.ncm_full_means = self.ncm_full_means.to(device)
            self.ncm_full_valid = self.ncm_full_valid.to(device)  # type: ignore[union-attr]
        return self

    def head_logits(self, features: Tensor, kt_logits: Tensor | None = None) -> dict[str, Tensor]:
        """Logits [B, C] of every head from features [B, d] (and the KT head's own logits)."""
        out = self.net.heads(features)
        logits = {"linear": out.logits}
        mem = self.net.memory
        metric = self.config.memory.metric
        if mem is not None and bool(mem.initialized):
            logits["ncm_ema"] = ncm_logits(features, mem.means, metric=metric, valid=mem.valid)
        if self.ncm_full_means is not None:
            logits["ncm_full"] = ncm_logits(
                features, self.ncm_full_means, metric=metric, valid=self.ncm_full_valid
            )
        if out.kt_logits is not None:
            logits["kt"] = out.kt_logits
        return {h: logits[h].float() for h in HEAD_ORDER if h in logits}

    @torch.inference_mode()
    def logits(self, x: Tensor) -> dict[str, Tensor]:
        """Images [B, C_in, S, S] normalised as ``self.input`` says (see
        :func:`ltray.inference.images.load_image`) → logits [B, C] of every head."""
        return self.head_logits(self.net.backbone(x.to(self.device)).float())

    def model(self, head: str | None = None) -> torch.nn.Module:
        """A plain ``nn.Module``: raw images uint8 [B, C_in, N, N] (0..255, or float in [0, 1])
        → logits [B, C] of ``head`` (default: the run's ``eval.select_head``), normalised inside
        with ``self.input`` (:class:`~ltray.inference.model.PixelModel`), e.g. for
        ``mlflow.pytorch``."""
        return PixelModel.from_run(self, head or self.config.eval.select_head)

    def input_example(self) -> np.ndarray:
        """uint8 [2, C_in, N, N]: two real images of the run's test split as the exported model
        takes them (saved with the cache; for older runs read from the run's data again)."""

        example = RunDir(self.run_dir).input_example()
        if example is not None:
            return example

        data = prepare_data(self.config.data, check_images=False, write_splits=False)
        return pixel_examples(data)


def load_run(run: str | Path, *, device: torch.device | str = "cpu") -> LoadedRun:
    """Rebuild the network of a finished run with its best-val weights, in eval mode.

    Args:
        run: a run directory of `ltray train` (or a trial folder of `ltray tune`); an MLflow
            ``runs:/<run id>`` URI is opened by ``ltray.load_run``
            (:func:`ltray.tracking.models.load_run`).
        device: where the network is put.

    Raises:
        RunDirError: the directory, its config or its checkpoint is missing.
    """
    if str(run).startswith("runs:/"):
        raise RunDirError(
            f"{run}: an MLflow run URI; open it with ltray.load_run (ltray.tracking.load_run)"
        )
    run_dir = Path(run).expanduser().resolve()
    if not run_dir.is_dir():
        raise RunDirError(
            f"{run_dir}: no such run directory; pass a folder written by `ltray train`"
        )
    mlflow_run_id = None
    run_folder = RunDir(run_dir)
    cfg = run_folder.read_config()
    ckpt = run_folder.model_checkpoint()  # best.pt, else last.pt
    if ckpt is None:
        raise RunDirError(
            f"{run_dir / RunDir.CHECKPOINTS}: no best.pt or last.pt; the run never finished an "
            f"epoch, continue it with `ltray train --resume {run_dir}`"
        )
    state = RunDir.load_state(ckpt)["model"]
    meta = run_folder.cache_meta()
    names, counts, spec = _describe(cfg, meta)
    net = _build(cfg, spec, names, counts)
    net.load_state_dict(state)
    net.eval()
    means, valid = _full_pass_means(run_folder.cache_dir, len(names), meta)
    loaded = LoadedRun(
        net=net,
        config=cfg,
        class_names=names,
        class_counts=counts,
        input=spec,
        run_dir=run_dir,
        ncm_full_means=means,
        ncm_full_valid=valid,
        mlflow_run_id=mlflow_run_id,
        checkpoint=ckpt,
    )
    return loaded.to(device)


def _describe(cfg: Config, meta: dict[str, Any]) -> tuple[list[str], np.ndarray, InputSpec]:
    """Class names, train counts and input spec: from the cache, else from the data."""
    if "class_names" in meta and "input" in meta:
        counts = np.asarray(meta["class_counts"], dtype=np.int64)
        return list(meta["class_names"]), counts, InputSpec.from_dict(meta["input"])

    data = prepare_data(cfg.data, check_images=False, write_splits=False)
    return list(data.class_names), data.class_counts, InputSpec.from_dict(input_spec(data))


def _build(cfg: Config, spec: InputSpec, names: list[str], counts: np.ndarray) -> LTNet:
    """An untrained network of the run's architecture, from its training method's ``restore``
    hook (its weights are loaded next)."""
    small = cfg.model.small_input if cfg.model.small_input is not None else spec.small_input
    return get_method(cfg).restore(
        cfg,
        num_classes=len(names),
        in_channels=spec.in_channels,
        small_input=small,
        class_counts=counts,
    )


def _full_pass_means(
    cache_dir: Path, num_classes: int, meta: dict[str, Any]
) -> tuple[Tensor | None, Tensor | None]:
    """Class means of the cached (best-val) train features, as `ltray train` scored NCM-full."""
    path = cache_dir / "train.parquet"
    if not path.is_file() or "feat_dim" not in meta:
        return None, None
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["label", "feature"])
    col = table.column("feature").combine_chunks()
    feats = col.values.to_numpy(zero_copy_only=False).reshape(len(col), int(meta["feat_dim"]))
    labels = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
    h = normalize(torch.from_numpy(np.array(feats, dtype=np.float32)))  # a writable copy
    sums, n = class_sums(h, labels, num_classes)
    return sums / n.clamp_min(1).unsqueeze(1), n > 0
