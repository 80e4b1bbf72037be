"""Ahead-of-time compilation of the fused frame-loss kernels for a CUDA target, without a GPU.

Triton's interpreter (``TRITON_INTERPRET=1``) checks the kernels' arithmetic but not that they compile: layouts,
dtype rules of ``tl.dot``, shared-memory budgets and register allocation only meet the real compiler. This module
runs that compiler — Triton → PTX → ``ptxas`` (shipped inside the Triton wheel) → cubin — for a chosen
architecture, from any machine. ``python -m haf.kernels.dense.aot`` (or ``-m haf.kernels.frame_loss_aot``) compiles
every kernel for sm_90 at the tile choices of the paper and large regimes (the large one in every schedule variant: basic, persistent, tma)
and prints ptxas' register and spill report for each.

The kernels must be real ``JITFunction``s, so this must run in a process where ``TRITON_INTERPRET`` is unset
(the tests start a subprocess for it).
"""
from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from haf.kernels.dense import kernels as kernels
from haf.kernels.dense import persistent as persistent
from haf.kernels.dense import fused as fused
from haf.kernels.dense.config import _DTYPE_NAME as _TRITON_DTYPE  # torch dtype → Triton's type name
from haf.kernels.dense.config import VARIANTS as SCHEDULES  # schedules of the tiled regime's GEMM kernels
from haf.kernels.dense.config import _cdiv

#: Integer arguments of the kernels (sizes, strides, ignore_index): i32 at these shapes. Strides over features
#: are 1 for the contiguous tensors the launcher passes, and Triton's JIT specialises the value 1 to a constant.
_UNIT_STRIDES = {"stride_hd", "stride_wd", "stride_dd"}


@dataclasses.dataclass(frozen=True)
class CompiledKernel:
    name: str
    shared_bytes: int
    ptx: str
    cubin: bytes


def _descriptor(dtype_name: str, *block: int) -> str:
    """Signature type of a host-side TMA descriptor argument with this block shape."""
    return f"tensordesc<{dtype_name}[{','.join(map(str, block))}]>"


def _signature(kernel, pointer_types: dict[str, str], float_args: set[str], constants: dict) -> dict[str, str]:
    signature = {}
    for name in kernel.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name in pointer_types:
            signature[name] = pointer_types[name]
        elif name in float_args:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    return signature


def _compile(kernel, pointer_types, float_args, constants, num_warps, num_stages, capability) -> CompiledKernel:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if fused.INTERPRETED:
        raise RuntimeError("ahead-of-time compilation needs TRITON_INTERPRET unset when haf.kernels is imported")
    signature = _signature(kernel, pointer_types, float_args, constants)
    source = ASTSource(
        fn=kernel, signature=signature,
        constexprs={(kernel.arg_names.index(name),): value for name, value in constants.items()},
    )
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    return CompiledKernel(kernel.__name__, compiled.metadata.shared, compiled.asm["ptx"], compiled.asm["cubin"])


def compile_kernels(
    dtype: torch.dtype, batch: int, dim: int, num_classes: int, capability: int = 90,
    precision: str | None = None, reduction: str = "mean", variant: str = "basic",
) -> list[CompiledKernel]:
    """Compile the kernels the launcher would run for this problem (row-block kernel in the launch-bound regime,
    the four tiled kernels otherwise — kernels 1 and 3 in the schedule ``variant`` — then the backward's
    elementwise kernel) with the tiles ``choose_config`` picks."""
    return _forward_kernels(dtype, batch, dim, num_classes, capability, precision, reduction, variant) + [
        _backward_kernel(dtype, capability, reduction)]


def _backward_kernel(dtype: torch.dtype, capability: int, reduction: str) -> CompiledKernel:
    return _compile(
        kernels._scale_grad_kernel,
        {"grad_ptr": f"*{_TRITON_DTYPE[dtype]}", "grad_loss_ptr": "*fp32", "scale_ptr": "*fp32"}, set(),
        {"PER_ROW": reduction == "none", "HAS_SCALE": reduction == "mean", "BLOCK": fused._SCALE_BLOCK}, 4, 1, capability,
    )


