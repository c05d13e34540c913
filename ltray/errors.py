"""One error hierarchy for ltray.

Every error a user can fix is an :class:`LtrayError`. Its message names the file, line or key,
the rule that was broken and the fix. The CLI prints it as one line on stderr and exits with 2.
"""

from __future__ import annotations

__all__ = [
    "LtrayError",
    "ConfigError",
    "DataError",
    "CacheError",
    "SpaceError",
    "RunDirError",
]


class LtrayError(Exception):
    """Base class of every user-facing ltray error (exit code 2 in the CLI)."""

    exit_code = 2


class ConfigError(LtrayError):
    """A config file, key, value or override is wrong."""


class DataError(LtrayError):
    """A dataset root, list file, label or image is missing or malformed."""


class CacheError(LtrayError):
    """A feature/logit cache is missing, corrupt or of another schema version."""


class SpaceError(ConfigError):
    """A search-space file is wrong."""


class RunDirError(LtrayError):
    """A run directory is missing, incomplete or would be overwritten."""
