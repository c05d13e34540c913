"""`ltray reproduce`: the poster's table (CE, OLTR, LFME, ASM, LLW, KT + baselines) and the Mixup
study, mean ± std over seeds, from stage-1 runs on Ray and post-hoc fits on the CE run's cache.

Modules: :mod:`~ltray.reproduce.options` (rows, grid, ``reproduce:`` section),
:mod:`~ltray.reproduce.setup` (preset/YAML + CLI → validated reproduction),
:mod:`~ltray.reproduce.plan` (runs, dependencies, ``plan.json``, finished checks),
:mod:`~ltray.reproduce.runner` (Ray tasks), :mod:`~ltray.reproduce.table` (mean ± std, CSV, PNG),
:mod:`~ltray.reproduce.report` (records → tables), :mod:`~ltray.reproduce.tracking` (MLflow).
"""

from ltray.reproduce.driver import Result, default_out_dir, finish, resume, start
from ltray.reproduce.options import MAIN_ROWS, OTHER_ROWS, ROW_NAMES, ReproduceOptions
from ltray.reproduce.plan import Plan, RunSpec, build_plan, read_plan, write_plan
from ltray.reproduce.setup import CliOptions, Reproduction, load_reproduction
from ltray.reproduce.table import Agg, Record, aggregate, format_cell, summarize

__all__ = [
    "Agg",
    "CliOptions",
    "MAIN_ROWS",
    "OTHER_ROWS",
    "Plan",
    "ROW_NAMES",
    "Record",
    "ReproduceOptions",
    "Reproduction",
    "Result",
    "RunSpec",
    "aggregate",
    "build_plan",
    "default_out_dir",
    "finish",
    "format_cell",
    "load_reproduction",
    "read_plan",
    "resume",
    "start",
    "summarize",
    "write_plan",
]
