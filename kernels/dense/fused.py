"""Fused Triton path of the HAFrame loss: host side (prepared frames, status word, plans, autograd). Kernels and
math: :mod:`haf.kernels.dense.kernels`; reference: :func:`haf.kernels.dense.reference.hierarchy_frame_loss`.

Two regimes, chosen once per launch plan (cached per shape, dtype, device, reduction, precision, variant):
**launch-bound** (B·K ≤ 2²¹, K ≤ 2048: the paper shapes) — ``_row_block_kernel``, fp32 frame and products
(``tf32x3``, or IEEE under ``highest``), one launch forward (the loss reduced on the device), one backward
(grad_output × batch weight); **tiled** — :mod:`haf.kernels.dense.tiled` (configuration and schedule
variants: :mod:`haf.kernels.dense.config`).

Per call: a dictionary lookup of the checked arguments and of the plan, the prepared frame and S from a weak memo
(value checks ran once), a few allocations and the launches; no host synchronisation, so forward + backward is
CUDA-graph capturable once warm (a first call during capture is refused: its plan, prepared copies and ticket
words must not come from the graph's memory pool) (host cost and budgets: bench/RESULTS.md). NaN/inf features set a status word the
kernels write: read after the launch on CPU, from pinned host memory at the next call on a GPU; both raise
``ValueError``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import NamedTuple

import torch

from haf.kernels.dense import kernels as K
from haf.kernels.dense.config import (  # noqa: F401 (re-exported: tests and benchmarks reach them here)
    _DTYPE_NAME, _REDUCE, INTERPRETED, NUM_PARTIALS, ROW_BLOCK_MAX_CLASSES, SMALL_PROBLEM_ELEMENTS,
    SUPPORTED_DTYPES, TUNED, KernelConfig, _cdiv, _chunk_rows, _input_precision, _next_power_of_2,
    VARIANT_ENV, _row_block_precision, _sm_count, _upcast_dot, choose_config, row_block_regime,
)
from haf.kernels.dense.inputs import (
    check_frame_loss_inputs, check_frame_values, check_similarity_values, check_target_range, parse_alpha,
)
from haf.kernels.backends import autocast_features
from haf.kernels.dense.memo import PreparedCache, StatusWord, TicketBook, capturing, stream_key
from haf.kernels.dense.reference import COSINE_EPS, FEATURE_EPS
from haf.kernels.dense.tiled import FusedOutput, tiled_forward, tiled_plan

__all__ = ["INTERPRETED", "KernelConfig", "choose_config", "fused_frame_loss_forward", "triton_frame_loss"]


# ----------------------------------------------------------------------------------------------------------------
# Prepared frame and similarity: weak-keyed by the tensor (an entry dies with its tensor), rebuilt on a new version
# ----------------------------------------------------------------------------------------------------------------
class _PreparedFrame(NamedTuple):
    weight: torch.Tensor  # K × D, contiguous, in the dtype the kernels multiply
    inv_norm: torch.Tensor  # K fp32: 1 / max(‖w_i‖, ε) of exactly that copy


_FRAMES = PreparedCache()
_TABLES = PreparedCache()
_frames, _tables = _FRAMES.entries, _TABLES.entries


def _prepare_frame(frame: torch.Tensor, dtype: torch.dtype, unit_frame: bool = False) -> _PreparedFrame:
    def build() -> _PreparedFrame:
        _refuse_in_capture(frame.device, "prepares a copy of the frame")
        check_frame_values(frame, unit_frame)
        weight = frame.detach().to(dtype).contiguous()
        norms = torch.linalg.vector_norm(weight.to(torch.float32), dim=1)
        return _PreparedFrame(weight, 1.0 / norms.clamp_min(COSINE_EPS))

    return _FRAMES.get(frame, (dtype, unit_frame), build)


def _prepare_similarity(similarity: torch.Tensor) -> torch.Tensor:
    """S in fp32, rows contiguous (S is symmetric — checked once — so row y holds S[i, y] over i)."""
    def build() -> torch.Tensor:
        _refuse_in_capture(similarity.device, "prepares a copy of the similarity")
        check_similarity_values(similarity)
        return similarity.detach().to(torch.float32).contiguous()

    return _TABLES.get(similarity, "table", build)


def _refuse_in_capture(device: torch.device, what: str) -> None:
    """Cached device memory is never taken from a CUDA graph's pool (it would be reused once the graph dies)."""
    if capturing(device):
        raise RuntimeError(f"haf.kernels.frame_loss {what} on its first call with these shapes, which cannot run "
                           "during CUDA-graph capture: make one call before capturing (the usual warm-up)")


# ----------------------------------------------------------------------------------------------------------------
# Status word (NaN/inf features) and launch plans
# ----------------------------------------------------------------------------------------------------------------
_STATUS: dict[torch.device, StatusWord] = {}


