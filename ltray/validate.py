"""One validation pass over a run's config, before Ray starts and before any data is read.

    check_config(cfg)                                   # ConfigError listing every problem
    check_config(cfg, metrics=["val_kt_few"])           # ... and a sweep's metric
    problems = config_problems(cfg)                     # [] when the run can start

The schema (:mod:`ltray.config`) checks each key alone; this pass checks what depends on
several keys or on a registry: the backbone and method names, the dataset source and the keys
it needs (``data.root``, list files), what a method needs (``oltr.stage1``, ``lfme.experts``),
the heads the config will produce against ``eval.select_head`` and a sweep's metric, and
``memory.init_epoch`` against ``train.epochs``. Every problem is listed at once, in ltray's
words, each with its key and fix. Nothing here imports torch or reads an image: a bad
``ltray train`` or ``ltray tune`` fails in about a second.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from ltray.config import Config
from ltray.errors import ConfigError
from ltray.metrics import GROUP_NAMES

__all__ = [
    "BACKBONE_NAMES",
    "METHOD_NAMES",
    "METRIC_KEYS",
    "SELECT_KEYS",
    "has_memory",
    "empty_groups",
    "val_heads",
    "metric_names",
    "config_problems",
    "metric_problems",
    "check_config",
    "format_problems",
]

# The registries' names, known without importing torch (tests pin them to BACKBONES and
# TRAIN_METHODS, so a new entry that is not listed here fails the suite, not a user).
BACKBONE_NAMES = ("resnet10", "resnet18", "resnet32")
METHOD_NAMES = ("ce", "kt", "lfme", "lfme_expert", "oltr")
# What each head reports per split: `<split>_<head>_<key>` (ltray.train.evaluate.flat_metrics).
METRIC_KEYS = ("overall", "top1", "top5", "many", "medium", "few", "ece")
SELECT_KEYS = ("overall", "top1", "top5", "many", "medium", "few")  # accuracies (max is best)

_ROOT_NEEDED = {
    "cifar10-lt": "a CIFAR-10 ImageFolder tree (train/, test/) or torchvision copy",
    "cifar100-lt": "a CIFAR-100 ImageFolder tree (train/, test/) or torchvision copy",
    "mnist-lt": "the folder holding MNIST/raw (torchvision layout)",
    "imagefolder": "a folder with train/<class>/ and test/<class>/",
    "listfile": "the image root the list files' paths are relative to",
}
_NO_MIXUP = ("oltr", "lfme", "lfme_expert")


def has_memory(cfg: Config) -> bool:
    """Whether the network keeps the class-mean memory: ``kt`` reads its teacher from it, the
    other methods keep it where ``memory.enabled``."""
    if cfg.train.method == "kt":
        return cfg.memory.enabled or cfg.kt.enabled
    return cfg.memory.enabled


def val_heads(cfg: Config) -> dict[str, int | None]:
    """The heads scored on val during training → the first epoch (1-based) from which every
    evaluated epoch has their score; ``None``: only at some epochs (the memory's init epoch)."""
    epochs, k = cfg.train.epochs, cfg.memory.init_epoch
    heads: dict[str, int | None] = {"linear": 1}
    if cfg.train.method == "kt" and cfg.kt.enabled:
        heads["kt"] = 1
    if has_memory(cfg) and k <= epochs:
        heads["ncm_ema"] = max(k, 1)
    if cfg.eval.ncm_full == "every":
        heads["ncm_full"] = 1
    elif has_memory(cfg) and 1 <= k <= epochs:
        heads["ncm_full"] = None  # scored once, with the memory's init pass
    return heads


def metric_names(cfg: Config, *, kind: str = "train") -> list[str]:
    """Every val metric a search may name for ``cfg`` (``kind="posthoc"``: the fused ones)."""
    heads = ["fused"] if kind == "posthoc" else list(val_heads(cfg))
    return [f"val_{h}_{k}" for h in heads for k in METRIC_KEYS]


def _data_problems(cfg: Config) -> list[str]:
    from ltray.data.sources import SOURCES  # numpy only

    d = cfg.data
    if d.name not in SOURCES:
        return [f"data.name={d.name}: unknown dataset source; known: {', '.join(SOURCES.names())}"]
    out = []
    if d.name in _ROOT_NEEDED:
        what = _ROOT_NEEDED[d.name]
        if d.root is None:
            out.append(
                f"data.root is not set; data.name={d.name} needs it: set data.root to {what}"
            )
        elif "$" in d.root:
            out.append(
                f"data.root={d.root}: the variable in it is not set; export it or set the path"
            )
        elif not Path(d.root).exists() and not (d.download and d.name != "imagefolder"):
            out.append(f"data.root={d.root}: folder not found; point it at {what}")
    if d.name == "listfile":
        unset = [f"data.{k}_list" for k in ("train", "test") if getattr(d, f"{k}_list") is None]
        if unset:
            out.append(
                f"{' and '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set; "
                "data.name=listfile needs data.train_list and data.test_list "
                "(`relative/path label` lines; data.val_list optional)"
            )
        for split in ("train", "val", "test"):
            path = getattr(d, f"{split}_list")
            if path is not None and not Path(path).is_file():
                out.append(f"data.{split}_list={path}: file not found")
    return out


def _method_problems(cfg: Config) -> list[str]:
    m = cfg.train.method
    if m not in METHOD_NAMES:
        return [f"train.method={m}: unknown training method; known: {', '.join(METHOD_NAMES)}"]
    out = []
    if m in _NO_MIXUP and cfg.mixup.variant != "none":
        out.append(
            f"mixup.variant={cfg.mixup.variant}: train.method={m} is not defined with mixup; "
            "set mixup.variant=none"
        )
    if m == "oltr":
        stage1 = cfg.oltr.stage1
        if stage1 is None:
            out.append(
                "oltr.stage1 is not set; train.method=oltr is OLTR's stage 2 on top of a stage-1 "
                "run: train one with `ltray train train.method=ce` (same data.* and "
                "model.backbone) and pass oltr.stage1=RUN_DIR"
            )
        else:
            out += _run_dir_problems("oltr.stage1", stage1, "train.method=ce")
    if m == "lfme":
        if not cfg.lfme.experts:
            out.append(
                "lfme.experts is empty; train.method=lfme distils shot-group experts: train them "
                "with `ltray train train.method=lfme_expert lfme.subset=many` (and medium, few) "
                "and pass lfme.experts=[RUN_MANY,RUN_MEDIUM,RUN_FEW]"
            )
        for run in cfg.lfme.experts:
            out += _run_dir_problems("lfme.experts", run, "train.method=lfme_expert")
    if m == "lfme_expert" and cfg.lfme.subset is None:
        out.append("lfme.subset is not set; train.method=lfme_expert needs many, medium or few")
    return out


def _run_dir_problems(key: str, run: str, how: str) -> list[str]:
    path = Path(run).expanduser()
    if not (path / "config.yaml").is_file():
        return [
            f"{key}={run}: not a run directory of `ltray train` (no config.yaml); train it "
            f"with `ltray train {how}` and pass its directory"
        ]
    if not (path / "checkpoints" / "best.pt").is_file():
        return [
            f"{key}={run}: no checkpoints/best.pt (no evaluated epoch); finish it with "
            f"`ltray train --resume {run}`"
        ]
    return []


def _memory_problems(cfg: Config) -> list[str]:
    k, epochs = cfg.memory.init_epoch, cfg.train.epochs
    kt = cfg.train.method == "kt" and cfg.kt.enabled
    if kt and k >= epochs:
        return [
            f"memory.init_epoch={k} with train.epochs={epochs}: the memory is built at the end "
            f"of epoch {k}, so the KT head never sees its teacher (it trains as plain CE); set "
            f"memory.init_epoch below {epochs}"
        ]
    if has_memory(cfg) and k > epochs:
        return [
            f"memory.init_epoch={k} with train.epochs={epochs}: the memory is never built and the "
            f"NCM heads are never scored; set memory.init_epoch<={epochs} (or memory.enabled=false)"
        ]
    return []


def _why_absent(cfg: Config, head: str) -> str:
    """Why a known head is not produced by ``cfg`` ("" for a name that is no head)."""
    if head == "kt":
        if cfg.train.method == "kt":
            return " (kt.enabled=false: the KT head is off)"
        return f" (train.method={cfg.train.method} has no KT head)"
    if head in ("ncm_ema", "ncm_full"):
        return " (no memory: set memory.enabled=true and memory.init_epoch<=train.epochs)"
    return ""


def empty_groups(cfg: Config) -> dict[str, str]:
    """Shot groups the train split will not have → why (its counts, from the config alone:
    :func:`ltray.data.counts.train_counts`); ``{}`` when they cannot be known cheaply."""
    from ltray.data.counts import train_counts
    from ltray.metrics import shot_groups

    d = cfg.data
    counts = train_counts(d)
    if counts is None:
        return {}
    groups = shot_groups(counts, d.many_threshold, d.few_threshold)
    hi, lo = int(counts.max()), int(counts.min())
    split = f"{d.name}" + (f" at rho={d.imbalance_ratio:g}" if d.name != "listfile" else "")
    why = {
        "many": (
            f"{split} has no many-shot class (largest class: {hi} train images, not more "
            f"than data.many_threshold={d.many_threshold})"
        ),
        "medium": f"{split} has no medium-shot class",
        "few": (
            f"{split} has no few-shot class (smallest class: {lo} train images, not under "
            f"data.few_threshold={d.few_threshold}); a larger data.imbalance_ratio (or "
            "data.few_threshold) makes some"
        ),
    }
    return {g: why[g] for i, g in enumerate(GROUP_NAMES) if not (groups == i).any()}


def _select_group_problems(cfg: Config) -> list[str]:
    """``eval.select_group`` naming a shot group the split has no class in: no epoch would
    have a score, so no best checkpoint."""
    group = cfg.eval.select_group
    if group not in GROUP_NAMES:
        return []
    why = empty_groups(cfg).get(group)
    if not why:
        return []
    return [f"eval.select_group={group}: {why}; select on another group (e.g. overall)"]


def _metric_group_problems(cfg: Config, metrics: list[str]) -> list[str]:
    """Sweep metrics naming a shot group the split has no class in: absent from every report,
    so Ray's metric check stops each trial."""
    named = [m for m in metrics if m.rsplit("_", 1)[-1] in GROUP_NAMES]
    empty = empty_groups(cfg) if named else {}
    return [
        f"search.metric={m}: {empty[g]}; choose another metric"
        for m in named
        if (g := m.rsplit("_", 1)[-1]) in empty
    ]


def _select_problems(cfg: Config) -> list[str]:
    head, heads = cfg.eval.select_head, val_heads(cfg)
    if head in heads:
        return []
    return [
        f"eval.select_head={head}: this config has no such head on val{_why_absent(cfg, head)}; "
        f"choose one of {', '.join(heads)}"
    ]


def metric_problems(cfg: Config, metrics: list[str], *, kind: str = "train") -> list[str]:
    """Problems of a sweep's ``search.metric`` names for trials built from ``cfg``: unknown
    names, test metrics, and metrics missing from some epoch's report (Ray's strict metric
    check stops such a trial, with or without ASHA)."""
    out: list[str] = []
    if kind != "posthoc" and cfg.train.method not in METHOD_NAMES:
        return out  # the heads depend on the method, reported on its own
    valid = metric_names(cfg, kind=kind)
    heads = val_heads(cfg)
    out += _metric_group_problems(cfg, [m for m in metrics if m in valid])
    for m in metrics:
        if m.startswith("test_"):
            out.append(
                f"search.metric={m}: a sweep must not select on the test split; use "
                f"val_{m[len('test_') :]}"
            )
            continue
        if m not in valid:
            names = ["fused"] if kind == "posthoc" else list(heads)
            head = m[len("val_") :].rsplit("_", 1)[0]
            why = _why_absent(cfg, head) if kind != "posthoc" and head not in heads else ""
            close = difflib.get_close_matches(m, valid, n=1) if not why else []
            hint = f"did you mean {close[0]}? " if close else ""
            out.append(
                f"search.metric={m}: not a metric of this sweep{why}; {hint}valid: "
                f"val_{{{','.join(names)}}}_{{{','.join(METRIC_KEYS)}}}"
            )
            continue
        if kind == "posthoc":
            continue
        # Ray checks every report of a trial for the metric (and ASHA stops on it): it must be
        # there at every epoch.
        if cfg.eval.every > 1:
            out.append(
                f"search.metric={m} with eval.every={cfg.eval.every}: the epochs in between "
                "report no val metrics and Ray stops the trial; set eval.every=1 for a sweep"
            )
        head = m[len("val_") :].rsplit("_", 1)[0]
        first = heads.get(head)
        if first is None:
            out.append(
                f"search.metric={m}: ncm_full is scored on val only with eval.ncm_full=every; "
                "set eval.ncm_full=every or choose another metric"
            )
        elif first > 1:
            out.append(
                f"search.metric={m}: the EMA memory exists from epoch {first} "
                f"(memory.init_epoch={cfg.memory.init_epoch}); every epoch must report the "
                "metric: set memory.init_epoch<=1 or choose another metric"
            )
    return out


def config_problems(cfg: Config) -> list[str]:
    """Every problem of one run's config that can be found before Ray and data."""
    out = []
    if cfg.model.backbone not in BACKBONE_NAMES:
        out.append(
            f"model.backbone={cfg.model.backbone}: unknown backbone; known: "
            f"{', '.join(BACKBONE_NAMES)}"
        )
    out += _data_problems(cfg)
    out += _method_problems(cfg)
    if cfg.train.method in METHOD_NAMES:  # the heads depend on the method
        out += _memory_problems(cfg)
        out += _select_problems(cfg)
    if not any(x.startswith("data.") for x in out):
        out += _select_group_problems(cfg)
    return out


def check_config(
    cfg: Config, *, metrics: list[str] | None = None, kind: str = "train", where: str = ""
) -> None:
    """Raise one :class:`ConfigError` listing every problem of ``cfg`` (and of ``metrics``)."""
    problems = config_problems(cfg)
    if metrics:
        problems += metric_problems(cfg, metrics, kind=kind)
    if problems:
        raise ConfigError(format_problems(problems, where=where))


def format_problems(problems: list[str], *, where: str = "") -> str:
    """``"2 config problems[ in FILE]: a; b"`` (one problem: the problem alone)."""
    unique = list(dict.fromkeys(problems))
    if len(unique) == 1:
        return f"{where}: {unique[0]}" if where else unique[0]
    head = f"{len(unique)} config problems" + (f" in {where}" if where else "")
    return f"{head}: " + "; ".join(unique)
