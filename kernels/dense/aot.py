"""Ahead-of-time compilation of the fused frame-loss kernels for a CUDA target, without a GPU.

Triton's interpreter (``TRITON_INTERPRET=1``) checks the kernels' arithmetic but not that they compile: layouts,
dtype rules of ``tl.dot``, shared-memory budgets and register allocation only meet the real compiler. This module
runs that compiler — Triton → PTX → ``ptxas`` (shipped inside the Triton wheel) → cubin — for a chosen
architecture, from any machine. ``python -m haf.kernels.dense.aot`` (or ``-m haf.kernels.frame_loss_aot``) compiles
every kernel for sm_90 at the tile choices of the paper and large regimes (the large one in every schedule variant:
basic, persistent, tma) and prints ptxas' register and spill report for each.

It compiles what runs: the launcher's own host code (plan, chunks, workspaces, the backward) is run on ``meta``
tensors (shapes and storage offsets, no memory) with its launches recorded instead of made, and each recorded
launch is specialised by Triton's rules for its argument values (:func:`specialise`: i32/i64 by value, the value 1
as a constant, divisibility by 16 of ints and of pointers — a base from the caching allocator plus the view's
offset), exactly as ``JITFunction.run`` would on the GPU.

The kernels must be real ``JITFunction``s, so this must run in a process where ``TRITON_INTERPRET`` is unset
(the tests start a subprocess for it).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from haf.kernels.dense import fused as fused
from haf.kernels.dense import tiled as tiled
from haf.kernels.dense.config import _DTYPE_NAME as _TRITON_DTYPE  # torch dtype → Triton's type name
from haf.kernels.dense.config import VARIANT_ENV
from haf.kernels.dense.config import VARIANTS as SCHEDULES  # schedules of the tiled regime's GEMM kernels

#: SMs of the target (grid of the persistent kernels, chunk sizes): an H100 SXM.
TARGET_SMS = 132
_POINTER_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64",
                  torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
                  torch.bool: "i1"}


@dataclasses.dataclass(frozen=True)
class CompiledKernel:
    name: str
    shared_bytes: int
    ptx: str
    cubin: bytes
    signature: str = ""  # the specialised signature, e.g. "h_ptr:*bf16/16 B:i32 stride_hd=1"


@dataclasses.dataclass(frozen=True)
class Launch:
    """One recorded launch: the kernel, its arguments by name, and the launch options."""

    kernel: object
    args: dict
    num_warps: int
    num_stages: int


def specialise(value) -> tuple[str, object]:
    """(type, key) of one argument as Triton's launcher specialises it (``native_specialize_impl``): None and the int
    1 become constants, other ints i32 when they fit (else i64, u64 at ≥ 2⁶³) with key "D" when divisible by 16,
    floats fp32, bools u1, tensors ``*dtype`` with "D" when their address is 16-byte aligned."""
    if value is None:
        return "constexpr", None
    if isinstance(value, bool):
        return "u1", None
    if isinstance(value, int):
        if value == 1:
            return "constexpr", 1
        kind = "i32" if -2**31 <= value < 2**31 else ("u64" if value >= 2**63 else "i64")
        return kind, "D" if value % 16 == 0 else ""
    if isinstance(value, float):
        return "fp32", None
    if isinstance(value, torch.Tensor):
        return f"*{_POINTER_TYPES[value.dtype]}", "D" if value.data_ptr() % 16 == 0 else ""
    descriptor = _descriptor_type(value)
    if descriptor is not None:
        return descriptor, None
    raise TypeError(f"no specialisation rule for a {type(value).__name__} argument")


def _descriptor_type(value) -> str | None:
    base, block = getattr(value, "base", None), getattr(value, "block_shape", None)
    if isinstance(base, torch.Tensor) and block is not None:
        return f"tensordesc<{_POINTER_TYPES[base.dtype]}[{', '.join(map(str, block))}]>"
    return None


def kernel_params(kernel) -> list[tuple[str, bool]]:
    """(name, is constexpr) of a kernel's parameters, from the ``JITFunction`` or, under the interpreter, from the
    Python function's annotations (``tl.constexpr``, a string under postponed annotations)."""
    if hasattr(kernel, "params"):
        return [(param.name, bool(param.is_constexpr)) for param in kernel.params]
    return [(name, "constexpr" in str(param.annotation))
            for name, param in inspect.signature(kernel.fn).parameters.items()]


