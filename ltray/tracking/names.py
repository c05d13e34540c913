"""The one naming scheme of every metric ltray logs to MLflow, and its units.

An accuracy-like number is named ``{split}_{head}_{group}`` (``val_kt_few``,
``test_linear_overall``), with a ``_{stat}`` suffix when it summarises several seeds
(``test_ce_overall_mean``):

- ``split``: ``train``, ``val`` or ``test``;
- ``head``: what produced the predictions: a network head (``linear``, ``ncm_ema``, ``ncm_full``,
  ``kt``); ``fused`` in a post-hoc trial of `ltray tune` (its method is a param);
  ``fused_<method>`` in `ltray fuse`, which fits several methods into one run
  (``test_fused_llw_few``); a table row in `ltray reproduce` (``test_oltr_few_mean``,
  ``test_mixup_input_0.3_instance_overall_std``);
- ``group``: ``many``, ``medium``, ``few``, ``overall`` (top-1 accuracy of the shot group),
  ``top1``, ``top5``, ``ece``;
- ``stat``: ``mean`` or ``std`` over seeds (sample std).

Every such value is a fraction in [0, 1], in every command; only what is made for people to
read (printed tables, the reproduction's CSV and charts) shows percent.
Other numbers keep plain names: ``lr``, ``images_per_s``, ``epoch_time_s``, ``train_loss`` and
its parts (``train_loss_kt``, LFME's ``train_loss_kd_<group>``), ``train_kt_mask_<group>`` (the
share of a group's samples the KT mask keeps, a fraction too), and
``chosen_<setting>`` / ``chosen_<method>_<setting>`` for the values a post-hoc method chose on
val. Pure functions: no MLflow here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "SPLITS",
    "GROUPS",
    "SCORES",
    "STATS",
    "metric_name",
    "parse_metric",
    "is_fraction_metric",
    "fraction_problems",
    "head_metrics",
    "result_metrics",
    "fused_head",
    "chosen_metrics",
    "numeric",
]

SPLITS = ("train", "val", "test")
GROUPS = ("many", "medium", "few", "overall")
SCORES = (*GROUPS, "top1", "top5", "ece")  # fractions in [0, 1]
STATS = ("mean", "std")


def metric_name(split: str, head: str, group: str, stat: str | None = None) -> str:
    """``metric_name("test", "kt", "few") == "test_kt_few"``; with ``stat`` a suffix."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: one of {SPLITS}")
    if group not in SCORES:
        raise ValueError(f"group {group!r}: one of {SCORES}")
    if stat is not None and stat not in STATS:
        raise ValueError(f"stat {stat!r}: one of {STATS}")
    if not head or head.startswith("_") or head.endswith("_"):
        raise ValueError(f"head {head!r}: a non-empty name")
    name = f"{split}_{head}_{group}"
    return f"{name}_{stat}" if stat else name


def parse_metric(name: str) -> tuple[str, str, str, str | None] | None:
    """``(split, head, group, stat)`` of a scheme name, ``None`` for any other name."""
    parts = name.split("_")
    if len(parts) < 3 or parts[0] not in SPLITS:
        return None
    stat = None
    if parts[-1] in STATS:
        stat = parts.pop()
    if len(parts) < 3 or parts[-1] not in SCORES or parts[1] == "loss":
        return None  # train_loss_kd_many: a loss per group, not a score
    return parts[0], "_".join(parts[1:-1]), parts[-1], stat


def is_fraction_metric(name: str) -> bool:
    """Whether ``name`` must hold a fraction in [0, 1] (every scheme name)."""
    return parse_metric(name) is not None


def fraction_problems(metrics: Mapping[str, Any]) -> list[str]:
    """``"name=value"`` for each scheme metric outside [0, 1] (a percent logged by mistake)."""
    bad = []
    for k, v in metrics.items():
        if is_fraction_metric(k) and numeric(v) and not -1e-9 <= float(v) <= 1 + 1e-9:
            bad.append(f"{k}={v}")
    return bad


def numeric(v: Any) -> bool:
    """A finite int or float (bools, None and NaN are not metrics)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def head_metrics(
    split: str, head: str, values: Mapping[str, Any], *, stat: str | None = None
) -> dict[str, float]:
    """``{"val_kt_many": ..}`` from one head's numbers on one split (``HeadMetrics.summary()``
    or a ``results.json`` entry); absent groups (``None``) and other keys are left out."""
    return {
        metric_name(split, head, g, stat): float(values[g])
        for g in SCORES
        if numeric(values.get(g))
    }


def result_metrics(
    results: Mapping[str, Any], splits: Iterable[str] = ("test",)
) -> dict[str, float]:
    """Every head of a ``results.json`` on ``splits`` (default: the best checkpoint's test
    numbers): ``{"test_kt_overall": ..., "test_linear_few": ...}``."""
    out: dict[str, float] = {}
    for head, per_split in results["heads"].items():
        for split in splits:
            if split in per_split:
                out.update(head_metrics(split, head, per_split[split]))
    return out


def fused_head(method: str) -> str:
    """The head name of a post-hoc method's predictions in `ltray fuse` (``fused_llw``)."""
    return f"fused_{method}"


def chosen_metrics(chosen: Mapping[str, Any], method: str | None = None) -> dict[str, float]:
    """The numeric values a post-hoc method chose on val: ``chosen_<k>`` (a post-hoc trial,
    one method per run) or ``chosen_<method>_<k>`` (`ltray fuse`)."""
    prefix = f"chosen_{method}_" if method else "chosen_"
    return {f"{prefix}{k}": float(v) for k, v in chosen.items() if numeric(v)}
