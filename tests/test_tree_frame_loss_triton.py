"""The fused Triton tree-frame loss (interpreter on CPU, small shapes) against the reference path in float64."""
from __future__ import annotations

import pytest
import torch

from haf.frame import build_frame
from haf.kernels import frame_loss
from haf.kernels.dense import fused as fused
from test_tree_frame import random_hierarchy

DEVICE = "cpu" if fused.INTERPRETED else "cuda"


@pytest.mark.parametrize("num_leaves,batch,dtype,reduction,chunk", [
    (7, 3, torch.float32, "mean", None), (70, 19, torch.float32, "none", None), (40, 5, torch.bfloat16, "sum", None),
    (40, 37, torch.bfloat16, "none", 16),  # row chunks of the fp32 gradient buffer, the last one short
])
def test_fused_matches_reference(num_leaves, batch, dtype, reduction, chunk, monkeypatch):
    from haf.kernels.tree import fused as tree_frame_loss_triton

    monkeypatch.setattr(tree_frame_loss_triton, "ROW_CHUNK", chunk)
    frame = build_frame(random_hierarchy(num_leaves, num_leaves, unary_root=True), 3.0, factorization="tree",
                        convention="fixed-depth")
    gen = torch.Generator().manual_seed(batch)
    h = (2 * torch.randn(batch, frame.width, generator=gen)).to(dtype).to(DEVICE)
    y = torch.randint(0, num_leaves, (batch,), generator=gen).to(DEVICE)
    y[1] = -100
    h[-1] = 0  # a feature without a direction: cosines 0, only cross-entropy's gradient (the dense loss's rule)
    fast_h = h.clone().requires_grad_()
    ref_h = h.double().requires_grad_()
    fast = frame_loss(fast_h, frame, y, None, 0.4, reduction, backend="triton")
    ref = frame_loss(ref_h, frame, y, None, 0.4, reduction, backend="reference")
    weights = torch.rand(ref.shape, generator=gen, dtype=torch.float64).to(DEVICE)
    (fast.double() * weights).sum().backward()
    (ref * weights).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert fast.dtype == torch.float32 and fast_h.grad.dtype == dtype
    torch.testing.assert_close(fast.double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(fast_h.grad.double(), ref_h.grad, rtol=tol, atol=tol)


def test_fused_losses_without_grad():
    frame = build_frame(random_hierarchy(30, 5), 3.0, factorization="tree", convention="lca-height")
    h = torch.randn(5, frame.width).to(DEVICE)
    y = torch.randint(0, 30, (5,)).to(DEVICE)
    with_grad = frame_loss(h.clone().requires_grad_(), frame, y, None, 0.4, "none", backend="triton")
    with torch.no_grad():
        without = frame_loss(h.requires_grad_(), frame, y, None, 0.4, "none", backend="triton")
    torch.testing.assert_close(without, with_grad.detach())
