"""`ltray report SWEEP`: best trials, their Many / Medium / Few / Overall table, each categorical
choice compared at equal epochs (:func:`choice_effects`), Pareto front.

Reads only the sweep folder (``<storage>/<name>/ltray``, a local path or a URI such as
``s3://bucket/sweeps/kt``, read through :mod:`ltray.storage`): ``sweep.json`` and each trial's
``trials/<id>/{trial.json, metrics.jsonl, results.json}``. No Ray, no MLflow needed.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from ltray.metrics import format_mean_std, mean_std
from ltray.storage import Storage
from ltray.tune.analysis import grace_advice, importances, rung_correlations
from ltray.tune.confirm import confirm_table, format_confirm
from ltray.tune.folder import collect_trials, rank_trials
from ltray.tune.plan import asha_rungs
from ltray.tune.space import SearchSettings

__all__ = [
    "pareto_front",
    "choice_effects",
    "report_tables",
    "pareto_plot",
    "curves_plot",
    "importance_plot",
]


def pareto_front(
    trials: list[dict[str, Any]], metrics: list[str], modes: list[str]
) -> list[dict[str, Any]]:
    """Trials no other trial beats on every metric (and strictly on one)."""
    pts = [t for t in trials if all(m in t["metrics"] for m in metrics)]

    def signed(t: dict[str, Any]) -> list[float]:
        return [
            t["metrics"][m] * (1 if mode == "max" else -1)
            for m, mode in zip(metrics, modes, strict=True)
        ]

    front = []
    for t in pts:
        a = signed(t)
        dominated = any(
            all(b_i >= a_i for a_i, b_i in zip(a, signed(o), strict=True)) and signed(o) != a
            for o in pts
            if o is not t
        )
        if not dominated:
            front.append(t)
    return front


def _is_choice(values: list[Any]) -> bool:
    """A parameter compared choice by choice: categorical (str/bool) or a small int range (e.g.
    the memory's init epoch k)."""
    if all(isinstance(v, (str, bool)) for v in values):
        return True
    return all(isinstance(v, int) for v in values) and len(set(values)) <= 5


def choice_effects(trials: list[dict[str, Any]], epochs: list[int] | None = None) -> dict[str, Any]:
    """Each categorical parameter's choices compared at equal training: the first metric's
    mean, std and trial count per choice at given epochs (trials that reached them).

    Default epochs: the epoch most trials stopped at (under ASHA its grace period, before any
    selection: nearly every trial counts; ties go to the earlier epoch) and the sweep's last
    epoch (the trials that ran all of it: the scheduler kept those, so that column is what the
    better trials chose). A trial's best value over its epochs (the leaderboard) favours
    trials that ran longer; these columns compare like with like.
    """
    curves = [t for t in trials if t.get("curve")]
    if not curves:
        return {"epochs": [], "rows": []}
    if not epochs:
        ends = [max(t["curve"]) for t in curves]
        common = min(set(ends), key=lambda e: (-ends.count(e), e))
        epochs = sorted({common, max(ends)})
    params = sorted({k for t in curves for k in t["params"]})
    rows = []
    for p in params:
        values = [t["params"][p] for t in curves if p in t["params"]]
        if not _is_choice(values):
            continue
        for choice in sorted(set(values), key=str):
            cells = []
            for e in epochs:
                vals = [
                    t["curve"][e]
                    for t in curves
                    if t["params"].get(p) == choice and e in t["curve"]
                ]
                found = mean_std(vals)
                mean, std, n = found if found else (math.nan, None, 0)
                cells.append({"epoch": e, "n": n, "mean": mean, "std": std or 0.0})
            rows.append({"param": p, "choice": choice, "cells": cells})
    return {"epochs": epochs, "rows": rows}


def _pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{100 * float(v):.1f}"


def report_tables(
    sweep_dir: Path | Storage, *, top: int = 5, epochs: list[int] | None = None
) -> tuple[list[Any], dict[str, Any]]:
    """Rich tables (leaderboard; test table of the best trials) and a JSON summary."""
    from rich.table import Table

    sweep_dir = Storage.at(sweep_dir)
    state = (sweep_dir / "sweep.json").read_json()
    metrics, modes = state["metric"], state["mode"]
    trials = collect_trials(sweep_dir, metrics, modes)
    ranked = rank_trials(trials, metrics[0], modes[0])
    params = sorted({k for t in trials for k in t["params"]})

    board = Table(
        title=f"sweep {state['name']}: {len(trials)} trials, ranked by {metrics[0]} ({modes[0]})"
    )
    board.add_column("#", justify="right")
    board.add_column("trial")
    for m in metrics:
        board.add_column(m, justify="right")
    board.add_column("epochs", justify="right")
    for p in params:
        board.add_column(p, justify="right")
    for i, t in enumerate(ranked[:top], 1):
        board.add_row(
            str(i),
            t["trial_id"],
            *[_pct(t["metrics"].get(m)) for m in metrics],
            str(t["epochs"]),
            *[_fmt(t["params"].get(p)) for p in params],
        )

    test = Table(title="test accuracy (%) of the best trials (best-val checkpoint)")
    for col in ("trial", "head", "Many", "Medium", "Few", "Overall"):
        test.add_column(col, justify="left" if col in ("trial", "head") else "right")
    for t in ranked[:top]:
        if t["results"]:
            for head, per_split in t["results"]["heads"].items():
                r = per_split["test"]
                test.add_row(
                    t["trial_id"],
                    head,
                    _pct(r["many"]),
                    _pct(r["medium"]),
                    _pct(r["few"]),
                    _pct(r["overall"]),
                )
            # A two-level trial's deployable post-hoc fits (its last report).
            last = t["last"]
            for m in sorted(
                {
                    k.split("_", 2)[2].rsplit("_", 1)[0]
                    for k in last
                    if k.startswith("test_posthoc_") and k.endswith("_overall")
                }
            ):
                test.add_row(
                    t["trial_id"],
                    f"post-hoc {m}",
                    *[
                        _pct(last.get(f"test_posthoc_{m}_{g}"))
                        for g in ("many", "medium", "few", "overall")
                    ],
                )
        elif "test_fused_overall" in t["last"]:
            r = t["last"]
            test.add_row(
                t["trial_id"],
                state.get("method") or "post-hoc",
                *[_pct(r.get(f"test_fused_{g}")) for g in ("many", "medium", "few", "overall")],
            )
    summary = {
        "metric": metrics,
        "mode": modes,
        "num_trials": len(trials),
        "ranked": [{k: t[k] for k in ("trial_id", "params", "metrics", "epochs")} for t in ranked],
    }
    tables = [*_confirm_tables(sweep_dir, summary), board, test]
    tables += _cut_tables(state, trials, summary)
    effects = choice_effects(trials, epochs)
    summary["choices"] = effects
    if effects["rows"]:
        ct = Table(
            title=f"{metrics[0]} by choice at equal epochs: mean ± std (trials)",
            caption="each column: the trials that reached that epoch (by default the epoch "
            "most trials stopped at, and the last one)",
        )
        ct.add_column("parameter")
        ct.add_column("choice")
        for e in effects["epochs"]:
            ct.add_column(f"epoch {e}", justify="right")
        for row in effects["rows"]:
            ct.add_row(
                row["param"],
                _fmt(row["choice"]),
                *[_mean_std(c) for c in row["cells"]],
            )
        tables.append(ct)
    if len(metrics) > 1:
        front = pareto_front(trials, metrics, modes)
        summary["pareto"] = [t["trial_id"] for t in front]
        pt = Table(title=f"Pareto front over {', '.join(metrics)}")
        pt.add_column("trial")
        for m in metrics:
            pt.add_column(m, justify="right")
        for t in sorted(front, key=lambda t: -t["metrics"][metrics[0]]):
            pt.add_row(t["trial_id"], *[_pct(t["metrics"][m]) for m in metrics])
        tables.append(pt)
    return tables, summary


def _confirm_tables(sweep_dir: Storage, summary: dict[str, Any]) -> list[Any]:
    """The sweep's confirmations over seeds (``confirm/``, ``confirm-<metric>/``): shown first,
    they are the answer a search gives."""

    out = []
    for child in sweep_dir.children():
        if not child.name.startswith("confirm"):
            continue
        table = confirm_table(sweep_dir, child.name)
        if table is not None:
            summary.setdefault("confirm", {})[child.name] = table
            out.append(format_confirm(table))
    return out


def _cut_tables(state: dict[str, Any], trials: list[dict[str, Any]], summary: dict) -> list:
    """Whether ASHA's cuts ranked trials as their last epochs do (Spearman ρ per cut), the
    grace period that would have kept the final best trials, and Optuna's importances."""
    from rich.table import Table

    ends = [max(t["curve"]) for t in trials if t.get("curve")]
    if state.get("kind") == "posthoc" or not ends:
        return []
    last = int(state.get("base", {}).get("train", {}).get("epochs") or max(ends))
    mode = state["mode"][0]
    rungs = [r for r in _sweep_rungs(state) if r < last]
    factor = int((state.get("asha") or {}).get("reduction_factor", 2))
    out = []
    corr = rung_correlations(trials, last, rungs or None)
    advice = grace_advice(trials, last, factor, mode)
    summary["cuts"] = {"correlations": corr, "grace": advice}
    shown = [r for r in corr if r["n"]]
    if shown:
        t = Table(
            title=f"{state['metric'][0]}: rank correlation of each "
            f"{'cut' if rungs else 'epoch'} with epoch {last}",
            caption=f"Spearman ρ over the trials that reached both; advice: grace "
            f"{advice['advice'] if advice['advice'] is not None else '— (too few finished)'} "
            f"(reduction factor {factor}) is the smallest that keeps the final best trial "
            f"{', '.join(advice['top']) or '—'}",
        )
        for col in ("epoch", "trials", "ρ", "keeps the final best"):
            t.add_column(col, justify="right")
        keeps = {r["grace"]: r["keeps_top"] for r in advice["rows"]}
        for r in shown:
            rho = "—" if r["rho"] is None else f"{r['rho']:+.2f}"
            keep = keeps.get(r["epoch"])
            t.add_row(str(r["epoch"]), str(r["n"]), rho, "—" if keep is None else str(keep))
        out.append(t)
    space = _space_params(state)
    if space:
        imp = importances(trials, space, last, mode)
        summary["importances"] = imp
        t = Table(
            title=f"what mattered: Optuna fANOVA importances of {state['metric'][0]} at epoch "
            f"{last} ({imp['n']} trials that ran every epoch)",
            caption=imp.get("why", ""),
        )
        t.add_column("parameter")
        t.add_column("importance", justify="right")
        for k, v in imp["importances"].items():
            t.add_row(k, f"{v:.2f}")
        out.append(t)
    return out


def _space_params(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The searched keys' domains: saved with the sweep, or read from its space file."""
    if "space" in state:
        return dict(state["space"])
    path = Path(state.get("space_file", ""))
    if not path.is_file():
        return {}
    import yaml

    raw = yaml.safe_load(path.read_text()) or {}
    return {k: v for k, v in (raw.get("space") or {}).items() if isinstance(v, dict)}


def importance_plot(sweep_dir: Path | Storage, path: Path | Storage) -> Path | Storage | None:
    """A bar per searched key: its share of the metric's variance (Optuna's fANOVA on the
    trials that ran every epoch). None when there are too few such trials."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep_dir = Storage.at(sweep_dir)
    state = (sweep_dir / "sweep.json").read_json()
    space = _space_params(state)
    if state.get("kind") == "posthoc" or not space:
        return None
    trials = collect_trials(sweep_dir, state["metric"][:1], state["mode"][:1])
    ends = [max(t["curve"]) for t in trials if t.get("curve")]
    if not ends:
        return None
    last = int(state.get("base", {}).get("train", {}).get("epochs") or max(ends))
    imp = importances(trials, space, last, state["mode"][0])
    if not imp["importances"]:
        return None
    names = list(imp["importances"])[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1.2))
    ax.barh(names, [imp["importances"][k] for k in names], color="C0")
    ax.set_xlabel("importance (share of variance, fANOVA)")
    ax.set_title(f"{state['metric'][0]}: {imp['n']} trials that ran every epoch", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save_figure(fig, path)


def _mean_std(cell: dict[str, Any]) -> str:
    if not cell["n"]:
        return "—"
    std = cell["std"] if cell["n"] > 1 else None
    return f"{format_mean_std(cell['mean'], std)} ({cell['n']})"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def _save_figure(fig: Any, path: Path | Storage) -> Path | Storage:
    """Write a figure to a local path or a path on the sweep's storage, and close it."""
    import matplotlib.pyplot as plt

    if isinstance(path, Storage):
        with tempfile.TemporaryDirectory() as tmp:
            fig.savefig(Path(tmp) / path.name, dpi=110)
            path.upload_file(Path(tmp) / path.name)
    else:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pareto_plot(sweep_dir: Path | Storage, path: Path | Storage) -> Path | Storage:
    """Scatter of every trial on the first two metrics, the Pareto front highlighted (``path``
    may be on the sweep's storage)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep_dir = Storage.at(sweep_dir)
    state = (sweep_dir / "sweep.json").read_json()
    metrics, modes = state["metric"][:2], state["mode"][:2]
    trials = [
        t
        for t in collect_trials(sweep_dir, metrics, modes)
        if all(m in t["metrics"] for m in metrics)
    ]
    front = pareto_front(trials, metrics, modes)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(
        [100 * t["metrics"][metrics[0]] for t in trials],
        [100 * t["metrics"][metrics[1]] for t in trials],
        c="0.6",
        label="trials",
    )
    front = sorted(front, key=lambda t: t["metrics"][metrics[0]])
    ax.plot(
        [100 * t["metrics"][metrics[0]] for t in front],
        [100 * t["metrics"][metrics[1]] for t in front],
        "o-",
        c="C3",
        label="Pareto front",
    )
    for t in front:
        ax.annotate(
            t["trial_id"],
            (100 * t["metrics"][metrics[0]], 100 * t["metrics"][metrics[1]]),
            fontsize=7,
        )
    ax.set_xlabel(f"{metrics[0]} (%)")
    ax.set_ylabel(f"{metrics[1]} (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save_figure(fig, path)


def _sweep_rungs(state: dict[str, Any]) -> list[int]:
    """The epochs ASHA cut at: saved with the sweep, or (sweeps started before that was saved)
    read from its space file when that file is still there."""
    if "asha" in state:
        return list((state["asha"] or {}).get("rungs", []))
    space_file = Path(state.get("space_file", ""))
    single = len(state.get("metric", [])) == 1
    if state.get("kind") != "train" or not single or not space_file.is_file():
        return []
    import yaml
    from pydantic import ValidationError

    try:  # the space file's search section, its defaults from the same model as a sweep's
        raw = (yaml.safe_load(space_file.read_text()) or {}).get("search", {})
        search = SearchSettings.model_validate(raw)
    except (yaml.YAMLError, ValidationError, AttributeError):
        return []  # the file changed since: no cuts drawn rather than wrong ones
    if search.scheduler != "asha":
        return []
    epochs = int(state["base"]["train"]["epochs"])
    grace, factor = search.grace_period, search.reduction_factor
    return asha_rungs(epochs, grace, factor) if grace <= epochs else []


def curves_plot(
    sweep_dir: Path | Storage, path: Path | Storage, top: int = 5
) -> Path | Storage | None:
    """The first metric of every trial per epoch: the ``top`` best in colour and named, the
    rest grey, a cross where ASHA stopped a trial, ASHA's cuts as dotted lines. Shows whether
    the epochs a scheduler cuts at rank trials as their last epochs do. None when no trial
    reported yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep_dir = Storage.at(sweep_dir)
    state = (sweep_dir / "sweep.json").read_json()
    metric, mode = state["metric"][0], state["mode"][0]
    trials = [t for t in collect_trials(sweep_dir, [metric], [mode]) if t["curve"]]
    if not trials:
        return None
    ranked = rank_trials(trials, metric, mode)
    best = {t["trial_id"] for t in ranked[:top]}
    last = max(max(t["curve"]) for t in trials)
    scale = 100  # as the leaderboard prints it
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for rung in _sweep_rungs(state):
        ax.axvline(rung, color="0.75", ls=":", lw=1)
    colour = iter(f"C{i}" for i in range(10))
    for t in reversed(ranked):  # the best drawn last, on top
        epochs = sorted(t["curve"])
        values = [scale * t["curve"][e] for e in epochs]
        named = t["trial_id"] in best
        style = {"color": next(colour), "lw": 1.8} if named else {"color": "0.65", "lw": 0.9}
        label = f"{t['trial_id']} (best {_pct(t['metrics'][metric])})" if named else None
        ax.plot(epochs, values, marker=".", ms=3, label=label, **style)
        if epochs[-1] < last:
            ax.plot(epochs[-1], values[-1], "x", color=style["color"], ms=6)
    handles, labels = ax.get_legend_handles_labels()
    order = list(reversed(range(len(handles))))  # the best first
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    handles += [
        ax.plot([], [], ":", color="0.75")[0],
        ax.plot([], [], "x", color="0.4")[0],
    ]
    labels += ["ASHA cut", "stopped by ASHA"]
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"sweep {state.get('name', '')}: {len(trials)} trials", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(handles, labels, fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save_figure(fig, path)
