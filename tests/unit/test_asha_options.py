"""`ltray tune --grace-period/--reduction-factor`: the ASHA settings a sweep runs with, shown in
the plan and checked before Ray starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from ltray.errors import ConfigError
from ltray.tune.plan import SweepOptions, asha_rungs, asha_state, check_sweep, plan, sweep_space
from ltray.tune.space import load_space
from ltray.tune.sweep import _tune_config


def _asha_state(space, opts: SweepOptions):
    return asha_state(sweep_space(space, opts))


def _plan(space, opts: SweepOptions):
    return plan(sweep_space(space, opts), opts)


KT = Path(__file__).resolve().parents[2] / "search_spaces" / "kt.yaml"


def _rungs(tune_config) -> list[int]:
    return sorted(m for m, _ in tune_config.scheduler._brackets[0]._rungs)


@pytest.mark.parametrize(
    ("epochs", "grace", "factor"), [(30, 2, 2), (30, 8, 2), (4, 1, 2), (30, 3, 3), (6, 2, 2)]
)
def test_rungs_shown_are_the_schedulers(epochs: int, grace: int, factor: int) -> None:
    space = load_space(KT, [f"train.epochs={epochs}"])
    opts = SweepOptions(search={"grace_period": grace, "reduction_factor": factor})
    asha = _asha_state(space, opts)
    assert asha == {"grace_period": grace, "reduction_factor": factor, "rungs": asha["rungs"]}
    assert _rungs(_tune_config(space, 4, 2, asha)) == asha_rungs(epochs, grace, factor)
    assert asha["rungs"] == asha_rungs(epochs, grace, factor)
    text = _plan(space, opts)["scheduler"]
    assert f"grace {grace}, reduction factor {factor}" in text
    assert ", ".join(map(str, asha_rungs(epochs, grace, factor))) in text


def test_the_command_line_wins_over_the_space_file() -> None:
    space = load_space(KT, ["train.epochs=30"])  # the file: grace 2, factor 2
    assert "stops trials at epochs 2, 4, 8, 16 of 30" in _plan(space, SweepOptions())["scheduler"]
    assert (
        "epochs 8, 16 of 30" in _plan(space, SweepOptions(search={"grace_period": 8}))["scheduler"]
    )


def test_a_grace_past_the_last_epoch_stops_nothing() -> None:
    space = load_space(KT, ["train.epochs=6"])
    assert asha_rungs(6, 10, 2) == []
    opts = SweepOptions(search={"grace_period": 10})
    assert _asha_state(space, opts) is None
    assert _tune_config(space, 4, 2, _asha_state(space, opts)).scheduler is None
    assert _plan(space, opts)["scheduler"].startswith("none: the grace period 10 is past")


@pytest.mark.parametrize(
    ("opts", "expected"),
    [
        (SweepOptions(search={"grace_period": 0}), "--grace-period 0: must be >= 1"),
        (SweepOptions(search={"reduction_factor": 1}), "--reduction-factor 1: must be >= 2"),
        (
            SweepOptions(resume=True, search={"grace_period": 8}),
            "--resume keeps the sweep's ASHA settings",
        ),
    ],
)
def test_bad_asha_options_are_refused_before_ray(opts: SweepOptions, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        check_sweep(load_space(KT), opts)


def test_the_cli_passes_the_asha_options_to_the_plan() -> None:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "ltray.cli", "tune", "--space", str(KT), "--dry-run"]
    res = subprocess.run(
        [*cmd, "--grace-period", "8", "--reduction-factor", "3", "train.epochs=30"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "asha: grace 8, reduction factor 3; stops trials at epochs 8, 24 of 30" in res.stdout


@pytest.mark.parametrize(("workers", "dashboard"), [(1, False), (2, True)])
def test_only_sweeps_of_nested_train_trials_start_the_dashboard(
    workers: int, dashboard: bool, tmp_path, monkeypatch
) -> None:
    """Nested Train trials need the State API to free a stopped trial's placement group; an
    in-process trial has none, and the dashboard is a service that can fail to start under
    load."""
    import ltray.train.driver as driver
    from ltray.tune.sweep import run_sweep

    seen = {}

    class Started(Exception):
        pass

    def fake_ray_init(address=None, *, dashboard=True, **kwargs):
        seen["dashboard"] = dashboard
        raise Started

    monkeypatch.setattr(driver, "ray_init", fake_ray_init)
    space = load_space(KT, [f"scaling.num_workers={workers}"])
    with pytest.raises(Started):
        run_sweep(space, SweepOptions(storage=str(tmp_path), mlflow=False))
    assert seen["dashboard"] is dashboard
