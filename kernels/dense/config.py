"""Launch configuration of the fused frame loss: tiles (``KernelConfig``, ``TUNED``), fp32 matmul precision,
row chunks of the tiled regime, SM count, and the schedule variant of its GEMM kernels.

Variants of the tiled regime's kernels 1 and 3 (``HAF_FRAME_LOSS_VARIANT`` overrides the choice):
``basic`` — one program per tile, pointer loads (the default, and the only one measured so far);
``persistent`` — one program per SM walking the tiles, kernel 3's last round split over the classes;
``tma`` — ``persistent`` with TMA tensor-descriptor loads (Triton ≥ 3.6 with ``TensorDescriptor``, sm_90+,
16-byte aligned operands; otherwise ``persistent``).
"""
from __future__ import annotations

import dataclasses
import os

import torch

from haf.kernels.dense import kernels as K
from haf.kernels.backends import TRITON_DTYPES

#: Input dtypes with a tl.dot path (fp64 stays on the reference): the dispatch rule's list.
SUPPORTED_DTYPES = TRITON_DTYPES
NUM_PARTIALS = 5  # per-(row, class tile) partials of the tiled regime
#: Launch-bound regime: at most this many z elements (B·K), classes, and multiply-adds (B·K·D): one program per 16
#: rows walks every class and feature, so a wide D turns the launch-bound problem into a GEMM the tiles do better.
SMALL_PROBLEM_ELEMENTS = 1 << 21
ROW_BLOCK_MAX_CLASSES = 2048
SMALL_PROBLEM_MACS = 1 << 30
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
    """Tiled regime: half-precision feature tiles are upcast to fp32 in registers before their product with the
    fp32 frame (exact: every bf16/fp16 value is an fp32 value). The frame itself is never rounded to half: near
    convergence cos − S is about 2⁻⁹, the size of a bf16 rounding of W, so a half frame turns the cosine term
    into noise. (This also sidesteps Triton 3.6–3.7's interpreter, whose tl.dot multiplies bf16 bit patterns.)"""
    return dtype != torch.float32


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
    persistent_grad_stages: int = 0  # kernel 3's stages on the persistent grid (0: grad_stages)

    def grad_stages_for(self, variant: str) -> int:
        """Pipeline stages of kernel 3 in a schedule variant."""
        return self.persistent_grad_stages if variant != "basic" and self.persistent_grad_stages else self.grad_stages

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            floor = 0 if field.name in ("row_block_max_classes", "persistent_grad_stages") else 1
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


_DEFAULT_CONFIG = KernelConfig()

