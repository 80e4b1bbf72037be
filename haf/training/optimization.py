"""The optimisation recipe: parameter groups → SGD, the per-epoch learning-rate schedule, the DeepSpeed config.

Reference recipe (docs/METHOD.md): SGD, momentum 0.9, weight decay 5e-4 on every *trained* parameter (the frame is a
buffer, so it is neither trained nor decayed), learning rate per epoch t of T

    lr_t = lr · ½ · (1 + cos(π t / T)),    lr = 0.1  ⇒  lr_t = 0.05 · (cos(π t / T) + 1),

(other schedules: :data:`SCHEDULES`, e.g. ``step`` for the CIFAR-LT recipe) with the backbone (including the
type-II head's 1×1 conv) at lr/10 and, for iNat2019 / tieredImageNet-H, the
transformation layers at lr/10 too. Each parameter group carries its ``lr_scale``; the schedule sets
``group["lr"] = lr_t · group["lr_scale"]`` at every epoch start, so the scales survive any optimizer wrapper.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from haf.training.assemble import world_batch_split
from haf.training.schema import OptimConfig, RunConfig

def _cosine(epoch: int, epochs: int, milestones: Sequence[int], gamma: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def _constant(epoch: int, epochs: int, milestones: Sequence[int], gamma: float) -> float:
    return 1.0


def _step(epoch: int, epochs: int, milestones: Sequence[int], gamma: float) -> float:
    # gamma^(number of milestones already reached): the lr drops at the start of each milestone epoch (0-based).
    return gamma ** sum(1 for m in milestones if epoch >= m)


#: name -> factor(epoch, epochs, milestones, gamma) of the peak lr, before warm-up.
SCHEDULES: dict[str, Callable[[int, int, Sequence[int], float], float]] = {
    "cosine": _cosine,
    "constant": _constant,
    "step": _step,
}


def schedule_factor(epoch: int, epochs: int, schedule: str = "cosine", warmup_epochs: int = 0,
                    milestones: Sequence[int] = (), gamma: float = 0.1) -> float:
    """Multiplier of the peak lr at epoch ``epoch`` (0-based) of ``epochs``.

    ``cosine``: ½(1 + cos(π t/T)); ``constant``: 1; ``step``: γ^#{m ∈ milestones : t ≥ m}. With ``warmup_epochs``
    = w > 0 the first w epochs are additionally scaled by (t + 1)/(w + 1), a linear ramp (w = 4 gives 0.2, 0.4,
    0.6, 0.8, then 1 at t = 4: the CIFAR-LT code's lr·e/5 for 1-based epochs e ≤ 5).
    """
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch {epoch} outside the schedule's 0..{epochs - 1}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid choices: {', '.join(SCHEDULES)}")
    factor = SCHEDULES[schedule](epoch, epochs, milestones, gamma)
    if epoch < warmup_epochs:
        factor *= (epoch + 1) / (warmup_epochs + 1)
    return factor


def learning_rate(optim: OptimConfig, epoch: int, epochs: int) -> float:
    """The peak-group (scale 1) learning rate of epoch ``epoch``."""
    return optim.lr * schedule_factor(epoch, epochs, optim.schedule, optim.warmup_epochs, optim.lr_milestones,
                                      optim.lr_gamma)


def set_learning_rate(optimizer: Any, lr: float) -> None:
    """Set every group's lr to ``lr · group["lr_scale"]`` (groups without a scale get ``lr``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * float(group.get("lr_scale", 1.0))


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """torch SGD over the classifier's parameter groups (``HierarchyClassifier.param_groups``: backbone,
    transformation, method, each with its ``lr_scale``); the frame, a buffer, is never among them."""
    if optim.name != "sgd":
        raise ValueError(f"key 'optim.name': unknown optimizer {optim.name!r}; valid choices: sgd")
    if not hasattr(model, "param_groups"):
        raise ValueError(f"{type(model).__name__} has no param_groups(); expected a haf.models.classifier.HierarchyClassifier")
    groups = model.param_groups(optim.lr, optim.weight_decay, backbone_lr_scale=optim.backbone_lr_scale,
                                transform_lr_scale=optim.transformation_lr_scale,
                                no_decay_norm_and_bias=optim.no_decay_norm_and_bias)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                           nesterov=optim.nesterov)


def deepspeed_config(config: RunConfig, world_size: int) -> dict:
    """The DeepSpeed config dict for this run (the optimizer is passed as an object, the schedule is ours)."""
    ds = config.deepspeed
    micro = world_batch_split(config.train.batch_size, world_size, ds.gradient_accumulation_steps)
    out: dict[str, Any] = {
        "train_batch_size": config.train.batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": ds.gradient_accumulation_steps,
        "zero_optimization": {"stage": ds.zero_stage},
        # ZeRO checks the optimizer against a list it has tested (Adam variants); SGD partitions just as well.
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": ds.precision == "bf16"},
        # loss_scale 0 = dynamic loss scaling, 2**16 the usual initial scale.
        "fp16": {"enabled": ds.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "gradient_clipping": config.train.grad_clip_norm or 0.0,
        # DeepSpeed casts parameters to bf16/fp16 but by default keeps buffers as loaded: BatchNorm would then see
        # low-precision weights next to fp32 running statistics, which its kernels reject. Cast buffers too (the
        # fixed frame and S are restored to fp32 after initialisation, see haf.training.loop).
        "data_types": {"buffer_dtype": {"bf16": "bf16", "fp16": "fp16"}.get(ds.precision)},
        # DeepSpeed's own step log would interleave with our progress bars: effectively off.
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if out["data_types"]["buffer_dtype"] is None:
        del out["data_types"]
    if ds.precision == "bf16-autocast":
        # Inside its forward DeepSpeed *disables* an autocast opened outside it unless its own torch_autocast is on
        # (deepspeed/runtime/torch_autocast.py), so the autocast must be configured here. No module is declared
        # "lower-precision safe": those would all-reduce their gradients in bf16; we keep fp32 reductions, as
        # native AMP does.
        out["torch_autocast"] = {"enabled": True, "dtype": "bf16", "lower_precision_safe_modules": []}
    out.update(ds.extra)
    return out