def _forward_kernels(dtype, batch, dim, num_classes, capability, precision, reduction,
                     variant="basic") -> list[CompiledKernel]:
    name = _TRITON_DTYPE[dtype]
    if dtype == torch.float32 and precision is None:
        precision = "tf32"
    unit = {stride: 1 for stride in _UNIT_STRIDES}
    small = fused.row_block_regime(batch, dim, num_classes, False)
    if small:
        config = fused.choose_config(batch, dim, num_classes, dtype, None)
        programs = _cdiv(batch, config.row_block_b)
        return [_compile(
            kernels._row_block_kernel,
            {"h_ptr": f"*{name}", "w_ptr": "*fp32", "inv_wnorm_ptr": "*fp32", "s_ptr": "*fp32", "y_ptr": "*i64",
             "work_ptr": "*fp32", "scratch_ptr": "*fp32", "dh_ptr": f"*{name}", "ticket_ptr": "*i32",
             "status_ptr": "*i32"},
            {"alpha"},
            {"stride_hd": 1, "H_EPS": fused.FEATURE_EPS, "BLOCK_B": config.row_block_b,
             "BLOCK_K": config.row_block_k, "BLOCK_D": config.row_block_d,
             "BLOCK_P": min(1024, fused._next_power_of_2(programs)), "REDUCE": fused._REDUCE[reduction],
             "WRITE_GRAD": True, "INPUT_PRECISION": "ieee" if precision == "ieee" else "tf32x3"},
            config.row_warps, 1, capability,
        )]
    tiled_precision = precision if dtype == torch.float32 else ("ieee" if precision == "ieee" else "tf32x3")
    config = fused.choose_config(batch, dim, num_classes, dtype, tiled_precision)
    upcast = dtype != torch.float32  # half feature tiles meet the fp32 frame and G (see config._upcast_dot)
    norms = _compile(kernels._row_norm_kernel, {"h_ptr": f"*{name}", "hnorm_ptr": "*fp32", "status_ptr": "*i32"},
                     set(), {"stride_hd": 1, "BLOCK_B": 32, "BLOCK_D": 64}, 4, 1, capability)
    tma = variant == "tma" and tiled_precision != "ieee"  # as the launcher: IEEE fp32 keeps pointer loads
    operand = f"*{name}"
    logits_kernel = kernels._logits_stats_kernel if variant == "basic" else persistent._logits_stats_persistent_kernel
    h_arg, w_arg = ("h_src", "w_src") if variant != "basic" else ("h_ptr", "w_ptr")
    logits = _compile(
        logits_kernel,
        {h_arg: _descriptor(name, config.logits_block_b, config.logits_block_d) if tma else operand,
         w_arg: _descriptor("fp32", config.logits_block_k, config.logits_block_d) if tma else "*fp32",
         "inv_wnorm_ptr": "*fp32", "table_ptr": "*fp32", "y_ptr": "*i64",
         "hnorm_ptr": "*fp32", "z_ptr": "*fp32", "part_ptr": "*fp32"},
        set(),
        {**{k: v for k, v in unit.items() if k in logits_kernel.arg_names},
         "H_EPS": fused.FEATURE_EPS, "BLOCK_B": config.logits_block_b, "BLOCK_K": config.logits_block_k,
         "BLOCK_D": config.logits_block_d, "GROUP": config.group, "INPUT_PRECISION": tiled_precision,
         "UPCAST_DOT": upcast, "STORE_Z": True, **({} if variant == "basic" else {"TMA": tma})},
        config.logits_warps, config.logits_stages, capability,
    )
    softmax = _compile(
        kernels._softmax_grad_kernel,
        {"z_ptr": "*fp32", "g_ptr": "*fp32", "part_ptr": "*fp32", "hnorm_ptr": "*fp32", "inv_wnorm_ptr": "*fp32",
         "table_ptr": "*fp32", "y_ptr": "*i64", "loss_ptr": "*fp32", "coef_ptr": "*fp32"},
        {"alpha"},
        {"H_EPS": fused.FEATURE_EPS, "WRITE_G": True, "BLOCK_R": config.rows_block, "BLOCK_C": config.cols_block,
         "BLOCK_T": config.partials_block},
        config.rows_warps, 1, capability,
    )
    grad_kernel = kernels._grad_features_kernel if variant == "basic" else persistent._grad_features_persistent_kernel
    g_arg, w_arg = ("g_src", "w_src") if variant != "basic" else ("g_ptr", "w_ptr")
    grad = _compile(
        grad_kernel,
        {g_arg: _descriptor("fp32", config.grad_block_b, config.grad_block_k) if tma else "*fp32",
         w_arg: _descriptor("fp32", config.grad_block_k, config.grad_block_d) if tma else "*fp32",
         "h_ptr": operand, "coef_ptr": "*fp32", "dh_ptr": operand, "split_ptr": "*fp32", "ticket_ptr": "*i32"},
        set(),
        {**{k: v for k, v in unit.items() if k in grad_kernel.arg_names},
         "BLOCK_B": config.grad_block_b, "BLOCK_D": config.grad_block_d, "BLOCK_K": config.grad_block_k,
         "GROUP": config.group, "INPUT_PRECISION": tiled_precision, "UPCAST_DOT": upcast,
         **({} if variant == "basic" else {"TMA": tma})},
        config.grad_warps, config.grad_stages_for(variant), capability,
    )
    return [norms, logits, softmax, grad]


