"""The training loop in-process (no Ray): resume equality, run-directory contents, schedules."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltray.config import load_config
from ltray.errors import ConfigError
from ltray.fusion.cache import read_cache
from ltray.train.context import LocalContext
from ltray.train.loop import load_state, run_training
from ltray.train.rundir import RunDir
from ltray.train.schedule import lr_factor

pytestmark = pytest.mark.slow  # every test trains a few epochs of digits-LT

TINY = ["train.epochs=3", "data.batch_size=64", "train.threads=1", "memory.init_epoch=1"]


class _Stop(Exception):
    pass


class StopAfter(LocalContext):
    """A host that dies right after the report of epoch ``n`` (as a killed job would)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def report(self, metrics, state_path):
        super().report(metrics, state_path)
        if metrics["epoch"] == self.n:
            raise _Stop


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_state(run_dir / "checkpoints" / "last.pt")["model"]


def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path: Path) -> None:
    cfg = load_config(None, TINY + ["mixup.variant=input"])
    full, part = tmp_path / "full", tmp_path / "part"
    full.mkdir()
    part.mkdir()
    run_training(cfg, full, LocalContext(), finalize=False)
    with pytest.raises(_Stop):
        run_training(cfg, part, StopAfter(2), finalize=False)
    assert [m["epoch"] for m in _read_metrics(part)] == [1, 2]
    run_training(
        cfg, part, LocalContext(), resume_from=part / "checkpoints" / "last.pt", finalize=False
    )
    a, b = _weights(full), _weights(part)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    # The memory (a buffer) is part of the weights and was initialised at the end of epoch 1.
    assert bool(a["memory.initialized"])
    # Nothing written before the stop is lost: epochs 1-2 keep their records.
    assert [m["epoch"] for m in _read_metrics(part)] == [1, 2, 3]


