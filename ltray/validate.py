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
from typing import Any

from pydantic import BaseModel

from ltray.config import Config
from ltray.data.counts import effective_profile, train_counts
from ltray.data.sources import SOURCES
from ltray.errors import ConfigError
from ltray.metrics import GROUP_NAMES, shot_groups
from ltray.train.catalog import TRAIN_METHODS
from ltray.train.methods import Checks, TrainMethod
from ltray.train.rundir import RunDir

__all__ = [
    "BACKBONE_NAMES",
    "METHOD_NAMES",
    "METRIC_KEYS",
    "SELECT_KEYS",
    "has_memory",
    "has_kt_head",
    "empty_groups",
    "run_group_problems",
    "val_heads",
    "metric_names",
    "config_problems",
    "metric_problems",
    "check_config",
    "format_problems",
    "ignored_settings",
    "ignored_problems",
]

# The backbones' names, known without importing torch (a test pins them to BACKBONES, so a new
# entry that is not listed here fails the suite, not a user). The methods' come from their
# registry, whose classes import no torch.
BACKBONE_NAMES = ("resnet10", "resnet18", "resnet32")
METHOD_NAMES = tuple(TRAIN_METHODS.names())
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


def _method(cfg: Config) -> TrainMethod | None:
    """The method ``train.method`` names (None for an unknown name, reported on its own)."""
    if cfg.train.method not in TRAIN_METHODS:
        return None
    return TRAIN_METHODS.get(cfg.train.method)()


def has_memory(cfg: Config) -> bool:
    """Whether the network keeps the class-mean memory (the method's rule: ``kt`` reads its
    teacher from it; the others keep it where ``memory.enabled``)."""
    method = _method(cfg)
    return method.has_memory(cfg) if method is not None else cfg.memory.enabled


def val_heads(cfg: Config) -> dict[str, int | None]:
    """The heads scored on val during training → the first epoch (1-based) from which every
    evaluated epoch has their score; ``None``: only at some epochs (the memory's init epoch)."""
    epochs, k = cfg.train.epochs, cfg.memory.init_epoch
    heads: dict[str, int | None] = {"linear": 1}
    if has_kt_head(cfg):
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
    """The method's own problems (its rules, :class:`~ltray.train.methods.TrainMethod`)."""
    method = _method(cfg)
    if method is None:
        return [
            f"train.method={cfg.train.method}: unknown training method; known: "
            f"{', '.join(METHOD_NAMES)}"
        ]
    out = []
    if not method.mixup and cfg.mixup.variant != "none":
        out.append(
            f"mixup.variant={cfg.mixup.variant}: train.method={cfg.train.method} is not defined "
            "with mixup; set mixup.variant=none"
        )
    checks = Checks(empty_groups=lambda: empty_groups(cfg), run_dir=_run_dir_problems)
    return out + method.problems(cfg, checks)


def _run_dir_problems(key: str, run: str, how: str) -> list[str]:
    return RunDir(run).problems(key, how)


def _non_default(section: BaseModel, names: tuple[str, ...]) -> list[str]:
    """``key=value`` of the fields of ``section`` among ``names`` that differ from their
    defaults (what a user or a preset set on purpose)."""
    out = []
    for name in names:
        value, field = getattr(section, name), type(section).model_fields[name]
        default = field.get_default(call_default_factory=True)
        if value != default:
            shown = str(value).lower() if isinstance(value, bool) else value
            out.append(f"{name}={shown}")
    return out


def has_kt_head(cfg: Config) -> bool:
    """Whether the network trains the KT head (the method's rule: ``kt`` with ``kt.enabled``)."""
    method = _method(cfg)
    return method is not None and "kt" in method.heads(cfg)


def _ratio_unused(cfg: Config) -> str | None:
    """Why ``data.imbalance_ratio`` would not shape the train split (None: it does): the list
    files give the split, or the folder is used as it is (``as_is``)."""
    d = cfg.data
    if d.name == "listfile":
        return "data.name=listfile takes the split its list files give (already long-tailed)"
    if d.name != "imagefolder" or d.root is None:
        return None if d.profile != "as_is" else "data.profile=as_is uses the train split as is"

    try:
        profile = effective_profile(d)
    except Exception:  # noqa: BLE001 - an unreadable root is reported by the data checks
        return None
    if profile != "as_is":
        return None
    if d.profile == "as_is":
        return "data.profile=as_is uses the train split as is"
    return (
        f"{d.root}/train is already long-tailed, so it is used as it is (data.profile "
        "resolves to as_is)"
    )


def ignored_problems(cfg: Config) -> list[str]:
    """Settings the run would accept and then ignore, or apply twice: refused, each with the
    fix. (Keys a shared base config sets for other methods are only noted, see
    :func:`ignored_settings`.)"""
    out = []
    m, d = cfg.train.method, cfg.data
    if has_kt_head(cfg) and cfg.kt.class_balance is True and d.sampler == "class_balanced":
        out.append(
            "kt.class_balance=true with data.sampler=class_balanced: the sampler already shows "
            "every class equally often and the KT loss would weight tail classes again by "
            "N/(C*n_y), so they count twice; set kt.class_balance=auto (off under this "
            "sampler) or data.sampler=instance"
        )
    rho_set = d.imbalance_ratio != type(d).model_fields["imbalance_ratio"].default
    if rho_set and (why := _ratio_unused(cfg)):
        fix = (
            "drop data.imbalance_ratio"
            if d.name == "listfile"
            else "drop data.imbalance_ratio to use it as it is, or set data.profile=exp to cut "
            f"it to rho={d.imbalance_ratio:g}"
        )
        out.append(f"data.imbalance_ratio={d.imbalance_ratio:g} would be ignored: {why}; {fix}")
    if d.name == "listfile" and d.profile is not None:
        out.append(
            f"data.profile={d.profile} would be ignored: data.name=listfile takes the split its "
            "list files give; drop data.profile"
        )
    method = _method(cfg)
    own = method.sampler(cfg) if method is not None else d.sampler
    if own != d.sampler and _non_default(d, ("sampler",)):
        out.append(
            f"data.sampler={d.sampler} would be ignored: train.method={m} samples {own} by its "
            f"definition; drop data.sampler or set it to {own}"
        )
    return out


