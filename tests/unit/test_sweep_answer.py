"""A sweep's answer: confirmation over seeds (winner by mean, ties by std), cuts that rank
(Spearman per cut, grace advice), importances from Optuna, shipped spaces by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ltray.errors import SpaceError
from ltray.storage import Storage
from ltray.tune.analysis import grace_advice, importances, rung_correlations
from ltray.tune.confirm import candidates, confirm_seeds, confirm_table, shared_runs
from ltray.tune.space import load_space, resolve_space, space_names

REPO = Path(__file__).resolve().parents[2]


def _trial(root: Path, tid: str, params: dict, curve: dict[int, float], **extra) -> Path:
    d = root / "trials" / tid
    d.mkdir(parents=True)
    (d / "trial.json").write_text(json.dumps({"trial_id": tid, "params": params}))
    lines = [{"epoch": e, "val_kt_overall": v, **extra} for e, v in sorted(curve.items())]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return d


def _results(d: Path, val: float, test: float) -> None:
    heads = {"kt": {"val": {"overall": val}, "test": {"overall": test}}}
    (d / "results.json").write_text(json.dumps({"heads": heads}))


def test_candidates_are_distinct_configurations_in_leaderboard_order(tmp_path: Path) -> None:
    _trial(tmp_path, "a", {"kt.phi": 0.5}, {1: 0.3, 2: 0.6})
    _trial(tmp_path, "b", {"kt.phi": 0.5}, {1: 0.2, 2: 0.55})  # the same config again
    _trial(tmp_path, "c", {"kt.phi": 0.9}, {1: 0.4})
    _trial(tmp_path, "d", {"kt.phi": 0.1}, {1: 0.1})
    got = candidates(Storage.at(tmp_path), "val_kt_overall", "max", 3)
    assert [c.trial_id for c in got] == ["a", "c", "d"]
    assert [c.rank for c in got] == [1, 2, 3]


def test_confirmation_seeds_are_new_draws() -> None:
    assert confirm_seeds(0, 3) == [1, 2, 3]
    assert len(set(confirm_seeds(7, 5))) == 5 and 7 not in confirm_seeds(7, 5)


def test_the_winner_is_the_best_mean_and_ties_go_to_the_lower_std(tmp_path: Path) -> None:
    folder = tmp_path / "confirm"
    plan = {
        "metric": "val_kt_overall",
        "mode": "max",
        "top": 3,
        "seeds": [1, 2],
        "candidates": [
            {"trial_id": "x", "params": {"kt.phi": 0.1}, "rank": 1, "search_value": 0.9},
            {"trial_id": "y", "params": {"kt.phi": 0.2}, "rank": 2, "search_value": 0.8},
            {"trial_id": "z", "params": {"kt.phi": 0.3}, "rank": 3, "search_value": 0.7},
        ],
    }
    folder.mkdir()
    (folder / "plan.json").write_text(json.dumps(plan))
    vals = {"x": (0.60, 0.70), "y": (0.66, 0.64), "z": (0.50, 0.52)}  # x, y: mean 0.65
    n = 0
    for cand, (v1, v2) in vals.items():
        for seed, v in zip((1, 2), (v1, v2), strict=True):
            params = {**next(c for c in plan["candidates"] if c["trial_id"] == cand)["params"]}
            d = _trial(folder, f"r{n}", {**params, "train.seed": seed}, {1: v})
            _results(d, v, v - 0.1)
            n += 1
    table = confirm_table(Storage.at(tmp_path), "confirm")
    assert table["complete"] and table["winner"] == "y"  # equal means, y's std is lower
    row = {r["trial_id"]: r for r in table["rows"]}
    assert row["y"]["val_mean"] == pytest.approx(0.65) and row["y"]["n"] == 2
    assert row["y"]["test_mean"] == pytest.approx(0.55)
    assert row["y"]["model_trial"] in {r["trial_id"] for r in row["y"]["seeds"].values()}
    assert [r["trial_id"] for r in table["rows"]][-1] == "z"


def test_a_confirmation_by_another_metric_reuses_the_runs_it_shares(tmp_path: Path) -> None:
    """`ltray confirm --metric` scores a configuration+seed another confirmation already trained
    from that run: only the new (configuration, seed) pairs are trained."""
    seeds = [1, 2]
    first = {"kt.phi": 0.1}
    for sub, cands in (("confirm", [first]), ("confirm-val_kt_overall", [first, {"kt.phi": 0.9}])):
        plan = {
            "metric": "val_kt_overall",
            "mode": "max",
            "top": len(cands),
            "seeds": seeds,
            "candidates": [
                {"trial_id": f"c{i}", "params": p, "rank": i + 1, "search_value": 0.5}
                for i, p in enumerate(cands)
            ],
        }
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "plan.json").write_text(json.dumps(plan))
    for seed, v in zip(seeds, (0.6, 0.7), strict=True):  # the first confirmation's runs
        d = _trial(tmp_path / "confirm", f"a{seed}", {**first, "train.seed": seed}, {1: v})
        _results(d, v, v - 0.1)
    unfinished = _trial(tmp_path / "confirm", "a9", {**first, "train.seed": 9}, {1: 0.1})
    assert not (unfinished / "results.json").exists()
    shared = shared_runs(Storage.at(tmp_path), "confirm-val_kt_overall")
    assert set(shared) == {(json.dumps(first), 1), (json.dumps(first), 2)}  # finished only
    table = confirm_table(Storage.at(tmp_path), "confirm-val_kt_overall")
    row = {r["trial_id"]: r for r in table["rows"]}
    assert row["c0"]["n"] == 2 and row["c0"]["val_mean"] == pytest.approx(0.65)
    assert {s["folder"] for s in row["c0"]["seeds"].values()} == {"confirm"}
    assert row["c1"]["n"] == 0 and not table["complete"]  # still to train
    assert table["winner"] == "c0" and row["c0"]["model_folder"] == "confirm"


def test_rung_correlations_and_the_grace_that_keeps_the_best() -> None:
    # Epoch 1 ranks the trials in reverse of their final order; from epoch 3 on it is right.
    finals = [0.9, 0.8, 0.7, 0.6]
    trials = []
    for i, f in enumerate(finals):
        curve = {1: 0.1 * (i + 1), 2: 0.1 * (i + 1), 3: f - 0.1, 4: f - 0.05, 6: f}
        trials.append({"trial_id": f"t{i}", "curve": curve, "params": {}})
    corr = {r["epoch"]: r for r in rung_correlations(trials, 6, [1, 3])}
    assert corr[1]["rho"] == pytest.approx(-1.0) and corr[3]["rho"] == pytest.approx(1.0)
    assert corr[1]["n"] == 4
    advice = grace_advice(trials, 6, 2, "max")
    assert advice["top"] == ["t0"]
    keeps = {r["grace"]: r["keeps_top"] for r in advice["rows"]}
    assert keeps[1] is False and keeps[3] is True
    assert advice["advice"] == 3


def test_importances_come_from_optuna_on_the_trials_that_ran_every_epoch() -> None:
    import random

    rng = random.Random(0)
    space = {
        "train.lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True},
        "kt.mask": {"type": "categorical", "choices": ["correct", "all"]},
    }
    trials = []
    for i in range(12):
        mask = rng.choice(["correct", "all"])
        lr = rng.uniform(0.01, 0.1)
        final = (0.8 if mask == "correct" else 0.4) + 0.01 * rng.random()
        trials.append(
            {"trial_id": str(i), "curve": {4: final}, "params": {"train.lr": lr, "kt.mask": mask}}
        )
    trials.append({"trial_id": "cut", "curve": {2: 0.1}, "params": {"train.lr": 0.05}})
    imp = importances(trials, space, 4, "max")
    assert imp["n"] == 12
    assert max(imp["importances"], key=imp["importances"].get) == "kt.mask"
    few = importances(trials[:2], space, 4, "max")
    assert few["importances"] == {} and "fewer than 3" in few["why"]


def test_a_shipped_space_resolves_by_name_from_any_folder(tmp_path: Path) -> None:
    assert {"kt", "llw", "asm"} <= set(space_names())
    assert resolve_space("kt") == resolve_space("kt.yaml")
    assert load_space("kt").name == "kt"
    with pytest.raises(SpaceError, match="shipped spaces: .*kt"):
        resolve_space("nope")
    # The documented search_spaces/kt.yaml works where the repository's link is missing (a Ray
    # job's working_dir copied without symbolic links); any other missing folder stays an error.
    assert resolve_space(tmp_path / "search_spaces" / "kt.yaml") == resolve_space("kt")
    with pytest.raises(SpaceError, match="myspaces/kt.yaml: no such file"):
        resolve_space(tmp_path / "myspaces" / "kt.yaml")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [sys.executable, "-m", "ltray.cli", "tune", "--space", "kt.yaml", "--dry-run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "scheduler" in res.stdout and "kt.phi" in res.stdout
    res = subprocess.run(
        [sys.executable, "-m", "ltray.cli", "tune", "--list"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and all(n in res.stdout for n in space_names())


@pytest.mark.slow
def test_a_wheel_carries_the_shipped_spaces(tmp_path: Path) -> None:
    import zipfile

    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    (wheel,) = tmp_path.glob("ltray-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"ltray/spaces/{n}.yaml" for n in space_names()} <= names
    assert "ltray/presets/cifar10-lt.yaml" in names


def test_crossfit_gap_script_reads_a_sweeps_last_reports(tmp_path: Path) -> None:
    last = {
        "epoch": 2,
        "val_posthoc_llw_insample_overall": 0.80,
        "val_posthoc_llw_overall": 0.78,
        "test_posthoc_llw_overall": 0.77,
    }
    for i, shift in enumerate((0.0, 0.02)):
        rec = {k: v + shift if k != "epoch" else v for k, v in last.items()}
        _trial(tmp_path, f"t{i}", {}, {1: 0.5}, **{})
        path = tmp_path / "trials" / f"t{i}" / "metrics.jsonl"
        path.write_text(path.read_text() + json.dumps(rec) + "\n")
    out = tmp_path / "gap.json"
    script = REPO / "scripts" / "crossfit_gap.py"
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert res.returncode == 0, res.stderr
    gap = json.loads(out.read_text())["llw"]
    assert gap["trials"] == 2
    assert gap["insample_minus_test"] == pytest.approx(3.0)
    assert gap["crossfit_minus_test"] == pytest.approx(1.0)
