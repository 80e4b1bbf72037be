"""Every paper config against docs/RECIPES.md (parsed), and every config trained two steps on a tiny fake of its
dataset in the real on-disk layout, ending with the final test on the real test split."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from haf.pipelines.loaders import transforms as T
from haf.training.run_config import load_config
from haf.training.schema import EvalTransform, TrainTransform

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DATASETS = ("cifar100", "fgvc-aircraft", "inat2019", "tiered-imagenet")
DATASET_CONFIGS = sorted(p for d in DATASETS for p in (CONFIGS / d).glob("*.yaml") if not p.name.startswith("_"))
# configs/cifar100-lt train two steps in tests/test_long_tail.py, on a fake CIFAR-100 large enough for the
# long-tailed subset and with the warm-up their 1-epoch run needs cut.
ALL_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if not p.name.startswith("_") and p.name != "base.yaml"
                     and p.parent.name != "cifar100-lt")

# Per dataset (the prose of each RECIPES.md section): batch, px, train/eval transform, mean, std.
DATA = {
    "cifar100": (64, 32, "reflect-pad-crop", "squash", (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "fgvc-aircraft": (64, 224, "squash-pad-crop", "squash", (0.4880712, 0.5191783, 0.54383063),
                      (0.21482512, 0.20683703, 0.23937796)),
    "inat2019": (256, 224, "random-resized-crop", "squash", (0.454, 0.474, 0.367), (0.237, 0.230, 0.249)),
    "tiered-imagenet": (256, 224, "random-resized-crop", "squash", T.IMAGENET_MEAN, T.IMAGENET_STD),
}


def recipe_rows() -> dict[tuple[str, str], dict[str, str]]:
    """(dataset, config stem) → the row of its table in docs/RECIPES.md, by column name."""
    rows, dataset, header = {}, None, None
    for line in (ROOT / "docs" / "RECIPES.md").read_text().splitlines():
        if line.startswith("## "):
            dataset, header = line[3:].strip(), None
        elif dataset in DATASETS and line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
            else:
                rows[dataset, cells[0]] = dict(zip(header, cells))
    return rows


ROWS = recipe_rows()
# The normalisation of Yang et al.'s CIFAR loaders (datasets/cifar10.py), which their CIFAR-100 code reuses.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def test_the_table_covers_every_dataset_config():
    assert {(p.parent.name, p.stem) for p in DATASET_CONFIGS} == set(ROWS)
    assert len(DATASET_CONFIGS) == 44  # 11 methods (type-II Flamingo and HAFeature included) × 4 datasets


def test_only_the_dataset_sections_are_parsed():
    """The CIFAR-100-LT section (own table, tests/test_long_tail.py) and the deviations are not dataset tables."""
    text = (ROOT / "docs" / "RECIPES.md").read_text()
    assert "## CIFAR-100-LT" in text and {dataset for dataset, _ in ROWS} == set(DATASETS)


@pytest.mark.parametrize("path", sorted((CONFIGS / "cifar100-lt").glob("[!_]*.yaml")), ids=lambda p: p.stem)
def test_long_tail_configs_keep_the_authors_crop(path):
    """RECIPES.md "CIFAR-100-LT": RandomCrop(32, padding 4) + flip with CIFAR-100 statistics, not the balanced
    CIFAR-100 recipe's reflect padding that the LT configs' base would otherwise give them."""
    config = load_config(path)
    assert (config.data.transforms.train, config.data.transforms.eval) == ("pad-crop", "squash")
    # The authors' constants: their CIFAR-100 loader reuses CIFAR-10's statistics (CIFAR-100's own: an option).
    assert config.data.normalize.mean == pytest.approx(CIFAR10_MEAN)
    assert config.data.normalize.std == pytest.approx(CIFAR10_STD)
    assert config.deepspeed.precision == "fp32" and config.dataset.test_split != config.dataset.val_split


def test_transform_names_agree_between_config_and_pipeline():
    import typing

    assert typing.get_args(TrainTransform) == T.TRAIN_TRANSFORMS
    assert typing.get_args(EvalTransform) == T.EVAL_TRANSFORMS


def test_optimiser_and_schedule_names_agree_with_their_registries():
    import typing

    from haf.training.optimization import OPTIMIZERS, SCHEDULES
    from haf.training.schema import OptimConfig

    hints = typing.get_type_hints(OptimConfig)
    assert typing.get_args(hints["name"]) == tuple(OPTIMIZERS)
    assert typing.get_args(hints["schedule"]) == tuple(SCHEDULES)


def parse_optimiser(text: str) -> dict:
    if text.startswith("SGD"):
        momentum, lr, wd, schedule = re.fullmatch(r"SGD ([\d.]+), ([\d.e-]+), ([\d.e-]+), (\w+)", text).groups()
        return {"name": "sgd", "momentum": float(momentum), "lr": float(lr), "weight_decay": float(wd),
                "schedule": schedule, "amsgrad": False, "steps": None, "validate_every": 1, "loss_fit_window": None}
    match = re.fullmatch(r"Adam-AMSGrad, ([\d.e-]+), ([\d.e-]+), (\w+); ([\d,]+) steps, validate every (\d+) epochs"
                         r"(?:; test epoch by loss fit over (\d+)–(\d+))?", text)
    lr, wd, schedule, steps, every, first, last = match.groups()
    return {"name": "adam", "lr": float(lr), "weight_decay": float(wd), "schedule": schedule, "amsgrad": True,
            "steps": int(steps.replace(",", "")), "validate_every": int(every),
            "loss_fit_window": [int(first), int(last)] if first else None}


def parse_groups(text: str) -> tuple[float, float | None, float]:
    backbone, transformation, last = (part.strip() for part in text.split("/"))
    return float(backbone), None if transformation == "–" else float(transformation), float(last)


@pytest.mark.parametrize("path", DATASET_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_matches_the_recipe_table(path):
    config = load_config(path)
    dataset, row = path.parent.name, ROWS[path.parent.name, path.stem]
    batch, size, train_op, eval_op, mean, std = DATA[dataset]
    assert (config.train.batch_size, config.data.image_size) == (batch, size)
    assert (config.data.transforms.train, config.data.transforms.eval) == (train_op, eval_op)
    assert config.data.normalize.mean == pytest.approx(mean) and config.data.normalize.std == pytest.approx(std)
    assert config.deepspeed.precision == "fp32" and config.deepspeed.tf32
    assert config.dataset.test_split == "test" and config.dataset.val_split == "val"
    assert config.train.val_drop_last  # the reference's validation loader (drop_last at the training batch)
    assert config.model.head == row["head"]
    o, opt = config.optim, parse_optimiser(row["optimiser, lr, wd, schedule"])
    assert (o.name, o.lr, o.weight_decay, o.schedule, o.amsgrad) == (
        opt["name"], opt["lr"], opt["weight_decay"], opt["schedule"], opt["amsgrad"])
    if o.name == "sgd":
        assert o.momentum == opt["momentum"] and not o.nesterov
    assert (config.train.steps, config.train.validate_every) == (opt["steps"], opt["validate_every"])
    # The paper tests the best-validation-top-1 checkpoint; MBM the epoch of the fitted validation-loss minimum.
    assert (config.train.test_checkpoint, config.train.loss_fit_window) == (
        ("val-loss-fit", opt["loss_fit_window"]) if opt["loss_fit_window"] else ("best", None))
    assert config.train.epochs == 100  # with train.steps, replaced by round(steps / steps per epoch) at run start
    backbone, transformation, last = parse_groups(row["lr groups"])
    assert o.backbone_lr_scale == backbone and last == 1.0
    if transformation is not None:
        assert o.transformation_lr_scale == transformation
    else:  # the WRN's type-I feature has no transformation layers: the scale must not matter
        assert config.model.backbone.startswith("wrn") and config.model.head == "type1"
    options, text = config.method.options, row["method options"]
    for symbol, key in (("γ", "gamma"), ("α", "alpha"), ("β", "beta")):
        found = re.search(rf"{symbol} ([\d.]+)", text)
        if found:
            assert options[key] == float(found.group(1))
    if config.method.name == "hafeature":
        levels = re.search(r"hinge l(\d+)–l(\d+)", text)
        expected = list(range(int(levels.group(1)), int(levels.group(2)) + 1)) if levels else None
        assert options["hinge_levels"] == expected
        assert (options["dissimilarity_margin"], options["jsd_weight"]) == (3.0, 1.0)
    if "ResNet-18" in text:  # MBM's network: ResNet-18, average pool, the method's Linear (+ dropout)
        assert config.model.backbone == "resnet18"
        assert dict(config.model.head_options) == {"pool": "avg", "hidden_dim": None}
        expected = "pretrained/resnet18_imagenet1k_v1.pth" if dataset == "tiered-imagenet" else "IMAGENET1K_V1"
        assert config.model.pretrained == expected
    dropout = re.search(r"dropout ([\d.]+)", text)
    assert options.get("dropout", 0.0) == (float(dropout.group(1)) if dropout else 0.0)
    if config.method.name == "hierarchical-ce":  # MBM's code normalises the edge weights (get_weighting)
        assert options["normalize_weights"] == (row["source"] == "MBM")
    if config.method.name == "flamingo":
        widths = re.search(r"chunks ([\d, ]+\d)", text)
        assert options["chunk_widths"] == ([int(w) for w in widths.group(1).split(", ")] if widths else None)
    if dataset == "tiered-imagenet" and config.model.backbone == "resnet50":
        assert config.model.pretrained == "pretrained/pass_moco_v2_800ep_resnet50.pth"
    if dataset == "inat2019":
        assert config.dataset.options["splits_dir"] == "splits_inat19"


def test_recipe_text_states_the_transformation_lr_rule():
    """Only iNat2019 and tieredImageNet-H type-II runs pass --larger-backbone (transformation layers at lr/10);
    every FGVC-Aircraft run keeps them at lr."""
    for (dataset, stem), row in ROWS.items():
        _, transformation, _ = parse_groups(row["lr groups"])
        if row["head"] == "type2":
            assert transformation == (1.0 if dataset == "fgvc-aircraft" else 0.1), (dataset, stem)
        elif transformation is not None and "Adam" not in row["optimiser, lr, wd, schedule"]:
            assert transformation == 1.0, (dataset, stem)
    assert "never pass it" in (ROOT / "docs" / "RECIPES.md").read_text()


def test_cifar_flamingo_classifiers_have_the_reference_input_widths():
    """The reference's WRN Flamingo: Linear(512), Linear(410), Linear(308), Linear(206), Linear(103), coarse → fine;
    its type-II Flamingo: chunks of K // 5 = 20 (inputs 100, 80, 60, 40, 20)."""
    from haf.methods import MethodContext, get_method
    from test_method_configs import synthetic_tree

    level_labels, distances = synthetic_tree(100, 5)
    context = MethodContext(classes=tuple(f"c{k}" for k in range(100)), distances=distances,
                            level_labels=level_labels)
    for name, width, expected in (("flamingo", 512, [512, 410, 308, 206, 103]),
                                  ("flamingo-type2", 100, [100, 80, 60, 40, 20])):
        options = load_config(CONFIGS / "cifar100" / f"{name}.yaml").method.options
        method = get_method("flamingo")(width, context, get_method("flamingo").Options(**options))
        assert [c.in_features for c in method.classifiers] == expected


