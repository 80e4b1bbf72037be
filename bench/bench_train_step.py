"""Training step of ResNet-50 + type-II head + HAFrame: images/s with the fused loss vs the reference loss, and the
loss's share of the step (targets: docs/METHOD.md §11).

One step is what ``haf/train.py`` does per batch: forward, the HAFrame loss, backward, SGD step over the
reference's parameter groups, the frame a fixed buffer. Paths: ``fused`` (``backend="triton"``) and ``reference``
(``backend="reference"``). Measured: step time (best round), images/s, and the loss alone on the step's feature
shape, whose ratio to the step is its share.

GPU: bf16 autocast, channels-last, 224 px, batch 256, K = 1010, images synthesised on the device. CPU (report
only): fp32, a tiny batch, the reference loss only. ``HAF_BENCH_TRAIN_BATCH``, ``HAF_BENCH_TRAIN_SIZE``,
``HAF_BENCH_TRAIN_K``, ``HAF_BENCH_TRAIN_ROUNDS`` override the defaults. Run: ``pytest bench/bench_train_step.py -s``.
"""
from __future__ import annotations

import contextlib
import os
import time

import numpy as np
import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
BATCH = int(os.environ.get("HAF_BENCH_TRAIN_BATCH", "256" if HAS_CUDA else "4"))
IMAGE_SIZE = int(os.environ.get("HAF_BENCH_TRAIN_SIZE", "224" if HAS_CUDA else "96"))
NUM_CLASSES = int(os.environ.get("HAF_BENCH_TRAIN_K", "1010"))
ROUNDS = int(os.environ.get("HAF_BENCH_TRAIN_ROUNDS", "20" if HAS_CUDA else "3"))
WARMUP_STEPS = 5 if HAS_CUDA else 1  # cuDNN autotuning and Triton compilation happen in the first steps
GAMMA, ALPHA = 5.0, 0.4  # iNat2019's γ and α (the values do not change the work)
PATHS = ("fused", "reference") if HAS_CUDA else ("reference",)

RESULTS: dict[str, dict[str, float]] = {}


def synthetic_distances(num_classes: int, levels: int = 7, seed: int = 0) -> np.ndarray:
    """A ``levels``-deep tree over ``num_classes`` leaves with random uneven groups; d = levels − shared depth."""
    rng = np.random.default_rng(seed)
    cuts: set[int] = set()
    shared = np.zeros((num_classes, num_classes), dtype=np.int64)
    same = np.ones((num_classes, num_classes), dtype=bool)
    for level in range(levels):
        count = int(round(num_classes ** ((level + 1) / levels)))
        cuts |= set(rng.choice(np.arange(1, num_classes), size=max(count - 1, 0), replace=False).tolist())
        boundary = np.zeros(num_classes, dtype=np.int64)
        boundary[sorted(cuts)] = 1
        labels = np.cumsum(boundary)
        same &= labels[:, None] == labels[None, :]
        shared += same
    return levels - shared


@pytest.fixture(scope="module")
def model_and_optimizer():
    from haf.models.classifier import build_classifier
    from haf.methods import MethodContext
    from haf.training.optimization import build_optimizer
    from haf.training.schema import OptimConfig

    torch.manual_seed(0)
    distances = synthetic_distances(NUM_CLASSES)
    context = MethodContext(classes=tuple(f"c{i}" for i in range(NUM_CLASSES)), distances=distances, seed=0)
    model = build_classifier(backbone="resnet50", head="type2", method="haframe", context=context,
                             method_options={"gamma": GAMMA, "alpha": ALPHA})
    model = model.to(DEVICE)
    if HAS_CUDA:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, OptimConfig())
    return model, optimizer


def _autocast():
    if HAS_CUDA:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _batch():
    generator = torch.Generator(device=DEVICE).manual_seed(1)
    images = torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, device=DEVICE, generator=generator)
    if HAS_CUDA:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, NUM_CLASSES, (BATCH,), device=DEVICE, generator=generator)
    return images, targets


def _sync() -> None:
    if HAS_CUDA:
        torch.cuda.synchronize()


def _time_best(fn, rounds: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("path", PATHS)
def test_train_step(benchmark, model_and_optimizer, path):
    model, optimizer = model_and_optimizer
    backend = "triton" if path == "fused" else "reference"
    model.method.loss_backend = backend
    images, targets = _batch()
    model.train()

    def step() -> None:
        with _autocast():
            loss = model.loss(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed_step() -> None:
        step()
        _sync()

    for _ in range(WARMUP_STEPS):
        step()
    _sync()
    benchmark.group = f"train-step resnet50 B={BATCH} {IMAGE_SIZE}px K={NUM_CLASSES}"
    benchmark.pedantic(timed_step, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    step_seconds = benchmark.stats.stats.min

    # The loss alone on this step's feature shape and dtype: forward + backward w.r.t. h.
    with torch.no_grad(), _autocast():
        features = model.features(images[: min(BATCH, 64)])
    dtype = features.dtype
    from haf.kernels import frame_loss

    h = torch.randn(BATCH, NUM_CLASSES, device=DEVICE, dtype=dtype, requires_grad=True)
    frame, similarity = model.method.frame, model.method.similarity

    def loss_only() -> None:
        frame_loss(h, frame, targets, similarity, alpha=ALPHA, backend=backend).backward()
        h.grad = None

    loss_seconds = _time_best(loss_only, rounds=max(ROUNDS, 10), warmup=3)
    record = {"step_ms": 1e3 * step_seconds, "images_per_s": BATCH / step_seconds, "loss_ms": 1e3 * loss_seconds,
              "loss_share_percent": 100.0 * loss_seconds / step_seconds}
    RESULTS[path] = record
    benchmark.extra_info.update(record)
    benchmark.extra_info.update({"device": torch.cuda.get_device_name() if HAS_CUDA else "cpu",
                                 "precision": "bf16-autocast, channels-last" if HAS_CUDA else "fp32",
                                 "feature_dtype": str(dtype)})
    print(f"\n{path}: {record['images_per_s']:.0f} images/s, step {record['step_ms']:.2f} ms, loss "
          f"{record['loss_ms']:.3f} ms = {record['loss_share_percent']:.2f}% of the step")
    assert np.isfinite(record["images_per_s"])


def test_summary():
    """Print the comparison (runs last in this file); ratios, never assertions on time."""
    if not RESULTS:
        pytest.skip("no step was measured")
    device = torch.cuda.get_device_name() if HAS_CUDA else "cpu (report only: reference loss, tiny batch)"
    lines = [f"ResNet-50 + type-II head + HAFrame training step, B={BATCH}, {IMAGE_SIZE}px, K={NUM_CLASSES}, "
             f"{device}:"]
    for path, record in RESULTS.items():
        lines.append(f"  {path:9s} {record['images_per_s']:8.0f} images/s   step {record['step_ms']:8.2f} ms   "
                     f"loss {record['loss_ms']:7.3f} ms ({record['loss_share_percent']:.2f}% of the step)")
    if "fused" in RESULTS and "reference" in RESULTS:
        speedup = RESULTS["reference"]["step_ms"] / RESULTS["fused"]["step_ms"]
        loss_speedup = RESULTS["reference"]["loss_ms"] / RESULTS["fused"]["loss_ms"]
        lines.append(f"  step speed-up fused/reference: {speedup:.3f}x; loss alone: {loss_speedup:.2f}x; "
                     f"target >= 3000 images/s with the loss < 1% of the step on one H100")
    print("\n" + "\n".join(lines))
