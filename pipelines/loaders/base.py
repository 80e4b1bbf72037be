"""What every loader is: validated options (``LoaderOptions``) and epoch bookkeeping (``Loader``), shared by
the DALI and the PyTorch backends; ``make_loader`` (:mod:`.loader`) picks one."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from haf.pipelines.loaders.encoded_images import check_on_error
from haf.pipelines.loaders.epoch_plan import batch_slices, shard_indices
from haf.pipelines.loaders.backends import LOADER_BACKENDS
from haf.pipelines.readers.splits import Split
from haf.pipelines.loaders.transforms import AUGMENTS, TransformSpec, check_statistics, check_transform


@dataclass(frozen=True)
class LoaderOptions:
    """Everything ``make_loader`` was asked for, validated once; both backends read it."""

    backend: str
    train: bool
    batch_size: int
    image_size: int
    workers: int
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    drop_last: bool = True
    augment: str = "imagenet"  # named (train, eval, mean, std) preset; the four fields below override it
    on_error: str = "raise"
    shuffle: bool = True
    dali_device: str = "cpu"  # where DALI decodes and transforms: "gpu" (mixed decoder + GPU ops) or "cpu"
    train_transform: str | None = None  # a name of transforms.TRAIN_TRANSFORMS; None: the augment preset's
    eval_transform: str | None = None  # a name of transforms.EVAL_TRANSFORMS; None: the augment preset's
    mean: tuple[float, float, float] | None = None  # normalisation; None: the augment preset's
    std: tuple[float, float, float] | None = None
    # torchvision transforms instead of the training transform (torch backend; haf.pipelines.loaders.augment_list)
    augment_list: tuple | None = None

    def __post_init__(self) -> None:
        if self.backend not in LOADER_BACKENDS:
            raise ValueError(f"backend={self.backend!r}; expected one of {LOADER_BACKENDS}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}; expected >= 1")
        if self.workers < 0:
            raise ValueError(f"workers={self.workers}; expected >= 0")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank}, world_size={self.world_size}; expected 0 <= rank < world_size")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed}; expected a non-negative integer")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment={self.augment!r}; expected one of {tuple(AUGMENTS)}")
        if self.train_transform is not None:
            check_transform(self.train_transform, True, "train_transform")
        if self.eval_transform is not None:
            check_transform(self.eval_transform, False, "eval_transform")
        for name in ("mean", "std"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_statistics(getattr(self, name), name))
        if self.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype={self.dtype}; expected torch.float32, torch.float16 or torch.bfloat16")
        if self.dali_device not in ("cpu", "gpu"):
            raise ValueError(f"dali_device={self.dali_device!r}; expected 'cpu' or 'gpu'")
        if self.dali_device == "gpu" and self.device.type != "cuda":
            raise ValueError(f"dali_device='gpu' needs a CUDA output device, got device={self.device}")
        check_on_error(self.on_error)
        if self.augment_list is not None and (self.backend != "torch" or not self.train):
            raise ValueError("augment_list: torchvision transforms run on the torch backend's training split only")


def transform_spec(options: LoaderOptions, crop_bottom: int = 0) -> TransformSpec:
    """The split's transform: the ``augment`` preset with any explicitly given transform or statistic on top."""
    train_op, eval_op, mean, std = AUGMENTS[options.augment]
    return TransformSpec.for_split(
        options.train_transform or train_op, options.eval_transform or eval_op, train=options.train,
        image_size=options.image_size, mean=options.mean or mean, std=options.std or std, crop_bottom=crop_bottom,
    )


class Loader(ABC):
    """Epoch bookkeeping shared by both backends; subclasses turn a batch plan into tensors."""

    def __init__(self, split: Split, options: LoaderOptions):
        self.split = split
        self.options = options
        self.spec = transform_spec(options, crop_bottom=split.crop_bottom)
        self.labels = np.asarray(split.labels, dtype=np.int64)
        self.epoch = 0
        self.start_batch = 0  # first batch of the next pass (set_epoch's resume-inside-an-epoch option)
        self.skipped_files: list[str] = []  # every sample skipped under on_error="skip", in the order met

    # -- epoch plan ---------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch the next ``iter(loader)`` reads (DistributedSampler.set_epoch's contract).

        ``start_batch`` resumes inside an epoch: iteration begins at that batch, with exactly the samples and
        augmentation it has in a full pass (each batch's randomness depends only on its number), and the
        batches before it are not read. ``len(loader)`` still counts the whole epoch. Every later
        ``set_epoch`` call without it starts at batch 0 again.
        """
        if epoch < 0:
            raise ValueError(f"epoch={epoch}; expected >= 0")
        if start_batch < 0:
            raise ValueError(f"start_batch={start_batch}; expected >= 0")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def shard(self, epoch: int | None = None) -> np.ndarray:
        """Sample indices this rank reads in ``epoch`` (default: the current one), in order."""
        o = self.options
        return shard_indices(
            len(self.split),
            shuffle=o.shuffle,
            seed=o.seed,
            epoch=self.epoch if epoch is None else epoch,
            rank=o.rank,
            world_size=o.world_size,
            drop_last=o.drop_last,
            pad=o.train,
        )

    def batch_plan(self, epoch: int | None = None) -> list[np.ndarray]:
        """The sample indices of every batch this rank reads in ``epoch``."""
        shard = self.shard(epoch)
        return [shard[s] for s in batch_slices(len(shard), self.options.batch_size, self.options.drop_last)]

    def __len__(self) -> int:
        # The plan's length does not depend on the epoch (only the order does).
        return len(batch_slices(len(self.shard(0)), self.options.batch_size, self.options.drop_last))

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_files)

    # -- output --------------------------------------------------------------------------------------------------
    def _finish(self, images: torch.Tensor, labels: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Move to the device, cast and lay out as asked (images arrive as B×3×H×W views, any strides)."""
        o = self.options
        non_blocking = o.device.type == "cuda"
        images = images.to(o.device, non_blocking=non_blocking).to(o.dtype)
        memory_format = torch.channels_last if o.channels_last else torch.contiguous_format
        images = images.contiguous(memory_format=memory_format)
        labels = torch.as_tensor(labels, dtype=torch.int64).to(o.device, non_blocking=non_blocking)
        return images, labels

    @abstractmethod
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