def test_an_interrupt_right_after_a_checkpoint_loses_no_epoch_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C between an epoch's checkpoint and its metrics record used to leave last.pt one
    epoch ahead of metrics.jsonl; the resumed run started after it and the epoch's record was
    gone for good (`ltray train` Ctrl-C test: epochs 1, 3, 4, ...). The record is now written
    first: whatever the interrupt hits, the resumed run ends with one record per epoch."""
    from ltray.train.rundir import RunDir

    cfg = load_config(None, TINY)
    real = RunDir.save_checkpoint
    calls = []

    def interrupted_after_epoch_2(self, state, *, is_best):  # type: ignore[no-untyped-def]
        path = real(self, state, is_best=is_best)
        calls.append(state["epoch"])
        if state["epoch"] == 1:  # 0-based: epoch 2 is on disk, then the signal arrives
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(RunDir, "save_checkpoint", interrupted_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path, LocalContext(), finalize=False)
    assert int(load_state(tmp_path / "checkpoints" / "last.pt")["epoch"]) == 1
    assert [m["epoch"] for m in _read_metrics(tmp_path)] == [1, 2]
    monkeypatch.setattr(RunDir, "save_checkpoint", real)
    run_training(
        cfg, tmp_path, LocalContext(), resume_from=tmp_path / "checkpoints" / "last.pt",
        finalize=False,
    )  # fmt: skip
    assert [m["epoch"] for m in _read_metrics(tmp_path)] == [1, 2, 3]


class RayLags(StopAfter):
    """A worker group killed after epoch ``n`` whose host registered only epoch 1's checkpoint
    (Ray's report trails rank 0's ``last.pt``); ``restored_state`` hands that one back."""

    def __init__(self, n: int, keep: Path) -> None:
        super().__init__(n)
        self.keep = keep

    def report(self, metrics, state_path):
        if metrics["epoch"] == 1:
            self.keep.write_bytes(Path(state_path).read_bytes())
        super().report(metrics, state_path)

    def restored_state(self):
        return self.keep if self.keep.is_file() else None


def test_a_restarted_group_continues_from_the_newest_state(tmp_path: Path) -> None:
    cfg = load_config(None, TINY)
    full, part = tmp_path / "full", tmp_path / "part"
    full.mkdir()
    part.mkdir()
    run_training(cfg, full, LocalContext(), finalize=False)
    host = RayLags(2, tmp_path / "registered.pt")
    with pytest.raises(_Stop):
        run_training(cfg, part, host, finalize=False)
    # The restarted group: Ray offers epoch 1, the run's own last.pt holds epoch 2.
    restarted = RayLags(99, host.keep)
    run_training(cfg, part, restarted, finalize=False)
    assert [m["epoch"] for m in restarted.reports] == [3]
    a, b = _weights(full), _weights(part)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)

    # Another config's last.pt in the folder is never continued: training starts at epoch 1.
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "last.pt").write_bytes((part / "checkpoints" / "last.pt").read_bytes())
    fresh = LocalContext()
    run_training(load_config(None, [*TINY, "train.seed=7"]), other, fresh, finalize=False)
    assert [m["epoch"] for m in fresh.reports] == [1, 2, 3]


def test_run_writes_results_cache_and_plots(tmp_path: Path) -> None:
    cfg = load_config(None, TINY)
    ctx = LocalContext()
    results = run_training(cfg, tmp_path, ctx)
    assert results is not None
    assert {"linear", "ncm_ema", "ncm_full", "kt"} <= set(results["heads"])
    for name in ("results.json", "table.txt", "per_class.png", "metrics.csv", "metrics.jsonl"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["heads"]["kt"]["test"]["overall"] == results["heads"]["kt"]["test"]["overall"]
    cache = read_cache(tmp_path)
    assert cache.train.features.shape[1] == 64  # ResNet-32 features
    assert cache.val.logits.shape[1] == cache.num_classes == 10
    assert cache.train.kt_logits is not None and "memory_ema" in cache.params
    # Every epoch reports val metrics of every head once the memory exists.
    assert "val_ncm_ema_overall" in ctx.reports[-1] and "val_kt_few" in ctx.reports[-1]
    text = (tmp_path / "table.txt").read_text()
    assert "KT head" in text and "Many" in text


# Keys of a report that measure time, not what was learned.
_CLOCK = {"images_per_s", "epoch_time_s", "eval_time_s", "memory_init_s", "eta_s"}


def test_training_and_model_selection_never_read_the_test_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Train twice, the second time with the test split's images inverted and its labels
    shuffled: every epoch's losses, KT mask rates, val metrics and best-epoch choice, and the
    final weights (memory included) are identical. So neither training, the memory nor the
    choice of the best epoch reads test; only the final report may (not run here)."""
    import ltray.train.loop as loop

    real_prepare = loop.prepare_data
    scrambled: list[bool] = []

    def scrambled_test(*args, **kwargs):  # type: ignore[no-untyped-def]
        data = real_prepare(*args, **kwargs)
        test = data.pools["test"]
        rng = np.random.default_rng(0)
        bad = dataclasses.replace(
            test, labels=rng.permutation(test.labels), images=255 - test.images
        )
        assert not np.array_equal(bad.labels, test.labels)
        scrambled.append(True)
        return dataclasses.replace(data, pools={**data.pools, "test": bad})

    cfg = load_config(None, ["train.epochs=2", *TINY[1:]])
    runs = {}
    for name in ("real", "scrambled"):
        if name == "scrambled":
            monkeypatch.setattr(loop, "prepare_data", scrambled_test)
        ctx = LocalContext()
        run_training(cfg, tmp_path / name, ctx, finalize=False)
        reports = [{k: v for k, v in r.items() if k not in _CLOCK} for r in ctx.reports]
        runs[name] = (reports, _weights(tmp_path / name))
    assert scrambled == [True]  # the second run did train on the scrambled data
    (rep_a, w_a), (rep_b, w_b) = runs["real"], runs["scrambled"]
    assert "val_kt_overall" in rep_a[-1] and "train_kt_mask_overall" in rep_a[-1]
    assert rep_a == rep_b
    for key in w_a:
        torch.testing.assert_close(w_a[key], w_b[key], rtol=0, atol=0, msg=key)


