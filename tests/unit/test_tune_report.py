"""`ltray report`: each categorical choice compared at equal epochs, not at each trial's best."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ltray.tune.folder import collect_trials
from ltray.tune.report import choice_effects, report_tables


def _sweep(root: Path, trials: dict[str, tuple[dict, list[float]]]) -> Path:
    """A sweep folder: per trial its params and its val_kt_overall per epoch (1, 2, ...)."""
    root.mkdir(parents=True)
    (root / "sweep.json").write_text(
        json.dumps({"name": "sw", "metric": ["val_kt_overall"], "mode": ["max"]})
    )
    for tid, (params, curve) in trials.items():
        d = root / "trials" / tid
        d.mkdir(parents=True)
        (d / "trial.json").write_text(json.dumps({"trial_id": tid, "params": params}))
        lines = [json.dumps({"epoch": e, "val_kt_overall": v}) for e, v in enumerate(curve, 1)]
        (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return root


# Four trials stopped by ASHA at epoch 2, two kept to epoch 6; one trial still at epoch 1.
TRIALS = {
    "a": ({"kt.mask": "correct", "memory.init_epoch": 0, "train.lr": 0.01}, [0.20, 0.30]),
    "b": ({"kt.mask": "correct", "memory.init_epoch": 1, "train.lr": 0.02}, [0.25, 0.50, 0.6]),
    "c": ({"kt.mask": "all", "memory.init_epoch": 0, "train.lr": 0.03}, [0.10, 0.20]),
    "d": ({"kt.mask": "all", "memory.init_epoch": 1, "train.lr": 0.04}, [0.15, 0.40]),
    "e": ({"kt.mask": "correct", "memory.init_epoch": 0, "train.lr": 0.05}, [0.3, 0.4, 0.5] * 2),
    "f": ({"kt.mask": "all", "memory.init_epoch": 1, "train.lr": 0.06}, [0.1, 0.2, 0.2] * 2),
    "g": ({"kt.mask": "all", "memory.init_epoch": 0, "train.lr": 0.07}, [0.9]),
}


def test_choices_are_compared_where_most_trials_stopped_and_at_the_last_epoch(
    tmp_path: Path,
) -> None:
    root = _sweep(tmp_path / "sw", TRIALS)
    trials = collect_trials(root, ["val_kt_overall"], ["max"])
    effects = choice_effects(trials)
    # epoch 2: where ASHA stopped most trials (a, c, d), not epoch 1 of the newest trial g
    assert effects["epochs"] == [2, 6]
    rows = {(r["param"], r["choice"]): r["cells"] for r in effects["rows"]}
    # the lr is continuous: no choice rows; the memory's small int k is compared
    assert {p for p, _ in rows} == {"kt.mask", "memory.init_epoch"}
    at2, at6 = rows[("kt.mask", "correct")]
    assert at2["n"] == 3 and at2["mean"] == pytest.approx((0.30 + 0.50 + 0.40) / 3)
    assert at2["std"] == pytest.approx(0.1)
    assert at6 == {"epoch": 6, "n": 1, "mean": pytest.approx(0.5), "std": 0.0}
    at2, at6 = rows[("kt.mask", "all")]
    # g (epoch 1 only) is in neither column; its 0.9 would lead a best-over-epochs ranking
    assert at2["n"] == 3 and at2["mean"] == pytest.approx((0.20 + 0.40 + 0.20) / 3)
    assert at6["n"] == 1 and at6["mean"] == pytest.approx(0.2)
    assert choice_effects(trials, [1])["epochs"] == [1]
    k1 = {r["choice"]: r["cells"][0] for r in choice_effects(trials, [1])["rows"]}
    assert k1["all"]["n"] == 4 and k1["correct"]["n"] == 3


def test_report_prints_the_choice_table_and_its_json(tmp_path: Path) -> None:
    root = _sweep(tmp_path / "sw", TRIALS)
    tables, summary = report_tables(root, epochs=[2])
    assert summary["choices"]["epochs"] == [2]
    from rich.console import Console

    console = Console(width=200, record=True)
    for t in tables:
        console.print(t)
    text = console.export_text()
    assert "val_kt_overall by choice at equal epochs" in text
    assert "40.0 ± 10.0 (3)" in text  # kt.mask=correct at epoch 2
    assert choice_effects([]) == {"epochs": [], "rows": []}


def test_curves_plot_draws_every_trial_and_the_saved_asha_cuts(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from ltray.tune import report

    root = _sweep(tmp_path / "sw", TRIALS)
    state = json.loads((root / "sweep.json").read_text())
    state["asha"] = {"grace_period": 2, "reduction_factor": 2, "rungs": [2, 4]}
    (root / "sweep.json").write_text(json.dumps(state))
    seen = {}
    real_close = plt.close

    def keep(fig):  # look at the figure before it is closed
        ax = fig.axes[0]
        lines = [ln for ln in ax.get_lines() if len(ln.get_xdata())]
        seen["lines"] = [ln for ln in lines if ln.get_ls() == "-" and len(ln.get_xdata()) > 1]
        seen["cuts"] = sorted({ln.get_xdata()[0] for ln in lines if ln.get_ls() == ":"})
        seen["labels"] = [t.get_text() for t in ax.get_legend().get_texts()]
        real_close(fig)

    plt.close = keep
    try:
        out = report.curves_plot(root, tmp_path / "curves.png", top=2)
    finally:
        plt.close = real_close
    assert out == tmp_path / "curves.png" and out.stat().st_size > 0
    # 7 trials drawn (g has one epoch: a point, not a line); the cuts at epochs 2 and 4
    assert len(seen["lines"]) == 6 and seen["cuts"] == [2, 4]
    # the 2 best named first, best first (g's best 90.0, then b's 60.0 ... e's 50.0)
    assert seen["labels"][:2] == ["g (best 90.0)", "b (best 60.0)"]
    assert seen["labels"][2:] == ["ASHA cut", "stopped by ASHA"]


def test_sweeps_without_saved_cuts_read_them_from_their_space_file(tmp_path: Path) -> None:
    from ltray.tune.report import _sweep_rungs, curves_plot

    space = tmp_path / "kt.yaml"
    space.write_text("search: {scheduler: asha, grace_period: 2, reduction_factor: 2}\n")
    state = {"kind": "train", "metric": ["m"], "space_file": str(space)}
    state["base"] = {"train": {"epochs": 30}}
    assert _sweep_rungs(state) == [2, 4, 8, 16]
    assert _sweep_rungs({**state, "asha": None}) == []  # saved: no scheduler
    assert _sweep_rungs({**state, "space_file": str(tmp_path / "gone.yaml")}) == []
    empty = _sweep(tmp_path / "empty", {})
    assert curves_plot(empty, tmp_path / "c.png") is None


def test_a_two_level_trials_post_hoc_fits_are_rows_of_the_test_table(tmp_path: Path) -> None:
    """The deployable model of a two-level trial is a post-hoc fit: its test row is shown."""
    root = _sweep(tmp_path / "sw", {"a": ({"kt.phi": 0.5}, [0.3, 0.6])})
    d = root / "trials" / "a"
    last = {"epoch": 2, "val_kt_overall": 0.6}
    groups = ("many", "medium", "few", "overall")
    last |= {f"test_posthoc_crt_{g}": v for g, v in zip(groups, (0.9, 0.7, 0.5, 0.71), strict=True)}
    (d / "metrics.jsonl").write_text((d / "metrics.jsonl").read_text() + json.dumps(last) + "\n")
    heads = {"kt": {"test": {"many": 0.8, "medium": 0.6, "few": 0.4, "overall": 0.6}}}
    (d / "results.json").write_text(json.dumps({"heads": heads}))
    tables, _ = report_tables(root)
    from rich.console import Console

    console = Console(width=200, record=True)
    for t in tables:
        console.print(t)
    text = console.export_text()
    row = next(line for line in text.splitlines() if "post-hoc crt" in line)
    assert "90.0" in row and "71.0" in row
