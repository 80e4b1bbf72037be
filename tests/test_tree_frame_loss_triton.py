"""The fused Triton tree-frame loss (interpreter on CPU, small shapes) against the reference path in float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from haf.frame import build_frame
from haf.frame.tree import TreeArrays, build_tree_frame
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


def _problem(num_leaves=70, batch=19, seed=0):
    frame = build_frame(random_hierarchy(num_leaves, seed + 3, unary_root=True), 3.0, factorization="tree",
                        convention="fixed-depth")
    gen = torch.Generator().manual_seed(seed)
    h = (2 * torch.randn(batch, frame.width, generator=gen)).to(DEVICE)
    y = torch.randint(0, num_leaves, (batch,), generator=gen).to(DEVICE)
    return frame, h, y


@pytest.mark.parametrize("splits", [1, 2, 5])
def test_statistics_split_over_classes_match_reference(splits, monkeypatch):
    """The statistics kernel's class splits (whole class blocks, the last one short) merged on the host."""
    from haf.kernels.tree import fused as tree_fused

    monkeypatch.setattr(tree_fused, "CLASS_SPLITS", splits)
    monkeypatch.setattr(tree_fused, "BLOCK_K", 16)  # 70 classes: 5 blocks, so 2 splits are 3 + 2 blocks
    frame, h, y = _problem()
    fast_h, ref_h = h.clone().requires_grad_(), h.double().requires_grad_()
    fast = frame_loss(fast_h, frame, y, None, 0.4, "none", backend="triton")
    ref = frame_loss(ref_h, frame, y, None, 0.4, "none", backend="reference")
    fast.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(fast.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_h.grad.double(), ref_h.grad, rtol=1e-5, atol=1e-5)


def test_backward_is_deterministic_and_uses_no_atomics():
    """Subtree sums by leaf stores and per-level child sums in child order: two runs agree bit for bit, also under
    torch.use_deterministic_algorithms(True), and no kernel of the path adds atomically."""
    import inspect

    from haf.kernels.tree import fused as tree_fused

    assert "atomic_add" not in inspect.getsource(tree_fused)
    frame, h, y = _problem(num_leaves=40, batch=23, seed=1)
    grads = []
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(2):
            x = h.clone().requires_grad_()
            frame_loss(x, frame, y, None, 0.4, "mean", backend="triton").backward()
            grads.append(x.grad)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_second_backward_with_retain_graph_and_double_backward(backend):
    frame, h, y = _problem(num_leaves=30, batch=7, seed=2)
    x = h.clone().requires_grad_()
    loss = frame_loss(x, frame, y, None, 0.4, "mean", backend=backend)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * first)  # the saved gradient was not scaled in place
    x = h.clone().requires_grad_()
    loss = frame_loss(x, frame, y, None, 0.4, "mean", backend=backend)
    with pytest.raises(RuntimeError, match="^double backward through the tree frame loss is not supported$"):
        torch.autograd.grad(loss, x, create_graph=True)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_float_ignore_index_is_refused(backend):
    frame, h, y = _problem(num_leaves=30, batch=7, seed=3)
    with pytest.raises(TypeError, match="ignore_index must be an int, got float -100.0"):
        frame_loss(h, frame, y, None, 0.4, "mean", -100.0, backend=backend)


@pytest.mark.parametrize("field, message", [
    ("sqrt_a", "sqrt_a has non-finite"), ("node_similarity", "g has non-finite"), ("u", "u has non-finite"),
    ("beta", "beta = nan is not finite"),
])
def test_tree_frame_values_are_checked_where_they_enter(field, message):
    import types

    from haf.kernels.tree.tensors import TreeFrameTensors

    frame = build_frame(random_hierarchy(12, 4), 3.0, factorization="tree", convention="fixed-depth")
    fields = {name: getattr(frame, name) for name in ("tree", "beta", "c", "sqrt_a", "node_similarity", "u")}
    if field == "beta":
        fields[field] = float("nan")
    else:
        fields[field] = fields[field].copy()
        fields[field][2] = float("nan")
    with pytest.raises(ValueError, match=message):
        TreeFrameTensors(types.SimpleNamespace(**fields))
    TreeFrameTensors(frame)  # the real one passes


