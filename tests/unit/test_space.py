"""Search-space files: every rule of issue #5 point 2, all problems in one error, before Ray."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ltray.errors import SpaceError
from ltray.tune.space import load_space, to_tune

SPACES = sorted((Path(__file__).resolve().parents[2] / "search_spaces").glob("*.yaml"))


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(body))
    return path


# Spaces over an earlier run name it on the command line (their files say how to make it).
NEEDS_RUN = {"oltr.yaml": ("oltr.stage1", "ce"), "lfme.yaml": ("lfme.experts", "lfme_expert")}


def _fake_run(path: Path, method: str) -> str:
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.yaml").write_text(f"train: {{method: {method}}}\n")
    (path / "checkpoints" / "best.pt").write_bytes(b"")
    return str(path)


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_shipped_spaces_are_valid(path: Path, tmp_path: Path) -> None:
    overrides = []
    if path.name in NEEDS_RUN:
        key, method = NEEDS_RUN[path.name]
        with pytest.raises(SpaceError, match=key):
            load_space(path)
        run = _fake_run(tmp_path / "run", method)
        overrides = [f"{key}={run}" if key == "oltr.stage1" else f"{key}=[{run}]"]
    space = load_space(path, overrides)
    assert space.spec.space
    assert space.describe()


def test_every_bad_rule_is_listed_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        base:
          train: {epochs: 2}
        space:
          kt.phii: {type: float, low: 0.0, high: 1.0}
          train.lr: {type: float, low: 0.5, high: 0.1}
          train.weight_decay: {type: float, low: 0.0, high: 0.01, log: true}
          kt.phi: {type: float, low: 0.2, high: 1.5}
          memory.momentum: {type: float, low: 0.5, high: 1.0}
          mixup.variant: {type: categorical, choices: []}
        """,
    )
    with pytest.raises(SpaceError) as err:
        load_space(path)
    msg = str(err.value)
    assert msg.startswith("6 problems")
    assert f"{path}:5: space.kt.phii: not a config key" in msg
    assert "space.train.lr: `low <= high` must hold, but got (low=0.5, high=0.1)" in msg
    assert "space.train.weight_decay: log=true needs low > 0" in msg
    assert "space.kt.phi: value 1.5 from the domain is invalid" in msg and "[0, 1]" in msg
    assert "space.memory.momentum: value 1.0 from the domain is invalid" in msg
    assert "space.mixup.variant: categorical needs a non-empty `choices` list" in msg


def test_unknown_top_level_and_bad_base_are_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        base:
          train: {epochz: 2}
        space:
          kt.phi: {type: float, low: 0.0, high: 1.0}
        serch: {metric: val_kt_overall}
        """,
    )
    with pytest.raises(SpaceError) as err:
        load_space(path)
    assert "serch" in str(err.value)


def test_posthoc_space_keys_are_checked_against_the_method(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        kind: posthoc
        method: llw
        space:
          llw.lr: {type: float, low: -1.0, high: 1.0}
          llw.nope: {type: int, low: 1, high: 3}
          asm.lr: {type: float, low: 0.1, high: 1.0}
        search: {metric: val_fused_overall, scheduler: none}
        """,
    )
    with pytest.raises(SpaceError) as err:
        load_space(path)
    msg = str(err.value)
    assert "llw.lr" in msg and "llw.nope" in msg and "space.asm.lr: post-hoc keys" in msg


def test_multi_objective_rejects_asha(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        space:
          kt.phi: {type: float, low: 0.0, high: 1.0}
        search: {metric: [val_kt_overall, val_kt_few], mode: [max, max], scheduler: asha}
        """,
    )
    with pytest.raises(SpaceError, match="multi-objective"):
        load_space(path)


def test_space_maps_to_tune_domains() -> None:
    space = load_space(SPACES[[p.name for p in SPACES].index("kt.yaml")])
    domains = to_tune(space)
    assert set(domains) == set(space.spec.space)
    assert domains["memory.init_epoch"].lower == 0
    assert "LogUniform" in type(domains["train.lr"].sampler).__name__


def test_cli_bad_space_exits_2_with_one_line_before_ray(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        space:
          kt.phi: {type: float, low: 0.0, high: 2.0}
          memory.momentum: {type: float, low: 0.9, high: 0.5}
        """,
    )
    res = subprocess.run(
        [sys.executable, "-m", "ltray.cli", "tune", "--space", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "2 problems" in lines[0], res.stderr
    assert "Ray" not in res.stdout + res.stderr  # nothing was started


def test_dry_run_prints_the_plan(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "ltray.cli", "tune", "--space", str(SPACES[0]), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "num_samples" in res.stdout and "search" in res.stdout


def test_command_line_overrides_win_over_the_space_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        base:
          train: {epochs: 5}
        space:
          kt.phi: {type: float, low: 0.0, high: 1.0}
        scaling: {num_workers: 1, cpus_per_worker: 1}
        """,
    )
    space = load_space(path, ["scaling.num_workers=2", "train.epochs=2"])
    assert space.base.scaling.num_workers == 2 and space.base.train.epochs == 2
    assert load_space(path).base.scaling.num_workers == 1
