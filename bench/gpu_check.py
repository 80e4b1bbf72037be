"""One-command GPU check of the fused frame loss (``make gpu-check`` = ``python3 bench/gpu_check.py``).

Runs on a bare H100/H200 machine with this checkout and torch / Triton / pytest only (``haf`` imported through
:mod:`haf_path`; DeepSpeed and DALI never imported). Three parts, each in its own process and time budget:
``tests`` — ``pytest -m gpu`` on the loss's test files; ``loss`` — forward + backward at the five shapes, fp32
(TF32) and bf16, eager / ``torch.compile`` / fused (CUDA-event median, peak ``max_memory_allocated`` above the
start), plus the fused path's other schedule variants (``HAF_FRAME_LOSS_VARIANT``) at the two large shapes, each
row naming its ``variant`` → ``bench/results/frame_loss_gpu.json``; ``train`` — ResNet-50 + type-II head + HAFrame,
plain engine, bf16, batch 256 → ``bench/results/train_step_gpu.json``. A failing part records its error; the
others still run.

``--dry-run``: the same plumbing on CPU at tiny shapes (Triton's interpreter, ``torch.compile`` with its eager
backend, no peak memory), written to ``--out``; the tests check its files.
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
LOSS_TEST_FILES = ["tests/test_frame_loss_triton.py", "tests/test_frame_loss_rules.py",
                   "tests/test_frame_loss_dispatch.py", "tests/test_losses.py", "tests/test_frame_loss_variants.py"]
#: Of those, files whose every test runs here (on CPU they run in the interpreter, unmarked): the others run their
#: tests marked ``gpu`` only.
WHOLE_TEST_FILES = {"tests/test_frame_loss_variants.py"}
GPU_SHAPES = [(64, 100, 100), (256, 1010, 1010), (1024, 608, 608), (4096, 10000, 10000), (8192, 2048, 32000)]
DRY_SHAPES = [(8, 16, 12), (24, 40, 72)]
#: Shapes where every schedule variant of the tiled regime is timed too (fused path only; rows with "variant").
VARIANT_SHAPES = [(4096, 10000, 10000), (8192, 2048, 32000)]
DRY_VARIANT_SHAPES = [(8, 16, 2100)]  # K > 2048: the tiled regime
OTHER_VARIANTS = ("persistent", "tma")
DTYPES = ("fp32", "bf16")
#: Seconds per part on a GPU (sum ≤ 8 minutes with start-up); the dry run gets the same budgets.
BUDGETS = {"tests": 150, "loss": 210, "train": 90}
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
def _loss_inputs(shape, dtype, device):
    import torch
    import torch.nn.functional as F

    batch, dim, classes = shape
    gen = torch.Generator().manual_seed(batch + classes)
    frame = F.normalize(torch.randn(classes, dim, generator=gen), dim=1)
    gram = (frame @ frame.T).clamp(-1.0, 1.0)
    similarity = 0.5 * (gram + gram.T)
    features = torch.randn(batch, dim, generator=gen)
    target = torch.randint(0, classes, (batch,), generator=gen)
    target[::17] = -100
    return (features.to(device=device, dtype=dtype).requires_grad_(), frame.to(device), target.to(device),
            similarity.to(device))


def _empty_row(shape, dtype_name: str, variant: str) -> dict:
    return {"shape": list(shape), "dtype": dtype_name, "variant": variant, "eager_ms": None, "compiled_ms": None,
            "fused_ms": None, "eager_peak_mib": None, "fused_peak_mib": None, "compiled_peak_mib": None}


def _loss_part(result_path: Path, dry_run: bool, budget: float) -> None:
    import torch

    import haf.losses as reference
    from haf.kernels import frame_loss
    from haf.kernels.dense.config import VARIANT_ENV

    default_variant = os.environ.get(VARIANT_ENV, "").strip().lower() or "basic"
    deadline = time.monotonic() + budget - 10
    cuda = torch.cuda.is_available() and not dry_run
    device = "cuda" if cuda else "cpu"
    torch.set_float32_matmul_precision("high")  # TF32 for fp32 on the GPU, in every path alike
    for name in ("cache_size_limit", "recompile_limit"):  # one compiled graph per shape and dtype
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    timer = _Timer(cuda)
    shapes = DRY_SHAPES if dry_run else GPU_SHAPES
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    out = {**_environment(dry_run), "matmul_precision": "high", "rows": [], "errors": []}
    rows = {(shape, dtype_name): _empty_row(shape, dtype_name, default_variant)
            for shape in shapes for dtype_name in DTYPES}
    variant_rows = {(shape, dtype_name, variant): _empty_row(shape, dtype_name, variant)
                    for variant in OTHER_VARIANTS for shape in (DRY_VARIANT_SHAPES if dry_run else VARIANT_SHAPES)
                    for dtype_name in DTYPES}
    out["rows"] = list(rows.values()) + list(variant_rows.values())
    compile_backend = "eager" if dry_run else "inductor"

    def loss_fn(path):
        if path == "eager":
            return reference.hierarchy_frame_loss
        if path == "compiled":
            torch._dynamo.reset()
            return torch.compile(reference.hierarchy_frame_loss, backend=compile_backend, dynamic=False)
        return lambda *args: frame_loss(*args, backend="triton")

    # eager and fused first at every shape, then compiled (its compilation time must not starve the others), then
    # the other schedule variants of the fused path at the large shapes (eager figures copied from the basic row)
    cells = [(key, row, path) for paths in (("eager", "fused"), ("compiled",)) for key, row in rows.items()
             for path in paths]
    cells += [((shape, dtype_name), row, "fused") for (shape, dtype_name, _), row in variant_rows.items()]
    for (shape, dtype_name), row, path in cells:
        os.environ[VARIANT_ENV] = row["variant"]
        if row is not rows.get((shape, dtype_name)):
            for key in ("eager_ms", "compiled_ms", "eager_peak_mib", "compiled_peak_mib"):
                row[key] = rows.get((shape, dtype_name), {}).get(key)
        if time.monotonic() > deadline:
            out["errors"].append(f"{path} {row['variant']} {shape} {dtype_name}: skipped, part budget of "
                                 f"{budget:.0f} s spent")
            continue
        try:
            fn = loss_fn(path)
            inputs = _loss_inputs(shape, dtypes[dtype_name], device)

            def step():
                inputs[0].grad = None
                fn(*inputs, 0.4).backward()

            large = shape[0] * shape[2] > (1 << 24)
            warmup, rounds = (1, 3) if dry_run else ((2, 5) if large else (10, 30))
            row[f"{path}_ms"] = round(timer.median_ms(step, warmup, rounds), 4)
            peak = timer.peak_mib(step)
            row[f"{path}_peak_mib"] = None if peak is None else round(peak, 2)
            del inputs
        except Exception as error:  # recorded; the other cells still run
            out["errors"].append(f"{path} {row['variant']} {shape} {dtype_name}: {type(error).__name__}: "
                                 f"{error}"[:500])
        finally:
            if cuda:
                torch.cuda.empty_cache()
        _write_json(result_path, out)
    out["imported_forbidden"] = [name for name in FORBIDDEN if name in sys.modules]
    _write_json(result_path, out)


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
    out = {"returncode": None, "passed": 0, "failed": 0, "skipped": 0, "failed_tests": [], "seconds": 0.0,
           "files": LOSS_TEST_FILES}

    class Record:
        @pytest.hookimpl(tryfirst=True)  # before ``-m gpu`` deselects
        def pytest_collection_modifyitems(self, items):
            for item in items:
                if item.nodeid.split("::", 1)[0] in WHOLE_TEST_FILES:
                    item.add_marker(pytest.mark.gpu)

        def pytest_runtest_logreport(self, report):
            if report.when == "call" or report.outcome != "passed":
                out[report.outcome] = out.get(report.outcome, 0) + 1
                if report.outcome == "failed":
                    out["failed_tests"].append(f"{report.nodeid} ({report.when})")
                out["seconds"] = round(time.monotonic() - start, 1)
                _write_json(result_path, out)

    args = ["-q", "-m", "gpu", "-p", "no:cacheprovider", "-o", "addopts=-ra", *LOSS_TEST_FILES]
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
    parser.add_argument("--dry-run", action="store_true", help="CPU plumbing check at tiny shapes")
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
