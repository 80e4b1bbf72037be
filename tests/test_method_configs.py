"""Every config under configs/ loads, validates, and builds its model and loss (issue: one config per dataset × method).

The datasets themselves are not on a test machine, so each config is built on a synthetic balanced class tree
with its dataset's number of classes and levels (the two numbers the methods' shapes depend on). The real
backbone of each config is built (once per backbone: constructing ResNet-50 takes seconds on a CPU, and sharing
one instance between models changes nothing that is checked here) without pretrained weights; then the method
runs forward, loss, backward, scores and probabilities on random features of the head's width.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

import haf.models.classifier
from haf.models.classifier import build_classifier
from haf.training.evaluation import method_supports_crm
from haf.methods import MethodContext, available_methods
from haf.metrics import crm_scores
from haf.training.run_config import load_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# Files whose name starts with "_" are fragments composed by others (``_dataset.yaml``); base.yaml likewise.
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if not p.name.startswith("_") and p.name != "base.yaml")
DATASETS = ("cifar100", "fgvc-aircraft", "inat2019", "tiered-imagenet")
# (classes, levels below the root) of each dataset's hierarchy (docs/METHOD.md; demo: colour → shape → stripe
# orientation over 36 classes). iNat2019 (K = 1010) and tieredImageNet-H (K = 608) are built with 128 classes:
# K only sizes the last layers, while building a 1010-class frame alone takes ~8 s of the shared test CPU.
TREE_SHAPE = {"cifar100": (100, 5), "fgvc-aircraft": (100, 3), "inat2019": (128, 7), "tiered-imagenet": (128, 12),
              "demo": (36, 3), "synthetic-tree": (128, 4)}
OUR_METHODS = ("etf-dot-regression", "hug", "soft-labels", "hierarchical-ce", "flamingo", "hafeature")
POSTERIOR_METHODS = ("cross-entropy", "soft-labels", "hierarchical-ce", "flamingo", "hafeature")


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see conftest.py


def synthetic_tree(num_classes: int, num_levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Nested blocks of 2^(L−1−l) consecutive classes at level l: level labels and LCA-height distances."""
    block = [2 ** (num_levels - 1 - level) for level in range(num_levels)]
    labels = np.stack([np.arange(num_classes) // size for size in block], axis=1)
    shared = (labels[:, None, :] == labels[None, :, :]).sum(axis=2)
    return labels, (num_levels - shared).astype(np.int64)


def tree_of(level_labels: np.ndarray):
    """The Hierarchy those level labels describe (the tree-factorised frame needs the tree itself)."""
    from haf.hierarchy import Hierarchy

    parent = {}
    for k, row in enumerate(level_labels):
        names = ["root"] + [f"l{level}_{label}" for level, label in enumerate(row[:-1])] + [f"class{k}"]
        parent.update(zip(names[1:], names[:-1]))
    return Hierarchy.from_parents(parent, [f"class{k}" for k in range(len(level_labels))])


@pytest.fixture(scope="module", autouse=True)
def _build_each_backbone_once():
    original = haf.models.classifier.build_backbone
    cached = functools.lru_cache(maxsize=None)(lambda name, frozen: original(name, **dict(frozen)))
    haf.models.classifier.build_backbone = lambda name, **options: cached(name, tuple(sorted(options.items())))
    yield
    haf.models.classifier.build_backbone = original


def test_every_dataset_has_a_config_for_every_method():
    expected = {f"{dataset}/{method}.yaml" for dataset in DATASETS for method in OUR_METHODS}
    found = {str(p.relative_to(CONFIG_DIR)) for p in CONFIGS}
    assert expected <= found, f"missing configs: {sorted(expected - found)}"
    assert set(OUR_METHODS) <= set(available_methods())


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(CONFIG_DIR)) for p in CONFIGS])
def test_config_loads_and_builds_model_and_loss(path: Path):
    config = load_config(path)
    assert config.method.name in available_methods()
    num_classes, num_levels = TREE_SHAPE[config.dataset.kind]
    level_labels, distances = synthetic_tree(num_classes, num_levels)
    context = MethodContext(
        classes=tuple(f"class{k}" for k in range(num_classes)), distances=distances, level_labels=level_labels,
        seed=config.seed, hierarchy=tree_of(level_labels),
    )
    torch.manual_seed(config.seed)
    model = build_classifier(
        backbone=config.model.backbone,
        head=config.model.head,
        method=config.method.name,
        context=context,
        backbone_options=dict(config.model.backbone_options),  # no pretrained weights: none on a test machine
        head_options=dict(config.model.head_options),
        method_options=config.method.options,
    )
    groups = model.param_groups(config.optim.lr, config.optim.weight_decay)
    assert any(group["name"] == "last_layer" for group in groups) or not any(
        p.requires_grad for p in model.method.parameters())  # none: a frozen classifier (CIFAR-100-LT baseline)

    method = model.method
    features = torch.randn(8, model.head.out_features, requires_grad=True)
    targets = torch.arange(8) * (num_classes // 8)
    outputs = method(features)
    loss = method.loss(outputs, targets)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert features.grad is not None and torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0
    with torch.no_grad():
        scores = method.scores(outputs)
        probs = method.probabilities(outputs)
    assert scores.shape == probs.shape == (8, num_classes)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(8))
    # What the evaluation loop does with them: CRM decoding (Karthik et al.) beside the plain scores.
    crm = crm_scores(probs, torch.from_numpy(distances).float())
    assert crm.shape == (8, num_classes) and torch.isfinite(crm).all()
    if config.method.name in POSTERIOR_METHODS:  # trained by a softmax log-likelihood: CRM is reported
        assert method_supports_crm(method)
    elif config.method.name in OUR_METHODS:  # cosine classifiers: only on request (report_crm)
        assert not method_supports_crm(method)
