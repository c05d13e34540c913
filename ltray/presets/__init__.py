"""Reproduction presets shipped with ltray (``ltray reproduce --config NAME``).

Each preset is a YAML file next to this module: an `ltray train` config plus a ``reproduce:``
section (see :mod:`ltray.reproduce.options`). ``--config`` takes a preset name or a path, for
`ltray reproduce` and for `ltray train` (one run of the preset's config:
:func:`load_train_config`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ltray.config import Config
from ltray.errors import ConfigError

__all__ = ["preset_names", "preset_path", "resolve_config", "load_train_config"]


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


def load_train_config(name_or_path: str | None, overrides: list[str] | None = None) -> Config:
    """The config of one `ltray train` run: defaults, then a YAML file or a preset, then
    ``overrides``.

    A preset's (or any file's) ``reproduce:`` section plans a reproduction and is left out
    here; ``$VAR`` in its data paths is expanded as `ltray reproduce` does (an unset variable
    is an error naming it, unless an override sets that key).
    """
    from ltray.config import build_config, load_config, read_yaml
    from ltray.reproduce.setup import expand_env

    if name_or_path is None:
        return load_config(None, overrides)
    path = resolve_config(name_or_path)
    raw, lines = read_yaml(path)
    raw.pop("reproduce", None)
    raw = expand_env(raw, name_or_path, list(overrides or []))
    return build_config(raw, source=str(path), lines=lines, overrides=overrides)