def test_long_tail_etf_and_baseline_follow_the_authors_code():
    """Per-batch class rescaling on every step; the frozen baseline classifier with a kaiming-normal weight."""
    import torch

    from haf.methods import MethodContext, get_method
    from test_method_configs import synthetic_tree

    etf = load_config(CONFIGS / "cifar100-lt" / "etf-dot-regression.yaml")
    assert etf.method.options["class_rescaling"] is True and etf.method.options["normalize_features"] is True
    from haf.methods.etf_dot_regression import batch_class_rescaling, dot_regression_loss

    level_labels, distances = synthetic_tree(16, 3)
    small = MethodContext(classes=tuple(f"c{k}" for k in range(16)), distances=distances, level_labels=level_labels)
    method = get_method("etf-dot-regression")(20, small, get_method("etf-dot-regression").Options(
        **etf.method.options))
    targets = torch.tensor([0, 0, 0, 1, 5, 5, 9, 9])
    outputs = method(torch.randn(8, 20))
    rows = method.frame * batch_class_rescaling(targets, 16)[:, None]
    torch.testing.assert_close(method.loss(outputs, targets), dot_regression_loss(outputs, rows, targets))
    method.eval()  # the authors' validate() regresses onto the plain rows
    torch.testing.assert_close(method.loss(outputs, targets), dot_regression_loss(outputs, method.frame, targets))
    ce = load_config(CONFIGS / "cifar100-lt" / "cross-entropy.yaml")
    assert ce.method.options["frozen_classifier"] is True and ce.method.options["classifier_init"] == "kaiming-normal"
    level_labels, distances = synthetic_tree(64, 3)
    context = MethodContext(classes=tuple(f"c{k}" for k in range(64)), distances=distances,
                            level_labels=level_labels)
    torch.manual_seed(0)
    cls = get_method("cross-entropy")
    kaiming = cls(512, context, cls.Options(**ce.method.options)).classifier
    default = cls(512, context, cls.Options()).classifier
    assert not any(p.requires_grad for p in kaiming.parameters())
    # N(0, 2/D): std √(2/512) = 0.0625; nn.Linear's U(±1/√D): std 1/√(3·512) ≈ 0.0255
    assert abs(kaiming.weight.std().item() - (2 / 512) ** 0.5) < 0.003
    assert abs(default.weight.std().item() - (1 / (3 * 512)) ** 0.5) < 0.002
    with pytest.raises(ValueError, match="classifier_init"):
        cls.Options(classifier_init="xavier")


