"""Input pipelines (installed as ``haf.pipelines``), by concept:

- ``readers/``: one reader per on-disk dataset format, behind ``load_dataset(kind, root, **options)``;
- ``loaders/``: batches from a read dataset, through NVIDIA DALI or the reference torch ``DataLoader``
  (``make_loader``), with the transforms both share;
- ``prepare/``: ``haf prepare``, resizing an image tree with ffmpeg (or Pillow, the reference);
- ``demo/``: the generated hierarchical demo dataset (and synthetic JPEGs for benchmarks).
"""
from haf.pipelines.demo.dataset import DemoSpec, ensure_demo_dataset
from haf.pipelines.loaders.loader import Loader, LoaderOptions, make_loader
from haf.pipelines.loaders.transforms import CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD, TransformSpec
from haf.pipelines.readers.registry import DATASET_KINDS, load_dataset
from haf.pipelines.readers.splits import DatasetSplits, Split

__all__ = ["CIFAR100_MEAN", "CIFAR100_STD", "DATASET_KINDS", "DatasetSplits", "DemoSpec", "IMAGENET_MEAN",
           "IMAGENET_STD", "Loader", "LoaderOptions", "Split", "TransformSpec", "ensure_demo_dataset", "load_dataset",
           "make_loader"]
