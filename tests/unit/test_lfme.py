"""LFME: self-paced weights, curriculum selection and KD pinned by hand; the subset head; the
experts + student pipeline end to end on digits-LT, as `ltray reproduce --methods lfme` plans it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ltray.config import Config, load_config
from ltray.data import prepare_data
from ltray.errors import ConfigError
from ltray.fusion.cache import read_cache
from ltray.models import NetOutput
from ltray.previous.lfme import (
    ABSENT_LOGIT,
    Expert,
    Student,
    SubsetLinear,
    confidence_threshold,
    curriculum_fraction,
    kd_per_sample,
    self_paced_weight,
)
from ltray.previous.methods import ExpertMethod, StudentMethod
from ltray.train.loop import load_state
from ltray.train.methods import StepContext
from ltray.train.rundir import RunDir
from tests.lfme_runs import train_lfme

TINY = [
    "train.epochs=2",
    "data.batch_size=64",
    "train.threads=1",
    "scaling.num_workers=0",
]


# --------------------------------------------------------------------------- pure math


def test_self_paced_weight_by_hand() -> None:
    student = torch.tensor([0.40, 0.48, 0.64, 0.80, 0.90, 0.30])
    expert = torch.tensor([0.80, 0.80, 0.80, 0.80, 0.80, 0.00])
    w = self_paced_weight(student, expert, alpha=0.6)
    # α·A_E = 0.48: full weight up to it; then 1 − (A_S − 0.48)/(0.4·0.8); a useless expert: 0
    torch.testing.assert_close(w, torch.tensor([1.0, 1.0, 0.5, 0.0, 0.0, 0.0]))
    step = self_paced_weight(torch.tensor([0.79, 0.81]), torch.tensor([0.8, 0.8]), alpha=1.0)
    torch.testing.assert_close(step, torch.tensor([1.0, 0.0]))


def test_curriculum_fraction_grows_linearly_to_one() -> None:
    qs = [curriculum_fraction(e, start=0.5, epochs=4) for e in (0, 1, 2, 4, 10)]
    assert qs == [0.5, 0.625, 0.75, 1.0, 1.0]
    assert curriculum_fraction(0, start=0.0, epochs=0) == 1.0


def test_confidence_threshold_selects_the_easiest_fraction() -> None:
    conf = torch.tensor([0.9, 0.1, 0.5, 0.7])
    assert confidence_threshold(conf, 0.5) == pytest.approx(0.7)  # top 2: 0.9, 0.7
    assert confidence_threshold(conf, 0.3) == pytest.approx(0.7)  # ceil(1.2) = 2
    assert confidence_threshold(conf, 0.25) == pytest.approx(0.9)
    assert confidence_threshold(conf, 1.0) == pytest.approx(0.1)  # everything
    assert confidence_threshold(conf, 0.0) == math.inf  # nothing
    assert int((conf >= confidence_threshold(conf, 0.75)).sum()) == 3


def test_kd_per_sample_by_hand() -> None:
    teacher = torch.tensor([[0.0, math.log(3.0)], [1.0, 2.0]])
    student = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    kd = kd_per_sample(student, teacher, temperature=1.0)
    # p_T = (1/4, 3/4), p_S = (1/2, 1/2): KL = ¼·ln(½) + ¾·ln(3/2); identical rows: 0
    expect = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    torch.testing.assert_close(kd, torch.tensor([expect, 0.0]))
    # T² scaling: at T = 2 the logits are halved, then the KL is multiplied by 4.
    kd2 = kd_per_sample(student * 2, teacher * 2, temperature=2.0)
    torch.testing.assert_close(kd2, 4 * kd)


def test_subset_linear_is_a_c_class_dot_product_head() -> None:
    head = SubsetLinear(3, 5, torch.tensor([1, 3]))
    h = torch.randn(4, 3)
    z = head(h)
    torch.testing.assert_close(z, h @ head.weight.t() + head.bias)
    assert bool((z[:, [0, 2, 4]] == ABSENT_LOGIT).all())
    torch.testing.assert_close(z[:, [1, 3]], head.inner(h))


class _Stub(torch.nn.Module):
    """A "network" whose logits are its input [B, C] (or zeros that require grad)."""

    def __init__(self, *, zeros: bool = False) -> None:
        super().__init__()
        self.zeros = zeros

    def forward(self, x: torch.Tensor) -> NetOutput:
        z = torch.zeros_like(x, requires_grad=True) if self.zeros else x
        return NetOutput(features=x, logits=z)


def _ctx(cfg: Config, epoch: int) -> StepContext:
    return StepContext(cfg, torch.ones(3), torch.zeros(3), epoch, torch.Generator())


def test_epoch_start_sets_the_self_paced_weight_from_val_accuracy() -> None:
    cfg = load_config(None, ["lfme.selection_alpha=0.5"])
    method = Student()
    method.experts = [Expert(0, torch.tensor([0, 1]), _Stub(), 1.0, torch.ones(1))]
    x = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0], [0, 0, 5.0]])
    # Among classes {0, 1}: predictions 0, 1, 0, 0 for labels 0, 1, 1, 0 → accuracy 3/4
    method._val_loader = [(x, torch.tensor([0, 1, 1, 0]))]
    method._epoch_start(_Stub(), _ctx(cfg, 0), torch.device("cpu"))  # type: ignore[arg-type]
    assert method._weights == [pytest.approx(0.5)]  # 1 − (0.75 − 0.5)/(0.5·1.0)


def test_logged_expert_weights_follow_each_subsets_val_accuracy() -> None:
    """The w_k a step logs (``train_w_many`` ...) come from the student's val accuracy on expert
    k's subset, classifying among that subset's classes only, against the expert's own:
    many (classes 0, 1): A_S = 2/4, A_E = 0.8 → 1 − (0.5 − 0.48)/(0.4·0.8) = 0.9375;
    few (classes 2, 3): A_S = 3/4, A_E = 0.9 → 1 − (0.75 − 0.54)/(0.4·0.9) = 0.41667."""
    cfg = load_config(None, ["lfme.selection_alpha=0.6", "train.epochs=4"])
    method = Student()
    method.experts = [
        Expert(0, torch.tensor([0, 1]), _Stub(), 0.8, torch.ones(1)),
        Expert(2, torch.tensor([2, 3]), _Stub(), 0.9, torch.ones(1)),
    ]
    val = torch.tensor(
        [
            [2.0, 1.0, 0.0, 0.0],  # label 0: right
            [1.0, 2.0, 0.0, 0.0],  # label 0: wrong
            [0.0, 1.0, 5.0, 0.0],  # label 1: right among {0, 1} (class 2 is not a candidate)
            [3.0, 1.0, 0.0, 0.0],  # label 1: wrong
            [0.0, 0.0, 3.0, 1.0],  # label 2: right
            [0.0, 0.0, 1.0, 3.0],  # label 3: right
            [9.0, 0.0, 1.0, 2.0],  # label 3: right among {2, 3}
            [0.0, 0.0, 1.0, 2.0],  # label 2: wrong
        ]
    )
    method._val_loader = [(val, torch.tensor([0, 0, 1, 1, 2, 3, 3, 2]))]
    ctx = StepContext(cfg, torch.ones(4), torch.tensor([0, 0, 2, 2]), 0, torch.Generator())
    x, y = torch.zeros(2, 4), torch.tensor([0, 2])
    res = method.loss(_Stub(), _Stub(zeros=True), x, y, ctx)  # type: ignore[arg-type]
    assert res.parts["w_many"] == pytest.approx(0.9375)
    assert res.parts["w_few"] == pytest.approx(1 - 0.21 / 0.36)


def test_curriculum_selects_the_instances_the_expert_finds_easy() -> None:
    cfg = load_config(None, ["lfme.curriculum_start=0.5", "lfme.temperature=1", "train.epochs=4"])
    method = Student()
    train_conf = torch.tensor([0.9, 0.5, 0.2, 0.1])  # q = 0.5 at epoch 0 → τ = 0.5
    method.experts = [Expert(0, torch.tensor([0, 1]), _Stub(), 1.0, train_conf)]
    method._weights, method._epoch = [1.0], 0
    ln3 = math.log(3.0)
    # Expert confidence of the true class: 0.75 (selected), 0.25 (not); sample 3 is class 2.
    x = torch.tensor([[ln3, 0.0, 0.0], [ln3, 0.0, 0.0], [0.0, 0.0, 1.0]])
    y = torch.tensor([0, 1, 2])
    res = method.loss(None, _Stub(zeros=True), x, y, _ctx(cfg, 0))  # type: ignore[arg-type]
    kd_a = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL((¾, ¼) ‖ (½, ½))
    assert res.parts["loss_kd_many"] == pytest.approx(kd_a / 3)
    assert res.parts["loss_cls"] == pytest.approx(math.log(3.0))
    assert float(res.loss.detach()) == pytest.approx(math.log(3.0) + kd_a / 3, rel=1e-5)
    # At q = 1 (epoch 4) both subset samples are distilled (same teacher distribution).
    method._epoch = 4
    res = method.loss(None, _Stub(zeros=True), x, y, _ctx(cfg, 4))  # type: ignore[arg-type]
    assert res.parts["curriculum_q"] == 1.0
    assert res.parts["loss_kd_many"] == pytest.approx(2 * kd_a / 3)


# ------------------------------------------------------------------------ build checks


def _digits(cfg: Config):  # noqa: ANN202 - LTData
    return prepare_data(cfg.data)


def test_expert_trains_on_its_subset_only() -> None:
    cfg = load_config(None, TINY + ["train.method=lfme_expert", "lfme.subset=medium"])
    data = _digits(cfg)
    medium = np.flatnonzero(data.groups == 1)
    counts = data.class_counts.copy()
    method = ExpertMethod()
    data = method.prepare_data(data, cfg)  # the loop calls this hook before build
    net = method.build(cfg, num_classes=10, in_channels=1, small_input=True, data=data)
    assert set(np.unique(data.labels("train"))) == set(medium)
    assert len(data.labels("train")) == counts[medium].sum()
    assert isinstance(net.linear, SubsetLinear) and net.linear.classes.tolist() == medium.tolist()
    assert len(data.labels("val")) == 200  # evaluation keeps every class


def test_build_errors() -> None:
    cfg = load_config(None, ["train.method=lfme_expert"])
    with pytest.raises(ConfigError, match="lfme.subset"):
        ExpertMethod().build(cfg, num_classes=10, in_channels=1, small_input=True, data=None)
    cfg = load_config(None, ["train.method=lfme"])
    with pytest.raises(ConfigError, match="lfme.experts"):
        StudentMethod().build(cfg, num_classes=10, in_channels=1, small_input=True, data=None)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def lfme_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_lfme(TINY + ["memory.init_epoch=1"], tmp_path_factory.mktemp("lfme"))


@pytest.mark.slow
def test_reproduce_trains_the_experts_then_the_student(lfme_run: Path) -> None:
    root = lfme_run.parent
    assert lfme_run == root / "student"
    for name in ("many", "medium", "few"):
        expert = root / f"expert-{name}"
        assert (expert / "results.json").is_file()
        # An expert's linear head scores only its subset: elsewhere the accuracy is 0.
        cache = read_cache(expert)
        assert cache.train.features.shape[0] < 544  # trained on its subset's images only
    metrics = _read_metrics(lfme_run)
    assert {"train_w_many", "train_w_medium", "train_w_few", "train_curriculum_q"} <= set(
        metrics[-1]
    )
    assert metrics[0]["train_curriculum_q"] == 0.5 and metrics[1]["train_curriculum_q"] == 0.75
    # The experts are not part of the student's weights.
    state = load_state(lfme_run / "checkpoints" / "best.pt")["model"]
    assert not any("expert" in k for k in state) and "linear.weight" in state
    cache = read_cache(lfme_run)
    assert cache.val.logits.shape[1] == 10


@pytest.mark.slow
def test_student_build_freezes_the_experts(lfme_run: Path) -> None:
    root = lfme_run.parent
    experts = [str(root / f"expert-{n}") for n in ("many", "medium", "few")]
    cfg = load_config(None, TINY + ["train.method=lfme", f"lfme.experts=[{','.join(experts)}]"])
    method = StudentMethod()
    net = method.build(cfg, num_classes=10, in_channels=1, small_input=True, data=_digits(cfg))
    assert net.kt_head is None
    assert [e.group for e in method.experts] == [0, 1, 2]
    for e, name in zip(method.experts, ("many", "medium", "few"), strict=True):
        assert not e.net.training
        assert not any(p.requires_grad for p in e.net.parameters())
        # A_E = the expert's val accuracy on its subset, as its own run cached it (val logits
        # of its best checkpoint, read back from disk), classifying among the subset's classes.
        val = read_cache(root / f"expert-{name}").val
        cls = e.classes.numpy()
        mine = np.isin(val.labels, cls)
        pred = cls[val.logits[mine][:, cls].argmax(1)]
        assert e.val_acc == pytest.approx(float((pred == val.labels[mine]).mean()))
        assert bool((e.confidences[:-1] >= e.confidences[1:]).all())  # sorted, easiest first
    dup = load_config(
        None, TINY + ["train.method=lfme", f"lfme.experts=[{experts[0]},{experts[0]}]"]
    )
    with pytest.raises(ConfigError, match="one expert per shot group"):
        StudentMethod().build(
            dup, num_classes=10, in_channels=1, small_input=True, data=_digits(dup)
        )
    other = load_config(
        None, TINY + ["train.method=lfme", "data.imbalance_ratio=5", f"lfme.experts=[{experts[0]}]"]
    )
    with pytest.raises(ConfigError, match="another split"):
        StudentMethod().build(
            other, num_classes=10, in_channels=1, small_input=True, data=_digits(other)
        )


def _read_metrics(run_dir) -> list[dict]:
    return RunDir(run_dir).read_metrics()
