"""Search-space files: a base config, a space over dotted config keys, search and scaling.

```yaml
kind: train                      # train: every trial trains; posthoc: trials fit a post-hoc
                                 # method over one cached run (`--from RUN_DIR`)
base:                            # the same schema as `ltray train` configs
  train: {epochs: 6}
space:
  kt.phi: {type: float, low: 0.0, high: 1.0}
  memory.momentum: {type: float, low: 0.5, high: 0.99}
  memory.init_epoch: {type: int, low: 0, high: 3}
  train.lr: {type: float, low: 0.01, high: 0.3, log: true}
  mixup.variant: {type: categorical, choices: [input, manifold]}
search:
  metric: val_kt_overall         # or a list for multi-objective (then mode is a list too)
  mode: max
  num_samples: 8
  max_concurrent: 2
  scheduler: asha                # asha | none
  grace_period: 1
  reduction_factor: 2
  sampler: tpe                   # tpe | random
  seed: 0
scaling: {num_workers: 1, use_gpu: false, cpus_per_worker: 1}
```
For ``kind: posthoc`` add ``method: llw`` and write space keys as ``llw.lr``, ``llw.epochs``...;
a categorical ``method`` key searches over methods (``sum``, ``weighted``, ...), each
``<method>.<setting>`` key then applies when that method is drawn.
Every problem of a file is collected and raised as one :class:`SpaceError` before Ray starts.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ltray.config import (
    Config,
    ScalingConfig,
    apply_overrides,
    build_config,
    known_keys,
    plain_message,
    read_yaml,
)
from ltray.errors import ConfigError, SpaceError
from ltray.tune.scoring import is_posthoc_metric, posthoc_problems
from ltray.validate import config_problems, metric_problems

__all__ = [
    "Param",
    "SearchSettings",
    "SpaceFile",
    "Space",
    "load_space",
    "to_tune",
    "POSTHOC",
    "space_names",
    "resolve_space",
    "shipped_spaces",
]

POSTHOC = "posthoc"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Param(_Strict):
    """One searched key: ``float``/``int`` with ``low``, ``high`` (``log``, ``step``) or
    ``categorical`` with ``choices``."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None


class SearchSettings(_Strict):
    """The ``search:`` section; ``ltray tune``'s flags of the same names override it."""

    metric: str | list[str] = "val_kt_overall"
    mode: Literal["max", "min"] | list[Literal["max", "min"]] = "max"
    num_samples: int = Field(8, ge=1)
    max_concurrent: int = Field(1, ge=1)
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: int = Field(2, ge=2)
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = 0
    posthoc: list[str] | dict[str, dict[str, Any] | None] = Field(
        default_factory=list,
        description="post-hoc methods every trial fits on its own train/val arrays and reports "
        "as val_posthoc_<method>_<group> (and val_best_<group>): the two-level search",
    )
    confirm: int = Field(
        0, ge=0, description="re-run the top N configurations over `seeds` training seeds"
    )
    seeds: int = Field(3, ge=1, description="training seeds of each confirmed configuration")


class SpaceFile(_Strict):
    kind: Literal["train", "posthoc"] = "train"
    method: str | None = Field(None, description="post-hoc method (kind: posthoc)")
    name: str | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Param]
    search: SearchSettings = Field(default_factory=SearchSettings)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)


_SECTIONS: dict[str, type[BaseModel]] = {"search": SearchSettings, "scaling": ScalingConfig}


class Space:
    """A validated space: the file's content plus the resolved base :class:`Config`. Treated as
    a value: :meth:`with_base` and :meth:`with_search` return new spaces."""

    def __init__(self, path: Path, spec: SpaceFile, base: Config) -> None:
        self.path = path
        self.spec = spec
        self.base = base

    def with_base(self, base: Config) -> Space:
        return Space(self.path, self.spec, base)

    def with_search(self, search: SearchSettings) -> Space:
        return Space(self.path, self.spec.model_copy(update={"search": search}), self.base)

    @property
    def name(self) -> str:
        return self.spec.name or self.path.stem

    @property
    def metrics(self) -> list[str]:
        m = self.spec.search.metric
        return list(m) if isinstance(m, list) else [m]

    @property
    def modes(self) -> list[str]:
        m = self.spec.search.mode
        return list(m) if isinstance(m, list) else [m] * len(self.metrics)

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    def describe(self) -> list[tuple[str, str]]:
        """(key, human-readable domain) for ``--dry-run``."""
        rows = []
        for key, p in self.spec.space.items():
            if p.type == "categorical":
                dom = "one of " + ", ".join(map(str, p.choices or []))
            else:
                dom = (
                    f"{p.type} [{p.low:g}, {p.high:g}]"
                    + (" log" if p.log else "")
                    + (f" step {p.step:g}" if p.step else "")
                )
            rows.append((key, dom))
        return rows


