"""``timm:<model>`` backbones: the features the heads expect, weights from a file, one-line errors."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from haf.methods import MethodContext
from haf.models.backbones import build_backbone
from haf.models.classifier import build_classifier

timm = pytest.importorskip("timm")

K = 5


def context() -> MethodContext:
    distances = np.full((K, K), 2, dtype=np.int64)
    np.fill_diagonal(distances, 0)
    return MethodContext(classes=tuple(f"c{i}" for i in range(K)), distances=distances, seed=0)


@pytest.mark.parametrize("name, spatial", [("test_resnet", True), ("test_vit", False)])
def test_features_are_the_map_or_the_pooled_feature_with_out_channels(name, spatial):
    torch.manual_seed(0)
    backbone = build_backbone(f"timm:{name}").eval()
    size = 64 if spatial else 160  # test_vit takes its native 160 px
    images = torch.randn(2, 3, size, size)
    out = backbone(images)
    assert out.shape[:2] == (2, backbone.out_channels) == (2, backbone.model.num_features)
    reference = timm.create_model(name, num_classes=0)
    reference.load_state_dict(backbone.model.state_dict())
    pooled = reference.eval()(images)  # timm's own global-pooled feature (num_classes=0)
    if spatial:
        assert out.shape[2:] == (2, 2)
        torch.testing.assert_close(out.double().mean(dim=(2, 3)), pooled.double(), rtol=1e-5, atol=1e-5)
    else:
        assert out.shape[2:] == (1, 1)
        torch.testing.assert_close(out[:, :, 0, 0], pooled)


@pytest.mark.parametrize("head, method", [("type1", "cross-entropy"), ("type2", "haframe"), ("mlp", "cross-entropy")])
def test_heads_and_methods_build_on_a_timm_backbone(head, method):
    model = build_classifier(backbone="timm:test_resnet", head=head, method=method, context=context())
    model.train()
    outputs = model(torch.randn(4, 3, 32, 32))
    loss = model.loss(outputs, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.scores(outputs).shape == (4, K)
    groups = {g["name"] for g in model.param_groups(0.1, 5e-4)}
    assert "backbone" in groups


def test_weights_from_a_local_file_load_into_the_model(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("test_resnet")  # with its classifier, as a saved timm checkpoint has
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    backbone = build_backbone("timm:test_resnet", weights=str(path))
    expected = {k: v for k, v in source.state_dict().items() if k in backbone.model.state_dict()}
    assert len(expected) > 10
    for key, value in expected.items():
        torch.testing.assert_close(backbone.model.state_dict()[key], value, msg=key)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        build_backbone("timm:test_resnet", weights=str(tmp_path / "absent.pth"))


def test_unknown_model_and_reserved_options_are_one_line_errors():
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet10tt' \(did you mean resnet10t"):
        build_backbone("timm:resnet10tt")
    with pytest.raises(ValueError, match="option 'num_classes' is set by haf"):
        build_backbone("timm:test_resnet", num_classes=3)
    with pytest.raises(ValueError, match="bad backbone option"):
        build_backbone("timm:test_resnet", no_such_option=3)


def test_missing_timm_names_the_extra(monkeypatch):
    from haf.training.run_config import load_config

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ValueError, match=r"key 'model.backbone': .*pip install 'haf\[timm\]'") as info:
        load_config("demo", ["model.backbone=timm:test_resnet"])
    assert "\n" not in str(info.value)


def test_config_validates_timm_names():
    from haf.training.run_config import load_config

    config = load_config("demo", ["model.backbone=timm:test_resnet", "model.pretrained=null"])
    assert config.model.backbone == "timm:test_resnet" and config.model.backbone_options == {}
    with pytest.raises(ValueError, match=r"key 'model.backbone': unknown timm model 'test_resnt' \(did you mean "
                                         r"test_resnet"):
        load_config("demo", ["model.backbone=timm:test_resnt"])
