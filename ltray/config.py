"""Typed, validated configuration: YAML files plus dotted command-line overrides.

    cfg = load_config("my.yaml", ["train.lr=0.05", "data.imbalance_ratio=50"])

Every section is a pydantic model that forbids unknown keys. All problems of a file and its
overrides are collected and raised at once as one :class:`ConfigError` naming each key (and the
YAML line where the key came from a file). The dotted keys here are the same ones a search space
tunes (``kt.phi``, ``memory.momentum``, ``train.lr`` ...).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from ltray.config_sections import (
    AugmentConfig,
    Config,
    DataConfig,
    EvalConfig,
    KTConfig,
    LFMEConfig,
    LossConfig,
    MemoryConfig,
    MixupConfig,
    ModelConfig,
    OLTRConfig,
    ScalingConfig,
    TrackingConfig,
    TrainConfig,
)
from ltray.errors import ConfigError

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "ModelConfig",
    "MemoryConfig",
    "KTConfig",
    "MixupConfig",
    "LossConfig",
    "TrainConfig",
    "EvalConfig",
    "ScalingConfig",
    "TrackingConfig",
    "OLTRConfig",
    "LFMEConfig",
    "Config",
    "load_config",
    "RETIRED_KEYS",
    "saved_config",
    "drop_retired",
    "apply_overrides",
    "set_dotted",
    "parse_override",
    "config_hash",
    "flatten",
    "save_config",
    "known_keys",
    "plain_message",
]


# ------------------------------------------------------------------------------- loading


def _yaml_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path of a YAML mapping to its 1-based line number."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                path = (*prefix, str(k.value))
                lines[path] = k.start_mark.line + 1
                walk(v, path)

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def read_yaml(path: str | Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """Read a YAML mapping with ``safe_load``; return it and the line of every key path."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found; pass an existing YAML file")
    text = p.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise ConfigError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{p}:1: the top level must be a mapping of sections, got {type(data).__name__}"
        )
    return data, _yaml_lines(text)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.lr=0.05"`` → (["train", "lr"], 0.05). The value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(
            f"override {item!r}: expected key=value with a dotted key, e.g. train.lr=0.05"
        )
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key part; use e.g. data.imbalance_ratio=50")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def set_dotted(data: dict[str, Any], key: str | list[str], value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for the dotted key ``a.b`` in place (typed values kept;
    missing or non-mapping levels become mappings)."""
    parts = key.split(".") if isinstance(key, str) else key
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``key=value`` overrides applied."""
    out = copy.deepcopy(data)
    for item in overrides:
        parts, value = parse_override(item)
        set_dotted(out, parts, value)
    return out


def _format_errors(
    exc: ValidationError,
    source: str | None,
    lines: dict[tuple[str, ...], int],
    overridden: set[tuple[str, ...]],
) -> str:
    problems = []
    for err in exc.errors():
        loc = tuple(str(x) for x in err["loc"])
        key = ".".join(loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            section = _section_for(loc[:-1])
            choices = ", ".join(sorted(section.model_fields)) if section else ""
            msg = f"unknown key; valid keys here: {choices}"
        else:
            msg = plain_message(err)
        if (
            "input" in err
            and err["type"] != "extra_forbidden"
            and not isinstance(err["input"], dict)
        ):
            msg += f" (got {err['input']!r})"
        # A model-level validator reports the section; its message already names the key.
        if loc in overridden or any(loc[: len(o)] == o for o in overridden):
            where = f"override {key}"
        elif source and loc in lines:
            where = f"{source}:{lines[loc]}: {key}"
        elif source and loc[:1] and loc[:1] in lines:
            where = f"{source}:{lines[loc[:1]]}: {key}"
        else:
            where = key or "config"
        problems.append(f"{where}: {msg}")
    n = len(problems)
    head = f"{n} config problem{'s' if n > 1 else ''}: "
    return head + "; ".join(problems)


_BOUNDS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}


def plain_message(err: Any) -> str:
    """One pydantic error in ltray's words: the rule, not pydantic's internal phrasing."""
    kind, msg, ctx = err["type"], err["msg"], err.get("ctx") or {}
    if msg.startswith("Value error, "):
        return msg[len("Value error, ") :]
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}".replace(" or ", ", ")
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()), "")
        return f"must be {_BOUNDS[kind]} {bound}"
    if kind == "missing":
        return "required key is missing"
    if kind.startswith("int_"):
        return "must be a whole number"
    if kind.startswith("float_"):
        return "must be a number"
    if kind.startswith("bool_"):
        return "must be true or false"
    if kind in ("too_short", "too_long"):
        want = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        return f"must hold {want} items"
    if kind in (
        "string_type",
        "list_type",
        "tuple_type",
        "dict_type",
        "model_type",
        "model_attributes_type",
    ):
        want = {"string_type": "a string", "list_type": "a list", "tuple_type": "a list"}.get(
            kind, "a mapping"
        )
        return f"must be {want}"
    return msg


def _section_for(loc: tuple[str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return None
        model = field.annotation
    return model


# Keys earlier versions wrote into the configs they saved (a run's config.yaml, a sweep's
# sweep.json) and this one no longer has. A saved config is read without them; a config a user
# writes today is still refused for them (unknown key).
RETIRED_KEYS = {
    "train.checkpoint_every": "never read: every epoch's checkpoint was always written",
}


def drop_retired(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a saved config's mapping without :data:`RETIRED_KEYS`."""
    out = copy.deepcopy(data)
    for key in RETIRED_KEYS:
        *parents, leaf = key.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def saved_config(data: dict[str, Any]) -> Config:
    """A config ltray saved (maybe by an earlier version), validated without its retired keys."""
    return Config.model_validate(drop_retired(data))


def build_config(
    data: dict[str, Any],
    *,
    source: str | None = None,
    lines: dict[tuple[str, ...], int] | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """Validate a raw mapping (+ overrides) into a :class:`Config`, all errors at once."""
    overrides = overrides or []
    merged = apply_overrides(data, overrides)
    overridden = {tuple(parse_override(o)[0]) for o in overrides}
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source, lines or {}, overridden)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a config: defaults, then the YAML file at ``path`` (if any), then ``overrides``."""
    if path is None:
        return build_config({}, overrides=overrides)
    data, lines = read_yaml(path)
    return build_config(data, source=str(path), lines=lines, overrides=overrides)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping → ``{"a.b": value}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def known_keys() -> dict[str, Any]:
    """Every dotted config key with its field info, nested sections included
    (``data.augment.pad``); used to validate search spaces."""
    out: dict[str, Any] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            sub = field.annotation
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                walk(sub, f"{prefix}{name}.")
            else:
                out[f"{prefix}{name}"] = field

    walk(Config, "")
    return out


def config_hash(cfg: Config) -> str:
    """A short stable hash of the resolved config (names caches and runs)."""
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
