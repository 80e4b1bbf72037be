"""Which backend runs the loss: ``backend`` in :data:`BACKENDS`, ``HAF_BACKEND`` for ``"auto"``, then the device.

``"auto"`` picks Triton for CUDA tensors in fp32/bf16/fp16 when Triton imports, else the plain-PyTorch reference;
an explicit backend always wins over ``HAF_BACKEND``. Shared by the dense and the tree-frame loss.
"""
from __future__ import annotations

import importlib.util
import os

import torch

__all__ = ["BACKENDS", "BACKEND_ENV", "TRITON_DTYPES", "resolve_backend"]

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
