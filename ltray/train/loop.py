"""The training loop: one function a reader can follow top to bottom.

:func:`run_training` runs on every worker (Ray Train), in a Tune trial, or in-process; the host is
abstracted by a :class:`~ltray.train.context.LoopContext`. Per step: (mixup) → backbone → heads →
CE (or balanced softmax) on the linear head + the KT branch loss against the d-scaled NCM teacher →
SGD step → EMA update of the class-mean memory (all-reduced across workers). The memory is built
by a full pass at the end of epoch k. Each evaluated epoch the linear, EMA-NCM and KT heads are
scored on val (the full-pass NCM head too where ``eval.ncm_full=every``, or where the epoch's
memory init pass gives it for free), a checkpoint is written and reported. At the end, rank 0
evaluates the best-val weights on every split and writes the feature cache, the results and the
plots into the run directory.

Speed: in-memory datasets live on the device as uint8 and are augmented there
(:mod:`ltray.data.device`); model and batches are channels_last on every device; bf16 autocast
on GPUs and an optional ``torch.compile`` (``train.compile``). ``timing.json`` splits the loop's
time into setup, training, evaluation and the final pass (``scripts/bench_train.py`` reads it).
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ltray.config import Config, config_hash
from ltray.data import make_loader, prepare_data, shard_loader
from ltray.errors import ConfigError, RunDirError
from ltray.fusion.base import FitContext
from ltray.fusion.cache import read_cache
from ltray.fusion.methods import context_of
from ltray.metrics import HeadMetrics
from ltray.models import LTNet
from ltray.train.catalog import get_method
from ltray.train.context import LoopContext
from ltray.train.evaluate import (
    EpochArrays,
    EpochHook,
    evaluate_heads,
    extract,
    flat_metrics,
    full_pass_sums,
    head_logits,
    head_params,
    to_device,
)
from ltray.train.finalize import finalize_run, memory_args, select_metric
from ltray.train.methods import StepContext
from ltray.train.resume import run_hash
from ltray.train.rundir import RunDir, progress_line
from ltray.train.schedule import base_lr, lr_factor
from ltray.validate import format_problems, ignored_problems

__all__ = [
    "run_training",
    "seed_everything",
    "load_state",
    "finalize_run",
]  # finalize_run: re-exported


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(cfg: Config, epoch: int, rank: int) -> int:
    # Re-seeding at every epoch start makes a run resumed at an epoch boundary take exactly the
    # same random draws (augmentation, mixup) as an uninterrupted one.
    return (cfg.train.seed * 1_000_003 + epoch * 1009 + rank) % 2**31


def load_state(path: Path) -> dict[str, Any]:
    return RunDir.load_state(path)


def _resume_state(
    ctx: LoopContext,
    resume_from: Path | None,
    run_dir: Path,
    cfg: Config,
    world: int,
    rank: int,
) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest state this run can continue from, and where it came from.

    Candidates: the checkpoint Ray restored into a restarted worker group, the one ``--resume``
    named, and the run's own ``checkpoints/last.pt`` when it holds this run's state. The last
    covers a worker killed after rank 0 wrote ``last.pt`` but before Ray registered the epoch's
    report (or before any report): without it the group would restart from an older epoch or
    from scratch. With several workers, rank 0 chooses and sends the state to the others, so
    every rank starts at the same epoch even where only rank 0's node holds the run directory.

    Every candidate must have been written by this run: its ``run_hash`` (the config without
    the keys a resume may change, :func:`ltray.train.resume.run_hash`) must be this config's.
    A foreign ``last.pt`` in a fresh folder is skipped (training starts at epoch 1); a foreign
    or changed state named by ``--resume`` or restored by Ray is refused (:class:`RunDirError`).
    """
    chosen: tuple[Path | None, dict[str, Any] | None] = (None, None)
    shared = world > 1 and dist.is_available() and dist.is_initialized()
    if rank == 0 or not shared:
        own = RunDir(run_dir).checkpoint("last")
        candidates = [ctx.restored_state(), resume_from, own if own.is_file() else None]
        for path in dict.fromkeys(Path(c) for c in candidates if c is not None):
            state = load_state(path)
            if not _same_run(state, cfg, named=path == resume_from):
                if path == own and resume_from is None:
                    continue  # not this run's state: never continue another run's weights
                raise RunDirError(
                    f"{path}: this checkpoint was written by another run or config (run hash "
                    f"{state.get('run_hash', '?')}, this config {run_hash(cfg)}); a run "
                    "continues only its own checkpoints: resume it with its own config.yaml, "
                    "or start a new run"
                )
            if chosen[1] is None or int(state["epoch"]) > int(chosen[1]["epoch"]):
                chosen = (path, state)
    if shared:
        box = [chosen]
        dist.broadcast_object_list(box, src=0)
        chosen = box[0]
    return chosen