def test_warmup_step_and_cosine_schedules() -> None:
    step = load_config(
        None,
        [
            "train.epochs=200",
            "train.schedule=step",
            "train.warmup_epochs=5",
            "train.milestones=[160,180]",
            "train.gammas=[0.01,0.0001]",
        ],
    ).train
    assert [lr_factor(step, e) for e in (0, 0.5, 4.9, 5, 159.9, 160, 185)] == [
        0.2,
        0.2,
        1.0,
        1.0,
        1.0,
        0.01,
        0.0001,
    ]
    cos = load_config(None, ["train.epochs=10"]).train
    assert lr_factor(cos, 0) == 1.0
    assert lr_factor(cos, 5) == pytest.approx(0.5)
    assert lr_factor(cos, 10) == pytest.approx(0.0)


def test_full_pass_ncm_is_scored_when_its_pass_is_done_anyway(tmp_path: Path) -> None:
    final = LocalContext()
    run_training(load_config(None, TINY), tmp_path / "final", final, finalize=False)
    # eval.ncm_full=final (default): the memory's init pass (end of epoch 1) gives it; later
    # epochs skip the extra pass over the train split.
    assert ["val_ncm_full_overall" in r for r in final.reports] == [True, False, False]
    assert all(r["memory_init_s"] == 0 for r in final.reports[1:])
    assert final.reports[0]["memory_init_s"] > 0
    every = LocalContext()
    run_training(
        load_config(None, [*TINY, "eval.ncm_full=every"]), tmp_path / "every", every, finalize=False
    )
    assert all("val_ncm_full_overall" in r for r in every.reports)
    with pytest.raises(ConfigError, match="eval.select_head=ncm_full needs .* eval.ncm_full=every"):
        load_config(None, ["eval.select_head=ncm_full"])


def test_final_pass_on_the_weights_in_memory_equals_a_fresh_reload(tmp_path: Path) -> None:
    """When the last epoch is the best, the final evaluation skips the reload and reuses that
    epoch's val pass; otherwise it reloads best.pt. Either way the cache must equal what best.pt
    gives when evaluated from scratch."""
    from ltray.data import make_loader, prepare_data
    from ltray.models import build_network
    from ltray.train.evaluate import extract

    best_epochs = set()
    for head in ("linear", "ncm_ema"):  # seeded: linear peaks last, the EMA memory first
        run = tmp_path / head
        cfg = load_config(None, [*TINY, f"eval.select_head={head}"])
        results = run_training(cfg, run, LocalContext())
        best_epochs.add(results["best_epoch"])
        data = prepare_data(cfg.data)
        net = build_network(cfg, num_classes=10, in_channels=1, small_input=True)
        net = net.to(memory_format=torch.channels_last)
        net.load_state_dict(load_state(run / "checkpoints" / "best.pt")["model"])
        cache = read_cache(run)
        for split in ("train", "val", "test"):
            # Rows in the split's list-file order (train included: no shuffled cache).
            assert np.array_equal(getattr(cache, split).labels, data.labels(split))
            loader = make_loader(data, split, batch_size=256, augment=False, shuffle=False)
            fresh = extract(net, loader, torch.device("cpu"))
            torch.testing.assert_close(getattr(cache, split).logits, fresh.logits)
        timing = json.loads((run / "timing.json").read_text())
        assert {"setup_s", "train_s", "eval_s", "memory_init_s", "final_s"} <= set(timing)
        assert timing["loop_s"] >= timing["train_s"] + timing["eval_s"] + timing["final_s"]
    assert best_epochs == {1, 3}  # both paths were taken


