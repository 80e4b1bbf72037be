"""Rendering the demo dataset: one seeded numpy image per (seed, split, class, index), no resampling library.

Every image is a patterned shape (the class's attributes, ``demo_spec``) on a coloured background. Nuisance factors
make a network err: random position, scale and rotation of the object, hue and brightness jitter, a per-channel
colour cast (white balance, so families occasionally blur into each other), a brightness gradient on the
background, clutter blobs of *any* family's colour and pixel noise (JPEG compression is added when written).

Determinism: image ``i`` of class ``k`` in split ``s`` is drawn from ``numpy.random.default_rng([seed, s, k, i])``
(:func:`image_rng`), so a seed gives the same pixels on every machine and the same bytes for the same
Pillow/libjpeg build.
"""
from __future__ import annotations

import colorsys
import math
from typing import Iterator

import numpy as np

from haf.pipelines.demo.spec import PATTERNS, SHAPES, SPLITS, DemoClass, DemoSpec, demo_classes

# Bump when the rendering changes: a cached dataset of another version is regenerated, never silently reused.
GENERATOR_VERSION = 2
SUPERSAMPLE = 2  # render at 2× and box-filter down: anti-aliased edges without a resampling library


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)), dtype=np.float64)


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a unit-sized shape in object coordinates (u, v), roughly filling the unit disk."""
    r = np.hypot(u, v)
    if shape == "disk":
        return r <= 1.0
    if shape == "ring":  # hole radius 0.5: thick enough to carry stripes at 32 px
        return (r <= 1.0) & (r >= 0.5)
    if shape in ("triangle", "square"):
        n = 3 if shape == "triangle" else 4
        # Regular n-gon of circumradius 1: inside iff the projection on every edge normal ≤ the apothem cos(π/n).
        phi = np.arctan2(v, u)
        sector = np.mod(phi, 2 * math.pi / n) - math.pi / n
        return r * np.cos(sector) <= math.cos(math.pi / n)
    if shape == "cross":
        return ((np.abs(u) <= 0.34) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.34) & (np.abs(u) <= 1.0))
    if shape == "bar":  # 2.6:1 rectangle
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.38)
    raise ValueError(f"demo dataset: unknown shape {shape!r}; known: {SHAPES}")


def _pattern(pattern: str, x: np.ndarray, y: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean light/dark cells of a fill pattern at a random angle and phase; periods in output pixels."""
    angle = rng.uniform(0.0, math.pi)
    a = x * math.cos(angle) + y * math.sin(angle)
    b = -x * math.sin(angle) + y * math.cos(angle)
    px = 2.0 / size  # one output pixel in [-1, 1] units
    if pattern == "stripes":
        return np.mod(a / (rng.uniform(6.5, 8.0) * px) + rng.uniform(0.0, 1.0), 1.0) < 0.5
    if pattern == "checks":
        period = rng.uniform(11.0, 13.0) * px
        return (np.floor(a / period * 2 + rng.uniform(0, 2)) + np.floor(b / period * 2 + rng.uniform(0, 2))) % 2 == 0
    if pattern == "dots":
        period = rng.uniform(6.5, 8.0) * px
        du = np.mod(a / period + rng.uniform(0.0, 1.0), 1.0) - 0.5
        dv = np.mod(b / period + rng.uniform(0.0, 1.0), 1.0) - 0.5
        return du**2 + dv**2 <= 0.32**2  # light dots of radius 0.32 period on a near-black ground
    if pattern == "solid":
        return np.ones_like(x, dtype=bool)
    raise ValueError(f"demo dataset: unknown pattern {pattern!r}; known: {PATTERNS}")


def _second_tone(pattern: str, hue: float, rng: np.random.Generator) -> np.ndarray:
    if pattern == "checks":  # near-white
        return _hsv(hue, rng.uniform(0.05, 0.25), rng.uniform(0.9, 1.0))
    if pattern == "dots":  # near-black
        return _hsv(hue, rng.uniform(0.3, 0.8), rng.uniform(0.08, 0.25))
    return _hsv(hue, rng.uniform(0.7, 1.0), rng.uniform(0.25, 0.45))  # stripes (solid never shows it): dark shade


