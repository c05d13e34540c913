"""Ray Train trainers for a Ray instance that one `ltray train` started for itself.

Ray Train V2 starts two helpers for every run whatever it does: a detached
``PlacementGroupCleaner`` (which frees the run's placement group if the controller dies; it
polls the State API, so it needs the dashboard, and without it warns every second) and the Ray
Data callback (shard provider and dataset manager actors). A local `ltray train` owns its Ray
instance, which ends with the command, so nothing can outlive it, and it reads no Ray Dataset:
both are services it does not use. Each costs a worker process (about two seconds to start on
a 2-core machine, plus the dashboard's) before the loop can begin.

:func:`lean_trainer_class` returns the trainer with those two callbacks left out. The hook is
``DataParallelTrainer._create_default_callbacks`` (Ray 2.60); if a Ray release moves it, the
subclass finds nothing to drop and behaves exactly as the stock trainer.
"""

from __future__ import annotations

from typing import Any

__all__ = ["lean_trainer_class", "UNUSED_CALLBACKS"]

UNUSED_CALLBACKS = ("PlacementGroupCleanerCallback", "DatasetsCallback")


def lean_trainer_class(base: type) -> type:
    """``base`` (``DataParallelTrainer`` or ``TorchTrainer``) without the callbacks named in
    :data:`UNUSED_CALLBACKS`."""

    class LeanTrainer(base):  # type: ignore[misc, valid-type]
        def _create_default_callbacks(self) -> list[Any]:
            callbacks = super()._create_default_callbacks()
            return [cb for cb in callbacks if type(cb).__name__ not in UNUSED_CALLBACKS]

    LeanTrainer.__name__ = LeanTrainer.__qualname__ = f"Lean{base.__name__}"
    return LeanTrainer
