"""Host side of the tiled (compute-bound) regime: plan and launches of ‖h‖ → z tiles + row partials → softmax/G →
dH = G W + a h, rows in chunks that bound the transient z (fp32) and G buffers. Kernels:
:mod:`haf.kernels.dense.kernels` (``basic``) and :mod:`haf.kernels.dense.persistent` (``persistent``,
``tma``); the variant is fixed in the plan (:func:`haf.kernels.dense.config.resolve_variant`).

W stays fp32 in every input dtype (r_i = 1/‖w_i‖ from that copy) and G is stored in fp32: half-precision feature
tiles are upcast in registers and multiplied with fp32-accurate products (:func:`config._input_precision`), because
near convergence cos − S ≈ 2⁻⁹ is the size of a half rounding of W or G. Launches go through the ``launch`` callables handed in by
:mod:`haf.kernels.dense.fused` (the host benchmark counts and stubs them there).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

from haf.kernels.dense import kernels as K
from haf.kernels.dense import persistent as P
from haf.kernels.dense.config import (
    NUM_PARTIALS, KernelConfig, _cdiv, _chunk_rows, _input_precision, _next_power_of_2, _sm_count,
    _tensor_descriptor_class, _upcast_dot, choose_config, persistent_programs, resolve_variant,
)
from haf.kernels.dense.memo import TicketBook
from haf.kernels.dense.reference import FEATURE_EPS

#: Most class slices a tile of kernel 3's last round is split into.
MAX_TAIL_SPLITS = 8


class FusedOutput(NamedTuple):
    loss: torch.Tensor  # fp32: scalar, or B values for reduction="none"
    logits: torch.Tensor | None  # B × K fp32 when asked for
    grad_features: torch.Tensor | None  # per-row dℓ_b/dh_b, unweighted (B × D, input dtype), when asked for
    scale: torch.Tensor | None  # fp32 holding the batch weight of every row (1/#counted for a mean); None means 1
    scale_offset: int = 0  # ... at this element (the row-block regime keeps it in its workspace: no view to make)

    def scale_tensor(self) -> torch.Tensor | None:
        """The batch weight as a (1,) tensor (a view), or None for 1."""
        return None if self.scale is None else self.scale[self.scale_offset:self.scale_offset + 1]


@dataclasses.dataclass(frozen=True)
class TiledPlan:
    config: KernelConfig
    precision: str | None
    upcast: bool
    chunk: int
    tiles_k: int
    block_t: int
    col_blocks: int
    variant: str = "basic"  # see frame_loss_config.VARIANTS
    programs: int = 1  # persistent grid (one program per SM)
    tickets: TicketBook | None = None  # int32 per split tile of kernel 3's last round, per stream / captured graph


def tiled_plan(batch, dim, classes, dtype, device, compute_grad, return_logits, config) -> TiledPlan:
    precision = _input_precision(dtype)
    config = config or choose_config(batch, dim, classes, dtype, precision)
    store_z = compute_grad or return_logits
    g_bytes = 0  # G (fp32) overwrites z in place whenever rows are chunked (z is returned only unchunked)
    if return_logits or not store_z:
        chunk = batch
    else:
        chunk = _chunk_rows(batch, dim, classes, g_bytes, config, _sm_count(device))
    tiles_k = _cdiv(classes, config.logits_block_k)
    variant = resolve_variant(device)
    programs = persistent_programs(device)
    tickets = TicketBook(programs, device) if variant != "basic" else None
    return TiledPlan(config, precision, _upcast_dot(dtype), chunk, tiles_k,
                     min(_next_power_of_2(tiles_k), config.partials_block), _cdiv(classes, config.cols_block),
                     variant, programs, tickets)


def g_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of G (the per-class gradient fed to kernel 3): fp32 for every input dtype."""
    return torch.float32


