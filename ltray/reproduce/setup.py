"""Load a reproduction: preset or YAML → (train config, ``reproduce:`` options), checked at once.

    setup = load_reproduction("quick", overrides=["train.lr=0.05"], cli=CliOptions(seeds=1))

Order of precedence (later wins): the config file, the ``reproduce:`` section's per-kind
overrides (applied per run later), the command line. ``--epochs E`` also rescales a warm-up and
step milestones by E / epochs so a short run keeps the schedule's shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ltray.config import Config, build_config
from ltray.errors import ConfigError
from ltray.presets import expand_env, read_preset
from ltray.reproduce.options import MixupGrid, ReproduceOptions

__all__ = ["CliOptions", "Reproduction", "load_reproduction", "epoch_overrides"]


@dataclass
class CliOptions:
    """Command-line options that override the ``reproduce:`` section (None = keep)."""

    seeds: int | None = None
    epochs: int | None = None
    methods: list[str] | None = None
    mixup_alphas: list[float] | None = None
    mixup_variants: list[str] | None = None
    mixup_samplers: list[str] | None = None
    no_mixup: bool = False


@dataclass
class Reproduction:
    """A validated reproduction: the base config (CLI overrides applied), its raw mapping, the
    overrides every run re-applies last, and the options."""

    cfg: Config
    raw: dict[str, Any]
    options: ReproduceOptions
    source: str
    cli_overrides: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def epoch_overrides(cfg: Config, epochs: int) -> tuple[list[str], str | None]:
    """Overrides for ``--epochs``: train.epochs (and lfme.expert_epochs), with the warm-up and
    the step milestones rescaled by ``epochs / train.epochs``; plus a note describing it."""
    t = cfg.train
    out = [f"train.epochs={epochs}"]
    if cfg.lfme.expert_epochs is not None:
        out.append(f"lfme.expert_epochs={epochs}")
    notes = []
    k = cfg.memory.init_epoch
    if k >= epochs > 0:
        # the memory (the KT teacher, the NCM heads) must exist before the last epoch ends
        k_new = min(epochs - 1, round(k * epochs / t.epochs))
        out.append(f"memory.init_epoch={k_new}")
        notes.append(f"memory.init_epoch {k} → {k_new}")
    if epochs != t.epochs and (t.warmup_epochs or t.milestones):
        scale = epochs / t.epochs
        warmup = round(t.warmup_epochs * scale)
        milestones = [max(1, round(m * scale)) for m in t.milestones]
        out += [f"train.warmup_epochs={warmup}", f"train.milestones={milestones}"]
        notes.insert(0, f"warm-up {t.warmup_epochs} → {warmup}, milestones {t.milestones} → "
                        f"{milestones}")  # fmt: skip
    if not notes:
        return out, None
    return out, f"--epochs {epochs}: rescaled from {t.epochs} epochs ({'; '.join(notes)})"


def _options_raw(section: Any, cli: CliOptions, source: str) -> dict[str, Any]:
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: reproduce: must be a mapping, got {type(section).__name__}")
    raw = dict(section)
    mix = dict(raw.get("mixup") or {})
    if cli.seeds is not None:
        raw["seeds"] = cli.seeds
    if cli.methods is not None:
        raw["methods"] = cli.methods
    if cli.mixup_alphas is not None:
        mix["alphas"] = cli.mixup_alphas
    if cli.mixup_variants is not None:
        mix["variants"] = cli.mixup_variants
    if cli.mixup_samplers is not None:
        mix["samplers"] = cli.mixup_samplers
    if cli.no_mixup:
        mix["enabled"] = False
    raw["mixup"] = mix
    return raw


def _validate_options(
    raw: dict[str, Any], source: str, lines: dict[tuple[str, ...], int]
) -> ReproduceOptions:
    try:
        return ReproduceOptions.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ("reproduce", *(str(x) for x in err["loc"]))
            key = ".".join(loc)
            line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
            where = f"{source}:{line}: {key}" if line else key
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key; valid keys: " + _valid_keys(loc[1:-1])
            elif err["type"] != "value_error" and not isinstance(err.get("input"), dict):
                msg += f" (got {err.get('input')!r})"
            problems.append(f"{where}: {msg}")
        n = len(problems)
        raise ConfigError(f"{n} reproduce problem{'s' * (n > 1)}: " + "; ".join(problems)) from None


def _valid_keys(loc: tuple[str, ...]) -> str:

    model = MixupGrid if loc[:1] == ("mixup",) else ReproduceOptions
    return ", ".join(model.model_fields)


def _check_required(cfg: Config, required: list[str], source: str) -> None:
    dumped = cfg.model_dump()
    missing = []
    for key in required:
        node: Any = dumped
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            missing.append(key)
    if missing:
        example = " ".join(f"{k}=..." for k in missing)
        raise ConfigError(
            f"{source}: {', '.join(missing)} must be set (this config leaves paths to you); "
            f"pass them on the command line, e.g. `ltray reproduce --config {source} {example}`"
        )


def _check_plain(cfg: Config, source: str) -> None:
    if cfg.mixup.variant != "none":
        raise ConfigError(
            f"{source}: mixup.variant={cfg.mixup.variant}: the table's runs are plain; the mixup "
            "study sets mixup per run (reproduce.mixup); drop mixup.variant from the config"
        )


def load_reproduction(
    config: str | None,
    overrides: list[str] | None = None,
    cli: CliOptions | None = None,
) -> Reproduction:
    """Resolve ``config`` (preset name or YAML path; default ``quick``) into a Reproduction.

    Raises:
        ConfigError: unknown preset, bad YAML, unknown keys, bad values, unset required paths —
            every problem of one kind at once, before anything starts.
    """
    cli = cli or CliOptions()
    preset = read_preset(config or "quick")
    path, source, lines = preset.path, preset.source, preset.lines
    options = _validate_options(_options_raw(preset.reproduce, cli, source), source, lines)
    cli_overrides = list(overrides or [])
    raw = expand_env(preset.raw, source, cli_overrides)
    cfg = build_config(raw, source=str(path), lines=lines, overrides=cli_overrides)
    notes: list[str] = []
    if cli.epochs is not None:
        if cli.epochs < 1:
            raise ConfigError(f"--epochs {cli.epochs}: must be >= 1")
        extra, note = epoch_overrides(cfg, cli.epochs)
        cli_overrides += extra
        notes += [note] if note else []
        cfg = build_config(raw, source=str(path), lines=lines, overrides=cli_overrides)
    _check_required(cfg, options.require, source)
    _check_plain(cfg, source)
    # Each kind's overrides must validate too (checked now, not when the run starts).
    for kind, items in options.overrides.items():
        try:
            build_config(raw, overrides=items + cli_overrides)
        except ConfigError as exc:
            raise ConfigError(f"{source}: reproduce.overrides.{kind}: {exc}") from None
    return Reproduction(cfg, raw, options, source, cli_overrides, notes)
