"""Fused Triton kernels (installed as ``haf.kernels``), each beside its plain-PyTorch reference.

``frame_loss`` / ``FrameLoss``: the HAFrame loss (cross-entropy + cosine-to-similarity term) with dL/dh, one
dispatcher over the fused Triton path and the reference in :mod:`haf.losses`. Triton itself is imported lazily, on
the first call that runs a kernel, so ``import haf.kernels`` stays cheap and works where Triton is absent.
"""
from haf.kernels.frame_loss import BACKEND_ENV, BACKENDS, FrameLoss, frame_loss, resolve_backend

__all__ = ["BACKENDS", "BACKEND_ENV", "FrameLoss", "frame_loss", "resolve_backend"]