def tail_split(tiles: int, programs: int, k_blocks: int, block_k: int) -> tuple[int, int, int]:
    """(whole tiles, slices per tail tile, classes per slice) for kernel 3 on a persistent grid: whole rounds of
    ``programs`` tiles stay whole, each of the R tiles left is cut into ≤ programs // R slices of whole class
    blocks, so the last round gives every program about the same work."""
    full = tiles // programs * programs
    rest = tiles - full
    splits = min(programs // rest, k_blocks, MAX_TAIL_SPLITS) if rest else 1
    if splits <= 1:
        return tiles, 1, k_blocks * block_k
    per_split = _cdiv(k_blocks, splits) * block_k
    return full, _cdiv(k_blocks * block_k, per_split), per_split


def _tma_source(tensor: torch.Tensor, block: list[int]):
    """A TMA descriptor over a 2-D tensor (zero padding past its edges), or the tensor itself when TMA cannot
    address it: last stride 1, row stride and base 16-byte aligned."""
    size = tensor.element_size()
    if (tensor.stride(1) != 1 or (tensor.stride(0) * size) % 16 or tensor.data_ptr() % 16
            or tensor.shape[0] == 0 or tensor.shape[1] == 0):
        return tensor
    return _tensor_descriptor_class()(tensor, list(tensor.shape), [tensor.stride(0), 1], block)


def _operands(plan: TiledPlan, a: torch.Tensor, a_block, b: torch.Tensor, b_block):
    """Both operands as descriptors (variant ``tma``, both addressable), else both as tensors. Not for IEEE fp32:
    its products run on the FMA units, which TMA does not feed faster (and ptxas spills that combination)."""
    if plan.variant == "tma" and plan.precision != "ieee":
        a_src, b_src = _tma_source(a, a_block), _tma_source(b, b_block)
        if a_src is not a and b_src is not b:
            return a_src, b_src, True
    return a, b, False


def tiled_forward(plan: TiledPlan, features, prepared, table, target, alpha, ignore_index, reduction,
                  compute_grad, return_logits, status, launch, launch_checked, tickets=None) -> FusedOutput:
    config = plan.config
    batch, dim = features.shape
    weight = prepared.weight
    num_classes = weight.shape[0]
    device, dtype = features.device, features.dtype
    if features.stride(1) * config.logits_block_d >= 2**31:  # kernel 1 steps its pointers by an int32 product
        features = features.contiguous()
    chunk = plan.chunk
    loss_rows = torch.empty(batch, device=device, dtype=torch.float32)
    logits = torch.empty(batch, num_classes, device=device, dtype=torch.float32) if return_logits else None
    grad = torch.empty(batch, dim, device=device, dtype=dtype) if compute_grad else None
    store_z = compute_grad or return_logits
    z_buf = torch.empty(chunk, num_classes, device=device, dtype=torch.float32) if store_z and logits is None else None
    g_buf = (z_buf if logits is None else torch.empty(chunk, num_classes, device=device, dtype=g_dtype(dtype))) \
        if compute_grad else None
    tiles_k = plan.tiles_k
    workspace = torch.empty(NUM_PARTIALS * chunk * tiles_k + chunk + batch, device=device, dtype=torch.float32)
    partials = workspace[: NUM_PARTIALS * chunk * tiles_k].view(NUM_PARTIALS, chunk, tiles_k)
    coef = workspace[NUM_PARTIALS * chunk * tiles_k:NUM_PARTIALS * chunk * tiles_k + chunk]
    hnorm = workspace[NUM_PARTIALS * chunk * tiles_k + chunk:]
    launch_checked(status, device, K._row_norm_kernel, (_cdiv(batch, 32),), features, hnorm, status.word,
                   batch, dim, features.stride(0), features.stride(1), BLOCK_B=32, BLOCK_D=64)
    sms = _sm_count(device)
    persistent = plan.variant != "basic"
    for start in range(0, batch, chunk):
        rows = min(chunk, batch - start)
        h = features[start:start + rows]
        y = target[start:start + rows]
        norms = hnorm[start:start + rows]
        z = logits[start:start + rows] if logits is not None else (z_buf[:rows] if z_buf is not None else partials)
        logits_args = (prepared.inv_norm, table, y, norms, z, partials, rows, dim, num_classes, tiles_k, ignore_index,
                       h.stride(0), h.stride(1), weight.stride(0), weight.stride(1), table.stride(0),
                       z.stride(0), partials.stride(0), partials.stride(1))
        logits_meta = dict(H_EPS=FEATURE_EPS, BLOCK_B=config.logits_block_b, BLOCK_K=config.logits_block_k,
                           BLOCK_D=config.logits_block_d, GROUP=config.group, INPUT_PRECISION=plan.precision,
                           UPCAST_DOT=plan.upcast, STORE_Z=store_z, num_warps=config.logits_warps,
                           num_stages=config.logits_stages)
        tiles = _cdiv(rows, config.logits_block_b) * tiles_k
        if persistent:
            h_src, w_src, tma = _operands(plan, h, [config.logits_block_b, config.logits_block_d],
                                          weight, [config.logits_block_k, config.logits_block_d])
            launch(P._logits_stats_persistent_kernel, (min(plan.programs, tiles),), h_src, w_src, *logits_args,
                   TMA=tma, **logits_meta)
        else:
            launch(K._logits_stats_kernel, (tiles,), h, weight, *logits_args, **logits_meta)
        row_blocks = _cdiv(rows, config.rows_block)
        if compute_grad:  # enough column splits for ~4 programs per SM, each sweeping a contiguous class range
            splits = max(1, min(plan.col_blocks, _cdiv(4 * sms, row_blocks)))
            cols_per_program = _cdiv(plan.col_blocks, splits) * config.cols_block
            splits = _cdiv(num_classes, cols_per_program)
        else:
            splits, cols_per_program = 1, config.cols_block
        g = g_buf[:rows] if g_buf is not None else partials
        launch(K._softmax_grad_kernel, (row_blocks, splits),
               z, g, partials, norms, prepared.inv_norm, table, y, loss_rows[start:start + rows], coef,
               rows, num_classes, tiles_k, cols_per_program, alpha, ignore_index,
               z.stride(0), g.stride(0), partials.stride(0), partials.stride(1), table.stride(0),
               H_EPS=FEATURE_EPS, WRITE_G=compute_grad, BLOCK_R=config.rows_block, BLOCK_C=config.cols_block,
               BLOCK_T=plan.block_t, num_warps=config.rows_warps)
        if compute_grad and dim > 0:
            _grad_features(plan, launch, g, weight, h, coef, grad[start:start + rows], rows, dim, num_classes,
                           tickets)
    scale = None
    if reduction == "none":
        loss = loss_rows
    elif reduction == "sum":
        loss = loss_rows.sum()
    else:
        scale = (target.long() != ignore_index).sum(dtype=torch.float32).clamp_min(1.0).reciprocal().reshape(1)
        loss = loss_rows.sum() * scale[0]
    return FusedOutput(loss, logits, grad, scale)


def _grad_features(plan: TiledPlan, launch, g, weight, h, coef, dh, rows, dim, num_classes, tickets) -> None:
    """Kernel 3 for one chunk: dH = G W + a h, one program per tile, or persistent with a split last round."""
    config = plan.config
    strides = (weight.stride(0), weight.stride(1), h.stride(0), h.stride(1), dh.stride(0), dh.stride(1))
    meta = dict(BLOCK_B=config.grad_block_b, BLOCK_D=config.grad_block_d, BLOCK_K=config.grad_block_k,
                GROUP=config.group, INPUT_PRECISION=plan.precision, UPCAST_DOT=plan.upcast,
                num_warps=config.grad_warps, num_stages=config.grad_stages_for(plan.variant))
    tiles = _cdiv(rows, config.grad_block_b) * _cdiv(dim, config.grad_block_d)
    if plan.variant == "basic":
        launch(K._grad_features_kernel, (tiles,), g, weight, h, coef, dh, rows, dim, num_classes, g.stride(0),
               *strides, **meta)
        return
    full, splits, per_split = tail_split(tiles, plan.programs, _cdiv(num_classes, config.grad_block_k),
                                         config.grad_block_k)
    units = full + (tiles - full) * splits
    split_buf = torch.empty(max(1, (tiles - full) * splits * config.grad_block_b * config.grad_block_d),
                            device=h.device, dtype=torch.float32)
    g_src, w_src, tma = _operands(plan, g, [config.grad_block_b, config.grad_block_k],
                                  weight, [config.grad_block_k, config.grad_block_d])
    launch(P._grad_features_persistent_kernel, (min(plan.programs, units),),
           g_src, w_src, h, coef, dh, split_buf, tickets, rows, dim, num_classes, full, splits, per_split,
           g.stride(0), *strides, TMA=tma, **meta)