def test_validation_drops_the_last_partial_batch_like_the_reference():
    """The val loader that picks the checkpoint reads the first ⌊N/B⌋·B images at the training batch size B, on any
    number of ranks; every other loader (the test) reads every image."""
    import numpy as np
    import torch

    from haf.pipelines.loaders.loader import leading_whole_batches
    from haf.pipelines.readers.splits import Split
    from haf.training.assemble import make_split_loader

    split = Split("val", np.arange(10) % 3, arrays=np.zeros((10, 8, 8, 3), np.uint8))
    assert leading_whole_batches(split, 4).labels.tolist() == split.labels[:8].tolist()
    assert leading_whole_batches(split, 5) is split
    with pytest.raises(ValueError, match="less than one batch of 11"):
        leading_whole_batches(split, 11)
    assert not load_config(CONFIGS / "cifar100-lt" / "haframe.yaml").train.val_drop_last

    class Data:  # the two fields make_split_loader reads
        from haf.pipelines.readers.splits import DatasetSplits

        dataset = DatasetSplits("toy", ("a", "b", "c"), distances=None, hierarchy=None,
                                splits={"val": split, "test": split})

    config = load_config(CONFIGS / "cifar100" / "haframe.yaml", ["train.batch_size=4", "train.eval_batch_size=3",
                                                                  "data.backend=torch", "data.workers=0",
                                                                  "data.image_size=8"])
    for world_size in (1, 2):
        seen = {name: sum(len(labels) for rank in range(world_size) for _, labels in make_split_loader(
                    config, Data, name, train=False, validation=name == "val", rank=rank, world_size=world_size,
                    device=torch.device("cpu")))
                for name in ("val", "test")}
        assert seen == {"val": 8, "test": 10}


