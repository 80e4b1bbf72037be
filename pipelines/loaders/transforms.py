"""The one definition of the input transforms, shared by the DALI pipelines and the reference DataLoader.

Both backends apply the same geometric steps to every sample — region → resize → crop → flip, written out on
:class:`SampleOps` — and then normalise, x ↦ (x / 255 − mean) / std per channel.

The *random* numbers behind the region and the flip are not drawn by either backend. :func:`batch_uniforms` draws
them from a generator seeded by ``(seed, epoch, rank, batch)``, and :func:`plan_sample` turns one row of them plus
the image's size into a :class:`SampleOps`, through the planner of the spec's named transform (:data:`TRANSFORMS`).
So for the same files, seed and epoch the two backends crop and flip the same pixels, a resumed run replays the
same augmentation, and DALI's own (per-pipeline-instance) random state is never used. (A run config may instead
name a list of torchvision transforms for its training split, torch backend only: :mod:`.augment_list`.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# ImageNet channel statistics (torchvision's pretrained weights were trained with these); tieredImageNet-H and
# the generic 224-px default use them. Per-dataset statistics of the reference recipes: docs/RECIPES.md.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# CIFAR-100 training-set per-channel mean/std (the generic small-image default; the paper config states its own).
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)


@dataclass(frozen=True)
class TransformOp:
    """One named transform: how it plans a sample, and what the DALI graph must do to execute the plan."""

    name: str
    train: bool  # a training (random) transform, or an evaluation (deterministic) one
    region_inside: bool  # the region never leaves the image (DALI may ROI-decode it)
    crop_may_pad: bool = False  # the post-resize crop may leave the resized image (zero padding there)
    reflect: bool = False  # the region's outside is the image's reflection (``SampleOps.reflect_pad``)


TRANSFORMS: dict[str, TransformOp] = {
    op.name: op
    for op in (
        # torchvision RandomResizedCrop(S) + flip (Inception recipe).
        TransformOp("random-resized-crop", train=True, region_inside=True),
        # RandomCrop(S, padding=p) on the native size, zero padding, 2p + 1 offsets per axis, + flip.
        TransformOp("pad-crop", train=True, region_inside=False),
        # Reflect-pad p, crop S at offsets 0 .. 2p - 1 per axis (of the padded image), + flip.
        TransformOp("reflect-pad-crop", train=True, region_inside=False, reflect=True),
        # Resize((S, S)) (a squash), then RandomCrop(S, padding=p) (zero padding, 2p + 1 offsets), + flip.
        TransformOp("squash-pad-crop", train=True, region_inside=True, crop_may_pad=True),
        # Resize(round(S / 0.875)) on the shorter side, then CenterCrop(S): the ImageNet convention.
        TransformOp("resize-center-crop", train=False, region_inside=True),
        # Resize((S, S)): the whole image squashed to S × S, nothing cut.
        TransformOp("squash", train=False, region_inside=True),
    )
}
TRAIN_TRANSFORMS = tuple(name for name, op in TRANSFORMS.items() if op.train)
EVAL_TRANSFORMS = tuple(name for name, op in TRANSFORMS.items() if not op.train)
# Named (train, eval) pairs with their normalisation, for callers that do not give transforms explicitly.
AUGMENTS: dict[str, tuple[str, str, tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ("random-resized-crop", "resize-center-crop", IMAGENET_MEAN, IMAGENET_STD),
    "cifar": ("pad-crop", "squash", CIFAR100_MEAN, CIFAR100_STD),
}

# torchvision's RandomResizedCrop makes 10 attempts before falling back to a centre crop; we do the same, so the
# number of uniforms per sample is fixed and the plan is a pure function of them.
RRC_ATTEMPTS = 10
_U_ATTEMPTS = slice(0, 2 * RRC_ATTEMPTS)  # (scale, log-ratio) per attempt
_U_TOP, _U_LEFT, _U_FLIP = 2 * RRC_ATTEMPTS, 2 * RRC_ATTEMPTS + 1, 2 * RRC_ATTEMPTS + 2
NUM_UNIFORMS = 2 * RRC_ATTEMPTS + 3


def check_transform(name: str, train: bool, key: str = "transform") -> str:
    """``name`` must be a registered transform of the right kind (train or eval); the error lists the choices."""
    choices = TRAIN_TRANSFORMS if train else EVAL_TRANSFORMS
    if name not in choices:
        raise ValueError(f"{key}={name!r}; expected one of {', '.join(choices)}")
    return name


def check_statistics(values, what: str) -> tuple[float, float, float]:
    """Three finite channel statistics (std: positive)."""
    values = tuple(float(v) for v in values)
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what}={values}; expected three finite numbers (R, G, B)")
    if what.endswith("std") and min(values) <= 0:
        raise ValueError(f"{what}={values}; every standard deviation must be > 0")
    return values


@dataclass(frozen=True)
class TransformSpec:
    """What a split's transform is: the named ``op`` (see :data:`TRANSFORMS`), output size and normalisation."""

    op: str
    train: bool
    image_size: int  # output side S (224 for ImageNet-style data, 32 for CIFAR)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Eval: resize the shorter side to S / 0.875 (256 for 224), then centre-crop S — the ImageNet convention.
    eval_crop_fraction: float = 0.875
    # Train RandomResizedCrop: area fraction and aspect-ratio range of torchvision's defaults (Inception recipe).
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    padding: int = 4  # padding of the random crops (WRN recipe, the reference's FGVC RandomCrop)
    flip_probability: float = 0.5
    crop_bottom: int = 0  # rows dropped at the bottom before anything else (FGVC-Aircraft's 20-px banner)

    def __post_init__(self) -> None:
        if self.op not in TRANSFORMS:
            raise ValueError(f"transform {self.op!r}; expected one of {', '.join(TRANSFORMS)}")
        if self.image_size < 1:
            raise ValueError(f"image_size={self.image_size}; expected a positive number of pixels")
        if not 0.0 < self.eval_crop_fraction <= 1.0:
            raise ValueError(f"eval_crop_fraction={self.eval_crop_fraction}; expected 0 < f <= 1")
        if not (0.0 < self.scale[0] <= self.scale[1] <= 1.0):
            raise ValueError(f"scale={self.scale}; expected 0 < lo <= hi <= 1")
        if not (0.0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"ratio={self.ratio}; expected 0 < lo <= hi")
        if self.crop_bottom < 0:
            raise ValueError(f"crop_bottom={self.crop_bottom}; expected >= 0")
        if self.padding < 1:
            raise ValueError(f"padding={self.padding}; expected >= 1")
        object.__setattr__(self, "mean", check_statistics(self.mean, "mean"))
        object.__setattr__(self, "std", check_statistics(self.std, "std"))

    @property
    def kind(self) -> TransformOp:
        return TRANSFORMS[self.op]

    @property
    def eval_resize_short(self) -> int:
        """Shorter side before the eval centre crop: round(S / 0.875) (224 → 256)."""
        return int(round(self.image_size / self.eval_crop_fraction))

    @classmethod
    def for_split(cls, train_op: str, eval_op: str, *, train: bool, image_size: int, mean, std,
                  crop_bottom: int = 0) -> "TransformSpec":
        """The spec of a training (``train_op``) or evaluation (``eval_op``) split."""
        check_transform(train_op, True, "train transform")
        check_transform(eval_op, False, "eval transform")
        return cls(train_op if train else eval_op, train, image_size, mean, std, crop_bottom=crop_bottom)

    @classmethod
    def for_augment(cls, augment: str, *, train: bool, image_size: int, crop_bottom: int = 0) -> "TransformSpec":
        """The standard spec of the named pair ``augment`` ("imagenet", "cifar") with its normalisation."""
        if augment not in AUGMENTS:
            raise ValueError(f"augment={augment!r}; expected one of {tuple(AUGMENTS)}")
        train_op, eval_op, mean, std = AUGMENTS[augment]
        return cls.for_split(train_op, eval_op, train=train, image_size=image_size, mean=mean, std=std,
                             crop_bottom=crop_bottom)


