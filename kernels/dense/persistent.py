"""Persistent schedules of the two GEMM kernels of the tiled regime (math: :mod:`haf.kernels.dense.kernels`).

One program per SM (grid chosen by the host from the cached SM count) walks the tiles ``pid, pid + P, ...`` in the
grouped order of ``_grouped_tile`` (L2 reuse), so no wave boundary and no per-tile launch cost. ``TMA``: the
operands come in through host-side tensor descriptors (``triton.tools.tensor_descriptor.TensorDescriptor``, Hopper
TMA, out-of-range elements read as 0) instead of pointer loads.

Kernel 3's tail (dH = G W + a h): of its T tiles the first ``FULL_TILES`` (whole rounds of P) are done whole; each
of the R remaining tiles is split over the classes into ``SPLITS`` slices so the last round keeps every SM busy.
A slice stores its fp32 partial tile, takes a ticket, and the slice that arrives last sums the partials in slice
order (deterministic) and writes the tile; it resets the ticket for the next launch.
"""
from __future__ import annotations

import triton
import triton.language as tl

from haf.kernels.dense.kernels import _grad_epilogue, _grad_mainloop, _grouped_tile, _logits_epilogue, _logits_mainloop, _mma


@triton.jit
def _logits_mainloop_tma(h_desc, w_desc, row0, col0, D, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
                         BLOCK_D: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        h = h_desc.load([row0, d0])
        w = w_desc.load([col0, d0])
        acc = _mma(h, tl.trans(w), acc, INPUT_PRECISION, UPCAST_DOT)
    return acc


@triton.jit
def _logits_stats_persistent_kernel(
    h_src, w_src, inv_wnorm_ptr, table_ptr, y_ptr, hnorm_ptr, z_ptr, part_ptr,  # h_src, w_src: pointers or TMA
    B, D, K, T, ignore_index,
    stride_hb, stride_hd, stride_wk, stride_wd, stride_table, stride_zb, stride_pq, stride_pb,
    H_EPS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, STORE_Z: tl.constexpr, TMA: tl.constexpr,
):
    """``_logits_stats_kernel``'s tiles, walked by a persistent grid."""
    row_blocks = tl.cdiv(B, BLOCK_B)
    col_blocks = tl.cdiv(K, BLOCK_K)
    for tile in range(tl.program_id(0), row_blocks * col_blocks, tl.num_programs(0)):
        pid_b, pid_k = _grouped_tile(tile, row_blocks, col_blocks, GROUP)
        rows = pid_b.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
        cols = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
        row_ok = rows < B
        col_ok = cols < K
        if TMA:
            acc = _logits_mainloop_tma(h_src, w_src, pid_b * BLOCK_B, pid_k * BLOCK_K, D, BLOCK_B, BLOCK_K, BLOCK_D,
                                       INPUT_PRECISION, UPCAST_DOT)
        else:
            acc = _logits_mainloop(h_src, w_src, rows, cols, B, D, K, stride_hb, stride_hd, stride_wk, stride_wd,
                                   BLOCK_B, BLOCK_K, BLOCK_D, INPUT_PRECISION, UPCAST_DOT)
        _logits_epilogue(acc, rows, cols, row_ok, col_ok, pid_k, inv_wnorm_ptr, table_ptr, y_ptr, hnorm_ptr, z_ptr,
                         part_ptr, K, ignore_index, stride_table, stride_zb, stride_pq, stride_pb,
                         H_EPS, BLOCK_B, BLOCK_K, STORE_Z)


@triton.jit
def _grad_mainloop_tma(g_desc, w_desc, row0, d0, k_begin, k_end, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """(G W) tile over k_begin ≤ k < k_end; k_end is K or a multiple of BLOCK_K, so no slice reads another's."""
    acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        g = g_desc.load([row0, k0])
        w = w_desc.load([k0, d0])
        acc = _mma(g, w, acc, INPUT_PRECISION, UPCAST_DOT)
    return acc


@triton.jit
def _grad_features_persistent_kernel(
    g_src, w_src, h_ptr, coef_ptr, dh_ptr, split_ptr, ticket_ptr,  # g_src, w_src: pointers or TMA descriptors
    B, D, K, FULL_TILES, SPLITS, K_PER_SPLIT,
    stride_gb, stride_wk, stride_wd, stride_hb, stride_hd, stride_db, stride_dd,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, TMA: tl.constexpr,
):
    """``_grad_features_kernel``'s tiles on a persistent grid, the last round's tiles split over the classes
    (split_ptr: fp32 partial tiles, (T − FULL_TILES) · SPLITS of BLOCK_B × BLOCK_D; ticket_ptr: int32 per split
    tile, zero between launches)."""
    row_blocks = tl.cdiv(B, BLOCK_B)
    d_blocks = tl.cdiv(D, BLOCK_D)
    units = FULL_TILES + (row_blocks * d_blocks - FULL_TILES) * SPLITS
    offs_b = tl.arange(0, BLOCK_B)
    offs_d = tl.arange(0, BLOCK_D)
    for unit in range(tl.program_id(0), units, tl.num_programs(0)):
        whole = unit < FULL_TILES
        slot = tl.where(whole, 0, (unit - FULL_TILES) // SPLITS)
        part = tl.where(whole, 0, (unit - FULL_TILES) % SPLITS)
        tile = tl.where(whole, unit, FULL_TILES + slot)
        k_begin = tl.where(whole, 0, part * K_PER_SPLIT)
        k_end = tl.where(whole, K, tl.minimum(K, k_begin + K_PER_SPLIT))
        pid_b, pid_d = _grouped_tile(tile, row_blocks, d_blocks, GROUP)
        rows = pid_b.to(tl.int64) * BLOCK_B + offs_b
        ds = pid_d.to(tl.int64) * BLOCK_D + offs_d
        row_ok = rows < B
        d_ok = ds < D
        if TMA:
            acc = _grad_mainloop_tma(g_src, w_src, pid_b * BLOCK_B, pid_d * BLOCK_D, k_begin, k_end,
                                     BLOCK_B, BLOCK_D, BLOCK_K, INPUT_PRECISION, UPCAST_DOT)
        else:
            acc = _grad_mainloop(g_src, w_src, rows, ds, B, D, k_begin, k_end, stride_gb, stride_wk, stride_wd,
                                 BLOCK_B, BLOCK_D, BLOCK_K, INPUT_PRECISION, UPCAST_DOT)
        done = whole
        if not whole:
            tile_offs = offs_b[:, None] * BLOCK_D + offs_d[None, :]
            first = split_ptr + slot.to(tl.int64) * SPLITS * (BLOCK_B * BLOCK_D)
            tl.store(first + part * (BLOCK_B * BLOCK_D) + tile_offs, acc)
            tl.debug_barrier()  # every thread's partial stored before the ticket is taken
            ticket = tl.atomic_add(ticket_ptr + slot, 1)  # acq_rel: the last slice sees every partial
            done = ticket == SPLITS - 1
            if done:
                acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
                for j in range(0, SPLITS):
                    acc += tl.load(first + j * (BLOCK_B * BLOCK_D) + tile_offs, volatile=True)
                tl.atomic_xchg(ticket_ptr + slot, 0)  # ready for the next launch (and a CUDA graph's replay)
        if done:
            _grad_epilogue(acc, rows, ds, row_ok, d_ok, h_ptr, coef_ptr, dh_ptr, stride_hb, stride_hd, stride_db,
                           stride_dd)
