"""`haf eval`: a training checkpoint evaluates to the run's own test metrics; bad input is a clear error."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from train_fixtures import TINY_DEMO_OPTIONS, tiny_run_dict


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 1-epoch cross-entropy run (so the CRM section is exercised too)."""
    from haf.pipelines import ensure_demo_dataset
    from haf.training.run_config import load_config
    from haf.training.loop import run_training

    base = tmp_path_factory.mktemp("eval")
    demo_root, out = ensure_demo_dataset(base / "data", **TINY_DEMO_OPTIONS), base / "run"
    config = load_config(None, data=tiny_run_dict(
        demo_root, out, train={"epochs": 1}, model={"head": "type1", "head_options": {"hidden_dim": 16}},
        method={"name": "cross-entropy", "options": {}}))
    run_training(config)
    return demo_root, out


def test_eval_reproduces_the_runs_test_metrics(trained_run, tmp_path, capsys):
    from haf.cli import main

    _, out = trained_run
    target = tmp_path / "eval.json"
    assert main(["eval", str(out / "best.pt"), "--json", str(target), "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "top1" in printed and "crm" in printed and str(target) in printed
    evaluated = json.loads(target.read_text())
    trained = json.loads((out / "metrics.json").read_text())
    for key in ("top1", "mistake_severity", "hierdist@1", "hierdist@5"):
        assert evaluated[key] == pytest.approx(trained[key], rel=1e-6), key
        assert evaluated["crm"][key] == pytest.approx(trained["crm"][key], rel=1e-6), key
    assert evaluated["run"]["split"] == "test" and evaluated["run"]["method"] == "cross-entropy"
    assert evaluated["run"]["test_images"] == 24


def test_eval_other_split_and_default_json_path(trained_run):
    from haf.training.evaluation import evaluate_checkpoint

    _, out = trained_run
    result = evaluate_checkpoint(out / "last.pt", split="val", device="cpu", crm="off", progress=False)
    assert result["json_path"] == out / "eval-val.json" and result["json_path"].is_file()
    assert result["record"]["run"]["test_images"] == 16 and "crm" not in result["record"]
    with pytest.raises(KeyError, match="no split 'holdout'"):
        evaluate_checkpoint(out / "last.pt", split="holdout", device="cpu", progress=False)


def test_eval_refuses_a_dataset_with_other_classes(trained_run, tmp_path):
    from haf.pipelines import ensure_demo_dataset
    from haf.training.evaluation import evaluate_checkpoint

    _, out = trained_run
    other = {**TINY_DEMO_OPTIONS, "colours": 3}
    ensure_demo_dataset(tmp_path / "other", **other)
    overrides = [f"dataset.options.{k}={v}" for k, v in other.items()]
    with pytest.raises(ValueError, match="classes differ"):
        evaluate_checkpoint(out / "best.pt", data_root=str(tmp_path / "other"), overrides=overrides,
                            device="cpu", progress=False)


def test_eval_never_generates_a_dataset(trained_run, tmp_path, capsys):
    """A checkpoint (or --data-root) naming a demo root that does not exist: a clear error, nothing created."""
    from haf.cli import main

    _, out = trained_run
    missing = tmp_path / "mistyped" / "data"
    assert main(["eval", str(out / "best.pt"), "--data-root", str(missing), "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err and "does not exist" in err and "haf demo-data" in err
    assert not (tmp_path / "mistyped").exists()


def test_eval_never_generates_a_dataset_even_at_the_cache_location(trained_run, tmp_path, monkeypatch, capsys):
    """Training may generate the demo dataset at its cache location; evaluation reads with generate=False."""
    from haf.cli import main

    _, out = trained_run
    monkeypatch.chdir(tmp_path)
    assert main(["eval", str(out / "best.pt"), "--data-root", ".cache/demo-data", "--no-progress",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ".cache/demo-data does not exist" in err and "haf demo-data" in err
    assert not (tmp_path / ".cache").exists()


def test_eval_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    from haf.cli import main

    assert main(["eval", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    (tmp_path / "not_ours.pt").write_bytes(b"junk")
    assert main(["eval", str(tmp_path / "not_ours.pt")]) == 2
    assert "not_ours.pt" in capsys.readouterr().err


# ------------------------------------------------------------------------------ neural-collapse diagnostics
# K = 4 classes in two sibling pairs (lca-height distances) with their two-level class tree (Flamingo needs it).
NC_DISTANCES = [[0, 1, 2, 2], [1, 0, 2, 2], [2, 2, 0, 1], [2, 2, 1, 0]]
NC_LEVELS = [[0, 0], [0, 1], [1, 2], [1, 3]]


class _CollapsedFeatures(torch.nn.Module):
    """A HierarchyClassifier stand-in whose features are h = centres[y] + offset for the class y that the one-hot
    "image" encodes: every class's features sit exactly on their class mean (perfect collapse by construction)."""

    def __init__(self, method: torch.nn.Module, centres: torch.Tensor, offset: torch.Tensor) -> None:
        super().__init__()
        self.method = method
        self.register_buffer("centres", centres.float())
        self.register_buffer("offset", offset.float())

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1) @ self.centres + self.offset

    def forward(self, images: torch.Tensor):
        return self.method(self.features(images))

    def loss(self, outputs, targets):
        return self.method.loss(outputs, targets)

    def scores(self, outputs):
        return self.method.scores(outputs)

    def probabilities(self, outputs):
        return self.method.probabilities(outputs)


def _method(name: str, dim: int, **options):
    import numpy as np

    from haf.models.classifier import build_method_options
    from haf.methods import MethodContext, get_method

    context = MethodContext(classes=tuple("abcd"), distances=np.array(NC_DISTANCES),
                            level_labels=np.array(NC_LEVELS), seed=1)
    cls = get_method(name)
    return cls(dim, context, build_method_options(cls, options))


def _collapse_of(model: torch.nn.Module, collapse: bool = True):
    """evaluate() over 3 batches holding every class (each batch has classes 0..3, 2 samples of each)."""
    import numpy as np

    from haf.training.evaluation import evaluate

    targets = torch.arange(4).repeat(2)
    batches = [(torch.nn.functional.one_hot(targets, 4).float()[:, :, None, None], targets) for _ in range(3)]
    return evaluate(model, batches, np.array(NC_DISTANCES), collapse=collapse)


def test_perfect_collapse_onto_the_haframe_gives_zero_diagnostics():
    method = _method("haframe", 4, gamma=1.0, alpha=0.5)
    frame = method.frame.double()
    # Raw class means (HAFrame's S has no centre): h = 3·w_y exactly.
    result = _collapse_of(_CollapsedFeatures(method, 3.0 * frame, torch.zeros(4)))
    diagnostics = result["collapse"]
    assert set(diagnostics) == {"nc_mean", "nc_std", "self_duality"}
    assert diagnostics["nc_mean"] == pytest.approx(0.0, abs=1e-6)
    assert diagnostics["nc_std"] == pytest.approx(0.0, abs=1e-6)
    assert diagnostics["self_duality"] == pytest.approx(0.0, abs=1e-6)
    assert result["metrics"]["top1"] == 100.0
    # Control: the same means shifted off the origin are no longer HAFrame's geometry (raw, not centred).
    shifted = _collapse_of(_CollapsedFeatures(method, 3.0 * frame, torch.full((4,), 2.0)))["collapse"]
    assert shifted["nc_mean"] > 0.05 and shifted["self_duality"] > 0.05
    # Without collapse=True nothing is accumulated and no keys appear.
    assert _collapse_of(_CollapsedFeatures(method, 3.0 * frame, torch.zeros(4)), collapse=False)["collapse"] is None


def test_learnable_classifier_is_compared_centred_with_the_simplex_etf():
    from haf.training.evaluation import collapse_target
    from haf.frame import fixed_etf

    method = _method("cross-entropy", 6)
    etf = torch.as_tensor(fixed_etf(4, 6, seed=2), dtype=torch.float32)
    with torch.no_grad():
        method.classifier.weight.copy_(0.5 * etf)
        method.classifier.bias.zero_()
    target = collapse_target(method)
    assert target.centred and target.similarity[0, 1] == pytest.approx(-1 / 3) and target.similarity[2, 2] == 1.0
    # Class means = 4·ETF + a global offset: centring removes the offset, so the collapse is perfect.
    offset = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0, 1.5])
    diagnostics = _collapse_of(_CollapsedFeatures(method, 4.0 * etf, offset))["collapse"]
    assert diagnostics["nc_mean"] == pytest.approx(0.0, abs=1e-6)
    assert diagnostics["nc_std"] == pytest.approx(0.0, abs=1e-6)
    assert diagnostics["self_duality"] == pytest.approx(0.0, abs=1e-6)
    # Control: class means that are not an ETF (nor aligned with W) are reported as such.
    generator = torch.Generator().manual_seed(0)
    random_means = torch.randn(4, 6, generator=generator)
    uncollapsed = _collapse_of(_CollapsedFeatures(method, random_means, offset))["collapse"]
    assert uncollapsed["nc_mean"] > 0.1 and uncollapsed["self_duality"] > 0.1


def test_fixed_etf_frame_is_centred_and_haframe_is_not():
    from haf.training.evaluation import collapse_target

    etf, haframe = collapse_target(_method("etf-ce", 4)), collapse_target(_method("haframe", 4))
    assert etf.centred and not haframe.centred
    # The frame's own cosines are the target: HAFrame's S buffer.
    torch.testing.assert_close(haframe.similarity, _method("haframe", 4).similarity.double(), atol=1e-6, rtol=0)


def test_methods_without_a_single_k_row_classifier_get_no_diagnostics():
    from haf.training.evaluation import collapse_target

    flamingo = _method("flamingo", 4)
    assert flamingo.classifier_weights() is None and collapse_target(flamingo) is None
    result = _collapse_of(_CollapsedFeatures(flamingo, torch.eye(4), torch.zeros(4)))
    assert result["collapse"] is None and result["metrics"]["num_samples"] == 24


def test_eval_keeps_an_existing_json_unless_overwrite(trained_run, tmp_path, capsys):
    from haf.cli import main

    _, out = trained_run
    target = tmp_path / "mine.json"
    target.write_text("my notes\n")
    args = ["eval", str(out / "best.pt"), "--json", str(target), "--no-progress", "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err and str(target) in err
    assert target.read_text() == "my notes\n"
    assert main([*args, "--overwrite"]) == 0
    assert json.loads(target.read_text())["run"]["split"] == "test"