def _status(device: torch.device) -> StatusWord:
    status = _STATUS.get(device)
    if status is None:
        _refuse_in_capture(device, "allocates its status word")
        status = _STATUS[device] = StatusWord(device)
    return status


def _launch(kernel, grid, *args, **meta) -> None:
    """Every kernel launch of this module goes through here (the host benchmark counts and stubs them)."""
    kernel[grid](*args, **meta)


def _launch_checked(status: StatusWord, device: torch.device, kernel, grid, *args, **meta) -> None:
    """A launch that writes the status word; a Triton that refuses pinned host memory gets device memory."""
    try:
        _launch(kernel, grid, *args, **meta)
    except ValueError as error:
        if status.view is None or device.type != "cuda" or "ointer" not in str(error):
            raise
        old = status.word
        status.use_device_memory(device)
        _launch(kernel, grid, *(status.word if arg is old else arg for arg in args), **meta)


@dataclasses.dataclass(frozen=True)
class _RowPlan:
    """Launch plan of the launch-bound regime (all host arithmetic done once)."""

    grid: tuple[int]
    work_numel: int  # [loss, scale | B row losses | 2·P partials] (fp32; kept by the backward for the scale)
    scratch_numel: int  # [z | G] (fp32, B × K each; transient, never kept for the backward)
    offsets: tuple[int, int, int]  # rows and partials in the workspace, G in the scratch
    meta: dict
    tickets: TicketBook  # one int32 word per stream / captured graph, zero between launches (the last program resets it)


_PLANS: dict[tuple, object] = {}


def _row_plan(batch, dim, classes, device, reduction, compute_grad, config) -> _RowPlan:
    programs = _cdiv(batch, config.row_block_b)
    off_rows, off_parts = 2, 2 + batch
    numel = off_parts + 2 * programs
    scratch = 2 * batch * classes if compute_grad else 1
    meta = dict(H_EPS=FEATURE_EPS, BLOCK_B=config.row_block_b, BLOCK_K=config.row_block_k,
                BLOCK_D=config.row_block_d, BLOCK_P=min(1024, _next_power_of_2(programs)),
                REDUCE=_REDUCE[reduction], WRITE_GRAD=compute_grad, INPUT_PRECISION=_row_block_precision(),
                num_warps=config.row_warps)
    return _RowPlan((programs,), numel, scratch, (off_rows, off_parts, batch * classes), meta, TicketBook(1, device))


def _row_block_forward(plan: _RowPlan, features, prepared, table, target, alpha, ignore_index, reduction,
                       compute_grad, status, ticket) -> FusedOutput:
    batch, dim = features.shape
    device = features.device
    work = torch.empty(plan.work_numel, device=device, dtype=torch.float32)
    scratch = torch.empty(plan.scratch_numel, device=device, dtype=torch.float32)
    grad = torch.empty(batch, dim, device=device, dtype=features.dtype) if compute_grad else work
    off_rows, off_parts, off_g = plan.offsets
    _launch_checked(
        status, device, K._row_block_kernel, plan.grid,
        features, prepared.weight, prepared.inv_norm, table, target, work, scratch, grad, ticket, status.word,
        batch, dim, prepared.weight.shape[0], alpha, ignore_index, features.stride(0), features.stride(1),
        off_rows, off_parts, off_g, **plan.meta,
    )
    if reduction == "none":
        loss, scale = work[off_rows:off_parts], None
    else:
        loss, scale = work[0], (work if reduction == "mean" else None)
    return FusedOutput(loss, None, grad if compute_grad else None, scale, 1)