def render_image(leaf: DemoClass, spec: DemoSpec, rng: np.random.Generator) -> np.ndarray:
    """One H×W×3 uint8 image of ``leaf``. Every random draw comes from ``rng`` in a fixed order."""
    size = spec.image_size
    n = size * SUPERSAMPLE
    # Pixel-centre coordinates in [-1, 1] on the supersampled grid (y down, as images are stored).
    axis = (np.arange(n, dtype=np.float64) + 0.5) / n * 2.0 - 1.0
    y, x = np.meshgrid(axis, axis, indexing="ij")

    # Background: the family hue, desaturated, with a linear brightness gradient in a random direction.
    bg_hue = leaf.hue + rng.uniform(-spec.hue_jitter, spec.hue_jitter)
    background = _hsv(bg_hue, rng.uniform(0.35, 0.65), rng.uniform(0.45, 0.75))
    grad_angle = rng.uniform(0.0, 2.0 * math.pi)
    grad = rng.uniform(0.0, 0.25) * (x * math.cos(grad_angle) + y * math.sin(grad_angle))
    image = background[None, None, :] * (1.0 + grad[..., None])

    # Clutter: small blobs of a random family's hue, drawn under the object, so colour alone is not a giveaway.
    for _ in range(int(rng.integers(0, spec.clutter_max + 1))):
        clutter_hue = rng.integers(0, spec.colours) / spec.colours + rng.uniform(-spec.hue_jitter, spec.hue_jitter)
        cx, cy, radius = rng.uniform(-0.9, 0.9), rng.uniform(-0.9, 0.9), rng.uniform(0.08, 0.2)
        blob = (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
        image[blob] = _hsv(clutter_hue, rng.uniform(0.5, 0.9), rng.uniform(0.4, 0.9))

    # Object: shape at random scale, rotation and position (kept mostly inside the frame).
    scale = rng.uniform(0.5, 0.85)  # circumradius as a fraction of the half-width
    rotation = rng.uniform(0.0, 2.0 * math.pi)
    limit = max(0.0, 0.95 - scale)
    cx, cy = rng.uniform(-limit, limit), rng.uniform(-limit, limit)
    cos_r, sin_r = math.cos(rotation), math.sin(rotation)
    u = ((x - cx) * cos_r + (y - cy) * sin_r) / scale
    v = (-(x - cx) * sin_r + (y - cy) * cos_r) / scale
    mask = _shape_mask(leaf.shape, u, v)

    # Fill pattern (the level-2 attribute), in image coordinates at a random angle.
    cells = _pattern(leaf.pattern, x, y, size, rng)
    obj_hue = leaf.hue + rng.uniform(-spec.hue_jitter, spec.hue_jitter)
    light = _hsv(obj_hue, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
    # The pattern's second tone is part of the level-2 attribute: structure alone (stripes vs checks at a random
    # angle) is hard for a tiny CNN whose pooled features keep tone statistics better than layout.
    dark = _second_tone(leaf.pattern, obj_hue, rng)
    image[mask] = np.where(cells[mask][:, None], light, dark)

    # Box-filter down to the output size, then pixel noise of a random strength.
    image = image.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    image = image * rng.uniform(1.0 - spec.colour_cast, 1.0 + spec.colour_cast, size=3)
    image = image + rng.normal(0.0, rng.uniform(0.3, 1.0) * spec.noise_std, size=image.shape)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def image_rng(seed: int, split: str, class_index: int, image_index: int) -> np.random.Generator:
    """The generator of one image: independent of generation order, so any subset can be regenerated alone."""
    return np.random.default_rng([seed, SPLITS.index(split), class_index, image_index])


def iter_images(spec: DemoSpec, seed: int, split: str) -> Iterator[tuple[DemoClass, int, np.ndarray]]:
    """(class, image index, H×W×3 uint8) for every image of ``split``, in class order."""
    for class_index, leaf in enumerate(demo_classes(spec)):
        for image_index in range(spec.per_class(split)):
            yield leaf, image_index, render_image(leaf, spec, image_rng(seed, split, class_index, image_index))
