"""Fused Triton path of the HAFrame loss: three kernels, dL/dh computed in the forward, no B × K tensor kept.

The operation (reference: :func:`haf.losses.hierarchy_frame_loss`), per row b, with z = h Wᵀ::

    n      = max(‖h‖, ε),  r_i = 1 / max(‖w_i‖, ε)       (ε = haf.losses.COSINE_EPS; the frame is not assumed unit)
    cos_i  = r_i z_i / n
    ℓ      = (1 − α) (logsumexp(z) − z_y) + α Σ_i (cos_i − S[i, y])²

and its gradient, exact and free of cancellation (no P = S·W identity: the squared differences are formed
directly from the gathered row S[·, y], so near convergence, where cos_i ≈ S[i, y], nothing cancels)::

    g_i    = (1 − α)(p_i − δ_iy) + 2α (cos_i − S[i, y]) r_i / n            p = softmax(z)
    a      = −(2α / n²) Σ_i (cos_i − S[i, y]) cos_i                       (0 when ‖h‖ < ε: n is then constant)
    dℓ/dh  = Σ_i g_i w_i + a h  =  (G W)_b + a_b h_b

So dL/dh is one GEMM (G W) plus a per-row scalar times h, and G needs only row statistics of z (logsumexp, z_y)
and the gathered similarity row. W is fixed (no dW) and the loss is terminal, so, as in Liger-Kernel's fused
linear cross-entropy, the gradient is computed *inside the forward*: the backward only scales it by grad_output.

Kernels, per chunk of rows (grid sizes for B rows, K classes, D features):

1. ``_logits_stats_kernel`` — z = h Wᵀ tile by tile (tl.dot, fp32 accumulator; 2BDK flops), ‖h‖² from the same
   h tiles, and an epilogue that writes z (fp32) and five per-(row, class tile) partials: tile max,
   Σ_{i≠y} exp(z_i − max), z_y, Σ (cos − S)², Σ (cos − S) cos. Padded classes are −inf in the max/exp and 0 in
   every sum. The softmax sum leaves the target out so that a confident row (z_y far above the rest) keeps its
   cross-entropy log1p(Σ_{i≠y} e^{z_i − z_y}) and its gradient p_y − 1 = −Σ_{i≠y} p_i to full relative precision,
   where 1 + tiny would round to 1 (eager PyTorch returns 0 for both below ~6e-8).
2. ``_softmax_grad_kernel`` — merges the partials into logsumexp and the row loss (online-softmax rule), writes
   the weighted row loss, a and the row's batch weight, then turns z into G (in place for fp32; a bf16/fp16
   copy otherwise, the dtype of the second GEMM's operand). Memory-bound, once per element.
3. ``_grad_features_kernel`` — dH = weight ⊙ (G W + a ⊙ h) (tl.dot over K; 2BDK flops). Skipped without grad.

Total 4BDK flops (no logits recompute). The batch weight (1 for "sum"/"none", 1/#counted rows for "mean") is
applied in kernel 3's epilogue, not folded into G: G keeps the O(1) scale of p − δ, so an fp16 G does not lose
its small entries to underflow when 1/B is tiny. dH is the gradient for grad_output = 1; the backward multiplies by grad_output
(loss scaling, "none" reductions) — one elementwise launch. The mean's count is summed on the device by each
program of kernel 2 from the targets (O(B) loads, cheap next to a B-chunk × K tile sweep): no ``.item()``, no host
synchronisation anywhere after the first call, so the whole loss is CUDA-graph capturable (the first call per
frame/similarity fills a cache, see ``_prepare_*``; warm up before capture, as for any graph).

Why not one kernel per row block that holds a whole row of z in registers (attractive for small K)? At the paper
shapes it launches B / BLOCK_B programs — 16 at (256, 1010, 1010) for 132 SMs — and G W then needs the register
row sliced along K, which Triton cannot do; the three tiled kernels launch ≥ 64 programs each at that shape and
share one code path with the large regime. Launches stay at 4 per forward (3 kernels + the batch sum) and 1 per
backward, against ~30 for the eager reference.

Regimes of DESIGN.md §6 (bf16; counts for the whole forward + backward). "Traffic" is this design's ideal HBM
traffic, ≈ 20·B·K + 4·chunks·K·D + 10·B·D bytes: z written and read (8 B/elt), the similarity row gathered in
kernels 1 and 2 (8 B/elt), G written and read (4 B/elt); W read by both GEMMs once per chunk; h read twice, dH
written, then read and rewritten by the backward. Times assume 3.35 TB/s and 650 TFLOP/s (an H100 SXM Triton GEMM):

============================  ===========  ========================  ==========================================
(B, D, K)                      4·B·D·K      traffic                   bound
============================  ===========  ========================  ==========================================
(64, 100, 100)                 2.6 MFLOP    ~0.2 MB                   launch (< 1 µs of work per kernel)
(256, 1010, 1010)              1.04 GFLOP   ~12 MB                    launch (≈ 2 µs math, ≈ 3.5 µs memory)
(1024, 608, 608)               1.51 GFLOP   ~20 MB                    launch (≈ 2.5 µs math, ≈ 6 µs memory)
(4096, 10000, 10000)           1.64 TFLOP   ~2.0 GB (2 chunks)        compute (≈ 2.5 ms math, ≈ 0.6 ms memory)
(8192, 2048, 32000)            2.15 TFLOP   ~7.5 GB (8 chunks)        compute (≈ 3.3 ms math, ≈ 2.2 ms memory)
============================  ===========  ========================  ==========================================

At the wide shape kernel 2 is a serial, memory-bound pass (≈ 10 B/elt, ≈ 0.8 ms) between the two GEMMs and
W (131 MB) is re-read by both GEMMs for each of the 8 chunks, so the expected total is ≈ 4.5 ms, ≈ 480 TFLOP/s —
just under the 50%-of-peak target; a larger ``chunk_bytes`` trades transient memory for fewer W re-reads (256 MiB:
6 chunks, still < 10% of the reference's peak). The alternative (G computed inside
kernel 3's prologue) saves G's 4 B/elt but recomputes exp(z − lse) and re-gathers S once per D block (16× at
D = 2048), which costs more than it saves.

Memory: between forward and backward only dH (B × D, input dtype; fp32 for fp16 inputs, whose 5-bit exponent
would underflow the unscaled gradient before a loss scaler multiplies it) is kept. Transients per chunk: z (fp32)
and G (input dtype; in place over z for fp32) — ``KernelConfig.chunk_bytes`` bounds them (default 128 MiB), but a
chunk is never so small that kernel 3 leaves SMs idle. The eager reference keeps several B × K fp32 tensors
(logits, log-softmax, cosines, gathered targets, squares and their gradients).

Precision: every dot accumulates in fp32; ‖h‖² is summed in fp32 from the input-dtype values; fp32 inputs use the
input precision torch's ``get_float32_matmul_precision`` asks for ("highest" → IEEE fp32, else TF32), so the fused
path and the eager reference follow the same policy. All offsets are int64 (B·K passes 2³¹ at the large shapes).
"""
from __future__ import annotations

