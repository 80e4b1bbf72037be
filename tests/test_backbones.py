"""Backbone registry, feature-map shapes, and checkpoint loading (prefixes, nesting, strictness, torchvision API)."""
from __future__ import annotations

import pickle

import pytest
import torch
import torchvision

import haf.models.backbones as backbones
from haf.models.backbones import (
    available_backbones,
    build_backbone,
    load_backbone_checkpoint,
    resolve_torchvision_weights,
)


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every float tensor with seeded noise, so a successful load is distinguishable from the init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    return model


def test_registry_lists_the_documented_backbones():
    names = set(available_backbones())
    assert {"resnet50", "wrn28_8", "wrn28_2", "wrn16_4", "tiny_cnn", "wide_resnet"} <= names


def test_unknown_backbone_and_option_name_the_culprit():
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet5'.*resnet50"):
        build_backbone("resnet5")
    with pytest.raises(ValueError, match=r"no option 'widht'.*width"):
        build_backbone("tiny_cnn", widht=8)


@pytest.mark.parametrize(
    "name, options, size, channels, spatial",
    [
        ("tiny_cnn", {"width": 8}, 32, 32, 8),
        ("tiny_cnn", {"width": 4, "depth": 2}, 17, 8, 9),
        ("wrn16_4", {}, 32, 256, 8),
        ("wrn28_2", {"dropout": 0.3}, 32, 128, 8),
        ("resnet50", {}, 64, 2048, 2),
    ],
)
def test_feature_map_shapes(name, options, size, channels, spatial):
    model = build_backbone(name, **options).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert model.out_channels == channels
    assert out.shape == (2, channels, spatial, spatial)
    assert torch.isfinite(out).all()


def test_wide_resnet_matches_the_published_parameter_counts():
    # Zagoruyko & Komodakis' CIFAR-10 models: WRN-28-10 has 36,479,194 parameters and WRN-16-4 2,748,890,
    # including the final Linear(64k, 10) that our feature extractor leaves to the head.
    # Built on the meta device: shapes only, no memory and no initialisation cost.
    with torch.device("meta"):
        for name, width, total in (("wrn28_10", 640, 36_479_194), ("wrn16_4", 256, 2_748_890)):
            model = build_backbone(name)
            assert model.out_channels == width
            assert sum(p.numel() for p in model.parameters()) + width * 10 + 10 == total
        # WRN-28-8, the CIFAR-100 reference: 4 blocks per stage, a 512-channel map (forward: see wrn28_2's).
        wrn28_8 = build_backbone("wrn28_8")
    assert wrn28_8.out_channels == 512 and [len(s) for s in (wrn28_8.block1, wrn28_8.block2, wrn28_8.block3)] == [4] * 3


def test_wide_resnet_rejects_bad_depth():
    with pytest.raises(ValueError, match="6n \\+ 4"):
        build_backbone("wide_resnet", depth=27)


@pytest.mark.parametrize("prefix", ["", "module.", "encoder.", "backbone.", "module.encoder_q."])
@pytest.mark.parametrize("container", [None, "state_dict", "model"])
def test_checkpoint_round_trip_strips_prefix_and_nesting(tmp_path, prefix, container):
    source = _randomised(build_backbone("tiny_cnn", width=4), seed=1)
    state = {prefix + k: v for k, v in source.state_dict().items()}
    state[prefix + "fc.weight"] = torch.zeros(3, 16)  # a classifier head the backbone has no use for
    payload = state if container is None else {"epoch": 7, "arch": "tiny", container: state}
    path = tmp_path / "ckpt.pth"
    torch.save(payload, path)

    target = build_backbone("tiny_cnn", width=4)
    assert load_backbone_checkpoint(target, path) == prefix
    _same_state(source, target)


def test_moco_checkpoint_loads_through_the_registry(tmp_path):
    """MoCo v2 layout: query encoder under module.encoder_q. (with an MLP fc), momentum encoder, queue."""
    query = _randomised(build_backbone("tiny_cnn", width=4), seed=2)
    key_encoder = _randomised(build_backbone("tiny_cnn", width=4), seed=3)
    state = {f"module.encoder_q.{k}": v for k, v in query.state_dict().items()}
    state.update({f"module.encoder_k.{k}": v for k, v in key_encoder.state_dict().items()})
    state["module.encoder_q.fc.0.weight"] = torch.randn(16, 16)
    state["module.encoder_q.fc.2.weight"] = torch.randn(8, 16)
    state["module.queue"] = torch.randn(8, 32)
    path = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    torch.save({"epoch": 800, "arch": "tiny", "state_dict": state, "optimizer": {"state": {}}}, path)

    loaded = build_backbone("tiny_cnn", width=4, weights=str(path))
    _same_state(query, loaded)
    with pytest.raises(ValueError, match="tiny_cnn has no torchvision weights"):
        build_backbone("tiny_cnn", weights="IMAGENET1K_V1")