def ptxas_report(kernel: CompiledKernel, capability: int = 90) -> str:
    """ptxas' register / spill summary for one compiled kernel (the ptxas bundled with Triton)."""
    import os
    import shutil

    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    ptxas = os.environ.get("TRITON_PTXAS_PATH") or (str(bundled) if bundled.exists() else shutil.which("ptxas"))
    if ptxas is None:
        raise FileNotFoundError(f"no ptxas: neither {bundled} nor one on PATH (set TRITON_PTXAS_PATH)")
    arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / f"{kernel.name}.ptx"
        source.write_text(kernel.ptx)
        out = subprocess.run([ptxas, f"-arch={arch}", "-v", str(source), "-o", str(Path(folder) / "out.cubin")],
                             capture_output=True, text=True, check=True)
    lines = (out.stdout + out.stderr).splitlines()
    return " | ".join(line.split(":", 1)[-1].strip() for line in lines if "spill" in line or "registers" in line or "warning" in line)


SHAPES = {"paper (256, 1010, 1010)": (256, 1010, 1010), "large (8192, 2048, 32000)": (8192, 2048, 32000)}
#: (dtype, fp32 precision, reduction) variants built for every shape.
VARIANTS = [(torch.bfloat16, None, "mean"), (torch.float16, None, "mean"), (torch.float32, "tf32", "mean"),
            (torch.float32, "ieee", "mean"), (torch.bfloat16, None, "sum"), (torch.bfloat16, None, "none")]

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capability", type=int, default=90, help="CUDA compute capability × 10 (default 90)")
    args = parser.parse_args(argv)
    for label, (batch, dim, classes) in SHAPES.items():
        tiled = not fused.row_block_regime(batch, dim, classes, False)
        for dtype, precision, reduction in VARIANTS:
            for schedule in SCHEDULES if tiled else ("basic",):
                variant = f"{_TRITON_DTYPE[dtype]}{'/' + precision if precision else ''} {reduction} {schedule}"
                for kernel in compile_kernels(dtype, batch, dim, classes, args.capability, precision, reduction,
                                              schedule):
                    print(f"{label:<26} {variant:<27} {kernel.name:<33} smem {kernel.shared_bytes:>6} B  "
                          f"{ptxas_report(kernel, args.capability)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
