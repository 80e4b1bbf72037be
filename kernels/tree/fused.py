"""Fused Triton path of the tree-frame loss (:mod:`haf.kernels.tree.loss` has the math and the reference).

Two kernels over (row block × class chunk) tiles; no B × K tensor is ever stored, only one tile in registers:

* ``_tree_stats``: per row, walk the class chunks; z_i = Σ_l √a·h gathered along the path table ``anc`` minus
  β(u·h), S_iy = g of the last level where the paths of i and y agree; online logsumexp, z_y, Σr², Σr, Σz·r with
  r = z/n − S.
* ``_tree_grad``: recompute the tile, dz = (1 − α)(softmax − onehot) + (2α/n)·r, and add √a_v·dz_i into dℓ/dh_v
  for every node v on leaf i's path (atomic adds: the subtree sums D_v of the reference).

The host adds −β·u·Σ_i dz_i and the norm term (dℓ/dn)·h/n, and the autograd Function scales the stored gradient by
the upstream one. Accumulation is fp32 whatever the feature dtype: rows go in chunks whose fp32 gradient buffer
(chunk × (N − 1), for the atomics) fits ``WORK_BYTES``, each cast into the features' dtype, so bf16 features at
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
#: Budget of the fp32 gradient buffer per row chunk (a multiple of BLOCK_B rows, at least BLOCK_B).
WORK_BYTES = 256 * 2**20
#: Fixed rows per chunk instead of the budget (None: from WORK_BYTES); tests set it.
ROW_CHUNK: int | None = None


def _row_chunk(width: int, rows: int) -> int:
    if ROW_CHUNK is not None:
        return ROW_CHUNK
    chunk = max(BLOCK_B, (WORK_BYTES // (4 * width)) // BLOCK_B * BLOCK_B)
    return min(chunk, triton.cdiv(rows, BLOCK_B) * BLOCK_B)


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
                depth, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
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
    for start in range(0, classes, BLOCK_K):
        cls = start + tl.arange(0, BLOCK_K)
        cls_mask = cls < classes
        z, s = _tile(h_ptr, stride_h, anc_ptr, sqrt_a_ptr, g_ptr, rows, row_mask, cls, cls_mask, y, shift, depth,
                     BLOCK_B, BLOCK_K)
        live = cls_mask[None, :]
        new_max = tl.maximum(run_max, tl.max(tl.where(live, z, -float("inf")), axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.where(live, tl.exp(z - new_max[:, None]), 0.0), 1)
        run_max = new_max
        r = tl.where(live, z / n[:, None] - s, 0.0)
        z_y += tl.sum(tl.where(cls[None, :] == y[:, None], z, 0.0), axis=1)
        sum_r2 += tl.sum(r * r, axis=1)
        sum_r += tl.sum(r, axis=1)
        sum_zr += tl.sum(tl.where(live, z, 0.0) * r, axis=1)
    out = out_ptr + rows * 5
    tl.store(out, run_max + tl.log(run_sum), mask=row_mask)
    tl.store(out + 1, z_y, mask=row_mask)
    tl.store(out + 2, sum_r2, mask=row_mask)
    tl.store(out + 3, sum_r, mask=row_mask)
    tl.store(out + 4, sum_zr, mask=row_mask)


@triton.jit
def _tree_grad(h_ptr, stride_h, anc_ptr, sqrt_a_ptr, g_ptr, y_ptr, shift_ptr, norm_ptr, lse_ptr, grad_ptr,
               stride_g, batch, classes, depth, alpha, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
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
    tile_mask = row_mask[:, None] & cls_mask[None, :]
    for level in range(1, depth):
        node = tl.load(anc_ptr + cls * depth + level, mask=cls_mask, other=-1)
        on = (node >= 1) & cls_mask
        weight = tl.load(sqrt_a_ptr + node, mask=on, other=0.0)
        tl.atomic_add(grad_ptr + rows[:, None] * stride_g + (node - 1)[None, :], dz * weight[None, :],
                      mask=tile_mask & on[None, :])


def _row_stats(h: torch.Tensor, frame: TreeFrameTensors, y: torch.Tensor, shift: torch.Tensor, n: torch.Tensor,
               tensors: dict) -> torch.Tensor:
    batch = h.shape[0]
    out = torch.empty(batch, 5, dtype=torch.float32, device=h.device)
    _tree_stats[(triton.cdiv(batch, BLOCK_B),)](
        h, h.stride(0), tensors["anc"], tensors["sqrt_a"], tensors["g"], y, shift, n, out, batch,
        frame.num_classes, tensors["anc"].shape[1], BLOCK_B=BLOCK_B, BLOCK_K=BLOCK_K,
    )
    return out


class _TritonTreeFrameLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, frame, target, valid, alpha, need_grad=True):
        features = features.contiguous()
        # Cached per frame and device (TreeFrameTensors.cast): no per-step copies of the tree's tables.
        tensors = {"anc": frame.cast("anc", torch.int32), "sqrt_a": frame.cast("sqrt_a", torch.float32),
                   "g": frame.cast("g", torch.float32)}
        u = frame.cast("u", torch.float32)[1:]
        targets = torch.where(valid, target.long(), torch.zeros_like(target, dtype=torch.long))
        losses = torch.empty(features.shape[0], dtype=torch.float32, device=features.device)
        out = torch.empty_like(features) if need_grad else features.new_empty(0, 0)
        chunk = _row_chunk(frame.width, features.shape[0])
        grad = None
        for start in range(0, features.shape[0], chunk):
            h = features[start:start + chunk]
            y, keep = targets[start:start + chunk].contiguous(), valid[start:start + chunk]
            norm = torch.linalg.vector_norm(h, dim=1, dtype=torch.float32)
            n = directionless_as_inf(norm).contiguous()
            shift = (frame.beta * torch.mv(h.float() if h.dtype != torch.float32 else h, u)).contiguous()
            lse, z_y, sum_r2, sum_r, sum_zr = _row_stats(h, frame, y, shift, n, tensors).unbind(1)
            losses[start:start + h.shape[0]] = torch.where(keep, (1 - alpha) * (lse - z_y) + alpha * sum_r2, 0.0)
            if not need_grad:
                continue
            if grad is None or grad.shape[0] != h.shape[0]:
                grad = torch.empty(h.shape, dtype=torch.float32, device=h.device)
            grad.zero_()
            _tree_grad[(triton.cdiv(h.shape[0], BLOCK_B), triton.cdiv(frame.num_classes, BLOCK_K))](
                h, h.stride(0), tensors["anc"], tensors["sqrt_a"], tensors["g"], y, shift, n, lse.contiguous(),
                grad, grad.stride(0), h.shape[0], frame.num_classes, tensors["anc"].shape[1], float(alpha),
                BLOCK_B=BLOCK_B, BLOCK_K=BLOCK_K,
            )
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
