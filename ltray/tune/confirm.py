"""Confirmation over seeds: the best configurations of a sweep trained again, the winner by mean.

    ltray tune --space kt --confirm 3 --seeds 3          # search, then confirm
    ltray confirm SWEEP --top 3 --seeds 3                # confirm a finished sweep

A search ranks each configuration on ONE training seed, so its leaderboard is a draw: on the
30-epoch CIFAR-10-LT KT sweep the top trial's settings gave 64.8 ± 2.5 over 3 seeds, below a
hand-made preset (docs/results.md). Here the top ``K`` distinct configurations (by the sweep's
metric, as ``ltray report`` ranks them) are each trained with ``S`` new training seeds
(``train.seed`` = the search's seed + 1 … + S, so the draw that won the search is not reused) at
the full budget — no early stopping — as trials of a second Tune experiment
(``<storage>/<name>-confirm``; the runs in ``<sweep>/confirm/trials/``). Each configuration gets
its val mean ± std (sample std over seeds) of the sweep's metric and the matching test number; the
**winner is the best val mean, ties broken by the lower std** — test is only reported.

In MLflow the confirmation is one run nested under the sweep's parent (``confirm``: a metric per
configuration, the winner as a tag), with a child run per (configuration, seed); ``--register``
registers the winner's model (its seed with the best val score). ``confirm.json`` in the sweep
folder keeps the table; ``ltray report`` shows it first. An interrupted confirmation continues
with the same command: finished runs are kept (Tune's restore).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ltray.config import saved_config
from ltray.errors import ConfigError
from ltray.launch import start_ray, unit_resources
from ltray.metrics import format_mean_std, mean_std
from ltray.resources import cluster_resources, local_resources, resolve_scaling
from ltray.storage import Storage, driver_folder
from ltray.tracking import SpoolingClient, metric_name, mlflow_params, start_run
from ltray.tracking.names import parse_metric
from ltray.train.rundir import RunDir, parse_metrics
from ltray.tune.folder import collect_trials, rank_trials

__all__ = [
    "CONFIRM",
    "confirm_folder",
    "run_confirm",
    "Candidate",
    "candidates",
    "confirm_seeds",
    "run_scores",
    "confirm_table",
    "format_confirm",
]

CONFIRM = "confirm"  # the sub-folder of the sweep folder, and the MLflow group run's name


def confirm_folder(state: dict[str, Any], metric: str | None = None) -> str:
    """The confirmation's sub-folder of the sweep folder: ``confirm`` for the sweep's own
    metric, ``confirm-<metric>`` for another one (``ltray confirm --metric``)."""
    if metric is None or metric == state["metric"][0]:
        return CONFIRM
    return f"{CONFIRM}-{metric}"


@dataclass
class Candidate:
    """A configuration to confirm: the trial that found it, its sampled values, its rank."""

    trial_id: str
    params: dict[str, Any]
    rank: int
    search_value: float


def candidates(root: Storage, metric: str, mode: str, top: int) -> list[Candidate]:
    """The ``top`` best distinct configurations of the sweep at ``root`` (the leaderboard's
    order; a configuration sampled twice counts once)."""
    ranked = rank_trials(collect_trials(root, [metric], [mode]), metric, mode)
    out: list[Candidate] = []
    seen: set[str] = set()
    for t in ranked:
        key = json.dumps(t["params"], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        out.append(Candidate(t["trial_id"], dict(t["params"]), len(out) + 1, t["metrics"][metric]))
        if len(out) == top:
            break
    return out


def confirm_seeds(search_seed: int, seeds: int) -> list[int]:
    """The training seeds of a confirmation: new draws, never the search's own."""
    return [search_seed + 1 + k for k in range(seeds)]


def _score_of(record: dict[str, Any], results: dict[str, Any] | None, metric: str, split: str):
    """``metric`` (a val metric name) read for ``split`` from a finished run: a head's number
    from ``results.json`` (the best checkpoint), a post-hoc one from the last report (fitted on
    that checkpoint's cache)."""
    parsed = parse_metric(metric)
    if parsed is None:
        return None
    _, head, group, _ = parsed
    if head == "best":
        source = str(record.get("best_source", ""))
        kind, _, name = source.partition(":")
        head = name if kind == "head" else f"posthoc_{name}"
    if head.startswith("posthoc_"):
        value = record.get(f"{split}_{head}_{group}")
        return None if value is None else float(value)
    if results is None or head not in results.get("heads", {}):
        return None
    value = results["heads"][head].get(split, {}).get(group)
    return None if value is None else float(value)