def _param_problems(key: str, p: Param) -> list[str]:
    out = []
    if p.type == "categorical":
        if not p.choices:
            out.append(f"space.{key}: categorical needs a non-empty `choices` list")
        if p.low is not None or p.high is not None:
            out.append(f"space.{key}: categorical takes `choices`, not low/high")
        return out
    if p.low is None or p.high is None:
        out.append(f"space.{key}: {p.type} needs `low` and `high`")
        return out
    if p.choices is not None:
        out.append(f"space.{key}: {p.type} takes low/high, not `choices`")
    if p.low > p.high:
        out.append(
            f"space.{key}: `low <= high` must hold, but got (low={p.low:g}, high={p.high:g})"
        )
    if p.log and p.low <= 0:
        out.append(f"space.{key}: log=true needs low > 0, but got low={p.low:g}")
    if p.log and p.step:
        out.append(f"space.{key}: log and step cannot be combined (Optuna)")
    if p.type == "int" and (p.low != int(p.low) or p.high != int(p.high)):
        out.append(f"space.{key}: int bounds must be integers, got ({p.low:g}, {p.high:g})")
    return out


def _edge_values(p: Param) -> list[Any]:
    if p.type == "categorical":
        return list(p.choices or [])
    vals = [p.low, p.high]
    return [int(v) for v in vals] if p.type == "int" else vals


def _value_problems(key: str, p: Param, check: Any) -> list[str]:
    """Validate the domain's edge values (low, high, every choice) against the schema."""
    out = []
    for v in _edge_values(p):
        msg = check(key, v)
        if msg:
            out.append(f"space.{key}: value {v!r} from the domain is invalid: {msg}")
    return out


def _joined(problems: list[str], path: Path) -> str:
    unique = list(dict.fromkeys(problems))
    n = len(unique)
    return f"{n} problem{'s' if n > 1 else ''} in {path}: " + "; ".join(unique)


def _validate_file(
    raw: dict[str, Any], p: Path, lines: dict[tuple[str, ...], int], problems: list[str]
) -> tuple[SpaceFile | None, dict[str, Any]]:
    """The file's schema, every problem collected: a bad section (or space entry) is noted and
    left out, and the rest is validated again, so one mistake does not hide the others."""
    raw = copy.deepcopy(raw)
    for _ in range(4):
        try:
            return SpaceFile.model_validate(raw), raw
        except ValidationError as exc:
            for err in exc.errors():
                loc = tuple(str(x) for x in err["loc"])
                line = lines.get(loc) or lines.get(loc[:2]) or lines.get(loc[:1])
                where = f"{p}:{line}: " if line else f"{p}: "
                if err["type"] == "extra_forbidden":
                    parent = SpaceFile if len(loc) == 1 else _SECTIONS.get(loc[0])
                    valid = ", ".join(parent.model_fields) if parent else ""
                    msg = f"unknown key; valid keys here: {valid}"
                else:
                    msg = plain_message(err)
                    if "input" in err and not isinstance(err["input"], dict):
                        msg += f" (got {err['input']!r})"
                problems.append(f"{where}{'.'.join(loc)}: {msg}")
                # Leave the bad part out and look for the next problems.
                if loc[:1] == ("space",) and len(loc) > 1 and isinstance(raw.get("space"), dict):
                    raw["space"].pop(loc[1], None)
                elif loc[0] in _SECTIONS and len(loc) > 1 and isinstance(raw.get(loc[0]), dict):
                    raw[loc[0]].pop(loc[1], None)
                elif loc and loc[0] != "space":
                    raw.pop(loc[0], None)
                else:
                    return None, raw
    return None, raw


