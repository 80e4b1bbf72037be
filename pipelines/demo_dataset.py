"""The embedded demo dataset: a seeded, generated hierarchical image dataset that trains on a CPU in minutes.

Every image is a patterned shape on a coloured background. The three levels of the class tree are three visual
attributes, ordered from the one a small CNN reads most easily to the one it reads least easily, so that visual
similarity follows the tree and the network's mistakes are structured (mostly between siblings):

    level 1 (coarse)  colour family of background and object, e.g. ``red``
    level 2 (mid)     fill pattern of the object (stripes, checks, dots, solid) with its second tone (dark shade,
                      near-white, near-black), e.g. ``red-stripes``
    level 3 (leaf)    shape of the object (disk, triangle, square, ring, cross, bar), e.g. ``red-stripes-disk``

Siblings (distance 1) share colour and pattern and differ only in shape; cousins (distance 2) share colour only;
leaves of different families (distance 3) share nothing. (Shape is the leaf attribute because CNNs read texture
before shape: with shape at level 2 a small CNN confused cousins more than siblings.) Nuisance factors make the
network err: random position, scale and rotation of the object, hue and brightness jitter, a per-channel colour cast
(white balance, so families occasionally blur into each other), a brightness gradient on the background, clutter
blobs of *any* family's colour, pixel noise and JPEG compression.

Calibration (the defaults; a 3-layer width-16 CNN, CE, SGD, 12 epochs on the 2,160 training images): about 40% test
top-1, and the mistakes are structured — roughly 80% siblings, 13% cousins, 6% other families (severity ≈ 1.25).

Layout written (an image folder plus our hierarchy file, readable by the ``image-folder`` and ``demo`` readers)::

    <root>/{train,val,test}/<leaf class>/<leaf class>_<index>.jpg
    <root>/hierarchy.json          haf.hierarchy JSON (root ``demo`` → colour → pattern → shape)
    <root>/demo_manifest.json      generator version, seed, spec and image counts; written last

Where: ``haf demo-data ROOT`` (or :func:`ensure_demo_dataset`) writes it anywhere; the ``demo`` reader generates
it by itself only at its cache location ``.cache/demo-data`` and refuses any other missing folder.

Determinism: image ``i`` of class ``k`` in split ``s`` is drawn from ``numpy.random.default_rng([seed, s, k, i])``,
so a seed gives the same pixels on every machine and the same bytes for the same Pillow/libjpeg build.
"""
from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from haf.safe_files import naming

# Bump when the rendering changes: a cached dataset of another version is regenerated, never silently reused.
GENERATOR_VERSION = 2
MANIFEST_NAME = "demo_manifest.json"
HIERARCHY_NAME = "hierarchy.json"
ROOT_NAME = "demo"
SPLITS = ("train", "val", "test")
# The cache location (relative to the working directory; the configs' default dataset.root): the one place the
# demo reader generates the dataset by itself. Anywhere else it is made by `haf demo-data ROOT` only.
DEFAULT_ROOT = ".cache/demo-data"
# DemoSpec fields that `haf demo-data` takes as options (--image-size, ...).
_CLI_SPEC_FIELDS = ("colours", "patterns", "shapes", "image_size", "train_per_class", "val_per_class",
                    "test_per_class", "jpeg_quality")

# Named hues (degrees) used to name colour families; the family hues themselves are evenly spaced around the wheel.
_HUE_NAMES = (
    (0, "red"), (30, "orange"), (60, "yellow"), (90, "lime"), (120, "green"), (150, "spring"), (180, "cyan"),
    (210, "azure"), (240, "blue"), (270, "violet"), (300, "magenta"), (330, "rose"),
)
# Level-2 patterns. Family c uses patterns c, c+1, ... (mod 4), so a pattern recurs across families.
PATTERNS = ("stripes", "checks", "dots", "solid")
# Level-3 shapes, told apart under any rotation (no square/diamond pair). Pattern node g uses shapes g, g+1, ...
# (mod 6), so sibling sets differ between nodes and a shape alone never identifies a class.
SHAPES = ("disk", "triangle", "square", "ring", "cross", "bar")
SUPERSAMPLE = 2  # render at 2× and box-filter down: anti-aliased edges without a resampling library