import dataclasses
import math
import weakref
from collections import OrderedDict
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from haf.losses import COSINE_EPS, check_frame_loss_inputs, check_target_range

__all__ = ["INTERPRETED", "KernelConfig", "choose_config", "fused_frame_loss_forward", "triton_frame_loss"]

#: Input dtypes with a tl.dot path (fp64 stays on the reference).
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Number of per-(row, class tile) partial statistics kernel 1 writes (max, Σ_{i≠y} exp, z_y, Σ diff², Σ diff·cos).
NUM_PARTIALS = 5


# ----------------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _grouped_tile(pid, num_row_blocks, num_col_blocks, GROUP: tl.constexpr):
    """Launch order of the Triton matmul tutorial: GROUP row blocks sweep the column blocks together, so the
    programs running at one time share a few row panels and a few column panels, which then stay in L2."""
    per_group = GROUP * num_col_blocks
    group = pid // per_group
    first_row = group * GROUP
    rows_in_group = tl.minimum(num_row_blocks - first_row, GROUP)
    pid_row = first_row + (pid % per_group) % rows_in_group
    pid_col = (pid % per_group) // rows_in_group
    return pid_row, pid_col


@triton.jit
def _log1p(x):
    """log(1 + x) to full relative precision for small x (Goldberg's trick: the rounding of u = 1 + x is
    divided back out); portable where libdevice's log1p is not (interpreter, other backends)."""
    u = 1.0 + x
    exact = u == 1.0
    return tl.where(exact, x, tl.log(u) * tl.math.div_rn(x, tl.where(exact, 1.0, u - 1.0)))


