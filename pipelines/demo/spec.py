"""The demo dataset's classes: a 3-level tree whose levels are three visual attributes of a generated image.

    level 1 (coarse)  colour family of background and object, e.g. ``red``
    level 2 (mid)     fill pattern of the object (stripes, checks, dots, solid) with its second tone (dark shade,
                      near-white, near-black), e.g. ``red-stripes``
    level 3 (leaf)    shape of the object (disk, triangle, square, ring, cross, bar), e.g. ``red-stripes-disk``

The attributes are ordered from the one a small CNN reads most easily to the one it reads least easily, so visual
similarity follows the tree: siblings (distance 1) share colour and pattern and differ only in shape; cousins
(distance 2) share colour only; leaves of different families (distance 3) share nothing. (Shape is the leaf
attribute because CNNs read texture before shape: with shape at level 2 a small CNN confused cousins more than
siblings.) The images themselves: ``demo_render``.
"""
from __future__ import annotations

from dataclasses import dataclass

ROOT_NAME = "demo"
SPLITS = ("train", "val", "test")
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


@dataclass(frozen=True)
class DemoSpec:
    """What to generate. The defaults give K = 36 classes (HierDist@20 needs K ≥ 20), 3,240 images of 32×32 px.

    Calibration of the defaults (a 3-layer width-16 CNN, CE, SGD, 12 epochs on the 2,160 training images): about 40%
    test top-1, and the mistakes are structured — roughly 80% siblings, 13% cousins, 6% other families
    (severity ≈ 1.25).
    """

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
