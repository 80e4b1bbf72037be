"""Host-side state of the fused loss that outlives a call: prepared copies of the fixed tensors, the status word,
the ticket words of the "last program reduces" kernels.

They exist so that a warm call neither re-checks nor re-copies the frame and S, never synchronises with the device
and allocates no ticket (:mod:`haf.kernels.dense.fused` uses them). Nothing here is created during CUDA-graph
capture: memory taken there belongs to the graph's pool and would be reused once the graph dies.
"""
from __future__ import annotations

import ctypes
import warnings
import weakref

import torch
from torch.utils.weak import WeakIdKeyDictionary

from haf.kernels.dense.inputs import tensor_version

__all__ = ["PreparedCache", "StatusWord", "TicketBook", "capturing", "stream_key"]


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


def capturing(device: torch.device) -> bool:
    """True while the current CUDA stream is being captured into a graph (never on CPU)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def stream_key(device: torch.device):
    """The current stream of ``device`` as a hashable key (None on CPU, where calls run in order)."""
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None


class TicketBook:
    """Zeroed int32 ticket words of one launch plan, ``words`` per slot, all allocated when the plan is made.

    A kernel counts its programs in a slot and its last program resets it to zero, so two launches may share a slot
    only if they never overlap: eager calls on one stream share that stream's slot; every CUDA-graph capture takes a
    slot of its own (a replay may overlap eager calls and other graphs). Slots are never freed (a graph may replay
    for the process's life); a capture beyond the last slot is refused."""

    SLOTS = 32

    def __init__(self, words: int, device: torch.device, slots: int = SLOTS) -> None:
        self.buffer = torch.zeros(slots, max(1, words), dtype=torch.int32, device=device)
        self.slots = list(self.buffer.unbind(0))
        self.by_stream: dict = {}
        self.taken = 0

    def _take(self) -> torch.Tensor:
        if self.taken == len(self.slots):
            raise RuntimeError(f"haf.kernels.frame_loss: all {len(self.slots)} ticket slots of this launch plan are "
                               "taken by streams and CUDA-graph captures; capture fewer graphs of this shape")
        self.taken += 1
        return self.slots[self.taken - 1]

    def get(self, key, capturing: bool = False) -> torch.Tensor:
        """The slot for an eager call on stream ``key``, or a fresh one for a capture."""
        if capturing:
            return self._take()
        slot = self.by_stream.get(key)
        if slot is None:
            slot = self.by_stream[key] = self._take()
        return slot
