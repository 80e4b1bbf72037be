"""Training with the tree-factorised frame: the mlp head, the method's projection, a synthetic large-K dataset."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from haf.models.heads import build_head
from haf.methods import MethodContext
from haf.pipelines import load_dataset
from train_fixtures import step_records, train_records


def test_mlp_head_cost_does_not_grow_with_k():
    small, large = (build_head("mlp", 16, k, width=32) for k in (10, 100_000))
    assert sum(p.numel() for p in small.parameters()) == sum(p.numel() for p in large.parameters())
    assert small(torch.randn(3, 16, 4, 4)).shape == (3, 32)


def test_haframe_tree_method_scores_and_loss():
    data = load_dataset("synthetic-tree", "unused", num_classes=300, depth=3, train_per_class=1)
    from haf.models.classifier import build_method_options
    from haf.methods import get_method

    def build_method(name, in_features, context, options):
        cls = get_method(name)
        return cls(in_features, context, build_method_options(cls, options))

    context = MethodContext(data.classes, data.distances.matrix, seed=0, hierarchy=data.hierarchy)
    method = build_method("haframe", 24, context, {"factorization": "tree", "gamma": 5.0, "alpha": 0.4})
    width = len(data.hierarchy.nodes) - 1
    assert method.projection.weight.shape == (width, 24) and method.collapse_on_outputs
    from haf.frame import similarity_matrix
    from haf.kernels.tree.loss import tree_frame_matrix

    w = tree_frame_matrix(method.tree_frame)  # float64; classifier_weights() is its fp32 copy (K ≤ 4096)
    s = similarity_matrix(data.distances.matrix, 5.0, method.frame_info["s_min"])
    np.testing.assert_allclose((w @ w.T).numpy(), s, atol=1e-12)
    assert torch.equal(method.classifier_weights(), w.float())
    import haf.methods.haframe as haframe_module
    from haf.training.evaluation import collapse_target

    assert collapse_target(method).on_outputs
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(haframe_module, "COLLAPSE_MAX_CLASSES", 299)  # K = 300 is now "too large to materialise"
        assert method.classifier_weights() is None and collapse_target(method) is None
    features = torch.randn(5, 24, requires_grad=True)
    outputs = method(features)
    targets = torch.tensor([0, 1, 299, 17, 5])
    loss = method.loss(outputs, targets)
    loss.backward()
    assert math.isfinite(loss.item()) and features.grad.abs().sum() > 0
    assert method.scores(outputs).shape == (5, 300)
    wrong = MethodContext(data.classes, data.hierarchy.distance_matrix("fixed-depth") + 1 - np.eye(300, dtype=int),
                          hierarchy=data.hierarchy)
    with pytest.raises(ValueError, match="distance_convention"):
        build_method("haframe", 24, wrong, {"factorization": "tree"})
    with pytest.raises(ValueError, match="needs the class tree"):  # noqa: PT012
        build_method("haframe", 24, MethodContext(data.classes, data.distances.matrix), {"factorization": "tree"})


def test_synthetic_tree_eval_classes():
    data = load_dataset("synthetic-tree", "unused", num_classes=500, depth=3, eval_classes=40, test_per_class=2)
    assert len(data["train"]) == 1000 and np.unique(data["val"].labels).size == 40 and len(data["test"]) == 80
    with pytest.raises(ValueError, match="eval_classes"):
        load_dataset("synthetic-tree", "unused", num_classes=500, eval_classes=501)


@pytest.mark.slow
def test_large_k_config_trains_on_cpu(tmp_path):
    """The shipped 10,000-class config, cut to 2,000 classes and one epoch to stay fast."""
    from haf.training.run_config import load_config
    from haf.training.loop import run_training

    config = load_config("configs/synthetic/haframe-tree-10k.yaml", overrides=[
        f"output_dir={tmp_path}", "dataset.options.num_classes=2000", "train.epochs=1", "train.device=cpu",
        "data.backend=torch", "logging.log_every=1"])
    run_training(config)
    steps = step_records(tmp_path)
    assert len(steps) >= 2 and all(math.isfinite(s["loss"]) for s in steps)
    (test,) = train_records(tmp_path, "test")
    (val,) = train_records(tmp_path, "val")
    assert {"top1", "mistake_severity", "hierdist@5"} <= set(test) and math.isfinite(test["hierdist@5"])
    assert {"nc_mean", "nc_std", "self_duality"} <= set(val)  # K = 2,000 ≤ 4,096: the frame is materialised
