"""``make gpu-check``'s plumbing, dry (CPU, tiny shapes, fused kernels in Triton's interpreter): every part runs in
its own process, imports ``haf`` from the checkout, never DeepSpeed or DALI, and writes the JSON the GPU run
writes, with sane values."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = {"shape", "dtype", "eager_ms", "compiled_ms", "fused_ms", "eager_peak_mib", "fused_peak_mib", "cells"}


def _gpu_check():
    if str(ROOT / "bench") not in sys.path:  # once: each call used to prepend another copy
        sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check

    return gpu_check


def test_plan_orders_variants_before_compiled_cells_and_fits_the_budgets():
    """``--plan``: every row's cells, the persistent/TMA variants before any torch.compile cell, per-cell budgets
    that sum within the loss part's, and parts within 8 minutes."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--plan"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    cells = [line.split() for line in lines[1:]]
    order = [(cell[1], cell[2]) for cell in cells]  # (path, variant)
    last_variant = max(i for i, (path, variant) in enumerate(order) if variant in ("persistent", "tma"))
    first_compiled = min(i for i, (path, _) in enumerate(order) if path == "compiled")
    assert last_variant < first_compiled
    gpu_check = _gpu_check()
    plan = gpu_check.loss_plan(dry_run=False)
    assert len(cells) == len(plan) == 4 * len(gpu_check.GPU_SHAPES) + 2 * 2 * len(gpu_check.VARIANT_SHAPES) + \
        2 * len(gpu_check.GPU_SHAPES)
    assert sum(cell["budget_s"] for cell in plan) <= gpu_check.BUDGETS["loss"] - gpu_check.LOSS_MARGIN
    assert sum(gpu_check.BUDGETS.values()) <= 8 * 60 - 30  # 30 s for three processes' start-up
    assert [float(cell[-2]) for cell in cells] == [cell["budget_s"] for cell in plan]
    for shape in gpu_check.GPU_SHAPES:
        for dtype in gpu_check.DTYPES:
            paths = {cell["path"] for cell in plan if cell["shape"] == shape and cell["dtype"] == dtype}
            assert paths == {"eager", "fused", "compiled"}


def test_inputs_are_built_once_per_shape_on_the_device():
    import torch

    gpu_check = _gpu_check()
    inputs = gpu_check._Inputs("cpu")
    h32, frame, target, similarity = inputs.get((6, 8, 5), torch.float32)
    h16, frame_again, _, similarity_again = inputs.get((6, 8, 5), torch.bfloat16)
    assert frame_again is frame and similarity_again is similarity and len(inputs.base) == 1
    assert torch.equal(similarity, similarity.T) and h16.dtype == torch.bfloat16
    assert h32.is_leaf and h16.is_leaf and h32.requires_grad and h16.requires_grad  # each cell's own leaf
    torch.testing.assert_close(h16.float(), h32.detach(), rtol=1e-2, atol=1e-2)


def test_kernel_test_suite_is_the_whole_set():
    files = _gpu_check().kernel_test_files()
    assert "tests/test_frame_loss_triton.py" in files and "tests/test_tree_frame_loss_triton.py" in files
    assert "tests/test_frame_loss_tiled_exact.py" in files and "tests/test_frame_loss_compile.py" not in files


@pytest.mark.slow
def test_gpu_check_dry_run_writes_both_files(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    loss = json.loads((tmp_path / "frame_loss_gpu.json").read_text())
    assert {"device", "torch", "triton", "rows"} <= set(loss)
    assert loss["errors"] == [] and loss["imported_forbidden"] == []
    assert [cell["path"] for cell in loss["plan"]][-4:] == ["compiled"] * 4
    for row in loss["rows"]:
        for path, cell in row["cells"].items():
            assert cell["skipped"] is None and cell["seconds"] >= 0 and cell["rounds"] >= 2, (row, path)
    basic = [row for row in loss["rows"] if row["variant"] == "basic"]
    others = [row for row in loss["rows"] if row["variant"] != "basic"]
    assert len(basic) == 2 * 2  # two dry-run shapes × fp32, bf16
    assert sorted(row["variant"] for row in others) == ["persistent"] * 2 + ["tma"] * 2  # one tiled shape × 2 dtypes
    for row in loss["rows"]:
        assert ROW_KEYS <= set(row), row
        assert row["dtype"] in ("fp32", "bf16") and len(row["shape"]) == 3
        for path in ("eager", "compiled", "fused") if row in basic else ("fused",):
            assert row[f"{path}_ms"] > 0, row
        assert row["eager_peak_mib"] is None and row["fused_peak_mib"] is None  # no CUDA allocator on CPU
    tests = loss["gpu_tests"]
    assert tests["returncode"] == 0 and tests["failed"] == 0 and tests["skipped"] > 0  # -m gpu: skipped on CPU
    train = json.loads((tmp_path / "train_step_gpu.json").read_text())
    assert train["errors"] == [] and train["imported_forbidden"] == [] and train["engine"] == "plain"
    for path in ("fused", "reference"):
        figures = train["paths"][path]
        assert figures["images_per_s"] > 0 and figures["step_ms"] > 0 and figures["loss_share_percent"] > 0


def test_gpu_check_records_a_failing_part_and_runs_the_rest(tmp_path, monkeypatch):
    gpu_check = _gpu_check()
    monkeypatch.setattr(gpu_check, "_run_part", lambda name, folder, dry, budget: (
        (None, f"part {name!r} ran past its budget of {budget:.0f} s") if name == "tests" else
        ({"device": "x", "torch": "t", "triton": "y", "rows": [], "errors": []}, None)))
    written = gpu_check.run(tmp_path, dry_run=True, parts=["tests", "loss"])
    loss = json.loads(written["loss"].read_text())
    assert loss["device"] == "x" and "budget" in loss["gpu_tests"]["error"]


def test_tuning_script_dry_run_prints_a_table_entry():
    """bench/tune_frame_loss.py on CPU (interpreter, tiny shape, two candidates): prints a TUNED entry that builds
    a valid KernelConfig."""
    import ast

    from haf.kernels.dense.fused import KernelConfig

    done = subprocess.run([sys.executable, str(ROOT / "bench" / "tune_frame_loss.py"), "--dry-run", "--keys",
                           "row-block"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    entry = done.stdout.split("TUNED entries", 1)[1].splitlines()[1].split("#")[0].strip().rstrip(",")
    key, fields = entry.split(": ", 1)
    assert ast.literal_eval(key) == ("small-tiled", "any", None)
    KernelConfig(**ast.literal_eval(fields))
