"""The loader contract shared by both backends: epoch plan, sharding, transform geometry, make_loader checks.

No DALI here (see test_dali_pipeline.py); the reference DataLoader path has its own file (test_torch_loader.py).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from haf.pipelines import make_loader
from haf.pipelines.loaders.epoch_plan import batch_slices, epoch_order, shard_indices
from haf.pipelines.loaders.loader import LoaderOptions
from haf.pipelines.readers.splits import DatasetSplits, Split
from haf.pipelines.loaders.transforms import (
    NUM_UNIFORMS,
    TransformSpec,
    batch_uniforms,
    center_crop_box,
    plan_sample,
    random_resized_crop_box,
    resize_shorter,
)


def _plan(n, ws, batch, *, train, drop_last, epoch=0, seed=0):
    shards = [
        shard_indices(n, shuffle=train, seed=seed, epoch=epoch, rank=r, world_size=ws, drop_last=drop_last, pad=train)
        for r in range(ws)
    ]
    batches = [[s[sl] for sl in batch_slices(len(s), batch, drop_last)] for s in shards]
    return shards, batches


@pytest.mark.parametrize("n, ws, batch", [(1, 1, 4), (10, 3, 4), (13, 4, 2), (7, 8, 3), (100, 3, 7)])
def test_eval_epoch_sees_every_sample_exactly_once(n, ws, batch):
    shards, batches = _plan(n, ws, batch, train=False, drop_last=False)
    seen = np.concatenate([np.concatenate(b) if b else np.empty(0, np.int64) for b in batches])
    assert sorted(seen.tolist()) == list(range(n))  # every sample once, no padding duplicates
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.parametrize("n, ws, batch", [(10, 3, 2), (13, 4, 3), (100, 3, 7), (64, 2, 8)])
def test_train_drop_last_gives_equal_disjoint_full_batches(n, ws, batch):
    shards, batches = _plan(n, ws, batch, train=True, drop_last=True, epoch=3)
    assert len({len(b) for b in batches}) == 1  # same step count on every rank: collectives stay in step
    assert all(len(x) == batch for b in batches for x in b)
    seen = np.concatenate([np.concatenate(b) for b in batches if b])
    assert len(set(seen.tolist())) == len(seen)  # no duplicates across ranks
    assert n - len(seen) <= ws - 1 + ws * (batch - 1)  # the documented bound on samples sitting out


def test_train_without_drop_last_pads_by_wrapping():
    shards, batches = _plan(10, 4, 2, train=True, drop_last=False)
    assert [len(s) for s in shards] == [3, 3, 3, 3]
    seen = np.concatenate(shards)
    assert set(seen.tolist()) == set(range(10)) and len(seen) - 10 == 2  # 2 documented duplicates


def test_order_is_a_function_of_seed_and_epoch():
    a = epoch_order(50, shuffle=True, seed=3, epoch=1)
    assert np.array_equal(a, epoch_order(50, shuffle=True, seed=3, epoch=1))
    assert not np.array_equal(a, epoch_order(50, shuffle=True, seed=3, epoch=2))
    assert not np.array_equal(a, epoch_order(50, shuffle=True, seed=4, epoch=1))
    assert np.array_equal(epoch_order(5, shuffle=False, seed=3, epoch=1), np.arange(5))
    u = batch_uniforms(1, 2, 0, 5, 8)
    assert u.shape == (8, NUM_UNIFORMS) and np.array_equal(u, batch_uniforms(1, 2, 0, 5, 8))
    assert not np.array_equal(u, batch_uniforms(1, 2, 1, 5, 8))  # ranks draw different augmentations


def test_random_resized_crop_box_stays_in_range():
    rng = np.random.default_rng(0)
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    areas = []
    for height, width in [(375, 500), (500, 375), (37, 61), (224, 224), (3, 400)]:
        for _ in range(300):
            top, left, h, w = random_resized_crop_box(rng.random(NUM_UNIFORMS), height, width, scale, ratio)
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h >= 1 and w >= 1
            if (height, width) == (375, 500):
                areas.append(h * w / (height * width))
                # rounding of w and h to integers can move the ratio by at most one pixel either way
                assert (w - 1) / (h + 1) <= ratio[1] + 1e-9 and (w + 1) / (h - 1) >= ratio[0] - 1e-9
    # torchvision's area fraction is U(0.08, 1) conditioned on fitting: mean well inside (0.08, 1)
    assert 0.3 < float(np.mean(areas)) < 0.6
    # 3 × 400 px: no attempt fits a 3/4..4/3 box, so the fallback is the centred widest box of ratio 4/3
    fallback = random_resized_crop_box(np.full(NUM_UNIFORMS, 0.99), 3, 400, scale, ratio)
    assert fallback == (0, (400 - 4) // 2, 3, 4)


@pytest.mark.parametrize("height, width", [(375, 500), (500, 375), (37, 61), (256, 256), (301, 300)])
def test_eval_geometry_matches_torchvision(height, width):
    image = torch.arange(height * width, dtype=torch.int32).reshape(1, height, width)
    assert tuple(F.resize(image, 256, antialias=False).shape[-2:]) == resize_shorter(height, width, 256)
    top, left, h, w = center_crop_box(height, width, 32)
    assert torch.equal(F.center_crop(image, [32, 32]), F.crop(image, top, left, h, w))


def test_plan_sample_covers_each_augment():
    u = np.full(NUM_UNIFORMS, 0.25)
    eval_spec = TransformSpec.for_augment("imagenet", train=False, image_size=224, crop_bottom=20)
    ops = plan_sample(eval_spec, u, 395, 500)
    assert ops.region == (0, 0, 375, 500) and ops.resize == (256, 341) and ops.crop == (16, 58, 224, 224)
    assert not ops.flip
    cifar = TransformSpec.for_augment("cifar", train=True, image_size=32)
    ops = plan_sample(cifar, u, 32, 32)
    assert ops.region == (-2, -2, 32, 32) and ops.resize == (32, 32) and ops.flip  # u = 0.25 < 0.5 → flip
    offsets = {plan_sample(cifar, row, 32, 32).region[:2] for row in np.random.default_rng(0).random((2000, 23))}
    assert offsets == {(t, l) for t in range(-4, 5) for l in range(-4, 5)}  # pad-4: all 81 offsets reachable


def test_spec_and_options_reject_bad_values():
    with pytest.raises(ValueError, match="augment"):
        TransformSpec.for_augment("mnist", train=True, image_size=32)
    with pytest.raises(ValueError, match="crop_bottom"):
        spec = TransformSpec.for_augment("imagenet", train=True, image_size=8, crop_bottom=50)
        plan_sample(spec, np.zeros(NUM_UNIFORMS), 40, 40)
    base = dict(backend="torch", train=True, batch_size=2, image_size=32, workers=0)
    for bad, key in [({"backend": "tf"}, "backend"), ({"rank": 2, "world_size": 2}, "rank"),
                     ({"on_error": "ignore"}, "on_error"), ({"batch_size": 0}, "batch_size"),
                     ({"dtype": torch.int8}, "dtype"), ({"dali_device": "gpu"}, "dali_device")]:
        with pytest.raises(ValueError, match=key):
            LoaderOptions(**{**base, **bad})


def test_make_loader_names_missing_split_and_derives_defaults():
    arrays = np.zeros((5, 32, 32, 3), np.uint8)
    dataset = DatasetSplits("toy", ("a",), None, None, {"train": Split("train", np.zeros(5, np.int64), arrays=arrays)})
    with pytest.raises(KeyError, match="no split 'val'"):
        make_loader(dataset, "val", backend="torch", train=False, batch_size=2, image_size=32, workers=0)
    loader = make_loader(dataset, "train", backend="torch", train=True, batch_size=2, image_size=32, workers=0)
    assert loader.options.augment == "cifar" and loader.options.drop_last and loader.options.shuffle
    assert len(loader) == 2 == math.floor(5 / 2)
    evaluation = make_loader(dataset, "train", backend="torch", train=False, batch_size=2, image_size=32, workers=0)
    assert len(evaluation) == 3 and not evaluation.options.shuffle
    files = Split("train", np.zeros(2, np.int64), files=("a.jpg", "b.jpg"))
    photos = DatasetSplits("photos", ("a",), None, None, {"train": files})
    for size, augment in [(224, "imagenet"), (64, "cifar")]:
        loader = make_loader(photos, "train", backend="torch", train=True, batch_size=1, image_size=size, workers=0)
        assert loader.options.augment == augment


def test_header_size_matches_pillow_for_every_layout(tmp_path):
    from PIL import Image

    from haf.pipelines.loaders.encoded_images import CorruptImageError, encoded_size, read_encoded

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    thumbnail_exif = Image.Exif()
    thumbnail_exif[0x0112] = 6  # orientation "rotate 90": sizes stay the stored grid's
    cases = {
        "baseline.jpg": dict(format="JPEG", quality=90),
        "progressive.jpg": dict(format="JPEG", progressive=True),
        "exif.jpg": dict(format="JPEG", exif=thumbnail_exif.tobytes()),
        "restart.jpg": dict(format="JPEG", restart_marker_rows=1),
        "rgb.png": dict(format="PNG"),
        "image.bmp": dict(format="BMP"),
        "image.webp": dict(format="WEBP"),
    }
    for name, options in cases.items():
        path = str(tmp_path / name)
        image.save(path, **options)
        assert encoded_size(read_encoded(path), path) == (37, 53), name
    gray = str(tmp_path / "gray.jpg")
    Image.fromarray(pixels[..., 0]).save(gray)
    assert encoded_size(read_encoded(gray), gray) == (37, 53)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((tmp_path / "baseline.jpg").read_bytes()[:40])  # ends inside the quantisation tables
    with pytest.raises(CorruptImageError, match="cut.jpg"):
        encoded_size(read_encoded(str(cut)), str(cut))
    data = (tmp_path / "baseline.jpg").read_bytes()
    cut.write_bytes(data[: len(data) - 10])  # scan data cut: header fine, no end-of-image marker
    with pytest.raises(CorruptImageError, match="truncated JPEG"):
        encoded_size(read_encoded(str(cut)), str(cut))
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(data + b"\0" * 5000 + b"trailer")  # bytes after the end marker: decoders accept them
    assert encoded_size(read_encoded(str(padded)), str(padded)) == (37, 53)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(CorruptImageError, match="empty.jpg"):
        read_encoded(str(empty))
