"""Training speed of `ltray train` held against an independent plain PyTorch loop, in one run.

Every number comes from this invocation, on this machine, one job after the other (the machine
is shared and absolute speed drifts; the ratios are what count):

  [ref]  the independent reference loop ``../shared/reference/plain_ce_cifar10lt.py`` (plain
         PyTorch, not ltray code: tensors in memory, batched crop/flip, channels_last, SGD),
         run as a subprocess: CIFAR-10-LT rho=100, ResNet-32, batch 128, 2 threads, CE;
  [1]    `ltray train` on the same split, model, batch, threads and epochs (CE, one Ray Train
         worker): train images/s / reference (target >= 0.95) and wall time command-to-table /
         reference (target <= 1.25), over 2 alternated rounds (reference, ltray, reference,
         ltray);
  [2]    the per-epoch evaluation at default settings (val: linear, EMA-NCM heads) / that
         epoch's training time (target <= 0.15); the memory's one full pass (end of epoch k)
         and the final evaluation are shown apart;
  [3]    2 Ray Train workers x 1 thread / 1 worker x 1 thread, train images/s over 2 epochs
         (target >= 1.8), beside plain PyTorch DDP (scripts/plain_ddp.py: no ltray, no Ray)
         2 processes / 1, run before, between and after ltray's runs;
  [4]    the default `ltray train` (digits-LT): wall time - the loop's own time, median of 3
         runs (target <= 15 s);
  [5]    KT + EMA step / CE step, ResNet-32 batch 128 (target <= 1.10).

    LTRAY_DATA_DIR=../shared/data python scripts/bench_train.py            # all, ~20 min here
    python scripts/bench_train.py --only 4 5                             # no shared data needed

The reference file is read from ``--reference`` (default ../shared/reference); it is never
copied into this repository.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> float:
    """Run ``cmd`` to completion (output to ``log``); returns its wall time in seconds."""
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}); see {log}")
    return wall


def reference(script: Path, data: Path, epochs: int, work: Path, threads: int) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    out = work / "reference.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    wall = _run(
        [sys.executable, str(script), str(data), str(epochs), str(out)], work / "ref.log", env
    )
    res = json.loads(out.read_text())
    return {"wall_s": wall, "images_per_s": res["train_img_per_s"], "result": res}


def ltray_train(overrides: list[str], out: Path, log: Path) -> dict[str, Any]:
    """`ltray train` as a user runs it; wall time and the loop's own records."""
    cmd = [sys.executable, "-m", "ltray.cli", "train", "--out", str(out), *overrides]
    wall = _run(cmd, log)
    timing = json.loads((out / "timing.json").read_text())
    rec = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    images = sum(r["images_per_s"] * r["epoch_time_s"] for r in rec)
    return {
        "wall_s": wall,
        "timing": timing,
        "epochs": rec,
        "images_per_s": images / sum(r["epoch_time_s"] for r in rec),
        "results": json.loads((out / "results.json").read_text()),
    }


def plain_ddp(workers: int, log: Path) -> float:
    """Images/s of ``scripts/plain_ddp.py`` with ``workers`` processes (one thread each)."""
    script = Path(__file__).resolve().parent / "plain_ddp.py"
    _run([sys.executable, str(script), "--workers", str(workers)], log)
    return float(json.loads(log.read_text().strip().splitlines()[-1])["images_per_s"])


def cifar_args(root: Path, epochs: int) -> list[str]:
    # The reference loop's settings: rho=100, batch 128, lr 0.1 (one-cycle cosine, 5% warm-up
    # there; cosine here), wd 2e-4, CE; 100 val images per class carved out of test.
    return [
        "data.name=cifar10-lt",
        f"data.root={root}",
        "data.imbalance_ratio=100",
        "data.batch_size=128",
        "data.val_per_class=100",
        "model.backbone=resnet32",
        "train.method=ce",
        "train.lr=0.1",
        "train.weight_decay=2e-4",
        f"train.epochs={epochs}",
    ]


