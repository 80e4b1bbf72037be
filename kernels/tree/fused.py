"""Fused Triton path of the tree-frame loss (:mod:`haf.kernels.tree.loss` has the math and the reference).

No B × K tensor is ever stored, only one (row block × class block) tile in registers. Per row chunk, two fp32
chunk × N buffers hold per-node quantities, built in O(N) per row (no K × H path table, so a tree thousands of
levels deep costs what its nodes cost):

* ``_tree_mark_path``: the nodes on y_b's root path get g(v) in the similarity buffer E (every other node holds
  +inf), walking up from y_b's leaf with ``parent`` (one program per row block, depth of the deepest class steps).
* ``_tree_path_level``, one launch per depth level, shallowest first: P_v = P_parent + √a_v·h_v (the path sums,
  P_root = 0) and E_v = E_parent where E_v is still unset, so E_v = g(LCA(v, y_b)).
* ``_tree_stats`` (grid: row blocks × class splits, so a small batch still fills the GPU): per row and contiguous
  class range, z_i = P[leaf i] − β(u·h) and S_iy = E[leaf i]; online logsumexp, z_y, Σr², Σr, Σz·r with
  r = z/n − S. The host merges the splits' partials (logsumexp merge, fixed order).
* ``_tree_dz``: recompute the tile, dz = (1 − α)(softmax − onehot) + (2α/n)·r, and store dz_i over P at leaf i's
  column (each element read and then written by one program: no atomics).
* ``_tree_children_sum``, one launch per depth level, deepest first: D_p = Σ of its children's D in child order
  for every parent with children (nodes are breadth first, so a parent's children are contiguous); a leaf keeps
  its dz. The subtree sums of the reference, in a fixed order: the whole backward is deterministic, with or
  without ``torch.use_deterministic_algorithms``.

The host forms dℓ/dh_v = √a_v·D_v − β·u_v·Σ_i dz_i + (dℓ/dn)·h_v/n, and the autograd Function scales the stored
gradient by the upstream one. Accumulation is fp32 whatever the feature dtype: rows go in chunks whose two fp32
buffers (2 × chunk × N) fit ``WORK_BYTES``, the gradient cast into the features' dtype, so bf16 features at
K = 10⁶ hold no B × (N − 1) fp32 copy of h or of dℓ/dh.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from haf.kernels.dense.reference import FEATURE_EPS
from haf.kernels.tree.tensors import TreeFrameTensors, directionless_as_inf, scale_saved_gradient

__all__ = ["triton_tree_frame_rows"]

BLOCK_B = 16
BLOCK_K = 64
BLOCK_P = 64  # nodes per program of the level passes
#: Budget of the two fp32 buffers per row chunk (a multiple of BLOCK_B rows, at least BLOCK_B).
WORK_BYTES = 256 * 2**20
#: Fixed rows per chunk instead of the budget (None: from WORK_BYTES); tests set it.
ROW_CHUNK: int | None = None
#: Fixed class splits of the statistics kernel instead of ~4 programs per SM (None); tests set it.
CLASS_SPLITS: int | None = None
NUM_STATS = 6  # per (split, row): max, Σ exp(z − max), z_y, Σr², Σr, Σz·r


def _row_chunk(width: int, rows: int) -> int:
    if ROW_CHUNK is not None:
        return ROW_CHUNK
    chunk = max(BLOCK_B, (WORK_BYTES // (2 * 4 * (width + 1))) // BLOCK_B * BLOCK_B)
    return min(chunk, triton.cdiv(rows, BLOCK_B) * BLOCK_B)


def class_splits(row_blocks: int, classes: int, device: torch.device) -> tuple[int, int]:
    """(splits, classes per split) of the statistics kernel: about 4 programs per SM, whole class blocks each."""
    blocks = triton.cdiv(classes, BLOCK_K)
    if CLASS_SPLITS is not None:
        wanted = CLASS_SPLITS
    else:
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
        wanted = triton.cdiv(4 * sms, row_blocks)
    per_split = triton.cdiv(blocks, max(1, min(wanted, blocks))) * BLOCK_K
    return triton.cdiv(classes, per_split), per_split


@triton.jit
def _tree_mark_path(sim_ptr, stride_buf, y_ptr, leaf_ptr, parent_ptr, g_ptr, batch, steps, BLOCK_B: tl.constexpr):
    """E[b, v] = g(v) for the nodes v on y_b's root path: ``steps`` walks up from the leaf (the root is its own
    parent, so a shallower leaf rewrites the root's value)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < batch
    y = tl.load(y_ptr + rows, mask=row_mask, other=0)
    node = tl.load(leaf_ptr + y, mask=row_mask, other=0)
    for _step in range(0, steps):
        tl.store(sim_ptr + rows * stride_buf + node, tl.load(g_ptr + node), mask=row_mask)
        node = tl.load(parent_ptr + node)


