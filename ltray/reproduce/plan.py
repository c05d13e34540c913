"""The plan of a reproduction: every run, its config, what it waits for, and whether it is done.

Layout of a reproduction directory ``DIR``::

    DIR/plan.json                       the plan (base config, options, runs); --resume reads it
    DIR/seed-K/ce/  kt/  oltr/          stage-1 runs (ordinary `ltray train` run directories)
    DIR/seed-K/lfme/expert-many/ ...    LFME experts, then lfme/student/
    DIR/seed-K/mixup/input-a0.3-class_balanced/ ...   Mixup study runs
    DIR/seed-K/posthoc/<method>.json    post-hoc methods fitted on seed-K/ce's cache
    DIR/records.json                    every per-seed number the tables aggregate
    DIR/table.{csv,txt,png}  DIR/mixup.{csv,txt,png}

Seed K sets ``train.seed=K`` (and the post-hoc methods' seed); ``data.seed`` is the config's for
every seed, so every row and every seed share one split. A run is finished when its
``results.json`` exists (the loop writes it after the cache), a post-hoc method when its JSON does.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ltray.config import Config, apply_overrides, set_dotted
from ltray.errors import ConfigError, RunDirError
from ltray.metrics import GROUP_NAMES
from ltray.reproduce.options import ReproduceOptions
from ltray.train.rundir import RunDir

__all__ = [
    "PLAN_VERSION",
    "RunSpec",
    "MixupRow",
    "Plan",
    "build_plan",
    "run_config",
    "is_finished",
    "posthoc_path",
    "pending_runs",
    "pending_posthoc",
    "write_plan",
    "read_plan",
]

PLAN_VERSION = 1
_RUN_OF_ROW = {"ce": "ce", "kt": "kt", "oltr": "oltr", "lfme": "lfme/student"}


@dataclass
class RunSpec:
    """One training run. ``values``: dotted keys set on top of the overrides (typed values);
    ``refs``: dotted keys set to the directories of other runs (``lfme.experts`` a list)."""

    id: str
    kind: str
    seed: int
    values: dict[str, Any] = field(default_factory=dict)
    refs: dict[str, str | list[str]] = field(default_factory=dict)
    depends: list[str] = field(default_factory=list)


@dataclass
class MixupRow:
    """One row of the Mixup table and the run (one per seed) it reads."""

    variant: str
    alpha: float | None
    sampler: str
    runs: dict[int, str]

    @property
    def key(self) -> str:
        alpha = "—" if self.alpha is None else f"{self.alpha:g}"
        return f"{self.variant}/{alpha}/{self.sampler}"


@dataclass
class Plan:
    """Everything a reproduction runs, JSON-serialisable (``plan.json``)."""

    base: dict[str, Any]
    cli_overrides: list[str]
    options: dict[str, Any]
    source: str
    runs: list[RunSpec]
    mixup_rows: list[MixupRow]
    groups_present: list[str]
    notes: list[str] = field(default_factory=list)
    mlflow_parent: str | None = None
    mlflow_uri: str | None = None
    created: float = field(default_factory=time.time)
    version: int = PLAN_VERSION

    @property
    def opts(self) -> ReproduceOptions:
        return ReproduceOptions.model_validate(self.options)

    @property
    def seeds(self) -> list[int]:
        return list(range(self.opts.seeds))

    def run(self, run_id: str) -> RunSpec:
        for r in self.runs:
            if r.id == run_id:
                return r
        raise KeyError(run_id)

    def row_run(self, row: str, seed: int) -> str:
        """The run id a main-table row reads for ``seed`` (stage-1 rows only)."""
        run = self.opts.ce_run if row == "ce" else _RUN_OF_ROW[row]
        return f"seed-{seed}/{run}"

    def ce_run(self, seed: int) -> str:
        """The run whose cache the post-hoc rows read and OLTR builds on, for ``seed``."""
        return f"seed-{seed}/{self.opts.ce_run}"


def _cell_id(seed: int, variant: str, alpha: float | None, sampler: str) -> str:
    alpha_part = "" if alpha is None else f"-a{alpha:g}"
    return f"seed-{seed}/mixup/{variant}{alpha_part}-{sampler}"


def _seed_runs(cfg: Config, opts: ReproduceOptions, seed: int, groups: list[str]) -> list[RunSpec]:
    """The stage-1 runs of one seed (no mixup), in dependency order."""
    need = opts.needed_runs()
    prefix = f"seed-{seed}"
    common = {"train.seed": seed}
    ce = f"{prefix}/{opts.ce_run}"
    runs: list[RunSpec] = []
    if "ce" in need:
        runs.append(RunSpec(f"{prefix}/ce", "ce", seed, {**common, "train.method": "ce"}))
    if "kt" in need:
        runs.append(RunSpec(f"{prefix}/kt", "kt", seed, {**common, "train.method": "kt"}))
    if "oltr" in need and seed < opts.seeds_of("oltr"):
        runs.append(
            RunSpec(
                f"{prefix}/oltr",
                "oltr",
                seed,
                {**common, "train.method": "oltr"},
                refs={"oltr.stage1": ce},
                depends=[ce],
            )
        )
    if "lfme" in need and seed < opts.seeds_of("lfme"):
        experts = []
        for name in groups:  # one expert per non-empty shot group
            values: dict[str, Any] = {
                **common,
                "train.method": "lfme_expert",
                "lfme.subset": name,
                "lfme.experts": [],
            }
            if cfg.lfme.expert_epochs is not None:
                values["train.epochs"] = cfg.lfme.expert_epochs
            runs.append(RunSpec(f"{prefix}/lfme/expert-{name}", "lfme_expert", seed, values))
            experts.append(f"{prefix}/lfme/expert-{name}")
        runs.append(
            RunSpec(
                f"{prefix}/lfme/student",
                "lfme",
                seed,
                {**common, "train.method": "lfme", "lfme.subset": None},
                refs={"lfme.experts": experts},
                depends=list(experts),
            )
        )
    return runs


def _mixup(cfg: Config, opts: ReproduceOptions, seed: int) -> tuple[list[RunSpec], list[MixupRow]]:
    """The Mixup study's runs of one seed and its rows (a no-mixup reference per sampler)."""
    cells = opts.mixup.cells()
    if not cells:
        return [], []
    runs: list[RunSpec] = []
    rows: list[MixupRow] = []
    base = {"train.seed": seed, "train.method": "ce"}
    for sampler in opts.mixup.samplers:
        if sampler == cfg.data.sampler:
            ref = f"seed-{seed}/{opts.ce_run}"  # the CE run: this sampler's no-mixup reference
        else:
            ref = _cell_id(seed, "none", None, sampler)
            runs.append(RunSpec(ref, "mixup", seed, {**base, "data.sampler": sampler}))
        rows.append(MixupRow("none", None, sampler, {seed: ref}))
    for variant, alpha, sampler in cells:
        rid = _cell_id(seed, variant, alpha, sampler)
        values = {**base, "data.sampler": sampler, "mixup.variant": variant, "mixup.alpha": alpha}
        runs.append(RunSpec(rid, "mixup", seed, values))
        rows.append(MixupRow(variant, alpha, sampler, {seed: rid}))
    return runs, rows