def test_bf16_autocast_is_one_set_away():
    config = load_config(CONFIGS / "cifar100" / "haframe.yaml", ["deepspeed.precision=bf16-autocast"])
    assert config.deepspeed.precision == "bf16-autocast"
    with pytest.raises(ValueError, match="dataset.test_split"):
        load_config(CONFIGS / "cifar100" / "haframe.yaml", ["dataset.test_split=val"])
    with pytest.raises(ValueError, match="data.transforms.eval"):
        load_config(CONFIGS / "cifar100" / "haframe.yaml", ["data.transforms.eval=random-resized-crop"])
    with pytest.raises(ValueError, match="data.normalize.std"):
        load_config(CONFIGS / "cifar100" / "haframe.yaml", ["data.normalize.std=[0.2, 0.0, 0.2]"])


# ------------------------------------------------------------------------------------------------- smoke runs
TIERED_LEAVES = ("n01592084", "n02102040", "n02102177")  # real wnids at depths 7, 12, 12: the tree keeps height 12


def fake_cifar(root: Path) -> dict:
    from test_readers_cifar100 import make_cifar

    make_cifar(root, per_class_train=52, per_class_test=2)
    return {"dataset.root": str(root)}


def fake_fgvc(root: Path) -> dict:
    from test_readers_fgvc_aircraft import make_fgvc

    return {"dataset.root": str(make_fgvc(root, per_split=1))}