@triton.jit
def _tree_path_level(h_ptr, stride_h, path_ptr, sim_ptr, stride_buf, parent_ptr, sqrt_a_ptr, batch, lo, hi,
                     BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr):
    """For the nodes v in [lo, hi) (one depth level): P_v = P_parent + √a_v·h_v; E_v = E_parent unless v is on
    the row's target path (E_v already set, < +inf)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    nodes = lo + tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    row_mask = rows < batch
    node_mask = nodes < hi
    mask = row_mask[:, None] & node_mask[None, :]
    up = tl.load(parent_ptr + nodes, mask=node_mask, other=0)
    weight = tl.load(sqrt_a_ptr + nodes, mask=node_mask, other=0.0)
    hv = tl.load(h_ptr + rows[:, None] * stride_h + (nodes - 1)[None, :], mask=mask, other=0.0).to(tl.float32)
    base = rows[:, None] * stride_buf
    above = tl.load(path_ptr + base + up[None, :], mask=mask, other=0.0)
    tl.store(path_ptr + base + nodes[None, :], above + hv * weight[None, :], mask=mask)
    own = tl.load(sim_ptr + base + nodes[None, :], mask=mask, other=0.0)
    inherited = tl.load(sim_ptr + base + up[None, :], mask=mask, other=0.0)
    tl.store(sim_ptr + base + nodes[None, :], tl.where(own == float("inf"), inherited, own), mask=mask)


@triton.jit
def _tile(path_ptr, sim_ptr, stride_buf, leaf_ptr, rows, row_mask, cls, cls_mask, shift):
    """z (shifted by β·u·h) and S[i, y] for a rows × classes tile, read at the classes' leaf columns."""
    leaf = tl.load(leaf_ptr + cls, mask=cls_mask, other=0)
    mask = row_mask[:, None] & cls_mask[None, :]
    offsets = rows[:, None] * stride_buf + leaf[None, :]
    z = tl.load(path_ptr + offsets, mask=mask, other=0.0)
    s = tl.load(sim_ptr + offsets, mask=mask, other=0.0)
    return z - shift[:, None], s


@triton.jit
def _tree_stats(path_ptr, sim_ptr, stride_buf, leaf_ptr, y_ptr, shift_ptr, norm_ptr, out_ptr, batch, classes,
                per_split, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """Partials of rows × the class range [pid₁·per_split, +per_split) at out[pid₁, row, :] (NUM_STATS each)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    split = tl.program_id(1)
    row_mask = rows < batch
    y = tl.load(y_ptr + rows, mask=row_mask, other=0)
    shift = tl.load(shift_ptr + rows, mask=row_mask, other=0.0)
    n = tl.load(norm_ptr + rows, mask=row_mask, other=1.0)
    run_max = tl.zeros((BLOCK_B,), dtype=tl.float32) - float("inf")
    run_sum = tl.zeros((BLOCK_B,), dtype=tl.float32)
    z_y = tl.zeros((BLOCK_B,), dtype=tl.float32)
    sum_r2 = tl.zeros((BLOCK_B,), dtype=tl.float32)
    sum_r = tl.zeros((BLOCK_B,), dtype=tl.float32)
    sum_zr = tl.zeros((BLOCK_B,), dtype=tl.float32)
    first = split * per_split
    last = tl.minimum(first + per_split, classes)
    for start in range(first, last, BLOCK_K):
        cls = start + tl.arange(0, BLOCK_K)
        cls_mask = cls < last
        z, s = _tile(path_ptr, sim_ptr, stride_buf, leaf_ptr, rows, row_mask, cls, cls_mask, shift)
        live = cls_mask[None, :]
        new_max = tl.maximum(run_max, tl.max(tl.where(live, z, -float("inf")), axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.where(live, tl.exp(z - new_max[:, None]), 0.0), 1)
        run_max = new_max
        r = tl.where(live, z / n[:, None] - s, 0.0)
        z_y += tl.sum(tl.where((cls[None, :] == y[:, None]) & live, z, 0.0), axis=1)
        sum_r2 += tl.sum(r * r, axis=1)
        sum_r += tl.sum(r, axis=1)
        sum_zr += tl.sum(tl.where(live, z, 0.0) * r, axis=1)
    out = out_ptr + (split * batch + rows) * 6
    tl.store(out, run_max, mask=row_mask)
    tl.store(out + 1, run_sum, mask=row_mask)
    tl.store(out + 2, z_y, mask=row_mask)
    tl.store(out + 3, sum_r2, mask=row_mask)
    tl.store(out + 4, sum_r, mask=row_mask)
    tl.store(out + 5, sum_zr, mask=row_mask)


@triton.jit
def _tree_dz(path_ptr, sim_ptr, stride_buf, leaf_ptr, y_ptr, shift_ptr, norm_ptr, lse_ptr, batch, classes, alpha,
             BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """dz for a rows × classes tile, stored over P at each class's leaf-node column (read, then written, by this
    program only)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cls = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_mask = rows < batch
    cls_mask = cls < classes
    y = tl.load(y_ptr + rows, mask=row_mask, other=0)
    shift = tl.load(shift_ptr + rows, mask=row_mask, other=0.0)
    n = tl.load(norm_ptr + rows, mask=row_mask, other=1.0)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    z, s = _tile(path_ptr, sim_ptr, stride_buf, leaf_ptr, rows, row_mask, cls, cls_mask, shift)
    onehot = tl.where(cls[None, :] == y[:, None], 1.0, 0.0)
    dz = (1.0 - alpha) * (tl.exp(z - lse[:, None]) - onehot) + (2.0 * alpha / n[:, None]) * (z / n[:, None] - s)
    leaf = tl.load(leaf_ptr + cls, mask=cls_mask, other=0)
    tl.store(path_ptr + rows[:, None] * stride_buf + leaf[None, :], dz, mask=row_mask[:, None] & cls_mask[None, :])


