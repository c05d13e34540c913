"""From a finished (or partly finished) reproduction directory to its two tables.

    records = collect_records(plan, out_dir)
    tables = build_tables(plan, records)
    paths = save_tables(tables, records, out_dir)

Main table rows (the poster's order, docs/methods.md#reference-numbers): CE = linear head of the
``ce`` run; OLTR = its stage-2 run; LFME = the student; ASM, LLW = post-hoc methods over the CE
run's cache; KT = KT head of the ``kt`` run; below a rule, the other post-hoc rows (NCM, fusion
rules, cRT, LWS, τ-norm, logit adjustment), all over the CE run's cache, every choice made on val.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ltray.reproduce.options import OTHER_ROWS
from ltray.reproduce.plan import Plan, is_finished, posthoc_path
from ltray.reproduce.table import (
    COLUMNS,
    Record,
    TableRow,
    plot_table,
    render_text,
    rich_table,
    summarize,
    write_csv,
)
from ltray.train.rundir import RunDir

__all__ = ["Tables", "collect_records", "build_tables", "save_tables", "describe_data"]

_MIXUP_HEAD = "linear"


@dataclass
class Tables:
    """The two tables (rows + rich renderables)."""

    main: list[TableRow]
    mixup: list[TableRow]
    main_rich: Any
    mixup_rich: Any | None


def _from_summary(table: str, row: str, seed: int, test: dict[str, Any], source: str) -> Record:
    return Record(table, row, seed, *(test.get(c) for c in COLUMNS), source=source)


def _run_record(out_dir: Path, run_id: str, head: str, table: str, row: str, seed: int) -> Record:
    run_dir = out_dir / run_id
    if not is_finished(run_dir):
        return Record(table, row, seed, None, None, None, None, f"{run_id} (not finished)")
    results = RunDir(run_dir).results() or {"heads": {}}
    test = results["heads"].get(head, {}).get("test", {})
    return _from_summary(table, row, seed, test, f"{run_id}:{head}")


def collect_records(plan: Plan, out_dir: Path) -> list[Record]:
    """Every per-seed number of both tables; missing runs give all-absent records."""
    out_dir = Path(out_dir)
    records: list[Record] = []
    for seed in plan.seeds:
        for spec in plan.opts.rows():
            if seed >= plan.opts.seeds_of(spec.name):
                continue  # a row run on fewer seeds (reproduce.row_seeds)
            if spec.posthoc:
                path = posthoc_path(out_dir, seed, spec.posthoc)
                if path.is_file():
                    test = json.loads(path.read_text())["test"]
                    records.append(_from_summary("main", spec.name, seed, test, str(path)))
                else:
                    records.append(
                        Record("main", spec.name, seed, None, None, None, None, "not fitted")
                    )
            else:
                run_id = plan.row_run(spec.name, seed)
                records.append(_run_record(out_dir, run_id, spec.head, "main", spec.name, seed))
        for mrow in plan.mixup_rows:
            run_id = mrow.runs.get(seed)
            if run_id:
                records.append(_run_record(out_dir, run_id, _MIXUP_HEAD, "mixup", mrow.key, seed))
    return records


def describe_data(plan: Plan) -> str:
    """One line naming the dataset and split shared by every seed."""
    data = plan.base.get("data", {})
    name = data.get("name", "digits-lt")
    rho = data.get("imbalance_ratio", 10.0)
    return f"{name} ρ={rho:g}, data.seed={data.get('seed', 0)} (one split for every seed)"


def _captions(plan: Plan) -> tuple[str, str]:
    n = plan.opts.seeds
    ce = plan.opts.ce_run
    shared = (
        " One kt run per seed serves CE, KT and the post-hoc rows: its backbone and linear head "
        "are trained by CE alone (kt.detach_feature=true)."
        if plan.opts.shared_stage1
        else ""
    )
    seeds = "train.seed = 0" if n == 1 else f"train.seed = 0..{n - 1}"
    spread = "one seed, no std" if n == 1 else f"mean ± sample std over {n} seeds"
    common = (
        f"test top-1 %, mean per-class accuracy, {spread} ({seeds}); {describe_data(plan)}; "
        "— = absent (empty group or no run)."
    )
    main = (
        f"{common}\nCE = linear head of the {ce} run; KT = KT head of the kt run; OLTR = its "
        f"stage 2 on the {ce} run; LFME = the student. ASM, LLW and every row below the rule "
        f"are post-hoc methods over the {ce} run's cache (choices on val).{shared}"
    )
    mix = (
        f"{common}\nrows variant / α / sampler, train.method=ce, linear head; 'none' = no mixup "
        "(the instance reference is the CE run)."
    )
    return main, mix


def build_tables(plan: Plan, records: list[Record]) -> Tables:
    """Aggregate ``records`` into the main and the Mixup table."""
    specs = plan.opts.rows()
    first_other = next((s.name for s in specs if s in OTHER_ROWS), None)
    main = summarize(records, "main", [(s.name, s.label) for s in specs], rule_before=first_other)
    mix_rows = [(r.key, r.key) for r in plan.mixup_rows]
    mixup = summarize(records, "mixup", mix_rows, rule_before=None)
    for row, mrow in zip(mixup, plan.mixup_rows, strict=True):
        row.extra = {"variant": mrow.variant, "alpha": mrow.alpha or "", "sampler": mrow.sampler}
    _rule_after_references(mixup)
    main_cap, mix_cap = _captions(plan)
    title = f"{plan.source}: long-tailed recognition (test, %)"
    main_rich = rich_table(main, title=title, caption=main_cap)
    mixup_rich = (
        rich_table(
            mixup,
            title=f"{plan.source}: Mixup study (test, %)",
            caption=mix_cap,
            first="variant/α/sampler",
        )
        if mixup
        else None
    )
    return Tables(main, mixup, main_rich, mixup_rich)


def _rule_after_references(rows: list[TableRow]) -> None:
    """A rule between the no-mixup references and the mixup cells."""
    for row in rows:
        row.rule_above = False
    for i, row in enumerate(rows):
        if row.extra.get("variant") != "none":
            if i:
                row.rule_above = True
            return


def save_tables(tables: Tables, records: list[Record], out_dir: Path) -> list[Path]:
    """``records.json``, ``table.{csv,txt,png}`` and ``mixup.{csv,txt,png}`` in ``out_dir``."""
    out_dir = Path(out_dir)
    paths = [out_dir / "records.json"]
    paths[0].write_text(json.dumps([asdict(r) for r in records], indent=1))
    for name, rows, renderable in (
        ("table", tables.main, tables.main_rich),
        ("mixup", tables.mixup, tables.mixup_rich),
    ):
        if not rows:
            continue
        paths.append(write_csv(rows, out_dir / f"{name}.csv"))
        txt = out_dir / f"{name}.txt"
        txt.write_text(render_text(renderable))
        paths.append(txt)
        title = renderable.title or name
        paths.append(plot_table(rows, out_dir / f"{name}.png", title=str(title)))
    return paths