def run_scores(run_dir: Storage, metric: str) -> dict[str, float | None] | None:
    """``{"val": ..., "test": ...}`` of one confirmation run, None while it has not finished."""
    results = (run_dir / RunDir.RESULTS).read_json(missing_ok=True)
    if results is None:
        return None
    records = parse_metrics((run_dir / RunDir.METRICS).read_text(missing_ok=True) or "")
    last = records[-1] if records else {}
    return {s: _score_of(last, results, metric, s) for s in ("val", "test")}


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    found = mean_std(values)
    return (None, None) if found is None else found[:2]


def _trials_of(folder: Storage):
    """(configuration key, seed, trial id, trial folder) of each run under ``folder/trials``
    (its sampled values are a configuration's plus ``train.seed``)."""
    for trial_dir in (folder / "trials").children():
        info = (trial_dir / "trial.json").read_json(missing_ok=True)
        if info is None:
            continue
        params = dict(info["params"])
        seed = int(params.pop("train.seed"))
        yield _params_key(params), seed, info["trial_id"], trial_dir


def _runs_of(folder: Storage, plan: dict[str, Any]) -> dict[tuple[str, int], str]:
    """(candidate trial id, seed) → the confirmation trial that ran it."""
    by_params = {_params_key(c["params"]): c["trial_id"] for c in plan["candidates"]}
    out: dict[tuple[str, int], str] = {}
    for key, seed, trial_id, _ in _trials_of(folder):
        cand = by_params.get(key)
        if cand is not None:
            out[(cand, seed)] = trial_id
    return out


def _params_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def shared_runs(root: Storage, sub: str) -> dict[tuple[str, int], tuple[str, str]]:
    """Finished runs of the sweep's *other* confirmations: (configuration, seed) → (their
    sub-folder, trial id). A configuration trained with a seed is the same run whichever metric
    ranked it, so ``ltray confirm --metric`` reuses these instead of training them again."""
    out: dict[tuple[str, int], tuple[str, str]] = {}
    for other in root.children():
        if other.name == sub or not other.name.startswith(CONFIRM):
            continue
        for key, seed, trial_id, trial_dir in _trials_of(other):
            if (trial_dir / RunDir.RESULTS).is_file():
                out.setdefault((key, seed), (other.name, trial_id))
    return out


def confirm_table(root: Storage, sub: str = CONFIRM) -> dict[str, Any] | None:
    """The confirmation's table from its runs (``<sweep>/<sub>/``): per configuration the
    val and test values per seed of the metric it ranked by, their mean ± std, and the winner
    (best val mean, ties to the lower std). None when the sweep has no such confirmation."""
    folder = root / sub
    plan = (folder / "plan.json").read_json(missing_ok=True)
    if plan is None:
        return None
    metric, mode = plan["metric"], plan["mode"]
    runs = _runs_of(folder, plan)
    shared = shared_runs(root, sub)
    rows = []
    for cand in plan["candidates"]:
        per_seed = {}
        for seed in plan["seeds"]:
            where, trial_id = sub, runs.get((cand["trial_id"], seed))
            if trial_id is None:
                where, trial_id = shared.get((_params_key(cand["params"]), int(seed)), (sub, None))
            scores = None
            if trial_id is not None:
                scores = run_scores(root / where / "trials" / trial_id, metric)
            if scores is not None:
                per_seed[int(seed)] = {**scores, "trial_id": trial_id, "folder": where}
        vals = [s["val"] for s in per_seed.values() if s["val"] is not None]
        tests = [s["test"] for s in per_seed.values() if s["test"] is not None]
        val_mean, val_std = _mean_std(vals)
        test_mean, test_std = _mean_std(tests)
        rows.append(
            {
                "trial_id": cand["trial_id"],
                "rank": cand["rank"],
                "params": cand["params"],
                "search_value": cand["search_value"],
                "seeds": per_seed,
                "n": len(vals),
                "val_mean": val_mean,
                "val_std": val_std,
                "test_mean": test_mean,
                "test_std": test_std,
            }
        )
    sign = 1 if mode == "max" else -1
    done = [r for r in rows if r["val_mean"] is not None]
    winner = None
    if done:
        best = max(
            done,
            key=lambda r: (sign * r["val_mean"], -(r["val_std"] if r["val_std"] else math.inf)),
        )
        winner = best["trial_id"]
        runs = [(s["val"], s) for s in best["seeds"].values() if s["val"] is not None]
        model = max(runs, key=lambda x: sign * x[0])[1] if runs else None
        best["model_trial"] = model["trial_id"] if model else None
        best["model_folder"] = model["folder"] if model else None
    rows.sort(key=lambda r: (r["val_mean"] is None, -sign * (r["val_mean"] or 0.0)))
    return {
        "folder": sub,
        "metric": metric,
        "mode": mode,
        "seeds": plan["seeds"],
        "rows": rows,
        "winner": winner,
        "complete": all(r["n"] == len(plan["seeds"]) for r in rows),
    }


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _pm(mean: float | None, std: float | None) -> str:
    return format_mean_std(mean, std)


