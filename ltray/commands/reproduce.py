"""`ltray reproduce [--config NAME_OR_FILE] [options] [key=value ...]`: the poster's table.

    ltray reproduce --config quick           # digits-LT, 2 seeds, a few minutes on CPU
    ltray reproduce --config cifar10-lt --epochs 30 --seeds 1 --mixup-alphas 0.3
    ltray reproduce --resume ~/.ltray/reproductions/reproduce-quick-...   # finish it

Trains the stage-1 runs the rows need (CE, KT, OLTR on the CE run, LFME experts + student, the
Mixup grid) on Ray, fits the post-hoc methods on the CE run's cache (choices on val), repeats
over seeds (seed k sets train.seed=k; data.seed stays fixed, so every row shares one split) and
prints Many / Medium / Few / Overall as mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ltray.errors import ConfigError
from ltray.reproduce import CliOptions, finish, load_reproduction, resume, start
from ltray.reproduce.driver import check_runs, plan_of
from ltray.reproduce.plan import is_finished

__all__ = ["add_parser", "run"]


def _csv(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            return [kind(t) for t in items]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected a comma-separated list of {kind.__name__}"
            ) from None

    return parse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="reproduce the poster's table (+ Mixup study) over seeds, mean ± std",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides for every run"
    )
    p.add_argument(
        "--config",
        metavar="NAME_OR_FILE",
        help="preset (quick, cifar10-lt, imagenet-lt) or a YAML file; default: quick",
    )
    p.add_argument("--seeds", type=int, help="number of seeds (train.seed = 0..N-1)")
    p.add_argument(
        "--epochs", type=int, help="epochs of every run (warm-up and milestones rescaled)"
    )
    p.add_argument(
        "--methods",
        type=_csv(str),
        help="rows of the main table, comma-separated (default: all): ce,oltr,lfme,asm,llw,kt,"
        "ncm,sum,softmax_sum,max_concat,max_concat_prob,weighted,crt,lws,tau_norm,logit_adj",
    )
    p.add_argument("--mixup-alphas", type=_csv(float), help="e.g. 0.1,0.3,1.0")
    p.add_argument("--mixup-variants", type=_csv(str), help="subset of input,manifold,tail,head")
    p.add_argument("--mixup-samplers", type=_csv(str), help="subset of instance,class_balanced")
    p.add_argument("--no-mixup", action="store_true", help="skip the Mixup study")
    p.add_argument("--out", metavar="DIR", help="new reproduction directory")
    p.add_argument(
        "--resume", metavar="DIR", help="finish an interrupted reproduction (finished runs stay)"
    )
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    p.add_argument("--mlflow-uri", help="log a parent run with the tables (and child runs) here")
    p.add_argument(
        "--table-only",
        action="store_true",
        help="with --resume: print and save the tables of what has finished, train nothing",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan (runs, dependencies) and stop"
    )
    p.set_defaults(func=run)


_PLAN_OPTIONS = (
    "config",
    "seeds",
    "epochs",
    "methods",
    "mixup_alphas",
    "mixup_variants",
    "mixup_samplers",
    "out",
)


def _check_resume_args(args: argparse.Namespace) -> None:

    given = [f"--{o.replace('_', '-')}" for o in _PLAN_OPTIONS if getattr(args, o) is not None]
    if args.no_mixup:
        given.append("--no-mixup")
    if args.overrides:
        given.append("key=value overrides")
    if given:
        raise ConfigError(
            f"--resume continues a reproduction with its saved plan; drop {', '.join(given)} "
            "(or start a new one with --out)"
        )


def _print_plan(console: Any, plan: Any, out_dir: Any) -> None:

    console.print(f"plan: {len(plan.runs)} runs, {plan.opts.seeds} seed(s), dir {out_dir}")
    for run in plan.runs:
        state = "done" if is_finished(out_dir / run.id) else "todo"
        after = f"  after {', '.join(run.depends)}" if run.depends else ""
        console.print(f"  [{state}] {run.id}{after}", highlight=False, markup=False)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 140)
    if args.table_only and not args.resume:
        raise ConfigError("--table-only reads an existing reproduction; add --resume DIR")
    if args.resume:
        _check_resume_args(args)
        plan, out_dir = resume(args.resume)
    else:
        cli = CliOptions(
            seeds=args.seeds,
            epochs=args.epochs,
            methods=args.methods,
            mixup_alphas=args.mixup_alphas,
            mixup_variants=args.mixup_variants,
            mixup_samplers=args.mixup_samplers,
            no_mixup=args.no_mixup,
        )
        rep = load_reproduction(args.config, args.overrides, cli)
        if args.dry_run:
            plan = plan_of(rep)
            check_runs(plan)  # the same validation a real start runs
            for note in rep.notes:
                console.print(f"[reproduce] {note}", highlight=False, markup=False)
            _print_plan(console, plan, Path(args.out or "DIR"))
            return 0
        plan, out_dir = start(rep, args.out)
    for note in plan.notes:
        console.print(f"[reproduce] {note}", highlight=False, markup=False)
    _print_plan(console, plan, out_dir)
    result = finish(
        plan,
        out_dir,
        address=args.address,
        num_cpus=args.num_cpus,
        mlflow_uri=args.mlflow_uri,
        console=console,
        train=not args.table_only,
    )
    console.print(result.tables.main_rich)
    if result.tables.mixup_rich is not None:
        console.print(result.tables.mixup_rich)
    o = result.outcome
    console.print(
        f"trained/fitted {len(o.trained)}, already finished {len(o.skipped)}, "
        f"failed {len(o.failed)}; {o.wall_s:.0f} s; tables in {out_dir}",
        highlight=False,
    )
    if result.mlflow_run:
        console.print(f"MLflow parent run: {result.mlflow_run}")
    if o.failed:
        for rid, msg in o.failed.items():
            console.print(f"[red]failed[/] {rid}: {msg}", highlight=False)
        console.print(f"rerun what failed with `ltray reproduce --resume {out_dir}`")
        return 1
    return 0
