"""Input-pipeline throughput: DALI against the reference torchvision DataLoader, same files, same CPU budget.

Run: ``pytest bench/bench_pipelines.py`` (about a minute on 2 CPU cores), or ``python bench/bench_pipelines.py``
for the table alone. Both backends read the same ImageNet-size JPEGs (≈500×375, a quarter portrait, quality 90,
generated once into a cache folder), produce normalised 224-px float32 batches, and get the same CPU budget:
``workers`` DALI CPU threads against ``workers`` DataLoader worker processes (each single-threaded). A round is
one whole epoch including the pipeline/worker start, as a training epoch pays it. Each case records
``images_per_second`` and, for DALI, ``speedup_vs_torch`` in its extra_info and prints them.

GPU cases (``@pytest.mark.gpu``) decode with the ``mixed`` nvJPEG decoder and output on the GPU; the reference
then also delivers to the GPU (pinned memory, non-blocking copy), so both end in the same place.

Environment knobs: ``HAF_BENCH_PIPELINE_IMAGES`` (default 256), ``HAF_BENCH_PIPELINE_WORKERS`` (default: usable
CPUs), ``HAF_BENCH_PIPELINE_BATCH`` (default 64), ``HAF_BENCH_CACHE`` (default ``~/.cache/haf/bench``).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from haf.pipelines import make_loader
from haf.pipelines.readers.splits import DatasetSplits, Split
from haf.pipelines.demo.synthetic_jpegs import IMAGENET_LIKE_SIZE, write_jpegs

NUM_IMAGES = int(os.environ.get("HAF_BENCH_PIPELINE_IMAGES", "256"))
WORKERS = int(os.environ.get("HAF_BENCH_PIPELINE_WORKERS", str(len(os.sched_getaffinity(0)))))
BATCH = int(os.environ.get("HAF_BENCH_PIPELINE_BATCH", "64"))
CACHE = Path(os.environ.get("HAF_BENCH_CACHE", Path.home() / ".cache" / "haf" / "bench"))
IMAGE_SIZE = 224
ROUNDS = 3

_measured: dict[tuple[str, str, str], float] = {}


def bench_dataset() -> DatasetSplits:
    """The cached JPEGs as one split (sizes jitter ±15% around 375×500; every 4th stored portrait)."""
    folder = CACHE / f"jpegs_{IMAGENET_LIKE_SIZE[1]}x{IMAGENET_LIKE_SIZE[0]}_q90"
    files = tuple(write_jpegs(folder, NUM_IMAGES, jitter=0.15, seed=0, portrait_every=4))
    labels = np.arange(NUM_IMAGES, dtype=np.int64) % 100
    split = Split("train", labels, files=files)
    return DatasetSplits("bench-jpegs", tuple(f"c{i}" for i in range(100)), None, None, {"train": split, "val": split})


def run_epoch(loader) -> int:
    """Consume one epoch; returns images delivered (synchronising the GPU so queued work is counted)."""
    count = 0
    for images, _ in loader:
        count += images.shape[0]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return count


def loader_for(dataset, backend: str, mode: str, device: str):
    return make_loader(
        dataset, "train" if mode == "train" else "val", backend=backend, train=mode == "train", batch_size=BATCH,
        image_size=IMAGE_SIZE, workers=WORKERS, device=device, seed=0,
    )


@pytest.fixture(scope="module")
def dataset() -> DatasetSplits:
    return bench_dataset()


@pytest.fixture(scope="module", autouse=True)
def report_ratios():
    yield
    print(f"\npipelines: {NUM_IMAGES} JPEGs ≈{IMAGENET_LIKE_SIZE[1]}×{IMAGENET_LIKE_SIZE[0]} → {IMAGE_SIZE} px, "
          f"batch {BATCH}, {WORKERS} workers/threads")
    for (backend, mode, device), rate in sorted(_measured.items()):
        ref = _measured.get(("torch", mode, device))
        ratio = f"  {rate / ref:.2f}× torch" if backend == "dali" and ref else ""
        print(f"  {device:4s} {mode:5s} {backend:5s} {rate:8.1f} images/s{ratio}")


def _bench(benchmark, dataset, backend, mode, device):
    loader = loader_for(dataset, backend, mode, device)
    run_epoch(loader)  # warm-up: imports, first pipeline build, page cache
    images = benchmark.pedantic(run_epoch, args=(loader,), rounds=ROUNDS, iterations=1)
    rate = images / benchmark.stats.stats.mean
    _measured[(backend, mode, device)] = rate
    benchmark.extra_info["images_per_second"] = round(rate, 1)
    reference = _measured.get(("torch", mode, device))
    if backend == "dali" and reference:
        benchmark.extra_info["speedup_vs_torch"] = round(rate / reference, 2)


# The torch case of each (mode, device) runs first (definition order), so the DALI case can report its ratio.
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_pipeline_throughput_cpu(benchmark, dataset, backend, mode):
    _bench(benchmark, dataset, backend, mode, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_pipeline_throughput_gpu(benchmark, dataset, backend, mode):
    _bench(benchmark, dataset, backend, mode, "cuda")


def main() -> None:
    """Plain timing loop without pytest-benchmark: best of ROUNDS epochs per case."""
    dataset = bench_dataset()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"{NUM_IMAGES} JPEGs → {IMAGE_SIZE} px, batch {BATCH}, {WORKERS} workers/threads")
    for device in devices:
        for mode in ("train", "eval"):
            rates = {}
            for backend in ("torch", "dali"):
                loader = loader_for(dataset, backend, mode, device)
                run_epoch(loader)
                best = float("inf")
                for _ in range(ROUNDS):
                    start = time.perf_counter()
                    images = run_epoch(loader)
                    best = min(best, time.perf_counter() - start)
                rates[backend] = images / best
            print(f"  {device:4s} {mode:5s} torch {rates['torch']:8.1f}  dali {rates['dali']:8.1f} images/s  "
                  f"→ {rates['dali'] / rates['torch']:.2f}×")


if __name__ == "__main__":
    main()
