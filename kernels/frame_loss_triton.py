"""Fused Triton path of the HAFrame loss: host side (plans, prepared frames, autograd). Kernels and their math:
:mod:`haf.kernels.frame_loss_kernels`; reference: :func:`haf.kernels.frame_loss_reference.hierarchy_frame_loss`.

Two regimes, chosen once per launch plan (cached per shape, dtype, device, reduction):

* **launch-bound** (B·K ≤ 2²¹, K ≤ 2048: the paper shapes) — ``_row_block_kernel``, one program per 16 rows, the
  frame kept in fp32 and every product in fp32 (``tf32x3``, or IEEE under ``highest``): one launch forward (the
  last program reduces the loss on the device), one backward (``_scale_grad_kernel``: grad_output × batch weight).
* **compute-bound** — ‖h‖ pass, z tiles + row partials, softmax/G pass, dH = G W + a h: 4 launches + the batch
  reduction. W is cast to the input dtype for the tensor cores and r_i = 1/‖w_i‖ is taken from that cast copy,
  so the cosines are those of the operands the GEMM used. Transients (z fp32, G) are bounded by
  ``KernelConfig.chunk_bytes`` by processing rows in chunks.

Budgets (bf16, forward + backward, H100 SXM: 3.35 TB/s, ~650 TFLOP/s Triton GEMM): (64, 100, 100) 2.6 MFLOP,
(256, 1010, 1010) 1.0 GFLOP, (1024, 608, 608) 1.5 GFLOP — microseconds of work, decided by host cost;
(4096, 10000, 10000) 1.6 TFLOP, (8192, 2048, 32000) 2.1 TFLOP — compute-bound (≈ 2.5 and 3.3 ms of math).

Host cost per call is a dictionary lookup of the checked arguments and one of the plan, the prepared frame and
similarity from a one-entry weak memo (their value checks ran once, when prepared), three allocations and the
launch (~57 µs forward + backward with autograd, launches stubbed; ``bench/RESULTS.md``); no host
synchronisation, so the forward + backward is CUDA-graph capturable once warmed up. NaN/inf features set a status
word the kernel writes; on CPU (interpreter) it is read right after the launch, on a GPU from pinned host memory at
the next call (no synchronisation), and either raises ``ValueError``.
"""
from __future__ import annotations

import ctypes
import dataclasses
import warnings
import weakref
from typing import NamedTuple

import torch
from torch.utils.weak import WeakIdKeyDictionary

from . import frame_loss_kernels as K
from .frame_loss_inputs import (
    check_frame_loss_inputs, check_frame_values, check_similarity_values, check_target_range,
)
from .frame_loss_reference import COSINE_EPS, FEATURE_EPS

__all__ = ["INTERPRETED", "KernelConfig", "choose_config", "fused_frame_loss_forward", "triton_frame_loss"]

#: Input dtypes with a tl.dot path (fp64 stays on the reference).
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
NUM_PARTIALS = 5  # per-(row, class tile) partials of the tiled regime
#: Launch-bound regime: at most this many z elements (B·K) and classes.
SMALL_PROBLEM_ELEMENTS = 1 << 21
ROW_BLOCK_MAX_CLASSES = 2048
_REDUCE = {"none": 0, "sum": 1, "mean": 2}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _is_interpreted(kernel) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


#: True when the kernels run through Triton's CPU interpreter (then they take CPU tensors, and only CPU tensors).
INTERPRETED = _is_interpreted(K._row_block_kernel)


