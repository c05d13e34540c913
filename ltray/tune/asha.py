"""ASHA whose rung records survive ``ltray tune --resume``.

Ray Tune's ``Tuner.restore`` brings back the trials, the searcher and the callbacks, but not the
scheduler's state: ``TuneController.save_to_dir`` saves no scheduler, and the restored sweep
gets the ``ASHAScheduler`` pickled in ``tuner.pkl`` when the sweep began, with empty rungs (Ray
2.60, ``ray/tune/execution/tune_controller.py``). A resumed sweep then compares the trials that
report after the restart only with each other: a trial that would have been stopped against
the rung values recorded before the interruption continues, and the other way round.

:class:`PersistentASHA` writes its rung records (per rung: trial id → reward) to a JSON file
after every decision and reads them back on its first call after a restore, so an interrupted
and resumed sweep cuts as the uninterrupted one (``tests/unit/test_asha_resume.py`` replays the
same results through both).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler

__all__ = ["PersistentASHA"]


class PersistentASHA(ASHAScheduler):
    """``ASHAScheduler`` plus ``state_file``: its rung records, saved and restored."""

    def __init__(self, *args: Any, state_file: str | Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._state_file = str(state_file)
        self._loaded = False

    def _records(self) -> list[list[list[Any]]]:
        return [
            [[milestone, dict(recorded)] for milestone, recorded in bracket._rungs]
            for bracket in self._brackets
        ]

    def _save(self) -> None:
        path = Path(self._state_file)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"brackets": self._records(), "stopped": self._num_stopped}))
        os.replace(tmp, path)

    def _load(self) -> None:
        """Once per process: the records a sweep saved before it was interrupted."""
        if self._loaded:
            return
        self._loaded = True
        path = Path(self._state_file)
        if not path.is_file():
            return
        saved = json.loads(path.read_text())
        for bracket, rungs in zip(self._brackets, saved["brackets"], strict=False):
            by_milestone = {float(m): rec for m, rec in rungs}
            for milestone, recorded in bracket._rungs:
                recorded.update(by_milestone.get(float(milestone), {}))
        self._num_stopped = int(saved.get("stopped", 0))

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._load()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._load()
        action = super().on_trial_result(tune_controller, trial, result)
        self._save()
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._load()
        super().on_trial_complete(tune_controller, trial, result)
        self._save()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_loaded"] = False  # an unpickled copy (a restored sweep) reads the file first
        return state
