"""Triton kernels of the fused HAFrame loss (host side: :mod:`haf.kernels.dense.fused`). One file over 400
lines on purpose: both regimes' kernels share the jitted row math (``_row_targets``, ``_row_loss``, ``_grad_tile``).

Per row b, with z = h Wᵀ, n = ‖h‖, r_i = 1 / max(‖w_i‖, ε), cos_i = r_i z_i / n (0 when n < FEATURE_EPS)::

    ℓ      = (1 − α) (logsumexp(z) − z_y) + α Σ_i (cos_i − S[y, i])²          (S symmetric: row y is column y)
    g_i    = (1 − α)(p_i − δ_iy) + 2α (cos_i − S[y, i]) r_i / n
    a      = −(2α / n²) Σ_i (cos_i − S[y, i]) cos_i                          (0 when n < FEATURE_EPS)
    dℓ/dh  = Σ_i g_i w_i + a h = (G W)_b + a_b h_b

cos − S is formed directly (nothing cancels near convergence); the softmax sum leaves the target out, so a confident
row keeps CE = log1p(Σ_{i≠y} e^{z_i − z_y}) and p_y − 1 = −Σ_{i≠y} p_i to full precision. Kernels write the
*unweighted* per-row gradient (the batch weight is applied in the backward). Launch-bound regime: ``_row_block_kernel``
(one program per row block, loss reduced by the last program); tiled: ``_row_norm_kernel`` → ``_logits_stats_kernel``
→ ``_softmax_grad_kernel`` → ``_grad_features_kernel`` (persistent: :mod:`haf.kernels.dense.persistent`).
``_scale_grad_kernel``: the backward.
"""
from __future__ import annotations

import triton
import triton.language as tl


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
    """log(1 + x) to full relative precision for small x (the rounding of u = 1 + x is divided back out)."""
    u = 1.0 + x
    exact = u == 1.0
    return tl.where(exact, x, tl.log(u) * tl.math.div_rn(x, tl.where(exact, 1.0, u - 1.0)))


