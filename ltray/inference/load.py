"""A finished run as a model: ``load_run(run_dir)`` rebuilds the network of an `ltray train` run.

    run = ltray.load_run("~/.ltray/runs/digits-lt-kt-20260101-120000")   # or "runs:/<run id>"
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

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ltray.config import Config, build_config, read_yaml
from ltray.errors import RunDirError
from ltray.metrics import shot_groups
from ltray.models import LTNet, class_sums, ncm_logits, normalize

__all__ = ["InputSpec", "LoadedRun", "load_run", "resolve_run"]

HEAD_ORDER = ("linear", "ncm_ema", "ncm_full", "kt")


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
        from ltray.inference.model import PixelModel

        return PixelModel.from_run(self, head or self.config.eval.select_head)

    def input_example(self) -> np.ndarray:
        """uint8 [2, C_in, N, N]: two real images of the run's test split as the exported model
        takes them (saved with the cache; for older runs read from the run's data again)."""
        from ltray.train.rundir import read_input_example

        example = read_input_example(self.run_dir)
        if example is not None:
            return example
        from ltray.data import prepare_data
        from ltray.train.rundir import pixel_examples

        data = prepare_data(self.config.data, check_images=False, write_splits=False)
        return pixel_examples(data)


def resolve_run(run: str | Path, *, tracking_uri: str | None = None) -> tuple[Path, str | None]:
    """A run directory, or an MLflow ``runs:/<id>`` URI (the folder its ``ltray.run_dir`` tag
    names) → (run directory, MLflow run id or None). ``tracking_uri`` defaults to
    ``MLFLOW_TRACKING_URI``, else ltray's default store."""
    text = str(run)
    if text.startswith("runs:/"):
        return _from_mlflow(text, tracking_uri), text[len("runs:/") :].strip("/").split("/")[0]
    path = Path(text).expanduser().resolve()
    if not path.is_dir():
        raise RunDirError(f"{path}: no such run directory; pass a folder written by `ltray train`")
    return path, None


def _from_mlflow(uri: str, tracking_uri: str | None) -> Path:
    import os

    from ltray.tracking import resolve_tracking_uri, run_tags_of

    run_id = uri[len("runs:/") :].strip("/").split("/")[0]
    store = resolve_tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    try:
        tags = run_tags_of(run_id, store)
    except LookupError as exc:
        raise RunDirError(
            f"{uri}: {exc}; set MLFLOW_TRACKING_URI to the store the run was logged to"
        ) from None
    local = tags.get("ltray.run_dir")
    if local and (Path(local) / "config.yaml").is_file():
        return Path(local)
    raise RunDirError(
        f"{uri}: the run's directory {local or '(unknown)'} is not on this machine; copy it "
        f"here, or load the network alone with mlflow.pytorch.load_model('{uri}/model')"
    )


def load_run(
    run: str | Path, *, device: torch.device | str = "cpu", tracking_uri: str | None = None
) -> LoadedRun:
    """Rebuild the network of a finished run with its best-val weights, in eval mode.

    Args:
        run: a run directory of `ltray train` (or a trial folder of `ltray tune`), or an MLflow
            ``runs:/<run id>`` URI of such a run.
        device: where the network is put.
        tracking_uri: the MLflow store of a ``runs:/`` URI (default: ``MLFLOW_TRACKING_URI``,
            else ltray's default store).

    Raises:
        RunDirError: the directory, its config or its checkpoint is missing.
    """
    run_dir, mlflow_run_id = resolve_run(run, tracking_uri=tracking_uri)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise RunDirError(f"{cfg_path}: missing; pass a run directory written by `ltray train`")
    raw, lines = read_yaml(cfg_path)
    cfg = build_config(raw, source=str(cfg_path), lines=lines)
    ckpt = run_dir / "checkpoints" / "best.pt"
    if not ckpt.is_file():
        ckpt = run_dir / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        raise RunDirError(
            f"{run_dir / 'checkpoints'}: no best.pt or last.pt; the run never finished an "
            f"epoch, continue it with `ltray train --resume {run_dir}`"
        )
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    meta_path = run_dir / "cache" / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    names, counts, spec = _describe(cfg, meta)
    net = _build(cfg, spec, names, counts)
    net.load_state_dict(state)
    net.eval()
    means, valid = _full_pass_means(run_dir / "cache", len(names), meta)
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
    from ltray.data import prepare_data
    from ltray.train.rundir import input_spec

    data = prepare_data(cfg.data, check_images=False, write_splits=False)
    return list(data.class_names), data.class_counts, InputSpec.from_dict(input_spec(data))


def _build(cfg: Config, spec: InputSpec, names: list[str], counts: np.ndarray) -> LTNet:
    """An untrained network of the run's architecture (its weights are loaded next)."""
    from ltray.models import build_network

    small = cfg.model.small_input if cfg.model.small_input is not None else spec.small_input
    kwargs = {"num_classes": len(names), "in_channels": spec.in_channels, "small_input": small}
    method = cfg.train.method
    if method in ("kt", "ce", "lfme"):  # the student of LFME is a plain network, no KT head
        kt = method == "kt" and cfg.kt.enabled
        plain = cfg.model_copy(update={"kt": cfg.kt.model_copy(update={"enabled": kt})})
        return build_network(plain, **kwargs)
    if method == "lfme_expert":
        from ltray.previous.lfme import build_expert_net
        from ltray.previous.runs import group_classes

        groups = shot_groups(counts, cfg.data.many_threshold, cfg.data.few_threshold)
        gid = ("many", "medium", "few").index(str(cfg.lfme.subset))
        return build_expert_net(cfg, classes=group_classes(groups, gid), **kwargs)
    # Other methods (OLTR) build from their own inputs (a stage-1 run, a pass over the data).
    from ltray.data import prepare_data
    from ltray.train.catalog import get_method

    data = prepare_data(cfg.data, check_images=False, write_splits=False)
    return get_method(cfg).build(cfg, data=data, **kwargs).cpu()


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
