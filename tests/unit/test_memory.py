"""Class-mean memory and NCM (docs/methods.md#memory-module), pinned by hand-computed examples."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ltray.models import ClassMemory, class_sums, d_scale, ncm_logits, normalize

INF = float("inf")
R2 = math.sqrt(2.0)

# Two classes in 2-d: M_0 = (1, 0), M_1 = (1, 1) (not unit length, as a mean of ĥ is not).
MEANS = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
# Raw features h = (3, 4) -> ĥ = (0.6, 0.8); h = (0, 2) -> ĥ = (0, 1).
FEAT = torch.tensor([[3.0, 4.0], [0.0, 2.0]])


def test_normalize_is_eps_safe():
    out = normalize(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))


def test_class_sums_by_hand():
    feat = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    sums, counts = class_sums(feat, torch.tensor([2, 0, 2]), 4)
    torch.testing.assert_close(sums, torch.tensor([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0], [0.0, 0.0]]))
    torch.testing.assert_close(counts, torch.tensor([1.0, 0.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        class_sums(feat, torch.tensor([0, 1, 2]), 2)


def test_ncm_cosine_by_hand():
    z = ncm_logits(FEAT, MEANS, metric="cosine")
    # ĥ·M_c/‖M_c‖: (0.6, 0.8)·(1, 0) = 0.6; (0.6 + 0.8)/√2; (0, 1)·(1, 0) = 0; 1/√2
    expected = torch.tensor([[0.6, 1.4 / R2], [0.0, 1.0 / R2]])
    torch.testing.assert_close(z, expected)


def test_ncm_euclidean_by_hand():
    z = ncm_logits(FEAT, MEANS, metric="euclidean")
    # −‖ĥ − M_c‖²: (−0.4)² + 0.8² = 0.8; (−0.4)² + (−0.2)² = 0.2; 1 + 1 = 2; 1 + 0 = 1
    expected = torch.tensor([[-0.8, -0.2], [-2.0, -1.0]])
    torch.testing.assert_close(z, expected)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_ncm_invalid_class_is_minus_inf(metric: str):
    means = torch.cat([MEANS, torch.zeros(1, 2)])  # class 2 never had an image
    z = ncm_logits(FEAT, means, metric=metric, valid=torch.tensor([True, True, False]))
    assert not torch.isnan(z).any()
    assert torch.isneginf(z[:, 2]).all()
    torch.testing.assert_close(z[:, :2], ncm_logits(FEAT, MEANS, metric=metric))


def test_ncm_unknown_metric():
    with pytest.raises(ValueError, match="metric"):
        ncm_logits(FEAT, MEANS, metric="dot")  # type: ignore[arg-type]


def test_d_scale_by_hand():
    z_l = torch.tensor([[1.0, 3.0, -1.0]])
    z_d = torch.tensor([[0.5, 0.0, 1.0]])
    # min z_l = −1, range z_l = 4; min z_d = 0, range z_d = 1 -> −1 + 4·z_d
    torch.testing.assert_close(d_scale(z_l, z_d), torch.tensor([[1.0, -1.0, 3.0]]))
    # per sample: a second row with another range
    z_l2 = torch.tensor([[1.0, 3.0, -1.0], [0.0, 2.0, 1.0]])
    z_d2 = torch.tensor([[0.5, 0.0, 1.0], [0.2, 0.6, 0.4]])
    # row 2: min z_l = 0, range 2; min z_d = 0.2, range 0.4 -> (z_d − 0.2)·5
    torch.testing.assert_close(
        d_scale(z_l2, z_d2), torch.tensor([[1.0, -1.0, 3.0], [0.0, 2.0, 1.0]])
    )


def test_d_scale_keeps_minus_inf_and_uses_finite_range():
    z_l = torch.tensor([[1.0, 3.0, -1.0, 0.0]])
    z_d = torch.tensor([[0.5, -INF, 1.0, 0.0]])
    out = d_scale(z_l, z_d)
    assert not torch.isnan(out).any()
    assert torch.isneginf(out[0, 1])
    torch.testing.assert_close(out[0, [0, 2, 3]], torch.tensor([1.0, 3.0, -1.0]))


def test_d_scale_zero_range_guard():
    z_l = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    z_d = torch.tensor([[0.2, 0.2], [-INF, -INF]])
    out = d_scale(z_l, z_d)
    assert not torch.isnan(out).any()
    # a flat NCM row maps onto min z_l; a row with no finite entry stays −inf
    torch.testing.assert_close(out[0], torch.tensor([1.0, 1.0]))
    assert torch.isneginf(out[1]).all()
    # a single finite class: zero range as well
    out = d_scale(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.3, -INF]]))
    assert out[0, 0] == 1.0 and torch.isneginf(out[0, 1])


def _memory_3x2(**kw: object) -> ClassMemory:
    mem = ClassMemory(3, 2, momentum=0.9, **kw)  # type: ignore[arg-type]
    # class 0: two images summing to (2, 0); class 1: three summing to (0, 3); class 2: none
    mem.set_from_sums(torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.0, 0.0]]), torch.tensor([2, 3, 0]))
    return mem


def test_set_from_sums_by_hand():
    mem = ClassMemory(3, 2)
    assert not mem.is_initialized
    mem = _memory_3x2()
    assert mem.is_initialized
    torch.testing.assert_close(mem.means, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    assert mem.valid.tolist() == [True, True, False]
    z = mem.logits(torch.tensor([[1.0, 1.0]]))
    assert not torch.isnan(z).any()
    torch.testing.assert_close(z[0, :2], torch.tensor([1 / R2, 1 / R2]))
    assert torch.isneginf(z[0, 2])


def test_ema_update_by_hand():
    mem = _memory_3x2()
    # batch: class 0 sum (0, 2) over 2 images -> mean (0, 1); class 1 absent;
    # class 2 seen for the first time with mean (3, 0)
    mem.ema_update(
        torch.tensor([[0.0, 2.0], [0.0, 0.0], [3.0, 0.0]]), torch.tensor([2.0, 0.0, 1.0])
    )
    # α = 1 − 0.9 = 0.1: M_0 = 0.9·(1, 0) + 0.1·(0, 1) = (0.9, 0.1)
    expected = torch.tensor([[0.9, 0.1], [0.0, 1.0], [3.0, 0.0]])
    torch.testing.assert_close(mem.means, expected)
    assert mem.valid.tolist() == [True, True, True]


def test_ema_update_renormalize():
    mem = _memory_3x2(renormalize=True)
    mem.ema_update(
        torch.tensor([[0.0, 2.0], [0.0, 0.0], [3.0, 0.0]]), torch.tensor([2.0, 0.0, 1.0])
    )
    n = math.sqrt(0.9**2 + 0.1**2)
    expected = torch.tensor([[0.9 / n, 0.1 / n], [0.0, 1.0], [1.0, 0.0]])
    torch.testing.assert_close(mem.means, expected)


def test_step_normalises_and_detaches():
    mem = _memory_3x2()
    feat = torch.tensor([[3.0, 4.0], [0.0, 2.0]], requires_grad=True)
    mem.step(feat, torch.tensor([0, 0]))
    # ĥ = (0.6, 0.8), (0, 1) -> batch mean (0.3, 0.9); 0.9·(1, 0) + 0.1·(0.3, 0.9)
    torch.testing.assert_close(mem.means[0], torch.tensor([0.93, 0.09]))
    torch.testing.assert_close(mem.means[1:], torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    assert not mem.means.requires_grad


def test_step_is_noop_before_init():
    mem = ClassMemory(3, 2)
    mem.step(torch.ones(2, 2), torch.tensor([0, 1]))
    assert not mem.valid.any() and (mem.means == 0).all()
    with pytest.raises(RuntimeError, match="before the memory was initialised"):
        mem.logits(torch.ones(1, 2))


def test_momentum_zero_replaces_with_batch_mean():
    mem = ClassMemory(2, 2, momentum=0.0)
    mem.set_from_sums(torch.eye(2), torch.ones(2))
    mem.step(torch.tensor([[0.0, 5.0]]), torch.tensor([0]))
    torch.testing.assert_close(mem.means, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))


def test_bad_momentum():
    with pytest.raises(ValueError, match="momentum"):
        ClassMemory(2, 2, momentum=1.0)


# ----------------------------------------------------------------------------- distributed

C, D, B = 5, 8, 16


def _fixture() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Initial sums/counts (class 4 has no image) and a global batch (class 3 absent, class 4
    only in the second half, i.e. only on rank 1)."""
    g = torch.Generator().manual_seed(0)
    sums = torch.rand(C, D, generator=g)
    counts = torch.tensor([3.0, 2.0, 1.0, 4.0, 0.0])
    feat = torch.rand(B, D, generator=g) * 3
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 2, 4, 4, 0, 1, 2])
    return sums, counts, feat, labels, sums


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        sums, counts, feat, labels, _ = _fixture()
        mem = ClassMemory(C, D, momentum=0.9)
        mem.set_from_sums(sums, counts)
        half = slice(rank * B // 2, (rank + 1) * B // 2)
        mem.step(feat[half], labels[half])
        torch.save({"means": mem.means, "valid": mem.valid}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(60)
def test_distributed_step_matches_single_process(tmp_path: Path):
    # forkserver: children start clean like spawn (no inherited OpenMP/gloo threads) but fork
    # from one server that imported torch once, instead of two parallel torch imports.
    mp.get_context("forkserver").set_forkserver_preload(["torch", "ltray.models", "pytest"])
    mp.start_processes(
        _worker,
        args=(_free_port(), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="forkserver",
    )

    sums, counts, feat, labels, _ = _fixture()
    ref = ClassMemory(C, D, momentum=0.9)
    ref.set_from_sums(sums, counts)
    ref.step(feat, labels)  # the whole global batch in one process
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["means"], ref.means, atol=1e-6, rtol=0)
        assert got["valid"].tolist() == ref.valid.tolist() == [True] * 5
    # without the all-reduce a replica would only see its own half
    local = ClassMemory(C, D, momentum=0.9)
    local.set_from_sums(sums, counts)
    local.step(feat[: B // 2], labels[: B // 2])
    assert not torch.allclose(local.means, ref.means)
