"""Host-side state of the fused loss that outlives a call: prepared copies of the fixed tensors, the status word.

Both exist so that a warm call neither re-checks nor re-copies the frame and S and never synchronises with the
device (:mod:`haf.kernels.dense.fused` uses them).
"""
from __future__ import annotations

import ctypes
import warnings
import weakref

import torch
from torch.utils.weak import WeakIdKeyDictionary

from haf.kernels.dense.inputs import tensor_version

__all__ = ["PreparedCache", "StatusWord"]


class PreparedCache:
    """Prepared copies weak-keyed by their source tensor (an entry dies with it) and rebuilt on a new version, with
    a one-entry front memo for the steady state (same tensor every step: one weak dereference instead of a weak
    dictionary lookup). The memo's weak reference clears it when the tensor dies, so nothing outlives its tensor."""

    def __init__(self) -> None:
        self.entries: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.last: tuple | None = None  # (weak ref, version, key, value)

    def get(self, tensor: torch.Tensor, key, build):
        last = self.last
        if last is not None and last[0]() is tensor and last[2] == key and last[1] == tensor._version:
            return last[3]
        version = tensor_version(tensor)
        if version is None:
            return build()
        entries = self.entries.get(tensor)
        if entries is None or entries[0] != version:
            entries = (version, {})
            self.entries[tensor] = entries
        value = entries[1].get(key)
        if value is None:
            value = entries[1][key] = build()
        self.last = (weakref.ref(tensor, self._forget), version, key, value)
        return value

    def _forget(self, ref) -> None:
        last = self.last
        if last is not None and last[0] is ref:
            self.last = None


class StatusWord:
    """One int32 word the kernels set to 1 on NaN/inf features, readable by the host without a synchronisation:
    a CPU tensor under the interpreter, pinned (device-mapped) host memory on a GPU."""

    def __init__(self, device: torch.device) -> None:
        pinned = device.type == "cuda"
        self.word = torch.zeros(1, dtype=torch.int32, pin_memory=pinned)
        self.view = ctypes.c_int32.from_address(self.word.data_ptr())  # host view of the word (no numpy needed)

    def use_device_memory(self, device: torch.device) -> None:
        warnings.warn("this Triton build cannot write to pinned host memory: NaN/inf features are no longer "
                      "reported by haf.kernels.frame_loss on this device (the loss itself becomes NaN)", stacklevel=3)
        self.word = torch.zeros(1, dtype=torch.int32, device=device)
        self.view = None

    def raise_if_set(self) -> None:
        if self.view is not None and self.view.value:
            self.view.value = 0
            raise ValueError("features has non-finite values (NaN or inf, or a norm beyond fp32) in this or an "
                             "earlier haf.kernels.frame_loss call on this device")