def test_backbone_initialises_from_a_classifier_checkpoint(tmp_path):
    """Our own training checkpoints hold backbone.*, head.*, method.*: the backbone part loads, the rest is not ours."""
    source = _randomised(build_backbone("tiny_cnn", width=4), seed=6)
    state = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    state.update({"head.conv.weight": torch.randn(5, 16, 1, 1), "method.frame": torch.randn(5, 5)})
    torch.save({"model": state, "epoch": 3}, tmp_path / "best.pt")
    target = build_backbone("tiny_cnn", width=4, weights=tmp_path / "best.pt")
    _same_state(source, target)


def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path):
    state = build_backbone("tiny_cnn", width=4).state_dict()
    missing = dict(state)
    del missing["layers.0.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing.pth.*missing keys \(1\): layers\.0\.weight"):
        load_backbone_checkpoint(build_backbone("tiny_cnn", width=4), tmp_path / "missing.pth")

    extra = {**state, "layers.9.weight": torch.zeros(1)}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): layers\.9\.weight"):
        load_backbone_checkpoint(build_backbone("tiny_cnn", width=4), tmp_path / "extra.pth")

    torch.save(state, tmp_path / "narrow.pth")
    with pytest.raises(ValueError, match=r"'layers\.0\.weight' has shape \(4, 3, 3, 3\).*\(8, 3, 3, 3\)"):
        load_backbone_checkpoint(build_backbone("tiny_cnn", width=8), tmp_path / "narrow.pth")


def test_missing_bn_counters_are_tolerated(tmp_path):
    source = _randomised(build_backbone("tiny_cnn", width=4), seed=4)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    target = build_backbone("tiny_cnn", width=4)
    load_backbone_checkpoint(target, tmp_path / "old.pth")
    _same_state(source, target)


class _NotAllowed:
    pass


def test_unsafe_or_absent_files_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": _NotAllowed()}, handle, protocol=2)  # torch.load's own protocol
    with pytest.raises(ValueError, match="evil.pth.*weights-only"):
        load_backbone_checkpoint(build_backbone("tiny_cnn"), path)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_backbone("wrn16_4", weights=str(tmp_path / "nowhere.pth"))
    torch.save({"epoch": 3, "note": "no tensors"}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match="empty.pth: no state dict found"):
        load_backbone_checkpoint(build_backbone("tiny_cnn"), tmp_path / "empty.pth")


def test_torchvision_weights_names_resolve():
    enum = torchvision.models.ResNet50_Weights
    assert resolve_torchvision_weights("resnet50", "IMAGENET1K_V2") is enum.IMAGENET1K_V2
    assert resolve_torchvision_weights("resnet50", "ResNet50_Weights.IMAGENET1K_V1") is enum.IMAGENET1K_V1
    assert resolve_torchvision_weights("resnet50", "DEFAULT") is enum.DEFAULT
    assert resolve_torchvision_weights("resnet50", "imagenet") is enum.DEFAULT
    with pytest.raises(ValueError, match=r"IMAGENET1K_V3.*IMAGENET1K_V1, IMAGENET1K_V2"):
        resolve_torchvision_weights("resnet50", "IMAGENET1K_V3")


def test_torchvision_weights_load_through_the_api(monkeypatch):
    """No network here: the download is replaced by a seeded torchvision ResNet-50's state dict, fc included."""
    # Our model's own random init draws after this one, so its conv weights differ from the reference's.
    reference = torchvision.models.resnet50(weights=None)
    requested = []

    def fake_fetch(member):
        requested.append(member)
        return reference.state_dict()

    monkeypatch.setattr(backbones, "_fetch_torchvision_state_dict", fake_fetch)
    model = build_backbone("resnet50", weights="IMAGENET1K_V2")
    assert requested == [torchvision.models.ResNet50_Weights.IMAGENET1K_V2]
    expected = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    build_backbone("tiny_cnn", weights="none")  # the config's spelling of "from scratch"
    assert len(requested) == 1


def test_failed_download_says_what_to_do(monkeypatch):
    member = torchvision.models.ResNet50_Weights.IMAGENET1K_V1

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(type(member), "get_state_dict", offline)
    with pytest.raises(OSError, match=r"IMAGENET1K_V1 from https://.*network unreachable.*local path"):
        backbones._fetch_torchvision_state_dict(member)