def build_plan(
    cfg: Config,
    raw: dict[str, Any],
    opts: ReproduceOptions,
    *,
    groups_present: list[str],
    source: str,
    cli_overrides: list[str] | None = None,
    notes: list[str] | None = None,
) -> Plan:
    """Every run of every seed (pure: no I/O). ``groups_present``: the non-empty shot groups of
    the split ("many", "medium", "few"), one LFME expert each."""
    groups = [g for g in GROUP_NAMES if g in groups_present]
    if opts.shared_stage1 and not cfg.kt.detach_feature:
        raise ConfigError(
            "reproduce.shared_stage1=true reads the CE baseline from the KT run, which needs a "
            "backbone trained by CE alone: set kt.detach_feature=true or shared_stage1=false"
        )
    runs: list[RunSpec] = []
    mixup_rows: dict[str, MixupRow] = {}
    for seed in range(opts.seeds):
        runs += _seed_runs(cfg, opts, seed, groups)
        m_runs, m_rows = _mixup(cfg, opts, seed)
        runs += m_runs
        for row in m_rows:
            mixup_rows.setdefault(row.key, MixupRow(row.variant, row.alpha, row.sampler, {}))
            mixup_rows[row.key].runs.update(row.runs)
    return Plan(
        base=copy.deepcopy(raw),
        cli_overrides=list(cli_overrides or []),
        options=opts.model_dump(mode="json"),
        source=source,
        runs=runs,
        mixup_rows=list(mixup_rows.values()),
        groups_present=groups,
        notes=list(notes or []),
    )


