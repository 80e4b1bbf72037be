"""Keep a method's fixed float buffers (frames, soft targets, edge weights) out of module-wide half casts.

DeepSpeed's bf16/fp16 weights mode casts the whole model (``.half()`` / ``.bfloat16()``), buffers included. A
fixed frame or a soft-target matrix defines the target of the loss rather than being a weight: rounding it to
8–11 significant bits would change the method (an exp(−30) soft target underflows in fp16), and the losses
accumulate in fp32 anyway. Device moves and lossless casts (``.double()``) still apply. Fixed-frame methods
(``haf/methods/haframe.py``) and methods with fixed targets (soft labels, HXE, ETF) share this base.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from haf.methods.base import Method

__all__ = ["FullPrecisionBuffersMethod"]

_HALF_DTYPES = (torch.float16, torch.bfloat16)


class FullPrecisionBuffersMethod(Method):
    """A Method whose buffers named in ``full_precision_buffers`` never become fp16/bf16."""

    full_precision_buffers: ClassVar[tuple[str, ...]] = ()

    def fixed_buffers(self) -> dict[str, torch.Tensor]:
        """Only the buffers that define the method: not, e.g., the running statistics of a BatchNorm it owns,
        which the training loop must leave in the model's dtype (it restores these to their fp32 originals)."""
        buffers = self._buffers
        return {name: buffers[name] for name in self.full_precision_buffers if buffers.get(name) is not None}

    def _apply(self, fn: Any, recurse: bool = True) -> "FullPrecisionBuffersMethod":
        before = {
            name: self._buffers[name] for name in self.full_precision_buffers if self._buffers.get(name) is not None
        }
        super()._apply(fn, recurse)
        for name, original in before.items():
            after = self._buffers[name]
            if after is not None and after.dtype in _HALF_DTYPES and original.dtype not in _HALF_DTYPES:
                self._buffers[name] = original.to(device=after.device)
        return self
