"""A backbone of your own: registered with @register_backbone in a module the config names (model.backbone_module)."""
from __future__ import annotations

import sys

import pytest
import torch
import yaml

from haf.models.backbone_registry import BACKBONES, import_backbone_module, register_backbone
from haf.training.assemble import build_model, prepare_dataset
from haf.training.run_config import load_config

from train_fixtures import TINY_DEMO_OPTIONS

MODULE = '''
from torch import nn
from haf.models.backbone_registry import register_backbone

@register_backbone("{name}")
def my_net(*, width: int = 8, weights=None) -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
    net.out_channels = width
    return net
'''


@pytest.fixture
def registry_restored():
    import haf.models.backbones  # noqa: F401  (the shipped backbones registered before the snapshot)

    before = dict(BACKBONES)
    yield
    BACKBONES.clear()
    BACKBONES.update(before)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    from haf.pipelines import ensure_demo_dataset

    return ensure_demo_dataset(tmp_path_factory.mktemp("demo") / "data", **TINY_DEMO_OPTIONS)


def write_config(folder, demo_root, **model):
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump({"base": "demo", "dataset": {"root": str(demo_root), "options": TINY_DEMO_OPTIONS},
                                    "model": model, "data": {"image_size": 16}}))
    return path


def test_the_readme_s_py_file_beside_the_yaml_registers_the_backbone_the_config_names(tmp_path, demo_root,
                                                                                   registry_restored, monkeypatch):
    from test_own_data import readme_section_block

    BACKBONES.pop("my_net", None)
    (tmp_path / "my_backbones.py").write_text(readme_section_block("python"))
    path = write_config(tmp_path, demo_root, backbone="my_net", backbone_module="my_backbones.py",
                        backbone_options={"width": 6})
    monkeypatch.chdir(tmp_path.parent)  # the module resolves against the YAML's folder, not the working directory
    config = load_config(path)
    assert config.model.backbone_module == str(tmp_path / "my_backbones.py")
    assert config.model.backbone_options == {"width": 6}  # tiny_cnn's demo options were not inherited
    data = prepare_dataset(config)
    model = build_model(config, data.dataset, data.distances)
    assert model.backbone.out_channels == 6
    assert model(torch.rand(2, 3, 16, 16)).shape[0] == 2

    # A config that forgets the module cannot find the name: one line with the valid choices.
    BACKBONES.pop("my_net")
    (tmp_path / "bare").mkdir()
    bare = write_config(tmp_path / "bare", demo_root, backbone="my_net")
    with pytest.raises(ValueError, match=r"key 'model.backbone': unknown backbone 'my_net'.*timm:<model> "
                                         r"\(one of your own: register it and name its module in "
                                         r"model.backbone_module\)"):
        load_config(bare)


def test_a_dotted_module_on_the_path_registers_too(tmp_path, registry_restored, monkeypatch):
    package = tmp_path / "my_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(MODULE.format(name="my_net_pkg"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_pkg.nets", raising=False)
    config = load_config("demo", ["model.backbone=my_net_pkg", "model.backbone_module=my_pkg.nets"])
    assert config.model.backbone == "my_net_pkg" and "my_net_pkg" in BACKBONES


def test_bad_modules_are_one_line_errors_but_bugs_inside_them_are_not_hidden(tmp_path, registry_restored):
    with pytest.raises(ValueError, match=r"key 'model.backbone_module': no module named 'no_such_pkg.nets'"):
        load_config("demo", ["model.backbone_module=no_such_pkg.nets"])
    with pytest.raises(FileNotFoundError, match=r"key 'model.backbone_module': file not found: .*absent.py"):
        load_config("demo", [f"model.backbone_module={tmp_path / 'absent.py'}"])
    (tmp_path / "buggy.py").write_text("import numpy\nnumpy.no_such_function()\n")
    with pytest.raises(AttributeError):
        import_backbone_module(str(tmp_path / "buggy.py"))
    (tmp_path / "imports_missing.py").write_text("import no_such_dependency_xyz\n")
    with pytest.raises(ModuleNotFoundError):
        import_backbone_module(str(tmp_path / "imports_missing.py"))


def test_names_with_a_colon_are_reserved_for_families(registry_restored):
    with pytest.raises(ValueError, match="':' separates a backbone family"):
        register_backbone("timm:mine")