def format_confirm(table: dict[str, Any]) -> Any:
    """The confirmation as a rich table, the winner first."""
    from rich.table import Table

    metric = table["metric"]
    test_name = metric.replace("val_", "test_", 1)
    out = Table(
        title=f"confirmed over seeds {', '.join(map(str, table['seeds']))}: {metric}, "
        "winner by val mean (ties: lower std)",
        caption="search: the trial's value in the search (one seed, best epoch); val/test: "
        "mean ± sample std over the confirmation seeds",
    )
    for col in ("", "config (trial)", "search", "val", test_name, "seeds", "settings"):
        out.add_column(col, justify="right" if col in ("search", "val", test_name) else "left")
    for r in table["rows"]:
        settings = ", ".join(f"{k}={_short(v)}" for k, v in sorted(r["params"].items()))
        out.add_row(
            "★" if r["trial_id"] == table["winner"] else "",
            f"#{r['rank']} {r['trial_id']}",
            _pct(r["search_value"]),
            _pm(r["val_mean"], r["val_std"]),
            _pm(r["test_mean"], r["test_std"]),
            str(r["n"]),
            settings,
        )
    return out


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _plan(
    root: Storage, state: dict[str, Any], sub: str, metric: str, top: int, seeds: int
) -> dict[str, Any]:
    """The confirmation's plan (``<sub>/plan.json``): made once; a later call must ask for the
    same ``top``/``seeds`` (it continues that confirmation)."""

    path = root / sub / "plan.json"
    plan = path.read_json(missing_ok=True)
    search_seed = int(state["base"]["train"]["seed"])
    wanted = confirm_seeds(search_seed, seeds)
    if plan is not None:
        if plan["top"] != top or plan["seeds"] != wanted:
            raise ConfigError(
                f"{path}: this sweep's confirmation ran with --confirm {plan['top']} "
                f"--seeds {len(plan['seeds'])}; continue it with those, or confirm again as a "
                "new sweep"
            )
        return plan
    mode = state["mode"][0] if metric == state["metric"][0] else _mode_of(metric)
    cands = candidates(root, metric, mode, top)
    if not cands:
        raise ConfigError(f"{root}: no trial reported {metric}; nothing to confirm")
    plan = {
        "metric": metric,
        "mode": mode,
        "top": top,
        "seeds": wanted,
        "candidates": [asdict(c) for c in cands],
        "mlflow_group": None,
    }
    path.write_json(plan, indent=1)
    return plan


