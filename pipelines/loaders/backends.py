"""The input backends and the one rule that picks one: ``auto`` → DALI on a CUDA device when it imports, else torch.

DALI's GPU decoding and augmentation is what makes it worth having; on a CPU run the PyTorch DataLoader is the
simpler equal, and a CPU-only run never imports DALI.
"""
from __future__ import annotations

from typing import Any

LOADER_BACKENDS = ("dali", "torch")  # what a loader is built with
DATA_BACKENDS = ("auto", "torch", "dali")  # what a config or caller may ask for
DEFAULT_DATA_BACKEND = "auto"


def resolve_data_backend(backend: str, device: Any = None) -> str:
    """``backend`` with ``"auto"`` resolved: "dali" when ``device`` is a CUDA device (``None``: whether CUDA is
    available at all) and ``nvidia.dali`` imports, otherwise "torch"."""
    if backend not in DATA_BACKENDS:
        raise ValueError(f"data backend {backend!r}; expected one of {', '.join(DATA_BACKENDS)}")
    if backend != "auto":
        return backend
    import torch

    on_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if not on_cuda:
        return "torch"
    from haf.optional_deps import available

    return "dali" if available("nvidia.dali") else "torch"