def _upcast_dot(dtype: torch.dtype) -> bool:
    """Triton 3.6–3.7's interpreter stores bf16 as uint16 and its tl.dot multiplies those integers, so under the
    interpreter bf16 tiles are upcast to fp32 first (exact: the same products and fp32 sums as a bf16 MMA)."""
    return INTERPRETED and dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch parameters (see :func:`choose_config` and ``TUNED`` for the defaults' origin)."""

    logits_block_b: int = 128  # tiled regime, kernel 1 tile: rows ...
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
    cols_block: int = 512  # ... × classes per step
    rows_warps: int = 4
    partials_block: int = 128  # kernel 2 merges the class-tile partials this many at a time
    group: int = 8  # grouped launch order (L2 reuse) of kernels 1 and 3
    chunk_bytes: int = 128 << 20  # bound on the transient z (+ G) buffers; see _chunk_rows
    row_block_b: int = 16  # launch-bound regime: rows per program ...
    row_block_k: int = 64  # ... classes per step ...
    row_block_d: int = 64  # ... features per step
    row_warps: int = 8
    row_block_max_classes: int = ROW_BLOCK_MAX_CLASSES  # 0 forces the tiled regime

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            floor = 0 if field.name == "row_block_max_classes" else 1
            if not isinstance(value, int) or value < floor:
                raise ValueError(f"KernelConfig.{field.name} must be a positive int, got {value!r}")
        for name in ("logits_block_b", "logits_block_k", "logits_block_d", "grad_block_b", "grad_block_d",
                     "grad_block_k", "rows_block", "cols_block", "partials_block", "row_block_b", "row_block_k",
                     "row_block_d"):
            value = getattr(self, name)
            if value & (value - 1):
                raise ValueError(f"KernelConfig.{name} must be a power of two (tl.arange), got {value}")
        for name in ("logits_block_b", "logits_block_k", "logits_block_d", "grad_block_b", "grad_block_d",
                     "grad_block_k", "row_block_b", "row_block_k", "row_block_d"):
            if getattr(self, name) < 16:
                raise ValueError(f"KernelConfig.{name} must be ≥ 16 (tl.dot's smallest tile), got {getattr(self, name)}")


#: Tiles per (regime, dtype, fp32 precision) for sm_90 (H100/H200). Chosen by compiling every variant ahead of time
#: (``python -m haf.kernels.frame_loss_aot``: no spills, no serialised wgmma) and, on a GPU, by
#: ``bench/tune_frame_loss.py``, which times the candidates it lists and prints the winner in this format.
TUNED: dict[tuple[str, str, str | None], dict] = {
    ("tiled", "bf16", None): {},
    ("tiled", "fp16", None): {},
    ("tiled", "fp32", "tf32"): {"logits_block_d": 32, "grad_block_k": 32, "grad_stages": 3},
    ("tiled", "fp32", "ieee"): {"logits_block_b": 64, "logits_block_k": 64, "logits_block_d": 32, "logits_warps": 4,
                                "logits_stages": 2, "grad_block_b": 64, "grad_block_d": 64, "grad_block_k": 32,
                                "grad_warps": 4, "grad_stages": 2},
    ("small-tiled", "any", None): {"logits_block_b": 64, "logits_block_k": 64, "logits_block_d": 32,
                                   "logits_warps": 4, "grad_block_b": 64, "grad_block_d": 64, "grad_block_k": 32,
                                   "grad_warps": 4, "grad_stages": 3},
}
_DTYPE_NAME = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_CONFIGS: dict[tuple, KernelConfig] = {}


def choose_config(
    batch: int, dim: int, num_classes: int, dtype: torch.dtype, input_precision: str | None
) -> KernelConfig:
    """Tiles for a problem (cached: built and validated once per key). No autotuning at run time, so the first
    call never benchmarks and graphs capture. Under the interpreter: few, large programs (numpy runs whole tiles)."""
    small = batch * num_classes <= SMALL_PROBLEM_ELEMENTS
    if INTERPRETED:
        key: tuple = ("interpreter",)
    elif dtype == torch.float32 and input_precision == "ieee":
        key = ("tiled", "fp32", "ieee")
    elif small:
        key = ("small-tiled", "any", None)
    else:
        key = ("tiled", _DTYPE_NAME[dtype], input_precision if dtype == torch.float32 else None)
    config = _CONFIGS.get(key)
    if config is None:
        if key == ("interpreter",):
            config = KernelConfig(logits_block_b=64, logits_block_k=256, logits_block_d=64, grad_block_b=64,
                                  grad_block_d=64, grad_block_k=256, rows_block=64, cols_block=512,
                                  row_block_b=16, row_block_k=128, row_block_d=64)
        else:
            config = KernelConfig(**TUNED[key])
        _CONFIGS[key] = config
    return config


def _input_precision(dtype: torch.dtype) -> str | None:
    """Tiled regime: fp32 follows torch's matmul precision ("highest" → IEEE, else TF32); half dtypes: None."""
    if dtype != torch.float32:
        return None
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def _row_block_precision() -> str:
    """Launch-bound regime: fp32 products always — IEEE under "highest", else 3×TF32 (fp32-accurate)."""
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32x3"


_SM_COUNT: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def _chunk_rows(batch: int, dim: int, num_classes: int, g_bytes: int, config: KernelConfig, sms: int) -> int:
    """Rows per chunk: as many as ``chunk_bytes`` allows for z (4 B) + G (``g_bytes``; 0 when G overwrites z),
    but at least enough that kernel 3 has two programs per SM, and a multiple of both row tiles."""
    step = max(config.logits_block_b, config.grad_block_b, config.rows_block)
    by_memory = config.chunk_bytes // max(1, num_classes * (4 + g_bytes))
    to_fill = _cdiv(2 * sms, _cdiv(max(dim, 1), config.grad_block_d)) * config.grad_block_b
    rows = max(by_memory, to_fill, step)
    rows = _cdiv(rows, step) * step
    return min(rows, batch)


# ----------------------------------------------------------------------------------------------------------------
# Prepared frame and similarity: weak-keyed by the tensor (an entry dies with its tensor), rebuilt on a new version
# ----------------------------------------------------------------------------------------------------------------
class _PreparedFrame(NamedTuple):
    weight: torch.Tensor  # K × D, contiguous, in the dtype the kernels multiply
    inv_norm: torch.Tensor  # K fp32: 1 / max(‖w_i‖, ε) of exactly that copy


class _PreparedCache:
    """Prepared copies weak-keyed by their source tensor (an entry dies with it) and rebuilt on a new version, with
    a one-entry front memo for the steady state (same tensor every step: one weak dereference instead of a weak
    dictionary lookup). The memo's weak reference clears it when the tensor dies, so nothing outlives its tensor."""

    def __init__(self) -> None:
        self.entries: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.last: tuple | None = None  # (weak ref, version, key, value)

    def get(self, tensor: torch.Tensor, key, build):
        last = self.last
        if last is not None and last[0]() is tensor and last[2] == key and last[1] == tensor._version:
            return last[3]
        version = _version(tensor)
        if version is None:
            return build()
        entries = self.entries.get(tensor)
        if entries is None or entries[0] != version:
            entries = (version, {})
            self.entries[tensor] = entries
        value = entries[1].get(key)
        if value is None:
            value = entries[1][key] = build()
        self.last = (weakref.ref(tensor, self._forget), version, key, value)
        return value

    def _forget(self, ref) -> None:
        last = self.last
        if last is not None and last[0] is ref:
            self.last = None


_FRAMES = _PreparedCache()
_TABLES = _PreparedCache()
_frames, _tables = _FRAMES.entries, _TABLES.entries


def _version(tensor: torch.Tensor) -> int | None:
    try:
        return tensor._version
    except RuntimeError:  # inference-mode tensors: no version counter, not cached
        return None


def _prepare_frame(frame: torch.Tensor, dtype: torch.dtype, unit_frame: bool = False) -> _PreparedFrame:
    def build() -> _PreparedFrame:
        check_frame_values(frame, unit_frame)
        weight = frame.detach().to(dtype).contiguous()
        norms = torch.linalg.vector_norm(weight.to(torch.float32), dim=1)
        return _PreparedFrame(weight, 1.0 / norms.clamp_min(COSINE_EPS))

    return _FRAMES.get(frame, (dtype, unit_frame), build)


def _prepare_similarity(similarity: torch.Tensor) -> torch.Tensor:
    """S in fp32, rows contiguous (S is symmetric — checked once — so row y holds S[i, y] over i)."""
    def build() -> torch.Tensor:
        check_similarity_values(similarity)
        return similarity.detach().to(torch.float32).contiguous()

    return _TABLES.get(similarity, "table", build)


# ----------------------------------------------------------------------------------------------------------------
# Status word (NaN/inf features) and launch plans
# ----------------------------------------------------------------------------------------------------------------
class _Status:
    """One int32 word the kernels set to 1 on NaN/inf features, readable by the host without a synchronisation:
    a CPU tensor under the interpreter, pinned (device-mapped) host memory on a GPU."""

    def __init__(self, device: torch.device) -> None:
        pinned = device.type == "cuda"
        self.word = torch.zeros(1, dtype=torch.int32, pin_memory=pinned)
        self.view = ctypes.c_int32.from_address(self.word.data_ptr())  # host view of the word (no numpy needed)

    def use_device_memory(self, device: torch.device) -> None:
        warnings.warn("this Triton build cannot write to pinned host memory: NaN/inf features are no longer "
                      "reported by haf.kernels.frame_loss on this device (the loss itself becomes NaN)", stacklevel=3)
        self.word = torch.zeros(1, dtype=torch.int32, device=device)
        self.view = None

    def raise_if_set(self) -> None:
        if self.view is not None and self.view.value:
            self.view.value = 0
            raise ValueError("features has non-finite values (NaN or inf, or a norm beyond fp32) in this or an "
                             "earlier haf.kernels.frame_loss call on this device")


_STATUS: dict[torch.device, _Status] = {}


def _status(device: torch.device) -> _Status:
    status = _STATUS.get(device)
    if status is None:
        status = _STATUS[device] = _Status(device)
    return status


def _launch(kernel, grid, *args, **meta) -> None:
    """Every kernel launch of this module goes through here (the host benchmark counts and stubs them)."""
    kernel[grid](*args, **meta)


def _launch_checked(status: _Status, device: torch.device, kernel, grid, *args, **meta) -> None:
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
    work_numel: int  # [loss, scale | B row losses | 2·P partials] (fp32)
    scratch_numel: int  # [z | G] (fp32, B × K each; transient, never kept for the backward)
    offsets: tuple[int, int, int]  # rows and partials in the workspace, G in the scratch
    meta: dict
    ticket: torch.Tensor  # int32, zero between launches (the last program resets it)


@dataclasses.dataclass(frozen=True)
class _TiledPlan:
    config: KernelConfig
    precision: str | None
    upcast: bool
    chunk: int
    tiles_k: int
    block_t: int
    col_blocks: int


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
    ticket = torch.zeros(1, dtype=torch.int32, device=device)
    return _RowPlan((programs,), numel, scratch, (off_rows, off_parts, batch * classes), meta, ticket)


def _tiled_plan(batch, dim, classes, dtype, device, compute_grad, return_logits, config) -> _TiledPlan:
    precision = _input_precision(dtype)
    config = config or choose_config(batch, dim, classes, dtype, precision)
    store_z = compute_grad or return_logits
    g_in_place = dtype == torch.float32 and not return_logits
    g_bytes = 0 if (g_in_place or not compute_grad) else torch.finfo(dtype).bits // 8
    if return_logits or not store_z:
        chunk = batch
    else:
        chunk = _chunk_rows(batch, dim, classes, g_bytes, config, _sm_count(device))
    tiles_k = _cdiv(classes, config.logits_block_k)
    return _TiledPlan(config, precision, _upcast_dot(dtype), chunk, tiles_k,
                      min(_next_power_of_2(tiles_k), config.partials_block), _cdiv(classes, config.cols_block))


class FusedOutput(NamedTuple):
    loss: torch.Tensor  # fp32: scalar, or B values for reduction="none"
    logits: torch.Tensor | None  # B × K fp32 when asked for
    grad_features: torch.Tensor | None  # per-row dℓ_b/dh_b, unweighted (B × D, input dtype), when asked for
    scale: torch.Tensor | None  # fp32 holding the batch weight of every row (1/#counted for a mean); None means 1
    scale_offset: int = 0  # ... at this element (the row-block regime keeps it in its workspace: no view to make)

    def scale_tensor(self) -> torch.Tensor | None:
        """The batch weight as a (1,) tensor (a view), or None for 1."""
        return None if self.scale is None else self.scale[self.scale_offset:self.scale_offset + 1]


def _row_block_forward(plan: _RowPlan, features, prepared, table, target, alpha, ignore_index, reduction,
                       compute_grad, status) -> FusedOutput:
    batch, dim = features.shape
    device = features.device
    work = torch.empty(plan.work_numel, device=device, dtype=torch.float32)
    scratch = torch.empty(plan.scratch_numel, device=device, dtype=torch.float32)
    grad = torch.empty(batch, dim, device=device, dtype=features.dtype) if compute_grad else work
    off_rows, off_parts, off_g = plan.offsets
    _launch_checked(
        status, device, K._row_block_kernel, plan.grid,
        features, prepared.weight, prepared.inv_norm, table, target, work, scratch, grad, plan.ticket, status.word,
        batch, dim, prepared.weight.shape[0], alpha, ignore_index, features.stride(0), features.stride(1),
        off_rows, off_parts, off_g, **plan.meta,
    )
    if reduction == "none":
        loss, scale = work[off_rows:off_parts], None
    else:
        loss, scale = work[0], (work if reduction == "mean" else None)
    return FusedOutput(loss, None, grad if compute_grad else None, scale, 1)


def _tiled_forward(plan: _TiledPlan, features, prepared, table, target, alpha, ignore_index, reduction,
                   compute_grad, return_logits, status) -> FusedOutput:
    config = plan.config
    batch, dim = features.shape
    num_classes = prepared.weight.shape[0]
    device, dtype = features.device, features.dtype
    if features.stride(1) * config.logits_block_d >= 2**31:  # kernel 1 steps its pointers by an int32 product
        features = features.contiguous()
    chunk = plan.chunk
    loss_rows = torch.empty(batch, device=device, dtype=torch.float32)
    logits = torch.empty(batch, num_classes, device=device, dtype=torch.float32) if return_logits else None
    grad = torch.empty(batch, dim, device=device, dtype=dtype) if compute_grad else None
    store_z = compute_grad or return_logits
    g_in_place = dtype == torch.float32 and not return_logits
    z_buf = torch.empty(chunk, num_classes, device=device, dtype=torch.float32) if store_z and logits is None else None
    g_buf = (z_buf if g_in_place else torch.empty(chunk, num_classes, device=device, dtype=dtype)) \
        if compute_grad else None
    tiles_k = plan.tiles_k
    workspace = torch.empty(NUM_PARTIALS * chunk * tiles_k + chunk + batch, device=device, dtype=torch.float32)
    partials = workspace[: NUM_PARTIALS * chunk * tiles_k].view(NUM_PARTIALS, chunk, tiles_k)
    coef = workspace[NUM_PARTIALS * chunk * tiles_k:NUM_PARTIALS * chunk * tiles_k + chunk]
    hnorm = workspace[NUM_PARTIALS * chunk * tiles_k + chunk:]
    _launch_checked(status, device, K._row_norm_kernel, (_cdiv(batch, 32),), features, hnorm, status.word,
                    batch, dim, features.stride(0), features.stride(1), BLOCK_B=32, BLOCK_D=64)
    sms = _sm_count(device)
    for start in range(0, batch, chunk):
        rows = min(chunk, batch - start)
        h = features[start:start + rows]
        y = target[start:start + rows]
        norms = hnorm[start:start + rows]
        z = logits[start:start + rows] if logits is not None else (z_buf[:rows] if z_buf is not None else partials)
        _launch(K._logits_stats_kernel, (_cdiv(rows, config.logits_block_b) * tiles_k,),
                h, prepared.weight, prepared.inv_norm, table, y, norms, z, partials,
                rows, dim, num_classes, tiles_k, ignore_index,
                h.stride(0), h.stride(1), prepared.weight.stride(0), prepared.weight.stride(1), table.stride(0),
                z.stride(0), partials.stride(0), partials.stride(1),
                H_EPS=FEATURE_EPS, BLOCK_B=config.logits_block_b, BLOCK_K=config.logits_block_k,
                BLOCK_D=config.logits_block_d, GROUP=config.group, INPUT_PRECISION=plan.precision,
                UPCAST_DOT=plan.upcast, STORE_Z=store_z, num_warps=config.logits_warps,
                num_stages=config.logits_stages)
        row_blocks = _cdiv(rows, config.rows_block)
        if compute_grad:  # enough column splits for ~4 programs per SM, each sweeping a contiguous class range
            splits = max(1, min(plan.col_blocks, _cdiv(4 * sms, row_blocks)))
            cols_per_program = _cdiv(plan.col_blocks, splits) * config.cols_block
            splits = _cdiv(num_classes, cols_per_program)
        else:
            splits, cols_per_program = 1, config.cols_block
        g = g_buf[:rows] if g_buf is not None else partials
        _launch(K._softmax_grad_kernel, (row_blocks, splits),
                z, g, partials, norms, prepared.inv_norm, table, y, loss_rows[start:start + rows], coef,
                rows, num_classes, tiles_k, cols_per_program, alpha, ignore_index,
                z.stride(0), g.stride(0), partials.stride(0), partials.stride(1), table.stride(0),
                H_EPS=FEATURE_EPS, WRITE_G=compute_grad, BLOCK_R=config.rows_block, BLOCK_C=config.cols_block,
                BLOCK_T=plan.block_t, num_warps=config.rows_warps)
        if compute_grad and dim > 0:
            dh = grad[start:start + rows]
            _launch(K._grad_features_kernel, (_cdiv(rows, config.grad_block_b) * _cdiv(dim, config.grad_block_d),),
                    g, prepared.weight, h, coef, dh, rows, dim, num_classes,
                    g.stride(0), prepared.weight.stride(0), prepared.weight.stride(1), h.stride(0), h.stride(1),
                    dh.stride(0), dh.stride(1),
                    BLOCK_B=config.grad_block_b, BLOCK_D=config.grad_block_d, BLOCK_K=config.grad_block_k,
                    GROUP=config.group, INPUT_PRECISION=plan.precision, UPCAST_DOT=plan.upcast,
                    num_warps=config.grad_warps, num_stages=config.grad_stages)
    scale = None
    if reduction == "none":
        loss = loss_rows
    elif reduction == "sum":
        loss = loss_rows.sum()
    else:
        scale = (target.long() != ignore_index).sum(dtype=torch.float32).clamp_min(1.0).reciprocal().reshape(1)
        loss = loss_rows.sum() * scale[0]
    return FusedOutput(loss, logits, grad, scale)


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
    row_regime = (not return_logits and num_classes <= (config or _DEFAULT).row_block_max_classes
                  and batch * num_classes <= SMALL_PROBLEM_ELEMENTS)
    precision = torch.get_float32_matmul_precision()
    key = (batch, dim, num_classes, dtype, device, reduction, compute_grad, return_logits, config, precision)
    plan = _PLANS.get(key)
    if plan is None:
        if row_regime:
            plan = _row_plan(batch, dim, num_classes, device, reduction, compute_grad,
                             config or choose_config(batch, dim, num_classes, dtype, None))
        else:
            plan = _tiled_plan(batch, dim, num_classes, dtype, device, compute_grad, return_logits, config)
        _PLANS[key] = plan
    table = _prepare_similarity(similarity)
    target = target if target.is_contiguous() else target.contiguous()
    if row_regime:
        prepared = _prepare_frame(frame, torch.float32, unit_frame)
        out = _row_block_forward(plan, features, prepared, table, target, alpha, ignore_index, reduction,
                                 compute_grad, status)
    else:
        prepared = _prepare_frame(frame, dtype, unit_frame)
        out = _tiled_forward(plan, features, prepared, table, target, alpha, ignore_index, reduction,
                             compute_grad, return_logits, status)
    if device.type != "cuda":
        status.raise_if_set()
    return out


_DEFAULT = KernelConfig()


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
    ``options`` = (alpha, reduction, ignore_index, return_logits, config, unit_frame), one argument so that
    ``apply`` has little to bind."""

    @staticmethod
    def forward(ctx, features, frame, target, similarity, options):
        alpha, reduction, ignore_index, return_logits, config, unit_frame = options
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
    return _scale_grad(grad, grad_loss, ctx.scale, ctx.scale_offset, ctx.reduction), None, None, None, None


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
        _check_inputs(features, frame, target, similarity, alpha, reduction, ignore_index)
        _CHECKED[key] = True
    if type(alpha) is not float or not 0.0 <= alpha <= 1.0:
        alpha = _check_inputs(features, frame, target, similarity, alpha, reduction, ignore_index)
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
        with torch.cuda.device(features.device):
            return triton_frame_loss(features, frame, target, similarity, alpha, reduction, ignore_index,
                                     return_logits=return_logits, config=config, unit_frame=unit_frame)
    device_type = features.device.type
    if torch.is_autocast_enabled(device_type) and features.dtype == torch.float32:
        features = features.to(torch.get_autocast_dtype(device_type))  # the product runs like an autocast matmul

    if features.shape[0] == 0:  # nothing to launch; same values as the reference (mean of nothing = 0)
        _prepare_frame(frame, torch.float32, unit_frame)
        _prepare_similarity(similarity)
        zero = features.sum(dim=1).to(torch.float32) * 0.0
        loss = zero if reduction == "none" else zero.sum()
        empty = torch.empty(0, frame.shape[0], device=features.device, dtype=torch.float32)
        return (loss, empty) if return_logits else loss

    if features.requires_grad and torch.is_grad_enabled():
        return FusedFrameLossFunction.apply(
            features, frame, target, similarity, (alpha, reduction, ignore_index, return_logits, config, unit_frame)
        )
    out = fused_frame_loss_forward(
        features, frame, target, similarity, alpha, reduction, ignore_index,
        compute_grad=False, return_logits=return_logits, config=config, unit_frame=unit_frame,
    )
    return (out.loss, out.logits) if return_logits else out.loss
