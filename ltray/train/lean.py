"""Ray Train trainers for a Ray instance that one `ltray train` started for itself.

Ray Train V2 starts three helpers for every run whatever it does: a detached
``PlacementGroupCleaner`` (which frees the run's placement group if the controller dies; it
polls the State API, so it needs the dashboard, and without it warns every second), the Ray
Data callback (shard provider and dataset manager actors) and, from the scaling policy, an
``AutoscalingCoordinator`` actor that forwards the run's resource request to the cluster
autoscaler. A local `ltray train` owns its Ray instance, which ends with the command, so nothing
can outlive it; it reads no Ray Dataset; and its one node has no autoscaler (ltray checks that
the run fits the machine before Ray starts). Each helper costs a worker process (about 1.5-2 s
to start and import on a 2-core machine, one after the other) before the loop can begin.

:func:`lean_trainer_class` returns the trainer with those helpers left out. The hooks are
``DataParallelTrainer._create_default_callbacks`` and the ``scaling_policy`` argument of
``_initialize_and_run_controller`` (Ray 2.60); if a Ray release moves them, the subclass finds
nothing to drop or replace and behaves exactly as the stock trainer.
"""

from __future__ import annotations

from typing import Any

__all__ = ["lean_trainer_class", "local_scaling_policy", "UNUSED_CALLBACKS"]

UNUSED_CALLBACKS = ("PlacementGroupCleanerCallback", "DatasetsCallback")


def _fixed_policy_class() -> type | None:
    try:
        from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy
    except ImportError:  # a Ray release that moved it: keep the stock policy
        return None
    return FixedScalingPolicy


_Fixed = _fixed_policy_class()

if _Fixed is not None:

    class LocalFixedScalingPolicy(_Fixed):  # type: ignore[misc, valid-type]
        """The fixed-size policy without the autoscaler round trips: no coordinator actor is
        created, no resource request sent or cancelled. The sizing decisions are the stock
        policy's (a fixed number of workers, recreated after a failure)."""

        def after_controller_start(self, train_run_context: Any) -> None:
            self._requester_id = f"train-{train_run_context.run_id}"

        def _maybe_send_resource_request(self) -> None:
            pass

        def _send_resource_request(self) -> None:
            pass

        def _cancel_resource_request(self) -> None:
            pass


def local_scaling_policy(policy: Any) -> Any:
    """``policy`` (the controller's) as a :class:`LocalFixedScalingPolicy` when it is the stock
    fixed-size one; any other policy (elastic, or one a Ray release adds) is kept."""
    if _Fixed is None or type(policy) is not _Fixed:
        return policy
    return LocalFixedScalingPolicy(policy.scaling_config)


def lean_trainer_class(base: type) -> type:
    """``base`` (``DataParallelTrainer`` or ``TorchTrainer``) without the callbacks named in
    :data:`UNUSED_CALLBACKS` and with the fixed scaling policy's autoscaler calls left out."""

    class LeanTrainer(base):  # type: ignore[misc, valid-type]
        def _create_default_callbacks(self) -> list[Any]:
            callbacks = super()._create_default_callbacks()
            return [cb for cb in callbacks if type(cb).__name__ not in UNUSED_CALLBACKS]

        def _initialize_and_run_controller(self, **kwargs: Any) -> Any:
            if "scaling_policy" in kwargs:
                kwargs["scaling_policy"] = local_scaling_policy(kwargs["scaling_policy"])
            return super()._initialize_and_run_controller(**kwargs)

    LeanTrainer.__name__ = LeanTrainer.__qualname__ = f"Lean{base.__name__}"
    return LeanTrainer
