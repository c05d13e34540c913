"""`ltray fuse RUN_DIR --method NAME [key=value ...]`: post-hoc methods over a run's cache.

    ltray fuse runs/cifar10-... --method all
    ltray fuse runs/cifar10-... --method llw lr=0.1 epochs=20
    ltray fuse runs/cifar10-... --method llw,asm llw.lr=0.1 asm.seed=3

Everything is chosen on val and reported on test; results go to a new
``RUN_DIR/fusion/fuse-<timestamp>/`` folder (CSV, JSON, charts) and, when the run has an
``mlflow_run.json``, to its MLflow run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ltray.config import parse_override
from ltray.errors import CacheError, ConfigError, LtrayError, RunDirError
from ltray.fusion.cache import read_cache
from ltray.fusion.report import rich_table, save_results
from ltray.tracking import log_fusion
from ltray.train.rundir import RunDir

__all__ = ["add_parser", "run", "parse_method_settings"]


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "fuse",
        help="post-hoc fusion (sum, weighted, LLW, ASM...) and decoupling baselines on a cache",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # One positional list (RUN_DIR first) so settings may follow --method on the command line.
    p.add_argument(
        "items",
        nargs="*",
        metavar="RUN_DIR [key=value ...]",
        help="a run folder written by `ltray train`, then method settings: key=value for one "
        "method, method.key=value for several",
    )
    # nargs="+" so that `--method llw lr=0.1` works: argparse cannot put positionals after an
    # option into the positional list, so key=value tokens after --method are collected here.
    p.add_argument(
        "--method",
        nargs="+",
        default=["all"],
        metavar="NAME",
        help="a method name, a comma-separated list, or 'all' (default); key=value settings may "
        "follow; see --list",
    )
    p.add_argument("--list", action="store_true", help="list the methods and their settings")
    p.set_defaults(func=run)


def parse_method_settings(methods: list[str], items: list[str]) -> dict[str, dict[str, Any]]:
    """``["lr=0.1"]`` (one method) or ``["llw.lr=0.1"]`` → ``{"llw": {"lr": 0.1}}``; every
    problem is raised at once as one ConfigError."""

    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    problems: list[str] = []
    for item in items:
        try:
            parts, value = parse_override(item)
        except LtrayError as exc:
            problems.append(str(exc))
            continue
        if len(parts) == 1 and len(methods) == 1:
            out[methods[0]][parts[0]] = value
        elif len(parts) == 2 and parts[0] in out:
            out[parts[0]][parts[1]] = value
        else:
            problems.append(
                f"setting {item!r}: use key=value with one method or method.key=value with "
                f"several (methods here: {', '.join(methods)})"
            )
    if problems:
        raise ConfigError("; ".join(problems))
    return out


def _methods_list() -> str:
    from ltray.fusion.methods import DISPLAY_ORDER, FUSION_METHODS  # torch

    lines = []
    for name in [n for n in DISPLAY_ORDER if n in FUSION_METHODS]:
        spec = FUSION_METHODS.get(name)
        keys = ", ".join(f"{k}={f.default}" for k, f in spec.settings.model_fields.items())
        lines.append(
            f"{name:16s} {spec.summary}" + (f"\n{'':16s} settings: {keys}" if keys else "")
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ltray.fusion.methods import (  # torch: after the command line parsed
        FUSION_METHODS,
        available_methods,
        missing_requirements,
        parse_settings,
        run_method,
    )

    console = Console(width=max(Console().width, 110))
    if args.list:
        console.print(_methods_list(), highlight=False)
        return 0
    # 1. Check every input before any work.
    if not args.items:
        raise ConfigError("ltray fuse: RUN_DIR missing; usage: ltray fuse RUN_DIR --method all")
    run_dir = Path(args.items[0]).expanduser().resolve()
    if not run_dir.is_dir():
        raise RunDirError(
            f"{run_dir}: no such run directory; pass a folder written by `ltray train`"
        )
    cache_dir = RunDir(run_dir).cache_dir if RunDir(run_dir).cache_dir.is_dir() else run_dir
    if not (cache_dir / "meta.json").is_file():
        raise CacheError(
            f"{cache_dir / 'meta.json'}: no feature cache in {run_dir}; run `ltray train` "
            "(it writes RUN_DIR/cache/) or pass the right run folder"
        )
    method_tokens = [t for t in args.method if "=" not in t]
    setting_items = args.items[1:] + [t for t in args.method if "=" in t]
    method_arg = ",".join(method_tokens)
    want_all = method_arg.strip() == "all"
    names = [] if want_all else [m.strip() for m in method_arg.split(",") if m.strip()]
    unknown = [n for n in names if n not in FUSION_METHODS]
    if unknown or not (want_all or names):
        raise ConfigError(
            f"--method {method_arg!r}: unknown method(s) {', '.join(unknown) or '(none given)'}; "
            f"known: all, {', '.join(FUSION_METHODS.names())}"
        )
    settings = parse_method_settings(names or FUSION_METHODS.names(), setting_items)
    for name, values in settings.items():
        parse_settings(name, values)

    # 2. Read the cache; explicitly named methods must be runnable on it.
    cache = read_cache(run_dir)
    if want_all:
        names = available_methods(cache)
        skipped = [n for n in FUSION_METHODS.names() if n not in names]
        if skipped:
            console.print(f"skipping (cache lacks what they need): {', '.join(skipped)}")
    for name in names:
        missing = missing_requirements(cache, name)
        if missing:
            raise CacheError(
                f"{cache.path}: method {name} needs {', '.join(missing)}; "
                "pick another method or use --method all"
            )

    # 3. Fit on train + val, report on test, save.
    results = []
    with console.status("fitting") as status:
        for name in names:
            status.update(f"fitting {name}")
            results.append(run_method(cache, name, settings.get(name)))
    out_dir = save_results(run_dir, results, cache.class_counts)
    warning = log_fusion(run_dir, out_dir, results)  # to the run's MLflow run, if it has one
    proto = cache.meta.get("val_protocol", "?")
    console.print(rich_table(results, f"{run_dir.name}: post-hoc methods (val protocol: {proto})"))
    console.print(f"saved to {out_dir}")
    if warning:
        console.print(f"[yellow]warning:[/] {warning}")
    return 0