def _same_run(state: dict[str, Any], cfg: Config, *, named: bool) -> bool:
    """Whether checkpoint ``state`` belongs to the run ``cfg`` describes. Checkpoints written
    before ``run_hash`` was stamped carry only the full config hash: such a state matches that
    hash, or is taken when ``--resume`` named it (the driver compared ``config.yaml`` first)."""
    if "run_hash" in state:
        return bool(state["run_hash"] == run_hash(cfg))
    return named or state.get("config_hash") == config_hash(cfg)


def _device(cfg: Config, local_rank: int) -> torch.device:
    use = cfg.scaling.use_gpu
    if use == "auto":
        use = torch.cuda.is_available()
    if use and torch.cuda.is_available():
        # Ray exposes to each worker the GPUs of its node it may use; the local rank picks one.
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def _full_pass(
    net: LTNet, batches: Any, device: torch.device, num_classes: int, world: int, cl: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    sums, counts = full_pass_sums(net, batches, device, num_classes, channels_last=cl)
    if world > 1:
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    return sums, counts


def run_training(
    cfg: Config,
    run_dir: Path,
    ctx: LoopContext,
    *,
    resume_from: Path | None = None,
    finalize: bool = True,
    epoch_hook: EpochHook | None = None,
) -> dict[str, Any] | None:
    """Train per ``cfg``, writing checkpoints and metrics into ``run_dir`` (rank 0).

    Resumes from the newest of ``ctx.restored_state()`` (a restarted worker group),
    ``resume_from`` (a stopped run) and the run's own ``last.pt`` (:func:`_resume_state`).
    ``epoch_hook`` (rank 0, evaluated epochs) adds metrics to each report from the epoch's val
    arrays (:class:`~ltray.train.evaluate.EpochArrays`; at the last epoch the best checkpoint's,
    as the cache holds them): a two-level sweep scores the post-hoc stage there.
    Returns the final results on rank 0 (``None`` elsewhere or without ``finalize``).
    """
    t_enter = time.time()
    # What the driver's checks refuse, again here: a sweep's trial combines sampled values
    # that were checked one at a time (kt.class_balance=true with data.sampler=class_balanced).
    refused = ignored_problems(cfg)
    if refused:
        raise ConfigError(format_problems(refused))
    run_dir = Path(run_dir)
    world, rank = ctx.world_size, ctx.rank
    is_main = rank == 0
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = _device(cfg, getattr(ctx, "local_rank", rank))
    cuda = device.type == "cuda"
    cl = cfg.train.channels_last
    seed_everything(cfg.train.seed)

    # -- data and model -----------------------------------------------------------------------
    data = prepare_data(cfg.data)
    run = RunDir(run_dir)
    if is_main and not (run / RunDir.SPLIT).is_file():  # a tune trial: no driver wrote it
        run.write_split(data.split_info)
    method = get_method(cfg)
    data = method.prepare_data(data, cfg)  # e.g. an LFME expert trains on one shot group only
    small = cfg.model.small_input if cfg.model.small_input is not None else data.small_input
    net = method.build(
        cfg,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        small_input=small,
        data=data,
    ).to(device)
    if cl:
        net = net.to(memory_format=torch.channels_last)
    # Methods may split parameters into groups with their own lr_scale / weight_decay (OLTR).
    optimizer = torch.optim.SGD(
        method.param_groups(net, cfg),
        lr=cfg.train.lr,
        momentum=cfg.train.momentum,
        weight_decay=cfg.train.weight_decay,
        nesterov=cfg.train.nesterov,
        # One kernel per step for all parameters instead of ~3 per tensor (CPU: 1.4 vs 2.7 ms
        # per step for ResNet-32, 2 threads); the same update rule.
        fused=device.type in ("cpu", "cuda"),
    )
    loader = make_loader(
        data,
        "train",
        batch_size=cfg.data.batch_size,
        augment=True,
        sampler=method.sampler(cfg),
        seed=cfg.train.seed,
        world_size=world,
        rank=rank,
        num_workers=cfg.data.loader_workers,
        drop_last=False,
        device=device,
    )
    val_loader = make_loader(
        data,
        "val",
        batch_size=cfg.data.eval_batch_size,
        augment=False,
        num_workers=cfg.data.loader_workers,
        device=device,
    )
    train_pass = shard_loader(
        data,
        "train",
        batch_size=cfg.data.eval_batch_size,
        world_size=world,
        rank=rank,
        num_workers=cfg.data.loader_workers,
        device=device,
    )
    class_counts = torch.as_tensor(data.class_counts, dtype=torch.float32, device=device)
    groups = torch.as_tensor(data.groups, device=device)
    steps_per_epoch = len(loader)
    lr0 = base_lr(cfg.train, cfg.data.batch_size * world)
    amp = cuda and cfg.train.amp
    amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)

    # -- resume --------------------------------------------------------------------------------
    start_epoch, best = 0, {"epoch": -1, "score": -math.inf}
    state_path, state = _resume_state(ctx, resume_from, run_dir, cfg, world, rank)
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best = int(state["epoch"]) + 1, dict(state["best"])
        if is_main:
            print(f"[ltray] resuming from {state_path} at epoch {start_epoch + 1}", flush=True)

    fwd = method.wrap(net, cfg)
    if world > 1:
        fwd = nn.parallel.DistributedDataParallel(fwd, device_ids=[device.index] if cuda else None)
    if cfg.train.compile:
        fwd = torch.compile(fwd, backend=cfg.train.compile_backend)
    memory = net.memory
    k = cfg.memory.init_epoch
    if memory is not None and k == 0 and not bool(memory.initialized):
        memory.set_from_sums(*_full_pass(net, train_pass, device, data.num_classes, world, cl))

    run.write_worker_pid(rank)  # every rank: workers/rank{R}.pid
    history_t0 = time.time()
    timing = {"setup_s": history_t0 - t_enter, "train_s": 0.0, "eval_s": 0.0, "memory_init_s": 0.0}
    last_val = None  # (epoch, val arrays) of the latest evaluation, reused by the final pass
    results = None

    def _finish() -> dict[str, Any]:
        """Score the best weights on every split; write the cache, results and timing."""
        t_final = time.time()
        # The weights in memory are the best ones when the best epoch is the last one trained
        # here: no reload, and that epoch's val pass is reused.
        in_memory = best["epoch"] == cfg.train.epochs - 1 and start_epoch < cfg.train.epochs
        reuse = last_val[1] if in_memory and last_val and last_val[0] == best["epoch"] else None
        out = finalize_run(cfg, run_dir, net, data, device, reload=not in_memory, val=reuse)
        # Time spent inside the loop (data, model, epochs, final evaluation): benchmarks
        # subtract loop_s from a run's wall time to get the orchestration overhead.
        timing.update(final_s=time.time() - t_final, loop_s=time.time() - t_enter)
        run.write_timing(timing)
        return out

    def _epoch_arrays(epoch: int, final: bool) -> EpochArrays:
        """This epoch's arrays for ``epoch_hook``; at the end, the best checkpoint's (the
        cache ``_finish`` wrote), so the hook scores the model the run leaves behind."""

        if final:
            cache = read_cache(run_dir)
            assert results is not None
            scored = {h: HeadMetrics(**r["val"]) for h, r in results["heads"].items()}
            return EpochArrays(
                epoch + 1, True, run_dir, cache.val, scored, context_of(cache), lambda: cache.train
            )
        context = FitContext(
            num_classes=data.num_classes,
            class_counts=np.asarray(data.class_counts),
            groups=np.asarray(data.groups),
            params=head_params(net),
        )
        plain_train = make_loader(
            data,
            "train",
            batch_size=cfg.data.eval_batch_size,
            augment=False,
            shuffle=False,
            num_workers=cfg.data.loader_workers,
            device=device,
        )
        return EpochArrays(
            epoch + 1,
            False,
            run_dir,
            last_val[1],
            heads,
            context,
            lambda: extract(net, plain_train, device, channels_last=cl),
        )

    for epoch in range(start_epoch, cfg.train.epochs):
        seed_everything(_epoch_seed(cfg, epoch, rank))
        gen = torch.Generator().manual_seed(_epoch_seed(cfg, epoch, rank))
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        net.train()
        t0, seen, loss_sum, parts_sum = time.time(), 0, 0.0, {}
        tallies: dict[str, tuple[Any, Any]] = {}
        last_print = t0
        for i, (x, y) in enumerate(loader):
            x, y = to_device(x, device, channels_last=cl), y.to(device, non_blocking=True)
            lr = lr0 * lr_factor(cfg.train, epoch + i / steps_per_epoch)
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                res = method.loss(
                    net, fwd, x, y, StepContext(cfg, class_counts, groups, epoch, gen)
                )
            loss = res.loss
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if memory is not None and memory.is_initialized:
                memory.step(
                    res.out.features.detach().float(), res.memory_labels, all_reduce=world > 1
                )
            # Sums stay tensors on the device until the epoch ends: no host sync per step.
            n = len(y)
            seen += n
            loss_sum = loss_sum + loss.detach() * n
            for key, v in res.parts.items():
                parts_sum[key] = parts_sum.get(key, 0.0) + v * n
            for key, (hits, total) in res.tallies.items():
                hits_so_far, total_so_far = tallies.get(key, (0.0, 0.0))
                tallies[key] = (hits_so_far + hits, total_so_far + total)
            if is_main and time.time() - last_print > 15:
                last_print = time.time()
                rate = seen / (last_print - t0)
                print(
                    f"[ltray] epoch {epoch + 1}/{cfg.train.epochs} step {i + 1}/"
                    f"{steps_per_epoch} {rate * world:.0f} img/s",
                    flush=True,
                )
        train_time = time.time() - t0
        t_eval = time.time()
        last = epoch + 1 == cfg.train.epochs
        evaluate = (epoch + 1) % cfg.eval.every == 0 or last
        init_now = memory is not None and k > 0 and epoch + 1 == k and not bool(memory.initialized)
        full = None
        if init_now or (evaluate and cfg.eval.ncm_full == "every"):
            # One full pass serves both the memory's init (end of epoch k) and NCM-full on val.
            full = _full_pass(net, train_pass, device, data.num_classes, world, cl)
        if init_now:
            memory.set_from_sums(*full)
        init_time = time.time() - t_eval if init_now else 0.0

        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": float(loss_sum) / max(seen, 1),
            **{f"train_{key}": float(v) / max(seen, 1) for key, v in parts_sum.items()},
            **{f"train_{k}": float(h) / float(t) for k, (h, t) in tallies.items() if float(t)},
            "images_per_s": seen * world / max(train_time, 1e-9),
            "epoch_time_s": train_time,
        }
        heads = None
        if evaluate and is_main:
            val = extract(net, val_loader, device, channels_last=cl)
            last_val = (epoch, val)
            heads = evaluate_heads(
                head_logits(val, metric=cfg.memory.metric, **memory_args(net), full_sums=full),
                val.labels,
                data.groups,
                ece_bins=cfg.eval.ece_bins,
            )
            metrics.update(flat_metrics("val", heads))
            score = metrics.get(select_metric(cfg), -math.inf)
            if score > best["score"]:
                best = {"epoch": epoch, "score": float(score)}
                metrics["is_best"] = 1.0
        eval_time = time.time() - t_eval - init_time
        metrics.update(eval_time_s=eval_time, memory_init_s=init_time)
        timing["train_s"] += train_time
        timing["eval_s"] += eval_time
        timing["memory_init_s"] += init_time
        metrics["best_epoch"] = best["epoch"] + 1
        metrics["best_score"] = best["score"] if math.isfinite(best["score"]) else 0.0
        elapsed = time.time() - history_t0
        done = epoch + 1 - start_epoch
        metrics["eta_s"] = elapsed / done * (cfg.train.epochs - epoch - 1)

        ckpt_path = None
        if is_main:
            final = last and finalize
            hook = epoch_hook is not None and heads is not None
            # The epoch's record first, its checkpoint second: an interrupt between the two
            # leaves a record the resumed run writes again (readers keep the last one per
            # epoch), never a checkpoint ahead of the records (a resume would skip the epoch's
            # record for good). The last epoch of a finalized run is the exception: its results
            # and hook need the best checkpoint, and its results.json marks the run finished.
            for step in ("checkpoint", "record") if final else ("record", "checkpoint"):
                if step == "record":
                    if final:
                        # Before the last report: a scheduler (ASHA with a rung at the last
                        # epoch) may stop the trial on that report, and the results must exist
                        # by then; the hook then scores the cache _finish wrote.
                        results = _finish()
                    if hook:
                        t_hook = time.time()
                        metrics.update(epoch_hook(_epoch_arrays(epoch, final)))
                        metrics["hook_time_s"] = time.time() - t_hook
                    run.append_metrics(metrics)
                else:
                    ckpt_path = run.save_checkpoint(
                        {
                            "model": net.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "epoch": epoch,
                            "best": best,
                            "config_hash": config_hash(cfg),
                            "run_hash": run_hash(cfg),
                        },
                        is_best=bool(metrics.get("is_best")),
                    )
            print(progress_line(metrics, cfg), flush=True)
        ctx.report(metrics, ckpt_path)

    if not (finalize and is_main):
        return None
    return results if results is not None else _finish()