Box = tuple[int, int, int, int]  # (top, left, height, width) in pixels


@dataclass(frozen=True)
class SampleOps:
    """The geometric steps for one sample; both backends execute exactly these, in this order:

    1. ``region`` — cut the box ``(top, left, height, width)`` out of the decoded image (source pixels). A box that
       reaches outside the image is zero-padded there (the pad-4 random crop is a region starting at −4..+4), or
       filled with the image's reflection when the transform reflect-pads.
    2. ``resize`` — resample the region to ``(height, width)`` with bilinear interpolation and an antialiasing
       (triangle) filter when shrinking: DALI ``INTERP_LINEAR, antialias=True``, torchvision ``BILINEAR,
       antialias=True``. They agree to one uint8 level except in the outermost output row/column, where DALI
       clamps the filter to the edge pixel and torchvision renormalises the cut filter (measured in the tests).
    3. ``crop`` — cut ``(top, left, height, width)`` out of the resized image (the eval centre crop; the padded
       random crop after a squash, zero-padded where it leaves the image).
    4. ``flip`` — mirror left–right.
    """

    region: Box  # in the decoded image; may reach outside it (zero padding, or reflection: reflect_pad)
    resize: tuple[int, int]  # (height, width) after resampling the region; == region size means no resampling
    crop: Box  # in the resized image; outside it only for "squash-pad-crop" (zero padding)
    flip: bool
    # > 0: the image is reflect-padded by this many pixels per side before the region is cut (the region's
    # coordinates stay those of the unpadded image, so it may start at −reflect_pad).
    reflect_pad: int = 0

    def on_reflect_padded(self) -> SampleOps:
        """These ops re-expressed on the image already reflect-padded by ``reflect_pad``: the region shifted by
        the pad, nothing left to pad. Each backend pads with its own operator, then executes these."""
        p = self.reflect_pad
        top, left, h, w = self.region
        return SampleOps((top + p, left + p, h, w), self.resize, self.crop, self.flip)


