"""The HAFrame loss on a tree-factorised frame (``haf.frame.TreeFrame``): O(B·N) instead of O(B·K·D).

Features h live in R^{N−1}, one coordinate per non-root node v (column v − 1). With W = F − β·1uᵀ:

    z_i  = Σ_{v on root→leaf i} √a_v·h_v − β·(u·h)        (path sums, one pass per depth level)
    S_iy = g(LCA(i, y)) = e(leaf i),  e(root) = g(root), e(v) = g(v) if v is on y's path else e(parent v)
    ℓ    = (1 − α)·(lse(z) − z_y) + α·Σ_i (z_i/n − S_iy)²,   n = ‖h‖   (rows of W are unit vectors)

Gradient (computed in the forward, like the fused dense kernels): with p = softmax(z),
    dz_i = (1 − α)(p_i − [i = y]) + (2α/n)(z_i/n − S_iy),   dℓ/dn = −(2α/n²)·Σ_i z_i (z_i/n − S_iy)
    dℓ/dh_v = √a_v·D_v − β·u_v·Σ_i dz_i + dℓ/dn · h_v/n,    D_v = Σ_{leaves i under v} dz_i (subtree sums)
S is never formed as a K × K matrix (docs/TREE_FRAME.md, "The loss").

Backends: "reference" here (plain PyTorch, rows in chunks of chunk × N temporaries), "triton"
(:mod:`haf.kernels.tree.fused`); :func:`tree_frame_loss_autograd` is the tests' oracle.
"""
from __future__ import annotations

import torch

from haf.kernels.dense.reference import FEATURE_EPS, _reduce, compute_dtype
from haf.kernels.tree.tensors import (
    TreeFrameTensors,
    as_tree_frame,
    directionless_as_inf,
    is_tree_frame,
    scale_saved_gradient,
)

__all__ = ["TreeFrameTensors", "as_tree_frame", "is_tree_frame", "tree_frame_loss", "tree_frame_loss_autograd",
           "tree_frame_matrix", "tree_logits"]

#: Working-memory budget of the reference path: rows are taken in chunks whose temporaries (about one chunk × N
#: and four chunk × K buffers in the compute dtype) fit in it; at K = 10⁶ that is one row at a time.
WORK_BYTES = 64 * 2**20
#: Fixed rows per chunk instead of the budget (None: from WORK_BYTES); tests set it.
ROW_CHUNK: int | None = None


