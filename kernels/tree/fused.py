"""Fused Triton path of the tree-frame loss (:mod:`haf.kernels.tree.loss` has the math and the reference).

No B × K tensor is ever stored, only one (row block × class block) tile in registers:

* ``_tree_stats`` (grid: row blocks × class splits, so a small batch still fills the GPU): per row and contiguous
  class range, z_i = Σ_l √a·h gathered along the path table ``anc`` minus β(u·h), S_iy = g of the last level
  where the paths of i and y agree; online logsumexp, z_y, Σr², Σr, Σz·r with r = z/n − S. The host merges the
  splits' partials (logsumexp merge, fixed order).
* ``_tree_dz``: recompute the tile, dz = (1 − α)(softmax − onehot) + (2α/n)·r, and store dz_i at leaf i's node
  column of a chunk × N fp32 buffer (every leaf written once: no atomics).
* ``_tree_children_sum``, one launch per depth level, deepest first: D_p = (own value) + Σ of its children's D in
  child order (nodes are breadth first, so a parent's children are contiguous): the subtree sums of the reference,
  in a fixed order. The whole backward is deterministic, with or without ``torch.use_deterministic_algorithms``.

The host forms dℓ/dh_v = √a_v·D_v − β·u_v·Σ_i dz_i + (dℓ/dn)·h_v/n, and the autograd Function scales the stored
gradient by the upstream one. Accumulation is fp32 whatever the feature dtype: rows go in chunks whose fp32 buffer
(chunk × N) fits ``WORK_BYTES``, each cast into the features' dtype, so bf16 features at K = 10⁶ hold no
B × (N − 1) fp32 copy of h or of dℓ/dh.
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
BLOCK_P = 64  # parents per program of the level sums
#: Budget of the fp32 buffer per row chunk (a multiple of BLOCK_B rows, at least BLOCK_B).
WORK_BYTES = 256 * 2**20
#: Fixed rows per chunk instead of the budget (None: from WORK_BYTES); tests set it.
ROW_CHUNK: int | None = None
#: Fixed class splits of the statistics kernel instead of ~4 programs per SM (None); tests set it.
CLASS_SPLITS: int | None = None
NUM_STATS = 6  # per (split, row): max, Σ exp(z − max), z_y, Σr², Σr, Σz·r


def _row_chunk(width: int, rows: int) -> int:
    if ROW_CHUNK is not None:
        return ROW_CHUNK
    chunk = max(BLOCK_B, (WORK_BYTES // (4 * (width + 1))) // BLOCK_B * BLOCK_B)
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
def _tile(h_ptr, stride_h, anc_ptr, sqrt_a_ptr, g_ptr, rows, row_mask, cls, cls_mask, y, shift, depth,
          BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """z (shifted by β·u·h) and S[i, y] for a rows × classes tile."""
    z = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
    s = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32) + tl.load(g_ptr)
    for level in range(1, depth):
        node = tl.load(anc_ptr + cls * depth + level, mask=cls_mask, other=-1)
        y_node = tl.load(anc_ptr + y * depth + level, mask=row_mask, other=-2)
        on = (node >= 1) & cls_mask
        weight = tl.load(sqrt_a_ptr + node, mask=on, other=0.0)
        hv = tl.load(h_ptr + rows[:, None] * stride_h + (node - 1)[None, :], mask=row_mask[:, None] & on[None, :],
                     other=0.0).to(tl.float32)
        z += hv * weight[None, :]
        g = tl.load(g_ptr + node, mask=on, other=0.0)
        s = tl.where((node[None, :] == y_node[:, None]) & on[None, :], g[None, :], s)
    return z - shift[:, None], s


@triton.jit
def _tree_stats(h_ptr, stride_h, anc_ptr, sqrt_a_ptr, g_ptr, y_ptr, shift_ptr, norm_ptr, out_ptr, batch, classes,
                depth, per_split, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
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
        z, s = _tile(h_ptr, stride_h, anc_ptr, sqrt_a_ptr, g_ptr, rows, row_mask, cls, cls_mask, y, shift, depth,
                     BLOCK_B, BLOCK_K)
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
def _tree_dz(h_ptr, stride_h, anc_ptr, sqrt_a_ptr, g_ptr, leaf_ptr, y_ptr, shift_ptr, norm_ptr, lse_ptr, buf_ptr,
             stride_buf, batch, classes, depth, alpha, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """dz for a rows × classes tile, stored at each class's leaf-node column of the buffer (one writer each)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cls = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_mask = rows < batch
    cls_mask = cls < classes
    y = tl.load(y_ptr + rows, mask=row_mask, other=0)
    shift = tl.load(shift_ptr + rows, mask=row_mask, other=0.0)
    n = tl.load(norm_ptr + rows, mask=row_mask, other=1.0)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    z, s = _tile(h_ptr, stride_h, anc_ptr, sqrt_a_ptr, g_ptr, rows, row_mask, cls, cls_mask, y, shift, depth,
                 BLOCK_B, BLOCK_K)
    onehot = tl.where(cls[None, :] == y[:, None], 1.0, 0.0)
    dz = (1.0 - alpha) * (tl.exp(z - lse[:, None]) - onehot) + (2.0 * alpha / n[:, None]) * (z / n[:, None] - s)
    leaf = tl.load(leaf_ptr + cls, mask=cls_mask, other=0)
    tl.store(buf_ptr + rows[:, None] * stride_buf + leaf[None, :], dz, mask=row_mask[:, None] & cls_mask[None, :])


