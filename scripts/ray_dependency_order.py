"""In which order does Ray start tasks whose upstream finishes while others wait for a core?

Why `ltray reproduce` keeps its own priority queue (ltray/reproduce/runner.py) instead of
handing Ray every run at once with its upstream runs as task dependencies: on one CPU, submit
``upstream`` (0.5 s), then ``dependent`` (needs upstream's result), then four independent
``filler`` tasks, in that order (the priority order: OLTR after its CE run before the Mixup
study). The script prints the order the tasks started in.

    python scripts/ray_dependency_order.py
"""

from __future__ import annotations

import os
import time

import ray


@ray.remote(num_cpus=1)
def work(name: str, seconds: float, *upstream: object) -> tuple[str, float]:
    start = time.time()
    time.sleep(seconds)
    return name, start


def main() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    up = work.remote("upstream", 0.5)
    refs = [up, work.remote("dependent", 0.1, up)]
    refs += [work.remote(f"filler-{i}", 0.3) for i in range(4)]
    started = sorted(ray.get(refs), key=lambda r: r[1])
    order = [name for name, _ in started]
    print("submitted: upstream, dependent, filler-0..3")
    print("started:  ", ", ".join(order))
    print(f"dependent started {order.index('dependent') + 1} of {len(order)}")
    ray.shutdown()


if __name__ == "__main__":
    main()
