"""The sections of ltray's configuration: one pydantic model per section, each forbidding
unknown keys, with its defaults and the rules of its values. Loading, overrides and error
messages are :mod:`ltray.config`'s, which re-exports these classes (import them from there).
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "ModelConfig",
    "MemoryConfig",
    "KTConfig",
    "MixupConfig",
    "LossConfig",
    "TrainConfig",
    "EvalConfig",
    "ScalingConfig",
    "TrackingConfig",
    "OLTRConfig",
    "LFMEConfig",
    "Config",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _absolute(path: str | None) -> str | None:
    """A relative path made absolute against the current directory when the config is loaded:
    Ray starts workers and trials in folders of their own. URIs and unexpanded ``${VAR}``
    values (resolved by their reader) are kept as they are."""
    if path is None or not path or "://" in path or "$" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


class AugmentConfig(_Section):
    """Train-time augmentation (docs/methods.md#augmentation). A key left unset takes the
    data family's default, which scales with the image size; the resolved choices are printed
    by `ltray data stats` and `ltray train` and saved in the run (``split.json``, the cache's
    input spec)."""

    pad: int | None = Field(
        None,
        ge=0,
        description="random shift: zero padding in pixels of the decoded image, then a random "
        "crop back to its size; 0 = off; default: round(image size / 8) for images kept in "
        "memory (8 px: 1, 28 px: 4, 32 px: 4), 0 for large images (their random crop shifts)",
    )
    flip: bool | None = Field(
        None,
        description="random horizontal flip; default: off for gray images (a flipped digit or "
        "letter is another class or none), on for colour images",
    )
    crop_scale: tuple[float, float] | None = Field(
        None,
        description="random resized crop: [min, max] fraction of the image area kept (aspect "
        "ratio 3/4..4/3), resized back; [1, 1] = off; default: [0.08, 1] for large images, off "
        "for images kept in memory",
    )
    color_jitter: float | None = Field(
        None,
        ge=0,
        le=1,
        description="brightness, contrast (and saturation for colour) factors drawn from "
        "[1 - j, 1 + j]; 0 = off; default: 0.4 for large images, 0 for images kept in memory",
    )

    @field_validator("crop_scale")
    @classmethod
    def _scale(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0.0 < v[0] <= v[1] <= 1.0:
            raise ValueError(
                "must be [min, max] with 0 < min <= max <= 1 (fractions of the image area)"
            )
        return v


class DataConfig(_Section):
    """Which images, how they are made long-tailed, and how they are loaded."""

    name: str = Field("digits-lt", description="dataset source; see `ltray data sources`")
    root: str | None = Field(None, description="dataset root (ImageFolder tree, torchvision copy)")
    imbalance_ratio: float = Field(10.0, description="rho = n_max / n_min of the train split")
    profile: Literal["exp", "step", "as_is"] | None = Field(
        None,
        description="exp | step: cut the train pool to that long-tailed profile; as_is: use the "
        "train split as it is (your own long-tailed ImageFolder); default: as_is for an "
        "ImageFolder whose train/ is already imbalanced (said in one line), exp otherwise",
    )
    seed: int = Field(0, description="seed of the per-class selection and the val carve-out")
    train_list: str | None = Field(None, description="list file `relative/path label` (train)")
    val_list: str | None = None
    test_list: str | None = None
    num_classes: int | None = Field(None, description="for list files; default: max label + 1")
    val_protocol: Literal["carve", "test"] = Field(
        "carve",
        description="carve: a seeded balanced val split is taken out of the test set; "
        "test: the papers' protocol, val = test (labelled in every report)",
    )
    val_per_class: int = Field(
        20, ge=1, description="images per class carved out for val (CIFAR-LT: 100)"
    )
    many_threshold: int = Field(100, description="many-shot: more than this many train images")
    few_threshold: int = Field(20, description="few-shot: fewer than this many train images")
    sampler: Literal["instance", "class_balanced", "sqrt"] = "instance"
    batch_size: int = Field(32, ge=1, description="per-worker batch (digits default; CIFAR: 128)")
    eval_batch_size: int = Field(
        256, ge=1, description="evaluation batch (256: fastest eval forward on CPU here)"
    )
    loader_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    image_size: int | None = Field(None, description="override the family's input size")
    normalize: Literal["auto", "dataset", "family"] = Field(
        "auto",
        description="per-channel mean/std of the inputs: dataset = computed on the train split "
        "(once, cached); family = published constants (MNIST's for gray, CIFAR's for small "
        "colour, ImageNet's for large images); auto = dataset for imagefolder and listfile, "
        "the source's published values for built-in datasets (digits, MNIST, CIFAR)",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    download: bool = Field(False, description="allow torchvision to download (needs internet)")

    @field_validator("root", "train_list", "val_list", "test_list")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        return _absolute(v)

    @field_validator("imbalance_ratio")
    @classmethod
    def _rho(cls, v: float) -> float:
        if v < 1:
            raise ValueError("must be >= 1 (rho = n_max / n_min; 1 = balanced)")
        return v

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.few_threshold > self.many_threshold:
            raise ValueError(
                "data.few_threshold must be <= data.many_threshold, got "
                f"({self.few_threshold}, {self.many_threshold})"
            )
        return self


class ModelConfig(_Section):
    backbone: str = Field("resnet32", description="registered backbone name")
    small_input: bool | None = Field(
        None, description="CIFAR-style stem; default: decided by the data family"
    )


class MemoryConfig(_Section):
    """Class-mean memory of normalised features (docs/methods.md#memory-module)."""

    enabled: bool = True
    init_epoch: int = Field(1, ge=0, description="k: full-pass init at the end of epoch k")
    momentum: float = Field(
        0.8, description="EMA momentum in [0, 1) (0.8: confirmed over seeds, docs/results.md)"
    )
    metric: Literal["cosine", "euclidean"] = "cosine"
    renormalize: bool = Field(False, description="renormalise M_c after each EMA update")

    @field_validator("momentum")
    @classmethod
    def _momentum(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError("must be in [0, 1) (EMA keeps momentum of the old mean)")
        return v


class KTConfig(_Section):
    """Knowledge transfer from the NCM teacher to a second head (docs/methods.md#kt)."""

    enabled: bool = True
    # Defaults: the settings a sweep found on CIFAR-10-LT and that held over seeds on digits-LT,
    # MNIST-LT and CIFAR-10-LT (docs/results.md, "Defaults that follow the evidence").
    phi: float = Field(0.57, description="weight of the distillation term, in [0, 1]")
    temperature: float = Field(0.52, gt=0)
    detach_feature: bool = Field(True, description="the KT head sees detached features")
    mask: Literal["correct", "all"] = Field(
        "correct",
        description="which samples are distilled: 'correct' = where the NCM teacher is right "
        "(the dynamic mask of docs/methods.md#kt), 'all' = every sample",
    )
    class_balance: bool | Literal["auto"] = Field(
        "auto",
        description="weight each sample's KT loss by N/(C*n_y): the KT branch then sees every "
        "class equally often in expectation, as under class-balanced sampling (the linear "
        "head and backbone keep instance sampling); auto: on under data.sampler=instance, off "
        "where the sampler already re-weights classes (class_balanced, sqrt)",
    )

    @field_validator("phi")
    @classmethod
    def _phi(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError("must be in [0, 1] (L = phi*L_KT + (1-phi)*L_CE)")
        return v


class MixupConfig(_Section):
    variant: Literal["none", "input", "manifold", "tail", "head"] = "none"
    alpha: float = Field(0.1, gt=0)


class LossConfig(_Section):
    name: Literal["ce", "balanced_softmax"] = "ce"


class TrainConfig(_Section):
    method: str = Field("kt", description="training method: kt | ce | oltr | lfme ...")
    epochs: int = Field(12, ge=1)
    lr: float = Field(0.025, gt=0, description="base lr (digits default; CIFAR bs 128: 0.1)")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    nesterov: bool = False
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    milestones: list[int] = Field(default_factory=list, description="step schedule epochs")
    gammas: list[float] = Field(
        default_factory=list, description="cumulative lr factor after each milestone"
    )
    scale_lr: bool = Field(False, description="lr *= global batch / base_batch_size")
    base_batch_size: int = Field(128, ge=1)
    amp: bool = Field(
        True, description="bf16 autocast where a GPU is used (fp16 + scaler on GPUs without bf16)"
    )
    channels_last: bool = Field(
        True, description="channels_last memory format for model and batches (CPU and GPU)"
    )
    compile: bool = Field(False, description="torch.compile the training forward/backward")
    compile_backend: str = Field(
        "inductor", description="torch.compile backend (inductor; aot_eager traces without codegen)"
    )
    seed: int = 0
    threads: int | None = Field(None, description="torch threads per worker (CPU)")
    max_failures: int = Field(1, ge=0, description="worker-group restarts from a checkpoint")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if len(self.milestones) != len(self.gammas):
            raise ValueError(
                "train.milestones and train.gammas must have the same length, got "
                f"({len(self.milestones)}, {len(self.gammas)})"
            )
        return self


class EvalConfig(_Section):
    ece_bins: int = Field(15, ge=1)
    every: int = Field(1, ge=1, description="evaluate on val every N epochs")
    select_head: str = Field("linear", description="head whose val accuracy picks the best epoch")
    select_group: Literal["overall", "top1", "top5", "many", "medium", "few"] = Field(
        "overall",
        description="which val accuracy of select_head picks the best epoch (a sweep on "
        "val_<head>_<group> sets both)",
    )
    ncm_full: Literal["final", "every"] = Field(
        "final",
        description="when the full-pass NCM head is scored on val: 'final' = at the memory's "
        "init epoch (its pass is done anyway) and in the final evaluation; 'every' = at every "
        "evaluated epoch (one more forward pass over the whole train split each time)",
    )

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if self.select_head == "ncm_full" and self.ncm_full != "every":
            raise ValueError(
                "eval.select_head=ncm_full needs a full-pass NCM score at every evaluated epoch; "
                "set eval.ncm_full=every"
            )
        return self


class ScalingConfig(_Section):
    num_workers: int = Field(1, ge=0, description="Ray Train workers; 0 = in-process")
    use_gpu: bool | Literal["auto"] = Field(
        "auto", description="train on GPUs; auto = when the machine (or Ray cluster) has one"
    )
    gpus_per_worker: float = Field(
        1.0,
        gt=0,
        le=1,
        description="GPU share of one worker (0.25: four single-worker trials on one GPU)",
    )
    cpus_per_worker: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> ScalingConfig:
        if self.gpus_per_worker < 1 and self.num_workers > 1:
            raise ValueError(
                f"scaling.gpus_per_worker={self.gpus_per_worker:g} shares a GPU between processes; "
                f"DDP needs one GPU per worker (NCCL), so use it with scaling.num_workers=1 "
                f"(several single-worker trials per GPU), or set scaling.gpus_per_worker=1"
            )
        return self

    def gpu(self) -> bool:
        """Whether workers take GPUs; ``use_gpu=auto`` must have been resolved first
        (:func:`ltray.resources.resolve_scaling`)."""
        if self.use_gpu == "auto":
            raise ValueError("scaling.use_gpu=auto is not resolved yet (resolve_scaling)")
        return bool(self.use_gpu)

    def worker_resources(self) -> dict[str, float]:
        """Ray resources of one worker: {"CPU": c} plus {"GPU": g} when it uses a GPU."""
        return {
            "CPU": self.cpus_per_worker,
            **({"GPU": self.gpus_per_worker} if self.gpu() else {}),
        }


class TrackingConfig(_Section):
    mlflow: bool = Field(False, description="log the run to MLflow")
    mlflow_uri: str | None = Field(None, description="default: sqlite under the ltray home")
    experiment: str = "ltray"


class OLTRConfig(_Section):
    """OLTR stage 2 (Liu et al. 2019; docs/methods.md#oltr) on top of a stage-1 ltray run."""

    stage1: str | None = Field(
        None, description="run dir of the stage-1 run (train.method=ce or kt); required"
    )
    centroid_weight: float = Field(0.01, ge=0, description="weight of the centroid loss")
    centroid_margin: float = Field(
        10.0, ge=0, description="repel margin on the mean squared distance to other centroids"
    )
    repel_weight: float = Field(0.01, ge=0, description="weight of the repel term")
    cosine_scale: float = Field(16.0, gt=0, description="s of the cosine classifier")
    reachability_scale: float = Field(10.0, gt=0, description="gamma = scale / min distance")
    attention: bool = Field(True, description="modulated attention on the last feature map")
    selector: Literal["tanh", "sigmoid"] = Field(
        "tanh", description="concept selector gate (paper and reference code: tanh)"
    )
    backbone_lr_scale: float = Field(
        0.1, gt=0, description="lr factor of the stage-1 backbone (needs the param_groups hook)"
    )
    centroid_lr_scale: float = Field(0.1, gt=0, description="lr factor of the centroids")

    @field_validator("stage1")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        return _absolute(v)


class LFMEConfig(_Section):
    """LFME (Xiang et al. 2020; docs/methods.md#lfme): experts per shot group, then one student."""

    subset: Literal["many", "medium", "few"] | None = Field(
        None, description="the shot group an expert trains on (train.method=lfme_expert)"
    )
    experts: list[str] = Field(
        default_factory=list, description="expert run dirs (train.method=lfme)"
    )
    temperature: float = Field(2.0, gt=0, description="distillation temperature T")
    kd_weight: float = Field(1.0, ge=0, description="weight of the summed expert KD terms")
    selection_alpha: float = Field(
        0.6,
        description="self-paced expert selection: full KD weight until the student's val "
        "accuracy on the subset reaches alpha * the expert's, then linear decay to 0",
    )
    curriculum_start: float = Field(
        0.5, description="fraction of each expert's easiest instances distilled at epoch 0"
    )
    curriculum_epochs: int | None = Field(
        None, ge=1, description="epochs until every instance is distilled; default train.epochs"
    )
    expert_epochs: int | None = Field(
        None, ge=1, description="train_lfme: expert epochs; default train.epochs"
    )

    @field_validator("experts")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        return [_absolute(p) or p for p in v]

    @field_validator("selection_alpha", "curriculum_start")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError("must be in [0, 1] (a fraction)")
        return v


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    kt: KTConfig = Field(default_factory=KTConfig)
    mixup: MixupConfig = Field(default_factory=MixupConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    oltr: OLTRConfig = Field(default_factory=OLTRConfig)
    lfme: LFMEConfig = Field(default_factory=LFMEConfig)

    @property
    def kt_class_balance(self) -> bool:
        """``kt.class_balance`` resolved: ``auto`` weights the KT loss per class only under
        instance sampling (a class-balanced or sqrt sampler already re-weights the classes)."""
        if self.kt.class_balance == "auto":
            return self.data.sampler == "instance"
        return bool(self.kt.class_balance)