def test_deep_caterpillar_matches_reference(monkeypatch):
    """A caterpillar 40 deep (one leaf and one inner child per inner node): the targets' path walks, the per-level
    path sums and similarity rows, the level sums of the backward (one node per program, so a level spans
    several), in row chunks, the last one short."""
    from haf.kernels.tree import fused as tree_fused

    monkeypatch.setattr(tree_fused, "ROW_CHUNK", 16)
    monkeypatch.setattr(tree_fused, "BLOCK_P", 1)
    depth = 40
    parent = np.array([-1, *range(depth - 1), *range(depth), depth - 1])
    frame = build_tree_frame(TreeArrays.from_parents(parent), 3.0, "fixed-depth")
    gen = torch.Generator().manual_seed(2)
    h = (2 * torch.randn(19, frame.width, generator=gen)).to(DEVICE)
    y = torch.randint(0, frame.num_classes, (19,), generator=gen)
    y[:3] = torch.tensor([depth - 1, depth, 0])  # the two deepest leaves and the shallowest
    y[4] = -100
    y = y.to(DEVICE)
    fast_h, ref_h = h.clone().requires_grad_(), h.double().requires_grad_()
    fast = frame_loss(fast_h, frame, y, None, 0.4, "none", backend="triton")
    ref = frame_loss(ref_h, frame, y, None, 0.4, "none", backend="reference")
    weights = torch.rand(19, generator=gen, dtype=torch.float64).to(DEVICE)
    (fast.double() * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(fast.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_h.grad.double(), ref_h.grad, rtol=1e-5, atol=1e-5)


COMPILE_SCRIPT = r"""
import json, torch
from haf.kernels.dense import aot
from haf.kernels.tree import fused as F
f32, i32, i64 = (lambda *s, d=d: torch.empty(*s, dtype=d) for d in (torch.float32, torch.int32, torch.int64))
B, N, K = 40, 6001, 3001
rows = dict(BLOCK_B=F.BLOCK_B, batch=B)
tiles = dict(path_ptr=f32(B, N), sim_ptr=f32(B, N), stride_buf=N, leaf_ptr=i32(K), y_ptr=i64(B), shift_ptr=f32(B),
             norm_ptr=f32(B), classes=K, BLOCK_K=F.BLOCK_K, **rows)
launches = [(F._tree_mark_path, dict(sim_ptr=f32(B, N), stride_buf=N, y_ptr=i64(B), leaf_ptr=i32(K),
                                     parent_ptr=i32(N), g_ptr=f32(N), steps=3001, **rows)),
            (F._tree_stats, dict(out_ptr=f32(3, B, 6), per_split=1024, **tiles)),
            (F._tree_dz, dict(lse_ptr=f32(B), alpha=0.4, **tiles)),
            (F._tree_children_sum, dict(buf_ptr=f32(B, N), stride_buf=N, first_child_ptr=i32(N),
                                        child_count_ptr=i32(N), plo=17, phi=19, max_children=2,
                                        BLOCK_P=F.BLOCK_P, **rows))]
for dtype in (torch.float32, torch.bfloat16):
    launches.append((F._tree_path_level, dict(h_ptr=torch.empty(B, N - 1, dtype=dtype), stride_h=N - 1,
                                              path_ptr=f32(B, N), sim_ptr=f32(B, N), stride_buf=N,
                                              parent_ptr=i32(N), sqrt_a_ptr=f32(N), lo=17, hi=19,
                                              BLOCK_P=F.BLOCK_P, **rows)))
out = []
for kernel, args in launches:
    compiled = aot._compile(aot.Launch(kernel, args, num_warps=4, num_stages=3), 90)
    out.append({"kernel": compiled.name, "cubin_bytes": len(compiled.cubin), "ptxas": aot.ptxas_report(compiled)})
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_tree_kernels_compile_for_sm90_without_a_gpu():
    """The interpreter never runs Triton's compiler: every tree kernel goes through Triton → PTX → ptxas for sm_90
    (in a subprocess with TRITON_INTERPRET unset), without spills."""
    import json
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout.split("RESULT", 1)[1])
    assert sorted({row["kernel"] for row in results}) == ["_tree_children_sum", "_tree_dz", "_tree_mark_path",
                                                          "_tree_path_level", "_tree_stats"]
    for row in results:
        assert row["cubin_bytes"] > 0, row
        assert "0 bytes spill stores" in row["ptxas"] and "0 bytes spill loads" in row["ptxas"], row
