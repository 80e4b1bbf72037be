"""The one definition of the input transforms, shared by the DALI pipelines and the reference DataLoader.

Both backends apply the same four geometric steps to every sample, in this order, and then normalise:

1. ``region``  — cut the box ``(top, left, height, width)`` out of the decoded image (source pixels). A box that
   reaches outside the image is zero-padded there (CIFAR's pad-4 random crop is a region starting at −4..+4).
2. ``resize``  — resample the region to ``(height, width)`` with bilinear interpolation and an antialiasing
   (triangle) filter when shrinking: DALI ``INTERP_LINEAR, antialias=True``, torchvision ``BILINEAR,
   antialias=True``. They agree to one uint8 level except in the outermost output row/column, where DALI
   clamps the filter to the edge pixel and torchvision renormalises the cut filter (measured in the tests).
3. ``crop``    — cut ``(top, left, height, width)`` out of the resized image (the eval centre crop).
4. ``flip``    — mirror left–right.
5. normalise:  x ↦ (x / 255 − mean) / std per channel.

The *random* numbers behind steps 1 and 4 are not drawn by either backend. :func:`batch_uniforms` draws them
from a generator seeded by ``(seed, epoch, rank, batch)``, and :func:`plan_sample` turns one row of them plus the
image's size into a :class:`SampleOps`. So for the same files, seed and epoch the two backends crop and flip the
same pixels, a resumed run replays the same augmentation, and DALI's own (per-pipeline-instance) random state is
never used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# ImageNet channel statistics (torchvision's pretrained weights were trained with these; the ResNet-50
# backbones start from them, so every 224-px dataset is normalised the same way).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# CIFAR-100 training-set per-channel mean/std (the values used by the WRN / "making better mistakes" CIFAR
# recipes the paper follows).
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)

AUGMENTS = ("imagenet", "cifar")

# torchvision's RandomResizedCrop makes 10 attempts before falling back to a centre crop; we do the same, so the
# number of uniforms per sample is fixed and the plan is a pure function of them.
RRC_ATTEMPTS = 10
_U_ATTEMPTS = slice(0, 2 * RRC_ATTEMPTS)  # (scale, log-ratio) per attempt
_U_TOP, _U_LEFT, _U_FLIP = 2 * RRC_ATTEMPTS, 2 * RRC_ATTEMPTS + 1, 2 * RRC_ATTEMPTS + 2
NUM_UNIFORMS = 2 * RRC_ATTEMPTS + 3


@dataclass(frozen=True)
class TransformSpec:
    """What a split's transform is; every number here has its reason in the field's standard recipes."""

    augment: str  # "imagenet" (RandomResizedCrop / resize+centre crop) or "cifar" (pad-4 crop / plain)
    train: bool
    image_size: int  # output side S (224 for ImageNet-style data, 32 for CIFAR)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Eval: resize the shorter side to S / 0.875 (256 for 224), then centre-crop S — the ImageNet convention.
    eval_crop_fraction: float = 0.875
    # Train RandomResizedCrop: area fraction and aspect-ratio range of torchvision's defaults (Inception recipe).
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    cifar_padding: int = 4  # zero padding of the CIFAR random crop (WRN recipe)
    flip_probability: float = 0.5
    crop_bottom: int = 0  # rows dropped at the bottom before anything else (FGVC-Aircraft's 20-px banner)

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment={self.augment!r}; expected one of {AUGMENTS}")
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

    @property
    def eval_resize_short(self) -> int:
        """Shorter side before the eval centre crop: round(S / 0.875) (224 → 256)."""
        return int(round(self.image_size / self.eval_crop_fraction))

    @classmethod
    def for_augment(cls, augment: str, *, train: bool, image_size: int, crop_bottom: int = 0) -> "TransformSpec":
        """The standard spec for ``augment`` with the normalisation constants that belong to it."""
        if augment == "cifar":
            return cls("cifar", train, image_size, CIFAR100_MEAN, CIFAR100_STD, crop_bottom=crop_bottom)
        if augment == "imagenet":
            return cls("imagenet", train, image_size, IMAGENET_MEAN, IMAGENET_STD, crop_bottom=crop_bottom)
        raise ValueError(f"augment={augment!r}; expected one of {AUGMENTS}")


Box = tuple[int, int, int, int]  # (top, left, height, width) in pixels


@dataclass(frozen=True)
class SampleOps:
    """The geometric steps for one sample (see the module docstring); both backends execute exactly these."""

    region: Box  # in the decoded image; may reach outside it (zero padding)
    resize: tuple[int, int]  # (height, width) after resampling the region; == region size means no resampling
    crop: Box  # in the resized image, always inside it
    flip: bool


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


def plan_sample(spec: TransformSpec, u: np.ndarray, height: int, width: int) -> SampleOps:
    """The steps for one image of decoded size ``height × width`` given its row of :func:`batch_uniforms`."""
    h_eff = height - spec.crop_bottom
    if h_eff < 1 or width < 1:
        raise ValueError(f"image of {height}×{width} px is too small for crop_bottom={spec.crop_bottom}")
    s = spec.image_size
    flip = bool(spec.train and u[_U_FLIP] < spec.flip_probability)
    if spec.augment == "imagenet":
        if spec.train:
            region = random_resized_crop_box(u, h_eff, width, spec.scale, spec.ratio)
            return SampleOps(region, (s, s), (0, 0, s, s), flip)
        rh, rw = resize_shorter(h_eff, width, spec.eval_resize_short)
        return SampleOps((0, 0, h_eff, width), (rh, rw), center_crop_box(rh, rw, s), False)
    # cifar: pad-p random crop at native size (train), then a fixed resize only if S differs from it.
    if spec.train:
        p = spec.cifar_padding
        top = min(int(u[_U_TOP] * (2 * p + 1)), 2 * p) - p
        left = min(int(u[_U_LEFT] * (2 * p + 1)), 2 * p) - p
        region = (top, left, h_eff, width)
    else:
        region = (0, 0, h_eff, width)
    return SampleOps(region, (s, s), (0, 0, s, s), flip)


def plan_batch(spec: TransformSpec, uniforms: np.ndarray, sizes) -> list[SampleOps]:
    """:func:`plan_sample` for each (height, width) in ``sizes`` with the matching row of ``uniforms``."""
    return [plan_sample(spec, uniforms[i], h, w) for i, (h, w) in enumerate(sizes)]
