"""What `ltray train` pays before its loop starts: imports, data validation, Ray's helpers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest


def test_the_driver_validates_data_without_importing_torch() -> None:
    code = (
        "import sys\n"
        "from ltray.config import load_config\n"
        "import ltray.commands.train, ltray.train.driver, ltray.train.tables, ltray.resources\n"
        "from ltray.data import prepare_data\n"
        "prepare_data(load_config(None, []).data)\n"
        "heavy = sorted(m for m in ('torch', 'sklearn', 'torchvision') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported at validation: {out.stdout}"


def test_digits_read_from_the_bundled_file_equal_load_digits() -> None:
    from sklearn.datasets import load_digits

    from ltray.data.sources import _load_digits

    images, labels = _load_digits()
    ref = load_digits()
    assert np.array_equal(images, ref.images) and np.array_equal(labels, ref.target)


def test_lean_trainer_leaves_out_the_helpers_a_private_ray_does_not_use() -> None:
    import ray.train
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from ltray.train.lean import UNUSED_CALLBACKS, lean_trainer_class

    def loop() -> None:
        pass

    kwargs = {"scaling_config": ray.train.ScalingConfig(num_workers=1)}
    stock = {
        type(cb).__name__ for cb in DataParallelTrainer(loop, **kwargs)._create_default_callbacks()
    }
    lean_cls = lean_trainer_class(DataParallelTrainer)
    lean = {type(cb).__name__ for cb in lean_cls(loop, **kwargs)._create_default_callbacks()}
    # The hook still exists in this Ray and still creates both helpers: the lean trainer
    # really drops something (if Ray renames them, this test says so).
    assert set(UNUSED_CALLBACKS) <= stock
    assert lean == stock - set(UNUSED_CALLBACKS)
    assert issubclass(lean_cls, DataParallelTrainer)


def test_lean_trainer_starts_no_autoscaling_coordinator(monkeypatch) -> None:
    """The fixed-size policy of a private Ray keeps its decisions but never creates the
    AutoscalingCoordinator actor (one worker process, ~1.5 s here) or sends it requests."""
    import types

    import ray.train
    from ray.train.v2._internal.execution.scaling_policy import (
        ResizeDecision,
        autoscaling_coordinator_client,
        create_scaling_policy,
    )
    from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from ltray.train.lean import lean_trainer_class, local_scaling_policy

    def refuse(*args, **kwargs):
        raise AssertionError("the lean policy contacted the autoscaling coordinator")

    monkeypatch.setattr(
        autoscaling_coordinator_client, "get_or_create_autoscaling_coordinator", refuse
    )
    monkeypatch.setattr(
        autoscaling_coordinator_client.TrainAutoscalingCoordinatorClient, "__init__", refuse
    )
    scaling = ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1})
    stock = create_scaling_policy(scaling)
    assert type(stock) is FixedScalingPolicy  # what Ray builds for a fixed size (Ray 2.60)
    lean = local_scaling_policy(stock)
    assert isinstance(lean, FixedScalingPolicy) and lean is not stock
    lean.after_controller_start(types.SimpleNamespace(run_id="r1"))
    decision = lean.make_decision_for_non_running_worker_group()
    assert isinstance(decision, ResizeDecision) and decision.num_workers == 2
    assert decision.resources_per_worker == {"CPU": 1}
    lean.before_controller_abort()
    with pytest.raises(AssertionError, match="contacted"):  # the stock one would
        stock.after_controller_start(types.SimpleNamespace(run_id="r1"))

    # Another policy (elastic sizing, or one a later Ray adds) is left as it is ...
    other = object()
    assert local_scaling_policy(other) is other
    # ... and the lean trainer hands the controller the lean policy.
    seen: dict = {}
    monkeypatch.setattr(
        DataParallelTrainer,
        "_initialize_and_run_controller",
        lambda self, **kwargs: seen.update(kwargs),
    )
    trainer = lean_trainer_class(DataParallelTrainer)(lambda: None, scaling_config=scaling)
    trainer._initialize_and_run_controller(scaling_policy=stock, other=1)
    assert type(seen["scaling_policy"]) is type(lean) and seen["other"] == 1


def test_the_ltray_command_stops_the_ray_it_started(monkeypatch) -> None:
    """`ltray` (the console script) stops Ray itself after the command, before Ray's exit hook
    would (which waits half a second more), and exits with the command's code."""
    import types

    import ltray.cli as cli

    calls: list[str] = []
    fake = types.SimpleNamespace(
        is_initialized=lambda: True, shutdown=lambda: calls.append("shutdown")
    )
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(cli, "main", lambda: calls.append("main") or 3)
    with pytest.raises(SystemExit) as exc:
        cli.entry()
    assert exc.value.code == 3 and calls == ["main", "shutdown"]
    fake.is_initialized = lambda: False
    calls.clear()
    with pytest.raises(SystemExit):
        cli.entry()
    assert calls == ["main"]


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc")
def test_deprioritize_lowers_ray_helpers_but_not_training_workers(tmp_path: Path) -> None:
    """A fake run: driver → (gcs, raylet → (controller, RayTrainWorker)). Called for the
    worker, the function lowers gcs and controller, and leaves the worker, raylet, driver."""
    from ltray.train.priority import NICENESS, deprioritize_ray_helpers

    pids = tmp_path / "pids"
    pids.mkdir()
    sleeper = "import sys, time, os; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
    raylet_code = (
        "import subprocess, sys, time, os\n"
        f"p = {str(pids)!r}\n"
        "open(p + '/raylet', 'w').write(str(os.getpid()))\n"
        f"s = {sleeper!r}\n"
        "subprocess.Popen([sys.executable, '-c', s, p + '/controller', 'ray::TrainController'])\n"
        "subprocess.Popen([sys.executable, '-c', s, p + '/worker', 'ray::RayTrainWorker'])\n"
        "time.sleep(60)\n"
    )
    driver_code = (
        "import subprocess, sys, time\n"
        f"p = {str(pids)!r}\n"
        f"s = {sleeper!r}\n"
        "subprocess.Popen([sys.executable, '-c', s, p + '/gcs', 'gcs_server'])\n"
        f"subprocess.Popen([sys.executable, '-c', {raylet_code!r}])\n"
        "time.sleep(60)\n"
    )
    driver = subprocess.Popen([sys.executable, "-c", driver_code])
    try:
        names = ("gcs", "raylet", "controller", "worker")
        deadline = time.time() + 30
        while not all((pids / n).is_file() and (pids / n).read_text() for n in names):
            assert time.time() < deadline, "fake process tree did not start"
            time.sleep(0.1)
        pid = {n: int((pids / n).read_text()) for n in names}
        changed = deprioritize_ray_helpers(worker=pid["worker"])
        assert sorted(changed) == sorted([pid["gcs"], pid["controller"]])
        nice = {n: os.getpriority(os.PRIO_PROCESS, p) for n, p in pid.items()}
        assert nice["gcs"] == nice["controller"] == NICENESS
        assert nice["worker"] == nice["raylet"] == os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, driver.pid) == os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        subprocess.run(["pkill", "-P", str(driver.pid)], check=False)
        for p in pids.iterdir():
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(p.read_text()), 9)
        driver.kill()


def test_reproduce_starts_a_ray_whose_training_workers_are_not_niced(monkeypatch) -> None:
    # At Ray's default worker_niceness (15) a reproduction's training workers lose the CPU to
    # every other process on the machine (measured: 36 instead of 50 images/s per run).
    import ray

    import ltray.train.driver as driver
    from ltray.launch import start_ray

    seen: dict = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(driver, "ray_init", lambda address, **kw: seen.update(kw))
    assert start_ray(None, num_cpus=3) is True
    assert seen["_system_config"]["worker_niceness"] == 0
    assert seen["num_cpus"] == 3


def test_ctrl_c_hook_of_the_trainer_is_still_there() -> None:
    """`ltray train` replaces Ray Train's SIGINT handler (which exited 1 without a word) with
    one that raises KeyboardInterrupt (exit 130); a Ray release that renames the hook would
    bring the silent exit back, so its presence is pinned."""
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from ltray.train.driver import interruptible_trainer_class

    assert callable(getattr(DataParallelTrainer, "_register_sigint_handler", None))
    cls = interruptible_trainer_class(DataParallelTrainer)
    assert issubclass(cls, DataParallelTrainer)
    assert cls._register_sigint_handler is not DataParallelTrainer._register_sigint_handler