#: Tiles per (regime, dtype, fp32 precision) for sm_90 (H100/H200). Chosen by compiling every variant ahead of time
#: (``python -m haf.kernels.dense.aot``: no spills, no serialised wgmma) and, on a GPU, by
#: ``bench/tune_frame_loss.py``, which times the candidates it lists and prints the winner in this format.
TUNED: dict[tuple[str, str, str | None], dict] = {
    # half features on the fp32 frame (3×TF32): the fp32-TF32 tiles, checked spill-free by the AOT compile only
    ("tiled", "bf16", "tf32x3"): {"logits_block_d": 32, "grad_block_k": 32, "grad_stages": 3,
                                  "persistent_grad_stages": 2},
    ("tiled", "fp16", "tf32x3"): {"logits_block_d": 32, "grad_block_k": 32, "grad_stages": 3,
                                  "persistent_grad_stages": 2},
    ("tiled", "fp32", "tf32"): {"logits_block_d": 32, "grad_block_k": 32, "grad_stages": 3,
                                "persistent_grad_stages": 2},  # 3 spills 88 B/thread on the persistent grid
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
    elif input_precision == "ieee":  # fp32 operands on the FMA units, whatever the features' dtype
        key = ("tiled", "fp32", "ieee")
    elif small:
        key = ("small-tiled", "any", None)
    else:
        key = ("tiled", _DTYPE_NAME[dtype], input_precision)
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


def row_block_regime(batch: int, dim: int, num_classes: int, return_logits: bool,
                     config: KernelConfig | None = None) -> bool:
    """The launch-bound regime (``_row_block_kernel``) or the tiled one: the one rule, for the launcher and AOT."""
    return (not return_logits and num_classes <= (config or _DEFAULT_CONFIG).row_block_max_classes
            and batch * num_classes <= SMALL_PROBLEM_ELEMENTS and batch * num_classes * dim <= SMALL_PROBLEM_MACS)


def _input_precision(dtype: torch.dtype) -> str:
    """Tiled regime's tl.dot precision. fp32 features follow torch's matmul precision ("highest" → IEEE, else
    TF32, as ``h @ W.T`` would); half features meet the fp32 frame and G with fp32-accurate products (IEEE under
    "highest", else 3×TF32), so the half regime is as exact near convergence as the launch-bound one."""
    if dtype != torch.float32:
        return _row_block_precision()
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def _row_block_precision() -> str:
    """Launch-bound regime: fp32 products always — IEEE under "highest", else 3×TF32 (fp32-accurate)."""
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32x3"


_SM_COUNT: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (cached per device index)."""
    if device.type != "cuda":
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def _chunk_rows(batch: int, dim: int, num_classes: int, g_bytes: int, config: KernelConfig, sms: int) -> int:
    """Rows per chunk: as many as ``chunk_bytes`` allows for z (4 B) + G (``g_bytes``; 0 when G overwrites z),
    but at least enough that kernel 3 has two programs per SM, a multiple of both row tiles, and balanced: the
    batch in that many chunks of equal size (so kernel 3's last chunk is no partial wave of its own)."""
    step = max(config.logits_block_b, config.grad_block_b, config.rows_block)
    by_memory = config.chunk_bytes // max(1, num_classes * (4 + g_bytes))
    to_fill = _cdiv(2 * sms, _cdiv(max(dim, 1), config.grad_block_d)) * config.grad_block_b
    rows = _cdiv(max(by_memory, to_fill, step), step) * step
    chunks = _cdiv(batch, rows)  # then the same number of chunks, of equal size: no short last chunk
    return min(_cdiv(_cdiv(batch, chunks), step) * step, batch)


#: Schedules of the tiled regime's GEMM kernels, and the environment variable that picks one for a whole run.
VARIANTS = ("basic", "persistent", "tma")
VARIANT_ENV = "HAF_FRAME_LOSS_VARIANT"
#: Stand-in SM count under the interpreter: a few programs, so the persistent loops take several turns.
_INTERPRETER_SMS = 3


def _tensor_descriptor_class():
    """Triton's host-side TMA descriptor (``triton.tools.tensor_descriptor``, Triton ≥ 3.4), or None."""
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:
        return None
    return TensorDescriptor


def _tma_capable(device: torch.device) -> bool:
    """TMA needs the descriptor class, and Hopper or later (the interpreter emulates it)."""
    if _tensor_descriptor_class() is None:
        return False
    if INTERPRETED:
        return True
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def persistent_programs(device: torch.device) -> int:
    """Grid of the persistent kernels: one program per SM (a few under the interpreter)."""
    return _sm_count(device) if device.type == "cuda" else _INTERPRETER_SMS


def resolve_variant(device: torch.device) -> str:
    """The variant for this device: ``HAF_FRAME_LOSS_VARIANT`` if set (``tma`` without TMA support degrades to
    ``persistent``), else ``basic`` — kept as the default until a GPU run shows the others faster."""
    requested = os.environ.get(VARIANT_ENV, "").strip().lower() or "basic"
    if requested not in VARIANTS:
        raise ValueError(f"environment variable {VARIANT_ENV}={requested!r} must be one of {VARIANTS}")
    if requested == "tma" and not _tma_capable(device):
        return "persistent"
    return requested
