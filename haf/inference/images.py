"""Images for prediction: finding them (files or folders, recursively), decoding and the model's eval transform.

The transform is the one the model was evaluated with (``haf.pipelines.loaders.transforms``: the checkpoint's eval
transform, size and normalisation, executed by the reference DataLoader's ``apply_ops``), so a prediction sees
exactly the pixels ``haf eval`` would have.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from haf.pipelines.readers.common import IMAGE_EXTENSIONS, is_image_file

__all__ = ["ImageTransform", "PredictionImages", "find_images"]


def find_images(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Image files named directly, and those in named folders (recursively, sorted, hidden entries skipped).

    A missing path is an error naming it; a named file that is no image, or nothing found at all, too."""
    found: list[str] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(os.path.join(folder, f) for f in sorted(files) if is_image_file(f))
        elif path.is_file():
            if not is_image_file(path.name):
                raise ValueError(f"{path}: not an image file (extensions: {', '.join(IMAGE_EXTENSIONS)})")
            found.append(str(path))
        else:
            raise FileNotFoundError(f"image or folder not found: {path}")
    if not found:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(map(str, paths))}")
    return found


class ImageTransform:
    """uint8 3 × H × W (or an image file) → the normalised float32 3 × S × S input of the model."""

    def __init__(self, preprocessing: dict) -> None:
        from haf.pipelines.loaders.transforms import TransformSpec

        self.preprocessing = dict(preprocessing)
        self.spec = TransformSpec(
            op=str(preprocessing["transform"]), train=False, image_size=int(preprocessing["image_size"]),
            mean=tuple(preprocessing["mean"]), std=tuple(preprocessing["std"]),
            eval_crop_fraction=float(preprocessing.get("eval_crop_fraction", 0.875)),
            crop_bottom=int(preprocessing.get("crop_bottom", 0)),
        )

    def __call__(self, image: Any) -> torch.Tensor:
        from haf.pipelines.loaders.torch_loader import apply_ops
        from haf.pipelines.loaders.transforms import NUM_UNIFORMS, plan_sample

        if isinstance(image, (str, os.PathLike)):
            image = decode(str(image))
        elif isinstance(image, np.ndarray):  # H × W × 3 uint8, as the array datasets hold
            image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        elif not isinstance(image, torch.Tensor):  # a PIL image
            image = torch.from_numpy(np.asarray(image.convert("RGB"))).permute(2, 0, 1).contiguous()
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a uint8 3 × H × W image, got {image.dtype} {tuple(image.shape)}")
        ops = plan_sample(self.spec, np.zeros(NUM_UNIFORMS), int(image.shape[1]), int(image.shape[2]))
        return apply_ops(image, ops, self.spec)

    def __repr__(self) -> str:
        p = self.preprocessing
        return f"ImageTransform({p['transform']}, size={p['image_size']}, mean={p['mean']}, std={p['std']})"


def decode(path: str) -> torch.Tensor:
    """An image file → uint8 RGB 3 × H × W; a corrupt or unreadable file is a one-line error naming it."""
    from torchvision.io import ImageReadMode, decode_image

    from haf.pipelines.loaders.encoded_images import CorruptImageError, read_encoded

    data = read_encoded(path)
    try:
        return decode_image(torch.from_numpy(data.copy()), mode=ImageReadMode.RGB)
    except RuntimeError as error:
        raise CorruptImageError(path, f"decoding failed ({error})") from None


class PredictionImages(Dataset):
    """Map-style dataset of (transformed image, index) over files or H × W × 3 arrays."""

    def __init__(self, items: Sequence[Any], transform: ImageTransform) -> None:
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.items[index]), index
