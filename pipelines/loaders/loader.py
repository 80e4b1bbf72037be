"""``make_loader``: one entry point for both input backends (DALI and the reference PyTorch DataLoader).

A loader yields ``(images, labels)``: images ``B × 3 × S × S`` normalised, in ``dtype`` on ``device`` (channels-last
memory when asked), labels int64 ``B``. ``len(loader)`` is the number of batches this rank reads per epoch.
``set_epoch(e)`` selects the epoch; order (``epoch_plan``) and augmentation (``transforms``) are functions of
(seed, epoch, rank) only, so two loaders with the same arguments yield identical batches, whichever backend and
however many workers, and a run resumed at epoch e replays it exactly.
"""
from __future__ import annotations

import dataclasses

import torch

from haf.pipelines.loaders.backends import DEFAULT_DATA_BACKEND, LOADER_BACKENDS, resolve_data_backend
from haf.pipelines.loaders.base import Loader, LoaderOptions
from haf.pipelines.readers.splits import DatasetSplits, Split

__all__ = ["LOADER_BACKENDS", "Loader", "LoaderOptions", "derive_augment", "leading_whole_batches", "make_loader"]

# Output sizes at or below this get the CIFAR recipe (pad-4 crop + flip, fixed resize) when no augment is named:
# RandomResizedCrop's 8%-area crops are a few pixels wide at such sizes (the 32-px demo dataset, CIFAR as files).
SMALL_IMAGE_SIZE = 64


def derive_augment(dataset: DatasetSplits, split: Split, image_size: int) -> str:
    """'cifar' for in-memory arrays (CIFAR-100) or small outputs (≤ SMALL_IMAGE_SIZE px), else 'imagenet'."""
    return "cifar" if split.arrays is not None or image_size <= SMALL_IMAGE_SIZE else "imagenet"


def make_loader(
    dataset: DatasetSplits,
    split: str,
    *,
    backend: str = DEFAULT_DATA_BACKEND,
    train: bool,
    batch_size: int,
    image_size: int,
    workers: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    device: torch.device | str = torch.device("cpu"),
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    drop_last: bool | None = None,
    augment: str | None = None,
    on_error: str = "raise",
    shuffle: bool | None = None,
    dali_device: str | None = None,
    transforms: tuple[str, str] | None = None,
    normalize: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None,
    whole_batches_of: int | None = None,
    augment_list: list | None = None,
) -> Loader:
    """A loader over ``dataset[split]`` (see the module docstring).

    ``drop_last`` defaults to ``train``; ``shuffle`` to ``train``; ``augment`` to :func:`derive_augment`;
    ``dali_device`` to "gpu" when ``device`` is CUDA (mixed decoding, GPU operators), else "cpu". ``workers`` is
    the number of DALI CPU threads (at least 1) or DataLoader worker processes (0: decode in this process) — the
    same CPU budget for both. Extensions beyond docs/ARCHITECTURE.md: ``augment``, ``on_error``, ``shuffle``,
    ``dali_device`` and ``set_epoch(epoch, start_batch)``.
    ``on_error``: "raise" → a ``ValueError`` naming the corrupt file; "skip" → the sample is dropped from its
    batch and listed in ``loader.skipped_files``. ``transforms`` = (train, eval) transform names and
    ``normalize`` = (mean, std) override the ``augment`` preset (a run's ``data.transforms`` / ``data.normalize``).
    ``whole_batches_of`` = B keeps only the first ⌊N/B⌋·B images of the split, in its order: what a single-process
    loader of batch B with ``drop_last`` sees (the reference's validation), independent of the world size.
    ``augment_list``: torchvision transforms instead of the training transform (a run's ``data.augment`` list,
    :mod:`haf.pipelines.loaders.augment_list`): the torch backend only ("auto" picks it, "dali" is refused).
    """
    the_split = dataset[split]
    if whole_batches_of is not None:
        the_split = leading_whole_batches(the_split, whole_batches_of)
    device = torch.device(device)
    if augment_list and train:
        if backend == "dali":
            raise ValueError("key 'data.augment': a list of torchvision transforms runs on the torch backend only; "
                             "set data.backend: torch (or auto)")
        backend = "torch"
    backend = resolve_data_backend(backend, device)
    options = LoaderOptions(
        backend=backend,
        train=train,
        batch_size=batch_size,
        image_size=image_size,
        workers=workers,
        rank=rank,
        world_size=world_size,
        seed=seed,
        device=device,
        dtype=dtype,
        channels_last=channels_last,
        drop_last=train if drop_last is None else drop_last,
        augment=augment or derive_augment(dataset, the_split, image_size),
        on_error=on_error,
        shuffle=train if shuffle is None else shuffle,
        dali_device=dali_device or ("gpu" if device.type == "cuda" else "cpu"),
        train_transform=transforms[0] if transforms else None,
        eval_transform=transforms[1] if transforms else None,
        mean=tuple(normalize[0]) if normalize else None,
        std=tuple(normalize[1]) if normalize else None,
        augment_list=tuple(augment_list) if augment_list and train else None,
    )
    if backend == "dali":
        from haf.pipelines.loaders.dali_loader import DaliLoader

        return DaliLoader(the_split, options)
    from haf.pipelines.loaders.torch_loader import TorchLoader

    return TorchLoader(the_split, options)


def leading_whole_batches(split: Split, batch_size: int) -> Split:
    """The first ⌊N/B⌋·B images of ``split`` (its last partial batch of B dropped), as a split of its own."""
    if batch_size < 1:
        raise ValueError(f"split {split.name!r}: batch size must be >= 1, got {batch_size}")
    keep = len(split) // batch_size * batch_size
    if keep == 0:
        raise ValueError(f"split {split.name!r}: {len(split)} images are less than one batch of {batch_size}; "
                         "nothing is left once the partial batch is dropped")
    if keep == len(split):
        return split
    return dataclasses.replace(split, labels=split.labels[:keep],
                               files=None if split.files is None else split.files[:keep],
                               arrays=None if split.arrays is None else split.arrays[:keep])
