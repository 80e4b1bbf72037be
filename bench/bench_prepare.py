"""``haf prepare`` throughput: batched ffmpeg against the Pillow reference path, same images, same worker count.

Run: ``pytest bench/bench_prepare.py`` (under a minute on 2 CPU cores). Each case resizes the same photo-sized
JPEGs (shorter side 256, the field's preparation for 224-px crops) into a fresh destination per round and records
``images_per_second`` in its extra_info; ``ffmpeg`` cases also record ``speedup_vs_pillow``. The one-image-per-
process case shows what batching buys (each ffmpeg process costs ~80 ms to start).

Environment knobs: ``HAF_BENCH_PREPARE_IMAGES`` (default 64), ``HAF_BENCH_PREPARE_WORKERS`` (default: usable
CPUs), ``HAF_BENCH_PREPARE_SIZE`` (source W×H, default 800x600, about an FGVC-Aircraft / iNat photo).
"""
from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from haf.pipelines.prepare import ResizeSpec, default_workers, prepare_images

NUM_IMAGES = int(os.environ.get("HAF_BENCH_PREPARE_IMAGES", "64"))
WORKERS = int(os.environ.get("HAF_BENCH_PREPARE_WORKERS", str(default_workers())))
SOURCE_SIZE = tuple(int(v) for v in os.environ.get("HAF_BENCH_PREPARE_SIZE", "800x600").split("x"))
SPEC = ResizeSpec(shorter_side=256)
ROUNDS = 3

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg program")

_measured: dict[str, float] = {}


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory) -> Path:
    """Photo-like JPEGs (smooth structure + sensor noise, quality 90) in a class-folder tree."""
    root = tmp_path_factory.mktemp("prepare_src")
    rng = np.random.default_rng(0)
    width, height = SOURCE_SIZE
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) / max(width, height)
    for i in range(NUM_IMAGES):
        phase = rng.uniform(0, 2 * np.pi, size=3)
        freq = rng.uniform(2, 8, size=3)
        base = np.stack([127 + 90 * np.sin(freq[c] * (x + y * (c + 1)) + phase[c]) for c in range(3)], -1)
        pixels = np.clip(base + rng.normal(0, 8, size=base.shape), 0, 255).astype(np.uint8)
        folder = root / "train" / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module", autouse=True)
def report_ratios():
    yield
    if "pillow" in _measured:
        print(f"\nprepare: {NUM_IMAGES} images {SOURCE_SIZE[0]}x{SOURCE_SIZE[1]} → shorter side 256, "
              f"{WORKERS} workers")
        for name, ips in _measured.items():
            print(f"  {name:>24}: {ips:7.1f} images/s  ({ips / _measured['pillow']:.2f}× Pillow)")


def _run(benchmark, source_tree: Path, tmp_path: Path, name: str, **kwargs) -> None:
    counter = itertools.count()

    def fresh_destination():
        return (source_tree, tmp_path / f"dst{next(counter)}", SPEC), {"workers": WORKERS, "progress": False,
                                                                       **kwargs}

    report = benchmark.pedantic(prepare_images, setup=fresh_destination, rounds=ROUNDS, iterations=1)
    assert report.done == NUM_IMAGES and not report.failed  # every round really resized every image
    ips = NUM_IMAGES / benchmark.stats.stats.median
    _measured[name] = ips
    benchmark.extra_info["images_per_second"] = round(ips, 1)
    if "pillow" in _measured and name != "pillow":
        benchmark.extra_info["speedup_vs_pillow"] = round(ips / _measured["pillow"], 3)


def test_pillow_reference(benchmark, source_tree, tmp_path):
    benchmark.group = "prepare"
    _run(benchmark, source_tree, tmp_path, "pillow", backend="pillow", batch_size=16)


@pytest.mark.parametrize("batch_size", [1, 32])
def test_ffmpeg(benchmark, source_tree, tmp_path, batch_size):
    benchmark.group = "prepare"
    _run(benchmark, source_tree, tmp_path, f"ffmpeg batch {batch_size}", backend="ffmpeg", batch_size=batch_size)