@triton.jit
def _logits_stats_kernel(
    h_ptr, w_ptr, inv_wnorm_ptr, table_ptr, y_ptr,  # inputs: h (B×D), W (K×D), r (K), S-table (K×K), y (B)
    z_ptr, part_ptr, hnorm_ptr,  # outputs: z (B×K fp32), partials (5×B×T fp32), ‖h‖ (B fp32)
    B, D, K, T, ignore_index,
    stride_hb, stride_hd, stride_wk, stride_wd, stride_table, stride_zb, stride_pq, stride_pb,
    EPS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, STORE_Z: tl.constexpr,
):
    """One (BLOCK_B rows × BLOCK_K classes) tile of z = h Wᵀ and its row partial statistics."""
    pid_b, pid_k = _grouped_tile(tl.program_id(0), tl.cdiv(B, BLOCK_B), tl.cdiv(K, BLOCK_K), GROUP)
    rows = pid_b.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < B
    col_ok = cols < K

    acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
    sumsq = tl.zeros((BLOCK_B,), dtype=tl.float32)
    # Main loop in the Triton matmul tutorial's style: rows and classes past the edge are wrapped (% B, % K) onto
    # valid ones, so only the reduction tail needs a mask, and the pointers advance by BLOCK_D per step (the int64
    # row offsets are formed once). Wrapped rows/classes compute throw-away values that no store writes.
    offs_d = tl.arange(0, BLOCK_D)
    h_ptrs = h_ptr + (rows % B)[:, None] * stride_hb + offs_d[None, :] * stride_hd
    w_ptrs = w_ptr + (cols % K)[:, None] * stride_wk + offs_d[None, :] * stride_wd
    for d0 in range(0, D, BLOCK_D):
        d_ok = (d0 + offs_d) < D
        h = tl.load(h_ptrs, mask=d_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=d_ok[None, :], other=0.0)
        h_ptrs += BLOCK_D * stride_hd
        w_ptrs += BLOCK_D * stride_wd
        h32 = h.to(tl.float32)
        sumsq += tl.sum(h32 * h32, axis=1)  # every class tile needs ‖h‖; it rides on tiles already loaded
        if UPCAST_DOT:  # interpreter only: its tl.dot multiplies bf16 bit patterns (see _upcast_dot)
            acc = tl.dot(h32, tl.trans(w.to(tl.float32)), acc, input_precision=INPUT_PRECISION)
        else:
            acc = tl.dot(h, tl.trans(w), acc, input_precision=INPUT_PRECISION)

    hnorm = tl.sqrt_rn(sumsq)
    n = tl.maximum(hnorm, EPS)
    inv_w = tl.load(inv_wnorm_ptr + cols, mask=col_ok, other=0.0)
    y = tl.load(y_ptr + rows, mask=row_ok, other=ignore_index).to(tl.int64)
    has_class = row_ok & (y != ignore_index) & (y >= 0) & (y < K)
    y_safe = tl.where(has_class, y, 0)
    # table[y, i] = S[i, y]: one contiguous row per sample (see _prepare_similarity).
    target_cos = tl.load(
        table_ptr + y_safe[:, None] * stride_table + cols[None, :],
        mask=has_class[:, None] & col_ok[None, :], other=0.0,
    )
    # Divisions that feed the cosine term are IEEE-rounded (div_rn; plain ``/`` compiles to a 2-ulp approximation
    # on NVIDIA GPUs): its gradient is a difference of two large, nearly equal terms (Σ c_i w_i and a·h), so every
    # rounding of 1/n shows in dL/dh. Operands are broadcast by hand: div_rn does not broadcast.
    n_tile = tl.broadcast_to(n[:, None], (BLOCK_B, BLOCK_K))
    cos = tl.math.div_rn(acc * inv_w[None, :], n_tile)  # 0 on padded classes (r = 0 there)
    diff = tl.where(col_ok[None, :], cos - target_cos, 0.0)  # cos_i − S[i, y], formed directly
    sq = tl.sum(diff * diff, axis=1)
    dc = tl.sum(diff * cos, axis=1)
    masked = tl.where(col_ok[None, :], acc, float("-inf"))  # padded classes leave the logsumexp
    tile_max = tl.max(masked, axis=1)
    is_target = cols[None, :] == y[:, None]
    tile_sum = tl.sum(tl.where(is_target, 0.0, tl.exp(masked - tile_max[:, None])), axis=1)  # Σ_{i≠y}
    z_y = tl.sum(tl.where(is_target, acc, 0.0), axis=1)

    if STORE_Z:
        tl.store(z_ptr + rows[:, None] * stride_zb + cols[None, :], acc, mask=row_ok[:, None] & col_ok[None, :])
    part = part_ptr + rows * stride_pb + pid_k
    tl.store(part, tile_max, mask=row_ok)
    tl.store(part + stride_pq, tile_sum, mask=row_ok)
    tl.store(part + 2 * stride_pq, z_y, mask=row_ok)
    tl.store(part + 3 * stride_pq, sq, mask=row_ok)
    tl.store(part + 4 * stride_pq, dc, mask=row_ok)
    tl.store(hnorm_ptr + rows, hnorm, mask=row_ok & (pid_k == 0))


