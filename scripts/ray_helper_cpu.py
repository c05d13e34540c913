"""CPU that Ray's helper processes take from training, measured on a private local Ray.

    python scripts/ray_helper_cpu.py [--seconds 30] [--health-check 0.5] [--system-config JSON]

Starts a Ray the way `ltray train` starts its own (ltray's quiet `_system_config`, its Train
environment, the lean trainer), runs one Train worker that only sleeps, and prints, as one JSON
line, the CPU time every other process of that Ray instance (GCS, raylet, agents, log monitor,
Train controller, synchronisation actor, the driver) used over ``--seconds``, in % of one core.
On a 2-core machine whose two training threads wait for each other at every step, this is the
time the helpers can preempt a step. ``--system-config`` adds Ray settings to try (JSON object;
an unknown name makes Ray's GCS exit at start), ``--health-check`` sets the Train controller's
polling interval (ltray uses 0.5 s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    first = argv[0].decode(errors="replace")
    if first.startswith("ray::"):
        return first
    # a daemon: its executable or, for a Python process, its script
    script = next((a.decode() for a in argv[1:] if a.endswith(b".py")), "")
    return Path(script or first).name


def _descendants(root: int) -> list[int]:
    from ltray.train.priority import _parent  # the /proc stat parsing ltray uses itself

    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (parent := _parent(int(entry))) is not None:
            parents.setdefault(parent, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += parents.get(pid, [])
    return out


def _sleeping_worker(config: dict[str, Any]) -> None:
    """The Train worker: wait for the helpers to settle, then measure every other process."""
    me = os.getpid()
    time.sleep(config["settle_s"])
    pids = [p for p in _descendants(config["driver"]) if p != me]
    before = {p: _cpu_s(p) for p in pids}
    t0 = time.time()
    time.sleep(config["seconds"])
    elapsed = time.time() - t0
    rows = []
    for pid in pids:
        a, b = before[pid], _cpu_s(pid)
        if a is not None and b is not None:
            rows.append((round(100 * (b - a) / elapsed, 2), _name(pid)))
    rows.sort(reverse=True)
    summary = {
        "seconds": round(elapsed, 1),
        "total_pct_of_one_core": round(sum(r[0] for r in rows), 2),
    }
    summary["processes"] = [{"pct": pct, "process": name} for pct, name in rows]
    Path(config["out"]).write_text(json.dumps(summary))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="measurement window")
    ap.add_argument("--settle", type=float, default=8.0, help="wait before measuring (s)")
    ap.add_argument("--health-check", default="0.5", help="RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
    ap.add_argument("--system-config", default="{}", help="extra Ray _system_config (JSON)")
    args = ap.parse_args(argv)
    if not Path("/proc/self/stat").is_file():
        print("ray_helper_cpu.py reads /proc: Linux only", file=sys.stderr)
        return 2
    try:
        extra = json.loads(args.system_config)
    except json.JSONDecodeError as exc:
        print(f"--system-config: not JSON ({exc})", file=sys.stderr)
        return 2

    import tempfile

    import ray
    import ray.train
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from ltray.train import driver
    from ltray.train.lean import lean_trainer_class

    os.environ.update(driver._RAY_ENV | {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": args.health_check})
    system = dict(driver._QUIET_LOCAL_RAY) | extra
    with tempfile.TemporaryDirectory(prefix="ray-helper-cpu-") as tmp:
        out = Path(tmp) / "result.json"
        ray.init(
            include_dashboard=False,
            num_cpus=2,
            _system_config=system,
            runtime_env=driver.driver_runtime_env(None),
        )
        try:
            trainer = lean_trainer_class(DataParallelTrainer)(
                _sleeping_worker,
                train_loop_config={
                    "driver": os.getpid(),
                    "seconds": args.seconds,
                    "settle_s": args.settle,
                    "out": str(out),
                },
                scaling_config=ray.train.ScalingConfig(
                    num_workers=1, resources_per_worker={"CPU": 1}
                ),
                run_config=ray.train.RunConfig(storage_path=tmp, name="idle"),
            )
            trainer.fit()
        finally:
            ray.shutdown()
        result = json.loads(out.read_text())
    result.update(health_check_s=float(args.health_check), extra_system_config=extra)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
