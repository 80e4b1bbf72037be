"""Tree-factorised frame vs the dense one: construction for K = 10³ … 10⁶, loss fwd+bwd time and peak memory.

Run: ``python bench/bench_tree_frame.py [--quick]`` (prints one JSON line per case; each case runs in a fresh
subprocess so its peak RSS is its own). Frame cases: the tree frame (s_min search, frame, Gram check) beside the
dense one (distances → eigendecomposition) where K ≤ 2,000. Loss cases: B = 256 at K = 1,010 and 10⁴, the tree
loss (reference path, CPU) beside the dense loss with the materialised W, and the tree loss alone at K = 10⁶ in
fp32 and bf16 features. ``peak_mb`` is the process's peak RSS; ``extra_mb`` subtracts the RSS after the inputs
were built, ``working_mb`` also the returned gradient. Training cases: the shipped 10,000-class config end to end
(and resized to 10⁵ classes with val/test on 5,000 of them), 10 steps, wall seconds and peak RSS.
Under pytest only a small smoke case runs.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def random_tree(num_leaves: int, depth: int = 6, seed: int = 0, stop: float = 0.08) -> np.ndarray:
    """Parent array of a random unbalanced tree with about ``num_leaves`` leaves: level sizes grow geometrically,
    each node gets ≥ 1 child except a random ``stop`` fraction per level, which end as shallow leaves."""
    rng = np.random.default_rng(seed)
    parents = [np.array([-1])]
    offset, previous = 1, np.array([0])
    for level in range(1, depth + 1):
        size = max(int(round(num_leaves ** (level / depth))), previous.size)
        if level < depth:
            keep = previous[rng.random(previous.size) >= stop] if previous.size > 1 else previous
        else:
            keep = previous
        if keep.size == 0:
            keep = previous[:1]
        extra = rng.choice(keep, size=max(size - keep.size, 0))
        level_parents = np.sort(np.concatenate([keep, extra]))
        parents.append(level_parents)
        previous = np.arange(offset, offset + level_parents.size)
        offset += level_parents.size
    return np.concatenate(parents)


def _rss_mb() -> float:
    """Peak RSS since the last :func:`_reset_peak` (Linux VmHWM), else since the process started."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024.0
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak() -> float:
    """Reset the peak-RSS counter to the current RSS (Linux clear_refs 5) and return it."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass
    return _rss_mb()


def case_frame(num_leaves: int, dense: bool) -> dict:
    from haf.frame import TreeArrays, build_dense_frame, build_tree_frame

    tree = TreeArrays.from_parents(random_tree(num_leaves))
    base = _reset_peak()
    start = time.perf_counter()
    frame = build_tree_frame(tree, 5.0, "lca-height")
    seconds = time.perf_counter() - start
    out = {"case": "frame", "K": tree.num_classes, "N": tree.num_nodes, "width": frame.width, "s_min": frame.s_min,
           "tree_seconds": seconds, "max_gram_error": frame.max_gram_error, "gram_pairs": frame.gram_pairs,
           "tree_extra_mb": _rss_mb() - base}
    if dense:
        k = tree.num_classes
        i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
        lca = tree.lca(tree.leaf_node[i.ravel()], tree.leaf_node[j.ravel()]).reshape(k, k)
        distances = tree.subtree_height[lca]
        start = time.perf_counter()
        result = build_dense_frame(distances, 5.0)
        out["dense_seconds"] = time.perf_counter() - start
        out["dense_s_min"] = result.s_min
        out["same_s_min"] = result.s_min == frame.s_min
        out["speedup"] = out["dense_seconds"] / seconds
    out["peak_mb"] = _rss_mb()
    return out


def case_loss(num_leaves: int, batch: int, kind: str, repeats: int = 2, dtype: str = "float32") -> dict:
    """fwd+bwd of the loss; ``working_mb`` = peak RSS above the inputs minus the returned gradient (B × width)."""
    import torch

    from haf.frame import TreeArrays, build_tree_frame
    from haf.kernels import frame_loss
    from haf.kernels.tree.loss import TreeFrameTensors

    torch.set_num_threads(1)
    tree = TreeArrays.from_parents(random_tree(num_leaves, depth=4 if num_leaves < 20_000 else 6))
    frame = build_tree_frame(tree, 5.0, "lca-height", check=False)
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, tree.num_classes, (batch,), generator=gen)
    if kind == "dense":
        w = torch.from_numpy(frame.materialise()).float()
        k = tree.num_classes
        s = torch.empty(k, k)
        for start in range(0, k, 256):  # S by row blocks: the pairwise LCA temporaries stay small
            i, j = np.meshgrid(np.arange(start, min(start + 256, k)), np.arange(k), indexing="ij")
            s[start:start + i.shape[0]] = torch.from_numpy(frame.similarity(i.ravel(), j.ravel()).reshape(i.shape))
        args = (w, y, s)
    else:
        args = (TreeFrameTensors(frame), y, None)
    h = torch.randn(batch, frame.width, generator=gen).to(getattr(torch, dtype)).requires_grad_()
    base = _reset_peak()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loss = frame_loss(h, args[0], args[1], args[2], 0.4, backend="reference")
        loss.backward()
        times.append(time.perf_counter() - start)
        h.grad = None
    features_mb = h.element_size() * h.numel() / 2**20
    extra = _rss_mb() - base
    return {"case": f"loss-{kind}", "K": tree.num_classes, "width": frame.width, "B": batch, "dtype": dtype,
            "loss": float(loss), "seconds": min(times), "extra_mb": extra, "peak_mb": _rss_mb(), "inputs_mb": features_mb,
            "grad_mb": features_mb, "working_mb": extra - features_mb,
            "inputs_grad_working_mb": 2 * features_mb + extra - features_mb}


def case_train(num_classes: int, steps: int = 10, eval_classes: int | None = None) -> dict:
    """The shipped 10,000-class config end to end on the CPU (``haf/train.py``: build, train ``steps`` steps, validate,
    test), resized to ``num_classes``; wall seconds and the child's peak RSS."""
    import tempfile

    overrides = ["train.epochs=1", f"train.max_steps_per_epoch={steps}", "train.device=cpu", "data.backend=torch",
                 f"dataset.options.num_classes={num_classes}", f"dataset.options.depth={4 if num_classes <= 20_000 else 5}",
                 f"dataset.options.train_per_class={2 if num_classes <= 20_000 else 1}"]
    if eval_classes is not None:
        overrides.append(f"dataset.options.eval_classes={eval_classes}")
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "haf/train.py", "--config", "configs/synthetic/haframe-tree-10k.yaml",
                   "--output-dir", out] + [arg for o in overrides for arg in ("--set", o)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        seconds = time.perf_counter() - start
        if done.returncode:
            return {"case": "train", "K": num_classes, "error": done.stderr.strip().splitlines()[-1:]}
        records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    by_split = {r["split"]: r for r in records}
    return {"case": "train", "K": num_classes, "steps": steps, "eval_classes": eval_classes, "seconds": seconds,
            "peak_mb": peak, "train_images_per_s": by_split["train"].get("images_per_s"),
            "test_hierdist@5": by_split.get("test", {}).get("hierdist@5")}


def _run(call: str) -> dict:
    code = f"import sys; sys.path.insert(0, 'bench'); import json, bench_tree_frame as b; print(json.dumps({call}))"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        return {"call": call, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(quick: bool = False, only: str = "") -> list[dict]:
    calls = [f"b.case_frame({k}, {k <= 2000})" for k in ((1000, 2000, 10_000) if quick else
                                                         (1000, 2000, 10_000, 100_000, 200_000, 1_000_000))]
    for k in (1010, 10_000):
        calls += [f"b.case_loss({k}, 256, 'tree')", f"b.case_loss({k}, 256, 'dense')"]
    calls.append("b.case_train(10_000)")
    if not quick:
        calls += ["b.case_train(100_000, eval_classes=5_000)", "b.case_loss(1_000_000, 256, 'tree', repeats=1)",
                  "b.case_loss(1_000_000, 256, 'tree', repeats=1, dtype='bfloat16')"]
    results = []
    for call in [c for c in calls if only in c]:
        result = _run(call)
        print(json.dumps(result), flush=True)
        results.append(result)
    by = {(r.get("case"), r.get("K")): r for r in results}
    for k in {r["K"] for r in results if r.get("case") == "loss-tree"}:
        tree, dense = by.get(("loss-tree", k)), by.get(("loss-dense", k))
        if tree and dense:
            print(json.dumps({"case": "loss-ratio", "K": k, "dense_over_tree_seconds": dense["seconds"] / tree["seconds"],
                              "dense_over_tree_extra_mb": dense["extra_mb"] / max(tree["extra_mb"], 1.0)}))
    return results


def test_smoke():
    """The bench's own cases at toy size (the figures are recorded by running the script)."""
    frame = case_frame(300, True)
    assert frame["same_s_min"] and frame["max_gram_error"] < 1e-12
    tree, dense = case_loss(200, 8, "tree"), case_loss(200, 8, "dense")
    assert tree["K"] == dense["K"] and abs(tree["loss"] - dense["loss"]) < 1e-4 * max(1.0, abs(dense["loss"]))


if __name__ == "__main__":
    main(quick="--quick" in sys.argv, only=next((a[7:] for a in sys.argv if a.startswith("--only=")), ""))
