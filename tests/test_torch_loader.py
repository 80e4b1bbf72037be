"""The reference DataLoader path: stock torchvision equivalence, determinism, sharding, corrupt files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

import functools

from haf.pipelines import CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD
from haf.pipelines import make_loader as _make_loader
from haf.pipelines.loaders.encoded_images import CorruptImageError
from haf.pipelines.readers.splits import DatasetSplits, Split
from haf.pipelines.demo.synthetic_jpegs import write_jpegs

# The JPEG tests exercise the ImageNet recipe at small sizes (which would otherwise default to CIFAR's).
make_loader = functools.partial(_make_loader, augment="imagenet")
N_FILES = 11  # odd on purpose: partial last batches and uneven shards


def jpeg_dataset(folder: Path, count: int = N_FILES) -> DatasetSplits:
    """Small JPEGs of varied size and orientation; label i for file i so every sample is identifiable."""
    files = tuple(write_jpegs(folder, count, size=(48, 64), jitter=0.3, seed=1, portrait_every=3))
    labels = np.arange(count, dtype=np.int64)
    split = Split("val", labels, files=files)
    classes = tuple(f"c{i}" for i in range(count))
    return DatasetSplits("jpegs", classes, None, None, {"train": split, "val": split})


def truncate(path: str, keep: float = 0.5) -> None:
    """Cut a JPEG mid-scan: the header still parses, decoding fails (a download interrupted half-way)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])


def break_huffman_table(path: str) -> None:
    """Overwrite the first Huffman table's code counts with 255s: header and end marker intact, every
    decoder fails ("Bogus Huffman table definition") — corruption only decoding can find."""
    data = bytearray(Path(path).read_bytes())
    start = data.find(b"\xff\xc4")
    data[start + 5 : start + 21] = b"\xff" * 16
    Path(path).write_bytes(bytes(data))


CORRUPTIONS = {"truncated": truncate, "bad-huffman": break_huffman_table}


def collect(loader):
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]), [len(y) for _, y in batches]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> DatasetSplits:
    return jpeg_dataset(tmp_path_factory.mktemp("jpegs"))


def test_eval_matches_stock_torchvision_compose(dataset):
    loader = make_loader(dataset, "val", backend="torch", train=False, batch_size=4, image_size=32, workers=0)
    images, labels, sizes = collect(loader)
    assert sizes == [4, 4, 3] and labels.tolist() == list(range(N_FILES)) and labels.dtype == torch.int64
    stock = v2.Compose([
        v2.Resize(37, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),  # 37 = round(32 / 0.875)
        v2.CenterCrop(32),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    for i, path in enumerate(dataset["val"].files):
        expected = stock(decode_image(path, mode=ImageReadMode.RGB))
        torch.testing.assert_close(images[i], expected, rtol=0, atol=1e-6)


def test_cifar_train_is_pad4_crop_and_flip_of_the_array():
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, size=(9, 32, 32, 3), dtype=np.uint8)
    split = Split("train", np.arange(9, dtype=np.int64), arrays=arrays)
    dataset = DatasetSplits("cifar", tuple("abcdefghi"), None, None, {"train": split})
    loader = make_loader(dataset, "train", backend="torch", train=True, batch_size=3, image_size=32, workers=0, seed=5,
                         augment="cifar")
    mean = torch.tensor(CIFAR100_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR100_STD).view(3, 1, 1)
    flips, offsets = 0, set()
    for images, labels in loader:
        for image, label in zip(images, labels):
            raw = (image * std + mean) * 255  # undo normalisation: integer levels again
            padded = torch.nn.functional.pad(torch.from_numpy(arrays[label]).permute(2, 0, 1).float(), (4, 4, 4, 4))
            crops = {(t, l): padded[:, t:t + 32, l:l + 32] for t in range(9) for l in range(9)}
            matches = [(t, l, f) for (t, l), crop in crops.items() for f in (False, True)
                       if torch.allclose(crop.flip(-1) if f else crop, raw, atol=1e-3)]
            assert len(matches) == 1, f"sample {label}: not a unique pad-4 crop of its array"
            flips += matches[0][2]
            offsets.add(matches[0][:2])
    assert 0 < flips < 9 and len(offsets) > 1  # augmentation actually varies


def test_same_seed_and_epoch_replay_exactly_whatever_the_workers(dataset):
    def run(workers, epoch):
        loader = make_loader(dataset, "train", backend="torch", train=True, batch_size=3, image_size=24,
                             workers=workers, seed=7)
        loader.set_epoch(epoch)
        return collect(loader)

    a, la, _ = run(0, 2)
    b, lb, _ = run(2, 2)
    assert torch.equal(la, lb) and torch.equal(a, b)
    c, lc, _ = run(0, 3)
    assert not torch.equal(la, lc) or not torch.equal(a, c)


def test_eval_shards_cover_every_sample_once(dataset):
    seen = []
    for rank in range(3):
        loader = make_loader(dataset, "val", backend="torch", train=False, batch_size=2, image_size=16, workers=0,
                             rank=rank, world_size=3)
        _, labels, sizes = collect(loader)
        assert len(loader) == len(sizes)
        seen += labels.tolist()
    assert sorted(seen) == list(range(N_FILES))


def test_output_dtype_and_channels_last(dataset):
    loader = make_loader(dataset, "val", backend="torch", train=False, batch_size=4, image_size=16, workers=0,
                         dtype=torch.bfloat16, channels_last=True)
    images, labels = next(iter(loader))
    assert images.dtype == torch.bfloat16 and images.shape == (4, 3, 16, 16)
    assert images.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_jpeg_is_named_or_skipped(tmp_path, corruption):
    dataset = jpeg_dataset(tmp_path, 6)
    bad = dataset["val"].files[4]
    CORRUPTIONS[corruption](bad)
    for workers in (0, 1):
        loader = make_loader(dataset, "val", backend="torch", train=False, batch_size=4, image_size=16, workers=workers)
        with pytest.raises(CorruptImageError, match=bad):
            list(loader)
    loader = make_loader(dataset, "val", backend="torch", train=False, batch_size=4, image_size=16, workers=1,
                         on_error="skip")
    _, labels, sizes = collect(loader)
    assert labels.tolist() == [0, 1, 2, 3, 5] and sizes == [4, 1]
    assert loader.skipped_files == [bad]


@pytest.mark.timeout(60)
def test_missing_and_non_image_files_are_named(tmp_path):
    dataset = jpeg_dataset(tmp_path, 3)
    Path(dataset["val"].files[1]).write_bytes(b"<html>not an image</html>")
    loader = make_loader(dataset, "val", backend="torch", train=False, batch_size=3, image_size=16, workers=0)
    with pytest.raises(ValueError, match="img_00001.jpg"):
        list(loader)
    Path(dataset["val"].files[2]).unlink()
    loader = make_loader(dataset, "val", backend="torch", train=False, batch_size=3, image_size=16, workers=0,
                         on_error="skip")
    with pytest.raises(FileNotFoundError, match="img_00002.jpg"):  # a missing file is a broken dataset: never skipped
        list(loader)
