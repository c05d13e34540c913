"""Helpers for tests that start their own Ray nodes with `ray start`: free ports, a port of its
own for every service, and a way to stop exactly those nodes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path

# Services whose default ports another Ray on this machine may hold (e.g. the dashboard
# agent's 52365): a node that cannot bind them never gets a job agent.
SERVICES = (
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
    "node-manager-port",
    "object-manager-port",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def own_ports(*extra: str) -> list[str]:
    """`--<service>=<free port>` for every service of :data:`SERVICES` and ``extra``."""
    return [f"--{name}={free_port()}" for name in (*SERVICES, *extra)]


def kill_tree(marker: str) -> None:
    """SIGKILL every process whose command line names ``marker`` (a node's temp dir): `ray
    stop` would stop every Ray of this user, the test's neighbours included."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
        except OSError:
            continue
        if marker in cmd:
            with contextlib.suppress(OSError):
                os.kill(int(proc.name), signal.SIGKILL)