@triton.jit
def _tree_children_sum(buf_ptr, stride_buf, first_child_ptr, child_count_ptr, batch, plo, phi, max_children,
                       BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr):
    """buf[:, p] += Σ_j buf[:, first_child[p] + j] over the children of parents p in [plo, phi), in child order."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    parents = plo + tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    row_mask = rows < batch
    p_mask = parents < phi
    first = tl.load(first_child_ptr + parents, mask=p_mask, other=0)
    count = tl.load(child_count_ptr + parents, mask=p_mask, other=0)
    mask = row_mask[:, None] & p_mask[None, :]
    base = buf_ptr + rows[:, None] * stride_buf
    acc = tl.load(base + parents[None, :], mask=mask, other=0.0)
    for j in range(0, max_children):
        child_mask = mask & (j < count)[None, :]
        acc += tl.load(base + (first + j)[None, :], mask=child_mask, other=0.0)
    tl.store(base + parents[None, :], acc, mask=mask)


def _row_dot(h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """h u per row: cuBLAS, unless deterministic algorithms are asked for (cuBLAS then needs
    CUBLAS_WORKSPACE_CONFIG); a product-and-sum in that case, which takes no workspace."""
    if h.is_cuda and torch.are_deterministic_algorithms_enabled():
        return (h * u).sum(dim=1)
    return torch.mv(h, u)


def _row_stats(h: torch.Tensor, frame: TreeFrameTensors, y: torch.Tensor, shift: torch.Tensor, n: torch.Tensor,
               tensors: dict) -> tuple[torch.Tensor, ...]:
    """(lse, z_y, Σr², Σr, Σz·r) per row: the splits' partials merged in split order."""
    batch = h.shape[0]
    row_blocks = triton.cdiv(batch, BLOCK_B)
    splits, per_split = class_splits(row_blocks, frame.num_classes, h.device)
    out = torch.empty(splits, batch, NUM_STATS, dtype=torch.float32, device=h.device)
    _tree_stats[(row_blocks, splits)](
        h, h.stride(0), tensors["anc"], tensors["sqrt_a"], tensors["g"], y, shift, n, out, batch,
        frame.num_classes, tensors["anc"].shape[1], per_split, BLOCK_B=BLOCK_B, BLOCK_K=BLOCK_K,
    )
    run_max = out[:, :, 0].amax(dim=0)
    run_sum = (out[:, :, 1] * torch.exp(out[:, :, 0] - run_max)).sum(dim=0)
    z_y, sum_r2, sum_r, sum_zr = out[:, :, 2:].sum(dim=0).unbind(1)
    return run_max + torch.log(run_sum), z_y, sum_r2, sum_r, sum_zr