def fake_inat(root: Path) -> dict:
    from test_readers_inat2019 import make_inat, make_split_lists

    make_split_lists(make_inat(root))
    return {"dataset.root": str(root), "dataset.options.images_root": str(root)}


def fake_tiered(root: Path) -> dict:
    from test_readers_tiered_imagenet import jpeg

    for wnid in TIERED_LEAVES:
        for split, count in (("train", 2), ("val", 1), ("test", 1)):
            names = [f"{wnid}_{split}{i}.JPEG" for i in range(count)]
            for name in names:
                jpeg(root / "train" / wnid / name)
            (root / "splits_tieredImageNet-H" / split).mkdir(parents=True, exist_ok=True)
            (root / "splits_tieredImageNet-H" / split / f"{wnid}.txt").write_text("\n".join(names) + "\n")
    return {"dataset.root": str(root)}


FAKES = {"cifar100": fake_cifar, "fgvc-aircraft": fake_fgvc, "inat2019": fake_inat, "tiered-imagenet": fake_tiered}


@pytest.fixture(scope="module")
def fake_roots(tmp_path_factory) -> dict:
    return {name: make(tmp_path_factory.mktemp(name)) for name, make in FAKES.items()}


@pytest.mark.usefixtures("single_torch_thread")
@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_trains_two_steps_and_tests_on_the_test_split(path, fake_roots, tmp_path):
    from haf.training.assemble import prepare_dataset
    from haf.training.loop import run_training

    base = load_config(path)
    overrides = [f"output_dir={tmp_path / 'run'}", "train.epochs=1", "train.max_steps_per_epoch=2",
                 "train.batch_size=2", "train.eval_batch_size=4", "train.device=cpu", "data.backend=torch",
                 "data.workers=0", "data.image_size=16", "deepspeed.enabled=false", "logging.tensorboard=false",
                 "logging.progress=false", "model.pretrained=null"]
    if base.dataset.kind in FAKES:
        overrides += [f"{k}={v}" for k, v in fake_roots[base.dataset.kind].items()]
    if base.dataset.kind == "demo":
        from haf.pipelines import ensure_demo_dataset

        tiny = {"colours": 2, "patterns": 2, "shapes": 2, "image_size": 16, "train_per_class": 2, "val_per_class": 1,
                "test_per_class": 1}
        # The reader generates only at its cache location: make the tiny dataset explicitly, as `haf demo-data` does.
        root = ensure_demo_dataset(tmp_path / "demo", seed=base.dataset.options.get("seed", 0), **tiny)
        overrides += [f"dataset.root={root}"] + [f"dataset.options.{k}={v}" for k, v in tiny.items()]
    if base.model.backbone not in ("tiny_cnn",):
        overrides += ["model.backbone=tiny_cnn", "model.backbone_options={width: 8, depth: 2}"]
        if base.method.name == "flamingo" and base.model.head == "type2":  # K-d feature; the fakes have K < levels
            overrides += ["model.head_options={out_features: 16}"]
        if base.method.options.get("chunk_widths"):  # widths of the real 512-d feature: checked on it above
            overrides += ["method.options.chunk_widths=null"]
    if base.train.steps is not None:
        overrides += ["train.steps=2"]  # the step budget path: epochs = round(2 / steps per epoch) ≥ 1
    config = load_config(path, overrides)
    data = prepare_dataset(config)
    assert "test" in data.dataset.splits and config.dataset.test_split != config.dataset.val_split
    metrics = run_training(config, data=data)
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["run"]["split"] == "test" == config.dataset.test_split
    assert record["run"]["test_images"] == len(data.dataset["test"])  # every test image, the real test split
    assert metrics is not None and 0.0 <= record["top1"] <= 100.0
    steps = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in steps) == 2


