"""backbone → head → method as one module: building, the fixed frame as a buffer, optimizer parameter groups."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from haf.models.classifier import HierarchyClassifier, build_classifier, build_method_options
from haf.methods import MethodContext, get_method

DISTANCES = np.array(
    [
        [0, 1, 2, 2, 2, 2],
        [1, 0, 2, 2, 2, 2],
        [2, 2, 0, 1, 2, 2],
        [2, 2, 1, 0, 2, 2],
        [2, 2, 2, 2, 0, 1],
        [2, 2, 2, 2, 1, 0],
    ]
)
K = DISTANCES.shape[0]
IMAGES = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
TARGETS = torch.tensor([0, 2, 5, 3])


def _context(seed: int = 0) -> MethodContext:
    return MethodContext(classes=tuple(f"c{i}" for i in range(K)), distances=DISTANCES, seed=seed)


def _build(method: str = "haframe", head: str = "type2", seed: int = 0, **kwargs) -> HierarchyClassifier:
    options = {"s_min": -0.2, "alpha": 0.5} if method == "haframe" else None
    kwargs.setdefault("backbone_options", {"width": 4})
    return build_classifier(
        backbone="tiny_cnn", head=head, method=method, context=_context(seed), method_options=options, **kwargs
    )


def _names(model: torch.nn.Module, params) -> set[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


def test_forward_features_scores():
    model = _build()
    assert model.features(IMAGES).shape == (4, K)
    outputs = model(IMAGES)
    assert model.scores(outputs).shape == (4, K)
    torch.testing.assert_close(model.probabilities(outputs).sum(dim=1), torch.ones(4))
    assert torch.isfinite(model.loss(outputs, TARGETS))


def test_the_frame_is_a_buffer_that_no_optimizer_step_touches():
    model = _build()
    frame_before = model.method.frame.clone()
    parameter_ids = {id(p) for p in model.parameters()}
    assert id(model.method.frame) not in parameter_ids and id(model.method.similarity) not in parameter_ids
    state = model.state_dict()
    assert torch.equal(state["method.frame"], frame_before) and "method.similarity" in state

    groups = model.param_groups(0.1, weight_decay=5e-4)
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert id(model.method.frame) not in in_groups and id(model.method.similarity) not in in_groups

    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=5e-4)
    conv_before = model.head.conv.weight.detach().clone()
    for _ in range(2):
        optimizer.zero_grad()
        model.loss(model(IMAGES), TARGETS).backward()
        optimizer.step()
    assert torch.equal(model.method.frame, frame_before)
    assert not torch.equal(model.head.conv.weight, conv_before)  # the step did happen


def test_checkpoint_restores_the_stored_frame_not_a_rebuilt_one():
    trained = _build(seed=0)
    fresh = _build(seed=1)  # another seed draws another rotation of the frame
    assert not torch.allclose(trained.method.frame, fresh.method.frame)
    fresh.load_state_dict(trained.state_dict())
    assert torch.equal(fresh.method.frame, trained.method.frame)


def test_param_groups_follow_the_reference_recipe():
    model = _build()
    groups = model.param_groups(0.1, 5e-4, backbone_lr_scale=0.1, transform_lr_scale=0.5)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone", "transformation"}  # haframe has no trainable last layer
    backbone = _names(model, by_name["backbone"]["params"])
    transformation = _names(model, by_name["transformation"]["params"])
    assert "head.conv.weight" in backbone  # the type-II 1×1 conv trains with the backbone, as in the reference
    assert {n for n in backbone if not n.startswith("backbone.")} == {"head.conv.weight"}
    assert "head.blocks.0.body.0.weight" in transformation and "head.norm.weight" in transformation
    assert by_name["backbone"]["lr"] == pytest.approx(0.01) and by_name["backbone"]["lr_scale"] == 0.1
    assert by_name["transformation"]["lr"] == pytest.approx(0.05)
    assert all(g["weight_decay"] == 5e-4 for g in groups)
    assert backbone | transformation == {n for n, _ in model.named_parameters()}

    ce = _build("cross-entropy", head="type1")
    ce_groups = {g["name"]: g for g in ce.param_groups(0.2, 1e-4)}
    assert _names(ce, ce_groups["last_layer"]["params"]) == {"method.classifier.weight", "method.classifier.bias"}
    assert ce_groups["last_layer"]["lr"] == pytest.approx(0.2)


def test_param_groups_no_decay_split_and_frozen_parameters():
    model = _build("cross-entropy", head="type2")
    model.backbone.layers[0].weight.requires_grad_(False)
    groups = model.param_groups(0.1, 5e-4, no_decay_norm_and_bias=True)
    by_name = {g["name"]: g for g in groups}
    assert by_name["last_layer/no_decay"]["weight_decay"] == 0.0
    assert _names(model, by_name["last_layer/no_decay"]["params"]) == {"method.classifier.bias"}
    assert all(p.dim() <= 1 for g in groups if g["name"].endswith("/no_decay") for p in g["params"])
    assert all(p.dim() > 1 for g in groups if not g["name"].endswith("/no_decay") for p in g["params"])
    named = [n for g in groups for n in _names(model, g["params"])]
    assert "backbone.layers.0.weight" not in named
    assert sorted(named) == sorted(n for n, p in model.named_parameters() if p.requires_grad)


def test_backbone_head_defaults_and_overrides():
    # Small networks default the type-I head to the plain average-pooled map (WRN-28-8's 512-d feature).
    pooled = _build("cross-entropy", head="type1")
    assert pooled.head.out_features == pooled.backbone.out_channels == 16
    assert pooled.method.classifier.in_features == 16
    wide = _build("cross-entropy", head="type1", head_options={"hidden_dim": 32, "pool": "max"})
    assert wide.head.out_features == 32 and wide.method.classifier.in_features == 32


def test_build_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match=rf"K = {K} classes.*in_features = 16"):
        _build("haframe", head="type1")
    with pytest.raises(ValueError, match=r"no option 'gama'"):
        build_method_options(get_method("haframe"), {"gama": 1.0})
    with pytest.raises(ValueError, match=r"unknown method 'haf-frame'"):
        _build("haf-frame")
    options = get_method("haframe").Options(gamma=3.0)
    assert build_method_options(get_method("haframe"), options) is options
