"""DALI pipelines against the reference DataLoader: same batches, same order, same crops; resume; errors.

CPU operators here (device_id=None); the GPU graph is the same definition with "mixed"/"gpu" devices, exercised
by the @pytest.mark.gpu tests on a CUDA machine.

Tolerances, measured and explained:
- Decoding: DALI's CPU decoder (nvImageCodec → libjpeg-turbo) and torchvision's ``decode_image`` (libjpeg-turbo)
  give identical pixels on our JPEGs (max difference 0), and DALI's ROI decoding equals decode-then-crop.
- Resampling: both use the triangle (bilinear + antialias) filter in float and round to uint8; accumulation order
  differs, so values may differ by one level: 1 / (255 · std) ≤ 1 / (255 · 0.224) = 0.0175 after normalising.
  At the image's outer rows/columns the two differ by more (up to ~8 levels when shrinking 2×): DALI clamps the
  filter to the edge pixel, torchvision renormalises the truncated filter. The eval centre crop removes those
  borders (256 → 224), so eval tensors agree within one level everywhere; for RandomResizedCrop outputs the
  comparison excludes the 1-pixel output border and bounds the mean difference over the whole image.
- CIFAR arrays without resampling: pure slicing, flipping and normalising, equal to float32 rounding.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

from haf.pipelines.loaders.encoded_images import CorruptImageError  # noqa: E402
from haf.pipelines.readers.splits import DatasetSplits, Split  # noqa: E402
from haf.pipelines.demo.synthetic_jpegs import write_jpegs  # noqa: E402
from test_torch_loader import CORRUPTIONS, N_FILES, collect, jpeg_dataset, make_loader, truncate  # noqa: E402

ONE_LEVEL = 1.0 / (255.0 * 0.224) + 1e-5  # one uint8 level after dividing by the smallest ImageNet std
HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> DatasetSplits:
    return jpeg_dataset(tmp_path_factory.mktemp("jpegs"))


def both(dataset, split="val", **kwargs):
    """The same loader on both backends, collected."""
    out = {}
    for backend in ("torch", "dali"):
        loader = make_loader(dataset, split, backend=backend, **kwargs)
        out[backend] = collect(loader) + (len(loader),)
    return out["torch"], out["dali"]


@pytest.mark.parametrize("image_size", [32, 20])
def test_eval_tensors_match_the_reference(dataset, image_size):
    (ref, ref_labels, ref_sizes, ref_len), (got, labels, sizes, length) = both(
        dataset, train=False, batch_size=4, image_size=image_size, workers=1
    )
    assert labels.tolist() == ref_labels.tolist() == list(range(N_FILES))
    assert sizes == ref_sizes == [4, 4, 3] and length == ref_len == 3
    assert got.shape == (N_FILES, 3, image_size, image_size) and got.dtype == torch.float32
    assert (got - ref).abs().max().item() <= ONE_LEVEL


@pytest.mark.timeout(120)
def test_eval_parity_at_imagenet_size_with_roi_decoding(tmp_path):
    """500×375-class photos → 256 → centre 224: the DALI graph decodes only a window around the crop and
    resamples it straight to 224 (``fused_centre_crop``); the reference resizes the whole image, then crops."""
    from haf.pipelines.loaders.dali_loader import fused_centre_crop
    from haf.pipelines.loaders.transforms import TransformSpec, plan_sample

    files = tuple(write_jpegs(tmp_path, 3, size=(375, 500), jitter=0.1, seed=5, portrait_every=2))
    split = Split("val", np.arange(3), files=files, crop_bottom=7)  # odd banner crop: region ≠ whole image
    dataset = DatasetSplits("photos", ("a", "b", "c"), None, None, {"val": split})
    (ref, _, _, _), (got, _, _, _) = both(dataset, train=False, batch_size=2, image_size=224, workers=1)
    assert got.shape == (3, 3, 224, 224)
    assert (got - ref).abs().max().item() <= ONE_LEVEL
    spec = TransformSpec.for_augment("imagenet", train=False, image_size=224, crop_bottom=7)
    ops = plan_sample(spec, np.zeros(23), 375, 500)
    window, start, end, size = fused_centre_crop(ops)
    assert size == (224, 224) and window[2] < 368 and window[3] < 500  # only part of the image is decoded
    assert window[0] + start[0] >= 0 and window[0] + end[0] <= 368  # ROI inside the banner-free region


def test_grayscale_and_png_inputs_become_rgb_alike(tmp_path):
    """ImageNet holds grayscale and CMYK JPEGs and PNGs: both backends decode every one of them to RGB."""
    from PIL import Image

    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, size=(40, 52, 4), dtype=np.uint8)
    images = {
        "gray.jpg": Image.fromarray(pixels[..., 0]),
        "cmyk.jpg": Image.fromarray(pixels, "RGBA").convert("CMYK"),
        "rgba.png": Image.fromarray(pixels, "RGBA"),
        "palette.png": Image.fromarray(pixels[..., :3]).convert("P"),
        "gray.png": Image.fromarray(pixels[..., 1]),
    }
    files = []
    for name, image in images.items():
        image.save(tmp_path / name)
        files.append(str(tmp_path / name))
    split = Split("val", np.arange(len(files)), files=tuple(files))
    dataset = DatasetSplits("mixed", tuple(images), None, None, {"val": split})
    (ref, _, _, _), (got, _, _, _) = both(dataset, train=False, batch_size=5, image_size=32, workers=1)
    assert got.shape == (5, 3, 32, 32)
    per_file = (got - ref).abs().amax(dim=(1, 2, 3))
    assert per_file.max().item() <= ONE_LEVEL, dict(zip(images, per_file.tolist()))


def test_train_crops_and_flips_match_the_reference(dataset):
    kwargs = dict(train=True, batch_size=3, image_size=24, workers=1, seed=11, drop_last=False)
    (ref, ref_labels, _, _), (got, labels, _, _) = both(dataset, split="train", **kwargs)
    assert labels.tolist() == ref_labels.tolist() and sorted(set(labels.tolist())) == list(range(N_FILES))
    inner = (got - ref)[..., 1:-1, 1:-1].abs()
    assert inner.max().item() <= ONE_LEVEL  # a wrong box or a missed flip would differ by tens of levels
    assert (got - ref).abs().mean().item() <= 0.5 * ONE_LEVEL


def test_cifar_arrays_match_the_reference_exactly():
    rng = np.random.default_rng(3)
    arrays = rng.integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
    split = Split("train", rng.integers(0, 4, size=10), arrays=arrays)
    dataset = DatasetSplits("cifar", tuple("abcd"), None, None, {"train": split, "test": split})
    for train in (True, False):
        name = "train" if train else "test"
        (ref, ref_labels, _, _), (got, labels, _, _) = both(dataset, name, train=train, batch_size=4, image_size=32,
                                                             workers=2, seed=1, augment="cifar")
        assert torch.equal(labels, ref_labels)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_cifar_recipe_on_files_matches_the_reference(tmp_path):
    """32-px JPEGs (the demo dataset's kind): decode, pad-4 crop, flip, no resampling → equal to rounding;
    48×40 JPEGs get the fixed resize to 32 as well → one level inside the 1-pixel border (see module doc)."""
    for size, atol, inner in [((32, 32), 1e-5, 0), ((48, 40), ONE_LEVEL, 1)]:
        files = tuple(write_jpegs(tmp_path / f"{size[0]}x{size[1]}", 5, size=size, seed=2))
        split = Split("train", np.arange(5), files=files)
        dataset = DatasetSplits("small", tuple("abcde"), None, None, {"train": split})
        (ref, ref_labels, _, _), (got, labels, _, _) = both(dataset, "train", train=True, batch_size=2, image_size=32,
                                                             workers=1, augment="cifar", drop_last=False)
        assert torch.equal(labels, ref_labels)
        diff = (got - ref).abs()
        assert diff[..., inner:32 - inner, inner:32 - inner].max().item() <= atol


def test_resume_replays_an_epoch_exactly(dataset):
    kwargs = dict(backend="dali", train=True, batch_size=3, image_size=16, workers=2, seed=4)
    first = make_loader(dataset, "train", **kwargs)
    epochs = []
    for epoch in range(3):
        first.set_epoch(epoch)
        epochs.append(collect(first))
    assert not torch.equal(epochs[1][0], epochs[2][0])  # a new epoch is a new order and new crops
    resumed = make_loader(dataset, "train", **{**kwargs, "workers": 1})
    resumed.set_epoch(2)
    images, labels, sizes = collect(resumed)
    assert torch.equal(labels, epochs[2][1]) and torch.equal(images, epochs[2][0]) and sizes == epochs[2][2]
    assert sizes == [3, 3, 3] and len(first) == 3  # drop_last: 11 → 3 full batches
    for backend in ("dali", "torch"):  # resume inside the epoch: batches 1.. exactly as in the full pass
        midway = make_loader(dataset, "train", **{**kwargs, "backend": backend})
        midway.set_epoch(2, start_batch=1)
        images, labels, sizes = collect(midway)
        assert sizes == [3, 3] and torch.equal(labels, epochs[2][1][3:])
        diff = (images - epochs[2][0][3:]).abs()
        if backend == "dali":
            assert diff.max().item() == 0
        else:  # the reference against DALI: within a level away from the border (module docstring)
            assert diff[..., 1:-1, 1:-1].max().item() <= ONE_LEVEL
        assert len(midway) == 3


def test_ranks_shard_the_epoch(dataset):
    seen = []
    for rank in range(2):
        loader = make_loader(dataset, "val", backend="dali", train=False, batch_size=4, image_size=16, workers=1,
                             rank=rank, world_size=2)
        _, labels, sizes = collect(loader)
        assert len(sizes) == len(loader)
        seen += labels.tolist()
    assert sorted(seen) == list(range(N_FILES))  # each sample exactly once, no padding
    train = []
    for rank in range(2):
        loader = make_loader(dataset, "train", backend="dali", train=True, batch_size=2, image_size=16, workers=1,
                             rank=rank, world_size=2, seed=9)
        train.append(collect(loader)[1].tolist())
    assert [len(t) for t in train] == [4, 4]  # 11 → 10 (multiple of 2 ranks) → 5 per rank → 2 full batches of 2
    assert not set(train[0]) & set(train[1])  # disjoint shards


def test_dtype_and_channels_last(dataset):
    loader = make_loader(dataset, "val", backend="dali", train=False, batch_size=4, image_size=16, workers=1,
                         dtype=torch.bfloat16, channels_last=True)
    images, labels = next(iter(loader))
    assert images.dtype == torch.bfloat16 and images.shape == (4, 3, 16, 16) and labels.dtype == torch.int64
    assert images.is_contiguous(memory_format=torch.channels_last)
    reference = make_loader(dataset, "val", backend="torch", train=False, batch_size=4, image_size=16, workers=0)
    expected, _ = next(iter(reference))
    assert (images.float() - expected).abs().max().item() <= ONE_LEVEL + 2.0 ** -7 * 2.7  # + bf16 rounding of |x|≤2.7


@pytest.mark.timeout(60)
@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_jpeg_is_named_or_skipped_and_counted(tmp_path, corruption):
    """"truncated" is caught when the source reads the file; "bad-huffman" only by DALI's decoder, inside the
    pipeline: the loader names the file by re-decoding the failed batch and restarts at that batch to skip it."""
    dataset = jpeg_dataset(tmp_path, 9)
    bad = dataset["val"].files[5]
    CORRUPTIONS[corruption](bad)
    loader = make_loader(dataset, "val", backend="dali", train=False, batch_size=4, image_size=16, workers=1)
    with pytest.raises(CorruptImageError, match="img_00005.jpg"):
        list(loader)
    loader = make_loader(dataset, "val", backend="dali", train=False, batch_size=4, image_size=16, workers=1,
                         on_error="skip")
    images, labels, sizes = collect(loader)
    assert labels.tolist() == [0, 1, 2, 3, 4, 6, 7, 8] and sizes == [4, 3, 1]
    assert loader.skipped_files == [bad] and loader.num_skipped == 1
    reference = make_loader(dataset, "val", backend="torch", train=False, batch_size=4, image_size=16, workers=0,
                            on_error="skip")
    ref_images, ref_labels, ref_sizes = collect(reference)
    assert torch.equal(ref_labels, labels) and ref_sizes == sizes and reference.skipped_files == [bad]
    assert (images - ref_images).abs().max().item() <= ONE_LEVEL
    images, labels, _ = collect(loader)  # the next epoch skips it up front
    assert len(labels) == 8 and loader.skipped_files == [bad]


@pytest.mark.timeout(60)
def test_non_image_file_is_named_before_decoding(tmp_path):
    dataset = jpeg_dataset(tmp_path, 4)
    Path(dataset["val"].files[2]).write_bytes(b"\xff\xd8 not really a jpeg")
    loader = make_loader(dataset, "val", backend="dali", train=False, batch_size=4, image_size=16, workers=1)
    with pytest.raises(ValueError, match="img_00002.jpg"):
        list(loader)
    loader = make_loader(dataset, "val", backend="dali", train=False, batch_size=4, image_size=16, workers=1,
                         on_error="skip")
    _, labels, _ = collect(loader)
    assert labels.tolist() == [0, 1, 3] and loader.num_skipped == 1


@pytest.mark.gpu
@pytest.mark.timeout(120)
@pytest.mark.parametrize("train", [False, True])
def test_gpu_decoding_matches_the_reference(dataset, train):
    """Mixed (nvJPEG) decoding may differ from libjpeg-turbo by a few levels (different IDCT and chroma
    upsampling); the bound is 4 levels in the interior and a mean under one level."""
    kwargs = dict(train=train, batch_size=4, image_size=24, workers=2, seed=2, drop_last=False)
    ref = collect(make_loader(dataset, "train", backend="torch", **kwargs))
    loader = make_loader(dataset, "train", backend="dali", device="cuda", dtype=torch.float16, channels_last=True,
                         **kwargs)
    got = collect(loader)
    assert loader.options.dali_device == "gpu"
    assert got[0].device.type == "cuda" and got[0].dtype == torch.float16
    assert torch.equal(got[1].cpu(), ref[1])
    diff = (got[0].float().cpu() - ref[0]).abs()
    assert diff[..., 1:-1, 1:-1].max().item() <= 4 * ONE_LEVEL and diff.mean().item() <= ONE_LEVEL


@pytest.mark.gpu
@pytest.mark.timeout(120)
def test_gpu_cifar_and_truncated_file(tmp_path):
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    split = Split("train", np.arange(6), arrays=arrays)
    cifar = DatasetSplits("cifar", tuple("abcdef"), None, None, {"train": split})
    kwargs = dict(train=True, batch_size=4, image_size=32, augment="cifar")
    ref = collect(make_loader(cifar, "train", backend="torch", workers=0, **kwargs))
    got = collect(make_loader(cifar, "train", backend="dali", workers=1, device="cuda", **kwargs))
    torch.testing.assert_close(got[0].cpu(), ref[0], rtol=0, atol=1e-5)
    dataset = jpeg_dataset(tmp_path, 5)
    truncate(dataset["val"].files[3])  # caught by the source's end-marker check, whatever nvJPEG would do
    loader = make_loader(dataset, "val", backend="dali", train=False, batch_size=4, image_size=16, workers=1,
                         device="cuda", on_error="skip")
    _, labels, _ = collect(loader)
    assert labels.cpu().tolist() == [0, 1, 2, 4] and loader.num_skipped == 1