def batch_uniforms(seed: int, epoch: int, rank: int, batch: int, size: int) -> np.ndarray:
    """``size × NUM_UNIFORMS`` uniforms in [0, 1) for batch ``batch`` of ``rank`` in ``epoch``.

    A fresh PCG64 stream per (seed, epoch, rank, batch): any batch can be regenerated on its own (resume, or the
    DALI pipeline restarting after a skipped corrupt file) and no state is carried between batches or processes.
    The trailing 1 separates this stream from the epoch-order stream (see ``epoch_plan``).
    """
    for name, value in (("seed", seed), ("epoch", epoch), ("rank", rank), ("batch", batch)):
        if value < 0:
            raise ValueError(f"{name}={value}; the augmentation stream needs non-negative integers")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, rank, batch, 1])))
    return rng.random((size, NUM_UNIFORMS))


def random_resized_crop_box(u: np.ndarray, height: int, width: int, scale, ratio) -> Box:
    """torchvision's ``RandomResizedCrop.get_params`` driven by given uniforms instead of the global RNG.

    Up to 10 attempts: area A' = A · U(scale), aspect r = exp(U(log ratio)), w = round(√(A'·r)),
    h = round(√(A'/r)); the first box that fits is placed uniformly. Otherwise the whole image, clamped to the
    ratio range, centred.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    attempts = u[_U_ATTEMPTS].reshape(RRC_ATTEMPTS, 2)
    for u_scale, u_ratio in attempts:
        target_area = area * (scale[0] + float(u_scale) * (scale[1] - scale[0]))
        aspect = math.exp(log_lo + float(u_ratio) * (log_hi - log_lo))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u[_U_TOP] * (height - h + 1)), height - h)
            left = min(int(u[_U_LEFT] * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_shorter(height: int, width: int, short: int) -> tuple[int, int]:
    """torchvision ``Resize(short)``: shorter side → ``short``, longer side → int(short · long / short_in)."""
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def center_crop_box(height: int, width: int, size: int) -> Box:
    """torchvision ``CenterCrop``: top = int(round((H − S) / 2)) (Python rounding, half to even)."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0)), size, size