def test_compiled_training_forward_matches_eager(tmp_path: Path) -> None:
    # aot_eager traces forward and backward through dynamo + AOT autograd as inductor does,
    # without generating kernels (seconds instead of minutes on a CPU): same numbers as eager.
    args = [*TINY, "train.epochs=1"]
    eager, compiled = LocalContext(), LocalContext()
    run_training(load_config(None, args), tmp_path / "eager", eager, finalize=False)
    on = ["train.compile=true", "train.compile_backend=aot_eager"]
    run_training(load_config(None, [*args, *on]), tmp_path / "compiled", compiled, finalize=False)
    assert compiled.reports[0]["train_loss"] == pytest.approx(
        eager.reports[0]["train_loss"], rel=1e-4
    )
    a, b = _weights(tmp_path / "eager"), _weights(tmp_path / "compiled")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4, msg=key)


def test_the_best_epoch_follows_the_selection_head_and_group(tmp_path: Path) -> None:
    """A sweep on val_kt_few keeps the epoch with the best KT few-shot accuracy, not the
    best overall one (issue 13)."""
    ctx = LocalContext()
    cfg = load_config(None, [*TINY, "eval.select_head=kt", "eval.select_group=few"])
    results = run_training(cfg, tmp_path, ctx)
    scores = [m["val_kt_few"] for m in ctx.reports]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))  # the first maximum
    assert results is not None and results["best_epoch"] == best + 1
    assert [bool(m.get("is_best")) for m in ctx.reports][0]  # epoch 1 is always a best so far
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (saved["checkpoint"], saved["select_head"], saved["select_group"]) == (
        "best",
        "kt",
        "few",
    )


def test_a_run_that_never_had_a_val_score_does_not_call_the_last_epoch_best(
    tmp_path: Path,
) -> None:
    # rho = 1: every class is many-shot, so no epoch ever reports val_linear_few.
    cfg = load_config(
        None, [*TINY, "train.epochs=2", "data.imbalance_ratio=1", "eval.select_group=few"]
    )
    ctx = LocalContext()
    results = run_training(cfg, tmp_path, ctx)
    assert all("val_linear_few" not in m for m in ctx.reports)
    assert not (tmp_path / "checkpoints" / "best.pt").exists()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert results is not None and saved["checkpoint"] == "last" and saved["best_epoch"] == 2
    text = (tmp_path / "table.txt").read_text()
    assert "last epoch 2" in text and "best-val epoch" not in text


class StoppedOnLastReport(LocalContext):
    """A scheduler that stops the trial on its last epoch's report (ASHA with a rung at the
    last epoch): the trial's function never returns from that report."""

    def report(self, metrics, state_path):
        super().report(metrics, state_path)
        if len(self.reports) == 3:
            raise _Stop


def test_a_trial_stopped_on_its_last_report_has_its_results(tmp_path: Path) -> None:
    """Before: the final pass ran after the last report, so a trial stopped there had trained
    every epoch and left no results.json (seen in a kt.yaml sweep with train.epochs=4)."""
    with pytest.raises(_Stop):
        run_training(load_config(None, TINY), tmp_path, StoppedOnLastReport())
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["heads"]["linear"]["test"]["overall"] > 0.2
    assert (tmp_path / "cache" / "meta.json").is_file() and (tmp_path / "timing.json").is_file()