def run_config(plan: Plan, run: RunSpec, out_dir: Path) -> Config:
    """The resolved config of ``run``: base, the kind's overrides, the command line's overrides,
    then the run's own values and the directories of the runs it reads."""
    kind = plan.opts.overrides.get(run.kind, [])
    raw = apply_overrides(plan.base, kind + plan.cli_overrides)
    for key, value in run.values.items():
        set_dotted(raw, key, value)
    for key, ref in run.refs.items():
        value = [str(out_dir / r) for r in ref] if isinstance(ref, list) else str(out_dir / ref)
        set_dotted(raw, key, value)
    # Stage-1 runs never log to MLflow themselves: the driver logs them (one SQLite writer).
    set_dotted(raw, "tracking.mlflow", False)
    return Config.model_validate(raw)


def is_finished(run_dir: Path) -> bool:
    """A run is finished when its results exist and parse (:meth:`RunDir.is_finished`)."""
    return RunDir(run_dir).is_finished()


def posthoc_path(out_dir: Path, seed: int, method: str) -> Path:
    return Path(out_dir) / f"seed-{seed}" / "posthoc" / f"{method}.json"


def pending_runs(plan: Plan, out_dir: Path) -> list[RunSpec]:
    """The runs still to train, in plan (dependency) order."""
    return [r for r in plan.runs if not is_finished(Path(out_dir) / r.id)]


def pending_posthoc(plan: Plan, out_dir: Path) -> dict[int, list[str]]:
    """Post-hoc methods still to fit, per seed (seeds with none left are absent)."""
    rows = [r for r in plan.opts.rows() if r.posthoc]
    out: dict[int, list[str]] = {}
    for seed in plan.seeds:
        todo = [r.posthoc for r in rows if not posthoc_path(out_dir, seed, r.posthoc).is_file()]
        if todo:
            out[seed] = [m for m in todo if m]
    return out


def write_plan(plan: Plan, out_dir: Path) -> Path:
    """Write ``plan.json`` atomically."""
    path = Path(out_dir) / "plan.json"
    data = asdict(plan)
    for row in data["mixup_rows"]:
        row["runs"] = {str(k): v for k, v in row["runs"].items()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)
    return path


def read_plan(out_dir: Path) -> Plan:
    """Read ``DIR/plan.json``; a missing or foreign file is a RunDirError with the fix."""
    path = Path(out_dir) / "plan.json"
    if not path.is_file():
        raise RunDirError(
            f"--resume {out_dir}: no plan.json; --resume takes a directory written by "
            "`ltray reproduce --out DIR`"
        )
    data = json.loads(path.read_text())
    if data.get("version") != PLAN_VERSION:
        raise RunDirError(
            f"{path}: plan version {data.get('version')!r}, this ltray writes {PLAN_VERSION}; "
            "start a new reproduction"
        )
    data["runs"] = [RunSpec(**r) for r in data["runs"]]
    data["mixup_rows"] = [
        MixupRow(r["variant"], r["alpha"], r["sampler"], {int(k): v for k, v in r["runs"].items()})
        for r in data["mixup_rows"]
    ]
    return Plan(**data)