def _subtree_sums(h, frame: TreeFrameTensors, y, shift, n, lse, tensors: dict, buffer: torch.Tensor, alpha):
    """buffer[:, v] = D_v = Σ_{leaves i under v} dz_i (fp32), deterministic: dz at the leaves, then level sums."""
    rows = h.shape[0]
    row_blocks = triton.cdiv(rows, BLOCK_B)
    buffer.zero_()
    _tree_dz[(row_blocks, triton.cdiv(frame.num_classes, BLOCK_K))](
        h, h.stride(0), tensors["anc"], tensors["sqrt_a"], tensors["g"], tensors["leaf_node"], y, shift, n, lse,
        buffer, buffer.stride(0), rows, frame.num_classes, tensors["anc"].shape[1], float(alpha),
        BLOCK_B=BLOCK_B, BLOCK_K=BLOCK_K,
    )
    for (_, _, plo, phi), max_children in zip(reversed(frame.levels), reversed(frame.level_max_children)):
        _tree_children_sum[(row_blocks, triton.cdiv(phi - plo, BLOCK_P))](
            buffer, buffer.stride(0), tensors["first_child"], tensors["child_count"], rows, plo, phi, max_children,
            BLOCK_B=BLOCK_B, BLOCK_P=BLOCK_P,
        )
    return buffer


class _TritonTreeFrameLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, frame, target, valid, alpha, need_grad=True):
        features = features.contiguous()
        # Cached per frame and device (TreeFrameTensors.cast): no per-step copies of the tree's tables.
        tensors = {"anc": frame.cast("anc", torch.int32), "sqrt_a": frame.cast("sqrt_a", torch.float32),
                   "g": frame.cast("g", torch.float32), "leaf_node": frame.cast("leaf_node", torch.int32),
                   "first_child": frame.cast("first_child", torch.int32),
                   "child_count": frame.cast("child_count", torch.int32)}
        u = frame.cast("u", torch.float32)[1:]
        sqrt_a = tensors["sqrt_a"][1:]
        targets = torch.where(valid, target.long(), torch.zeros_like(target, dtype=torch.long))
        losses = torch.empty(features.shape[0], dtype=torch.float32, device=features.device)
        out = torch.empty_like(features) if need_grad else features.new_empty(0, 0)
        chunk = _row_chunk(frame.width, features.shape[0])
        buffer = None
        for start in range(0, features.shape[0], chunk):
            h = features[start:start + chunk]
            y, keep = targets[start:start + chunk].contiguous(), valid[start:start + chunk]
            norm = torch.linalg.vector_norm(h, dim=1, dtype=torch.float32)
            n = directionless_as_inf(norm).contiguous()
            shift = (frame.beta * _row_dot(h.float() if h.dtype != torch.float32 else h, u)).contiguous()
            lse, z_y, sum_r2, sum_r, sum_zr = _row_stats(h, frame, y, shift, n, tensors)
            losses[start:start + h.shape[0]] = torch.where(keep, (1 - alpha) * (lse - z_y) + alpha * sum_r2, 0.0)
            if not need_grad:
                continue
            if buffer is None or buffer.shape[0] != h.shape[0]:
                buffer = torch.empty(h.shape[0], frame.num_nodes, dtype=torch.float32, device=h.device)
            _subtree_sums(h, frame, y, shift, n, lse.contiguous(), tensors, buffer, alpha)
            grad = buffer[:, 1:].mul_(sqrt_a)
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