@triton.jit
def _tree_children_sum(buf_ptr, stride_buf, first_child_ptr, child_count_ptr, batch, plo, phi, max_children,
                       BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr):
    """buf[:, p] = Σ_j buf[:, first_child[p] + j] over the children of the nodes p in [plo, phi) that have
    children, in child order (a leaf keeps its value; an inner node's old value, its path sum, is replaced)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    parents = plo + tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    row_mask = rows < batch
    p_mask = parents < phi
    first = tl.load(first_child_ptr + parents, mask=p_mask, other=0)
    count = tl.load(child_count_ptr + parents, mask=p_mask, other=0)
    mask = row_mask[:, None] & p_mask[None, :]
    base = buf_ptr + rows[:, None] * stride_buf
    acc = tl.zeros((BLOCK_B, BLOCK_P), dtype=tl.float32)
    for j in range(0, max_children):
        child_mask = mask & (j < count)[None, :]
        acc += tl.load(base + (first + j)[None, :], mask=child_mask, other=0.0)
    tl.store(base + parents[None, :], acc, mask=mask & (count > 0)[None, :])


def _row_dot(h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """h u per row: cuBLAS, unless deterministic algorithms are asked for (cuBLAS then needs
    CUBLAS_WORKSPACE_CONFIG); a product-and-sum in that case, which takes no workspace."""
    if h.is_cuda and torch.are_deterministic_algorithms_enabled():
        return (h * u).sum(dim=1)
    return torch.mv(h, u)


def _node_buffers(h: torch.Tensor, frame: TreeFrameTensors, y: torch.Tensor, tensors: dict,
                  path: torch.Tensor, sim: torch.Tensor) -> None:
    """path[:, v] = P_v (root → v sums of √a·h, P_root = 0), sim[:, v] = g(LCA(v, y_b)): one walk up each target's
    path, then one launch per depth level, O(chunk × N)."""
    rows = h.shape[0]
    row_blocks = triton.cdiv(rows, BLOCK_B)
    path[:, 0] = 0
    sim.fill_(float("inf"))
    _tree_mark_path[(row_blocks,)](sim, sim.stride(0), y, tensors["leaf_node"], tensors["parent"], tensors["g"],
                                   rows, frame.height + 1, BLOCK_B=BLOCK_B)
    for lo, hi, _, _ in frame.levels:
        _tree_path_level[(row_blocks, triton.cdiv(hi - lo, BLOCK_P))](
            h, h.stride(0), path, sim, path.stride(0), tensors["parent"], tensors["sqrt_a"], rows, lo, hi,
            BLOCK_B=BLOCK_B, BLOCK_P=BLOCK_P,
        )


def _row_stats(frame: TreeFrameTensors, y: torch.Tensor, shift: torch.Tensor, n: torch.Tensor, tensors: dict,
               path: torch.Tensor, sim: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(lse, z_y, Σr², Σr, Σz·r) per row: the splits' partials merged in split order."""
    batch = y.shape[0]
    row_blocks = triton.cdiv(batch, BLOCK_B)
    splits, per_split = class_splits(row_blocks, frame.num_classes, path.device)
    out = torch.empty(splits, batch, NUM_STATS, dtype=torch.float32, device=path.device)
    _tree_stats[(row_blocks, splits)](
        path, sim, path.stride(0), tensors["leaf_node"], y, shift, n, out, batch, frame.num_classes, per_split,
        BLOCK_B=BLOCK_B, BLOCK_K=BLOCK_K,
    )
    run_max = out[:, :, 0].amax(dim=0)
    run_sum = (out[:, :, 1] * torch.exp(out[:, :, 0] - run_max)).sum(dim=0)
    z_y, sum_r2, sum_r, sum_zr = out[:, :, 2:].sum(dim=0).unbind(1)
    return run_max + torch.log(run_sum), z_y, sum_r2, sum_r, sum_zr


