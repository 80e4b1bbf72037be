"""haf.metrics on hand-worked cases, streaming/merging, CRM, neural-collapse diagnostics and every error path."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from haf.metrics import (
    ClassMeans,
    HierarchicalMetrics,
    class_means,
    crm_predict,
    crm_scores,
    hierarchical_metrics,
    neural_collapse_metrics,
    self_duality,
)

# Two families {0, 1} and {2, 3}: siblings at distance 1, cousins at 2.
D4 = np.array([[0, 1, 2, 2], [1, 0, 2, 2], [2, 2, 0, 1], [2, 2, 1, 0]])
SCORES = torch.tensor(
    [
        [0.9, 0.5, 0.1, 0.0],  # y = 0: ranking 0 1 2 3, correct;       d = 0 1 2 2
        [0.2, 0.1, 0.6, 0.3],  # y = 1: ranking 2 3 0 1, mistake d = 2; d = 2 2 1 0
        [0.1, 0.3, 0.2, 0.4],  # y = 2: ranking 3 1 2 0, mistake d = 1; d = 1 2 0 2
    ]
)
TARGETS = torch.tensor([0, 1, 2])


def test_hand_worked_metrics():
    got = hierarchical_metrics(SCORES, TARGETS, D4, ks=(1, 2, 3, 4, 5))
    assert got["top1"] == pytest.approx(100 / 3)
    assert got["mistake_severity"] == pytest.approx(1.5)  # (2 + 1) / 2 mistakes
    assert got["hierdist@1"] == pytest.approx(1.0)  # (0 + 2 + 1) / 3
    assert got["hierdist@2"] == pytest.approx(4 / 3)  # (1/2 + 4/2 + 3/2) / 3
    assert got["hierdist@3"] == pytest.approx(11 / 9)  # (3/3 + 5/3 + 3/3) / 3
    assert got["hierdist@4"] == pytest.approx(1.25)  # every row sums to 5
    assert "hierdist@5" not in got  # k > K omitted
    assert got["num_samples"] == 3


def test_default_keys_and_identity_hierdist1():
    gen = torch.Generator().manual_seed(0)
    k = 30
    labels = torch.arange(k) // 5
    distances = (labels[:, None] != labels[None, :]).long() * 2 + (torch.arange(k)[:, None] != torch.arange(k)).long()
    scores = torch.randn(200, k, generator=gen)
    targets = torch.randint(0, k, (200,), generator=gen)
    got = hierarchical_metrics(scores, targets, distances)
    assert set(got) == {"top1", "mistake_severity", "hierdist@1", "hierdist@5", "hierdist@20", "num_samples"}
    assert got["hierdist@1"] == pytest.approx(got["mistake_severity"] * (1 - got["top1"] / 100))


def naive_metrics(scores, targets, distances, ks):
    """A per-sample Python transcription of the definitions (ties to the lower index)."""
    correct, severities, hier = 0, [], {k: [] for k in ks}
    for row, y in zip(scores.tolist(), targets.tolist()):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))
        correct += order[0] == y
        if order[0] != y:
            severities.append(distances[order[0]][y])
        for k in ks:
            hier[k].append(sum(distances[j][y] for j in order[:k]) / k)
    result = {"top1": 100 * correct / len(targets), "mistake_severity": float(np.mean(severities))}
    result.update({f"hierdist@{k}": float(np.mean(hier[k])) for k in ks})
    return result


def test_streaming_and_merge_match_one_shot_and_naive():
    gen = torch.Generator().manual_seed(1)
    k = 23
    distances = torch.randint(1, 7, (k, k), generator=gen)
    distances = torch.triu(distances, 1) + torch.triu(distances, 1).T
    scores = torch.randn(101, k, generator=gen).round(decimals=1)  # rounding creates ties
    targets = torch.randint(0, k, (101,), generator=gen)
    ks = (1, 3, 20)

    one_shot = hierarchical_metrics(scores, targets, distances, ks)
    expected = naive_metrics(scores, targets, distances.tolist(), ks)
    for key, value in expected.items():
        assert one_shot[key] == pytest.approx(value, rel=1e-12), key

    first, second = HierarchicalMetrics(distances, ks), HierarchicalMetrics(distances, ks)
    for start in range(0, 101, 17):
        (first if start < 50 else second).update(scores[start:start + 17], targets[start:start + 17])
    first.update(scores[:0], targets[:0])  # an empty batch is a no-op
    merged = pickle.loads(pickle.dumps(first)).merge(pickle.loads(pickle.dumps(second)))
    assert merged.compute() == pytest.approx(one_shot, rel=1e-12)
    # The state is all-reducible: the sum of the two ranks' state vectors is the merged state.
    assert torch.equal(first.state + second.state, merged.state)


def test_ties_go_to_the_lower_class_index():
    got = hierarchical_metrics(torch.zeros(1, 4, dtype=torch.bfloat16), torch.tensor([3]), D4, ks=(1, 2))
    assert got["top1"] == 0.0 and got["mistake_severity"] == 2.0  # predicted class 0
    assert got["hierdist@2"] == 2.0  # classes 0 and 1, both cousins of 3


def test_all_correct_gives_nan_severity():
    got = hierarchical_metrics(torch.eye(4), torch.arange(4), D4, ks=(1,))
    assert got["top1"] == 100.0 and got["hierdist@1"] == 0.0 and math.isnan(got["mistake_severity"])


def test_crm_hand_worked():
    probs = torch.tensor([[0.4, 0.0, 0.3, 0.3], [0.1, 0.8, 0.05, 0.05]])
    # Expected distances, row 0: j=0: 0.6+0.6 = 1.2, j=1: 0.4+1.2 = 1.6, j=2: 0.8+0.3 = 1.1, j=3: 1.1
    expected = torch.tensor([[1.2, 1.6, 1.1, 1.1], [0.1 * 0 + 0.8 + 0.2, 0.1 + 0.2, 1.8 + 0.05, 1.8 + 0.05]])
    torch.testing.assert_close(crm_scores(probs, D4), -expected)
    assert crm_predict(probs, D4).tolist() == [2, 1]  # row 0: argmax says 0, CRM says 2 (tie with 3 → lower)
    # Fast path with a ready tensor on the right device/dtype gives the same answer.
    ready = torch.as_tensor(D4, dtype=torch.float32)
    assert crm_predict(probs, ready).tolist() == [2, 1]
    assert crm_scores(probs.double(), D4).dtype == torch.float64


def test_neural_collapse_hand_worked():
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    zero_off_diagonal = torch.eye(3)
    got = neural_collapse_metrics(means, zero_off_diagonal)
    # gaps: |0 − 0|, |1/√2 − 0|, |1/√2 − 0| → mean √2/3, population std 1/3
    assert got["nc_mean"] == pytest.approx(math.sqrt(2) / 3) and got["nc_std"] == pytest.approx(1 / 3)

    exact = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    s = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]])
    assert neural_collapse_metrics(exact, s) == pytest.approx({"nc_mean": 0.0, "nc_std": 0.0}, abs=1e-15)

    # Centring: [[2, 1], [0, 1]] around [1, 1] is the 2-class ETF (cos = −1); raw cosine is 1/√5.
    etf = np.array([[1.0, -1.0], [-1.0, 1.0]])
    two = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
    assert neural_collapse_metrics(two, etf, centred=True)["nc_mean"] == pytest.approx(0.0, abs=1e-15)
    assert neural_collapse_metrics(two, etf)["nc_mean"] == pytest.approx(1 + 1 / math.sqrt(5))


def test_class_means_and_missing_classes():
    features = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    targets = torch.tensor([0, 0, 1, 3])
    means, counts = class_means(features, targets, num_classes=4)
    torch.testing.assert_close(means, torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0], [5.0, 5.0]], dtype=torch.float64))
    assert counts.tolist() == [2, 1, 0, 1]
    s = torch.eye(4)
    got = neural_collapse_metrics(means, s, counts=counts)  # class 2 (no samples) leaves the pairs
    # pairs (0,1): 0, (0,3): 1/√2, (1,3): 1/√2
    assert got["nc_mean"] == pytest.approx(math.sqrt(2) / 3)

    streamed = ClassMeans(4, 2)
    streamed.update(features[:2], targets[:2])
    other = ClassMeans(4, 2)
    other.update(features[2:], targets[2:])
    merged_means, merged_counts = streamed.merge(other).compute()
    torch.testing.assert_close(merged_means, means)
    assert torch.equal(merged_counts, counts)


def test_self_duality():
    w = torch.eye(2)
    assert self_duality(w, 3 * w) == pytest.approx(0.0, abs=1e-15)
    assert self_duality(w, torch.tensor([[0.0, 1.0], [1.0, 0.0]])) == pytest.approx(math.sqrt(2))
    assert self_duality(w, -w) == pytest.approx(2.0)


def test_errors():
    with pytest.raises(ValueError, match=r"targets\[1\] = 4 is not a class index in \[0, 4\)"):
        hierarchical_metrics(SCORES, torch.tensor([0, 4, 1]), D4)
    with pytest.raises(ValueError, match=r"targets\[0\] = -1"):
        hierarchical_metrics(SCORES, torch.tensor([-1, 0, 1]), D4)
    with pytest.raises(ValueError, match="scores must be B × K with K = 4"):
        hierarchical_metrics(SCORES[:, :3], TARGETS, D4)
    with pytest.raises(ValueError, match=r"targets must have shape \(3,\)"):
        hierarchical_metrics(SCORES, TARGETS[:2], D4)
    with pytest.raises(ValueError, match="integer class indices"):
        hierarchical_metrics(SCORES, TARGETS.float(), D4)
    nan_scores = SCORES.clone()
    nan_scores[2, 1] = float("nan")
    with pytest.raises(ValueError, match="scores row 2 contains NaN"):
        hierarchical_metrics(nan_scores, TARGETS, D4)
    with pytest.raises(ValueError, match="square"):
        hierarchical_metrics(SCORES, TARGETS, D4[:3])
    bad_d = D4.astype(float)
    bad_d[0, 1] = np.inf
    with pytest.raises(ValueError, match=r"distances\[0, 1\] = inf is not finite"):
        hierarchical_metrics(SCORES, TARGETS, bad_d)
    for ks in ((0,), (1.5,), ()):
        with pytest.raises(ValueError, match="ks"):
            hierarchical_metrics(SCORES, TARGETS, D4, ks=ks)
    with pytest.raises(ValueError, match="no samples"):
        HierarchicalMetrics(D4).compute()
    with pytest.raises(ValueError, match="cannot merge"):
        HierarchicalMetrics(D4, (1,)).merge(HierarchicalMetrics(D4, (1, 2)))
    with pytest.raises(ValueError, match="different distance matrices"):
        HierarchicalMetrics(D4, (1,)).merge(HierarchicalMetrics(D4 * 2, (1,)))
    with pytest.raises(ValueError, match="distances must be K × K with K = 4|scores have K = 4"):
        crm_predict(torch.rand(2, 4), D4[:3, :3])
    with pytest.raises(ValueError, match="similarity must be K × K with K = 2"):
        neural_collapse_metrics(torch.eye(2), torch.eye(3))
    with pytest.raises(ValueError, match="at least 2 classes with samples"):
        neural_collapse_metrics(torch.eye(2), torch.eye(2), counts=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="same shape"):
        self_duality(torch.eye(2), torch.eye(3))
    with pytest.raises(ValueError, match="features must be B × D with D = 2"):
        ClassMeans(3, 2).update(torch.ones(4, 3), torch.zeros(4, dtype=torch.long))


def _all_reduce_worker(rank: int, world_size: int, init_file: str, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    metric = HierarchicalMetrics(D4, ks=(1, 2))
    metric.update(SCORES[rank::2], TARGETS[rank::2])
    queue.put((rank, metric.all_reduce_().compute()))
    dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_over_two_gloo_ranks(tmp_path):
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    processes = [
        context.Process(target=_all_reduce_worker, args=(rank, 2, str(tmp_path / "init"), queue)) for rank in range(2)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    results = dict(queue.get() for _ in range(2))
    expected = hierarchical_metrics(SCORES, TARGETS, D4, ks=(1, 2))
    assert results[0] == pytest.approx(expected, nan_ok=True) and results[1] == results[0]


def test_numpy_inputs_are_accepted():
    got = hierarchical_metrics(SCORES.numpy(), TARGETS.numpy(), D4, ks=(1, 2))
    assert got == hierarchical_metrics(SCORES, TARGETS, D4, ks=(1, 2))
