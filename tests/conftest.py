"""Test-wide setup: a private LTRAY_HOME, Ray settings for CI, and the shared-data fixture.

Environment defaults set here (a user's own values win):
- ``RAY_AUTH_MODE=disabled`` and a private ``RAY_TMPDIR`` (Ray sessions never collide with a
  developer's running cluster);
- ``LTRAY_HOME`` in a temporary folder (tests never touch ~/.ltray: runs, MLflow, caches);
- ``LTRAY_DATA_DIR`` = ``../shared/data`` next to the repository when that folder exists.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_TMP = Path(tempfile.mkdtemp(prefix="ltray-tests-"))

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TMPDIR", str(_TMP / "ray"))
os.environ.setdefault("LTRAY_HOME", str(_TMP / "home"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLBACKEND", "Agg")
if (REPO.parent / "shared" / "data").is_dir():
    os.environ.setdefault("LTRAY_DATA_DIR", str(REPO.parent / "shared" / "data"))
Path(os.environ["RAY_TMPDIR"]).mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``$LTRAY_DATA_DIR`` (../shared/data); skips the test when it is absent."""
    root = Path(os.environ.get("LTRAY_DATA_DIR", REPO.parent / "shared" / "data"))
    if not (root / "cifar10").is_dir():
        pytest.skip(f"shared data not found at {root} (set LTRAY_DATA_DIR=../shared/data)")
    return root