def _shipped_folder() -> Path:
    from importlib import resources

    return Path(str(resources.files("ltray.spaces")))


def space_names() -> list[str]:
    """Names of the shipped search spaces, sorted (``asm``, ``kt``, ``llw``...)."""
    return sorted(p.stem for p in _shipped_folder().glob("*.yaml"))


def resolve_space(name_or_path: str | Path) -> Path:
    """A space file from a path, or a shipped space's name (``kt`` or ``kt.yaml``).

    An existing file wins; a bare name that is not a file (no folder in it) names a shipped
    space, and so does ``search_spaces/NAME.yaml`` — the repository's link to the shipped folder,
    which a copy of the repository may lack (an archive or a file copy that drops symbolic links,
    as a Ray job's working_dir can be); anything else is a missing file, reported with the
    shipped names.
    """
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    if candidate.is_file():
        return candidate
    bare = "/" not in text and "\\" not in text
    if bare or candidate.parent.name == "search_spaces":
        text = candidate.name if not bare else text
        stem = text[: -len(".yaml")] if text.endswith(".yaml") else text
        shipped = _shipped_folder() / f"{stem}.yaml"
        if shipped.is_file():
            return shipped
    raise SpaceError(
        f"--space {name_or_path}: no such file and no shipped space of that name; shipped spaces: "
        f"{', '.join(space_names())} (`ltray tune --list`), or pass the path of a YAML file"
    )


def shipped_spaces() -> list[tuple[str, str, str]]:
    """(name, kind, first comment line) of every shipped space, for ``ltray tune --list``."""
    import yaml

    out = []
    for name in space_names():
        path = _shipped_folder() / f"{name}.yaml"
        text = path.read_text()
        first = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.strip()), "")
        kind = (yaml.safe_load(text) or {}).get("kind", "train")
        out.append((name, str(kind), first))
    return out


