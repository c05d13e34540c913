"""Label new images with a trained run: top-k classes and probabilities per image.

    run = ltray.load_run(run_dir)
    result = predict_images(run, collect_images(["photos/"]), head="kt", topk=3)
    write_predictions_csv(result, "preds.csv")

An image PIL cannot read is not fatal: it is listed in ``result.failed`` with the reason and the
others are still predicted. Probabilities are the softmax of the head's logits (for the NCM
heads, of the cosine similarities or negative squared distances, as `ltray train` scores ECE).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ltray.errors import ConfigError
from ltray.inference.images import load_pixels
from ltray.inference.load import LoadedRun

__all__ = ["Prediction", "PredictResult", "predict_images", "write_predictions_csv"]


@dataclass
class Prediction:
    """Top-k of one image, best first: class ids, names and probabilities."""

    path: Path
    class_ids: list[int]
    labels: list[str]
    probs: list[float]


@dataclass
class PredictResult:
    head: str
    topk: int
    predictions: list[Prediction] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (path, reason)


def predict_images(
    run: LoadedRun,
    paths: list[Path],
    *,
    head: str | None = None,
    topk: int = 5,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> PredictResult:
    """Predict ``paths`` with ``head`` (default: the run's ``eval.select_head``).

    Args:
        progress: called with the number of images handled after each batch.

    Raises:
        ConfigError: unknown head or ``topk < 1``.
    """
    head = head or run.config.eval.select_head
    if head not in run.heads:
        raise ConfigError(
            f"--head {head}: not available in {run.run_dir}; its heads: {', '.join(run.heads)}"
        )
    if topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {topk}")
    k = min(topk, run.num_classes)
    model = run.model(head)  # raw pixels in, normalised inside: the exported model's path
    result = PredictResult(head=head, topk=k)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        ok, images = [], []
        for p in chunk:
            try:
                images.append(load_pixels(p, run.input))
                ok.append(p)
            except (OSError, ValueError) as exc:
                result.failed.append((p, f"{type(exc).__name__}: {exc}"))
        if images:
            with torch.inference_mode():
                probs = torch.softmax(model(torch.stack(images).to(run.device)), dim=1).cpu()
            top_p, top_i = probs.topk(k, dim=1)
            for p, ps, ids in zip(ok, top_p.tolist(), top_i.tolist(), strict=True):
                labels = [run.class_names[i] for i in ids]
                result.predictions.append(Prediction(p, ids, labels, ps))
        if progress is not None:
            progress(len(chunk))
    return result


def write_predictions_csv(result: PredictResult, path: str | Path) -> Path:
    """One row per readable image: ``path, label_1, prob_1, ..., label_k, prob_k, head``;
    unreadable images follow with an empty prediction and the reason in ``error``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = ["path"]
    for r in range(1, result.topk + 1):
        cols += [f"label_{r}", f"class_id_{r}", f"prob_{r}"]
    cols += ["head", "error"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for pred in result.predictions:
            row: list[object] = [str(pred.path)]
            for label, cid, p in zip(pred.labels, pred.class_ids, pred.probs, strict=True):
                row += [label, cid, f"{p:.6f}"]
            w.writerow([*row, result.head, ""])
        for bad, reason in result.failed:
            w.writerow([str(bad), *[""] * (3 * result.topk), result.head, reason])
    return path
