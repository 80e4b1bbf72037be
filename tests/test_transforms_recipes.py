"""The reference recipes' transforms (docs/RECIPES.md): squash eval, FGVC's squash + padded crop, CIFAR's reflect
crop; each plan against stock torchvision / numpy, and the DALI graph against the reference loader."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from haf.pipelines import make_loader
from haf.pipelines.readers.splits import DatasetSplits, Split
from haf.pipelines.demo.synthetic_jpegs import write_jpegs
from haf.pipelines.loaders.transforms import (
    EVAL_TRANSFORMS,
    NUM_UNIFORMS,
    TRAIN_TRANSFORMS,
    TransformSpec,
    batch_uniforms,
    plan_sample,
)

FGVC_STATS = ((0.4880712, 0.5191783, 0.54383063), (0.21482512, 0.20683703, 0.23937796))
CIFAR_STATS = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
ONE_LEVEL = 1.0 / (255.0 * 0.2068) + 1e-5  # one uint8 level after dividing by the smallest FGVC std


def spec(op: str, size: int, stats=FGVC_STATS, crop_bottom: int = 0) -> TransformSpec:
    return TransformSpec(op, op in TRAIN_TRANSFORMS, size, stats[0], stats[1], crop_bottom=crop_bottom)


def offsets(s: TransformSpec, height: int, width: int, field: str) -> set:
    rows = np.random.default_rng(0).random((3000, NUM_UNIFORMS))
    return {getattr(plan_sample(s, row, height, width), field)[:2] for row in rows}


def test_plans_of_the_recipe_transforms():
    squash = plan_sample(spec("squash", 224, crop_bottom=20), np.zeros(NUM_UNIFORMS), 420, 700)
    assert squash.region == (0, 0, 400, 700) and squash.resize == (224, 224) and squash.crop == (0, 0, 224, 224)
    assert not squash.flip  # an eval transform never flips
    fgvc = spec("squash-pad-crop", 224)
    ops = plan_sample(fgvc, np.full(NUM_UNIFORMS, 0.25), 300, 500)
    assert ops.region == (0, 0, 300, 500) and ops.resize == (224, 224) and ops.flip
    # torchvision RandomCrop(224, padding=4): 9 offsets per axis, −4..+4 in the squashed image
    assert offsets(fgvc, 300, 500, "crop") == {(t, l) for t in range(-4, 5) for l in range(-4, 5)}
    cifar = spec("reflect-pad-crop", 32, CIFAR_STATS)
    assert plan_sample(cifar, np.zeros(NUM_UNIFORMS), 32, 32).reflect_pad == 4
    # the reference's crop offsets 0..7 of the 40-px padded image: −4..+3 in image coordinates
    assert offsets(cifar, 32, 32, "region") == {(t, l) for t in range(-4, 4) for l in range(-4, 4)}


def test_spec_rejects_unknown_transforms_and_bad_statistics():
    with pytest.raises(ValueError, match="expected one of"):
        TransformSpec("center-crop", False, 32, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="train transform"):
        TransformSpec.for_split("squash", "squash", train=True, image_size=32, mean=(0,) * 3, std=(1,) * 3)
    with pytest.raises(ValueError, match="std"):
        TransformSpec("squash", False, 32, (0.5,) * 3, (0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="reflect-pad"):
        plan_sample(spec("reflect-pad-crop", 4), np.zeros(NUM_UNIFORMS), 4, 4)
    assert set(TRAIN_TRANSFORMS).isdisjoint(EVAL_TRANSFORMS)


@pytest.fixture(scope="module")
def wide_jpegs(tmp_path_factory):
    """Wide aircraft-like photos with a banner: the squash must keep the whole width."""
    folder = tmp_path_factory.mktemp("wide")
    files = tuple(write_jpegs(folder, 5, size=(60, 110), jitter=0.2, seed=3, portrait_every=4))
    split = Split("train", np.arange(5), files=files, crop_bottom=3)
    return DatasetSplits("wide", tuple("abcde"), None, None, {"train": split, "val": split})


def reference_images(files, crop_bottom):
    images = []
    for path in files:
        image = decode_image(torch.from_numpy(np.fromfile(path, dtype=np.uint8)), mode=ImageReadMode.RGB)
        images.append(image[:, : image.shape[1] - crop_bottom])
    return images


def test_squash_eval_is_torchvision_resize_of_the_whole_image(wide_jpegs):
    loader = make_loader(wide_jpegs, "val", backend="torch", train=False, batch_size=5, image_size=24, workers=0,
                         transforms=("squash-pad-crop", "squash"), normalize=FGVC_STATS)
    got = next(iter(loader))[0]
    expected = v2.Compose([v2.Resize((24, 24), antialias=True), v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(*FGVC_STATS)])
    ref = torch.stack([expected(image) for image in reference_images(wide_jpegs["val"].files, 3)])
    assert (got - ref).abs().max().item() <= ONE_LEVEL


def test_squash_pad_crop_is_resize_then_padded_random_crop(wide_jpegs):
    loader = make_loader(wide_jpegs, "train", backend="torch", train=True, batch_size=5, image_size=24, workers=0,
                         transforms=("squash-pad-crop", "squash"), normalize=FGVC_STATS, shuffle=False)
    got = next(iter(loader))[0]
    ops = [plan_sample(loader.spec, row, 57, 110) for row in batch_uniforms(0, 0, 0, 0, 5)]
    refs = []
    for image, op in zip(reference_images(wide_jpegs["train"].files, 3), ops):
        squashed = F.resize(image, [24, 24], antialias=True)
        top, left, h, w = op.crop
        padded = F.pad(squashed, [4, 4, 4, 4], fill=0)  # RandomCrop(padding=4): crop in the padded image
        crop = padded[:, top + 4: top + 4 + h, left + 4: left + 4 + w]
        crop = F.horizontal_flip(crop) if op.flip else crop
        refs.append(F.normalize(crop.float() / 255, *FGVC_STATS))
    assert (got - torch.stack(refs)).abs().max().item() <= ONE_LEVEL
    assert any(op.crop[:2] != (0, 0) for op in ops)  # the comparison covers shifted (padded) crops


def cifar_arrays(count=12):
    rng = np.random.default_rng(7)
    arrays = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    split = Split("train", rng.integers(0, 3, size=count), arrays=arrays)
    return DatasetSplits("cifar", tuple("abc"), None, None, {"train": split, "test": split}), arrays


def test_reflect_pad_crop_is_numpy_reflect_then_crop():
    dataset, arrays = cifar_arrays()
    loader = make_loader(dataset, "train", backend="torch", train=True, batch_size=12, image_size=32, workers=0,
                         transforms=("reflect-pad-crop", "squash"), normalize=CIFAR_STATS, shuffle=False)
    got = next(iter(loader))[0]
    refs = []
    for array, row in zip(arrays, batch_uniforms(0, 0, 0, 0, 12)):
        op = plan_sample(loader.spec, row, 32, 32)
        padded = np.pad(array, ((4, 4), (4, 4), (0, 0)), mode="reflect")
        top, left = op.region[0] + 4, op.region[1] + 4
        crop = padded[top: top + 32, left: left + 32]
        crop = crop[:, ::-1] if op.flip else crop
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float() / 255
        refs.append(F.normalize(x, *CIFAR_STATS))
    torch.testing.assert_close(got, torch.stack(refs), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------ DALI against the reference
def both(dataset, split, **kwargs):
    pytest.importorskip("nvidia.dali")
    out = []
    for backend in ("torch", "dali"):
        loader = make_loader(dataset, split, backend=backend, **kwargs)
        out.append(torch.cat([x for x, _ in loader]))
    return out


def test_dali_squash_eval_matches_the_reference(wide_jpegs):
    ref, got = both(wide_jpegs, "val", train=False, batch_size=2, image_size=24, workers=1,
                    transforms=("squash-pad-crop", "squash"), normalize=FGVC_STATS)
    assert got.shape == ref.shape == (5, 3, 24, 24)
    inner = (got - ref)[..., 1:-1, 1:-1].abs()  # border rows: the filters' edge handling differs (test_dali_pipeline)
    assert inner.max().item() <= ONE_LEVEL and (got - ref).abs().mean().item() <= 0.5 * ONE_LEVEL


def test_dali_squash_pad_crop_matches_the_reference(wide_jpegs):
    ref, got = both(wide_jpegs, "train", train=True, batch_size=2, image_size=24, workers=1, drop_last=False,
                    transforms=("squash-pad-crop", "squash"), normalize=FGVC_STATS)
    # A wrong offset or a missed flip moves whole columns: tens of levels. The padded border and the resize's
    # edge rows may differ by the filters' edge handling; the mean bounds them.
    assert (got - ref).abs().mean().item() <= ONE_LEVEL


def test_dali_reflect_pad_crop_matches_the_reference_exactly():
    dataset, _ = cifar_arrays()
    ref, got = both(dataset, "train", train=True, batch_size=4, image_size=32, workers=1, seed=3,
                    transforms=("reflect-pad-crop", "squash"), normalize=CIFAR_STATS)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
