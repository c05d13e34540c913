"""Reproduction presets shipped with ltray (``ltray reproduce --config NAME``).

Each preset is a YAML file next to this module: an `ltray train` config plus a ``reproduce:``
section (see :mod:`ltray.reproduce.options`). ``--config`` takes a preset name or a path, for
`ltray reproduce` and for `ltray train` (one run of the preset's config:
:func:`load_train_config`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ltray.config import Config, build_config, load_config, read_yaml
from ltray.errors import ConfigError

__all__ = [
    "PresetFile",
    "preset_names",
    "preset_path",
    "resolve_config",
    "read_preset",
    "load_train_config",
    "expand_env",
]

# The data keys a preset may write with environment variables (``${LTRAY_DATA_DIR}/cifar10``).
_ENV_KEYS = ("root", "train_list", "val_list", "test_list")
_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def _folder() -> Path:
    return Path(str(resources.files(__name__)))


def preset_names() -> list[str]:
    """Names of the shipped presets, sorted (``quick``, ``cifar10-lt``, ``imagenet-lt``...)."""
    return sorted(p.stem for p in _folder().glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The YAML file of preset ``name``; an unknown name lists the known ones."""
    path = _folder() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"--config {name!r}: unknown preset; known presets: {', '.join(preset_names())}, "
            "or pass the path of a YAML file"
        )
    return path


def resolve_config(name_or_path: str) -> Path:
    """A preset name or a YAML path → the file to read.

    An existing file wins over a preset of the same name; a value that looks like a path
    (``.yaml``/``.yml`` suffix or a ``/``) but does not exist is reported as a missing file.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate
    looks_like_path = candidate.suffix in (".yaml", ".yml") or "/" in name_or_path
    if looks_like_path:
        raise ConfigError(
            f"--config {name_or_path}: file not found; pass an existing YAML file or a preset "
            f"name ({', '.join(preset_names())})"
        )
    return preset_path(name_or_path)


@dataclass(frozen=True)
class PresetFile:
    """A config file as both commands read it: the train config apart from its plan.

    ``source`` names it in messages: the preset's name for a shipped preset, else the path.
    ``raw``/``lines`` are the train config (``reproduce:`` taken out) and the line of every
    key; ``reproduce`` is that section as written (``None`` when absent).
    """

    path: Path
    source: str
    raw: dict[str, Any]
    lines: dict[tuple[str, ...], int]
    reproduce: Any


def read_preset(name_or_path: str) -> PresetFile:
    """Resolve a preset name or a YAML path and read it (``safe_load``), splitting off its
    ``reproduce:`` section. ``$VAR`` in data paths is left for the caller to expand."""
    path = resolve_config(name_or_path)
    raw, lines = read_yaml(path)
    plan = raw.pop("reproduce", None)
    source = name_or_path if path.parent == _folder() else str(path)
    return PresetFile(path, source, raw, lines, plan)


def load_train_config(name_or_path: str | None, overrides: list[str] | None = None) -> Config:
    """The config of one `ltray train` run: defaults, then a YAML file or a preset, then
    ``overrides``.

    A preset's (or any file's) ``reproduce:`` section plans a reproduction and is left out
    here; ``$VAR`` in its data paths is expanded as `ltray reproduce` does (an unset variable
    is an error naming it, unless an override sets that key).
    """
    if name_or_path is None:
        return load_config(None, overrides)
    preset = read_preset(name_or_path)
    raw = expand_env(preset.raw, name_or_path, list(overrides or []))
    return build_config(raw, source=str(preset.path), lines=preset.lines, overrides=overrides)


def expand_env(
    raw: dict[str, Any], source: str, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Expand ``$VAR``/``${VAR}`` in the data paths; an unset variable is an error naming it
    (unless an override replaces that key anyway)."""
    data = raw.get("data") or {}
    replaced = {o.split("=", 1)[0].strip() for o in overrides or []}
    problems = []
    for key in _ENV_KEYS:
        value = data.get(key)
        if f"data.{key}" in replaced:
            continue
        if not isinstance(value, str) or "$" not in value:
            continue
        unset = [v for v in _VAR.findall(value) if v not in os.environ]
        if unset:
            problems.append(
                f"{source}: data.{key}={value!r} uses unset environment variable(s) "
                f"{', '.join(unset)}; export them or pass data.{key}=PATH"
            )
        else:
            data[key] = os.path.expandvars(value)
    if problems:
        raise ConfigError("; ".join(problems))
    return raw
