"""Plain PyTorch DDP throughput: the yardstick for `ltray train`'s data-parallel scaling.

No ltray code and no Ray: the CIFAR ResNet-32 of ``plain_resnet.py``, ``--workers`` processes
started by ``torch.multiprocessing`` (gloo, one thread each), in-memory batches of random 32x32
images, SGD with momentum, a batch of 128 per worker (as ltray's ``data.batch_size``). Prints
one JSON line:
``{"workers": N, "images_per_s": ..., "per_worker": [...]}`` (steady state, after warm-up).

    python scripts/plain_ddp.py --workers 1
    python scripts/plain_ddp.py --workers 2

``scripts/bench_train.py`` [3] runs it beside ltray's 1- and 2-worker runs, so the ratio ltray
reaches can be read against what DDP itself reaches on the same machine in the same minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from plain_resnet import resnet32
from torch import nn
from torch.nn import functional as F


def _worker(rank: int, world: int, port: int, steps: int, warmup: int, batch: int, out) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(rank)
    net = resnet32(10).to(memory_format=torch.channels_last)
    model: nn.Module = net
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        model = nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    b = batch
    x = torch.randn(b, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (b,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    out.put((rank, steps * b / (time.perf_counter() - t0)))
    if world > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=80, help="timed steps per worker")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128, help="batch per worker")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(
            target=_worker,
            args=(r, args.workers, port, args.steps, args.warmup, args.batch, queue),
        )
        for r in range(args.workers)
    ]
    for p in procs:
        p.start()
    rates = dict(queue.get() for _ in procs)
    for p in procs:
        p.join()
    per = [rates[r] for r in range(args.workers)]
    print(json.dumps({"workers": args.workers, "images_per_s": sum(per), "per_worker": per}))


if __name__ == "__main__":
    main()
