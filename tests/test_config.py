"""The run config: every shipped config validates with the paper's hyperparameters; errors name key and choices."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from haf.training.optimization import deepspeed_config, learning_rate, schedule_factor, set_learning_rate
from haf.pipelines.loaders.backends import resolve_data_backend
from haf.training.assemble import world_batch_split
from haf.training.run_config import apply_override, config_from_dict, load_config
from haf.training.schema import RunConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUN_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if not p.name.startswith("_") and p.name != "base.yaml")
# The paper's own runs (the other baselines' configs are checked by tests/test_method_configs.py).
# configs/cifar100-lt follow the long-tail recipe instead (checked by tests/test_long_tail.py).
PAPER_CONFIGS = [p for p in RUN_CONFIGS if p.name == "demo.yaml" or (
                 p.stem in ("cross-entropy-type1", "cross-entropy-type2", "haframe") and p.parent.name != "cifar100-lt")]

# Paper: γ, α, batch, input size, backbone per dataset (the full table: tests/test_recipes.py, docs/RECIPES.md).
REFERENCE = {
    "cifar100": {"gamma": 2.0, "alpha": 0.4, "batch": 64, "size": 32, "backbone": "wrn28_8"},
    "fgvc-aircraft": {"gamma": 1.0, "alpha": 0.5, "batch": 64, "size": 224, "backbone": "resnet50"},
    "inat2019": {"gamma": 5.0, "alpha": 0.4, "batch": 256, "size": 224, "backbone": "resnet50"},
    "tiered-imagenet": {"gamma": 3.0, "alpha": 0.5, "batch": 256, "size": 224, "backbone": "resnet50"},
}


def test_every_dataset_has_the_three_configs_and_a_demo():
    names = {str(p.relative_to(CONFIGS)) for p in RUN_CONFIGS}
    expected = {f"{d}/{m}.yaml" for d in REFERENCE for m in ("cross-entropy-type1", "cross-entropy-type2", "haframe")}
    assert expected | {"demo.yaml"} <= names


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_validates(path):
    config = load_config(path)
    assert config_from_dict(config.to_dict()).to_dict() == config.to_dict()


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_config_has_reference_recipe(path):
    config = load_config(path)
    assert config.source == str(path)
    o = config.optim
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.schedule) == ("sgd", 0.1, 0.9, 5e-4, "cosine")
    if path.name == "demo.yaml":
        assert config.dataset.kind == "demo" and config.model.backbone == "tiny_cnn"
        return
    dataset = path.parent.name
    ref = REFERENCE[dataset]
    assert config.dataset.kind == dataset and config.train.epochs == 100
    assert config.train.batch_size == ref["batch"] and config.data.image_size == ref["size"]
    assert config.model.backbone == ref["backbone"] and o.backbone_lr_scale == 0.1
    # The reference's groups: transformation layers at lr/10 only where its scripts pass --larger-backbone (type-II
    # on iNat2019 and tieredImageNet-H) or where they sit in its backbone (the CIFAR WRN); at lr otherwise (FGVC).
    assert o.transformation_lr_scale == (0.1 if config.model.head == "type2" and dataset != "fgvc-aircraft" else 1.0)
    assert config.train.test_checkpoint == "best"
    if path.stem == "haframe":
        assert config.model.head == "type2" and config.method.name == "haframe"
        assert config.method.options["gamma"] == ref["gamma"] and config.method.options["alpha"] == ref["alpha"]
    else:
        assert config.method.name == "cross-entropy"
        assert config.model.head == ("type1" if path.stem.endswith("type1") else "type2")
    if dataset == "tiered-imagenet":
        assert config.dataset.distance_convention == "fixed-depth"


def test_reference_lr_schedule():
    config = load_config(CONFIGS / "cifar100" / "haframe.yaml")
    for t in (0, 1, 37, 50, 99):
        assert learning_rate(config.optim, t, 100) == pytest.approx(0.05 * (math.cos(math.pi * t / 100) + 1))
    assert schedule_factor(3, 10, "constant") == 1.0
    assert schedule_factor(0, 10, "cosine", warmup_epochs=2) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="outside"):
        schedule_factor(10, 10)

    class FakeOptimizer:
        param_groups = [{"lr": 0, "lr_scale": 0.1}, {"lr": 0, "lr_scale": 1.0}, {"lr": 0}]

    set_learning_rate(FakeOptimizer, 0.08)
    assert [g["lr"] for g in FakeOptimizer.param_groups] == pytest.approx([0.008, 0.08, 0.08])


def test_set_overrides_parse_yaml_values():
    config = load_config(CONFIGS / "demo.yaml", ["train.epochs=2", "optim.lr=5e-3", "deepspeed.enabled=false",
                                                  "dataset.options.image_size=16", "train.stop_after_epoch=null",
                                                  "method.options={gamma: 3, alpha: 0.25}"])
    assert config.train.epochs == 2 and config.optim.lr == 0.005 and config.deepspeed.enabled is False
    assert config.dataset.options == {"image_size": 16} and config.train.stop_after_epoch is None
    assert config.method.options["gamma"] == 3.0 and config.method.options["alpha"] == 0.25
    assert load_config(CONFIGS / "demo.yaml", output_dir="/tmp/x").output_dir == "/tmp/x"
    with pytest.raises(ValueError, match="expected dotted.key=value"):
        apply_override({}, "train.epochs")
    with pytest.raises(ValueError, match="'train.epochs' is not a section"):
        apply_override({"train": {"epochs": 3}}, "train.epochs.x=1")


@pytest.mark.parametrize("override, message", [
    ("train.epoch=2", r"unknown key 'train.epoch' in train \(did you mean epochs\?\); valid keys: epochs, "
                      r"batch_size"),
    ("trian.epochs=2", r"unknown key 'trian' in top level \(did you mean train\?\); valid keys: seed, output_dir, "
                       r"dataset, model, method"),
    ("train.epochs=two", r"key 'train.epochs': expected an integer, got 'two'"),
    ("train.epochs=2.5", r"key 'train.epochs': expected an integer"),
    ("optim.nesterov=yes please", r"key 'optim.nesterov': expected true or false"),
    ("deepspeed.precision=bf32", r"key 'deepspeed.precision': invalid value 'bf32'; valid choices: fp32, "
                                 r"bf16-autocast, bf16, fp16"),
    ("deepspeed.zero_stage=3", r"key 'deepspeed.zero_stage': invalid value 3; valid choices: 0, 1, 2"),
    ("deepspeed.zero_stage=true", r"key 'deepspeed.zero_stage': invalid value True"),
    ("model.head=type3", r"key 'model.head': invalid value 'type3'; valid choices: mlp, type1, type2"),
    ("data.backend=opencv", r"key 'data.backend'.*valid choices: auto, torch, dali"),
    ("train.stop_after_epoch=soon", r"key 'train.stop_after_epoch': expected an integer"),
    ("train=3", r"key 'train' must be a mapping"),
    ("method.name=hafraem", r"key 'method.name': unknown method 'hafraem'; valid choices: .*haframe"),
    ("method.options.gama=2", r"unknown key 'method.options.gama'.*\(did you mean gamma\?\); valid keys: gamma, "
                              r"alpha"),
    ("method.options.alpha=1.5", r"alpha must lie in \[0, 1\]"),
    ("optim.momentum=1.0", r"key 'optim.momentum': must be in \[0, 1\)"),
    ("optim.lr=-1", r"key 'optim.lr': must be a finite number >= 0"),
    ("train.batch_size=0", r"key 'train.batch_size': must be >= 1"),
    ("deepspeed.gradient_accumulation_steps=5", r"key 'train.batch_size': 64 is not divisible"),
    ("deepspeed.extra.zero_optimization={stage: 3}", r"key 'deepspeed.extra': zero_optimization come from"),
])
def test_config_errors_name_the_key_and_choices(override, message):
    with pytest.raises(ValueError, match=message) as info:
        load_config(CONFIGS / "demo.yaml", [override])
    assert "configs/demo.yaml" in str(info.value)  # and the file


def test_base_composition_merges_and_reports_bad_files(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 5\ntrain: {epochs: 7, batch_size: 32}\n")
    (tmp_path / "mid.yaml").write_text("base: base.yaml\ntrain: {epochs: 9}\n")
    (tmp_path / "top.yaml").write_text("base: [mid.yaml]\nmethod: {name: haframe, options: {gamma: 2}}\n")
    config = load_config(tmp_path / "top.yaml")
    assert (config.seed, config.train.epochs, config.train.batch_size) == (5, 9, 32)
    assert config.method.options == {"gamma": 2.0, "alpha": 0.5, "s_min": None, "backend": "auto",
                                      "factorization": "dense", "distance_convention": "lca-height", "frame_file": None}

    (tmp_path / "loop_a.yaml").write_text("base: loop_b.yaml\n")
    (tmp_path / "loop_b.yaml").write_text("base: loop_a.yaml\n")
    with pytest.raises(ValueError, match="circular 'base:' chain"):
        load_config(tmp_path / "loop_a.yaml")
    (tmp_path / "missing_base.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load_config(tmp_path / "missing_base.yaml")
    with pytest.raises(FileNotFoundError, match="no_such.yaml"):
        load_config(tmp_path / "no_such.yaml")
    (tmp_path / "broken.yaml").write_text("seed: 1\ntrain: {epochs: [\n")
    with pytest.raises(ValueError, match=r"broken.yaml line \d+: not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml")


def _defaults(method: str) -> dict:
    import dataclasses

    from haf.methods import get_method

    return dataclasses.asdict(get_method(method).Options())


def test_a_file_that_changes_the_method_does_not_inherit_its_options(tmp_path):
    (tmp_path / "frame.yaml").write_text("method: {name: haframe, options: {gamma: 3, alpha: 0.25}}\n"
                                         "train: {epochs: 7}\n")
    (tmp_path / "ce.yaml").write_text("base: frame.yaml\nmethod: {name: cross-entropy}\n")
    ce = load_config(tmp_path / "ce.yaml")
    assert ce.method.name == "cross-entropy" and ce.method.options == _defaults("cross-entropy")
    assert ce.train.epochs == 7  # everything else still composes
    # Options given next to the new name are that method's own.
    (tmp_path / "hug.yaml").write_text("base: frame.yaml\nmethod: {name: hug, options: {intra_weight: 0.5}}\n")
    assert load_config(tmp_path / "hug.yaml").method.options["intra_weight"] == 0.5
    # Same method (or no name at all): options merge key by key.
    (tmp_path / "same.yaml").write_text("base: frame.yaml\nmethod: {name: haframe, options: {gamma: 5}}\n")
    (tmp_path / "unnamed.yaml").write_text("base: frame.yaml\nmethod: {options: {alpha: 0.75}}\n")
    same, unnamed = load_config(tmp_path / "same.yaml"), load_config(tmp_path / "unnamed.yaml")
    assert (same.method.options["gamma"], same.method.options["alpha"]) == (5.0, 0.25)
    assert (unnamed.method.name, unnamed.method.options["gamma"], unnamed.method.options["alpha"]) == (
        "haframe", 3.0, 0.75)
    # A list of bases composes by the same rule, and so does data= on top of a file.
    (tmp_path / "both.yaml").write_text("base: [frame.yaml, ce.yaml]\n")
    assert load_config(tmp_path / "both.yaml").method.options == _defaults("cross-entropy")
    assert load_config(tmp_path / "frame.yaml", data={"method": {"name": "cross-entropy"}}).method.options == (
        _defaults("cross-entropy"))


def test_set_method_name_drops_the_previous_methods_options():
    ce = load_config(CONFIGS / "demo.yaml", ["method.name=cross-entropy", "model.head=type1"])
    assert ce.method.name == "cross-entropy" and ce.method.options == _defaults("cross-entropy")
    hug = load_config(CONFIGS / "demo.yaml", ["method.name=hug", "method.options.intra_weight=0.5"])
    assert hug.method.options["intra_weight"] == 0.5 and "gamma" not in hug.method.options
    # Naming the method it already is keeps (and merges into) its options.
    same = load_config(CONFIGS / "demo.yaml", ["method.name=haframe", "method.options.gamma=4"])
    assert (same.method.options["gamma"], same.method.options["alpha"]) == (4.0, 0.5)
    # Options set before the name belong to the method named before: they are dropped with it.
    assert apply_override({"method": {"name": "haframe", "options": {"gamma": 2}}}, "method.name=etf-ce") == {
        "method": {"name": "etf-ce"}}


def test_data_backend_auto_resolves_to_dali_only_on_cuda_with_dali(monkeypatch):
    import builtins
    import sys

    import torch

    assert load_config(CONFIGS / "demo.yaml").data.backend == "auto"
    # Explicit choices are kept as they are, whatever the machine.
    assert resolve_data_backend("torch", "cuda") == "torch" and resolve_data_backend("dali", "cpu") == "dali"
    # A CPU run never uses (nor imports) DALI.
    real_import = builtins.__import__
    imported = []

    def tracking_import(name, *args, **kwargs):
        if name.startswith("nvidia"):
            imported.append(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", tracking_import)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_data_backend("auto") == "torch" and resolve_data_backend("auto", "cpu") == "torch"
    assert imported == []
    # CUDA: DALI when it imports ...
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fake_dali = type(sys)("nvidia.dali")
    monkeypatch.setitem(sys.modules, "nvidia", type(sys)("nvidia"))
    monkeypatch.setitem(sys.modules, "nvidia.dali", fake_dali)
    sys.modules["nvidia"].dali = fake_dali
    assert resolve_data_backend("auto") == "dali" and resolve_data_backend("auto", torch.device("cuda", 0)) == "dali"
    assert imported and resolve_data_backend("auto", "cpu") == "torch"  # the run's own device decides
    # ... and the PyTorch DataLoader when it does not.
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # `import nvidia.dali` raises ImportError
    assert resolve_data_backend("auto") == "torch"


def test_config_round_trips_through_a_plain_dict():
    config = load_config(CONFIGS / "inat2019" / "haframe.yaml", ["train.epochs=3"])
    data = yaml.safe_load(config.to_yaml())
    assert "source" not in data
    again = config_from_dict(data)
    assert again.to_dict() == config.to_dict() and isinstance(again, RunConfig)


def test_deepspeed_config_assembly():
    config = load_config(CONFIGS / "inat2019" / "haframe.yaml", ["deepspeed.zero_stage=1",
                                                                 "deepspeed.gradient_accumulation_steps=2",
                                                                 "deepspeed.precision=bf16",
                                                                 "train.grad_clip_norm=5"])
    ds = deepspeed_config(config, world_size=8)
    assert ds["train_batch_size"] == 256 and ds["train_micro_batch_size_per_gpu"] == 16
    assert ds["gradient_accumulation_steps"] == 2 and ds["zero_optimization"] == {"stage": 1}
    assert ds["bf16"] == {"enabled": True} and ds["fp16"]["enabled"] is False
    assert ds["data_types"] == {"buffer_dtype": "bf16"}  # BatchNorm statistics follow the weights' dtype
    assert ds["gradient_clipping"] == 5.0 and ds["zero_allow_untested_optimizer"] is True
    assert "torch_autocast" not in ds  # DeepSpeed's bf16 weights, no autocast
    assert "torch_autocast" not in deepspeed_config(load_config(CONFIGS / "cifar100" / "haframe.yaml"), 1)
    amp = deepspeed_config(load_config(CONFIGS / "cifar100" / "haframe.yaml",
                                       ["deepspeed.precision=bf16-autocast"]), world_size=1)
    # bf16-autocast (one --set away; the configs train fp32 as the reference): DeepSpeed's own autocast, fp32
    # gradient reductions, fp32 weights.
    assert amp["torch_autocast"] == {"enabled": True, "dtype": "bf16", "lower_precision_safe_modules": []}
    assert amp["bf16"] == {"enabled": False} and "data_types" not in amp
    assert world_batch_split(64, 4) == 16
    with pytest.raises(ValueError, match=r"key 'train.batch_size': global batch 256 does not split evenly over 3"):
        deepspeed_config(config.replace(deepspeed=config.deepspeed.__class__(gradient_accumulation_steps=1)), 3)


def test_configs_readme_lists_every_key_of_the_schema():
    """configs/README.md's 'Sections and their keys' names every field of haf/training/schema.py."""
    import dataclasses
    import re
    import typing

    from haf.training import schema

    text = (CONFIGS / "README.md").read_text()
    listed = text[text.index("Sections and their keys"):]
    missing = []
    for section in dataclasses.fields(schema.RunConfig):
        if section.metadata.get("internal"):
            continue
        kind = typing.get_type_hints(schema.RunConfig)[section.name]
        keys = [f.name for f in dataclasses.fields(kind)] if dataclasses.is_dataclass(kind) else []
        missing += [section.name] if f"`{section.name}`" not in listed else []
        missing += [f"{section.name}.{key}" for key in keys if not re.search(rf"\b{key}\b", listed)]
    assert missing == []