def test_missing_pretrained_checkpoint_is_named(tmp_path, monkeypatch):
    """tieredImageNet-H expects the PASS MoCo-v2 file at model.pretrained; nothing is downloaded."""
    from haf.models.backbones import build_backbone

    config = load_config(CONFIGS / "tiered-imagenet" / "haframe.yaml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="pass_moco_v2_800ep_resnet50.pth"):
        build_backbone("resnet18", weights=config.model.pretrained)  # same loader as resnet50, smaller
    mbm = load_config(CONFIGS / "tiered-imagenet" / "soft-labels.yaml")  # MBM: ImageNet ResNet-18, a local file
    with pytest.raises(FileNotFoundError, match="resnet18_imagenet1k_v1.pth"):
        build_backbone(mbm.model.backbone, weights=mbm.model.pretrained)


# ----------------------------------------------------------------------------- Making Better Mistakes' recipe
def test_loss_fit_epoch_is_the_argmin_of_the_degree4_fit():
    """MBM's selection (scripts/plot_tradeoffs.py: np.polyfit(epochs, losses, 4)): the fit's minimum, not the
    noisiest low point; restricted to the window; fewer points than coefficients: the measured minimum."""
    import numpy as np

    from haf.training.model_selection import LOSS_FIT_DEGREE, loss_fit_epoch

    assert LOSS_FIT_DEGREE == 4
    epochs = list(range(5, 205, 5))
    smooth = [1e-4 * (e - 120) ** 2 + 1.0 for e in epochs]
    noisy = list(smooth)
    noisy[epochs.index(40)] -= 0.8  # one lucky epoch far from the trend's minimum
    assert min(zip(noisy, epochs))[1] == 40
    assert loss_fit_epoch(epochs, noisy) == 120
    reference = np.polyval(np.polyfit(epochs, noisy, 4), epochs)
    assert loss_fit_epoch(epochs, noisy) == epochs[int(np.argmin(reference))]
    assert loss_fit_epoch(epochs, smooth, window=[130, 200]) == 130
    assert loss_fit_epoch([5, 10, 15], [3.0, 1.0, 2.0]) == 10  # 3 points < 5 coefficients
    assert loss_fit_epoch([5, 10, 15], [3.0, 1.0, 2.0], window=[50, 60]) == 10  # none inside: all of them
    with pytest.raises(ValueError, match="one validation loss per epoch"):
        loss_fit_epoch([5, 10], [1.0])


@pytest.mark.usefixtures("single_torch_thread")
def test_val_loss_fit_tests_the_snapshot_of_the_fitted_epoch(tmp_path):
    """Every validated epoch keeps a snapshot; the test reads the one the fit of the logged losses picks."""
    from haf.pipelines import ensure_demo_dataset
    from haf.training.loop import run_training
    from haf.training.model_selection import loss_fit_epoch, validation_losses
    from train_fixtures import TINY_DEMO_OPTIONS, tiny_run_dict

    root, out = ensure_demo_dataset(tmp_path / "data", **TINY_DEMO_OPTIONS), tmp_path / "run"
    config = load_config(None, data=tiny_run_dict(
        root, out, train={"epochs": 6, "test_checkpoint": "val-loss-fit", "loss_fit_window": [1, 6]},
        deepspeed={"enabled": False}))
    run_training(config)
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == [f"epoch-{e:04d}.pt" for e in range(1, 7)]
    # The choice, recomputed here from the log's validation records with numpy's own degree-4 fit
    import numpy as np

    logged = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry.get("split") == "val":
            logged[int(entry["epoch"])] = float(entry["loss"])
    epochs = sorted(logged)
    assert epochs == [1, 2, 3, 4, 5, 6] and validation_losses(out) == (epochs, [logged[e] for e in epochs])
    fitted = np.polyval(np.polyfit(epochs, [logged[e] for e in epochs], 4), epochs)
    chosen = epochs[int(np.argmin(fitted))]
    assert loss_fit_epoch(epochs, [logged[e] for e in epochs], window=[1, 6]) == chosen
    record = json.loads((out / "metrics.json").read_text())
    assert record["run"]["checkpoint"].endswith(f"epoch-{chosen:04d}.pt")
    with pytest.raises(ValueError, match="train.loss_fit_window"):
        load_config(None, data=tiny_run_dict(root, out, train={"loss_fit_window": [5, 2]}))


def test_mbm_hxe_dropout_acts_in_training_only():
    import torch

    from haf.methods import MethodContext, get_method
    from test_method_configs import synthetic_tree

    options = load_config(CONFIGS / "inat2019" / "hierarchical-ce.yaml").method.options
    assert options["dropout"] == 0.5
    level_labels, distances = synthetic_tree(16, 3)
    context = MethodContext(classes=tuple(f"c{k}" for k in range(16)), distances=distances,
                            level_labels=level_labels)
    method = get_method("hierarchical-ce")(32, context, get_method("hierarchical-ce").Options(**options))
    features = torch.randn(64, 32)
    torch.manual_seed(0)
    assert not torch.equal(method(features), method(features))  # a different mask each call
    method.eval()
    torch.testing.assert_close(method(features), method.classifier(features))
    with pytest.raises(ValueError, match="dropout"):
        get_method("hierarchical-ce").Options(dropout=1.0)


def test_a_resumed_run_drops_the_snapshots_it_redoes(tmp_path):
    from haf.training.model_selection import keep_snapshot, prune_snapshots, snapshot_path

    import os

    for epoch in range(1, 7):  # last.pt is replaced by a rename each epoch (atomic_torch_save), never rewritten
        (tmp_path / "new.pt").write_text(f"epoch {epoch}")
        os.replace(tmp_path / "new.pt", tmp_path / "last.pt")
        keep_snapshot(tmp_path, epoch)
    (tmp_path / "snapshots" / ".epoch-0007.pt.link").write_text("torn")  # a kill between link and rename
    assert snapshot_path(tmp_path, 2).read_text() == "epoch 2"  # each snapshot keeps its own epoch's file
    prune_snapshots(tmp_path, after_epoch=3)
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == [f"epoch-{e:04d}.pt" for e in (1, 2, 3)]
