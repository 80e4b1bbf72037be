"""Type-I and type-II heads: shapes, the layer recipe of docs/METHOD.md, pooling, and the optimizer split."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from haf.models.heads import ResidualBlock, Type1Head, Type2Head, available_heads, build_head


def test_registry_and_errors():
    assert {"type1", "type2"} <= set(available_heads())
    with pytest.raises(ValueError, match=r"unknown head 'type3'.*type1, type2"):
        build_head("type3", 8, 4)
    with pytest.raises(ValueError, match=r"no option 'hiden_dim'.*hidden_dim"):
        build_head("type1", 8, 4, hiden_dim=3)
    with pytest.raises(ValueError, match="pool must be one of"):
        build_head("type1", 8, 4, pool="median")
    with pytest.raises(ValueError, match=r"B × 8 × h × w feature map, got shape \(2, 7, 3, 3\)"):
        build_head("type2", 8, 4)(torch.randn(2, 7, 3, 3))


def test_type1_resnet50_recipe():
    head = build_head("type1", 2048, 100)
    assert head.out_features == 600
    assert isinstance(head.pool, nn.AdaptiveMaxPool2d)
    layers = list(head.transform)
    assert [type(m) for m in layers] == [nn.BatchNorm1d, nn.Linear, nn.BatchNorm1d, nn.ELU]
    assert (layers[0].num_features, layers[1].in_features, layers[1].out_features, layers[2].num_features) == (
        2048, 2048, 600, 600
    )
    out = head(torch.randn(3, 2048, 2, 2))
    assert out.shape == (3, 600) and torch.isfinite(out).all()


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_type1_pooled_feature(pool):
    """hidden_dim=None is the plain pooled feature (WRN-28-8's 512-d type-I feature)."""
    head = build_head("type1", 5, 3, pool=pool, hidden_dim=None)
    maps = torch.randn(4, 5, 3, 2, dtype=torch.float64)
    expected = maps.amax(dim=(2, 3)) if pool == "max" else maps.mean(dim=(2, 3))
    assert head.out_features == 5
    torch.testing.assert_close(head(maps), expected)
    assert list(head.parameters()) == []


def test_type2_recipe():
    channels, classes = 12, 7
    head = build_head("type2", channels, classes)
    assert head.out_features == classes
    assert head.conv.kernel_size == (1, 1) and head.conv.bias is None
    assert (head.conv.in_channels, head.conv.out_channels) == (channels, classes)
    assert isinstance(head.norm, nn.BatchNorm1d) and head.norm.num_features == classes
    assert len(head.blocks) == 2
    for block in head.blocks:
        assert isinstance(block, ResidualBlock)
        kinds = [type(m) for m in block.body]
        assert kinds == [nn.Linear, nn.BatchNorm1d, nn.PReLU] * 2
        for linear in block.body[0::3]:
            assert linear.bias is None and linear.weight.shape == (classes, classes)
        for prelu in block.body[2::3]:
            assert prelu.num_parameters == classes  # one slope per channel
    assert head(torch.randn(2, channels, 5, 3)).shape == (2, classes)
    assert build_head("type2", channels, classes, out_features=9).out_features == 9


def test_type2_forward_matches_hand_computation():
    """Eval mode, float64: conv1×1 → mean over space → BN → x + f(x) twice, computed by hand."""
    torch.manual_seed(0)
    channels, classes = 6, 5
    head = build_head("type2", channels, classes).double()
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for module in head.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
                module.bias.normal_()
            if isinstance(module, nn.PReLU):
                module.weight.uniform_(-0.5, 0.5)
    head.eval()
    maps = torch.randn(3, channels, 4, 3, dtype=torch.float64)

    def bn(module: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
        scale = module.weight / torch.sqrt(module.running_var + module.eps)
        return (x - module.running_mean) * scale + module.bias

    def prelu(module: nn.PReLU, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, module.weight * x)

    pooled = torch.einsum("bchw,kc->bk", maps, head.conv.weight[:, :, 0, 0]) / (4 * 3)
    x = bn(head.norm, pooled)
    for block in head.blocks:
        y = x
        for linear, norm, act in zip(block.body[0::3], block.body[1::3], block.body[2::3]):
            y = prelu(act, bn(norm, y @ linear.weight.T))
        x = x + y
    torch.testing.assert_close(head(maps), x)


def test_type2_blocks_are_identity_skips():
    """With zero Linear weights the residual branches vanish: the head is BN(avgpool(conv(x)))."""
    head = build_head("type2", 4, 3).eval()
    with torch.no_grad():
        for block in head.blocks:
            for linear in block.body[0::3]:
                linear.weight.zero_()
    maps = torch.randn(2, 4, 3, 3)
    expected = head.norm(maps.mean(dim=(2, 3)) @ head.conv.weight[:, :, 0, 0].T)
    torch.testing.assert_close(head(maps), expected)


@pytest.mark.parametrize(
    "head",
    [Type1Head(8), Type1Head(8, pool="avg", hidden_dim=None), Type2Head(8, 5), Type2Head(8, 5, num_blocks=0)],
    ids=["type1", "type1-pooled", "type2", "type2-no-blocks"],
)
def test_backbone_and_transformation_modules_partition_the_parameters(head):
    backbone_side = [p for m in head.backbone_modules() for p in m.parameters()]
    transformation = [p for m in head.transformation_modules() for p in m.parameters()]
    ids = [id(p) for p in backbone_side + transformation]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in head.parameters()}
    if isinstance(head, Type2Head):
        assert [id(p) for p in backbone_side] == [id(head.conv.weight)]  # the reference's lr/10 1×1 conv
    else:
        assert backbone_side == []
