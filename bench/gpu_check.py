"""One-command GPU check of the fused frame loss (``make gpu-check`` = ``python bench/gpu_check.py``, whichever of
``python3``/``python`` has torch; every child process runs under ``sys.executable``).

Runs on a bare H100/H200 machine with this checkout and torch / Triton / pytest only (``haf`` imported through
:mod:`haf_path`; DeepSpeed and DALI never imported; torch ≥ 2.11, Triton ≥ 3.6). Three parts, each in its own
process and time budget (``BUDGETS``, ≤ 8 minutes in all):

``tests`` — the whole kernel test suite on CUDA (``KERNEL_TEST_FILES``: odd shapes, reductions, dtypes, near
convergence, variants, concurrency, tree loss; ``-m "not slow"``), outcome counts and failures written after each
test; ``loss`` — forward + backward per cell (shape × dtype × path/variant), CUDA-event median and peak
``max_memory_allocated`` above the start, inputs built once per shape on the GPU (S = W Wᵀ there), in the order of
:func:`loss_plan`: eager and fused (``basic``) at every shape, then the ``persistent``/``tma`` variants at the large
shapes, then ``torch.compile`` (whose compilation is the slowest part) — each cell with its own budget, its
seconds and any skip recorded in its row → ``bench/results/frame_loss_gpu.json``; ``train`` — ResNet-50 + type-II
head + HAFrame, plain engine, bf16, batch 256 → ``bench/results/train_step_gpu.json``. A failing part records its
error; the others still run.

``--plan`` prints the cell order and per-cell budgets and exits. ``--dry-run`` prints the plan, then runs the same
plumbing on CPU at tiny shapes (Triton's interpreter, ``torch.compile`` with its eager backend, no peak memory, the
tests part only collecting) into ``--out``; the tests check its files.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: The kernel test suite, run whole on CUDA (the AOT compile test, marked slow, needs no GPU and is left out).
KERNEL_TEST_PATTERNS = ("tests/test_frame_loss_*.py", "tests/test_tree_frame_loss*.py")
GPU_SHAPES = [(64, 100, 100), (256, 1010, 1010), (1024, 608, 608), (4096, 10000, 10000), (8192, 2048, 32000)]
DRY_SHAPES = [(8, 16, 12), (24, 40, 72)]
#: Shapes where every schedule variant of the tiled regime is timed too (fused path only; rows with "variant").
VARIANT_SHAPES = [(4096, 10000, 10000), (8192, 2048, 32000)]
DRY_VARIANT_SHAPES = [(8, 16, 2100)]  # K > 2048: the tiled regime
OTHER_VARIANTS = ("persistent", "tma")
DTYPES = ("fp32", "bf16")
#: Seconds per part on a GPU (sum 440 s: ≤ 8 minutes with the processes' start-up); the dry run gets the same.
BUDGETS = {"tests": 180, "loss": 200, "train": 60}
#: Seconds per loss cell: (small shapes, large shapes (B·K > 2²⁴)); compiled cells include their compilation. The
#: cells' sum fits the loss part's budget less its start-up margin (:func:`loss_plan`).
CELL_BUDGETS = {"eager": (2.0, 6.0), "fused": (2.0, 6.0), "variant": (6.0, 6.0), "compiled": (5.0, 9.0)}
#: Seconds of the loss part kept for its process start-up and imports.
LOSS_MARGIN = 12
PATHS = ("eager", "compiled", "fused")
FORBIDDEN = ("deepspeed", "nvidia.dali")


# ----------------------------------------------------------------------------------------------------------------
# Shared helpers (child processes)
# ----------------------------------------------------------------------------------------------------------------
def _write_json(path: Path, data: dict) -> None:
    """Atomic: a temporary name, then rename (a part killed at its budget leaves its last complete file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=1))
    os.replace(temporary, path)


def _environment(dry_run: bool) -> dict:
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not dry_run else \
        f"CPU ({platform.machine()}, dry run)"
    return {"device": device, "torch": torch.__version__, "triton": triton_version}


