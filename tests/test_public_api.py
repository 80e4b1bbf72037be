"""The library surface: ``haf``'s lazily imported public names, and shipped hierarchies by name."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import haf
from haf.cli import main
from haf.hierarchy import list_hierarchies, load_class_distances, load_hierarchy, resolve_hierarchy_path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"cifar100_l5": (100, 5), "fgvc_aircraft": (100, 3), "inaturalist19": (1010, 7),
           "tiered_imagenet": (608, 12)}  # K and height, as hierarchies/SOURCES.md states them


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.mark.parametrize("name", [n for n in haf.__all__ if n != "__version__"])
def test_every_public_name_resolves(name):
    if name == "load_classifier" and not _has_module("haf.inference"):
        with pytest.raises(AttributeError, match="haf.inference is not part of this installation"):
            getattr(haf, name)
        pytest.skip("haf.inference is not in this installation")
    value = getattr(haf, name)
    assert value is not None and name in dir(haf)
    assert getattr(value, "__name__", name) == name  # the object itself, not a module or an alias of another name


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        haf.no_such_thing  # noqa: B018
    assert not hasattr(haf, "no_such_thing")


def test_import_haf_and_the_parser_stay_light():
    code = ("import sys, haf, haf.cli; haf.cli.build_parser(); "
            "heavy = [m for m in ('torch', 'numpy', 'yaml', 'deepspeed', 'nvidia.dali') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""


def test_public_api_builds_a_frame_and_a_loss_from_a_shipped_name():
    import torch

    tree = haf.load_hierarchy("fgvc_aircraft")
    frame = haf.build_frame(tree, gamma=1.0, convention="lca-height")
    assert frame.W.shape == (100, 100) and abs(frame.s_min + 0.6100) < 5e-5  # the reference's FGVC s_min
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(5, 100, generator=generator, dtype=torch.float64)
    target = torch.tensor([0, 7, 99, 42, 3])
    weights, similarity = torch.from_numpy(frame.W), torch.from_numpy(frame.S)
    loss = haf.frame_loss(features, weights, target, similarity)
    assert torch.isfinite(loss) and loss.dtype == torch.float64
    # the paper's loss written out here in float64: (1 − α)·CE(h Wᵀ) + α·Σ_i (cos(h, w_i) − S[i, y])², α = 0.5
    logits = features @ weights.T
    cosine = logits / (features.norm(dim=1, keepdim=True) * weights.norm(dim=1)[None, :])
    expected = (0.5 * torch.nn.functional.cross_entropy(logits, target, reduction="none")
                + 0.5 * (cosine - similarity.T[target]).square().sum(1)).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=0)
    assert torch.allclose(haf.FrameLoss(weights, similarity)(features, target), loss)


def test_public_api_builds_a_classifier():
    import torch

    tree = haf.load_hierarchy("cifar100_l5")
    context = haf.MethodContext(classes=tree.classes, distances=tree.distance_matrix("lca-height"), hierarchy=tree)
    model = haf.build_classifier(backbone="tiny_cnn", head="type1", method="cross-entropy", context=context)
    assert isinstance(model, haf.HierarchyClassifier)
    model.eval()
    with torch.no_grad():
        out = model.method.scores(model(torch.zeros(2, 3, 32, 32)))
    assert out.shape == (2, 100)


# ------------------------------------------------------------------------------------- shipped hierarchies
def test_shipped_hierarchies_by_name_file_name_and_config_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no hierarchies/ folder here, as for a wheel user
    assert list_hierarchies() == sorted(SHIPPED)
    for name, (classes, height) in SHIPPED.items():
        tree = load_hierarchy(name)
        assert (tree.num_classes, tree.height) == (classes, height)
    by_file = resolve_hierarchy_path("inaturalist19_isa.txt")
    by_config_path = resolve_hierarchy_path("hierarchies/inaturalist19_isa.txt")
    assert by_file == resolve_hierarchy_path("inaturalist19") == by_config_path
    assert by_file.name == "inaturalist19_isa.txt" and by_file.is_file()
    assert load_class_distances("cifar100_l5").matrix.shape == (100, 100)


def test_an_existing_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    haf.Hierarchy.from_edges([("r", "a"), ("r", "b")]).to_json("fgvc_aircraft.json")
    own = load_hierarchy("fgvc_aircraft.json")
    assert own.num_classes == 2
    assert load_hierarchy("fgvc_aircraft").num_classes == 100  # the bare name is no file here: the shipped one
    Path("cifar100_l5").mkdir()  # a dataset folder named like a shipped hierarchy is no hierarchy file
    assert load_hierarchy("cifar100_l5").num_classes == 100


def test_unknown_name_lists_the_shipped_ones_in_one_line(tmp_path):
    for missing in ("fgvc", str(tmp_path / "fgvc_aircraft.json"), "data/fgvc_aircraft.json"):
        with pytest.raises(FileNotFoundError) as info:
            load_hierarchy(missing)
        message = str(info.value)
        assert message.startswith(f"hierarchy file not found: {missing}") and "\n" not in message
        assert "cifar100_l5, fgvc_aircraft, inaturalist19, tiered_imagenet" in message


def test_hierarchies_command_lists_and_prints_paths(capsys):
    assert main(["hierarchies"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "FORMAT", "CLASSES", "HEIGHT", "FILE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == set(SHIPPED)
    for name, (classes, height) in SHIPPED.items():
        assert rows[name][-3:-1] == [str(classes), str(height)] and Path(rows[name][-1]).is_file()
    assert main(["hierarchies", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert {r["name"]: (r["classes"], r["height"]) for r in records} == SHIPPED
    assert {r["format"] for r in records} == {"json", "isa edges"}
    assert main(["hierarchies", "tiered_imagenet"]) == 0
    assert Path(capsys.readouterr().out.strip()) == resolve_hierarchy_path("tiered_imagenet").resolve()
    assert main(["hierarchies", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("haf hierarchies: error: hierarchy file not found: nope") and err.count("\n") == 1


def test_frame_command_accepts_a_shipped_name(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no hierarchies/ folder here
    assert main(["frame", "fgvc_aircraft", "--gamma", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["K"] == 100 and abs(report["s_min"] + 0.6100) < 5e-5


def test_readers_take_a_shipped_name_or_the_configs_path(tmp_path, monkeypatch):
    from haf.pipelines.readers.common import hierarchy_from_file

    monkeypatch.chdir(tmp_path)  # no hierarchies/ folder here: the paper configs' paths resolve to the shipped files
    classes = list(load_hierarchy("fgvc_aircraft").classes)[:5]
    tree, distances = hierarchy_from_file("fgvc_aircraft", classes, "lca-height")
    assert tree.num_classes == 5 and distances.matrix.shape == (5, 5)
    again, _ = hierarchy_from_file("hierarchies/fgvc_aircraft.json", classes, "lca-height")
    assert again.classes == tree.classes
    assert np.all(np.diag(distances.matrix) == 0)
    with pytest.raises(FileNotFoundError, match="nor a shipped hierarchy"):
        hierarchy_from_file(tmp_path / "absent_isa.txt", classes, "lca-height")
    assert os.path.isdir(tmp_path)


def test_subpackages_are_reachable_as_attributes_after_import_haf():
    """The README's `haf.metrics.hierarchical_metrics(...)` after a bare `import haf` (a fresh interpreter: other
    tests have imported haf.metrics already)."""
    code = ("import sys, haf; assert 'haf.metrics' not in sys.modules; "
            "assert callable(haf.metrics.hierarchical_metrics) and 'haf.metrics' in sys.modules; "
            "assert callable(haf.inference.load_classifier); assert not hasattr(haf, 'no_such_module')")
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