@dataclass(frozen=True)
class DemoSpec:
    """What to generate. The defaults give K = 36 classes (HierDist@20 needs K ≥ 20), 3,240 images of 32×32 px."""

    colours: int = 4  # level-1 nodes
    patterns: int = 3  # level-2 nodes per colour (≤ len(PATTERNS))
    shapes: int = 3  # leaves per pattern (≤ len(SHAPES))
    image_size: int = 32
    train_per_class: int = 60
    val_per_class: int = 10
    test_per_class: int = 20
    jpeg_quality: int = 90
    # Nuisance strengths: the demo must be learnable in a few CPU minutes yet leave a small CNN making mistakes.
    hue_jitter: float = 0.1  # ± fraction of the hue circle; families are 1/colours apart
    colour_cast: float = 0.25  # ± per-channel gain (white balance): shifts hues, so families occasionally blur
    noise_std: float = 0.07  # upper bound of the per-image Gaussian noise σ, intensities in [0, 1]
    clutter_max: int = 2  # up to this many distractor blobs in a random family's colour

    def __post_init__(self) -> None:
        for name in ("colours", "patterns", "shapes", "image_size", "train_per_class", "jpeg_quality"):
            if getattr(self, name) < 1:
                raise ValueError(f"demo dataset: {name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("val_per_class", "test_per_class", "clutter_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"demo dataset: {name} must be ≥ 0, got {getattr(self, name)}")
        if self.colours > len(_HUE_NAMES):
            raise ValueError(f"demo dataset: colours must be ≤ {len(_HUE_NAMES)}, got {self.colours}")
        if self.patterns > len(PATTERNS):
            raise ValueError(f"demo dataset: patterns must be ≤ {len(PATTERNS)}, got {self.patterns}")
        if self.shapes > len(SHAPES):
            raise ValueError(f"demo dataset: shapes must be ≤ {len(SHAPES)}, got {self.shapes}")
        if self.image_size < 16:
            raise ValueError(f"demo dataset: image_size must be ≥ 16 px to show stripes, got {self.image_size}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"demo dataset: jpeg_quality must be in 1..100, got {self.jpeg_quality}")

    @property
    def num_classes(self) -> int:
        return self.colours * self.patterns * self.shapes

    def per_class(self, split: str) -> int:
        return {"train": self.train_per_class, "val": self.val_per_class, "test": self.test_per_class}[split]


@dataclass(frozen=True)
class DemoClass:
    """One leaf class and the attributes that define it."""

    name: str  # "<colour>-<pattern>-<shape>"
    colour: str  # level-1 node
    pattern_node: str  # level-2 node, "<colour>-<pattern>"
    hue: float  # family hue in [0, 1)
    pattern: str
    shape: str


def demo_classes(spec: DemoSpec) -> list[DemoClass]:
    """The leaf classes in class order (sorted names), with their attributes."""
    leaves = []
    for c in range(spec.colours):
        hue = c / spec.colours
        colour = _hue_name(hue * 360.0)
        for p in range(spec.patterns):
            pattern = PATTERNS[(c + p) % len(PATTERNS)]
            node = c * spec.patterns + p
            for o in range(spec.shapes):
                shape = SHAPES[(node + o) % len(SHAPES)]
                node_name = f"{colour}-{pattern}"
                leaves.append(DemoClass(f"{node_name}-{shape}", colour, node_name, hue, pattern, shape))
    return sorted(leaves, key=lambda leaf: leaf.name)


def demo_edges(spec: DemoSpec) -> list[tuple[str, str]]:
    """Parent → child edges of the demo tree (root ``demo``, height 3)."""
    edges: dict[tuple[str, str], None] = {}
    for leaf in demo_classes(spec):
        edges[(ROOT_NAME, leaf.colour)] = None
        edges[(leaf.colour, leaf.pattern_node)] = None
        edges[(leaf.pattern_node, leaf.name)] = None
    return list(edges)


def _hue_name(degrees: float) -> str:
    return min(_HUE_NAMES, key=lambda item: abs(((degrees - item[0]) + 180.0) % 360.0 - 180.0))[1]


# ----------------------------------------------------------------------------------------------------------------
# Rendering (numpy only; all randomness from the one generator passed in)
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# Writing, caching
# ----------------------------------------------------------------------------------------------------------------


def _manifest(spec: DemoSpec, seed: int) -> dict:
    return {
        "generator": "haf.pipelines.demo_dataset",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "spec": asdict(spec),
        "num_classes": spec.num_classes,
        "counts": {split: spec.per_class(split) * spec.num_classes for split in SPLITS},
    }


def write_demo_dataset(out_dir: str | os.PathLike, spec: DemoSpec, seed: int = 0, progress: bool = False) -> Path:
    """Write the dataset into ``out_dir`` (created; must not exist or be empty). Not atomic: see ensure_demo_dataset."""
    from PIL import Image

    from haf.hierarchy import Hierarchy

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"demo dataset: output folder {out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    classes = demo_classes(spec)
    total = sum(spec.per_class(split) for split in SPLITS) * len(classes)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="demo dataset", unit="img")
    for split in SPLITS:
        for leaf in classes:
            (out / split / leaf.name).mkdir(parents=True, exist_ok=True)
        for leaf, index, pixels in iter_images(spec, seed, split):
            # Fixed encoder settings (no optimize pass, 4:2:0) so a seed always gives the same bytes.
            Image.fromarray(pixels, mode="RGB").save(
                out / split / leaf.name / f"{leaf.name}_{index:04d}.jpg",
                format="JPEG", quality=spec.jpeg_quality, subsampling=2, optimize=False,
            )
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    hierarchy = Hierarchy.from_edges(demo_edges(spec), classes=[leaf.name for leaf in classes])
    hierarchy.to_json(out / HIERARCHY_NAME)
    # The manifest goes last: its presence says the folder is complete.
    (out / MANIFEST_NAME).write_text(json.dumps(_manifest(spec, seed), indent=2, sort_keys=True) + "\n")
    return out