def fused_frame_loss_forward(
    features, frame, target, similarity, alpha: float, reduction: str, ignore_index: int, *,
    compute_grad: bool, return_logits: bool = False, config: KernelConfig | None = None, unit_frame: bool = False,
) -> FusedOutput:
    """Run the kernels through a cached plan. Shapes/devices are assumed checked (see :func:`triton_frame_loss`)."""
    batch, dim = features.shape
    num_classes = frame.shape[0]
    device, dtype = features.device, features.dtype
    status = _status(device)
    if device.type == "cuda":
        status.raise_if_set()  # written by an earlier call's kernel (no synchronisation)
    row_regime = row_block_regime(batch, dim, num_classes, return_logits, config)
    precision = torch.get_float32_matmul_precision()
    key = (batch, dim, num_classes, dtype, device, reduction, compute_grad, return_logits, config, precision,
           None if row_regime else os.environ.get(VARIANT_ENV))  # the variant: tiled regime only
    plan = _PLANS.get(key)
    capture = capturing(device)
    if plan is None:
        _refuse_in_capture(device, "makes its launch plan")
        if row_regime:
            plan = _row_plan(batch, dim, num_classes, device, reduction, compute_grad,
                             config or choose_config(batch, dim, num_classes, dtype, None))
        else:
            plan = tiled_plan(batch, dim, num_classes, dtype, device, compute_grad, return_logits, config)
        _PLANS[key] = plan
    table = _prepare_similarity(similarity)
    target = target if target.is_contiguous() else target.contiguous()
    if row_regime:
        prepared = _prepare_frame(frame, torch.float32, unit_frame)
        out = _row_block_forward(plan, features, prepared, table, target, alpha, ignore_index, reduction,
                                 compute_grad, status, plan.tickets.get(stream_key(device), capture))
    else:
        prepared = _prepare_frame(frame, torch.float32, unit_frame)  # never rounded to half (see tiled)
        tickets = plan.tickets.get(stream_key(device), capture) if plan.tickets is not None else None
        out = tiled_forward(plan, features, prepared, table, target, alpha, ignore_index, reduction,
                            compute_grad, return_logits, status, _launch, _launch_checked, tickets)
    if device.type != "cuda":
        status.raise_if_set()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Autograd, torch.library registration and the checked entry point
# ----------------------------------------------------------------------------------------------------------------
#: Elements per program of the backward's elementwise kernel (the interpreter runs few, large programs).
_SCALE_BLOCK = 1 << 16 if INTERPRETED else 2048


def _scale_grad(grad: torch.Tensor, grad_loss: torch.Tensor, scale, scale_offset: int,
                reduction: str) -> torch.Tensor:
    """dL/dh = grad_output × batch weight (``scale[scale_offset]``, or 1 for None) × per-row gradient, in place, in
    one launch (``_scale_grad_kernel``)."""
    numel = grad.numel()
    if numel:
        per_row = reduction == "none"
        _launch(K._scale_grad_kernel, (_cdiv(numel, _SCALE_BLOCK),), grad, grad_loss,
                grad_loss if scale is None else scale, scale_offset, numel, grad.shape[1],
                grad_loss.stride(0) if per_row else 0,
                PER_ROW=per_row, HAS_SCALE=scale is not None, BLOCK=_SCALE_BLOCK, num_warps=4)
    return grad


class FusedFrameLossFunction(torch.autograd.Function):
    """Forward runs the kernels and keeps the per-row dℓ/dh; backward scales it by grad_output (in place: the
    buffer is private to this node and handed over once, so a second backward through it is refused).
    ``call`` = (frame, target, similarity, alpha, reduction, ignore_index, return_logits, config, unit_frame), one
    argument so that ``apply`` has little to bind and to scan: none of them takes a gradient (the frame and S are
    fixed, refused when they require grad)."""

    @staticmethod
    def forward(ctx, features, call):
        frame, target, similarity, alpha, reduction, ignore_index, return_logits, config, unit_frame = call
        out = fused_frame_loss_forward(
            features, frame, target, similarity, alpha, reduction, ignore_index,
            compute_grad=True, return_logits=return_logits, config=config, unit_frame=unit_frame,
        )
        ctx.grad_features, ctx.scale, ctx.scale_offset, ctx.reduction = (out.grad_features, out.scale,
                                                                          out.scale_offset, reduction)
        if out.logits is not None:
            ctx.mark_non_differentiable(out.logits)
            return out.loss, out.logits
        return out.loss

    @staticmethod
    def backward(ctx, grad_loss, *unused_grad_logits):
        if torch.is_grad_enabled():  # create_graph=True: the result has no derivative (once_differentiable's rule)
            return _backward_once_differentiable(ctx, grad_loss)
        return _backward(ctx, grad_loss)


def _backward(ctx, grad_loss):
    grad = ctx.grad_features
    if grad is None:
        raise RuntimeError(
            "haf.kernels.frame_loss (triton backend) computes dL/dh in the forward and hands it over on the "
            "first backward; backpropagating through it twice (retain_graph=True) is not supported. "
            "Use backend='reference' for that."
        )
    ctx.grad_features = None
    return _scale_grad(grad, grad_loss, ctx.scale, ctx.scale_offset, ctx.reduction), None


#: ``FusedFrameLossFunction.apply`` less its Python wrapper (default-argument binding, and the unwrapping of dead
#: functorch wrappers, which only exist under functorch transforms: then the full ``apply`` runs).
_C_APPLY = super(torch.autograd.Function, FusedFrameLossFunction).apply


def _apply_fused(features: torch.Tensor, call: tuple):
    if torch._C._are_functorch_transforms_active():
        return FusedFrameLossFunction.apply(features, call)
    return _C_APPLY(features, call)


#: The backward under ``create_graph=True``; the plain backward runs with grad mode already off and skips the
#: wrapper's context switch (a few microseconds of a ~60 µs host step).
_backward_once_differentiable = torch.autograd.function.once_differentiable(_backward)