def run_confirm(
    root: Storage,
    local: Path,
    *,
    top: int,
    seeds: int,
    metric: str | None = None,
    address: str | None = None,
    max_concurrent: int | None = None,
    mlflow: bool = True,
    register: str | None = None,
) -> dict[str, Any]:
    """[1] Train the confirmation of the sweep at ``root`` (``local``: the driver's folder of
    it) ranked by ``metric`` (default: the sweep's own) and return its table
    (:func:`confirm_table`)."""
    from ray import tune

    from ltray.tune.mlflow_callback import MlflowSweepCallback
    from ltray.tune.trial import trainable  # torch

    state = (root / "sweep.json").read_json()
    if state.get("kind") == "posthoc":
        raise ConfigError("a post-hoc sweep trains nothing to confirm; confirm a train sweep")
    metric = metric or state["metric"][0]
    sub = confirm_folder(state, metric)
    plan = _plan(root, state, sub, metric, top, seeds)
    folder = root / sub
    local_folder = driver_folder(folder) if root.remote else local / sub
    local_folder.mkdir(parents=True, exist_ok=True)
    start_ray(address, dashboard=int(state["base"]["scaling"]["num_workers"]) > 1)
    base = saved_config(state["base"])
    have = cluster_resources() if address else local_resources()
    base = resolve_scaling(base, have)

    meta: dict[str, Any] = {
        "base": base.model_dump(mode="json"),
        "name": f"{state['name']}-{sub}",
        "sweep_dir": None if root.remote else str(folder.path),
        "store": folder if root.remote else None,
        "posthoc": state.get("posthoc") or [],
        "cuts": [],
    }
    callbacks = []
    client = None
    if mlflow and state.get("mlflow_parent"):
        client = SpoolingClient(state["mlflow_uri"], local_folder / "mlflow_spool.jsonl")
        if plan.get("mlflow_group") is None:
            plan["mlflow_group"] = start_run(
                client,
                state["experiment"],
                sub,
                command="ltray confirm",
                parent=client.resolve(state["mlflow_parent"]),
                run_dir=local_folder,
                tags={"ltray.sweep": state["name"], "ltray.confirm": "true"},
                params={"top": top, "seeds": ",".join(map(str, plan["seeds"])), "metric": metric},
            )
            (folder / "plan.json").write_json(plan, indent=1)
        callbacks.append(
            MlflowSweepCallback(
                tracking_uri=state["mlflow_uri"],
                experiment=state["experiment"],
                parent_run_id=client.resolve(plan["mlflow_group"]),
                sweep_dir=str(local_folder),
                base_params=mlflow_params(base),
                unpack="cand",
            )
        )
    fn = trainable(CONFIRM, meta, unit_resources(base))
    where = Storage.at(state["storage"])
    fs = {"storage_filesystem": where.fs} if where.remote else {}
    tune_path = where.path if where.remote else state["storage"]
    experiment = f"{tune_path}/{state['name']}-{sub}"
    concurrent = max_concurrent or int(state.get("max_concurrent", 1))
    if (Storage.at(f"{state['storage']}/{state['name']}-{sub}") / "tuner.pkl").is_file():
        # An interrupted confirmation: Tune keeps the finished runs and continues the others.
        tuner = tune.Tuner.restore(
            experiment, fn, resume_unfinished=True, resume_errored=True, **fs
        )
    else:
        shared = shared_runs(root, sub)
        todo = [
            {**c["params"], "__of__": c["trial_id"], "train.seed": seed}
            for c in plan["candidates"]
            for seed in plan["seeds"]
            if (_params_key(c["params"]), int(seed)) not in shared
        ]
        reused = len(plan["candidates"]) * len(plan["seeds"]) - len(todo)
        if reused:
            print(
                f"[ltray] confirm: {reused} runs reused from the sweep's other confirmations "
                "(the same configuration and seed)"
            )
        grid = {"cand": tune.grid_search(todo)}
        tuner = (
            None
            if not todo
            else tune.Tuner(
                fn,
                param_space=grid,
                tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=True),
                run_config=tune.RunConfig(
                    name=f"{state['name']}-{sub}",
                    storage_path=tune_path,
                    callbacks=callbacks,
                    failure_config=tune.FailureConfig(max_failures=1),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    verbose=1,
                    **fs,
                ),
            )
        )
    if tuner is not None:
        tuner.fit()
    table = confirm_table(root, sub)
    assert table is not None
    (local_folder / "confirm.json").write_text(json.dumps(table, indent=1, default=str))
    if root.remote:
        (folder / "confirm.json").upload_file(local_folder / "confirm.json")
    if client is not None and table["winner"]:
        _log_group(client, local_folder, plan, table, state, register=register)
    return table


def _mode_of(metric: str) -> str:
    """An accuracy is maximised, a calibration error (``ece``) minimised."""
    return "min" if metric.endswith("_ece") else "max"


def _log_group(
    client: Any,
    local_folder: Path,
    plan: dict[str, Any],
    table: dict[str, Any],
    state: dict[str, Any],
    *,
    register: str | None,
) -> None:
    """The confirmation's MLflow group run: val/test mean and std per configuration
    (``{split}_confirm<rank>_<group>_{mean,std}``), the winner as tags, the winner's model
    (its seed with the best val) — registered with ``register`` — and the table."""
    from ltray.tune.mlflow_callback import log_best_model

    group = plan["mlflow_group"]
    score = parse_metric(table["metric"])
    kind = score[2] if score else "overall"
    metrics: dict[str, float] = {}
    for row in table["rows"]:
        head = f"confirm{row['rank']}"
        for split in ("val", "test"):
            for stat in ("mean", "std"):
                value = row[f"{split}_{stat}"]
                if value is not None:
                    metrics[metric_name(split, head, kind, stat)] = float(value)
    client.log_metrics(group, metrics, step=0)
    winner = next(r for r in table["rows"] if r["trial_id"] == table["winner"])
    client.set_tag(group, "ltray.confirm_winner", winner["trial_id"])
    client.set_tag(group, "ltray.confirm_winner_params", json.dumps(winner["params"], default=str))
    client.set_tag(state["mlflow_parent"], f"ltray.{table['folder']}_winner", winner["trial_id"])
    model_trial = winner.get("model_trial")
    if model_trial:
        where = local_folder.parent / (winner.get("model_folder") or table["folder"])
        best = {"trial_id": model_trial, "dir": str(where / "trials" / model_trial)}
        log_best_model(client, local_folder, group, best, register=register)
    client.log_artifact(group, str(local_folder / "confirm.json"))
    client.set_terminated(group)
    client.flush()
