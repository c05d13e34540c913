"""The reproduction plan: runs, dependencies, seeds, plan.json, and what --resume skips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ltray.reproduce import CliOptions, build_plan, load_reproduction, read_plan, write_plan
from ltray.reproduce.plan import Plan, pending_posthoc, pending_runs, posthoc_path, run_config
from ltray.reproduce.report import build_tables, collect_records
from ltray.reproduce.runner import execute

GROUPS = ["many", "medium", "few"]


def _plan(cli: CliOptions | None = None, overrides: list[str] | None = None) -> Plan:
    rep = load_reproduction("quick", overrides, cli)
    return build_plan(
        rep.cfg, rep.raw, rep.options, groups_present=GROUPS, source="quick",
        cli_overrides=rep.cli_overrides,
    )  # fmt: skip


def _finish(out: Path, run_id: str, overall: float = 0.5, few: float | None = 0.2) -> None:
    test = {"many": 0.9, "medium": 0.5, "few": few, "overall": overall}
    heads = {h: {"val": test, "test": test} for h in ("linear", "kt")}
    (out / run_id).mkdir(parents=True, exist_ok=True)
    (out / run_id / "results.json").write_text(json.dumps({"best_epoch": 1, "heads": heads}))


def test_quick_plan_runs_and_dependencies() -> None:
    plan = _plan()
    ids = [r.id for r in plan.runs]
    for seed in (0, 1):
        for run in ("ce", "kt", "oltr", "lfme/expert-few", "lfme/student"):
            assert f"seed-{seed}/{run}" in ids
        assert f"seed-{seed}/mixup/none-class_balanced" in ids
        assert f"seed-{seed}/mixup/tail-a0.3-instance" in ids
    assert len(ids) == len(set(ids)) == 2 * 12
    oltr = plan.run("seed-1/oltr")
    assert oltr.depends == ["seed-1/ce"] and oltr.refs == {"oltr.stage1": "seed-1/ce"}
    student = plan.run("seed-0/lfme/student")
    assert student.depends == [f"seed-0/lfme/expert-{g}" for g in GROUPS]
    # Every dependency comes earlier in the plan (submission order).
    for i, run in enumerate(plan.runs):
        assert all(ids.index(d) < i for d in run.depends)


def test_seed_sets_train_seed_and_keeps_the_split(tmp_path: Path) -> None:
    plan = _plan(overrides=["data.seed=7"])
    for run in plan.runs:
        cfg = run_config(plan, run, tmp_path)
        assert cfg.train.seed == run.seed
        assert cfg.data.seed == 7  # one split for every seed and every row
        assert cfg.tracking.mlflow is False
    kt = run_config(plan, plan.run("seed-0/kt"), tmp_path)
    assert kt.eval.select_head == "kt" and kt.train.method == "kt"  # quick's kind override
    oltr = run_config(plan, plan.run("seed-1/oltr"), tmp_path)
    assert oltr.oltr.stage1 == str(tmp_path / "seed-1" / "ce")
    student = run_config(plan, plan.run("seed-0/lfme/student"), tmp_path)
    assert student.lfme.experts == [str(tmp_path / f"seed-0/lfme/expert-{g}") for g in GROUPS]
    cell = run_config(plan, plan.run("seed-0/mixup/input-a0.3-class_balanced"), tmp_path)
    assert (cell.mixup.variant, cell.mixup.alpha, cell.data.sampler) == (
        "input",
        0.3,
        "class_balanced",
    )


def test_lfme_experts_only_for_present_groups() -> None:
    rep = load_reproduction("quick", cli=CliOptions(seeds=1, methods=["lfme"], no_mixup=True))
    plan = build_plan(rep.cfg, rep.raw, rep.options, groups_present=["many", "medium"], source="q")
    assert [r.id for r in plan.runs] == [
        "seed-0/lfme/expert-many",
        "seed-0/lfme/expert-medium",
        "seed-0/lfme/student",
    ]


def test_posthoc_rows_need_only_the_ce_run() -> None:
    plan = _plan(CliOptions(seeds=1, methods=["llw", "asm"], no_mixup=True))
    assert [r.id for r in plan.runs] == ["seed-0/ce"]
    assert plan.mixup_rows == []


def test_plan_json_roundtrip(tmp_path: Path) -> None:
    plan = _plan()
    write_plan(plan, tmp_path)
    again = read_plan(tmp_path)
    assert again.runs == plan.runs and again.mixup_rows == plan.mixup_rows
    assert again.opts == plan.opts and again.base == plan.base


def test_resume_skips_finished_runs_and_fitted_methods(tmp_path: Path) -> None:
    plan = _plan(CliOptions(seeds=1, methods=["ce", "oltr", "llw", "asm"], no_mixup=True))
    assert [r.id for r in pending_runs(plan, tmp_path)] == ["seed-0/ce", "seed-0/oltr"]
    _finish(tmp_path, "seed-0/ce")
    (tmp_path / "seed-0/oltr/checkpoints").mkdir(parents=True)  # started, not finished
    (tmp_path / "seed-0/oltr/results.json").write_text("{trunc")  # interrupted write
    assert [r.id for r in pending_runs(plan, tmp_path)] == ["seed-0/oltr"]
    assert pending_posthoc(plan, tmp_path) == {0: ["asm", "llw"]}
    path = posthoc_path(tmp_path, 0, "asm")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"test": {"many": 1.0, "medium": 0.5, "few": None, "overall": 0.7}}))
    assert pending_posthoc(plan, tmp_path) == {0: ["llw"]}


def test_execute_with_everything_finished_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray must not start when nothing is left to do")

    monkeypatch.setattr(ray, "init", refuse)
    plan = _plan(CliOptions(seeds=1, methods=["ce", "kt"], no_mixup=True))
    for run in plan.runs:
        _finish(tmp_path, run.id)
    outcome = execute(plan, tmp_path)
    assert outcome.trained == {} and outcome.skipped == ["seed-0/ce", "seed-0/kt"]


def test_tables_from_records_absent_groups_and_missing_runs(tmp_path: Path) -> None:
    plan = _plan(CliOptions(seeds=2, methods=["ce", "kt", "llw"], mixup_variants=["input"]))
    _finish(tmp_path, "seed-0/ce", overall=0.6, few=None)
    _finish(tmp_path, "seed-1/ce", overall=0.4, few=None)
    _finish(tmp_path, "seed-0/kt", overall=0.5)  # seed-1/kt missing (failed or interrupted)
    tables = build_tables(plan, collect_records(plan, tmp_path))
    ce, llw, kt = tables.main  # the poster's order: CE, ..., LLW, KT
    assert ce.cells["overall"].mean == pytest.approx(0.5) and ce.cells["few"] is None
    assert kt.seeds == 1 and kt.cells["overall"].std is None
    assert llw.seeds == 0 and llw.cells["overall"] is None
    keys = [r.key for r in tables.mixup]
    assert keys[:2] == ["none/—/instance", "none/—/class_balanced"]
    assert tables.mixup[0].cells["overall"].mean == pytest.approx(0.5)  # the CE run itself
    assert tables.mixup[2].rule_above and not tables.mixup[1].rule_above


def test_queue_runs_in_priority_order_and_skips_dependents_of_failures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray

    from ltray.reproduce.runner import Outcome, _Job, _run_queue

    submitted: list[str] = []

    class Ref:
        def __init__(self, rid: str) -> None:
            self.rid = rid

    def job(rid: str, depends: list[str]) -> _Job:
        def submit() -> Ref:
            submitted.append(rid)
            return Ref(rid)

        return _Job(rid, depends, submit)

    def get(ref: Ref) -> float:
        if ref.rid == "ce":
            raise RuntimeError("boom")
        return 1.0

    monkeypatch.setattr(ray, "wait", lambda refs, **kw: ([refs[0]], refs[1:]))
    monkeypatch.setattr(ray, "get", get)
    outcome = Outcome()
    queue = [job("ce", []), job("oltr", ["ce"]), job("kt", []), job("mixup", [])]
    _run_queue(queue, 1, outcome, None)
    assert submitted == ["ce", "kt", "mixup"]  # one slot: priority order, oltr never submitted
    assert set(outcome.trained) == {"kt", "mixup"}
    assert outcome.failed["ce"].startswith("RuntimeError: boom")
    assert outcome.failed["oltr"] == "not run: ce failed"


def test_shared_stage1_reads_ce_and_post_hoc_from_the_kt_run(tmp_path: Path) -> None:
    """cifar10-lt-30's layout: one kt run per seed serves CE, KT, OLTR's stage 1 and post hoc;
    OLTR and LFME on seed 0 only."""
    rep = load_reproduction("cifar10-lt-30", ["data.root=/nowhere"])
    plan = build_plan(
        rep.cfg, rep.raw, rep.options, groups_present=["many", "medium"], source="c30"
    )
    ids = [r.id for r in plan.runs]
    assert not any(i.endswith("/ce") for i in ids)
    assert [i for i in ids if "oltr" in i] == ["seed-0/oltr"]
    assert [i for i in ids if i.endswith("student")] == ["seed-0/lfme/student"]
    assert {f"seed-{s}/kt" for s in range(3)} <= set(ids)
    assert plan.run("seed-0/oltr").refs == {"oltr.stage1": "seed-0/kt"}
    assert plan.row_run("ce", 2) == "seed-2/kt" and plan.ce_run(1) == "seed-1/kt"
    assert run_config(plan, plan.run("seed-0/oltr"), tmp_path).train.epochs == 10
    # Rows on fewer seeds leave no "not finished" records behind for the other seeds.
    for seed in range(3):
        _finish(tmp_path, f"seed-{seed}/kt", overall=0.5 + 0.1 * seed)
    records = collect_records(plan, tmp_path)
    assert {r.seed for r in records if r.row == "oltr"} == {0}
    ce = [r.overall for r in records if r.row == "ce"]
    assert sorted(ce) == pytest.approx([0.5, 0.6, 0.7])
    tables = build_tables(plan, records)
    row = next(r for r in tables.main if r.key == "ce")
    assert row.seeds == 3
    with pytest.raises(Exception, match="kt.detach_feature=true"):
        bad = load_reproduction("cifar10-lt-30", ["data.root=/x", "kt.detach_feature=false"])
        build_plan(bad.cfg, bad.raw, bad.options, groups_present=["many"], source="c30")