def _check_inputs(features, frame, target, similarity, alpha, reduction, ignore_index) -> float:
    """The reference's checks (same messages) plus what only the fused path requires; returns α."""
    if isinstance(features, torch.Tensor) and features.is_floating_point() and features.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"the triton backend takes features in {[str(d) for d in SUPPORTED_DTYPES]}, got {features.dtype}; "
            "use backend='reference' for other dtypes"
        )
    alpha = check_frame_loss_inputs(features, frame, target, similarity, alpha, reduction, ignore_index)
    if frame.shape[0] == 0:
        raise ValueError("frame has no rows: the loss needs at least one class")
    if features.is_cuda == INTERPRETED:
        raise ValueError(
            f"the triton kernels were built {'for the CPU interpreter' if INTERPRETED else 'for the GPU'} but the "
            f"features are on {features.device}: "
            + ("unset TRITON_INTERPRET to run them on CUDA tensors" if INTERPRETED else
               "set TRITON_INTERPRET=1 before importing haf.kernels to run them on CPU tensors, or use "
               "backend='reference'")
        )
    return alpha


def device_guard(features: torch.Tensor):
    """The features' CUDA device made current for the launches (Triton launches on the current device)."""
    if features.is_cuda and features.device.index != torch.cuda.current_device():
        return torch.cuda.device(features.device)
    return contextlib.nullcontext()


_CHECKED: dict[tuple, bool] = {}


def _call_key(features, frame, target, similarity, reduction, ignore_index) -> tuple:
    return (features.shape, features.dtype, features.device, frame.shape, frame.dtype, frame.device,
            target.shape, target.dtype, target.device, similarity.shape, similarity.dtype, similarity.device,
            reduction, ignore_index)


def triton_frame_loss_checks(features, frame, target, similarity, alpha, reduction, ignore_index) -> float:
    """Every per-call check of the triton backend (the registered operator's entry); returns α."""
    alpha = _check_inputs(features, frame, target, similarity, alpha, reduction, ignore_index)
    if not features.is_cuda:
        check_target_range(target, frame.shape[0], ignore_index)
    return alpha


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
    unit_frame: bool = False,
):
    """The triton backend of :func:`haf.kernels.frame_loss` (same arguments; ``config`` overrides the tiles).

    The argument checks run once per combination of shapes, dtypes and devices (then a dictionary hit); the value
    checks of frame and S once per tensor version (when prepared); α is parsed unless it is already a float."""
    try:
        key = _call_key(features, frame, target, similarity, reduction, ignore_index)
        known = key in _CHECKED
    except (AttributeError, TypeError):  # not tensors, or unhashable arguments: the full checks name them
        known = False
    if not known:
        alpha = _check_inputs(features, frame, target, similarity, alpha, reduction, ignore_index)
        _CHECKED[key] = True
    elif type(alpha) is not float or not 0.0 <= alpha <= 1.0:  # the rest is known valid: only α to parse
        alpha = parse_alpha(alpha)
    if frame.requires_grad or similarity.requires_grad:
        for name, tensor in (("frame", frame), ("similarity", similarity)):
            if tensor.requires_grad and torch.is_grad_enabled():
                raise ValueError(
                    f"{name} requires grad, but the triton backend treats it as fixed (no gradient for it); "
                    f"pass {name}.detach() or use backend='reference'"
                )
    if not features.is_cuda:
        check_target_range(target, frame.shape[0], ignore_index)
    elif features.device.index != torch.cuda.current_device():  # kernels launch on the current device
        with device_guard(features):
            return triton_frame_loss(features, frame, target, similarity, alpha, reduction, ignore_index,
                                     return_logits=return_logits, config=config, unit_frame=unit_frame)
    features = autocast_features(features)

    if features.shape[0] == 0:  # nothing to launch; same values as the reference (mean of nothing = 0)
        _prepare_frame(frame, torch.float32, unit_frame)
        _prepare_similarity(similarity)
        zero = features.sum(dim=1).to(torch.float32) * 0.0
        loss = zero if reduction == "none" else zero.sum()
        empty = torch.empty(0, frame.shape[0], device=features.device, dtype=torch.float32)
        return (loss, empty) if return_logits else loss

    if features.requires_grad and torch.is_grad_enabled():
        return _apply_fused(
            features, (frame, target, similarity, alpha, reduction, ignore_index, return_logits, config, unit_frame))
    out = fused_frame_loss_forward(
        features, frame, target, similarity, alpha, reduction, ignore_index,
        compute_grad=False, return_logits=return_logits, config=config, unit_frame=unit_frame,
    )
    return (out.loss, out.logits) if return_logits else out.loss