def _random_offset(u: float, count: int) -> int:
    """One of ``count`` equally likely offsets 0 .. count − 1 from a uniform in [0, 1)."""
    return min(int(u * count), count - 1)


def _plan_random_resized_crop(spec: TransformSpec, u: np.ndarray, height: int, width: int, flip: bool) -> SampleOps:
    s = spec.image_size
    region = random_resized_crop_box(u, height, width, spec.scale, spec.ratio)
    return SampleOps(region, (s, s), (0, 0, s, s), flip)


def _plan_pad_crop(spec: TransformSpec, u: np.ndarray, height: int, width: int, flip: bool) -> SampleOps:
    s, p = spec.image_size, spec.padding
    top, left = _random_offset(u[_U_TOP], 2 * p + 1) - p, _random_offset(u[_U_LEFT], 2 * p + 1) - p
    return SampleOps((top, left, height, width), (s, s), (0, 0, s, s), flip)


def _plan_reflect_pad_crop(spec: TransformSpec, u: np.ndarray, height: int, width: int, flip: bool) -> SampleOps:
    s, p = spec.image_size, spec.padding
    top, left = _random_offset(u[_U_TOP], 2 * p) - p, _random_offset(u[_U_LEFT], 2 * p) - p
    return SampleOps((top, left, height, width), (s, s), (0, 0, s, s), flip, reflect_pad=p)


def _plan_squash_pad_crop(spec: TransformSpec, u: np.ndarray, height: int, width: int, flip: bool) -> SampleOps:
    s, p = spec.image_size, spec.padding
    top, left = _random_offset(u[_U_TOP], 2 * p + 1) - p, _random_offset(u[_U_LEFT], 2 * p + 1) - p
    return SampleOps((0, 0, height, width), (s, s), (top, left, s, s), flip)


def _plan_resize_center_crop(spec: TransformSpec, u: np.ndarray, height: int, width: int, flip: bool) -> SampleOps:
    rh, rw = resize_shorter(height, width, spec.eval_resize_short)
    return SampleOps((0, 0, height, width), (rh, rw), center_crop_box(rh, rw, spec.image_size), flip)


def _plan_squash(spec: TransformSpec, u: np.ndarray, height: int, width: int, flip: bool) -> SampleOps:
    s = spec.image_size
    return SampleOps((0, 0, height, width), (s, s), (0, 0, s, s), flip)


_PLANNERS = {
    "random-resized-crop": _plan_random_resized_crop,
    "pad-crop": _plan_pad_crop,
    "reflect-pad-crop": _plan_reflect_pad_crop,
    "squash-pad-crop": _plan_squash_pad_crop,
    "resize-center-crop": _plan_resize_center_crop,
    "squash": _plan_squash,
}
assert set(_PLANNERS) == set(TRANSFORMS)


def plan_sample(spec: TransformSpec, u: np.ndarray, height: int, width: int) -> SampleOps:
    """The steps for one image of decoded size ``height × width`` given its row of :func:`batch_uniforms`."""
    h_eff = height - spec.crop_bottom
    if h_eff < 1 or width < 1:
        raise ValueError(f"image of {height}×{width} px is too small for crop_bottom={spec.crop_bottom}")
    if spec.kind.reflect and min(h_eff, width) <= spec.padding:
        raise ValueError(f"image of {h_eff}×{width} px is too small to reflect-pad by {spec.padding}")
    flip = bool(spec.kind.train and u[_U_FLIP] < spec.flip_probability)
    return _PLANNERS[spec.op](spec, u, h_eff, width, flip)


def plan_batch(spec: TransformSpec, uniforms: np.ndarray, sizes) -> list[SampleOps]:
    """:func:`plan_sample` for each (height, width) in ``sizes`` with the matching row of ``uniforms``."""
    return [plan_sample(spec, uniforms[i], h, w) for i, (h, w) in enumerate(sizes)]
