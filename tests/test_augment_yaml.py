"""data.augment as a list of torchvision.transforms.v2 transforms: validated on load, applied by the torch loader
before normalisation, replayed exactly (seeded per sample), refused on DALI."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from haf.pipelines.loaders.augment_list import augment_image, build_augment
from haf.pipelines.readers.splits import DatasetSplits, Split
from haf.training.run_config import load_config

AUGMENT = [{"RandomResizedCrop": {"size": 16, "scale": [0.5, 1.0]}}, {"RandomHorizontalFlip": {}},
           {"ColorJitter": {"brightness": 0.2}}]
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def demo(overrides=(), augment=AUGMENT):
    import json

    return load_config("demo", ["data.image_size=16", f"data.augment={json.dumps(augment)}", *overrides])


def test_a_valid_list_loads_and_is_kept_as_written():
    config = demo()
    assert config.data.augment == AUGMENT


def test_the_readme_s_list_validates(tmp_path):
    import yaml

    from test_own_data import readme_section_block

    block = yaml.safe_load(readme_section_block("yaml", 1))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"base": "demo", **block}))
    assert load_config(path).data.augment == block["data"]["augment"]


@pytest.mark.parametrize("augment, message", [
    ([{"RandomHorizontalFlp": {}}], r"key 'data.augment\[0\]': unknown transform 'RandomHorizontalFlp' \(did you "
                                    r"mean RandomHorizontalFlip"),
    ([{"RandomResizedCrop": {"size": 16}}, {"ColorJitter": {"brightnes": 0.2}}],
     r"key 'data.augment\[1\]': ColorJitter has no option 'brightnes'; valid options: brightness"),
    ([{"RandomResizedCrop": {"size": 16, "scale": "big"}}], r"key 'data.augment\[0\]': RandomResizedCrop\("),
    ([{"Normalize": {"mean": [0, 0, 0], "std": [1, 1, 1]}}], r"Normalize cannot be used here: normalisation is "
                                                              r"data.normalize"),
    ([{"RandomResizedCrop": {"size": 24}}], r"key 'data.augment': the transforms give images of shape \(3, 24, 24\)"),
    ([{"RandomHorizontalFlip": {}, "ColorJitter": {}}], r"key 'data.augment\[0\]': expected \{TransformName"),
])
def test_bad_lists_are_one_line_errors_naming_item_and_key(augment, message):
    with pytest.raises(ValueError, match=message) as info:
        demo(augment=augment)
    assert "\n" not in str(info.value) and "demo.yaml" in str(info.value)


def test_the_dali_backend_is_refused_with_a_list():
    with pytest.raises(ValueError, match=r"key 'data.augment': .*torch backend only"):
        demo(["data.backend=dali"])


def tiny_dataset() -> DatasetSplits:
    from haf.hierarchy import ClassDistances

    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, (8, 20, 24, 3), dtype=np.uint8)
    labels = np.array([0, 1] * 4, dtype=np.int64)
    distances = ClassDistances(classes=("a", "b"), matrix=np.array([[0, 1], [1, 0]]), height=1,
                               convention="lca-height", source="test")
    return DatasetSplits(name="tiny", classes=("a", "b"), distances=distances, hierarchy=None,
                         splits={"train": Split("train", labels, arrays=arrays)})


def loader(dataset, workers=0, augment_list=AUGMENT, backend="torch"):
    from haf.pipelines import make_loader

    return make_loader(dataset, "train", backend=backend, train=True, batch_size=4, image_size=16, workers=workers,
                       seed=3, shuffle=False, normalize=(MEAN, STD), augment_list=augment_list)


def test_the_loader_applies_the_list_then_normalises_as_a_direct_computation():
    from haf.pipelines.loaders.transforms import batch_uniforms

    dataset = tiny_dataset()
    first = loader(dataset)
    first.set_epoch(0)
    images, labels = next(iter(first))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    # The same sample by hand: the list under torch's generator seeded from the sample's first uniform, then
    # x / 255 and the per-channel statistics, in float64.
    uniforms = batch_uniforms(3, 0, 0, 0, 4)
    compose = v2.Compose([v2.RandomResizedCrop(16, scale=(0.5, 1.0)), v2.RandomHorizontalFlip(),
                          v2.ColorJitter(brightness=0.2)])
    for i in range(4):
        raw = torch.from_numpy(dataset["train"].arrays[i]).permute(2, 0, 1).contiguous()
        torch.manual_seed(int(float(uniforms[i, 0]) * 2**53))
        expected = compose(raw).double() / 255.0
        expected = (expected - torch.tensor(MEAN, dtype=torch.float64)[:, None, None]) / torch.tensor(
            STD, dtype=torch.float64)[:, None, None]
        torch.testing.assert_close(images[i].double(), expected, rtol=0, atol=1e-5)
    assert labels.tolist() == [0, 1, 0, 1]


def test_the_augmentation_replays_exactly_and_changes_with_the_epoch():
    dataset = tiny_dataset()
    a, b = loader(dataset), loader(dataset, workers=1)
    a.set_epoch(1)
    b.set_epoch(1)
    torch.manual_seed(123)  # the global generator does not matter
    batches_a = [x for x, _ in a]
    torch.manual_seed(456)
    batches_b = [x for x, _ in b]
    assert all(torch.equal(x, y) for x, y in zip(batches_a, batches_b, strict=True))
    a.set_epoch(2)
    assert not torch.equal(next(iter(a))[0], batches_a[0])


def test_the_loader_refuses_dali_and_wrong_sizes():
    dataset = tiny_dataset()
    with pytest.raises(ValueError, match="torch backend only"):
        loader(dataset, backend="dali")
    too_big = loader(dataset, augment_list=[{"Resize": {"size": [18, 18]}}])
    too_big.set_epoch(0)
    with pytest.raises(ValueError, match=r"shape \(3, 18, 18\).*end the list with a crop or resize to 16"):
        next(iter(too_big))


def test_augment_image_keeps_uint8_and_the_global_generator():
    transform = build_augment([{"RandomCrop": {"size": 8}}])
    image = torch.arange(3 * 12 * 12, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(3, 12, 12)
    state = torch.get_rng_state()
    out = augment_image(transform, image, 0.25, 8)
    assert torch.equal(torch.get_rng_state(), state)
    assert out.dtype == torch.uint8 and torch.equal(out, augment_image(transform, image, 0.25, 8))


def test_a_run_trains_with_the_list(tmp_path):
    from haf.pipelines import ensure_demo_dataset
    from haf.training.loop import run_training

    from train_fixtures import TINY_DEMO_OPTIONS, tiny_run_dict, train_records

    root = ensure_demo_dataset(tmp_path / "data", **TINY_DEMO_OPTIONS)
    raw = tiny_run_dict(root, tmp_path / "run", train={"epochs": 1}, deepspeed={"enabled": False},
                        data={"augment": AUGMENT})
    run_training(load_config(None, data=raw))
    (record,) = train_records(tmp_path / "run")
    assert np.isfinite(record["loss"])
