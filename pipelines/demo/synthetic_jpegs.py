"""Generated JPEG files with photo-like statistics, for loader tests and the input-pipeline benchmark.

Each image is smooth colour structure (random low-resolution colours upsampled bicubically) plus mild pixel
noise, encoded at quality 90: files of roughly ImageNet's bytes-per-pixel, so decoding costs what it costs on
real data (pure noise would be ~3× larger and slower to decode; flat colour ~10× faster).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

# ImageNet's typical frame (the median training image is about 500 × 375 / 375 × 500).
IMAGENET_LIKE_SIZE = (375, 500)
JPEG_QUALITY = 90  # ImageNet JPEGs are mostly quality 90-96


def synthetic_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 H×W×3: bicubically upsampled random colours (structure) + Gaussian noise σ = 6 levels (texture)."""
    coarse = rng.integers(0, 256, size=(max(2, height // 24), max(2, width // 24), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
    noisy = smooth + rng.normal(0.0, 6.0, size=smooth.shape).astype(np.float32)
    return np.clip(noisy + 0.5, 0, 255).astype(np.uint8)


def write_jpegs(
    folder: str | os.PathLike,
    count: int,
    *,
    size: tuple[int, int] = IMAGENET_LIKE_SIZE,
    jitter: float = 0.0,
    seed: int = 0,
    portrait_every: int = 0,
) -> list[str]:
    """Write ``count`` JPEGs ``folder/img_00000.jpg ...`` (kept if already there) and return their paths.

    ``size`` is (height, width); ``jitter`` in [0, 1) varies each side uniformly by ±jitter; every
    ``portrait_every``-th image (0: none) is stored transposed, as ImageNet mixes landscape and portrait.
    Deterministic in ``seed``: a cache folder written once is reused by later runs.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        h = max(1, int(round(size[0] * (1 + jitter * rng.uniform(-1, 1)))))
        w = max(1, int(round(size[1] * (1 + jitter * rng.uniform(-1, 1)))))
        if portrait_every and i % portrait_every == portrait_every - 1:
            h, w = w, h
        path = folder / f"img_{i:05d}.jpg"
        image_rng = np.random.default_rng([seed, i])
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            Image.fromarray(synthetic_image(image_rng, h, w)).save(tmp, format="JPEG", quality=JPEG_QUALITY)
            os.replace(tmp, path)  # atomic: a killed run never leaves a half-written file in the cache
        paths.append(str(path))
    return paths
