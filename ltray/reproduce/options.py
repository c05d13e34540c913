"""What a reproduction runs: the poster's rows, the Mixup grid, seeds, per-run overrides.

A reproduce config is an ordinary `ltray train` config plus an optional ``reproduce:`` section,
validated by :class:`ReproduceOptions` (unknown keys and bad values rejected, all at once)::

    reproduce:
      seeds: 3                      # seed k sets train.seed=k; data.seed stays fixed
      methods: [ce, oltr, lfme, asm, llw, kt, ncm, crt]   # default: every row
      require: [data.root]          # keys that must be set (presets leave paths to the user)
      overrides:                    # dotted overrides per kind of run
        oltr: [train.epochs=60]
      row_seeds: {oltr: 1}          # costly rows on fewer seeds (0..n-1)
      shared_stage1: false          # true: one KT run per seed also serves CE and post hoc
      posthoc: {llw: {lr: 0.2}}     # settings of post-hoc methods (`ltray fuse --list`)
      mixup:
        enabled: true
        alphas: [0.1, 0.3, 1.0]
        variants: [input, manifold, tail, head]
        samplers: [instance, class_balanced]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "RowSpec",
    "MAIN_ROWS",
    "OTHER_ROWS",
    "ROWS",
    "ROW_NAMES",
    "POSTHOC_ROWS",
    "RUN_KINDS",
    "MixupGrid",
    "ReproduceOptions",
]


@dataclass(frozen=True)
class RowSpec:
    """One row of the main table: where its numbers come from.

    ``run`` names the stage-1 run (``ce``, ``kt``, ``oltr``, ``lfme``) whose ``results.json``
    head ``head`` is read; ``posthoc`` names a post-hoc method fitted on the CE run's cache.
    """

    name: str
    label: str
    run: str | None = None
    head: str = "linear"
    posthoc: str | None = None

    @property
    def source(self) -> str:
        """Human-readable origin of the row (table captions, docs)."""
        if self.posthoc:
            return f"post-hoc `{self.posthoc}` on the CE run's cache"
        return f"`{self.run}` run, {self.head} head"


# The poster's rows, in its order; then the other baselines below a rule.
MAIN_ROWS: tuple[RowSpec, ...] = (
    RowSpec("ce", "CE", run="ce", head="linear"),
    RowSpec("oltr", "OLTR", run="oltr", head="linear"),
    RowSpec("lfme", "LFME", run="lfme", head="linear"),
    RowSpec("asm", "ASM", posthoc="asm"),
    RowSpec("llw", "LLW", posthoc="llw"),
    RowSpec("kt", "KT", run="kt", head="kt"),
)
OTHER_ROWS: tuple[RowSpec, ...] = (
    RowSpec("ncm", "NCM", posthoc="ncm"),
    RowSpec("sum", "sum", posthoc="sum"),
    RowSpec("softmax_sum", "softmax-sum", posthoc="softmax_sum"),
    RowSpec("max_concat", "max-concat (tie-break)", posthoc="max_concat"),
    RowSpec("max_concat_prob", "max-concat (prob.)", posthoc="max_concat_prob"),
    RowSpec("weighted", "weighted (w on val)", posthoc="weighted"),
    RowSpec("crt", "cRT", posthoc="crt"),
    RowSpec("lws", "LWS", posthoc="lws"),
    RowSpec("tau_norm", "τ-norm", posthoc="tau_norm"),
    RowSpec("logit_adj", "logit adjustment", posthoc="logit_adj"),
)
ROWS: tuple[RowSpec, ...] = MAIN_ROWS + OTHER_ROWS
ROW_NAMES: tuple[str, ...] = tuple(r.name for r in ROWS)
POSTHOC_ROWS: tuple[str, ...] = tuple(r.name for r in ROWS if r.posthoc)

# Kinds of runs a plan holds; ``reproduce.overrides`` is keyed by them.
RUN_KINDS = ("ce", "kt", "oltr", "lfme_expert", "lfme", "mixup")

MixupVariant = Literal["input", "manifold", "tail", "head"]
Sampler = Literal["instance", "class_balanced", "sqrt"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MixupGrid(_Strict):
    """The Mixup study (docs/methods.md#mixup): every α × variant × sampler cell is one run per
    seed, plus a no-mixup reference per sampler (the ``instance`` one is the CE run itself)."""

    enabled: bool = True
    alphas: list[float] = Field(default_factory=lambda: [0.1, 0.3, 1.0], min_length=1)
    variants: list[MixupVariant] = Field(
        default_factory=lambda: ["input", "manifold", "tail", "head"], min_length=1
    )
    samplers: list[Sampler] = Field(
        default_factory=lambda: ["instance", "class_balanced"], min_length=1
    )

    @field_validator("alphas")
    @classmethod
    def _alphas(cls, v: list[float]) -> list[float]:
        bad = [a for a in v if a <= 0]
        if bad:
            raise ValueError(f"every alpha must be > 0 (Beta(alpha, alpha)), got {bad}")
        return sorted(set(v))

    @field_validator("variants", "samplers")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    def cells(self) -> list[tuple[str, float, str]]:
        """(variant, alpha, sampler) of every mixup run of one seed, in table order."""
        if not self.enabled:
            return []
        return [(v, a, s) for v in self.variants for a in self.alphas for s in self.samplers]


class ReproduceOptions(_Strict):
    """The ``reproduce:`` section of a config (and the CLI options that override it)."""

    seeds: int = Field(3, ge=1, description="seeds 0..N-1, each sets train.seed")
    methods: list[str] = Field(
        default_factory=lambda: list(ROW_NAMES), description="rows of the main table"
    )
    require: list[str] = Field(
        default_factory=list, description="dotted config keys that must be set (not null)"
    )
    overrides: dict[str, list[str]] = Field(
        default_factory=dict, description="dotted overrides per run kind (ce, kt, oltr, ...)"
    )
    row_seeds: dict[str, int] = Field(
        default_factory=dict,
        description="fewer seeds for costly rows, e.g. {oltr: 1, lfme: 1}: seeds 0..n-1 only",
    )
    shared_stage1: bool = Field(
        False,
        description="one KT run per seed serves the CE row (its linear head), the KT row, OLTR's "
        "stage 1 and every post-hoc row: with kt.detach_feature=true its backbone and linear "
        "head are trained by CE alone, so a separate CE run would repeat it",
    )
    posthoc: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="settings per post-hoc method"
    )
    mixup: MixupGrid = Field(default_factory=MixupGrid)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in ROW_NAMES]
        if unknown:
            raise ValueError(f"unknown row(s) {unknown}; known: {', '.join(ROW_NAMES)}")
        if not v:
            raise ValueError(f"give at least one row; known: {', '.join(ROW_NAMES)}")
        # Keep the table's order whatever order the user typed.
        return [r for r in ROW_NAMES if r in v]

    @field_validator("overrides")
    @classmethod
    def _kinds(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = [k for k in v if k not in RUN_KINDS]
        if unknown:
            raise ValueError(f"unknown run kind(s) {unknown}; known: {', '.join(RUN_KINDS)}")
        return v

    @field_validator("row_seeds")
    @classmethod
    def _row_seeds(cls, v: dict[str, int]) -> dict[str, int]:
        unknown = [k for k in v if k not in ROW_NAMES]
        if unknown:
            raise ValueError(f"unknown row(s) {unknown}; known: {', '.join(ROW_NAMES)}")
        bad = {k: n for k, n in v.items() if n < 1}
        if bad:
            raise ValueError(f"every row needs at least one seed, got {bad}")
        return v

    def seeds_of(self, row: str) -> int:
        """How many seeds (0..n-1) row ``row`` is run for."""
        return min(self.seeds, self.row_seeds.get(row, self.seeds))

    @model_validator(mode="after")
    def _posthoc(self) -> ReproduceOptions:
        unknown = [m for m in self.posthoc if m not in POSTHOC_ROWS]
        if unknown:
            raise ValueError(
                f"reproduce.posthoc: unknown method(s) {unknown}; known: {', '.join(POSTHOC_ROWS)}"
            )
        return self

    def rows(self) -> list[RowSpec]:
        """The requested rows of the main table, in table order."""
        return [r for r in ROWS if r.name in self.methods]

    @property
    def ce_run(self) -> str:
        """The run kind whose linear head and cache are the CE baseline's."""
        return "kt" if self.shared_stage1 else "ce"

    def needed_runs(self) -> set[str]:
        """Stage-1 run kinds the requested rows (and the mixup study) read."""
        runs = {r.run for r in self.rows() if r.run}
        if any(r.posthoc for r in self.rows()) or "oltr" in runs or self.mixup.cells():
            runs.add("ce")  # post-hoc rows, OLTR's stage 1 and the mixup reference need it
        if self.shared_stage1 and "ce" in runs:
            runs = (runs - {"ce"}) | {"kt"}
        return runs