class _Timer:
    """Median forward + backward time: CUDA events on a GPU, wall clock in the dry run."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def median_ms(self, fn, warmup: int, rounds: int) -> float:
        import torch

        for _ in range(warmup):
            fn()
        samples = []
        for _ in range(rounds):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end))
            else:
                begin = time.perf_counter()
                fn()
                samples.append(1e3 * (time.perf_counter() - begin))
        return statistics.median(samples)

    def peak_mib(self, fn) -> float | None:
        import torch

        if not self.cuda:
            return None  # max_memory_allocated is a CUDA allocator statistic
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20


# ----------------------------------------------------------------------------------------------------------------
# Part "loss"
# ----------------------------------------------------------------------------------------------------------------
def kernel_test_files() -> list[str]:
    return sorted(str(path.relative_to(ROOT)) for pattern in KERNEL_TEST_PATTERNS for path in ROOT.glob(pattern)
                  if path.name != "test_frame_loss_compile.py")


def _large(shape) -> bool:
    return shape[0] * shape[2] > (1 << 24)


def loss_plan(dry_run: bool) -> list[dict]:
    """The loss part's cells in run order, each with its budget: eager and fused (``basic``) at every shape, then
    the other schedule variants of the fused path at the large shapes, then ``torch.compile`` — so the cells the
    check exists for never wait behind compilation. Shapes are visited in order within each group."""
    shapes = DRY_SHAPES if dry_run else GPU_SHAPES
    variant_shapes = DRY_VARIANT_SHAPES if dry_run else VARIANT_SHAPES
    cells = []

    def add(shape, dtype_name, path, variant, kind):
        cells.append({"shape": tuple(shape), "dtype": dtype_name, "path": path, "variant": variant,
                      "budget_s": CELL_BUDGETS[kind][_large(shape)]})

    for shape in shapes:
        for dtype_name in DTYPES:
            add(shape, dtype_name, "eager", "basic", "eager")
            add(shape, dtype_name, "fused", "basic", "fused")
    for variant in OTHER_VARIANTS:
        for shape in variant_shapes:
            for dtype_name in DTYPES:
                add(shape, dtype_name, "fused", variant, "variant")
    for shape in shapes:
        for dtype_name in DTYPES:
            add(shape, dtype_name, "compiled", "basic", "compiled")
    return cells


def format_plan(cells: list[dict]) -> str:
    total = sum(cell["budget_s"] for cell in cells)
    lines = [f"loss part: {len(cells)} cells, {total:.0f} s of cell budgets within the part's {BUDGETS['loss']} s "
             f"(less {LOSS_MARGIN} s start-up); "
             f"parts: " + ", ".join(f"{name} {budget} s" for name, budget in BUDGETS.items())
             + f" (total {sum(BUDGETS.values())} s)"]
    for index, cell in enumerate(cells, 1):
        lines.append(f"{index:>3}. {cell['path']:<8} {cell['variant']:<10} {cell['dtype']:<4} "
                     f"{'x'.join(map(str, cell['shape'])):<18} budget {cell['budget_s']:>4.0f} s")
    return "\n".join(lines)


class _Inputs:
    """Loss inputs built once per shape on the device (S = W Wᵀ there: no CPU GEMM, no host copy), features cast
    per dtype from one fp32 draw."""

    def __init__(self, device: str) -> None:
        self.device, self.base = device, {}

    def get(self, shape, dtype):
        import torch
        import torch.nn.functional as F

        if shape not in self.base:
            batch, dim, classes = shape
            gen = torch.Generator(device=self.device).manual_seed(batch + classes)
            frame = F.normalize(torch.randn(classes, dim, generator=gen, device=self.device), dim=1)
            gram = (frame @ frame.T).clamp_(-1.0, 1.0)
            similarity = gram.add_(gram.T.clone()).mul_(0.5)  # symmetric bit for bit
            features = torch.randn(batch, dim, generator=gen, device=self.device)
            target = torch.randint(0, classes, (batch,), generator=gen, device=self.device)
            target[::17] = -100
            self.base[shape] = (features, frame, target, similarity)
        features, frame, target, similarity = self.base[shape]
        return features.detach().to(dtype).requires_grad_(), frame, target, similarity  # a fresh leaf per cell


def _empty_row(shape, dtype_name: str, variant: str) -> dict:
    return {"shape": list(shape), "dtype": dtype_name, "variant": variant, "eager_ms": None, "compiled_ms": None,
            "fused_ms": None, "eager_peak_mib": None, "fused_peak_mib": None, "compiled_peak_mib": None,
            "cells": {}}


def _loss_part(result_path: Path, dry_run: bool, budget: float) -> None:
    import torch

    import haf.losses as reference
    from haf.kernels import frame_loss
    from haf.kernels.dense.config import VARIANT_ENV

    part_start = time.monotonic()
    deadline = part_start + budget - LOSS_MARGIN // 2
    cuda = torch.cuda.is_available() and not dry_run
    device = "cuda" if cuda else "cpu"
    torch.set_float32_matmul_precision("high")  # TF32 for fp32 on the GPU, in every path alike
    for name in ("cache_size_limit", "recompile_limit"):  # one compiled graph per shape and dtype
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    timer = _Timer(cuda)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    plan = loss_plan(dry_run)
    rows: dict = {}
    for cell in plan:
        key = (cell["shape"], cell["dtype"], "basic" if cell["path"] != "fused" else cell["variant"])
        rows.setdefault(key, _empty_row(cell["shape"], cell["dtype"], key[2]))
    out = {**_environment(dry_run), "matmul_precision": "high", "rows": list(rows.values()), "errors": [],
           "plan": [{**cell, "shape": list(cell["shape"])} for cell in plan]}
    compile_backend = "eager" if dry_run else "inductor"
    inputs = _Inputs(device)

    def loss_fn(path):
        if path == "eager":
            return reference.hierarchy_frame_loss
        if path == "compiled":
            torch._dynamo.reset()
            return torch.compile(reference.hierarchy_frame_loss, backend=compile_backend, dynamic=False)
        return lambda *args: frame_loss(*args, backend="triton")

    for cell in plan:
        shape, dtype_name, path, variant = cell["shape"], cell["dtype"], cell["path"], cell["variant"]
        row = rows[(shape, dtype_name, variant if path == "fused" else "basic")]
        label = f"{path} {variant} {shape} {dtype_name}"
        record = row["cells"][path] = {"budget_s": cell["budget_s"], "seconds": 0.0, "rounds": 0, "skipped": None}
        now = time.monotonic()
        if now + min(cell["budget_s"], 2.0) > deadline:
            record["skipped"] = f"part budget of {budget:.0f} s spent"
            out["errors"].append(f"{label}: skipped, part budget of {budget:.0f} s spent")
            _write_json(result_path, out)
            continue
        os.environ[VARIANT_ENV] = variant
        try:
            fn = loss_fn(path)
            args = inputs.get(shape, dtypes[dtype_name])

            def step():
                args[0].grad = None
                fn(*args, 0.4).backward()

            cell_deadline = min(now + cell["budget_s"], deadline)
            rounds, warm_ms = _rounds_for(timer, step, cell_deadline, dry_run)
            row[f"{path}_ms"] = round(timer.median_ms(step, 0, rounds), 4)
            peak = timer.peak_mib(step)
            row[f"{path}_peak_mib"] = None if peak is None else round(peak, 2)
            record["rounds"] = rounds
            record["warmup_ms"] = round(warm_ms, 3)
        except Exception as error:  # recorded; the other cells still run
            record["skipped"] = f"{type(error).__name__}: {error}"[:300]
            out["errors"].append(f"{label}: {type(error).__name__}: {error}"[:500])
        finally:
            if cuda:
                torch.cuda.empty_cache()
        record["seconds"] = round(time.monotonic() - now, 2)
        _write_json(result_path, out)
    for row in rows.values():  # variant rows carry their shape's eager/compiled figures for the ratios
        if row["variant"] != "basic":
            base = rows.get((tuple(row["shape"]), row["dtype"], "basic"), {})
            for key in ("eager_ms", "compiled_ms", "eager_peak_mib", "compiled_peak_mib"):
                row[key] = base.get(key)
    out["seconds"] = round(time.monotonic() - part_start, 1)
    out["imported_forbidden"] = [name for name in FORBIDDEN if name in sys.modules]
    _write_json(result_path, out)


def _rounds_for(timer: "_Timer", step, cell_deadline: float, dry_run: bool) -> tuple[int, float]:
    """One warm-up step (compilation included), then as many timed rounds as the cell's budget leaves (3 to 30;
    the peak-memory step counts as one more)."""
    begin = time.monotonic()
    timer.median_ms(step, 0, 1)
    warm = time.monotonic() - begin
    if dry_run:
        return 2, 1e3 * warm
    begin = time.monotonic()
    timer.median_ms(step, 0, 1)
    per_step = max(time.monotonic() - begin, 1e-4)
    left = cell_deadline - time.monotonic()
    return max(3, min(30, int(left / per_step) - 1)), 1e3 * warm


# ----------------------------------------------------------------------------------------------------------------
# Part "train"
# ----------------------------------------------------------------------------------------------------------------
def _train_part(result_path: Path, dry_run: bool, budget: float) -> None:
    import torch

    cuda = torch.cuda.is_available() and not dry_run
    device = torch.device("cuda" if cuda else "cpu")
    batch, size, classes = (256, 224, 1010) if cuda else (2, 32, 16)
    out = {**_environment(dry_run), "model": "resnet50 + type2 head + haframe", "engine": "plain",
           "precision": "bf16-autocast, channels-last" if cuda else "fp32 (dry run)", "batch": batch,
           "image_size": size, "num_classes": classes, "paths": {}, "errors": []}
    _write_json(result_path, out)
    sys.path.insert(0, str(HERE))
    from bench_train_step import synthetic_distances

    from haf.methods import MethodContext
    from haf.models.classifier import build_classifier
    from haf.training.engine import DistributedContext, PlainTrainEngine
    from haf.training.schema import DeepSpeedConfig, RunConfig

    torch.manual_seed(0)
    context = MethodContext(classes=tuple(f"c{i}" for i in range(classes)), distances=synthetic_distances(classes),
                            seed=0)
    model = build_classifier(backbone="resnet50", head="type2", method="haframe", context=context,
                             method_options={"gamma": 5.0, "alpha": 0.4}).to(device)
    images = torch.randn(batch, 3, size, size, device=device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, classes, (batch,), device=device)
    config = RunConfig(deepspeed=DeepSpeedConfig(enabled=False, precision="bf16-autocast" if cuda else "fp32"))
    engine = PlainTrainEngine(model, config, DistributedContext(0, 1, 0, device, "nccl" if cuda else "gloo"))
    model.train()
    timer = _Timer(cuda)
    for path, backend in (("fused", "triton"), ("reference", "reference")):
        try:
            model.method.loss_backend = backend

            def step():
                with engine.autocast():
                    loss = model.loss(engine.forward(images), targets)
                engine.backward(loss)
                engine.step()

            step_ms = timer.median_ms(step, 5 if cuda else 1, 20 if cuda else 2)
            with torch.no_grad(), engine.autocast():
                features = model.features(images[: min(batch, 8)])
            h = torch.randn(batch, features.shape[1], device=device, dtype=features.dtype, requires_grad=True)
            from haf.kernels import frame_loss

            def loss_only():
                h.grad = None
                frame_loss(h, model.method.frame, targets, model.method.similarity, alpha=0.4,
                           backend=backend).backward()

            loss_ms = timer.median_ms(loss_only, 3 if cuda else 1, 20 if cuda else 2)
            out["paths"][path] = {"step_ms": round(step_ms, 3), "images_per_s": round(1e3 * batch / step_ms, 1),
                                  "loss_ms": round(loss_ms, 4), "loss_share_percent": round(100 * loss_ms / step_ms, 3)}
        except Exception as error:
            out["errors"].append(f"{path}: {type(error).__name__}: {error}"[:500])
        _write_json(result_path, out)
    out["imported_forbidden"] = [name for name in FORBIDDEN if name in sys.modules]
    _write_json(result_path, out)


# ----------------------------------------------------------------------------------------------------------------
# Part "tests"
# ----------------------------------------------------------------------------------------------------------------
def _tests_part(result_path: Path, dry_run: bool, budget: float) -> None:
    """Outcome counts and failed test ids, written after every test (a part stopped at its budget keeps them)."""
    import pytest

    start = time.monotonic()
    files = kernel_test_files()
    out = {"returncode": None, "passed": 0, "failed": 0, "skipped": 0, "failed_tests": [], "seconds": 0.0,
           "files": files, "selection": "-m gpu (collection only on CPU)" if dry_run else "-m 'not slow'",
           "slowest": []}
    durations: list = []

    class Record:
        def pytest_runtest_logreport(self, report):
            if report.when == "call":
                durations.append((round(report.duration, 2), report.nodeid))
                out["slowest"] = sorted(durations, reverse=True)[:10]
            if report.when == "call" or report.outcome != "passed":
                out[report.outcome] = out.get(report.outcome, 0) + 1
                if report.outcome == "failed":
                    out["failed_tests"].append(f"{report.nodeid} ({report.when})")
                out["seconds"] = round(time.monotonic() - start, 1)
                _write_json(result_path, out)

    args = ["-q", "-m", "gpu" if dry_run else "not slow", "-p", "no:cacheprovider", "-o", "addopts=-ra", *files]
    out["returncode"] = int(pytest.main(args, plugins=[Record()]))
    out["seconds"] = round(time.monotonic() - start, 1)
    _write_json(result_path, out)


PARTS = {"tests": _tests_part, "loss": _loss_part, "train": _train_part}


# ----------------------------------------------------------------------------------------------------------------
# Parent: one child per part, budgets, merge
# ----------------------------------------------------------------------------------------------------------------
def _run_part(name: str, folder: Path, dry_run: bool, budget: float) -> tuple[dict | None, str | None]:
    result = folder / f".gpu_check_{name}.json"
    result.unlink(missing_ok=True)
    env = dict(os.environ)
    if dry_run:
        env["TRITON_INTERPRET"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
    command = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--result", str(result),
               "--budget", str(budget)] + (["--dry-run"] if dry_run else [])
    error = None
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, timeout=budget, capture_output=True, text=True)
        sys.stdout.write(done.stdout[-3000:])
        if done.returncode != 0:
            error = f"part {name!r} exited with {done.returncode}: {done.stderr.strip()[-800:]}"
    except subprocess.TimeoutExpired:
        error = f"part {name!r} ran past its budget of {budget:.0f} s"
    data = json.loads(result.read_text()) if result.exists() else None
    result.unlink(missing_ok=True)
    return data, error


def run(out_dir: Path, dry_run: bool, parts: list[str]) -> dict[str, Path]:
    """Run the parts and write frame_loss_gpu.json (loss rows + tests) and train_step_gpu.json into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in parts:
        begin = time.monotonic()
        data, error = _run_part(name, out_dir, dry_run, BUDGETS[name])
        results[name] = (data, error)
        print(f"[gpu-check] {name}: {'ok' if error is None else error} ({time.monotonic() - begin:.0f} s)", flush=True)
    written = {}
    if "loss" in parts or "tests" in parts:
        loss, loss_error = results.get("loss", (None, None))
        merged = loss or {**_environment_from_parent(dry_run), "rows": [], "errors": []}
        if loss_error:
            merged.setdefault("errors", []).append(loss_error)
        if "tests" in results:
            tests, tests_error = results["tests"]
            merged["gpu_tests"] = tests or {"error": tests_error}
            if tests and tests_error:
                merged["gpu_tests"]["error"] = tests_error
        written["loss"] = out_dir / "frame_loss_gpu.json"
        _write_json(written["loss"], merged)
    if "train" in parts:
        train, train_error = results["train"]
        train = train or {**_environment_from_parent(dry_run), "paths": {}, "errors": []}
        if train_error:
            train.setdefault("errors", []).append(train_error)
        written["train"] = out_dir / "train_step_gpu.json"
        _write_json(written["train"], train)
    return written


def _environment_from_parent(dry_run: bool) -> dict:
    try:
        return _environment(dry_run)
    except Exception as error:  # torch itself missing: say so in the file
        return {"device": None, "torch": None, "triton": None, "environment_error": str(error)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the plan, then the CPU plumbing check at "
                                                                   "tiny shapes")
    parser.add_argument("--plan", action="store_true", help="print the loss cells' order and budgets, and exit")
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON files (default bench/results, "
                                                                  "a temporary folder with --dry-run)")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of tests,loss,train")
    parser.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:  # child process
        sys.path.insert(0, str(HERE))
        import haf_path

        haf_path.install()
        PARTS[args.part](args.result, args.dry_run, args.budget)
        return 0
    if args.plan or args.dry_run:
        print(format_plan(loss_plan(dry_run=False)), flush=True)
        if args.plan:
            return 0
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {list(PARTS)}")
    if args.out is None:
        if args.dry_run:
            import tempfile

            args.out = Path(tempfile.mkdtemp(prefix="haf-gpu-check-"))
        else:
            args.out = HERE / "results"
    for path in run(args.out, args.dry_run, parts).values():
        print(f"[gpu-check] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