def _subtree_sums(frame: TreeFrameTensors, y, shift, n, lse, tensors: dict, path: torch.Tensor,
                  sim: torch.Tensor, alpha) -> torch.Tensor:
    """path[:, v] = D_v = Σ_{leaves i under v} dz_i (fp32), deterministic: dz over the leaves' path sums, then
    level sums that replace every inner node's value."""
    rows = y.shape[0]
    row_blocks = triton.cdiv(rows, BLOCK_B)
    _tree_dz[(row_blocks, triton.cdiv(frame.num_classes, BLOCK_K))](
        path, sim, path.stride(0), tensors["leaf_node"], y, shift, n, lse, rows, frame.num_classes, float(alpha),
        BLOCK_B=BLOCK_B, BLOCK_K=BLOCK_K,
    )
    for (_, _, plo, phi), max_children in zip(reversed(frame.levels), reversed(frame.level_max_children)):
        _tree_children_sum[(row_blocks, triton.cdiv(phi - plo, BLOCK_P))](
            path, path.stride(0), tensors["first_child"], tensors["child_count"], rows, plo, phi, max_children,
            BLOCK_B=BLOCK_B, BLOCK_P=BLOCK_P,
        )
    return path


class _TritonTreeFrameLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, frame, target, valid, alpha, need_grad=True):
        features = features.contiguous()
        # Cached per frame and device (TreeFrameTensors.cast): no per-step copies of the tree's tables.
        tensors = {"parent": frame.cast("parent", torch.int32), "sqrt_a": frame.cast("sqrt_a", torch.float32),
                   "g": frame.cast("g", torch.float32), "leaf_node": frame.cast("leaf_node", torch.int32),
                   "first_child": frame.cast("first_child", torch.int32),
                   "child_count": frame.cast("child_count", torch.int32)}
        u = frame.cast("u", torch.float32)[1:]
        sqrt_a = tensors["sqrt_a"][1:]
        targets = torch.where(valid, target.long(), torch.zeros_like(target, dtype=torch.long))
        losses = torch.empty(features.shape[0], dtype=torch.float32, device=features.device)
        out = torch.empty_like(features) if need_grad else features.new_empty(0, 0)
        chunk = _row_chunk(frame.width, features.shape[0])
        path = sim = None
        for start in range(0, features.shape[0], chunk):
            h = features[start:start + chunk]
            y, keep = targets[start:start + chunk].contiguous(), valid[start:start + chunk]
            norm = torch.linalg.vector_norm(h, dim=1, dtype=torch.float32)
            n = directionless_as_inf(norm).contiguous()
            shift = (frame.beta * _row_dot(h.float() if h.dtype != torch.float32 else h, u)).contiguous()
            if path is None or path.shape[0] != h.shape[0]:
                path, sim = (torch.empty(h.shape[0], frame.num_nodes, dtype=torch.float32, device=h.device)
                             for _ in range(2))
            _node_buffers(h, frame, y, tensors, path, sim)
            lse, z_y, sum_r2, sum_r, sum_zr = _row_stats(frame, y, shift, n, tensors, path, sim)
            losses[start:start + h.shape[0]] = torch.where(keep, (1 - alpha) * (lse - z_y) + alpha * sum_r2, 0.0)
            if not need_grad:
                continue
            grad = _subtree_sums(frame, y, shift, n, lse.contiguous(), tensors, path, sim, alpha)[:, 1:].mul_(sqrt_a)
            # Σ_i dz_i = (2α/n)·Σ_i r_i (the softmax part sums to 0); dℓ/dn = −(2α/n²)·Σ_i z_i r_i.
            sum_dz = (2 * alpha / n) * sum_r
            d_norm = torch.where(norm >= FEATURE_EPS, -(2 * alpha / n**2) * sum_zr, torch.zeros_like(sum_zr))
            grad.addr_(sum_dz, u, alpha=-frame.beta)
            grad.addcmul_(h, (d_norm / n)[:, None])
            grad.mul_(keep[:, None])
            out[start:start + h.shape[0]] = grad  # cast to the features' dtype
        ctx.save_for_backward(out)
        return losses

    backward = staticmethod(scale_saved_gradient)


def triton_tree_frame_rows(features: torch.Tensor, frame: TreeFrameTensors, target: torch.Tensor,
                           valid: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-row losses (0 at ignored rows) with dℓ/dh through autograd; inputs already validated."""
    need_grad = torch.is_grad_enabled() and features.requires_grad
    return _TritonTreeFrameLoss.apply(features, frame, target, valid, alpha, need_grad)
