"""The fused frame-loss kernels compile for a real GPU target (sm_90), on any machine, GPU or not.

Triton's interpreter runs the arithmetic of the kernels but never their compiler; this test drives the real
pipeline (Triton → PTX → ptxas → cubin) through :mod:`haf.kernels.dense.aot` in a subprocess with
``TRITON_INTERPRET`` unset, at the tile choices of the paper regime (fp32 IEEE and bf16) and the large regime (bf16,
fp32 TF32; in the basic, persistent and TMA schedules): no kernel spills and none has serialised wgmma (ptxas
warning C7515). About a minute, hence ``slow``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, torch
from haf.kernels.dense import aot as aot
large = (8192, 2048, 32000)
cases = [("bfloat16", large, None, "basic"), ("float32", large, "tf32", "basic"),
         ("float32", (256, 1010, 1010), "ieee", "basic"), ("bfloat16", (256, 1010, 1010), None, "basic"),
         ("bfloat16", large, None, "persistent"), ("float32", large, "tf32", "persistent"),
         ("bfloat16", large, None, "tma"), ("float32", large, "tf32", "tma"), ("float32", large, "ieee", "tma")]
out = []
for dtype, shape, precision, variant in cases:
    for kernel in aot.compile_kernels(getattr(torch, dtype), *shape, capability=90, precision=precision,
                                      variant=variant):
        out.append({"case": f"{dtype} {precision} {shape} {variant}", "kernel": kernel.name,
                    "cubin_bytes": len(kernel.cubin),
                    "smem": kernel.shared_bytes, "ptxas": aot.ptxas_report(kernel)})
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout.split("RESULT", 1)[1])
    names = {(r["case"], r["kernel"]) for r in results}
    # four tiled kernels per large case, one row-block kernel per paper case, and the backward's kernel in each
    assert len(names) == 7 * (4 + 1) + 2 * (1 + 1)
    assert {"_logits_stats_persistent_kernel", "_grad_features_persistent_kernel"} <= {r["kernel"] for r in results}
    for row in results:
        assert row["cubin_bytes"] > 0, row
        assert "0 bytes spill stores" in row["ptxas"] and "0 bytes spill loads" in row["ptxas"], row
        assert "C7515" not in row["ptxas"], row
        assert row["smem"] <= 228 * 1024, row  # fits an H100 SM's shared memory
        print(f"{row['case']:<28} {row['kernel']:<24} smem {row['smem']:>6} B  {row['ptxas']}")