def step_times(steps: int, batch: int, threads: int) -> tuple[float, float]:
    """Median seconds per optimiser step: (CE only, KT + EMA memory), interleaved."""
    import torch

    from ltray.config import load_config
    from ltray.models import build_network
    from ltray.train.methods import StandardMethod, StepContext

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    runs = {}
    for name, kt in (("ce", False), ("kt", True)):
        extra = [] if kt else ["kt.enabled=false", "memory.enabled=false"]
        cfg = load_config(None, ["model.backbone=resnet32", *extra])
        net = build_network(cfg, num_classes=10, in_channels=3, small_input=True)
        net = net.to(memory_format=torch.channels_last)
        if net.memory is not None:  # after the init epoch: the teacher and EMA are live
            net.memory.set_from_sums(torch.rand(10, net.feat_dim), torch.ones(10))
        method = StandardMethod(kt=kt)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        runs[name] = (net, cfg, method, method.wrap(net, cfg), opt)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    counts, groups = torch.linspace(5000, 50, 10), torch.zeros(10, dtype=torch.long)
    times: dict[str, list[float]] = {"ce": [], "kt": []}
    for block in range(2 * steps + 4):
        name = "ce" if block % 2 == 0 else "kt"
        net, cfg, method, fwd, opt = runs[name]
        sc = StepContext(cfg, counts, groups, 1, torch.Generator().manual_seed(block))
        t0 = time.perf_counter()
        res = method.loss(net, fwd, x, y, sc)
        opt.zero_grad()
        res.loss.backward()
        opt.step()
        if net.memory is not None:
            net.memory.step(res.out.features.detach(), res.memory_labels, all_reduce=False)
        if block >= 4:  # two warm-up steps of each
            times[name].append(time.perf_counter() - t0)
    return statistics.median(times["ce"]), statistics.median(times["kt"])


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("LTRAY_DATA_DIR", "../shared/data"))
    ap.add_argument("--reference", default=str(REPO.parent / "shared" / "reference"))
    ap.add_argument("--epochs", type=int, default=2, help="epochs of [ref] and [1]")
    ap.add_argument("--rounds", type=int, default=2, help="alternated rounds of [ref] and [1]")
    ap.add_argument("--scaling-epochs", type=int, default=2, help="epochs of each run of [3]")
    ap.add_argument("--steps", type=int, default=15, help="steps per method in [5]")
    ap.add_argument("--default-runs", type=int, default=3, help="runs of [4] (median counts)")
    ap.add_argument("--only", nargs="*", type=int, help="run only these parts (1-5)")
    ap.add_argument("--json", help="also write every number to this JSON file")
    args = ap.parse_args()
    parts = set(args.only or [1, 2, 3, 4, 5])
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    root = Path(args.data_dir).resolve() / "cifar10"
    script = Path(args.reference) / "plain_ce_cifar10lt.py"
    out: dict[str, Any] = {"cpus": os.cpu_count(), "work": str(work)}
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, logs in {work}", flush=True)

    if parts & {1, 2}:
        if not script.is_file() or not root.is_dir():
            sys.exit(f"[1]/[2] need {script} and {root} (set --reference / --data-dir)")
        # Alternated (reference, ltray, reference, ltray, ...): the machine's speed drifts by
        # 10% within minutes here, so each ratio is taken over every round.
        refs, lts = [], []
        for i in range(args.rounds):
            refs.append(reference(script, root, args.epochs, work / f"ref-{i}", threads=2))
            lts.append(
                ltray_train(
                    [
                        *cifar_args(root, args.epochs),
                        "train.threads=2",
                        "scaling.cpus_per_worker=2",
                    ],
                    work / f"ltray-2t-{i}",
                    work / f"ltray-2t-{i}.log",
                )
            )
        out.update(reference=refs, ltray=lts)
        for i, (ref, lt) in enumerate(zip(refs, lts, strict=True)):
            lin = lt["results"]["heads"]["linear"]["test"]["overall"] * 100
            ncm = lt["results"]["heads"]["ncm_full"]["test"]["overall"] * 100
            print(
                f"[ref] round {i + 1}: reference loop, {args.epochs} epochs, 2 threads: "
                f"{ref['images_per_s']:.1f} img/s, wall {ref['wall_s']:.0f} s, "
                f"test linear {ref['result']['linear']['overall']:.1f} / "
                f"NCM {ref['result']['ncm_cosine']['overall']:.1f}"
            )
            print(
                f"      round {i + 1}: ltray train, same settings, 1 Ray Train worker: "
                f"{lt['images_per_s']:.1f} img/s, wall {lt['wall_s']:.0f} s, "
                f"test linear {lin:.1f} / NCM {ncm:.1f}"
            )
        r_ips = statistics.mean(x["images_per_s"] for x in lts) / statistics.mean(
            x["images_per_s"] for x in refs
        )
        r_wall = statistics.mean(x["wall_s"] for x in lts) / statistics.mean(
            x["wall_s"] for x in refs
        )
        per_round = ", ".join(
            f"{lt['images_per_s'] / ref['images_per_s']:.3f}"
            for ref, lt in zip(refs, lts, strict=True)
        )
        print(
            f"[1] train images/s ltray / reference = {r_ips:.3f} over {len(lts)} rounds "
            f"(each: {per_round}) (target >= 0.95) {verdict(r_ips >= 0.95)}"
        )
        print(
            f"    wall time ltray / reference = {r_wall:.3f} (target <= 1.25) "
            f"{verdict(r_wall <= 1.25)}"
        )
        for lt in lts:
            t = lt["timing"]
            outside = lt["wall_s"] - t["loop_s"]
            print(
                f"    ltray wall {lt['wall_s']:.0f} s = outside the loop {outside:.0f} + setup "
                f"{t['setup_s']:.0f} + training {t['train_s']:.0f} + per-epoch evaluation "
                f"{t['eval_s']:.0f} + memory init pass {t['memory_init_s']:.0f} + final "
                f"evaluation and cache {t['final_s']:.0f}"
            )
        fracs = [r["eval_time_s"] / r["epoch_time_s"] for lt in lts for r in lt["epochs"]]
        worst = max(fracs)
        print(
            "[2] per-epoch evaluation / epoch training time: "
            + ", ".join(f"{100 * f:.1f}%" for f in fracs)
            + f" (target <= 15%) {verdict(worst <= 0.15)}"
        )
        out["eval_fractions"] = fracs

    if 3 in parts:
        if not root.is_dir():
            sys.exit(f"[3] needs {root} (set --data-dir)")
        # Plain DDP (scripts/plain_ddp.py: no ltray, no Ray) before and after ltray's runs: what
        # data parallelism itself reaches on this machine in the same minutes.
        plain = [plain_ddp(w, work / f"plain-{w}p-0.log") for w in (1, 2)]
        runs = {}
        for workers in (1, 2):
            runs[workers] = ltray_train(
                [
                    *cifar_args(root, args.scaling_epochs),
                    f"scaling.num_workers={workers}",
                    "train.threads=1",
                    "scaling.cpus_per_worker=1",
                ],
                work / f"ltray-{workers}w",
                work / f"ltray-{workers}w.log",
            )
            if workers == 1:
                plain += [plain_ddp(w, work / f"plain-{w}p-1.log") for w in (1, 2)]
        plain += [plain_ddp(w, work / f"plain-{w}p-2.log") for w in (1, 2)]
        one, two = runs[1]["images_per_s"], runs[2]["images_per_s"]
        plain_ratios = [plain[i + 1] / plain[i] for i in range(0, len(plain), 2)]
        print(
            f"[3] 2 workers x 1 thread {two:.1f} img/s / 1 worker x 1 thread {one:.1f} img/s = "
            f"{two / one:.2f}x (target >= 1.8) {verdict(two / one >= 1.8)}"
        )
        print(
            "    plain PyTorch DDP (no Ray, no ltray), 2 processes / 1, run before, between and "
            "after: "
            + ", ".join(f"{r:.2f}x" for r in plain_ratios)
            + f" (median {statistics.median(plain_ratios):.2f}x; 1 process "
            + ", ".join(f"{plain[i]:.0f}" for i in range(0, len(plain), 2))
            + " img/s)"
        )
        out["scaling"] = {
            "one": one,
            "two": two,
            "ratio": two / one,
            "plain_ddp_images_per_s": plain,
            "plain_ddp_ratios": plain_ratios,
        }

    if 4 in parts:
        # A half-minute job: one run is at the mercy of whatever else wakes up on the machine,
        # so it runs --default-runs times and the median counts (every run is printed).
        runs = [
            ltray_train([], work / f"ltray-default-{i}", work / f"ltray-default-{i}.log")
            for i in range(args.default_runs)
        ]
        outs = [r["wall_s"] - r["timing"]["loop_s"] for r in runs]
        mid = statistics.median(outs)
        each = ", ".join(
            f"{r['wall_s']:.1f} - {r['timing']['loop_s']:.1f} = {o:.1f}"
            for r, o in zip(runs, outs, strict=True)
        )
        print(
            f"[4] default `ltray train` (digits-LT), wall - loop, {len(runs)} runs: {each} s; "
            f"median outside the loop {mid:.1f} s (target <= 15 s) {verdict(mid <= 15)}"
        )
        out["default"] = [{"wall_s": r["wall_s"], "loop_s": r["timing"]["loop_s"]} for r in runs]

    if 5 in parts:
        ce, kt = step_times(args.steps, 128, threads=2)
        print(
            f"[5] step time, ResNet-32, batch 128, 2 threads: CE {1000 * ce:.0f} ms, "
            f"KT+EMA {1000 * kt:.0f} ms, ratio {kt / ce:.3f} (target <= 1.10) "
            f"{verdict(kt / ce <= 1.10)}"
        )
        out["step"] = {"ce_s": ce, "kt_s": kt}

    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
