"""The HAFrame loss on a tree frame against the dense loss with the materialised W (float64)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from haf.frame import build_frame
from haf.kernels import FrameLoss, frame_loss
from haf.kernels.tree.loss import TreeFrameTensors, tree_frame_loss_autograd, tree_logits
from haf.losses import hierarchy_frame_loss
from test_tree_frame import random_hierarchy

CASES = [(5, 0, "lca-height", 1), (13, 1, "fixed-depth", 7), (22, 2, "lca-height", 17), (9, 3, "fixed-depth", 3)]


def tree_and_dense(num_leaves: int, seed: int, convention: str):
    frame = build_frame(random_hierarchy(num_leaves, seed, unary_root=seed % 2 == 1), 2.0, factorization="tree",
                        convention=convention)
    return frame, torch.from_numpy(frame.materialise()), torch.from_numpy(frame.similarity_matrix())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("num_leaves,seed,convention,batch", CASES)
def test_value_and_gradient_match_dense(num_leaves, seed, convention, batch, reduction):
    frame, w, s = tree_and_dense(num_leaves, seed, convention)
    gen = torch.Generator().manual_seed(seed)
    h = (3 * torch.randn(batch, frame.width, generator=gen, dtype=torch.float64)).requires_grad_()
    y = torch.randint(0, num_leaves, (batch,), generator=gen)
    y[::3] = -1  # ignored rows
    alpha = [0.0, 0.4, 1.0, 0.5][seed]
    dense = hierarchy_frame_loss(h, w, y, s, alpha, reduction, -1)
    weights = torch.rand(dense.shape, generator=gen, dtype=torch.float64)  # a non-trivial upstream gradient
    grad_dense = torch.autograd.grad((dense * weights).sum(), h)[0]
    for loss in (frame_loss(h, frame, y, None, alpha, reduction, -1, backend="reference"),
                 tree_frame_loss_autograd(h, frame, y, alpha, reduction, -1)):
        assert loss.dtype == torch.float64 and loss.shape == dense.shape
        torch.testing.assert_close(loss, dense, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(torch.autograd.grad((loss * weights).sum(), h)[0], grad_dense, rtol=1e-10,
                                   atol=1e-12)


def test_module_logits_fp32_and_edge_rows():
    frame, w, s = tree_and_dense(30, 4, "lca-height")
    module = FrameLoss(frame, alpha=0.5, backend="reference")
    assert "num_classes=30" in repr(module) and f"width={frame.width}" in repr(module)
    h = torch.randn(6, frame.width, dtype=torch.float32)
    h[1] = 0  # ‖h‖ < ε: the clamp, finite loss and gradient
    h.requires_grad_()
    y = torch.tensor([0, 3, 29, 7, 7, 12])
    loss, logits = module(h, y, return_logits=True)
    dense = hierarchy_frame_loss(h.double(), w, y, s, 0.5)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits.double(), h.detach().double() @ w.T, rtol=1e-5, atol=1e-5)
    loss.backward()
    grad = torch.autograd.grad(hierarchy_frame_loss(h.double(), w, y, s, 0.5), h)[0]
    assert torch.isfinite(h.grad).all()
    torch.testing.assert_close(h.grad.double(), grad.double(), rtol=1e-4, atol=1e-5)
    all_ignored = frame_loss(h, frame, torch.full((6,), -100), None, backend="reference")
    assert all_ignored.item() == 0.0


def test_bad_input_and_chunking(monkeypatch):
    frame, w, s = tree_and_dense(11, 5, "lca-height")
    with pytest.raises(ValueError, match="width N − 1"):
        frame_loss(torch.randn(2, frame.width + 1), frame, torch.tensor([0, 1]), None)
    with pytest.raises(ValueError, match="class index"):
        frame_loss(torch.randn(2, frame.width), frame, torch.tensor([0, 11]), None)
    with pytest.raises(ValueError, match="similarity=None"):
        FrameLoss(frame, torch.eye(11))
    # The dense loss's input rules hold for a tree frame too: α parsed the same way, non-finite features refused.
    h2, y2 = torch.randn(2, frame.width), torch.tensor([0, 1])
    with pytest.raises(TypeError, match="alpha must be a number"):
        frame_loss(h2, frame, y2, None, alpha="0.5")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        frame_loss(h2, frame, y2, None, alpha=1.5)
    with pytest.raises(ValueError, match="features has non-finite values"):
        frame_loss(torch.tensor([[float("nan")] * frame.width, [0.0] * frame.width]), frame, y2, None)
    torch.testing.assert_close(frame_loss(h2, frame, y2, None, alpha=torch.tensor(0.25)),
                               frame_loss(h2, frame, y2, None, alpha=0.25))
    import haf.kernels.tree.loss as module

    h = torch.randn(37, frame.width, dtype=torch.float64)
    y = torch.randint(0, 11, (37,))
    whole = frame_loss(h, frame, y, None, reduction="none", backend="reference")
    monkeypatch.setattr(module, "ROW_CHUNK", 5)
    torch.testing.assert_close(frame_loss(h, frame, y, None, reduction="none", backend="reference"), whole)
    torch.testing.assert_close(tree_logits(h, TreeFrameTensors(frame)), h @ w.T)


def test_bf16_features_accumulate_in_fp32():
    """bf16 h (the large-K memory option): the math runs in fp32 on the bf16 values, the gradient comes back bf16."""
    frame, _, _ = tree_and_dense(22, 2, "lca-height")
    gen = torch.Generator().manual_seed(4)
    h = (3 * torch.randn(9, frame.width, generator=gen)).bfloat16().requires_grad_()
    y = torch.randint(0, 22, (9,), generator=gen)
    loss = frame_loss(h, frame, y, None, 0.4, backend="reference")
    (grad,) = torch.autograd.grad(loss, h)
    exact = h.detach().double().requires_grad_()
    reference = frame_loss(exact, frame, y, None, 0.4, backend="reference")
    (grad_reference,) = torch.autograd.grad(reference, exact)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad.double(), grad_reference, rtol=1e-2, atol=1e-4)


def test_no_grad_gives_the_same_losses(monkeypatch):
    import haf.kernels.tree.loss as module

    asked = []
    original = module._rows_forward_backward
    monkeypatch.setattr(module, "_rows_forward_backward", lambda *a: asked.append(a[-1]) or original(*a))
    frame, _, _ = tree_and_dense(13, 1, "fixed-depth")
    h = torch.randn(6, frame.width, dtype=torch.float64)
    y = torch.randint(0, 13, (6,))
    with_grad = frame_loss(h.clone().requires_grad_(), frame, y, None, 0.3, "none", backend="reference")
    with torch.no_grad():
        without = frame_loss(h, frame, y, None, 0.3, "none", backend="reference")
    torch.testing.assert_close(without, with_grad.detach(), rtol=0, atol=0)
    assert asked == [True, False]  # the gradient is skipped under no_grad


@pytest.mark.parametrize("fault, message", [
    ("inner leaf", "leaf_node must list each of the"), ("repeated leaf", "leaf_node must list each of the"),
    ("depth", "depth must be 0 at the root"),
])
def test_tree_structure_is_checked_where_it_enters(fault, message):
    """Each class's walk to the root starts at its own leaf, and depth agrees with parent (the walks' step count)."""
    import types

    frame, _, _ = tree_and_dense(12, 4, "fixed-depth")
    tree = frame.tree
    leaf_node, depth = tree.leaf_node.copy(), tree.depth.copy()
    if fault == "inner leaf":
        leaf_node[3] = tree.parent[leaf_node[3]]
    elif fault == "repeated leaf":
        leaf_node[3] = leaf_node[4]
    else:
        depth[-1] += 1
    bad_tree = types.SimpleNamespace(parent=tree.parent, depth=depth, leaf_node=leaf_node, levels=tree.levels,
                                     num_classes=tree.num_classes, num_nodes=tree.num_nodes)
    fields = {name: getattr(frame, name) for name in ("beta", "c", "sqrt_a", "node_similarity", "u")}
    with pytest.raises(ValueError, match=message):
        TreeFrameTensors(types.SimpleNamespace(tree=bad_tree, **fields))
    assert TreeFrameTensors(types.SimpleNamespace(tree=tree, **fields)).height == tree.height
