"""The tree-frame loss on very deep trees (a caterpillar: each inner node has one leaf and one inner child): the
reference takes O(N) memory per row, never a K × H path table, and agrees with the dense float64 loss (the Triton
path on a deep caterpillar: tests/test_tree_frame_loss_triton.py)."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

from haf.frame.tree import TreeArrays, build_tree_frame
from haf.kernels import frame_loss
from haf.kernels.tree.tensors import TreeFrameTensors
from haf.losses import hierarchy_frame_loss


def caterpillar(depth: int, gamma: float = 1.0, convention: str = "lca-height", check: bool = True):
    """A spine of ``depth`` inner nodes, one leaf off each, two off the last: K = depth + 1, height = depth."""
    parent = np.array([-1, *range(depth - 1), *range(depth), depth - 1])
    return build_tree_frame(TreeArrays.from_parents(parent), gamma, convention, check=check)


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of the storages that torch ops create and that are alive at once (storages made outside the
    dispatcher, such as ``torch.from_numpy``'s, are numpy's: tracemalloc sees those)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.total = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [key for key, (ref, _) in self.live.items() if ref.expired()]:
            self.total -= self.live.pop(key)[1]
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in self.live:
                storage = tensor.untyped_storage()
                self.live[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes())
                self.total += storage.nbytes()
        self.peak = max(self.peak, self.total)
        return out


def test_a_caterpillar_thousands_deep_costs_no_classes_by_depth_table():
    depth, batch = 3000, 32
    frame = caterpillar(depth, check=False)
    table_bytes = frame.num_classes * (depth + 1) * 8  # what a K × (H + 1) int64 path table alone would take
    tracemalloc.start()
    try:
        tensors = TreeFrameTensors(frame)
        build_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(batch, tensors.width, generator=gen, dtype=torch.float64).requires_grad_()
    y = torch.randint(0, tensors.num_classes, (batch,), generator=gen)
    y[:4] = torch.tensor([depth - 1, depth, 0, 1])  # the two deepest leaves and the two shallowest
    with LiveTensorBytes() as live:
        loss = frame_loss(h, tensors, y, None, 0.5, backend="reference")
        loss.backward()
    held = sum(buffer.nbytes for buffer in tensors.buffers())
    assert tensors.height == depth and table_bytes > 64 * 2**20
    assert build_peak + held + live.peak < 16 * 2**20, (build_peak, held, live.peak)
    # Value and gradient are right: a central difference along a random direction (float64).
    direction = torch.randn(h.shape, generator=gen, dtype=torch.float64)
    step = 1e-6
    with torch.no_grad():
        ahead = frame_loss(h + step * direction, tensors, y, None, 0.5, backend="reference")
        behind = frame_loss(h - step * direction, tensors, y, None, 0.5, backend="reference")
    slope = float((ahead - behind) / (2 * step))
    assert torch.isfinite(loss) and abs(slope - float((h.grad * direction).sum())) < 1e-6 * max(1.0, abs(slope))


@pytest.mark.parametrize("convention", ["lca-height", "fixed-depth"])
def test_deep_caterpillar_matches_the_dense_loss(convention):
    frame = caterpillar(200, 2.0, convention)
    w, s = torch.from_numpy(frame.materialise()), torch.from_numpy(frame.similarity_matrix())
    gen = torch.Generator().manual_seed(1)
    h = (3 * torch.randn(13, frame.width, generator=gen, dtype=torch.float64)).requires_grad_()
    y = torch.randint(0, frame.num_classes, (13,), generator=gen)
    y[:3] = torch.tensor([199, 200, 0])
    y[5] = -100
    weights = torch.rand(13, generator=gen, dtype=torch.float64)
    dense = hierarchy_frame_loss(h, w, y, s, 0.4, "none")
    (grad_dense,) = torch.autograd.grad((dense * weights).sum(), h)
    tree = frame_loss(h, frame, y, None, 0.4, "none", backend="reference")
    (grad_tree,) = torch.autograd.grad((tree * weights).sum(), h)
    torch.testing.assert_close(tree, dense, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(grad_tree, grad_dense, rtol=1e-10, atol=1e-12)
