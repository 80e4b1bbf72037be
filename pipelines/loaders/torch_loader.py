"""The reference input path: a plain ``torch.utils.data.DataLoader`` with torchvision transforms.

It executes the same :class:`~haf.pipelines.loaders.transforms.SampleOps` as the DALI pipeline, with torchvision's
operators: ``decode_image`` (libjpeg-turbo / libpng, RGB, no EXIF rotation) → [``pad`` (reflect)] → ``crop``
(zero-pads outside the image) → ``resize`` (bilinear, antialias=True, uint8 in and out as DALI) → ``crop`` →
``hflip`` → normalise.
The batch plan (which indices, which uniforms) is made in the main process and shipped to the workers, so the
result does not depend on the number of workers or on which worker ran what.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from haf.pipelines.loaders.encoded_images import CorruptImageError, encoded_size, read_encoded
from haf.pipelines.loaders.base import Loader, LoaderOptions
from haf.pipelines.readers.splits import Split
from haf.pipelines.loaders.transforms import SampleOps, TransformSpec, batch_uniforms, plan_sample
from haf.pipelines.loaders.augment_list import augment_image, build_augment


def apply_ops(image: torch.Tensor, ops: SampleOps, spec: TransformSpec) -> torch.Tensor:
    """uint8 3×H×W → normalised float32 3×S×S, the reference definition of every step."""
    if ops.reflect_pad:
        p = ops.reflect_pad
        image = F.pad(image, [p, p, p, p], padding_mode="reflect")
        ops = ops.on_reflect_padded()
    top, left, h, w = ops.region
    if (top, left, h, w) != (0, 0, image.shape[-2], image.shape[-1]):
        image = F.crop(image, top, left, h, w)  # zero-pads where the box leaves the image (pad-4 crops)
    if tuple(ops.resize) != (h, w):
        image = F.resize(image, list(ops.resize), interpolation=InterpolationMode.BILINEAR, antialias=True)
    top, left, h, w = ops.crop
    if (top, left, h, w) != (0, 0, image.shape[-2], image.shape[-1]):
        image = F.crop(image, top, left, h, w)
    if ops.flip:
        image = F.horizontal_flip(image)
    return normalized(image, spec)


def normalized(image: torch.Tensor, spec: TransformSpec) -> torch.Tensor:
    """uint8 3 × S × S → float32 (x / 255 − mean) / std."""
    return F.normalize(image.to(torch.float32).div_(255.0), list(spec.mean), list(spec.std))


class _PlannedSamples(Dataset):
    """Map-style dataset whose keys are (sample index, row of uniforms): workers plan and decode one sample.
    With ``augment`` (a config's torchvision list) that list replaces the planned ops, seeded by the row."""

    def __init__(self, split: Split, spec: TransformSpec, on_error: str, augment: torch.nn.Module | None = None):
        self.split, self.spec, self.on_error, self.augment = split, spec, on_error, augment

    def __len__(self) -> int:
        return len(self.split)

    def _transform(self, image: torch.Tensor, uniforms: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        if self.augment is None:
            return apply_ops(image, plan_sample(self.spec, uniforms, *size), self.spec)
        if self.spec.crop_bottom:
            image = image[:, : image.shape[-2] - self.spec.crop_bottom]
        return normalized(augment_image(self.augment, image, float(uniforms[0]), self.spec.image_size), self.spec)

    def __getitem__(self, key: tuple[int, np.ndarray]):
        index, uniforms = key
        if self.split.arrays is not None:
            array = self.split.arrays[index]
            image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
            return self._transform(image, uniforms, array.shape[:2]), index, None
        path = self.split.files[index]
        try:
            data = read_encoded(path)
            size = encoded_size(data, path)
            try:
                image = decode_image(torch.from_numpy(data.copy()), mode=ImageReadMode.RGB)
            except RuntimeError as error:
                raise CorruptImageError(path, f"decoding failed ({error})") from None
            if tuple(image.shape[-2:]) != size:
                raise CorruptImageError(path, f"decoded size {tuple(image.shape[-2:])} != header size {size}")
        except CorruptImageError as error:
            if self.on_error == "raise":
                raise
            return None, index, error.path
        return self._transform(image, uniforms, size), index, None


def _collate(samples):
    kept = [s for s in samples if s[0] is not None]
    skipped = [s[2] for s in samples if s[0] is None]
    images = torch.stack([s[0] for s in kept]) if kept else None
    return images, np.array([s[1] for s in kept], dtype=np.int64), skipped


def _single_threaded_worker(_: int) -> None:
    # One intra-op thread per worker process, so `workers` is the whole CPU budget (as DALI's num_threads).
    torch.set_num_threads(1)


class _EpochBatches:
    """The batch sampler: each epoch, lists of (index, uniforms) keys from the loader's current plan."""

    def __init__(self, loader: "TorchLoader"):
        self.loader = loader

    def __iter__(self):
        o = self.loader.options
        plan = self.loader.batch_plan()
        for number in range(self.loader.start_batch, len(plan)):
            indices = plan[number]
            uniforms = batch_uniforms(o.seed, self.loader.epoch, o.rank, number, len(indices))
            yield [(int(i), uniforms[j]) for j, i in enumerate(indices)]

    def __len__(self) -> int:
        return len(self.loader)


class TorchLoader(Loader):
    """Reference backend; see the module docstring. ``workers=0`` decodes in the calling process."""

    def __init__(self, split: Split, options: LoaderOptions):
        super().__init__(split, options)
        workers = options.workers
        self._loader = DataLoader(
            _PlannedSamples(split, self.spec, options.on_error,
                            build_augment(options.augment_list) if options.augment_list else None),
            batch_sampler=_EpochBatches(self),
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=options.device.type == "cuda",
            worker_init_fn=_single_threaded_worker if workers else None,
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = iter(self._loader)
        try:
            for images, indices, skipped in batches:
                self.skipped_files.extend(skipped)
                if images is None:  # every sample of this batch was skipped
                    continue
                yield self._finish(images, self.labels[indices])
        finally:
            # Stop the workers now — after an error or an early break too — rather than whenever the
            # exception's traceback is collected (a worker left running is a process leak, and its join blocks).
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
