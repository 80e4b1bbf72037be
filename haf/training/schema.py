"""The run configuration's schema: seven frozen sections, two scalars, and the checks a type cannot express.

Every key, its type, default and meaning is here; ``configs/README.md`` lists them with the per-dataset recipe,
and :mod:`haf.training.run_config` loads and validates YAML into these classes.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import yaml

from haf.hierarchy.distance_conventions import Convention
from haf.pipelines.loaders.backends import DATA_BACKENDS, DEFAULT_DATA_BACKEND
from haf.models.heads import available_heads
from haf.pipelines.readers.registry import DATASET_KINDS

HEAD_NAMES = tuple(available_heads())  # every head registered in haf.models.heads


# --------------------------------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class DatasetConfig:
    """Which dataset reader to use and where its files are (``haf.pipelines.load_dataset(kind, root, **options)``)."""

    kind: Literal[DATASET_KINDS] = "demo"  # the dataset registry's kinds
    root: str = ".cache/demo-data"
    # Reader-specific keyword arguments: checked on load against the reader's signature (names and types).
    options: dict = field(default_factory=dict)
    # How the reader's hierarchy becomes a distance matrix (haf.hierarchy.distance_conventions, docs/METHOD.md):
    # "lca-height" (siblings at 1) or "fixed-depth" (tieredImageNet-H's H − depth(LCA)); null keeps the
    # reader's/file's own convention.
    distance_convention: Union[Convention, None] = None
    val_split: str = "val"
    test_split: str = "test"


@dataclass(frozen=True)
class ModelConfig:
    """Backbone + head; the method on top is the ``method`` section."""

    # A registered name (haf.models.backbones), or "timm:<model>" with the optional timm package; checked on load.
    backbone: str = "resnet50"
    # The module that registers a backbone of your own (@haf.models.backbone_registry.register_backbone): a dotted
    # module name, or a .py file (relative to the config file's folder when it is there); imported before lookup.
    backbone_module: Union[str, None] = None
    # The head registry's names (docs/METHOD.md "Heads"): type-I baseline, type-II HAFrame head, fixed-width mlp.
    head: Literal[HEAD_NAMES] = "type2"
    # Backbone initialisation: null (from scratch), a torchvision weights name ("IMAGENET1K_V1", "DEFAULT"; for a
    # timm: backbone "timm"), or a path to a (self-supervised) checkpoint file. Passed as the backbone's ``weights``.
    pretrained: Union[str, None] = None
    backbone_options: dict = field(default_factory=dict)  # keyword options of the backbone factory
    head_options: dict = field(default_factory=dict)  # keyword options of the head factory
    # Keep every BatchNorm in eval mode while training (running statistics, affine weights still trained), as
    # detection/fine-tuning recipes do for small per-GPU batches. It also makes a sample's gradient independent of
    # the rest of its batch, so N ranks reproduce one process exactly. false: the reference (batch statistics).
    freeze_batchnorm: bool = False


@dataclass(frozen=True)
class OptimConfig:
    """SGD (or Adam: ``name``) with a per-epoch schedule: lr_t = lr · ½(1 + cos(π t / T)) for epoch t of T.

    The reference recipe is lr = 0.1 (so lr_t = 0.05·(cos(πt/T) + 1)), momentum 0.9, weight decay 5e-4 on every
    trained parameter (the frame is a buffer, so it is never decayed), backbone at lr/10.
    """

    # haf.training.optimization.OPTIMIZERS; adam: torch Adam (momentum/nesterov unused; betas 0.9, 0.999)
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    amsgrad: bool = False  # Adam's AMSGrad variant (Making Better Mistakes' optimiser: adam + amsgrad)
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: Literal["cosine", "constant", "step"] = "cosine"  # haf.training.optimization.SCHEDULES
    warmup_epochs: int = 0  # linear warm-up to the schedule's value over the first epochs (0: the paper's recipe)
    lr_milestones: list[int] = field(default_factory=list)  # "step": 0-based epochs where the lr is multiplied
    lr_gamma: float = 0.1  # "step": the factor applied at each milestone
    backbone_lr_scale: float = 0.1  # backbone incl. the type-II head's 1×1 conv
    transformation_lr_scale: float = 1.0  # transformation layers; the type-II configs set 0.1 (reference groups)
    # No weight decay on BatchNorm/PReLU parameters and biases? The reference decays everything trained: False.
    no_decay_norm_and_bias: bool = False


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch_size: int = 64  # global: split evenly over ranks (and gradient-accumulation steps)
    eval_batch_size: int = 256  # global
    # Stop (as if killed) after this many epochs; the run resumes with --resume. A test hook and a way to split
    # a long run into jobs. null: run all epochs.
    stop_after_epoch: Union[int, None] = None
    # Cap on steps per epoch (smoke tests, benchmarks); null: the whole split.
    max_steps_per_epoch: Union[int, None] = None
    max_eval_steps: Union[int, None] = None
    grad_clip_norm: Union[float, None] = None  # DeepSpeed's gradient_clipping; null: off (the reference)
    validate_every: int = 1  # epochs between validations (the last epoch is always validated)
    # "best": the best validation top-1 (the paper); "last"; "val-loss-fit": the epoch where a degree-4 polynomial
    # fitted to the validation loss is lowest (Making Better Mistakes; haf.training.model_selection).
    test_checkpoint: Literal["best", "last", "val-loss-fit"] = "best"
    # "val-loss-fit": fit over the validated epochs in [first, last] (1-based, inclusive); null: all of them.
    loss_fit_window: Union[list[int], None] = None
    # Mixup (Zhang et al., ICLR 2018) for every method: λ ~ Beta(α, α), x ← λx + (1−λ)x[perm], loss λL(y) +
    # (1−λ)L(y[perm]) on one forward pass (haf.training.mixup). 0: off.
    mixup_alpha: float = 0.0
    # Drop the partial last training batch (true) or train on it too (false: the CIFAR-LT code's loader).
    drop_last: bool = True
    # Validate on the val split without its last partial batch of train.batch_size images (the reference's
    # validation loader: drop_last at the training batch size), so the checkpoint is picked on that set; the test
    # always evaluates every image. The paper configs set it; false: every val image.
    val_drop_last: bool = False
    device: Literal["auto", "cuda", "cpu"] = "auto"  # auto: this rank's GPU when there is one
    # A step budget instead: epochs = max(1, round(steps / optimizer steps per epoch)), resolved when the
    # dataset is read (Making Better Mistakes trains 200,000 steps). null: train.epochs as given.
    steps: Union[int, None] = None
    # A non-finite training loss: "stop" the run (one line naming epoch, step and loss; the last checkpoint is
    # kept), or "skip" that batch's update (one host sync per step; needs gradient_accumulation_steps 1).
    nonfinite_loss: Literal["stop", "skip"] = "stop"


@dataclass(frozen=True)
class DataConfig:
    # "auto": DALI when the run's device is a CUDA GPU and nvidia.dali imports, else the PyTorch DataLoader
    # (resolved by resolve_data_backend, the one place that decides).
    backend: Literal[DATA_BACKENDS] = DEFAULT_DATA_BACKEND
    image_size: int = 224
    workers: int = 4  # per rank
    # Random training augmentation. true: the built-in crop/flip (data.transforms.train). false: the training split
    # gets the deterministic evaluation transform (still shuffled) — for debugging, and for comparing runs sample
    # for sample across world sizes. A list of torchvision.transforms.v2 transforms, e.g.
    # [{RandomResizedCrop: {size: 32, scale: [0.5, 1.0]}}, {RandomHorizontalFlip: {}}]: those instead of the
    # built-in one, then normalisation (torch backend; haf.pipelines.loaders.augment_list).
    augment: Union[bool, list] = True
    # Channels-last activations ("auto": on GPU only, where cuDNN's NHWC convolutions are faster).
    channels_last: Literal["auto", "on", "off"] = "auto"
    # The named transforms of the train and eval splits (haf.pipelines.loaders.transforms.TRANSFORMS) and the per-channel
    # normalisation; null: resolved from the dataset at load time (haf.training.run_config.resolve_data_defaults),
    # so the resolved config always states them.
    transforms: "TransformsConfig" = field(default_factory=lambda: TransformsConfig())
    normalize: "NormalizeConfig" = field(default_factory=lambda: NormalizeConfig())


# Names of haf.pipelines.loaders.transforms' TRAIN_TRANSFORMS / EVAL_TRANSFORMS (a test keeps the two lists equal; this
# module stays importable without torch).
TrainTransform = Literal["random-resized-crop", "pad-crop", "reflect-pad-crop", "squash-pad-crop"]
EvalTransform = Literal["resize-center-crop", "squash"]


@dataclass(frozen=True)
class TransformsConfig:
    train: Union[TrainTransform, None] = None
    eval: Union[EvalTransform, None] = None


@dataclass(frozen=True)
class NormalizeConfig:
    mean: Union[list[float], None] = None  # R, G, B of x / 255
    std: Union[list[float], None] = None


@dataclass(frozen=True)
class DeepSpeedConfig:
    # true: the DeepSpeed engine; false: the plain-PyTorch engine (DistributedDataParallel across ranks); auto:
    # DeepSpeed for several ranks, the deepspeed launcher, ZeRO >= 1 or bf16/fp16 weights, else the plain engine
    # (haf.training.engine.resolve_engine; the run's config.yaml states the choice).
    enabled: Union[bool, Literal["auto"]] = "auto"
    zero_stage: Literal[0, 1, 2] = 0
    # "bf16-autocast": fp32 weights, torch.autocast(bfloat16) around forward + loss (timm's "amp");
    # "bf16" / "fp16": DeepSpeed's low-precision weights with fp32 master copies (fp16 with dynamic loss scaling).
    precision: Literal["fp32", "bf16-autocast", "bf16", "fp16"] = "fp32"
    # TF32 tensor-core matmuls/convolutions for fp32 work on Ampere+ GPUs (torch.backends.*.allow_tf32).
    tf32: bool = True
    gradient_accumulation_steps: int = 1
    # Raw DeepSpeed config keys merged last (e.g. {"communication_data_type": "bf16"}); the keys we set from the
    # other fields may not be overridden here, so the config file has one place for each setting.
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LoggingConfig:
    tensorboard: bool = True
    jsonl: bool = True
    progress: bool = True  # rank 0: a bar on a terminal, plain lines otherwise (haf.log_setup.progress_bar)
    log_every: int = 20  # steps between JSONL/TensorBoard training records


@dataclass(frozen=True)
class MethodConfig:
    name: str = "haframe"  # checked against the method registry
    options: dict = field(default_factory=dict)  # checked against the method's Options dataclass


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    output_dir: Union[str, None] = None
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # The file it came from (informational: recorded in metrics.json); not a YAML key.
    source: Union[str, None] = field(default=None, metadata={"internal": True})

    def to_dict(self) -> dict:
        """Plain dict of YAML-able values (no ``source``): what checkpoints and config.yaml store."""
        data = dataclasses.asdict(self)
        data.pop("source", None)
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


def check_semantics(config: RunConfig) -> None:
    """Value checks that a type cannot express (ranges, cross-field rules); each names its key."""
    where = config.source or "<config>"

    def fail(key: str, message: str) -> None:
        raise ValueError(f"{where}: key '{key}': {message}")

    if not 0 <= config.seed < 2**32:  # numpy's legacy seeding (and every loader's) takes 32 bits
        fail("seed", f"must be in 0 .. 2**32 - 1, got {config.seed}")
    o, t, d, ds, lg = config.optim, config.train, config.data, config.deepspeed, config.logging
    for key, value in (("optim.lr", o.lr), ("optim.weight_decay", o.weight_decay),
                       ("optim.backbone_lr_scale", o.backbone_lr_scale),
                       ("optim.transformation_lr_scale", o.transformation_lr_scale)):
        if not math.isfinite(value) or value < 0:
            fail(key, f"must be a finite number >= 0, got {value}")
    if not 0.0 <= o.momentum < 1.0:
        fail("optim.momentum", f"must be in [0, 1), got {o.momentum}")
    if o.amsgrad and o.name != "adam":
        fail("optim.amsgrad", f"AMSGrad is an Adam variant; optim.name is {o.name!r}")
    if o.nesterov and o.momentum == 0:
        fail("optim.nesterov", "Nesterov momentum needs optim.momentum > 0")
    if any(m < 0 for m in o.lr_milestones) or list(o.lr_milestones) != sorted(o.lr_milestones):
        fail("optim.lr_milestones", f"must be ascending epochs >= 0, got {o.lr_milestones}")
    if not (math.isfinite(o.lr_gamma) and o.lr_gamma > 0):
        fail("optim.lr_gamma", f"must be a finite number > 0, got {o.lr_gamma}")
    if not (math.isfinite(t.mixup_alpha) and t.mixup_alpha >= 0):
        fail("train.mixup_alpha", f"must be a finite number >= 0 (0: no mixup), got {t.mixup_alpha}")
    if o.warmup_epochs < 0 or o.warmup_epochs >= max(t.epochs, 1):
        fail("optim.warmup_epochs", f"must be in [0, train.epochs={t.epochs}), got {o.warmup_epochs}")
    for key, value in (("train.epochs", t.epochs), ("train.batch_size", t.batch_size),
                       ("train.eval_batch_size", t.eval_batch_size), ("train.validate_every", t.validate_every),
                       ("data.image_size", d.image_size), ("logging.log_every", lg.log_every),
                       ("deepspeed.gradient_accumulation_steps", ds.gradient_accumulation_steps)):
        if value < 1:
            fail(key, f"must be >= 1, got {value}")
    for key, value in (("train.stop_after_epoch", t.stop_after_epoch),
                       ("train.max_steps_per_epoch", t.max_steps_per_epoch),
                       ("train.max_eval_steps", t.max_eval_steps)):
        if value is not None and value < 1:
            fail(key, f"must be >= 1 or null, got {value}")
    if t.grad_clip_norm is not None and not (math.isfinite(t.grad_clip_norm) and t.grad_clip_norm > 0):
        fail("train.grad_clip_norm", f"must be > 0 or null, got {t.grad_clip_norm}")
    if d.workers < 0:
        fail("data.workers", f"must be >= 0, got {d.workers}")
    if t.batch_size % ds.gradient_accumulation_steps:
        fail("train.batch_size", f"{t.batch_size} is not divisible by deepspeed.gradient_accumulation_steps="
                                 f"{ds.gradient_accumulation_steps}")
    if ds.zero_stage > 0 and ds.enabled is False:
        fail("deepspeed.zero_stage", "ZeRO needs deepspeed.enabled: true")
    reserved = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "zero_optimization", "bf16", "fp16", "gradient_clipping", "optimizer", "scheduler", "torch_autocast",
                "data_types"}
    clash = sorted(reserved & set(ds.extra))
    if clash:
        fail("deepspeed.extra", f"{', '.join(clash)} come from other config keys (train.batch_size, "
                                "deepspeed.zero_stage/precision/gradient_accumulation_steps, train.grad_clip_norm, "
                                "optim.*); set them there")
    if not config.method.name:
        fail("method.name", "must name a method")
    window = t.loss_fit_window
    if window is not None and (len(window) != 2 or not 1 <= window[0] <= window[1]):
        fail("train.loss_fit_window", f"must be [first, last] epochs with 1 <= first <= last, or null; got {window}")
    if t.test_checkpoint == "val-loss-fit" and not lg.jsonl:
        fail("train.test_checkpoint", "val-loss-fit reads the validation losses from metrics.jsonl: needs "
                                      "logging.jsonl: true")
    if t.steps is not None and t.steps < 1:
        fail("train.steps", f"must be >= 1 or null, got {t.steps}")
    if config.dataset.test_split == config.dataset.val_split:
        fail("dataset.test_split", f"{config.dataset.test_split!r} is also dataset.val_split: the split that picks "
                                   "the checkpoint cannot be the one that reports it")
    for key, values in (("data.normalize.mean", d.normalize.mean), ("data.normalize.std", d.normalize.std)):
        if values is not None and (len(values) != 3 or not all(math.isfinite(v) for v in values)):
            fail(key, f"expected three finite numbers (R, G, B), got {values}")
    if d.normalize.std is not None and min(d.normalize.std) <= 0:
        fail("data.normalize.std", f"every standard deviation must be > 0, got {d.normalize.std}")
