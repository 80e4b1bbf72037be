"""Long-tailed recognition: shot-group metrics (hand-worked), the CIFAR-LT schedule, mixup (value, resume), the
CIFAR ResNet-32, and every configs/cifar100-lt config training two steps on a fake CIFAR-100 in the real layout."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from haf.metrics import GroupedHierarchicalMetrics, HierarchicalMetrics, shot_groups
from haf.training.mixup import mix_batch, mixed_loss, mixup_generator
from test_readers_cifar100 import py2_dumps
from train_fixtures import TINY_DEMO_OPTIONS, checkpoint_params, step_records, tiny_run_dict

REPO = Path(__file__).resolve().parents[1]
LT_CONFIGS = sorted(p for p in (REPO / "configs" / "cifar100-lt").glob("*.yaml") if not p.name.startswith("_"))

# 4 classes in two superclasses {0, 1}, {2, 3}: d = 1 between siblings, 2 across.
D4 = np.array([[0, 1, 2, 2], [1, 0, 2, 2], [2, 2, 0, 1], [2, 2, 1, 0]])


def test_shot_groups_boundaries():
    assert shot_groups([101, 100, 20, 19, 0]).tolist() == [0, 1, 1, 2, 2]


def test_group_metrics_hand_worked():
    groups = shot_groups([150, 50, 10, 5])  # many, medium, few, few
    scores = torch.tensor([[4, 3, 2, 1], [4, 3, 2, 1], [3, 4, 2, 1], [4, 1, 3, 2], [1, 2, 4, 3], [1, 2, 3, 4]],
                          dtype=torch.float32)
    targets = torch.tensor([0, 1, 1, 2, 3, 3])
    metric = GroupedHierarchicalMetrics(D4, groups, ks=(1, 2))
    metric.update(scores[:4], targets[:4])  # two batches: the sums stream
    metric.update(scores[4:], targets[4:])
    got = metric.compute()
    # many: row 0 correct; top-2 {0, 1} → (0 + 1)/2
    assert got["many"]["top1"] == 100.0 and math.isnan(got["many"]["mistake_severity"])
    assert got["many"]["hierdist@1"] == 0.0 and got["many"]["hierdist@2"] == 0.5 and got["many"]["num_samples"] == 1
    # medium: rows 1 (predicts 0, d = 1) and 2 (correct)
    assert got["medium"] == {"top1": 50.0, "mistake_severity": 1.0, "hierdist@1": 0.5, "hierdist@2": 0.5,
                             "num_samples": 2}
    # few: rows 3 (predicts 0, d = 2), 4 (predicts 2, d = 1), 5 (correct)
    assert got["few"]["top1"] == pytest.approx(100 / 3) and got["few"]["mistake_severity"] == 1.5
    assert got["few"]["hierdist@1"] == pytest.approx(1.0) and got["few"]["hierdist@2"] == pytest.approx(2 / 3)
    # the groups partition the samples: their sums are the ungrouped state
    whole = HierarchicalMetrics(D4, ks=(1, 2))
    whole.update(scores, targets)
    assert torch.equal(metric.state.sum(0), whole.state)
    # merge = one pass; a group with no samples is left out
    a, b = GroupedHierarchicalMetrics(D4, groups, ks=(1, 2)), GroupedHierarchicalMetrics(D4, groups, ks=(1, 2))
    a.update(scores[:3], targets[:3])
    b.update(scores[3:], targets[3:])
    assert torch.equal(a.merge(b).state, metric.state)
    only_few = GroupedHierarchicalMetrics(D4, groups, ks=(1,))
    only_few.update(scores[3:], targets[3:])
    assert list(only_few.compute()) == ["few"]
    with pytest.raises(ValueError, match="one group per class"):
        GroupedHierarchicalMetrics(D4, [0, 1, 2])


def test_step_schedule_is_the_authors():
    from haf.training.optimization import learning_rate
    from haf.training.run_config import load_config

    config = load_config(REPO / "configs" / "cifar100-lt" / "etf-dot-regression.yaml")

    def authors(epoch0):  # train.py adjust_learning_rate with cos False, e 1-based
        e = epoch0 + 1
        if e <= 5:
            return 0.1 * e / 5
        return 0.1 * (0.01 if e > 180 else 0.1 if e > 160 else 1.0)

    for t in range(200):
        assert learning_rate(config.optim, t, 200) == pytest.approx(authors(t), rel=1e-12), t


def test_mixup_loss_value_and_stream():
    x = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    y = torch.tensor([0, 1, 2, 1])
    batch = mix_batch(x, y, 1.0, mixup_generator(5, 2, 7, 0))
    rng = mixup_generator(5, 2, 7, 0)  # the same (seed, epoch, step, rank) draws the same λ and π
    lam, perm = float(rng.beta(1.0, 1.0)), rng.permutation(4)
    assert batch.lam == lam and 0 < lam < 1
    assert torch.allclose(batch.images, lam * x + (1 - lam) * x[perm])
    assert torch.equal(batch.permuted_targets, y[perm])
    assert mix_batch(x, y, 1.0, mixup_generator(5, 2, 8, 0)).lam != lam  # the next step draws anew
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, 1.0, 3.0], [1.0, -2.0, 0.0]], dtype=torch.float64)
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    by_hand = -(lam * log_p[torch.arange(4), y] + (1 - lam) * log_p[torch.arange(4), y[perm]]).mean()
    assert mixed_loss(F.cross_entropy, logits, batch).item() == pytest.approx(by_hand.item(), rel=1e-12)
    with pytest.raises(ValueError, match="alpha"):
        mix_batch(x, y, 0.0, rng)


def test_cifar_resnet32():
    from haf.models.backbones import build_backbone

    net = build_backbone("resnet32")
    assert net.out_channels == 128 and len(net.layer1) == 5
    assert tuple(net(torch.zeros(2, 3, 32, 32)).shape) == (2, 128, 8, 8)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 31 and all(c.bias is None for c in convs)  # 1 stem + 15 blocks × 2; option-A: no 1×1
    small = build_backbone("cifar_resnet", depth=8, width=4)
    x = torch.randn(1, 4, 8, 8)
    shortcut = small.layer2[0].shortcut(x)  # option A: subsample, zero-pad 2 channels each side
    assert torch.equal(shortcut[:, 2:6], x[:, :, ::2, ::2]) and not shortcut[:, :2].any() and not shortcut[:, 6:].any()
    with pytest.raises(ValueError, match="6n \\+ 2"):
        build_backbone("cifar_resnet", depth=30)


@pytest.mark.parametrize("config_path", LT_CONFIGS, ids=[p.stem for p in LT_CONFIGS])
def test_lt_configs_carry_the_authors_recipe(config_path):
    from haf.training.run_config import load_config

    c = load_config(config_path)
    o, t = c.optim, c.train
    assert (c.model.backbone, c.data.image_size, t.batch_size, t.epochs, t.mixup_alpha) == ("resnet32", 32, 128, 200, 1.0)
    assert (o.lr, o.momentum, o.weight_decay, o.nesterov, o.backbone_lr_scale) == (0.1, 0.9, 2e-4, False, 1.0)
    assert (o.schedule, o.lr_milestones, o.lr_gamma, o.warmup_epochs) == ("step", [160, 180], 0.1, 4)
    assert (t.test_checkpoint, t.drop_last, c.dataset.kind) == ("last", False, "cifar100")
    assert c.dataset.options["long_tail"] == "exp" and c.dataset.options["imbalance_ratio"] == 0.01
    assert c.dataset.options["hierarchy"] == "hierarchies/cifar100_l5.json"


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    from haf.pipelines import load_dataset

    root = tmp_path_factory.mktemp("demo") / "data"
    load_dataset("demo", root, **TINY_DEMO_OPTIONS)
    return root


def test_mixup_resume_is_exact(demo_root, tmp_path):
    from haf.training.run_config import load_config
    from haf.training.loop import run_training

    def run(out, resume=False, **train):
        sections = {"train": {"epochs": 2, "mixup_alpha": 1.0, **train}, "deepspeed": {"enabled": False}}
        return run_training(load_config(None, data=tiny_run_dict(demo_root, out, **sections)), resume=resume)

    run(tmp_path / "full")
    assert run(tmp_path / "split", stop_after_epoch=1) is None
    run(tmp_path / "split", resume=True)
    full, split = checkpoint_params(tmp_path / "full" / "last.pt"), checkpoint_params(tmp_path / "split" / "last.pt")
    assert all(torch.equal(full[k], split[k]) for k in full)
    assert [r["loss"] for r in step_records(tmp_path / "full")] == [r["loss"] for r in step_records(tmp_path / "split")]
    # mixup is on: the first step's loss differs from the unmixed run's
    plain = tmp_path / "plain"
    run_training(load_config(None, data=tiny_run_dict(demo_root, plain, train={"epochs": 1},
                                                      deepspeed={"enabled": False})))
    assert step_records(plain)[0]["loss"] != step_records(tmp_path / "full")[0]["loss"]


@pytest.fixture(scope="module")
def fake_cifar100(tmp_path_factory) -> Path:
    """CIFAR-100 in the real pickle layout with the real class names (so the shipped hierarchy applies), 30
    training and 2 test images per class."""
    classes = json.loads((REPO / "hierarchies" / "cifar100_l5.json").read_text())["classes"]
    assert len(classes) == 100
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("cifar") / "cifar-100-python"
    root.mkdir()
    for name, per_class in (("train", 30), ("test", 2)):
        labels = np.repeat(np.arange(100), per_class)
        rng.shuffle(labels)
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        (root / name).write_bytes(py2_dumps({"fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist(),
                                             "data": data}))
    (root / "meta").write_bytes(py2_dumps({"fine_label_names": list(classes),
                                           "coarse_label_names": [f"s{i}" for i in range(20)]}))
    return root


@pytest.mark.parametrize("config_path", LT_CONFIGS, ids=[p.stem for p in LT_CONFIGS])
def test_lt_configs_train_two_steps(config_path, fake_cifar100, tmp_path):
    from haf.training.run_config import load_config
    from haf.training.loop import run_training

    shorthand = f"cifar100-lt/{config_path.stem}"
    assert Path(load_config(shorthand).source).resolve() == config_path.resolve()  # the --config shorthand
    config = load_config(shorthand, [
        f"dataset.root={fake_cifar100}", f"dataset.options.hierarchy={REPO / 'hierarchies' / 'cifar100_l5.json'}",
        "dataset.options.imbalance_ratio=0.1", "dataset.options.validation_per_class=2",
        "model.backbone=cifar_resnet", "model.backbone_options={depth: 8, width: 32}",  # ETF: width ≥ K − 1
        "train.epochs=1", "optim.warmup_epochs=0", "train.max_steps_per_epoch=2", "train.max_eval_steps=1",
        "train.batch_size=16", "train.eval_batch_size=200", "train.device=cpu",
        "deepspeed.enabled=false", "deepspeed.precision=fp32", "data.backend=torch", "data.workers=0",
        "logging.tensorboard=false", "logging.progress=false",
    ], output_dir=str(tmp_path / "run"))
    assert config.train.mixup_alpha == 1.0 and config.train.test_checkpoint == "last"
    assert config.optim.schedule == "step" and config.optim.weight_decay == 2e-4
    record = run_training(config)
    # ρ = 0.1 on 30 images per class: 30 → 3 per class, medium (≥ 20) and few-shot (< 20) classes
    assert set(record["shots"]) == {"medium", "few"} and record["run"]["checkpoint"] == "last.pt"
    assert sum(v["num_samples"] for v in record["shots"].values()) == record["num_samples"] == 200
    assert record["run"]["best_epoch"] == 1
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["shots"] == record["shots"]


def _metrics_json(path: Path, method: str, seed: int, few_top1: float) -> None:
    base = {"top1": 40.0, "mistake_severity": 2.0, "hierdist@1": 1.2, "hierdist@5": 2.5, "hierdist@20": 3.0}
    shots = {"many": {**base, "top1": 60.0}, "medium": {**base, "top1": 40.0},
             "few": {**base, "top1": few_top1, "mistake_severity": 2.5}}
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({**base, "shots": shots, "run": {
        "dataset": "cifar100", "method": method, "model": "resnet32/type1", "seed": seed}}))


def test_report_and_plot_shot_groups(tmp_path):
    from haf.reporting import plots
    from haf.reporting.report import make_report

    _metrics_json(tmp_path / "a", "etf-dot-regression", 0, 10.0)
    _metrics_json(tmp_path / "b", "etf-dot-regression", 1, 20.0)
    markdown, csv_text = make_report([tmp_path])
    assert "### cifar100 by shot group" in markdown and "few: top-1 (%)" in markdown
    row = next(line for line in markdown.splitlines()[::-1] if line.startswith("| etf-dot-regression"))
    assert "15.00 ±" in row and "60.00" in row and "2.50" in row  # few-shot mean of 10 and 20; many; few severity
    header, values = csv_text.splitlines()[:2]
    columns = dict(zip(header.split(","), values.split(",")))
    assert float(columns["few/top1_mean"]) == 15.0 and float(columns["many/top1_mean"]) == 60.0
    drawn = plots.plot_shot_groups({"etf": {"many/top1": 60.0, "few/top1": (15.0, 3.0), "few/mistake_severity": 2.5}},
                                   tmp_path / "shots.png")
    assert (tmp_path / "shots.png").stat().st_size > 0
    assert drawn["etf"][0, 0] == 60.0 and np.isnan(drawn["etf"][0, 1]) and drawn["etf"][1, 2] == 2.5


def test_cross_entropy_frozen_classifier_option():
    from haf.methods import MethodContext, get_method

    context = MethodContext(classes=("a", "b", "c", "d"), distances=D4)
    method = get_method("cross-entropy")(8, context, get_method("cross-entropy").Options(frozen_classifier=True))
    assert not any(p.requires_grad for p in method.parameters())
    assert all(p.requires_grad for p in get_method("cross-entropy")(8, context).parameters())
