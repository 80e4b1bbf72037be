"""Where a run computes and in what precision: device choice, autocast policy, input dtype, memory format.

One policy for training and evaluation. ``deepspeed.precision``: "fp32"; "bf16-autocast" (fp32 weights,
torch.autocast(bfloat16) around forward + loss); "bf16" / "fp16" (DeepSpeed's low-precision weights). Where the
weights are fp32 (the plain engine, evaluation of a checkpoint) "bf16" / "fp16" become autocast to that dtype.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

DEVICES = ("auto", "cuda", "cpu")


def choose_device(device: str = "auto", local_rank: int | None = None) -> torch.device:
    """``auto``: this rank's GPU when there is one, else the CPU; ``cuda`` without a GPU is an error."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; valid choices: {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available")
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device() if local_rank is None else local_rank)


def autocast_dtype(precision: str, low_precision_weights: bool = False) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (None: no autocast); low-precision weights are never autocast."""
    if precision == "bf16-autocast" or (precision == "bf16" and not low_precision_weights):
        return torch.bfloat16
    if precision == "fp16" and not low_precision_weights:
        return torch.float16
    return None


def autocast_factory(precision: str, device: torch.device,
                     low_precision_weights: bool = False) -> Callable[[], contextlib.AbstractContextManager]:
    """A zero-argument callable opening the autocast context of ``precision`` on ``device`` (or a no-op)."""
    dtype = autocast_dtype(precision, low_precision_weights)

    def autocast() -> contextlib.AbstractContextManager:
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=dtype)

    return autocast


def input_dtype(precision: str, low_precision_weights: bool) -> torch.dtype:
    """The dtype a loader delivers: the weights' dtype (bf16/fp16 under DeepSpeed's low-precision weights)."""
    if low_precision_weights:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return torch.float32


def use_channels_last(mode: str, device: torch.device) -> bool:
    """``data.channels_last``: "on", "off", or "auto" (on GPU only, where cuDNN's NHWC convolutions are faster)."""
    return mode == "on" or (mode == "auto" and torch.device(device).type == "cuda")
