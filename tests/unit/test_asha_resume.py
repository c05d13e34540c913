"""ASHA's rung records across `ltray tune --resume`: Ray restores the scheduler pickled when the
sweep began (empty rungs); ltray's PersistentASHA reads its records back, so an interrupted and
resumed sweep stops the same trials as the uninterrupted one."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from ltray.tune.asha import PersistentASHA


@dataclass
class _Trial:
    trial_id: str


# (trial, epoch, val): eight trials reporting two epochs each, then the last four trials the
# interruption fell between (they report after the restart).
BEFORE = [(f"t{i}", e, v) for i, v in enumerate([0.5, 0.7, 0.3, 0.8]) for e in (1, 2)]
AFTER = [
    (f"t{i}", e, v) for i, v in zip(range(4, 8), [0.4, 0.2, 0.6, 0.1], strict=True) for e in (1, 2)
]


def _kwargs() -> dict:
    return dict(
        time_attr="training_iteration",
        metric="val",
        mode="max",
        max_t=5,
        grace_period=1,
        reduction_factor=2,
    )


def _feed(sched, results, added: set) -> dict[str, str]:
    decisions = {}
    for tid, epoch, val in results:
        trial = _Trial(tid)
        if tid not in added:
            sched.on_trial_add(None, trial)
            added.add(tid)
        if decisions.get(tid) == TrialScheduler.STOP:
            continue
        result = {"training_iteration": epoch, "val": val + 0.01 * epoch}
        decisions[tid] = sched.on_trial_result(None, trial, result)
    return decisions


def _stopped(decisions: dict[str, str]) -> set[str]:
    return {t for t, d in decisions.items() if d == TrialScheduler.STOP}


def _restored(sched):
    """What Tuner.restore hands back: the scheduler as pickled when the sweep began."""
    return pickle.loads(sched)


def test_an_interrupted_sweep_cuts_as_the_uninterrupted_one(tmp_path: Path) -> None:
    whole = PersistentASHA(state_file=tmp_path / "whole.json", **_kwargs())
    expected = _feed(whole, BEFORE + AFTER, set())

    state = tmp_path / "asha.json"
    fresh = PersistentASHA(state_file=state, **_kwargs())
    at_start = pickle.dumps(fresh)  # tuner.pkl
    first = _feed(fresh, BEFORE, set())
    resumed = _restored(at_start)
    second = _feed(resumed, AFTER, set())
    assert _stopped({**first, **second}) == _stopped(expected)
    assert _stopped(second)  # the restart does stop trials against the old records


def test_without_the_records_the_restart_cuts_differently() -> None:
    """Ray's own scheduler as Tuner.restore returns it (pickled at the start, rungs empty):
    on the same results it stops other trials, so the test above is not vacuous."""
    whole = ASHAScheduler(**_kwargs())
    expected = _feed(whole, BEFORE + AFTER, set())
    fresh = ASHAScheduler(**_kwargs())
    at_start = pickle.dumps(fresh)
    first = _feed(fresh, BEFORE, set())
    second = _feed(_restored(at_start), AFTER, set())
    assert _stopped({**first, **second}) != _stopped(expected)
