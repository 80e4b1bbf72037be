"""Which samples a rank reads in an epoch, in which order, in which batches — shared by both backends.

Order is a function of (seed, epoch) only, identical on every rank, so the ranks' shards are disjoint; the
shard and batch split is then a function of (rank, world_size, batch_size). Nothing depends on the backend,
the number of workers or what ran before, which is what makes resume exact. The sharding rules (the
DeepSpeed/DistributedSampler conventions) are written out on :func:`shard_indices`.
"""
from __future__ import annotations

import math

import numpy as np


def epoch_order(num_samples: int, *, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """A permutation of range(N) drawn from (seed, epoch) (the trailing 0 keeps it apart from augmentation)."""
    if not shuffle:
        return np.arange(num_samples, dtype=np.int64)
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed={seed}, epoch={epoch}; the shuffle stream needs non-negative integers")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, 0])))
    return rng.permutation(num_samples).astype(np.int64)


def shard_indices(
    num_samples: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    drop_last: bool,
    pad: bool,
) -> np.ndarray:
    """Sample indices rank ``rank`` reads this epoch, in order (before batching).

    - ``drop_last=True`` (training default): the shuffled order is cut to a multiple of ``world_size``; rank r takes
      positions r, r + W, r + 2W, ...; then only full batches are kept. Every rank gets the same number of batches
      (collectives stay in step) and no sample is seen twice; at most W − 1 + W·(B − 1) samples sit out an epoch,
      a different set each epoch.
    - ``drop_last=False`` with ``pad=True`` (training without dropping): the order is wrapped around to a multiple
      of W, as DistributedSampler does, so every rank has the same number of samples; the < W duplicated samples
      are documented padding that training tolerates.
    - ``drop_last=False`` with ``pad=False`` (evaluation default): no padding, no duplicates: rank r takes positions
      r, r + W, ...; shard sizes differ by at most one and the last batch may be partial. Over all ranks every
      sample is seen exactly once, so metric sums merged across ranks are exact.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank}, world_size={world_size}; expected 0 <= rank < world_size")
    order = epoch_order(num_samples, shuffle=shuffle, seed=seed, epoch=epoch)
    if drop_last:
        order = order[: (num_samples // world_size) * world_size]
    elif pad and num_samples % world_size:
        total = math.ceil(num_samples / world_size) * world_size
        order = np.concatenate([order, np.resize(order, total - num_samples)]) if num_samples else order
    return order[rank::world_size]


def batch_slices(shard_size: int, batch_size: int, drop_last: bool) -> list[slice]:
    """Consecutive batches over a shard of ``shard_size``; the partial tail is dropped iff ``drop_last``."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected >= 1")
    count = shard_size // batch_size if drop_last else math.ceil(shard_size / batch_size)
    return [slice(i * batch_size, min((i + 1) * batch_size, shard_size)) for i in range(count)]
