"""Keep Ray's control plane from stalling the training threads of a small machine.

On a machine whose cores all run training threads (2 cores, ``train.threads=2``), every
wake-up of a Ray daemon preempts one of the two threads of a step, and the other waits for it.
Measured here, one CIFAR-10-LT epoch of the same in-process loop ran at 145.8 images/s alone,
132.9 next to an idle (already quietened) Ray instance, and 141.1 when that instance's
processes ran at the lowest CPU priority (nice 19).

:func:`deprioritize_ray_helpers` is called by the first Train worker of a run whose Ray
instance `ltray train` started for itself (never on a shared cluster). It lowers the priority of
the run's daemons and helper actors (GCS, dashboard and agents, log monitor, Train controller,
synchronisation and autoscaling actors), not of the training workers, the raylet or the
driver. Lowering another process's priority needs no privilege; nothing is ever raised.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["deprioritize_ray_helpers", "NICENESS"]

NICENESS = 19
_TRAINING_WORKER = b"RayTrainWorker"


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces or parentheses: the fields after the last ')' are fixed.
    return int(stat.rsplit(")", 1)[1].split()[1])


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _parent(int(entry)) == pid:
            out.append(int(entry))
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def deprioritize_ray_helpers(niceness: int = NICENESS, *, worker: int | None = None) -> list[int]:
    """Set ``niceness`` on the Ray processes of this run other than the training workers.

    Called from inside a Train worker (``worker``: its pid, default this process): its parent
    is the raylet, whose parent is the driver that started Ray. Returns the pids changed; a
    no-op (``[]``) off Linux.
    """
    if not Path("/proc/self/stat").is_file() or not hasattr(os, "setpriority"):
        return []
    raylet = _parent(worker or os.getpid())
    driver = _parent(raylet) if raylet else None
    if raylet is None or driver is None:
        return []
    targets = [p for p in _children(driver) if p != raylet]  # GCS, dashboard, log monitor ...
    targets += [p for p in _children(raylet) if _TRAINING_WORKER not in _cmdline(p)]
    changed = []
    for pid in targets:
        # Linux keeps a nice value per thread: set it on every thread of the process.
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue  # gone
        for tid in tids:
            try:
                if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
                    os.setpriority(os.PRIO_PROCESS, tid, niceness)
            except OSError:
                continue  # gone, or not ours
        changed.append(pid)
    return changed