def load_space(path: str | Path, overrides: list[str] | None = None) -> Space:
    """Read and validate a space file or a shipped space's name (``overrides`` apply to its
    base config); every problem in one :class:`SpaceError`. Nothing is started."""
    p = resolve_space(path)
    try:
        raw, lines = read_yaml(p)
    except ConfigError as exc:
        raise SpaceError(str(exc)) from None
    problems: list[str] = []
    spec, raw = _validate_file(raw, p, lines, problems)
    if spec is None:
        raise SpaceError(_joined(problems, p)) from None

    base_raw = copy.deepcopy(spec.base)
    if "scaling" in raw:
        # The space file's scaling section is the trials' scaling: it wins over base.scaling.
        base_raw["scaling"] = {**base_raw.get("scaling", {}), **raw["scaling"]}
    # Command-line overrides win over both.
    base_raw = apply_overrides(base_raw, overrides or [])
    base_lines = {k[1:]: v for k, v in lines.items() if k[:1] == ("base",)}
    try:
        base = build_config(base_raw, source=str(p), lines=base_lines)
    except ConfigError as exc:
        problems.append(f"base: {exc}")
        base = None

    def line_of(key: str) -> str:
        n = lines.get(("space", key))
        return f"{p}:{n}: " if n else f"{p}: "

    if spec.kind == POSTHOC:
        from ltray.fusion.methods import FUSION_METHODS, parse_settings  # torch: post-hoc only

        known = ", ".join(FUSION_METHODS.names())
        # The searched methods: `method:` and/or a categorical `method` key in the space.
        methods = [spec.method] if spec.method else []
        if "method" in spec.space:
            mp = spec.space["method"]
            if mp.type != "categorical" or not mp.choices:
                problems.append(
                    f"{line_of('method')}space.method: must be categorical with "
                    f"choices among: {known}"
                )
            else:
                methods = [str(c) for c in mp.choices]
        if not methods:
            problems.append(
                f"{p}: kind: posthoc needs `method:` (or a categorical `method` "
                f"key in space); one of {known}"
            )
        for m in methods:
            if m not in FUSION_METHODS:
                problems.append(f"{p}: unknown post-hoc method {m!r}; known: {known}")

        def check(key: str, value: Any) -> str | None:
            method, setting = key.split(".", 1)
            try:
                parse_settings(method, {setting: value})
            except ConfigError as exc:
                return str(exc)
            return None

        for key, param in spec.space.items():
            if key == "method":
                continue
            if key.split(".", 1)[0] not in methods or "." not in key:
                problems.append(
                    f"{line_of(key)}space.{key}: post-hoc keys are "
                    f"`<method>.<setting>` with method in {methods}"
                )
                continue
            shape = _param_problems(key, param)
            problems += [line_of(key) + s for s in shape]
            if not shape and key.split(".", 1)[0] in FUSION_METHODS:
                problems += [line_of(key) + s for s in _value_problems(key, param, check)]
    else:
        keys = known_keys()
        all_metrics = (
            spec.search.metric if isinstance(spec.search.metric, list) else [spec.search.metric]
        )
        if spec.search.posthoc or any(is_posthoc_metric(m) for m in all_metrics):
            memory = base.memory.enabled if base is not None else True
            problems += [
                f"{p}: {x}"
                for x in posthoc_problems(spec.search.posthoc, all_metrics, memory=memory)
            ]
        # The heads' metrics are checked as `ltray train` checks them; the post-hoc stage's
        # (val_posthoc_*, val_best_*) just above.
        metrics = [m for m in all_metrics if not is_posthoc_metric(m)]
        # The pass `ltray train` runs, on the base and on the metric the sweep selects on.
        config_found = config_problems(base) if base is not None else []
        metric_found = metric_problems(base, metrics) if base is not None else []
        problems += [f"base: {x}" for x in config_found] + metric_found
        base_problems = config_found + metric_found

        def check(key: str, value: Any) -> str | None:
            try:
                trial = build_config(base_raw, overrides=[f"{key}={value}"])
            except ConfigError as exc:
                return str(exc).split(": ", 1)[-1]
            # What only this value breaks (e.g. train.method=ce with a val_kt_* metric).
            new = config_problems(trial) + metric_problems(trial, metrics)
            seen = {x.split(":", 1)[0] for x in base_problems}
            return "; ".join(x for x in new if x.split(":", 1)[0] not in seen) or None

        for key, param in spec.space.items():
            if key not in keys:
                problems.append(
                    f"{line_of(key)}space.{key}: not a config key; valid keys look "
                    f"like kt.phi, memory.momentum, train.lr (see `ltray train -h`)"
                )
                continue
            shape = _param_problems(key, param)
            problems += [line_of(key) + s for s in shape]
            if not shape and base is not None:
                problems += [line_of(key) + s for s in _value_problems(key, param, check)]

    s = spec.search
    metrics = s.metric if isinstance(s.metric, list) else [s.metric]
    if spec.kind == POSTHOC and s.posthoc:
        problems.append(
            f"{p}: search.posthoc: a post-hoc space's trials are post-hoc fits already; "
            "search.posthoc belongs to train spaces"
        )
    if spec.kind == POSTHOC and base is not None:
        problems += metric_problems(base, metrics, kind=POSTHOC)
    if isinstance(s.mode, list) and len(s.mode) != len(metrics):
        problems.append(f"{p}: search.mode has {len(s.mode)} entries for {len(metrics)} metrics")
    if len(metrics) > 1 and s.scheduler == "asha":
        problems.append(
            f"{p}: search.scheduler: asha stops trials on one metric; with several "
            "metrics (multi-objective) set `scheduler: none`"
        )
    if not spec.space:
        problems.append(f"{p}: space: empty; add at least one key to search")
    if problems:
        raise SpaceError(_joined(problems, p))
    assert base is not None
    return Space(p, spec, base)


def to_tune(space: Space) -> dict[str, Any]:
    """The Tune param_space: ``{"kt.phi": tune.uniform(0, 1), ...}`` (flat dotted keys)."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, p in space.spec.space.items():
        if p.type == "categorical":
            out[key] = tune.choice(list(p.choices or []))
        elif p.type == "int":
            lo, hi = int(p.low or 0), int(p.high or 0)
            if p.log:
                out[key] = tune.lograndint(lo, hi + 1)
            else:
                out[key] = tune.qrandint(lo, hi, int(p.step or 1))
        elif p.log:
            out[key] = tune.loguniform(p.low, p.high)
        elif p.step:
            out[key] = tune.quniform(p.low, p.high, p.step)
        else:
            out[key] = tune.uniform(p.low, p.high)
    return out