def ignored_settings(cfg: Config) -> list[str]:
    """Keys set away from their defaults that this run does not read, one line each (printed
    as notes before training). They come from base configs shared by several methods (a
    preset's KT settings reach its CE and OLTR runs), so they are noted, not refused; what a
    run would ignore or double of its own settings is refused by :func:`config_problems`."""
    out = []
    m = cfg.train.method
    method = _method(cfg)
    sections = method.sections if method is not None else ()
    kt_keys = ("phi", "temperature", "mask", "class_balance", "detach_feature")
    if not has_kt_head(cfg) and (set_kt := _non_default(cfg.kt, kt_keys)):
        why = "kt.enabled=false" if "kt" in sections else f"train.method={m} has no KT head"
        out.append(f"{', '.join(f'kt.{k}' for k in set_kt)} not used: {why}")
    mem_keys = ("init_epoch", "momentum", "metric", "renormalize")
    if not has_memory(cfg) and (set_mem := _non_default(cfg.memory, mem_keys)):
        out.append(f"{', '.join(f'memory.{k}' for k in set_mem)} not used: the run keeps no memory")
    if not cfg.train.compile and (backend := _non_default(cfg.train, ("compile_backend",))):
        out.append(f"train.{backend[0]} not used: train.compile=false")
    if has_kt_head(cfg) and cfg.kt.class_balance is True and cfg.data.sampler == "sqrt":
        out.append(
            "kt.class_balance=true with data.sampler=sqrt: the weights N/(C*n_y) assume "
            "instance sampling; under sqrt sampling they favour tail classes over head ones"
        )
    if cfg.mixup.variant == "none" and (alpha := _non_default(cfg.mixup, ("alpha",))):
        out.append(f"mixup.{alpha[0]} not used: mixup.variant=none")
    for name in ("oltr", "lfme"):  # the previous works' own sections
        section = getattr(cfg, name)
        if name not in sections and (
            unused := _non_default(section, tuple(type(section).model_fields))
        ):
            out.append(f"{', '.join(f'{name}.{k}' for k in unused)} not used: train.method={m}")
    d = cfg.data
    if d.name != "listfile":
        lists = [f"data.{k}" for k in ("train_list", "val_list", "test_list") if getattr(d, k)]
        if lists:
            out.append(f"{', '.join(lists)} not used: data.name={d.name} reads its own splits")
    val_per_class = _non_default(d, ("val_per_class",))
    if val_per_class and d.name != "digits-lt":
        own_val = (d.name == "listfile" and d.val_list is not None) or (
            d.name in ("imagefolder", "cifar10-lt", "cifar100-lt")
            and d.root is not None
            and Path(d.root, "val").is_dir()
        )
        if d.val_protocol == "test":
            out.append(f"data.{val_per_class[0]} not used: data.val_protocol=test (val = test)")
        elif own_val:
            out.append(f"data.{val_per_class[0]} not used: the dataset has its own val split")
    return out


def _memory_problems(cfg: Config) -> list[str]:
    k, epochs = cfg.memory.init_epoch, cfg.train.epochs
    if has_kt_head(cfg) and k >= epochs:
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
        method = _method(cfg)
        if method is not None and "kt" in method.sections:
            return " (kt.enabled=false: the KT head is off)"
        return f" (train.method={cfg.train.method} has no KT head)"
    if head in ("ncm_ema", "ncm_full"):
        return " (no memory: set memory.enabled=true and memory.init_epoch<=train.epochs)"
    return ""


def empty_groups(cfg: Config) -> dict[str, str]:
    """Shot groups the train split will not have → why (its counts, from the config alone:
    :func:`ltray.data.counts.train_counts`); ``{}`` when they cannot be known cheaply."""

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


def run_group_problems(meta: dict[str, Any], metrics: list[str], *, run: str) -> list[str]:
    """Metrics naming a shot group that a finished run's split has no class in, from its cache
    ``meta.json`` (train class counts and thresholds): a post-hoc sweep ``--from RUN`` reads the
    run's groups, not its own base config's."""

    counts = meta.get("class_counts")
    if not counts:
        return []
    groups = shot_groups(counts, int(meta["many_threshold"]), int(meta["few_threshold"]))
    out = []
    for m in metrics:
        group = m.rsplit("_", 1)[-1]
        if group in GROUP_NAMES and not (groups == GROUP_NAMES.index(group)).any():
            rule = {
                "many": f"more than {meta['many_threshold']}",
                "medium": f"{meta['few_threshold']} to {meta['many_threshold']}",
                "few": f"fewer than {meta['few_threshold']}",
            }[group]
            out.append(
                f"search.metric={m}: {run} has no {group}-shot class (no class with {rule} "
                f"train images; its counts: {min(counts)} to {max(counts)}); choose another "
                "metric"
            )
    return out


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
    if kind != "posthoc" and _method(cfg) is None:
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
        out += ignored_problems(cfg)
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
