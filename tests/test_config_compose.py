"""Composing configs: `base:` by shipped name or path, chains and cycles, a choice's options not inherited across
a change of choice, and the distance convention's one home."""
from __future__ import annotations

import typing

import pytest

from haf.training.run_config import load_config


def write(path, text):
    path.write_text(text)
    return path


def test_base_by_shipped_name_with_a_path_taking_precedence(tmp_path):
    top = write(tmp_path / "mine.yaml", "base: demo\ntrain: {epochs: 2}\n")
    config = load_config(top)
    assert (config.model.backbone, config.train.epochs, config.method.name) == ("tiny_cnn", 2, "haframe")
    assert load_config(write(tmp_path / "paper.yaml", "base: cifar100/haframe\n")).model.backbone == "wrn28_8"
    # A file named like a shipped config, beside the including file, wins.
    write(tmp_path / "demo.yaml", "base: demo-cross-entropy\nseed: 7\n")
    config = load_config(top)
    assert (config.seed, config.method.name, config.train.epochs) == (7, "cross-entropy", 2)
    # A file never bases itself: a user's own demo.yaml may build on the shipped demo.
    (tmp_path / "own").mkdir()
    own = load_config(write(tmp_path / "own" / "demo.yaml", "base: demo\nseed: 4\n"))
    assert (own.seed, own.model.backbone) == (4, "tiny_cnn")
    # ".yaml" may be left off a path as on a name.
    write(tmp_path / "chain.yaml", "base: mine\nseed: 9\n")
    assert load_config(tmp_path / "chain.yaml").seed == 9


def test_unknown_bases_and_configs_name_close_matches(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"key 'base': config file not found: .*demoo .*did you mean demo\b"):
        load_config(write(tmp_path / "a.yaml", "base: demoo\n"))
    with pytest.raises(FileNotFoundError, match=r"did you mean cifar100/haframe"):
        load_config("cifar100/hafrme")
    with pytest.raises(FileNotFoundError, match=r"config file not found: zzz_nothing_alike \(nor a shipped config "
                                                r"of that name; `haf config --list`"):
        load_config("zzz_nothing_alike")
    with pytest.raises(FileNotFoundError, match="nor a shipped config named '../outside'"):
        load_config(write(tmp_path / "b.yaml", "base: ../outside\n"))


def test_a_cycle_is_one_line_naming_it(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: [demo, c]\n")
    write(tmp_path / "c.yaml", "base: a\n")
    with pytest.raises(ValueError, match=r"circular 'base:' chain: .*a\.yaml -> .*b\.yaml -> .*c\.yaml -> .*a\.yaml")\
            as info:
        load_config(tmp_path / "a.yaml")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("layer, expected", [
    ("model: {backbone: resnet18}", ("model", "backbone_options", {})),
    ("model: {backbone: tiny_cnn, backbone_options: {depth: 2}}", ("model", "backbone_options", {"width": 16,
                                                                                                  "depth": 2})),
    ("dataset: {kind: synthetic-tree}", ("dataset", "options", {})),
    ("model: {head: type1}", ("model", "head_options", {})),
])
def test_a_changed_choice_does_not_inherit_its_options(tmp_path, layer, expected):
    base = write(tmp_path / "base.yaml", "base: demo\nmodel: {head_options: {num_blocks: 1}}\n"
                                         "dataset: {options: {colours: 2}}\n")
    del base
    config = load_config(write(tmp_path / "top.yaml", f"base: base.yaml\n{layer}\n"))
    section, key, value = expected
    assert getattr(getattr(config, section), key) == value
    # --set does the same.
    overridden = load_config(tmp_path / "base.yaml", ["model.backbone=resnet18"])
    assert overridden.model.backbone_options == {}


def test_the_distance_convention_has_one_home():
    from haf.hierarchy.distance_conventions import CONVENTIONS, DEFAULT_CONVENTION, Convention
    from haf.methods import get_method
    from haf.pipelines.readers.registry import DATASET_KINDS, reader_options
    from haf.training.schema import DatasetConfig

    hint = typing.get_type_hints(DatasetConfig)["distance_convention"]
    assert Convention in typing.get_args(hint)
    assert typing.get_type_hints(get_method("haframe").Options)["distance_convention"] == Convention
    assert get_method("haframe").Options().distance_convention == DEFAULT_CONVENTION
    for kind in DATASET_KINDS:
        assert reader_options(kind)["convention"] == Convention, kind
    assert DEFAULT_CONVENTION in CONVENTIONS


def test_a_bad_convention_option_is_one_line_with_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"key 'dataset.options.convention': invalid value 'lca_height'; valid "
                                         r"choices: lca-height, fixed-depth"):
        load_config("demo", ["dataset.options.convention=lca_height"])
    with pytest.raises(ValueError, match=r"key 'dataset.distance_convention': expected one of lca-height, "
                                         r"fixed-depth or null, got 'depth'"):
        load_config("demo", ["dataset.distance_convention=depth"])


def test_a_file_naming_only_itself_as_base_says_so(tmp_path):
    # `base: mine.yaml` inside mine.yaml (no shipped config of that name): not "file not found" for a file that is
    # there, but that a file cannot base itself.
    with pytest.raises(ValueError, match=r"mine.yaml: key 'base': 'mine.yaml' is this file itself \(a config "
                                         r"cannot base itself.*nor a shipped config of that name"):
        load_config(write(tmp_path / "mine.yaml", "base: mine.yaml\nseed: 1\n"))