def specialisation(launch: Launch) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) for ``ASTSource``, built as ``JITFunction._pack_args`` builds them."""
    signature, constexprs, attrs = {}, {}, {}
    for index, (name, is_constexpr) in enumerate(kernel_params(launch.kernel)):
        value = launch.args[name]
        kind, key = ("constexpr", value) if is_constexpr else specialise(value)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[(index,)] = value
        elif isinstance(key, str):
            attrs[(index,)] = [["tt.divisibility", 16]] if "D" in key else []
    return signature, constexprs, attrs


def describe(launch: Launch) -> str:
    signature, constexprs, attrs = specialisation(launch)
    parts = []
    params = kernel_params(launch.kernel)
    for index, (name, kind) in enumerate(signature.items()):
        if kind == "constexpr":
            if not params[index][1]:
                parts.append(f"{name}={constexprs[(index,)]}")
            continue
        parts.append(f"{name}:{kind}{'/16' if attrs.get((index,)) else ''}")
    return " ".join(parts)


def _compile(launch: Launch, capability: int) -> CompiledKernel:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if fused.INTERPRETED:
        raise RuntimeError("ahead-of-time compilation needs TRITON_INTERPRET unset when haf.kernels is imported")
    signature, constexprs, attrs = specialisation(launch)
    source = ASTSource(fn=launch.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32),
                              options={"num_warps": launch.num_warps, "num_stages": launch.num_stages})
    return CompiledKernel(launch.kernel.__name__, compiled.metadata.shared, compiled.asm["ptx"],
                          compiled.asm["cubin"], describe(launch))


_MATMUL_PRECISION = {None: "high", "tf32": "high", "tf32x3": "high", "ieee": "highest"}


@contextlib.contextmanager
def _target(precision: str | None, variant: str, sms: int):
    """The launcher as on the GPU: fp32 matmul precision, schedule variant and SM count fixed."""
    saved = torch.get_float32_matmul_precision(), os.environ.get(VARIANT_ENV)
    patched = [(tiled, "_sm_count", lambda device: sms), (tiled, "persistent_programs", lambda device: sms),
               (tiled, "resolve_variant", lambda device: variant)]
    originals = [(module, name, getattr(module, name)) for module, name, _ in patched]
    torch.set_float32_matmul_precision(_MATMUL_PRECISION[precision])
    os.environ[VARIANT_ENV] = variant
    for module, name, value in patched:
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in originals:
            setattr(module, name, value)
        torch.set_float32_matmul_precision(saved[0])
        if saved[1] is None:
            os.environ.pop(VARIANT_ENV, None)
        else:
            os.environ[VARIANT_ENV] = saved[1]


def record_launches(
    dtype: torch.dtype, batch: int, dim: int, num_classes: int, precision: str | None = None,
    reduction: str = "mean", variant: str = "basic", sms: int = TARGET_SMS,
) -> list[Launch]:
    """Every launch of one forward + backward with these shapes, recorded from the launcher's host code on meta
    tensors (no kernel runs; addresses are the views' offsets from 16-byte aligned bases, as the CUDA caching
    allocator gives). Duplicates (same kernel and specialisation, e.g. equal row chunks) are kept once."""
    launches: list[Launch] = []

    def record(kernel, grid, *args, **meta):
        options = {name: meta.pop(name) for name in ("num_warps", "num_stages") if name in meta}
        bound = inspect.signature(kernel.fn).bind(*args, **meta)
        bound.apply_defaults()
        launches.append(Launch(kernel, dict(bound.arguments), options.get("num_warps", 4),
                               options.get("num_stages", 3)))

    def record_checked(status, device, kernel, grid, *args, **meta):
        record(kernel, grid, *args, **meta)

    meta = torch.device("meta")
    features = torch.empty(batch, dim, dtype=dtype, device=meta)
    prepared = fused._PreparedFrame(torch.empty(num_classes, dim, device=meta), torch.empty(num_classes, device=meta))
    table = torch.empty(num_classes, num_classes, device=meta)
    target = torch.empty(batch, dtype=torch.int64, device=meta)
    status = fused.StatusWord(torch.device("cpu"))  # pinned host memory on a GPU: an aligned allocation too
    saved_launch = fused._launch
    fused._launch = record
    try:
        with _target(precision, variant, sms):
            if fused.row_block_regime(batch, dim, num_classes, False):
                config = fused.choose_config(batch, dim, num_classes, dtype, None)
                plan = fused._row_plan(batch, dim, num_classes, meta, reduction, True, config)
                out = fused._row_block_forward(plan, features, prepared, table, target, 0.4, -100, reduction, True,
                                               status, plan.tickets.get(None))
            else:
                plan = tiled.tiled_plan(batch, dim, num_classes, dtype, meta, True, False, None)
                tickets = plan.tickets.get(None) if plan.tickets is not None else None
                out = tiled.tiled_forward(plan, features, prepared, table, target, 0.4, -100, reduction, True, False,
                                          status, record, record_checked, tickets)
            grad_loss = torch.empty(batch if reduction == "none" else (), device=meta)
            fused._scale_grad(out.grad_features, grad_loss, out.scale, out.scale_offset, reduction)
    finally:
        fused._launch = saved_launch
    unique: dict = {}
    for launch in launches:
        unique.setdefault((launch.kernel.__name__, describe(launch), launch.num_warps, launch.num_stages), launch)
    return list(unique.values())


def compile_kernels(
    dtype: torch.dtype, batch: int, dim: int, num_classes: int, capability: int = 90,
    precision: str | None = None, reduction: str = "mean", variant: str = "basic",
) -> list[CompiledKernel]:
    """Compile the kernels the launcher runs for this problem, specialised as at run time (row-block kernel in the
    launch-bound regime, the four tiled kernels otherwise — kernels 1 and 3 in the schedule ``variant`` — then the
    backward's elementwise kernel). ``precision`` stands for torch's fp32 matmul precision: "ieee" → "highest",
    otherwise "high"."""
    return [_compile(launch, capability)
            for launch in record_launches(dtype, batch, dim, num_classes, precision, reduction, variant)]


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
    parser.add_argument("--signatures", action="store_true", help="also print each kernel's specialised signature")
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
                    if args.signatures:
                        print(f"    {kernel.signature}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