@triton.jit
def _softmax_grad_kernel(
    z_ptr, g_ptr, part_ptr, hnorm_ptr, inv_wnorm_ptr, table_ptr, y_ptr, y_all_ptr,  # inputs (+ G output)
    loss_ptr, coef_ptr, weight_ptr,  # outputs (B fp32 each): weighted row loss, a, batch weight of the row
    B, B_all, K, T, cols_per_program, alpha, ignore_index,
    stride_zb, stride_gb, stride_pq, stride_pb, stride_table,
    EPS: tl.constexpr, MEAN: tl.constexpr, WRITE_G: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_Y: tl.constexpr,
):
    """Row statistics from the partials, the row loss, a, and G = g (unweighted) for BLOCK_R rows × a column range."""
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < B
    y = tl.load(y_ptr + rows, mask=row_ok, other=ignore_index).to(tl.int64)
    counted = row_ok & (y != ignore_index)
    in_range = (y >= 0) & (y < K)
    has_class = counted & in_range
    y_safe = tl.where(has_class, y, 0)
    # A target that is neither a class nor ignore_index: NaN loss and gradient for that row, visibly, instead
    # of a device-side assert (host checks would need a synchronisation; CPU inputs are checked on the host).
    poison = tl.where(counted & (~in_range), float("nan"), 0.0)

    if MEAN:  # the batch weight 1 / #counted rows, summed over the whole batch on the device
        counts = tl.zeros((BLOCK_Y,), dtype=tl.int32)
        for start in range(0, B_all, BLOCK_Y):
            ys = start + tl.arange(0, BLOCK_Y)
            y_all = tl.load(y_all_ptr + ys, mask=ys < B_all, other=ignore_index)
            counts += (y_all != ignore_index).to(tl.int32)
        scale = 1.0 / tl.maximum(tl.sum(counts, axis=0), 1).to(tl.float32)  # all ignored → loss 0, as reference
    else:
        scale = 1.0
    weight = tl.where(counted, scale, 0.0)

    # Merge the class-tile partials: online logsumexp (rescale the running sum when the running max grows).
    run_max = tl.full((BLOCK_R,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_R,), dtype=tl.float32)
    z_y = tl.zeros((BLOCK_R,), dtype=tl.float32)
    sq = tl.zeros((BLOCK_R,), dtype=tl.float32)
    dc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T)
        mask = row_ok[:, None] & (ts < T)[None, :]
        base = part_ptr + rows[:, None] * stride_pb + ts[None, :]
        p_max = tl.load(base, mask=mask, other=float("-inf"))
        p_sum = tl.load(base + stride_pq, mask=mask, other=0.0)
        new_max = tl.maximum(run_max, tl.max(p_max, axis=1))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)  # rows past B: keep exp() finite
        run_sum = run_sum * tl.exp(run_max - safe_max) + tl.sum(p_sum * tl.exp(p_max - safe_max[:, None]), axis=1)
        run_max = new_max
        z_y += tl.sum(tl.load(base + 2 * stride_pq, mask=mask, other=0.0), axis=1)
        sq += tl.sum(tl.load(base + 3 * stride_pq, mask=mask, other=0.0), axis=1)
        dc += tl.sum(tl.load(base + 4 * stride_pq, mask=mask, other=0.0), axis=1)
    # run_sum = Σ_{i≠y} e^{z_i − max}. With the target's own term, Σ_i e^{z_i − max} = run_sum + e^{z_y − max}
    # (rows without a class: ignored rows, whose values are masked below). logsumexp stays split as max + log Σ:
    # adding them would round log Σ away at the ulp of z_y.
    row_max = tl.where(row_ok, run_max, 0.0)
    others = tl.where(row_ok, run_sum, 0.0)
    gap = tl.where(has_class, row_max - z_y, 0.0)  # ≥ 0
    total = others + tl.exp(-gap)
    log_sum = tl.log(tl.where(row_ok, total, 1.0))
    # CE = logsumexp − z_y = log(1 + Σ_{i≠y} e^{z_i − z_y}): log1p keeps a confident row's tiny CE; once the
    # target trails the max by ≥ 30 the CE is ≥ 30 and gap + log Σ is exact to fp32 (and e^gap cannot overflow).
    small_gap = gap < 30.0
    cross_entropy = tl.where(small_gap, _log1p(others * tl.exp(tl.where(small_gap, gap, 0.0))), gap + log_sum)
    # p_y − 1 = −Σ_{i≠y} p_i, without the cancellation of (1 − tiny) − 1
    target_grad = -tl.math.div_rn(others, total)

    hnorm = tl.load(hnorm_ptr + rows, mask=row_ok, other=1.0)
    n = tl.maximum(hnorm, EPS)
    row_loss = (1.0 - alpha) * cross_entropy + alpha * sq
    row_loss = tl.where(counted, row_loss * weight, 0.0) + poison
    a = tl.where(hnorm > EPS, tl.math.div_rn((-2.0 * alpha) * dc, n * n), 0.0)  # IEEE division, as in kernel 1
    coef = tl.where(counted, a, 0.0) + poison
    first = pid_c == 0
    tl.store(loss_ptr + rows, row_loss, mask=row_ok & first)
    tl.store(coef_ptr + rows, coef, mask=row_ok & first)
    tl.store(weight_ptr + rows, weight, mask=row_ok & first)

    if WRITE_G:
        col_start = pid_c * cols_per_program
        for c0 in range(col_start, col_start + cols_per_program, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
            col_ok = cols < K
            mask = row_ok[:, None] & col_ok[None, :]
            z = tl.load(z_ptr + rows[:, None] * stride_zb + cols[None, :], mask=mask, other=0.0)
            inv_w = tl.load(inv_wnorm_ptr + cols, mask=col_ok, other=0.0)
            target_cos = tl.load(
                table_ptr + y_safe[:, None] * stride_table + cols[None, :],
                mask=has_class[:, None] & col_ok[None, :], other=0.0,
            )
            p = tl.exp((z - row_max[:, None]) - log_sum[:, None])  # softmax, shifted as in the loss
            p = tl.where(cols[None, :] == y[:, None], target_grad[:, None], p)  # p − δ_iy
            n_tile = tl.broadcast_to(n[:, None], (BLOCK_R, BLOCK_C))
            cos = tl.math.div_rn(z * inv_w[None, :], n_tile)
            cos_grad = tl.math.div_rn((cos - target_cos) * inv_w[None, :], n_tile)
            g = (1.0 - alpha) * p + (2.0 * alpha) * cos_grad
            g = tl.where(counted[:, None], g, 0.0) + poison[:, None]
            tl.store(g_ptr + rows[:, None] * stride_gb + cols[None, :], g.to(g_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_features_kernel(
    g_ptr, w_ptr, h_ptr, coef_ptr, weight_ptr, dh_ptr,
    B, D, K,
    stride_gb, stride_wk, stride_wd, stride_hb, stride_hd, stride_db, stride_dd,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    """dH = weight ⊙ (G W + a ⊙ h) for one (BLOCK_B rows × BLOCK_D features) tile, reducing over the K classes."""
    pid_b, pid_d = _grouped_tile(tl.program_id(0), tl.cdiv(B, BLOCK_B), tl.cdiv(D, BLOCK_D), GROUP)
    rows = pid_b.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    ds = pid_d.to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < B
    d_ok = ds < D

    acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    offs_k = tl.arange(0, BLOCK_K)  # main loop as in kernel 1: wrapped edges, a mask on the K tail only
    g_ptrs = g_ptr + (rows % B)[:, None] * stride_gb + offs_k[None, :]
    w_ptrs = w_ptr + offs_k[:, None].to(tl.int64) * stride_wk + (ds % D)[None, :] * stride_wd
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + offs_k) < K
        g = tl.load(g_ptrs, mask=k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
        g_ptrs += BLOCK_K
        w_ptrs += BLOCK_K * stride_wk  # int32 product: fine below 8M features (BLOCK_K ≤ 256)
        if UPCAST_DOT:
            acc = tl.dot(g.to(tl.float32), w.to(tl.float32), acc, input_precision=INPUT_PRECISION)
        else:
            acc = tl.dot(g, w, acc, input_precision=INPUT_PRECISION)

    mask = row_ok[:, None] & d_ok[None, :]
    h = tl.load(h_ptr + rows[:, None] * stride_hb + ds[None, :] * stride_hd, mask=mask, other=0.0).to(tl.float32)
    coef = tl.load(coef_ptr + rows, mask=row_ok, other=0.0)
    weight = tl.load(weight_ptr + rows, mask=row_ok, other=0.0)
    acc = (acc + coef[:, None] * h) * weight[:, None]
    tl.store(dh_ptr + rows[:, None] * stride_db + ds[None, :] * stride_dd, acc.to(dh_ptr.dtype.element_ty), mask=mask)


def _is_interpreted(kernel) -> bool:
    """``triton.jit`` decides at decoration time (TRITON_INTERPRET=1) whether a kernel runs in the interpreter."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


#: True when the kernels run through Triton's CPU interpreter (then they take CPU tensors, and only CPU tensors).
INTERPRETED = _is_interpreted(_logits_stats_kernel)


def _upcast_dot(dtype: torch.dtype) -> bool:
    """Triton 3.6–3.7's interpreter stores bf16 as uint16 and its tl.dot multiplies those integers
    (runtime/interpreter.py, create_dot), so under the interpreter bf16 tiles are upcast to fp32 first — exact, and
    the same products and fp32 sums as a bf16 tensor-core MMA. Compiled kernels keep bf16 operands."""
    return INTERPRETED and dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch parameters (see :func:`choose_config` for the reasoning behind the defaults)."""

    logits_block_b: int = 128  # kernel 1 tile: rows ...
    logits_block_k: int = 64  # ... × classes
    logits_block_d: int = 64  # reduction step over features
    logits_warps: int = 8
    logits_stages: int = 3
    grad_block_b: int = 128  # kernel 3 tile: rows ...
    grad_block_d: int = 64  # ... × features
    grad_block_k: int = 64  # reduction step over classes
    grad_warps: int = 8
    grad_stages: int = 4
    rows_block: int = 8  # kernel 2: rows per program ...
    cols_block: int = 512  # ... × classes per step (4096 elements: 32 per thread at 4 warps)
    rows_warps: int = 4
    partials_block: int = 128  # kernel 2 merges the class-tile partials this many at a time
    group: int = 8  # grouped launch order (L2 reuse) of kernels 1 and 3
    chunk_bytes: int = 128 << 20  # bound on the transient z (+ G) buffers; see _chunk_rows

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"KernelConfig.{field.name} must be a positive int, got {value!r}")
        for name in ("logits_block_b", "logits_block_k", "logits_block_d", "grad_block_b", "grad_block_d",
                     "grad_block_k", "rows_block", "cols_block", "partials_block"):
            value = getattr(self, name)
            if value & (value - 1):
                raise ValueError(f"KernelConfig.{name} must be a power of two (tl.arange), got {value}")
        for name in ("logits_block_b", "logits_block_k", "logits_block_d", "grad_block_b", "grad_block_d",
                     "grad_block_k"):
            if getattr(self, name) < 16:
                raise ValueError(f"KernelConfig.{name} must be ≥ 16 (tl.dot's smallest tile), got {getattr(self, name)}")


#: Launch-bound below this many z elements per call (B·K): the paper shapes sit at 6e3–6e5.
SMALL_PROBLEM_ELEMENTS = 1 << 21


def choose_config(
    batch: int, dim: int, num_classes: int, dtype: torch.dtype, input_precision: str | None
) -> KernelConfig:
    """Tiles per regime (H100 reasoning; no autotuning, so the first call never benchmarks and graphs capture).

    Register budgets were checked by compiling every kernel ahead of time for sm_90a (``triton.compile`` with a
    ``GPUTarget``, then ``ptxas -v``; no GPU needed): the chosen tiles compile without spills. 128 × 128 tiles did
    not (kernel 1's epilogue holds the gathered S tile, the cosines and the exp's next to the accumulator, ~670 B
    of spills per thread; kernel 3 ~470 B), which is why the class/feature side of the tiles is 64.

    * Small problems (paper shapes) are launch-bound: 64 × 64 tiles and 4 warps give ≥ 64 programs per kernel at
      (256, 1010, 1010); kernel 1 steps 32 features at a time (64 spilled), 3 stages hide the few loads.
    * Large bf16/fp16: 128 × 64 tiles, 8 warps (32 fp32 accumulators per thread), 64-deep steps: one stage of
      operands is 2 × 128 × 64 × 2 B ≤ 32 KiB, so 3 stages (kernel 1) and 4 (kernel 3, a plain GEMM) fit the
      228 KiB of shared memory and cover HBM latency.
    * fp32 with TF32: the same tiles at a 32-deep step (same bytes per stage), 3 stages.
    * fp32 with IEEE ("highest"): no tensor cores — 64 × 64 × 32 FMA tiles, 4 warps, 2 stages.
    """
    small = batch * num_classes <= SMALL_PROBLEM_ELEMENTS
    if INTERPRETED:  # numpy runs whole tiles; the cost is per program and per reduction call: few, large programs
        return KernelConfig(logits_block_b=64, logits_block_k=256, logits_block_d=64, grad_block_b=64,
                            grad_block_d=64, grad_block_k=256, rows_block=64, cols_block=512)
    if dtype == torch.float32 and input_precision == "ieee":
        return KernelConfig(logits_block_b=64, logits_block_k=64, logits_block_d=32, logits_warps=4,
                            logits_stages=2, grad_block_b=64, grad_block_d=64, grad_block_k=32, grad_warps=4,
                            grad_stages=2)
    if small:
        return KernelConfig(logits_block_b=64, logits_block_k=64, logits_block_d=32, logits_warps=4,
                            logits_stages=3, grad_block_b=64, grad_block_d=64,
                            grad_block_k=64 if dtype != torch.float32 else 32, grad_warps=4, grad_stages=3)
    if dtype == torch.float32:
        return KernelConfig(logits_block_d=32, grad_block_k=32, grad_stages=3)
    return KernelConfig()


def _input_precision(dtype: torch.dtype) -> str | None:
    """fp32 follows torch's matmul precision setting ("highest" → IEEE fp32, else TF32 tensor cores); half dtypes
    have a single tensor-core path and take the backend's default (None)."""
    if dtype != torch.float32:
        return None
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


_SM_COUNT: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1  # interpreter: one program at a time anyway
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def _chunk_rows(batch: int, dim: int, num_classes: int, g_bytes: int, config: KernelConfig, sms: int) -> int:
    """Rows per chunk: as many as ``chunk_bytes`` allows for z (4 B) + G (``g_bytes``; 0 when G overwrites z),
    but at least enough that kernel 3 (grid rows/BLOCK_B × D/BLOCK_D) has two programs per SM, and a multiple
    of both row tiles."""
    step = max(config.logits_block_b, config.grad_block_b, config.rows_block)
    by_memory = config.chunk_bytes // max(1, num_classes * (4 + g_bytes))
    to_fill = triton.cdiv(2 * sms, triton.cdiv(max(dim, 1), config.grad_block_d)) * config.grad_block_b
    rows = max(by_memory, to_fill, step)
    rows = triton.cdiv(rows, step) * step
    return min(rows, batch)


# ----------------------------------------------------------------------------------------------------------------
# Cached, prepared frame and similarity (W is a fixed buffer: prepare once per tensor version)
# ----------------------------------------------------------------------------------------------------------------
class _PreparedFrame(NamedTuple):
    weight: torch.Tensor  # K × D, contiguous, in the dot dtype
    inv_norm: torch.Tensor  # K, fp32: 1 / max(‖w_i‖, ε), from the frame as given (not the cast copy)


_CACHE_SIZE = 8  # a few frames × dtypes per process; bounded so discarded frames are not kept alive forever
_frame_cache: OrderedDict = OrderedDict()
_table_cache: OrderedDict = OrderedDict()


def _cache_key(tensor: torch.Tensor, *extra) -> tuple | None:
    try:
        version = tensor._version  # in-place edits bump it, so a modified frame is prepared again
    except RuntimeError:  # inference-mode tensors carry no version counter: do not cache them
        return None
    return (id(tensor), version, tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype,
            tensor.device, *extra)


def _cached(cache: OrderedDict, tensor: torch.Tensor, extra: tuple, build):
    key = _cache_key(tensor, *extra)
    if key is not None and key in cache:
        ref, value = cache[key]
        if ref() is tensor:
            cache.move_to_end(key)
            return value
    value = build()
    if key is not None:
        cache[key] = (weakref.ref(tensor), value)
        while len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    return value


def _prepare_frame(frame: torch.Tensor, dtype: torch.dtype) -> _PreparedFrame:
    def build() -> _PreparedFrame:
        detached = frame.detach()
        norms = torch.linalg.vector_norm(detached.to(torch.float32), dim=1)
        return _PreparedFrame(detached.to(dtype).contiguous(), 1.0 / norms.clamp_min(COSINE_EPS))

    return _cached(_frame_cache, frame, (dtype,), build)


def _prepare_similarity(similarity: torch.Tensor) -> torch.Tensor:
    """The gather table T with T[y, i] = S[i, y], fp32, rows contiguous, so each sample reads one row.

    S built from a hierarchy is bitwise symmetric (S_ij is a function of the symmetric d_ij) and then T = S, with no
    copy when S is already fp32 and contiguous; otherwise T = Sᵀ, a cached K × K fp32 copy (4 GB at K = 32000, so
    symmetrise a nearly symmetric S, e.g. one computed as W Wᵀ by a GEMM, before passing it). Deciding costs one
    host synchronisation, once per similarity tensor (cached)."""

    def build() -> torch.Tensor:
        s32 = similarity.detach().to(torch.float32)
        symmetric = bool(torch.equal(s32, s32.T))
        return (s32 if symmetric else s32.T).contiguous()

    return _cached(_table_cache, similarity, (), build)


# ----------------------------------------------------------------------------------------------------------------
# Host launcher
# ----------------------------------------------------------------------------------------------------------------
class FusedOutput(NamedTuple):
    loss: torch.Tensor  # fp32: scalar, or B values for reduction="none"
    logits: torch.Tensor | None  # B × K fp32 when asked for
    grad_features: torch.Tensor | None  # dL/dh for grad_output = 1 (B × D), when asked for


def fused_frame_loss_forward(
    features: torch.Tensor,
    frame: torch.Tensor,
    target: torch.Tensor,
    similarity: torch.Tensor,
    alpha: float,
    reduction: str,
    ignore_index: int,
    *,
    compute_grad: bool,
    return_logits: bool = False,
    config: KernelConfig | None = None,
) -> FusedOutput:
    """Run the three kernels over row chunks. Inputs are assumed validated (see :func:`triton_frame_loss`)."""
    batch, dim = features.shape
    num_classes = frame.shape[0]
    device = features.device
    dtype = features.dtype
    precision = _input_precision(dtype)
    config = config or choose_config(batch, dim, num_classes, dtype, precision)
    upcast = _upcast_dot(dtype)
    prepared = _prepare_frame(frame, dtype)
    table = _prepare_similarity(similarity)
    target = target if target.is_contiguous() else target.contiguous()
    if features.stride(1) * config.logits_block_d >= 2**31:  # kernel 1 steps its pointers by an int32 product
        features = features.contiguous()

    loss_rows = torch.empty(batch, device=device, dtype=torch.float32)
    logits = torch.empty(batch, num_classes, device=device, dtype=torch.float32) if return_logits else None
    # fp16's exponent cannot hold an unscaled per-row gradient of a large batch (a loss scaler multiplies only in
    # the backward): keep that one in fp32. bf16 shares fp32's exponent range.
    grad_dtype = torch.float32 if dtype == torch.float16 else dtype
    grad = torch.empty(batch, dim, device=device, dtype=grad_dtype) if compute_grad else None

    store_z = compute_grad or return_logits
    g_in_place = dtype == torch.float32 and not return_logits  # G overwrites z when they share a dtype
    g_bytes = 0 if (g_in_place or not compute_grad) else torch.finfo(dtype).bits // 8
    sms = _sm_count(device)
    if return_logits or not store_z:
        chunk = batch  # logits are the output anyway; without z only the small partials are chunk-sized
    else:
        chunk = _chunk_rows(batch, dim, num_classes, g_bytes, config, sms)
    tiles_k = triton.cdiv(num_classes, config.logits_block_k)

    z_buf = torch.empty(chunk, num_classes, device=device, dtype=torch.float32) if store_z and logits is None else None
    if compute_grad:
        g_buf = z_buf if g_in_place else torch.empty(chunk, num_classes, device=device, dtype=dtype)
    else:
        g_buf = None
    # One fp32 workspace for the small per-row buffers (one allocation instead of four: host time matters at the
    # launch-bound shapes): partials (5 × chunk × T), then ‖h‖, a and the batch weight (chunk each).
    workspace = torch.empty(NUM_PARTIALS * chunk * tiles_k + 3 * chunk, device=device, dtype=torch.float32)
    partials = workspace[: NUM_PARTIALS * chunk * tiles_k].view(NUM_PARTIALS, chunk, tiles_k)
    hnorm, coef, row_weight = workspace[NUM_PARTIALS * chunk * tiles_k:].view(3, chunk).unbind(0)

    col_blocks = triton.cdiv(num_classes, config.cols_block)
    block_t = min(triton.next_power_of_2(tiles_k), config.partials_block)
    for start in range(0, batch, chunk):
        rows = min(chunk, batch - start)
        h = features[start:start + rows]
        y = target[start:start + rows]
        z = logits[start:start + rows] if logits is not None else (z_buf[:rows] if z_buf is not None else partials)
        grid1 = (triton.cdiv(rows, config.logits_block_b) * tiles_k,)
        _logits_stats_kernel[grid1](
            h, prepared.weight, prepared.inv_norm, table, y,
            z, partials, hnorm,
            rows, dim, num_classes, tiles_k, ignore_index,
            h.stride(0), h.stride(1), prepared.weight.stride(0), prepared.weight.stride(1), table.stride(0),
            z.stride(0), partials.stride(0), partials.stride(1),
            EPS=COSINE_EPS,
            BLOCK_B=config.logits_block_b, BLOCK_K=config.logits_block_k, BLOCK_D=config.logits_block_d,
            GROUP=config.group, INPUT_PRECISION=precision, UPCAST_DOT=upcast, STORE_Z=store_z,
            num_warps=config.logits_warps, num_stages=config.logits_stages,
        )

        row_blocks = triton.cdiv(rows, config.rows_block)
        if compute_grad:  # enough column splits for ~4 programs per SM, each sweeping a contiguous class range
            splits = max(1, min(col_blocks, triton.cdiv(4 * sms, row_blocks)))
            cols_per_program = triton.cdiv(col_blocks, splits) * config.cols_block
            splits = triton.cdiv(num_classes, cols_per_program)
        else:
            splits, cols_per_program = 1, config.cols_block
        g = g_buf[:rows] if g_buf is not None else partials
        _softmax_grad_kernel[(row_blocks, splits)](
            z, g, partials, hnorm, prepared.inv_norm, table, y, target,
            loss_rows[start:start + rows], coef, row_weight,
            rows, batch, num_classes, tiles_k, cols_per_program, float(alpha), ignore_index,
            z.stride(0), g.stride(0), partials.stride(0), partials.stride(1), table.stride(0),
            EPS=COSINE_EPS, MEAN=reduction == "mean", WRITE_G=compute_grad,
            BLOCK_R=config.rows_block, BLOCK_C=config.cols_block, BLOCK_T=block_t, BLOCK_Y=1024,
            num_warps=config.rows_warps,
        )

        if compute_grad and dim > 0:
            dh = grad[start:start + rows]
            grid3 = (triton.cdiv(rows, config.grad_block_b) * triton.cdiv(dim, config.grad_block_d),)
            _grad_features_kernel[grid3](
                g, prepared.weight, h, coef, row_weight, dh,
                rows, dim, num_classes,
                g.stride(0), prepared.weight.stride(0), prepared.weight.stride(1), h.stride(0), h.stride(1),
                dh.stride(0), dh.stride(1),
                BLOCK_B=config.grad_block_b, BLOCK_D=config.grad_block_d, BLOCK_K=config.grad_block_k,
                GROUP=config.group, INPUT_PRECISION=precision, UPCAST_DOT=upcast,
                num_warps=config.grad_warps, num_stages=config.grad_stages,
            )

    loss = loss_rows if reduction == "none" else loss_rows.sum()
    return FusedOutput(loss, logits, grad)


# ----------------------------------------------------------------------------------------------------------------
# Autograd and the checked entry point
# ----------------------------------------------------------------------------------------------------------------
class FusedFrameLossFunction(torch.autograd.Function):
    """Forward runs the kernels and keeps dL/dh (for grad_output = 1); backward scales it by grad_output.

    The kept gradient is handed over on the first backward and scaled in place (it is this Function's private
    buffer, never an input, output or saved tensor, and no reference to it remains afterwards), so the fused path
    allocates no second B × D tensor. A second backward through the same graph (``retain_graph=True``) therefore
    raises instead of returning a stale gradient; use ``backend="reference"`` for that.
    """

    @staticmethod
    def forward(ctx, features, frame, target, similarity, alpha, reduction, ignore_index, return_logits, config):
        out = fused_frame_loss_forward(
            features, frame, target, similarity, alpha, reduction, ignore_index,
            compute_grad=True, return_logits=return_logits, config=config,
        )
        ctx.grad_features = out.grad_features
        ctx.features_dtype = features.dtype
        ctx.reduction = reduction
        if out.logits is not None:
            ctx.mark_non_differentiable(out.logits)
            return out.loss, out.logits
        return out.loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, *unused_grad_logits):
        grad = ctx.grad_features
        if grad is None:
            raise RuntimeError(
                "haf.kernels.frame_loss (triton backend) computes dL/dh in the forward and hands it over on the "
                "first backward; backpropagating through it twice (retain_graph=True) is not supported. "
                "Use backend='reference' for that."
            )
        ctx.grad_features = None
        scale = grad_loss[:, None] if ctx.reduction == "none" else grad_loss
        if grad.dtype == ctx.features_dtype:
            grad.mul_(scale)
        else:  # fp16 inputs: the gradient was kept in fp32 (see fused_frame_loss_forward)
            grad = (grad * scale).to(ctx.features_dtype)
        return grad, None, None, None, None, None, None, None, None


def _check_inputs(features, frame, target, similarity, alpha, reduction) -> None:
    """The reference's checks (haf.losses, same messages) plus what only the fused path requires."""
    if isinstance(alpha, torch.Tensor):
        raise ValueError("alpha must be a Python float (a tensor would need a host synchronisation per call)")
    if features.is_floating_point() and features.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"the triton backend takes features in {[str(d) for d in SUPPORTED_DTYPES]}, got {features.dtype}; "
            "use backend='reference' for other dtypes"
        )
    check_frame_loss_inputs(features, frame, target, similarity, alpha, reduction)
    if frame.shape[0] == 0:
        raise ValueError("frame has no rows: the loss needs at least one class")
    for name, tensor in (("frame", frame), ("similarity", similarity)):
        if tensor.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                f"{name} requires grad, but the triton backend treats it as fixed (no gradient for it); "
                f"pass {name}.detach() or use backend='reference'"
            )