@triton.jit
def _row_targets(y_ptr, rows, row_ok, K, ignore_index):
    """(y as int64, counted, has_class, poison): poison is NaN for a counted row whose target is no class.
    Targets are loaded in their own integer dtype and widened before any comparison with ``ignore_index``; masked
    lanes are never filled with it (−100 would become 156 in a uint8 load)."""
    y = tl.load(y_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    counted = row_ok & (y != ignore_index)
    in_range = (y >= 0) & (y < K)
    has_class = counted & in_range
    poison = tl.where(counted & (~in_range), float("nan"), 0.0)
    return y, counted, has_class, poison


@triton.jit
def _row_loss(run_max, run_sum, z_y, sq, dc, hnorm, row_ok, counted, has_class, poison, alpha, H_EPS: tl.constexpr):
    """Row loss (unweighted), a, and the softmax pieces (row max, log Σ, p_y − 1) from merged statistics."""
    row_max = tl.where(row_ok, run_max, 0.0)
    others = tl.where(row_ok, run_sum, 0.0)
    gap = tl.where(has_class, row_max - z_y, 0.0)  # ≥ 0
    total = others + tl.exp(-gap)
    log_sum = tl.log(tl.where(row_ok, total, 1.0))
    small_gap = gap < 30.0  # beyond, CE ≥ 30 and gap + log Σ is exact to fp32
    cross_entropy = tl.where(small_gap, _log1p(others * tl.exp(tl.where(small_gap, gap, 0.0))), gap + log_sum)
    target_grad = -tl.math.div_rn(others, total)
    n = tl.maximum(hnorm, H_EPS)
    row_loss = tl.where(counted, (1.0 - alpha) * cross_entropy + alpha * sq, 0.0) + poison
    a = tl.where(hnorm >= H_EPS, tl.math.div_rn(tl.math.div_rn((-2.0 * alpha) * dc, n), n), 0.0)  # n² may overflow
    coef = tl.where(counted, a, 0.0) + poison
    return row_loss, coef, row_max, log_sum, target_grad


@triton.jit
def _grad_tile(z, cols, y, r, s, row_max, log_sum, target_grad, n, directed, counted, poison, alpha,
               BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """g = (1 − α)(p − δ_y) + 2α (cos − S) r / n for one tile of z (0 on ignored rows, NaN on poisoned ones)."""
    p = tl.exp((z - row_max[:, None]) - log_sum[:, None])
    p = tl.where(cols[None, :] == y[:, None], target_grad[:, None], p)
    n_tile = tl.broadcast_to(n[:, None], (BLOCK_R, BLOCK_C))
    cos = tl.where(directed[:, None], tl.math.div_rn(z * r[None, :], n_tile), 0.0)
    cos_grad = tl.where(directed[:, None], tl.math.div_rn((cos - s) * r[None, :], n_tile), 0.0)
    g = (1.0 - alpha) * p + (2.0 * alpha) * cos_grad
    return tl.where(counted[:, None], g, 0.0) + poison[:, None]


@triton.jit
def _row_block_kernel(
    h_ptr, w_ptr, inv_wnorm_ptr, s_ptr, y_ptr,  # h (B×D), W (K×D fp32, contiguous), r (K), S (K×K fp32), y (B)
    work_ptr, scratch_ptr, dh_ptr, ticket_ptr, status_ptr,  # fp32 [loss, scale | B row losses | 2·P partials],
    B, D, K, alpha, ignore_index, stride_hb, stride_hd,  # fp32 scratch [z | G] (B×K each), dH, int32 words
    OFF_ROWS, OFF_PARTS, OFF_G,
    H_EPS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_P: tl.constexpr, REDUCE: tl.constexpr, WRITE_GRAD: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """Everything for BLOCK_B rows; REDUCE: 0 none, 1 sum, 2 mean (the last program reduces the partials)."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    offs_d = tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    h_rows = h_ptr + rows[:, None] * stride_hb

    hnorm, bad = _scaled_row_norm(h_rows, row_ok, D, stride_hd, BLOCK_B, BLOCK_D)
    tl.store(status_ptr, 1, mask=bad > 0)  # NaN/inf features: read by the host (see StatusWord)
    directed = hnorm >= H_EPS
    n = tl.maximum(hnorm, H_EPS)
    n_tile = tl.broadcast_to(n[:, None], (BLOCK_B, BLOCK_K))
    y, counted, has_class, poison = _row_targets(y_ptr, rows, row_ok, K, ignore_index)
    y_safe = tl.where(has_class, y, 0)

    run_max = tl.full((BLOCK_B,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_B,), dtype=tl.float32)
    z_y = tl.zeros((BLOCK_B,), dtype=tl.float32)
    sq = tl.zeros((BLOCK_B,), dtype=tl.float32)
    dc = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + offs_k
        col_ok = cols < K
        acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + offs_d
            d_ok = ds < D
            h = tl.load(h_rows + ds[None, :] * stride_hd, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            w = tl.load(w_ptr + cols[:, None] * D + ds[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            acc = tl.dot(h.to(tl.float32), tl.trans(w), acc, input_precision=INPUT_PRECISION)
        r = tl.load(inv_wnorm_ptr + cols, mask=col_ok, other=0.0)
        s = tl.load(s_ptr + y_safe[:, None] * K + cols[None, :], mask=has_class[:, None] & col_ok[None, :],
                    other=0.0)
        cos = tl.where(directed[:, None], tl.math.div_rn(acc * r[None, :], n_tile), 0.0)
        diff = tl.where(col_ok[None, :], cos - s, 0.0)
        sq += tl.sum(diff * diff, axis=1)
        dc += tl.sum(diff * cos, axis=1)
        masked = tl.where(col_ok[None, :], acc, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(masked, axis=1))
        is_target = cols[None, :] == y[:, None]
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(
            tl.where(is_target, 0.0, tl.exp(masked - new_max[:, None])), axis=1)
        run_max = new_max
        z_y += tl.sum(tl.where(is_target, acc, 0.0), axis=1)
        if WRITE_GRAD:
            tl.store(scratch_ptr + rows[:, None] * K + cols[None, :], acc, mask=row_ok[:, None] & col_ok[None, :])

    row_loss, coef, row_max, log_sum, target_grad = _row_loss(
        run_max, run_sum, z_y, sq, dc, hnorm, row_ok, counted, has_class, poison, alpha, H_EPS)
    tl.store(work_ptr + OFF_ROWS + rows, row_loss, mask=row_ok)

    if WRITE_GRAD:
        tl.debug_barrier()  # z written by other threads of this program
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + offs_k
            col_ok = cols < K
            mask = row_ok[:, None] & col_ok[None, :]
            z = tl.load(scratch_ptr + rows[:, None] * K + cols[None, :], mask=mask, other=0.0)
            r = tl.load(inv_wnorm_ptr + cols, mask=col_ok, other=0.0)
            s = tl.load(s_ptr + y_safe[:, None] * K + cols[None, :], mask=has_class[:, None] & col_ok[None, :],
                        other=0.0)
            g = _grad_tile(z, cols, y, r, s, row_max, log_sum, target_grad, n, directed, counted, poison, alpha,
                           BLOCK_B, BLOCK_K)
            tl.store(scratch_ptr + OFF_G + rows[:, None] * K + cols[None, :], g, mask=mask)
        tl.debug_barrier()
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + offs_d
            d_ok = ds < D
            acc_d = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                cols = k0 + offs_k
                col_ok = cols < K
                g = tl.load(scratch_ptr + OFF_G + rows[:, None] * K + cols[None, :],
                            mask=row_ok[:, None] & col_ok[None, :], other=0.0)
                w = tl.load(w_ptr + cols[:, None] * D + ds[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
                acc_d = tl.dot(g, w, acc_d, input_precision=INPUT_PRECISION)
            mask = row_ok[:, None] & d_ok[None, :]
            h = tl.load(h_rows + ds[None, :] * stride_hd, mask=mask, other=0.0).to(tl.float32)
            acc_d += coef[:, None] * h
            tl.store(dh_ptr + rows[:, None] * D + ds[None, :], acc_d.to(dh_ptr.dtype.element_ty), mask=mask)

    if REDUCE != 0:
        programs = tl.num_programs(0)
        tl.store(work_ptr + OFF_PARTS + pid, tl.sum(row_loss, axis=0))
        tl.store(work_ptr + OFF_PARTS + programs + pid, tl.sum(counted.to(tl.float32), axis=0))
        tl.debug_barrier()
        ticket = tl.atomic_add(ticket_ptr, 1)  # acq_rel: the last program sees every partial
        if ticket == programs - 1:
            total = tl.zeros((BLOCK_P,), dtype=tl.float32)
            count = tl.zeros((BLOCK_P,), dtype=tl.float32)
            for p0 in range(0, programs, BLOCK_P):
                ps = p0 + tl.arange(0, BLOCK_P)
                total += tl.load(work_ptr + OFF_PARTS + ps, mask=ps < programs, other=0.0, volatile=True)
                count += tl.load(work_ptr + OFF_PARTS + programs + ps, mask=ps < programs, other=0.0, volatile=True)
            if REDUCE == 2:
                scale = 1.0 / tl.maximum(tl.sum(count, axis=0), 1.0)  # all rows ignored → loss 0
            else:
                scale = tl.sum(count, axis=0) * 0.0 + 1.0
            tl.store(work_ptr, tl.sum(total, axis=0) * scale)
            tl.store(work_ptr + 1, scale)
            tl.atomic_xchg(ticket_ptr, 0)  # ready for the next launch (and for a CUDA graph's next replay)


@triton.jit
def _scaled_row_norm(h_rows, row_ok, D, stride_hd, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """(‖h_b‖ fp32, 1 if any row is NaN/inf): each row divided by its largest |h| before squaring, so finite
    features of any size (fp32 1e30) give a finite norm; a NaN/inf element makes its scaled square NaN."""
    offs_d = tl.arange(0, BLOCK_D)
    top = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + offs_d
        h = tl.load(h_rows + ds[None, :] * stride_hd, mask=row_ok[:, None] & (ds < D)[None, :], other=0.0)
        top = tl.maximum(top, tl.max(tl.abs(h.to(tl.float32)), axis=1))
    scale = tl.where(top > 0.0, top, 1.0)
    sumsq = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + offs_d
        h = tl.load(h_rows + ds[None, :] * stride_hd, mask=row_ok[:, None] & (ds < D)[None, :], other=0.0)
        h = h.to(tl.float32) / scale[:, None]
        sumsq += tl.sum(h * h, axis=1)
    hnorm = tl.sqrt_rn(sumsq) * scale
    bad = tl.max(((sumsq != sumsq) | (hnorm == float("inf"))).to(tl.int32), axis=0)
    return hnorm, bad


@triton.jit
def _row_norm_kernel(h_ptr, hnorm_ptr, status_ptr, B, D, stride_hb, stride_hd,
                     BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """‖h_b‖ (fp32) for BLOCK_B rows, outside the GEMM's main loop; flags NaN/inf features."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    hnorm, bad = _scaled_row_norm(h_ptr + rows[:, None] * stride_hb, row_ok, D, stride_hd, BLOCK_B, BLOCK_D)
    tl.store(status_ptr, 1, mask=bad > 0)
    tl.store(hnorm_ptr + rows, hnorm, mask=row_ok)


@triton.jit
def _mma(a, b, acc, INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """acc + a b. UPCAST_DOT (interpreter only): its tl.dot multiplies bf16 bit patterns, so upcast first (exact)."""
    if UPCAST_DOT:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=INPUT_PRECISION)
    else:
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    return acc


@triton.jit
def _logits_mainloop(h_ptr, w_ptr, rows, cols, B, D, K, stride_hb, stride_hd, stride_wk, stride_wd,
                     BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                     INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """z tile = h[rows] W[cols]ᵀ by pointer loads, in the Triton matmul tutorial's style: edges wrapped (% B, % K)
    so only the reduction tail is masked; the loop body is loads and the MMA only (‖h‖ comes from a separate pass)."""
    acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
    offs_d = tl.arange(0, BLOCK_D)
    h_ptrs = h_ptr + (rows % B)[:, None] * stride_hb + offs_d[None, :] * stride_hd
    w_ptrs = w_ptr + (cols % K)[:, None] * stride_wk + offs_d[None, :] * stride_wd
    for d0 in range(0, D, BLOCK_D):
        d_ok = (d0 + offs_d) < D
        h = tl.load(h_ptrs, mask=d_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=d_ok[None, :], other=0.0)
        h_ptrs += BLOCK_D * stride_hd
        w_ptrs += BLOCK_D * stride_wd
        acc = _mma(h, tl.trans(w), acc, INPUT_PRECISION, UPCAST_DOT)
    return acc


@triton.jit
def _logits_epilogue(acc, rows, cols, row_ok, col_ok, pid_k, inv_wnorm_ptr, table_ptr, y_ptr, hnorm_ptr, z_ptr,
                     part_ptr, K, ignore_index, stride_table, stride_zb, stride_pq, stride_pb,
                     H_EPS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, STORE_Z: tl.constexpr):
    """The five row partials of one z tile (max, Σ_{i≠y} exp, z_y, Σ (cos − S)², Σ (cos − S) cos), stored at
    class tile ``pid_k``; padded classes are −inf in the max/exp and 0 in every sum."""
    hnorm = tl.load(hnorm_ptr + rows, mask=row_ok, other=1.0)
    directed = (hnorm >= H_EPS) & row_ok  # rows past B hold wrapped (% B) products: no cosine of those
    n = tl.maximum(hnorm, H_EPS)
    r = tl.load(inv_wnorm_ptr + cols, mask=col_ok, other=0.0)
    y, counted, has_class, poison = _row_targets(y_ptr, rows, row_ok, K, ignore_index)
    y_safe = tl.where(has_class, y, 0)
    s = tl.load(table_ptr + y_safe[:, None] * stride_table + cols[None, :],
                mask=has_class[:, None] & col_ok[None, :], other=0.0)
    n_tile = tl.broadcast_to(n[:, None], (BLOCK_B, BLOCK_K))
    cos = tl.where(directed[:, None], tl.math.div_rn(acc * r[None, :], n_tile), 0.0)
    diff = tl.where(col_ok[None, :], cos - s, 0.0)
    sq = tl.sum(diff * diff, axis=1)
    dc = tl.sum(diff * cos, axis=1)
    masked = tl.where(col_ok[None, :], acc, float("-inf"))
    tile_max = tl.max(masked, axis=1)
    is_target = cols[None, :] == y[:, None]
    tile_sum = tl.sum(tl.where(is_target, 0.0, tl.exp(masked - tile_max[:, None])), axis=1)
    z_y = tl.sum(tl.where(is_target, acc, 0.0), axis=1)

    if STORE_Z:
        tl.store(z_ptr + rows[:, None] * stride_zb + cols[None, :], acc, mask=row_ok[:, None] & col_ok[None, :])
    part = part_ptr + rows * stride_pb + pid_k
    tl.store(part, tile_max, mask=row_ok)
    tl.store(part + stride_pq, tile_sum, mask=row_ok)
    tl.store(part + 2 * stride_pq, z_y, mask=row_ok)
    tl.store(part + 3 * stride_pq, sq, mask=row_ok)
    tl.store(part + 4 * stride_pq, dc, mask=row_ok)


@triton.jit
def _logits_stats_kernel(
    h_ptr, w_ptr, inv_wnorm_ptr, table_ptr, y_ptr, hnorm_ptr,  # inputs (‖h‖ from _row_norm_kernel)
    z_ptr, part_ptr,  # outputs: z (B×K fp32), partials (5×B×T fp32)
    B, D, K, T, ignore_index,
    stride_hb, stride_hd, stride_wk, stride_wd, stride_table, stride_zb, stride_pq, stride_pb,
    H_EPS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, STORE_Z: tl.constexpr,
):
    """One (BLOCK_B rows × BLOCK_K classes) tile of z = h Wᵀ and its row partials per program."""
    pid_b, pid_k = _grouped_tile(tl.program_id(0), tl.cdiv(B, BLOCK_B), tl.cdiv(K, BLOCK_K), GROUP)
    rows = pid_b.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < B
    col_ok = cols < K
    acc = _logits_mainloop(h_ptr, w_ptr, rows, cols, B, D, K, stride_hb, stride_hd, stride_wk, stride_wd,
                           BLOCK_B, BLOCK_K, BLOCK_D, INPUT_PRECISION, UPCAST_DOT)
    _logits_epilogue(acc, rows, cols, row_ok, col_ok, pid_k, inv_wnorm_ptr, table_ptr, y_ptr, hnorm_ptr, z_ptr,
                     part_ptr, K, ignore_index, stride_table, stride_zb, stride_pq, stride_pb,
                     H_EPS, BLOCK_B, BLOCK_K, STORE_Z)


@triton.jit
def _softmax_grad_kernel(
    z_ptr, g_ptr, part_ptr, hnorm_ptr, inv_wnorm_ptr, table_ptr, y_ptr,  # inputs (+ G output)
    loss_ptr, coef_ptr,  # outputs (B fp32 each): unweighted row loss, a
    B, K, T, cols_per_program, alpha, ignore_index,
    stride_zb, stride_gb, stride_pq, stride_pb, stride_table,
    H_EPS: tl.constexpr, WRITE_G: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Row statistics from the partials (online logsumexp), the row loss, a, and G for BLOCK_R rows × a column range."""
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < B
    y, counted, has_class, poison = _row_targets(y_ptr, rows, row_ok, K, ignore_index)
    y_safe = tl.where(has_class, y, 0)

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

    hnorm = tl.load(hnorm_ptr + rows, mask=row_ok, other=1.0)
    row_loss, coef, row_max, log_sum, target_grad = _row_loss(
        run_max, run_sum, z_y, sq, dc, hnorm, row_ok, counted, has_class, poison, alpha, H_EPS)
    first = pid_c == 0
    tl.store(loss_ptr + rows, row_loss, mask=row_ok & first)
    tl.store(coef_ptr + rows, coef, mask=row_ok & first)

    if WRITE_G:
        n = tl.maximum(hnorm, H_EPS)
        directed = hnorm >= H_EPS
        col_start = pid_c * cols_per_program
        for c0 in range(col_start, col_start + cols_per_program, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
            col_ok = cols < K
            mask = row_ok[:, None] & col_ok[None, :]
            z = tl.load(z_ptr + rows[:, None] * stride_zb + cols[None, :], mask=mask, other=0.0)
            r = tl.load(inv_wnorm_ptr + cols, mask=col_ok, other=0.0)
            s = tl.load(table_ptr + y_safe[:, None] * stride_table + cols[None, :],
                        mask=has_class[:, None] & col_ok[None, :], other=0.0)
            g = _grad_tile(z, cols, y, r, s, row_max, log_sum, target_grad, n, directed, counted, poison, alpha,
                           BLOCK_R, BLOCK_C)
            tl.store(g_ptr + rows[:, None] * stride_gb + cols[None, :], g.to(g_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_mainloop(g_ptr, w_ptr, rows, ds, B, D, k_begin, k_end, stride_gb, stride_wk, stride_wd,
                   BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
                   INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """(G W)[rows, ds] over the classes k_begin ≤ k < k_end, by pointer loads (edges wrapped, K tail masked)."""
    acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    offs_k = tl.arange(0, BLOCK_K)
    g_ptrs = g_ptr + (rows % B)[:, None] * stride_gb + (k_begin + offs_k)[None, :]
    w_ptrs = w_ptr + (k_begin + offs_k)[:, None].to(tl.int64) * stride_wk + (ds % D)[None, :] * stride_wd
    for k0 in range(k_begin, k_end, BLOCK_K):
        k_ok = (k0 + offs_k) < k_end
        g = tl.load(g_ptrs, mask=k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
        g_ptrs += BLOCK_K
        w_ptrs += BLOCK_K * stride_wk
        acc = _mma(g, w, acc, INPUT_PRECISION, UPCAST_DOT)
    return acc


@triton.jit
def _grad_epilogue(acc, rows, ds, row_ok, d_ok, h_ptr, coef_ptr, dh_ptr, stride_hb, stride_hd, stride_db,
                   stride_dd):
    """dH tile = (G W) tile + a ⊙ h, rounded once to dH's dtype."""
    mask = row_ok[:, None] & d_ok[None, :]
    h = tl.load(h_ptr + rows[:, None] * stride_hb + ds[None, :] * stride_hd, mask=mask, other=0.0).to(tl.float32)
    coef = tl.load(coef_ptr + rows, mask=row_ok, other=0.0)
    acc = acc + coef[:, None] * h
    tl.store(dh_ptr + rows[:, None] * stride_db + ds[None, :] * stride_dd, acc.to(dh_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_features_kernel(
    g_ptr, w_ptr, h_ptr, coef_ptr, dh_ptr,
    B, D, K,
    stride_gb, stride_wk, stride_wd, stride_hb, stride_hd, stride_db, stride_dd,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    """dH = G W + a ⊙ h for one (BLOCK_B rows × BLOCK_D features) tile per program, reducing over the K classes."""
    pid_b, pid_d = _grouped_tile(tl.program_id(0), tl.cdiv(B, BLOCK_B), tl.cdiv(D, BLOCK_D), GROUP)
    rows = pid_b.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    ds = pid_d.to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < B
    d_ok = ds < D
    acc = _grad_mainloop(g_ptr, w_ptr, rows, ds, B, D, 0, K, stride_gb, stride_wk, stride_wd,
                         BLOCK_B, BLOCK_D, BLOCK_K, INPUT_PRECISION, UPCAST_DOT)
    _grad_epilogue(acc, rows, ds, row_ok, d_ok, h_ptr, coef_ptr, dh_ptr, stride_hb, stride_hd, stride_db, stride_dd)


@triton.jit
def _scale_grad_kernel(grad_ptr, grad_loss_ptr, scale_ptr, scale_offset, numel, D, stride_gl,
                       PER_ROW: tl.constexpr, HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr):
    """The backward, in place: dL/dh = grad_output · weight · dℓ/dh, the factor formed in fp32 and the product
    rounded once to the gradient's dtype. grad_output is one value per row for reduction="none" (any stride, 0
    included: ``loss.sum().backward()`` hands an expanded one), else a scalar times the batch weight."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if PER_ROW:
        factor = tl.load(grad_loss_ptr + (offs // D) * stride_gl, mask=mask, other=0.0).to(tl.float32)
    else:
        factor = tl.load(grad_loss_ptr).to(tl.float32)
        if HAS_SCALE:
            factor = factor * tl.load(scale_ptr + scale_offset)
    tl.store(grad_ptr + offs, (g * factor).to(grad_ptr.dtype.element_ty), mask=mask)
