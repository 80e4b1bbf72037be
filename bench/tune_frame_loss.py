"""Tile sweep of the fused frame loss on a GPU; prints the winners in the format of ``TUNED`` in
:mod:`haf.kernels.dense.config` (paste them there).

For each table key — tiled regime per dtype (bf16, fp16, fp32 under TF32, fp32 IEEE) and the row-block regime —
every candidate ``KernelConfig`` is timed on forward + backward at its shape (CUDA events, median), a candidate that
fails to compile (shared memory, registers) is reported and skipped, and the fastest one whose loss matches the
table's current entry's is printed. Candidates: the products of the per-field choices below, one group of fields
at a time (the winner of a group is kept while the next is swept).

Run: ``python3 bench/tune_frame_loss.py [--keys bf16,fp32-tf32] [--limit N]`` (minutes per key on an H100);
``--dry-run`` runs the plumbing on CPU in Triton's interpreter at a tiny shape with two candidates per key.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: key → (TUNED key, features dtype name, fp32 matmul precision, shape, [{field: choices}, ...])
#: Swept group by group (kernel 1's tiles, then kernel 3's with kernel 1's winner), 48 candidates per group.
_TILED_FIELDS = [
    {"logits_block_b": (64, 128), "logits_block_k": (64, 128), "logits_block_d": (32, 64),
     "logits_warps": (4, 8), "logits_stages": (2, 3, 4)},
    {"grad_block_b": (64, 128), "grad_block_d": (64, 128), "grad_block_k": (32, 64), "grad_warps": (4, 8),
     "grad_stages": (2, 3, 4)},
]
_ROW_FIELDS = [{"row_block_b": (16, 32), "row_block_k": (32, 64, 128), "row_block_d": (32, 64), "row_warps": (4, 8)}]
KEYS = {
    "bf16": (("tiled", "bf16", "tf32x3"), "bf16", "high", (8192, 2048, 32000), _TILED_FIELDS),
    "fp16": (("tiled", "fp16", "tf32x3"), "fp16", "high", (8192, 2048, 32000), _TILED_FIELDS),
    "fp32-tf32": (("tiled", "fp32", "tf32"), "fp32", "high", (8192, 2048, 32000), _TILED_FIELDS),
    "fp32-ieee": (("tiled", "fp32", "ieee"), "fp32", "highest", (4096, 2048, 8000), _TILED_FIELDS),
    # the row-block tiles live in the small-problem entry (merged into it when printed)
    "row-block": (("small-tiled", "any", None), "bf16", "high", (1024, 608, 608), _ROW_FIELDS),
}
DRY_SHAPE = (16, 24, 40)


def candidates(fields: dict, limit: int | None) -> list[dict]:
    """Every combination of the field choices (the first ``limit`` in a fixed order: smallest tiles first)."""
    names = list(fields)
    combos = [dict(zip(names, values)) for values in itertools.product(*(fields[name] for name in names))]
    return combos[:limit] if limit else combos


def tune(key: str, dry_run: bool, limit: int | None) -> dict:
    """Time the candidates of one key; returns {"key", "best", "best_ms", "default_ms", "results"}."""
    import torch
    import torch.nn.functional as F

    from haf.kernels.dense import config as cfg
    from haf.kernels.dense import fused as fused

    from gpu_check import _Timer  # bench/ is on sys.path (main); CUDA events on a GPU, wall clock in the dry run

    table_key, dtype_name, precision, shape, fields = KEYS[key]
    cuda = torch.cuda.is_available() and not dry_run
    median_ms = _Timer(cuda).median_ms
    device = "cuda" if cuda else "cpu"
    batch, dim, classes = DRY_SHAPE if dry_run else shape
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    torch.set_float32_matmul_precision(precision)
    gen = torch.Generator().manual_seed(0)
    frame = F.normalize(torch.randn(classes, dim, generator=gen), dim=1).to(device)
    similarity = (frame @ frame.T).clamp(-1, 1)
    similarity = 0.5 * (similarity + similarity.T)
    target = torch.randint(0, classes, (batch,), generator=gen).to(device)
    h = torch.randn(batch, dim, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    row_regime = key == "row-block"

    def run(overrides: dict | None):
        """fwd + bwd with the table's current entry, ``overrides`` on top (the tiled keys force that regime)."""
        fields_now = {**cfg.TUNED.get(table_key, {}), **(overrides or {})}
        if not row_regime:
            fields_now["row_block_max_classes"] = 0
        config = fused.KernelConfig(**fields_now)

        def step():
            h.grad = None
            loss = fused.triton_frame_loss(h, frame, target, similarity, 0.4, config=config)
            loss.backward()
            return loss

        return step

    default_step = run(None)
    reference = float(default_step().detach())
    default_ms = median_ms(default_step, 1, 3 if dry_run else 10)
    results, chosen = [], {}
    for group in fields:
        pool = candidates(group, 2 if dry_run else limit)
        group_results = []
        for index, choice in enumerate(pool):
            overrides = {**chosen, **choice}
            try:
                step = run(overrides)
                value = float(step().detach())
                if abs(value - reference) > 1e-3 * max(1.0, abs(reference)):
                    raise ValueError(f"loss {value} differs from the current entry's {reference}")
                ms = median_ms(step, 1, 3 if dry_run else 10)
                group_results.append({"config": overrides, "ms": ms})
                print(f"  [{key}] {index + 1}/{len(pool)} {ms:9.4f} ms  {choice}", flush=True)
            except Exception as error:  # does not compile (shared memory, registers) or is wrong: skipped
                group_results.append({"config": overrides, "error": f"{type(error).__name__}: {error}"[:300]})
                print(f"  [{key}] {index + 1}/{len(pool)} skipped: {group_results[-1]['error']}", flush=True)
        timed_group = [r for r in group_results if "ms" in r]
        if timed_group:
            chosen = min(timed_group, key=lambda r: r["ms"])["config"]
        results += group_results
    timed = [r for r in results if "ms" in r and r["config"] == chosen]
    best = timed[-1] if timed else None
    return {"key": table_key, "shape": [batch, dim, classes], "default_ms": default_ms,  # default: current entry
            "best": best["config"] if best else None, "best_ms": best["ms"] if best else None, "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", default=",".join(KEYS), help=f"comma-separated subset of {', '.join(KEYS)}")
    parser.add_argument("--limit", type=int, default=None, help="at most this many candidates per key")
    parser.add_argument("--dry-run", action="store_true", help="CPU interpreter, tiny shape, two candidates")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import haf_path

    haf_path.install()
    keys = [key.strip() for key in args.keys.split(",") if key.strip()]
    unknown = sorted(set(keys) - set(KEYS))
    if unknown:
        parser.error(f"unknown key(s) {unknown}; choose from {list(KEYS)}")
    lines = []
    for key in keys:
        outcome = tune(key, args.dry_run, args.limit)
        if outcome["best"] is None:
            lines.append(f"# {outcome['key']}: no candidate compiled")
            continue
        gain = outcome["default_ms"] / outcome["best_ms"]
        from haf.kernels.dense.config import TUNED

        entry = {**TUNED.get(outcome["key"], {}), **outcome["best"]}
        lines.append(f"    {outcome['key']!r}: {entry!r},  # {outcome['best_ms']:.4f} ms at "
                     f"{tuple(outcome['shape'])}, {gain:.2f}x the default")
    print("TUNED entries (paste into haf/kernels/frame_loss_config.py):")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