def triton_frame_loss(
    features: torch.Tensor,
    frame: torch.Tensor,
    target: torch.Tensor,
    similarity: torch.Tensor,
    alpha: float = 0.5,
    reduction: str = "mean",
    ignore_index: int = -100,
    *,
    return_logits: bool = False,
    config: KernelConfig | None = None,
):
    """The triton backend of :func:`haf.kernels.frame_loss` (same arguments; ``config`` overrides the tiles)."""
    _check_inputs(features, frame, target, similarity, alpha, reduction)
    if features.is_cuda == INTERPRETED:
        raise ValueError(
            f"the triton kernels were built {'for the CPU interpreter' if INTERPRETED else 'for the GPU'} but the "
            f"features are on {features.device}: "
            + ("unset TRITON_INTERPRET to run them on CUDA tensors" if INTERPRETED else
               "set TRITON_INTERPRET=1 before importing haf.kernels to run them on CPU tensors, or use "
               "backend='reference'")
        )
    if not features.is_cuda:
        check_target_range(target, frame.shape[0], ignore_index)
    device_type = features.device.type
    if torch.is_autocast_enabled(device_type) and features.dtype == torch.float32:
        features = features.to(torch.get_autocast_dtype(device_type))  # the product runs like an autocast matmul
    alpha = float(alpha)

    if features.shape[0] == 0:  # nothing to launch; same values as the reference (mean of nothing = 0)
        zero = features.sum(dim=1).to(torch.float32) * 0.0
        loss = zero if reduction == "none" else zero.sum()
        empty = torch.empty(0, frame.shape[0], device=features.device, dtype=torch.float32)
        return (loss, empty) if return_logits else loss

    if torch.is_grad_enabled() and features.requires_grad:
        out = FusedFrameLossFunction.apply(
            features, frame, target, similarity, alpha, reduction, ignore_index, return_logits, config
        )
        return out
    out = fused_frame_loss_forward(
        features, frame, target, similarity, alpha, reduction, ignore_index,
        compute_grad=False, return_logits=return_logits, config=config,
    )
    return (out.loss, out.logits) if return_logits else out.loss