def test_a_restored_checkpoint_folder_is_removed_when_the_worker_exits(tmp_path: Path) -> None:
    code = (
        "from pathlib import Path; from ltray.train.context import _restore_dir\n"
        "p = Path(_restore_dir()); (p / 'state.pt').write_bytes(b'x'); print(p)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    folder = Path(out.stdout.strip())
    assert folder.name.startswith("ltray-restore-")
    assert not folder.exists()


def test_the_loop_steps_with_fused_sgd_which_follows_the_same_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's SGD is the fused one on CPU (one kernel per step, not ~3 per tensor), and
    fused SGD makes the same updates as the per-tensor loop for every setting the loop passes
    (momentum, weight decay, nesterov, per-group lr)."""
    import ltray.train.loop as loop

    made: list[object] = []

    class Recording(torch.optim.SGD):
        def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            made.append(kwargs.get("fused"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(loop.torch.optim, "SGD", Recording)
    run_training(
        load_config(None, ["train.epochs=1", *TINY[1:]]), tmp_path, LocalContext(), finalize=False
    )
    assert made[0] is True

    for nesterov in (False, True):
        torch.manual_seed(0)
        start = [torch.randn(64, 3, 3, 3), torch.randn(10)]
        grads = [[torch.randn_like(p) for p in start] for _ in range(4)]
        ends = []
        for fused in (False, True):
            params = [p.clone().requires_grad_() for p in start]
            opt = torch.optim.SGD(
                [{"params": params[:1]}, {"params": params[1:], "lr": 0.01}],
                lr=0.1,
                momentum=0.9,
                weight_decay=5e-4,
                nesterov=nesterov,
                foreach=False if not fused else None,
                fused=fused or None,
            )
            for step in grads:
                for p, g in zip(params, step, strict=True):
                    p.grad = g.clone()
                opt.step()
            ends.append([p.detach() for p in params])
        for a, b in zip(*ends, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_ce_trains_as_a_plain_cross_entropy_sgd_loop_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train.method=ce`` is plain CE + SGD on the loader's batches (issue 27): its start
    weights and batches, fed to a hand-written loop (cross-entropy on the linear logits, torch's
    fused SGD with the configured momentum and weight decay, the scheduled lr per step), end at
    the run's weights bit for bit, BatchNorm statistics included. Between the epochs the run
    also builds the memory (a full train pass) and scores val; neither may move a weight or a
    running statistic, and nothing else in the loop may touch the gradient or the update."""
    import ltray.train.loop as loop

    cfg = load_config(None, [*TINY, "train.epochs=2", "train.method=ce"])
    assert cfg.memory.enabled and cfg.memory.init_epoch == 1 and cfg.eval.every == 1
    start: list[nn.Module] = []
    batches: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    real = loop.get_method

    def recording(c):  # type: ignore[no-untyped-def]
        method = real(c)
        loss = method.loss

        def record(net, fwd, x, y, sc):  # type: ignore[no-untyped-def]
            if not start:
                start.append(copy.deepcopy(net))
            batches.append((x.clone(), y.clone(), sc.epoch))
            return loss(net, fwd, x, y, sc)

        method.loss = record
        return method

    monkeypatch.setattr(loop, "get_method", recording)
    run_training(cfg, tmp_path, LocalContext(), finalize=False)
    trained = _weights(tmp_path)

    net = start[0]
    plain = nn.Sequential(net.backbone, net.linear).train()
    t = cfg.train
    opt = torch.optim.SGD(
        plain.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, fused=True
    )
    per_epoch = len(batches) // t.epochs
    for k, (x, y, epoch) in enumerate(batches):
        assert epoch == k // per_epoch
        for g in opt.param_groups:
            g["lr"] = t.lr * lr_factor(t, epoch + (k % per_epoch) / per_epoch)
        loss = F.cross_entropy(plain(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    ours = {k: v for k, v in net.state_dict().items() if not k.startswith("memory.")}
    assert ours.keys() == {k for k in trained if not k.startswith("memory.")}
    assert any("running_var" in k for k in ours)
    for key, value in ours.items():
        torch.testing.assert_close(trained[key], value, rtol=0, atol=0, msg=key)
    assert bool(trained["memory.initialized"])  # the full pass did run between the epochs


def test_the_loop_refuses_a_combination_a_sweep_sampled(tmp_path: Path) -> None:
    """A search space checks each sampled value on its own against the base config; a trial
    that draws kt.class_balance=true and data.sampler=class_balanced together is refused by
    the loop before any data is read, not trained with tail classes weighted twice."""
    cfg = load_config(None, [*TINY, "kt.class_balance=true", "data.sampler=class_balanced"])
    with pytest.raises(ConfigError, match="so they count twice"):
        run_training(cfg, tmp_path, LocalContext())
    assert not any(tmp_path.iterdir())


def _read_metrics(run_dir) -> list[dict]:
    return RunDir(run_dir).read_metrics()
