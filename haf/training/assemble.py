"""From a run config to the pieces a run needs: the dataset and its distances, the model, the loaders.

One path for training, the final test and ``haf eval``: the model is built from the registries (backbone → head
→ method, the frame rotation seeded by ``config.seed``) and every loader comes from :func:`make_split_loader`,
with the config's transforms and normalisation. Before the first epoch the splits are checked
(:func:`check_splits`) and a ``train.steps`` budget becomes epochs (:func:`resolve_epochs`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from haf.training.schema import RunConfig
from haf.training.seeding import seed_everything


@dataclass
class PreparedData:
    dataset: Any  # haf.pipelines.DatasetSplits
    # K × K int64 in the dataset's class order; for a method that asks for them (the tree-factorised frame), a
    # haf.hierarchy.tree_distances.TreeDistances read off the class tree instead (no K × K array at any K).
    distances: Any

    @property
    def class_groups(self) -> np.ndarray | None:
        """Each class's shot group (many / medium / few) from the training split's counts; None without a
        training split or when every class is in one group (balanced data: the split would repeat the totals)."""
        from haf.metrics import shot_groups

        if "train" not in self.dataset.splits:
            return None
        labels = np.asarray(self.dataset.splits["train"].labels)
        groups = shot_groups(np.bincount(labels, minlength=len(self.dataset.classes)))
        return groups if np.unique(groups).size > 1 else None


def prepare_dataset(config: RunConfig, *, generate: bool = True) -> PreparedData:
    """Read the dataset and pick its distance convention. ``generate=False`` (evaluation): the demo reader never
    creates its dataset, not even at its cache location."""
    from haf.pipelines import load_dataset

    ds = config.dataset
    options = dict(ds.options)  # a hierarchy option may name a shipped hierarchy: haf.hierarchy resolves it
    if ds.kind == "demo" and not generate:
        options["generate"] = False
    dataset = load_dataset(ds.kind, ds.root, **options)
    return PreparedData(dataset, distances_for(dataset, ds.distance_convention, config.source,
                                               tree=_wants_tree_distances(config)))


def _wants_tree_distances(config: RunConfig) -> bool:
    from haf.methods import get_method

    return bool(get_method(config.method.name).wants_tree_distances(dict(config.method.options)))


def distances_for(dataset: Any, convention: str | None, source: str | None = None, *, tree: bool = False) -> Any:
    """The run's class distances under ``convention`` (None: the reader's). ``tree``: a TreeDistances when the
    dataset has a class tree (else the matrix, and a method needing the tree says so when it is built)."""
    if tree and dataset.hierarchy is not None:
        from haf.hierarchy.tree_distances import TreeDistances

        return TreeDistances.from_hierarchy(dataset.hierarchy, convention or dataset.distances.convention)
    if convention is None:
        return np.asarray(dataset.distances.matrix, dtype=np.int64)
    if dataset.hierarchy is None:
        if dataset.distances.convention == convention:
            return np.asarray(dataset.distances.matrix, dtype=np.int64)
        raise ValueError(f"{source or '<config>'}: key 'dataset.distance_convention': {convention!r} needs a class "
                         f"tree, but dataset {dataset.name!r} only has a distance matrix "
                         f"(convention {dataset.distances.convention!r}); use null")
    return np.asarray(dataset.hierarchy.distance_matrix(convention), dtype=np.int64)


def build_model(config: RunConfig, dataset: Any, distances: Any) -> torch.nn.Module:
    """backbone → head → method from the registries; the frame rotation is seeded by ``config.seed``."""
    from haf.methods import MethodContext
    from haf.models.backbone_registry import import_backbone_module
    from haf.models.classifier import build_classifier

    import_backbone_module(config.model.backbone_module)

    hierarchy = dataset.hierarchy
    context = MethodContext(
        classes=tuple(dataset.classes),
        distances=distances,
        level_labels=hierarchy.level_labels() if hierarchy is not None else None,
        seed=config.seed,
        hierarchy=hierarchy,
    )
    backbone_options = dict(config.model.backbone_options)
    if config.model.pretrained is not None:
        backbone_options["weights"] = config.model.pretrained
    # Model initialisation draws from the global RNG: seed it so every rank (and every resume) builds the same model.
    seed_everything(config.seed)
    return build_classifier(
        backbone=config.model.backbone,
        head=config.model.head,
        method=config.method.name,
        context=context,
        backbone_options=backbone_options,
        head_options=dict(config.model.head_options),
        method_options=config.method.options,
    )


def world_batch_split(global_batch: int, world_size: int, accumulation: int = 1, key: str = "train.batch_size") -> int:
    """Per-rank micro-batch of a global batch; the global batch must split evenly (the same update as 1 process)."""
    if global_batch % (world_size * accumulation):
        raise ValueError(f"key '{key}': global batch {global_batch} does not split evenly over {world_size} "
                         f"rank(s) × {accumulation} accumulation step(s)")
    return global_batch // (world_size * accumulation)


def transform_options(config: RunConfig) -> dict:
    """The loader keywords of ``data.transforms`` / ``data.normalize`` (resolved at config load)."""
    d = config.data
    return {"transforms": (d.transforms.train, d.transforms.eval), "normalize": (d.normalize.mean, d.normalize.std)}


def check_splits(config: RunConfig, dataset: Any) -> None:
    """Before any epoch: the train, validation and test splits exist (a missing test split must not surface
    after the last epoch)."""
    available = sorted(dataset.splits)
    for key, name in (("train", "train"), ("dataset.val_split", config.dataset.val_split),
                      ("dataset.test_split", config.dataset.test_split)):
        if name not in dataset.splits:
            raise ValueError(f"{config.source or '<config>'}: key '{key}': dataset {dataset.name!r} at "
                             f"{config.dataset.root!r} has no split {name!r} (it has: {', '.join(available)})")


def resolve_epochs(config: RunConfig, train_size: int, world_size: int) -> RunConfig:
    """``train.steps`` → ``train.epochs = max(1, round(steps / optimizer steps per epoch))``; else as is."""
    t = config.train
    if t.steps is None:
        return config
    accumulation = config.deepspeed.gradient_accumulation_steps
    micro = world_batch_split(t.batch_size, world_size, accumulation)
    per_rank = math.ceil(train_size / world_size)  # training shards are padded to equal length
    batches = math.ceil(per_rank / micro) if not t.drop_last else per_rank // micro  # the loader's len()
    steps_per_epoch = batches // accumulation
    if steps_per_epoch < 1:
        raise ValueError(f"{config.source or '<config>'}: key 'train.batch_size': {t.batch_size} exceeds the "
                         f"{train_size} training images")
    epochs = max(1, round(t.steps / steps_per_epoch))
    return config.replace(train=dataclasses.replace(t, epochs=epochs))


def make_split_loader(config: RunConfig, data: PreparedData, split: str, *, train: bool, rank: int = 0,
                      world_size: int = 1, device: torch.device, dtype: torch.dtype = torch.float32,
                      channels_last: bool = False, validation: bool = False) -> Any:
    """This rank's loader over ``split``: the global (eval) batch split over ranks, ``data.backend`` resolved.

    ``validation``: the loader that picks the checkpoint; with ``train.val_drop_last`` it reads only the first
    ⌊N/B⌋·B images, B = ``train.batch_size`` (the reference's validation loader drops its last partial batch).
    """
    from haf.pipelines import make_loader
    from haf.pipelines.loaders.augment_list import augment_items

    global_batch = config.train.batch_size if train else config.train.eval_batch_size
    if train:
        micro = world_batch_split(global_batch, world_size, config.deepspeed.gradient_accumulation_steps)
    else:
        # Evaluation shards need not split evenly (no padding, partial last batch): round the per-rank batch up.
        micro = max(1, math.ceil(global_batch / world_size))
    # Without augmentation the training split takes the evaluation transform, still shuffled, full batches only.
    return make_loader(
        data.dataset, split, backend=config.data.backend, train=train and config.data.augment is not False,
        augment_list=augment_items(config.data.augment) if train else None,
        batch_size=micro, image_size=config.data.image_size, workers=config.data.workers, rank=rank,
        world_size=world_size, seed=config.seed, device=device, dtype=dtype, channels_last=channels_last,
        shuffle=train, drop_last=train and config.train.drop_last, **transform_options(config),
        whole_batches_of=config.train.batch_size if validation and config.train.val_drop_last else None,
    )
