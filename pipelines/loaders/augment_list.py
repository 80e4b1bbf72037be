"""Training augmentations named in the run config: a list of ``torchvision.transforms.v2`` transforms.

``data.augment: [{RandomResizedCrop: {size: 32, scale: [0.5, 1.0]}}, {RandomHorizontalFlip: {}}, ColorJitter...]``
(an item is ``{Name: {keyword: value}}`` or a bare ``Name``) replaces the built-in training transform
(``data.transforms.train``) of the training split:

    decoded uint8 image (3 × H × W, ``crop_bottom`` rows removed) → the listed transforms, in order
    → 3 × S × S (S = ``data.image_size``; another size is an error naming it) → x / 255 → normalise

so normalisation (``data.normalize``) stays after augmentation. The transforms draw from torch's generator, seeded
per sample from the loader's (seed, epoch, rank, batch) uniforms (:func:`augment_image`): a resumed run replays
the same augmentation and the number of workers changes nothing. Only the torch backend runs them: with a list,
``data.backend: auto`` uses torch and ``dali`` is refused (one line). :func:`check_augment` validates a list (names
with close matches, keyword names, a dry run on an S × S image) for ``haf config``.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Mapping, Sequence

import torch

#: Modules of torchvision.transforms.v2 whose transforms act on one image (geometry, colour, auto-augment, misc).
_IMAGE_MODULES = ("_geometry", "_color", "_auto_augment", "_augment", "_misc")
#: Transforms that cannot be one step of a per-image list: why, for the error message.
REFUSED = {
    "Normalize": "normalisation is data.normalize, applied after the list",
    "ToDtype": "images stay uint8 through the list; scaling and normalisation follow it",
    "ConvertImageDtype": "images stay uint8 through the list; scaling and normalisation follow it",
    "Lambda": "a config names transforms, not code",
    "LinearTransformation": "it needs a matrix a config cannot hold",
    "FiveCrop": "it gives five images per image", "TenCrop": "it gives ten images per image",
    "CutMix": "it mixes a batch with its labels (train.mixup_alpha mixes batches)",
    "MixUp": "it mixes a batch with its labels (train.mixup_alpha mixes batches)",
    "RandomIoUCrop": "it needs bounding boxes", "SanitizeBoundingBoxes": "it needs bounding boxes",
    "SanitizeKeyPoints": "it needs key points",
}


def available_transforms() -> list[str]:
    """The torchvision.transforms.v2 names a list may use."""
    from torchvision.transforms import v2

    names = []
    for name in dir(v2):
        value = getattr(v2, name)
        if (not name.startswith("_") and isinstance(value, type) and issubclass(value, v2.Transform)
                and value.__module__.rsplit(".", 1)[-1] in _IMAGE_MODULES and name not in REFUSED):
            names.append(name)
    return sorted(names)


def parse_augment(items: Any, key: str = "data.augment") -> list[tuple[str, dict]]:
    """``[(name, kwargs), ...]`` from the config's list; a malformed item is one line naming its index."""
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"key '{key}': expected true, false or a list of transforms, got {items!r}")
    parsed = []
    for index, item in enumerate(items):
        where = f"key '{key}[{index}]'"
        if isinstance(item, str):
            parsed.append((item, {}))
            continue
        if not isinstance(item, Mapping) or len(item) != 1:
            raise ValueError(f"{where}: expected {{TransformName: {{option: value}}}} or a name, got {item!r}")
        (name, kwargs), = item.items()
        if kwargs is None:
            kwargs = {}
        if not isinstance(name, str) or not isinstance(kwargs, Mapping):
            raise ValueError(f"{where}: expected {{TransformName: {{option: value}}}}, got {item!r}")
        parsed.append((name, dict(kwargs)))
    return parsed


def build_augment(items: Any, key: str = "data.augment") -> torch.nn.Module:
    """The listed transforms as one ``v2.Compose``; an unknown name, keyword or value is one line naming the item."""
    from torchvision.transforms import v2

    allowed = available_transforms()
    steps = []
    for index, (name, kwargs) in enumerate(parse_augment(items, key)):
        where = f"key '{key}[{index}]'"
        if name in REFUSED:
            raise ValueError(f"{where}: {name} cannot be used here: {REFUSED[name]}")
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"{where}: unknown transform {name!r}{hint}; torchvision.transforms.v2 names: "
                             f"{', '.join(allowed)}")
        cls = getattr(v2, name)
        parameters = inspect.signature(cls).parameters
        valid = [p for p in parameters if p not in ("self", "args", "kwargs")]
        for option in kwargs:
            if option not in parameters:
                raise ValueError(f"{where}: {name} has no option {option!r}; valid options: "
                                 f"{', '.join(valid) or '(none)'}")
        try:
            steps.append(cls(**kwargs))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: {name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}): "
                             f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    return v2.Compose(steps)


def augment_image(transform: torch.nn.Module, image: torch.Tensor, uniform: float, image_size: int) -> torch.Tensor:
    """``transform`` on one uint8 3 × H × W image with torch's generator seeded from ``uniform`` ∈ [0, 1); the
    result must be uint8 3 × S × S."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(uniform * 2**53))
        out = transform(image)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (3, image_size, image_size):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"key 'data.augment': the transforms give images of shape {shape}, data.image_size needs "
                         f"(3, {image_size}, {image_size}); end the list with a crop or resize to {image_size} "
                         f"(e.g. RandomResizedCrop: {{size: {image_size}}})")
    if out.dtype != torch.uint8:
        raise ValueError(f"key 'data.augment': the transforms give {out.dtype} images; they must keep uint8")
    return out


def check_augment(items: Any, image_size: int, key: str = "data.augment") -> None:
    """Build the list and run it on a random S × S image: what ``haf config`` checks."""
    transform = build_augment(items, key)
    image = torch.randint(0, 256, (3, image_size, image_size), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    try:
        augment_image(transform, image, 0.5, image_size)
    except (TypeError, RuntimeError) as error:
        raise ValueError(f"key '{key}': the transforms fail on a {image_size} × {image_size} uint8 image: "
                         f"{str(error).splitlines()[0]}") from None


def augment_items(augment: bool | Sequence[Any]) -> list | None:
    """The list of a ``data.augment`` value, or None for true/false."""
    return None if isinstance(augment, bool) else list(augment)