def _row_chunk(frame: "TreeFrameTensors", dtype: torch.dtype, rows: int) -> int:
    if ROW_CHUNK is not None:
        return ROW_CHUNK
    per_row = (frame.num_nodes + 4 * frame.num_classes) * torch.empty((), dtype=dtype).element_size()
    return max(1, min(rows, WORK_BYTES // per_row))


def _check(features: torch.Tensor, frame: TreeFrameTensors, target: torch.Tensor, alpha, reduction: str,
           ignore_index: int) -> tuple[torch.Tensor, float]:
    """(rows that count, α as a float): the dense loss's rules for target, α and reduction, and finite features
    (one host read: the O(B·N) tree passes dwarf it)."""
    from haf.kernels.dense.inputs import REDUCTIONS, check_ignore_index, check_target, check_target_range, parse_alpha

    if features.dim() != 2 or features.shape[1] != frame.width:
        raise ValueError(f"features must be B × {frame.width} (the tree frame's width N − 1), got "
                         f"{tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"features must be a floating-point tensor, got dtype {features.dtype}")
    check_target(target, features.shape[0])
    check_ignore_index(ignore_index)
    alpha = parse_alpha(alpha)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features has non-finite values (NaN or inf)")
    return check_target_range(target, frame.num_classes, ignore_index), alpha


# ------------------------------------------------------------------------------------- per-level tree passes


def _path_sums(frame: TreeFrameTensors, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[:, v] = Σ_{w on root→v} √a_w h_w (out[:, 0] = 0): top-down, one step per depth level."""
    sqrt_a = frame.cast("sqrt_a", h.dtype)
    out[:, 0] = 0
    for lo, hi, _, _ in frame.levels:
        torch.addcmul(out[:, frame.parent[lo:hi]], h[:, lo - 1:hi - 1], sqrt_a[lo:hi], out=out[:, lo:hi])
    return out


#: Not yet known in a similarity row (every g is finite, checked where the tree enters).
UNSET = float("inf")


def _similarity_rows(frame: TreeFrameTensors, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[b, v] = g(LCA(v, y_b)) for every node (so S[i, y_b] = out[b, leaf i]), O(B·N) memory and time.

    The nodes on y_b's root path get g(v) by walking up from y_b's leaf with ``parent`` (B values per step, depth
    of the deepest target steps, the root its own parent), every other node takes its parent's value, top-down
    per depth level: no K × H (nor B × H) path table."""
    g = frame.cast("g", out.dtype)
    rows = torch.arange(y.shape[0], device=y.device)
    node = frame.leaf_node[y]
    out.fill_(UNSET)
    for _ in range(int(frame.depth[node].max()) + 1 if node.numel() else 0):
        out[rows, node] = g[node]
        node = frame.parent[node]
    for lo, hi, _, _ in frame.levels:
        level = out[:, lo:hi]
        torch.where(level == UNSET, out[:, frame.parent[lo:hi]], level, out=level)
    return out


def _subtree_sums(frame: TreeFrameTensors, values: torch.Tensor) -> torch.Tensor:
    """values[:, v] += Σ of values over v's children, deepest level first: leaf values become subtree sums."""
    for lo, hi, plo, phi in reversed(frame.levels):
        values[:, plo:phi].index_add_(1, frame.parent[lo:hi] - plo, values[:, lo:hi])
    return values


def tree_logits(features: torch.Tensor, frame) -> torch.Tensor:
    """z = W h for a tree frame (B × K, fp32 or fp64, no grad), rows in chunks."""
    frame = as_tree_frame(frame, features.device)
    dtype = compute_dtype(features)
    out = torch.empty(features.shape[0], frame.num_classes, dtype=dtype, device=features.device)
    chunk = _row_chunk(frame, dtype, features.shape[0])
    with torch.no_grad():
        for start in range(0, features.shape[0], chunk):
            h = features[start:start + chunk].to(dtype)
            buffer = _path_sums(frame, h, h.new_empty(h.shape[0], frame.num_nodes))
            rows = out[start:start + h.shape[0]]
            torch.index_select(buffer, 1, frame.leaf_node, out=rows)
            rows.sub_(frame.beta * (h @ frame.cast("u", dtype)[1:])[:, None])
    return out


def tree_frame_matrix(frame) -> torch.Tensor:
    """W = F − β·1uᵀ as a dense K × (N − 1) float64 tensor (small K: tests, neural-collapse diagnostics)."""
    frame = as_tree_frame(frame, torch.device("cpu")) if not isinstance(frame, TreeFrameTensors) else frame
    w = (-frame.beta * frame.u[1:]).repeat(frame.num_classes, 1)
    rows, nodes = torch.arange(frame.num_classes, device=w.device), frame.leaf_node
    while rows.numel():  # climb every class's path at once, one step per level
        w[rows, nodes - 1] += frame.sqrt_a[nodes]
        nodes = frame.parent[nodes]
        keep = nodes > 0
        rows, nodes = rows[keep], nodes[keep]
    return w


def _ancestor_table(frame: TreeFrameTensors) -> torch.Tensor:
    """K × (H + 1) nodes on each class's path, root first, −1 below a shallow leaf: the oracle's literal paths
    (small K only; the loss paths never build it)."""
    table = torch.full((frame.num_classes, frame.height + 1), -1, dtype=torch.int64, device=frame.parent.device)
    rows, nodes = torch.arange(frame.num_classes, device=table.device), frame.leaf_node
    while rows.numel():
        table[rows, frame.depth[nodes]] = nodes
        keep = nodes > 0
        rows, nodes = rows[keep], frame.parent[nodes[keep]]
    return table


# --------------------------------------------------------------------------------------------- reference path


def _rows_forward_backward(frame: TreeFrameTensors, h: torch.Tensor, y: torch.Tensor, alpha: float,
                           need_grad: bool = True):
    """Per-row loss and dℓ/dh for a chunk of rows (module docstring). Live temporaries: one chunk × N buffer and
    at most four chunk × K ones (z, S rows, the residual, one op's output); the gradient is built in the buffer.

    A feature without a direction (‖h‖ < FEATURE_EPS) follows the dense loss's rule: every cosine is 0, so its
    cosine term is the constant Σ_i S_iy² and adds nothing to dℓ/dh."""
    u = frame.cast("u", h.dtype)[1:]
    norm = h.norm(dim=1)
    n = directionless_as_inf(norm)
    buffer = _path_sums(frame, h, h.new_empty(h.shape[0], frame.num_nodes))
    z = buffer.index_select(1, frame.leaf_node).sub_(frame.beta * (h @ u)[:, None])
    s = _similarity_rows(frame, y, buffer).index_select(1, frame.leaf_node)
    lse = torch.logsumexp(z, dim=1)
    z_y = z.gather(1, y[:, None])[:, 0]
    residual = torch.div(z, n[:, None]).sub_(s)
    del s
    loss = (1 - alpha) * (lse - z_y) + alpha * torch.linalg.vector_norm(residual, dim=1).square()
    if not need_grad:
        return loss, None
    d_norm = -(2 * alpha / n**2) * torch.linalg.vecdot(z, residual, dim=1)
    d_norm = torch.where(norm >= FEATURE_EPS, d_norm, torch.zeros_like(d_norm))
    dz = torch.softmax(z, dim=1).mul_(1 - alpha)
    del z
    dz.scatter_add_(1, y[:, None], torch.full_like(z_y[:, None], -(1 - alpha)))
    dz.add_(residual.mul_(2 * alpha / n[:, None]))
    del residual
    buffer.zero_()
    buffer[:, frame.leaf_node] = dz
    dz_sum = dz.sum(dim=1)
    del dz
    grad = _subtree_sums(frame, buffer)[:, 1:].mul_(frame.cast("sqrt_a", h.dtype)[1:])
    grad.addr_(dz_sum, u, alpha=-frame.beta)
    grad.addcmul_(h, (d_norm / n)[:, None])
    return loss, grad


class _TreeFrameLoss(torch.autograd.Function):
    """Loss per row and dℓ/dh in the forward (rows in chunks); backward scales the stored gradient. Without a
    gradient to take (evaluation under no_grad) only the losses are computed."""

    @staticmethod
    def forward(ctx, features, frame, target, valid, alpha, need_grad):
        dtype = compute_dtype(features)
        losses = torch.zeros(features.shape[0], dtype=dtype, device=features.device)
        grad = torch.empty(features.shape if need_grad else (0, 0), dtype=features.dtype, device=features.device)
        safe = torch.where(valid, target.long(), torch.zeros_like(target, dtype=torch.long))
        chunk = _row_chunk(frame, dtype, features.shape[0])
        for start in range(0, features.shape[0], chunk):
            rows = slice(start, start + chunk)
            loss, g = _rows_forward_backward(frame, features[rows].to(dtype), safe[rows], alpha, need_grad)
            keep = valid[rows]
            losses[rows] = torch.where(keep, loss, torch.zeros_like(loss))
            if g is None:
                continue
            g[~keep] = 0
            grad[rows] = g  # cast to the features' dtype (bf16 features: fp32 math, bf16 gradient)
            del g
        ctx.save_for_backward(grad)
        return losses

    backward = staticmethod(scale_saved_gradient)


def tree_frame_loss(features: torch.Tensor, frame, target: torch.Tensor, alpha: float = 0.5,
                    reduction: str = "mean", ignore_index: int = -100, backend: str = "auto", *,
                    return_logits: bool = False):
    """HAFrame loss on a tree frame, shaped like ``F.cross_entropy`` (module docstring); ``backend`` as in
    :func:`haf.kernels.frame_loss` ("auto": Triton for CUDA tensors, else the reference)."""
    from haf.kernels.backends import resolve_backend

    frame = as_tree_frame(frame, features.device)
    valid, alpha = _check(features, frame, target, alpha, reduction, ignore_index)
    if resolve_backend(backend, features) == "triton":
        from haf.kernels.tree.fused import triton_tree_frame_rows

        per_row = triton_tree_frame_rows(features, frame, target, valid, float(alpha))
    else:
        need_grad = torch.is_grad_enabled() and features.requires_grad
        per_row = _TreeFrameLoss.apply(features, frame, target, valid, float(alpha), need_grad)
    loss = _reduce(per_row, valid, reduction)
    if return_logits:
        return loss, tree_logits(features.detach(), frame)
    return loss


# ------------------------------------------------------------------------------------------------ the oracle


def tree_frame_loss_autograd(features: torch.Tensor, frame, target: torch.Tensor, alpha: float = 0.5,
                             reduction: str = "mean", ignore_index: int = -100) -> torch.Tensor:
    """The literal formula through autograd: z by gathering √a·h along each class's path (B × K × depth), S[i, y]
    from the LCA read off the two paths. The oracle of the tests (small K)."""
    frame = as_tree_frame(frame, features.device)
    valid, alpha = _check(features, frame, target, alpha, reduction, ignore_index)
    dtype = compute_dtype(features)
    h = features.to(dtype)
    node_values = torch.cat([h.new_zeros(h.shape[0], 1), h], dim=1) * frame.sqrt_a.to(dtype)
    table = _ancestor_table(frame)
    anc, pad = table.clamp_min(0), table < 0
    z = node_values[:, anc].masked_fill(pad, 0).sum(dim=2) - frame.beta * (h @ frame.u[1:].to(dtype))[:, None]
    y = torch.where(valid, target.long(), torch.zeros_like(target, dtype=torch.long))
    same = (table[None, :, :] == table[y][:, None, :]) & ~pad[None]  # B × K × (H + 1), a prefix
    lca_level = same.long().cumprod(dim=2).sum(dim=2) - 1
    s = frame.g.to(dtype)[anc[torch.arange(anc.shape[0])[None, :], lca_level]]
    cos = z / directionless_as_inf(h.norm(dim=1))[:, None]
    per_row = (1 - alpha) * (torch.logsumexp(z, dim=1) - z.gather(1, y[:, None])[:, 0]) + alpha * (
        (cos - s) ** 2).sum(dim=1)
    return _reduce(per_row, valid, reduction)
