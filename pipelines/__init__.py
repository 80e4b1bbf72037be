"""Input pipelines (installed as ``haf.pipelines``): dataset readers, DALI, the reference DataLoader, ffmpeg."""
from .loader import Loader, LoaderOptions, make_loader  # noqa: E402,F401
from .transforms import CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD, TransformSpec  # noqa: E402,F401
from .datasets_registry import DATASET_KINDS, load_dataset  # noqa: E402,F401
from .demo_dataset import DemoSpec, ensure_demo_dataset  # noqa: E402,F401
