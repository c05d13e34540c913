"""The `ltray` command line: a thin layer over library functions.

Each subcommand lives in ``ltray/commands/<name>.py`` and exposes ``add_parser(subparsers)`` and
``run(args) -> int``. Command modules import heavy libraries (torch, ray) inside ``run`` only, so
``ltray --help`` and config errors come back fast. Every :class:`LtrayError` becomes one line on
stderr and exit code 2, before any expensive work has started.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ltray._version import __version__
from ltray.errors import LtrayError

__all__ = ["main", "COMMANDS"]

COMMANDS = (
    "train",
    "fuse",
    "tune",
    "confirm",
    "report",
    "reproduce",
    "data",
    "evaluate",
    "predict",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltray",
        description="Long-tailed recognition: memory module, post-hoc fusion, knowledge transfer; "
        "Ray Tune + Optuna search tracked in MLflow.",
    )
    parser.add_argument("--version", action="version", version=f"ltray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"ltray.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except LtrayError as exc:
        print(f"ltray: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ltray: interrupted; results written so far are kept", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``ltray`` command: :func:`main`, then stop the Ray this process started. Stopping it
    here rather than from Ray's exit hook skips that hook's half-second wait for late log lines
    (every worker has finished by now); on a cluster it only disconnects."""
    code = main()
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    sys.exit(code)


if __name__ == "__main__":
    entry()