def read_manifest(root: str | os.PathLike) -> dict | None:
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(root: str | os.PathLike, spec: DemoSpec, seed: int) -> bool:
    """True when ``root`` holds exactly this spec and seed: manifest matches and every image file is present."""
    root = Path(root)
    if read_manifest(root) != _manifest(spec, seed) or not (root / HIERARCHY_NAME).is_file():
        return False
    for split in SPLITS:
        for leaf in demo_classes(spec):
            folder = root / split / leaf.name
            if not folder.is_dir() or sum(1 for _ in folder.glob("*.jpg")) != spec.per_class(split):
                return False
    return True


def _looks_like_demo(root: Path) -> bool:
    """Only folders made of our own entries may be replaced; anything else is a user's data and is left alone."""
    allowed = set(SPLITS) | {HIERARCHY_NAME, MANIFEST_NAME}
    return all(entry.name in allowed for entry in root.iterdir())


def ensure_demo_dataset(
    root: str | os.PathLike, seed: int = 0, spec: DemoSpec | None = None, progress: bool = False, **spec_options
) -> Path:
    """Return ``root`` holding the demo dataset for ``seed``/``spec``, generating it first if missing or incomplete.

    Generation writes a temporary sibling folder and renames it into place, so a reader never sees half a dataset
    and concurrent callers (e.g. several ranks) all end with the same complete folder. A complete dataset of another
    seed or spec at ``root`` is an error (never silently overwritten); so is a non-demo folder.
    """
    if spec is None:
        spec = DemoSpec(**spec_options)
    elif spec_options:
        raise ValueError(f"demo dataset: pass either spec or spec options, not both ({sorted(spec_options)})")
    root = Path(root).expanduser().absolute()
    if is_complete(root, spec, seed):
        return root
    if root.exists():
        existing = read_manifest(root)
        if existing is not None and existing.get("version") == GENERATOR_VERSION and existing != _manifest(spec, seed):
            wanted = _manifest(spec, seed)
            diff = sorted(
                [k for k in ("seed",) if existing.get(k) != wanted[k]]
                + [f"spec.{k}" for k in wanted["spec"] if existing.get("spec", {}).get(k) != wanted["spec"][k]]
            )
            raise ValueError(
                f"demo dataset: {root} holds another demo dataset (differs in {', '.join(diff) or 'manifest'}); "
                "choose another folder or delete it"
            )
        if not root.is_dir() or not _looks_like_demo(root):
            raise ValueError(f"demo dataset: {root} exists and is not a demo dataset; refusing to overwrite it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with naming(root):  # a full disk while writing images: the error names the dataset folder
            write_demo_dataset(tmp, spec, seed, progress=progress)
        if root.exists() and not is_complete(root, spec, seed):
            # A stale or partial demo folder (checked above): move it aside first, rename is not allowed onto it.
            stale = root.parent / f".{root.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(root, stale)
                shutil.rmtree(stale, ignore_errors=True)
            except FileNotFoundError:
                pass
        try:
            os.rename(tmp, root)
        except OSError:
            # Another process renamed its copy first; theirs is identical if complete.
            if not is_complete(root, spec, seed):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def is_default_root(root: str | os.PathLike) -> bool:
    """Is ``root`` the demo dataset's cache location (``DEFAULT_ROOT`` below the working directory)?"""
    return os.path.realpath(root) == os.path.realpath(DEFAULT_ROOT)


def demo_data_command(root: str | os.PathLike, seed: int, spec: DemoSpec) -> str:
    """The ``haf demo-data`` command line that generates exactly this dataset at ``root``."""
    default = DemoSpec()
    flags = [f"--{name.replace('_', '-')} {getattr(spec, name)}" for name in _CLI_SPEC_FIELDS
             if getattr(spec, name) != getattr(default, name)]
    return " ".join(["haf demo-data", str(root), f"--seed {seed}", *flags])


def read_demo(
    root: str | os.PathLike,
    seed: int = 0,
    generate: bool = True,
    convention: str = "lca-height",
    splits: tuple[str, ...] | None = None,
    **spec_options,
):
    """Reader kind ``demo``: the demo dataset at ``root``.

    A missing or incomplete dataset is generated only at the default cache location ``DEFAULT_ROOT`` (and only
    with ``generate``); anywhere else it is an error naming the folder and the ``haf demo-data`` command that
    makes it, so a mistyped ``dataset.root`` (or a checkpoint's stale one) never creates a dataset.
    ``spec_options`` are :class:`DemoSpec` fields (colours, patterns, shapes, image_size, train_per_class, ...).
    Returns a :class:`~haf.pipelines.splits.DatasetSplits` read like any image folder with its hierarchy.json.
    """
    from .image_folder_reader import read_image_folder

    spec = DemoSpec(**spec_options)
    if not is_complete(root, spec, seed):
        if generate and is_default_root(root):
            root = ensure_demo_dataset(root, seed=seed, spec=spec)
        else:
            state = "does not exist" if not os.path.lexists(root) else "holds no complete demo dataset of this spec"
            where = "" if is_default_root(root) else f" (it is generated on first use only at {DEFAULT_ROOT})"
            raise FileNotFoundError(
                f"demo dataset: {root} {state}{where}; generate it with `{demo_data_command(root, seed, spec)}`"
            )
    root = Path(root)
    return read_image_folder(root, hierarchy=root / HIERARCHY_NAME, convention=convention, splits=splits, name="demo")
