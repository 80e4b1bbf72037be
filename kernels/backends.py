"""Which backend runs the loss: ``backend`` in :data:`BACKENDS`, ``HAF_BACKEND`` for ``"auto"``, then the device.

``"auto"`` picks Triton for CUDA tensors in fp32/bf16/fp16 when Triton imports, else the plain-PyTorch reference;
an explicit backend always wins over ``HAF_BACKEND``. Shared by the dense and the tree-frame loss.
"""
from __future__ import annotations

import importlib.util
import os

import torch

__all__ = ["BACKENDS", "BACKEND_ENV", "TRITON_DTYPES", "autocast_features", "resolve_backend"]

BACKENDS = ("auto", "triton", "reference")
#: Environment variable that replaces ``backend="auto"`` (values: ``BACKENDS``).
BACKEND_ENV = "HAF_BACKEND"
#: Input dtypes the Triton kernels are built for (tl.dot operands); fp64 stays on the reference path.
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_backend(backend: str, features: torch.Tensor) -> str:
    """Turn ``backend`` (and ``HAF_BACKEND`` for ``"auto"``) into ``"triton"`` or ``"reference"``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        from_env = os.environ.get(BACKEND_ENV, "").strip().lower()
        if from_env and from_env not in BACKENDS:
            raise ValueError(f"environment variable {BACKEND_ENV}={from_env!r} must be one of {BACKENDS}")
        backend = from_env or "auto"
    if backend == "auto":
        fast = features.is_cuda and features.dtype in TRITON_DTYPES and _triton_importable()
        backend = "triton" if fast else "reference"
    return backend


def autocast_features(features: torch.Tensor) -> torch.Tensor:
    """fp32 features in the autocast dtype while autocast is on, so the Triton path's product runs like an autocast
    matmul (and with that dtype's tiles): the eager entry and the compiled operator's caller both apply it."""
    if features.dtype is not torch.float32:  # half features: no autocast question to ask (the common case)
        return features
    device_type = features.device.type
    if torch.is_autocast_enabled(device_type):
        return features.to(torch.get_autocast_dtype(device_type))
    return features
