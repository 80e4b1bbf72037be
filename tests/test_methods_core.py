"""The cross-entropy, HAFrame and fixed-ETF methods: registry, options, frames, losses against hand computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from haf.models.classifier import build_method_options
from haf.frame import find_s_min
from haf.methods import MethodContext, available_methods, get_method

# Two superclasses {0, 1, 2} and {3, 4}; siblings at distance 1, cousins at 2 (lca-height convention).
DISTANCES = np.array(
    [
        [0, 1, 1, 2, 2],
        [1, 0, 1, 2, 2],
        [1, 1, 0, 2, 2],
        [2, 2, 2, 0, 1],
        [2, 2, 2, 1, 0],
    ]
)
K = DISTANCES.shape[0]


def _context(seed: int = 0) -> MethodContext:
    return MethodContext(classes=tuple(f"c{i}" for i in range(K)), distances=DISTANCES, seed=seed)


def _method(name: str, in_features: int = K, seed: int = 0, **options):
    cls = get_method(name)
    return cls(in_features, _context(seed), build_method_options(cls, options))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _features(batch: int = 6, dim: int = K, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed)) * 2.0


TARGETS = torch.tensor([0, 1, 2, 3, 4, 3])


def test_registry_lists_the_core_methods():
    assert {"cross-entropy", "haframe", "etf-ce"} <= set(available_methods())
    assert get_method("haframe").name == "haframe"


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("haframe", {"alpha": 1.5}, "alpha must lie in"),
        ("haframe", {"gamma": 0.0}, "gamma must be a positive"),
        ("haframe", {"s_min": -1.5}, "s_min must lie in"),
        ("haframe", {"backend": "cuda"}, "backend must be one of auto, triton, reference"),
        ("haframe", {"gama": 2.0}, r"no option 'gama'.*gamma, alpha, s_min, backend"),
        ("cross-entropy", {"label_smoothing": 1.0}, "label_smoothing must lie in"),
        ("etf-ce", {"backend": "fast"}, "backend must be one of"),
    ],
)
def test_bad_options_are_named(name, options, message):
    with pytest.raises(ValueError, match=message):
        _method(name, **options)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_loss_matches_hand_computation(smoothing):
    method = _method("cross-entropy", in_features=4, label_smoothing=smoothing)
    assert method.classifier.bias is not None  # torchvision's fc has a bias
    h = _features(dim=4)
    logits = method(h)
    weight = method.classifier.weight.detach().double().numpy()
    bias = method.classifier.bias.detach().double().numpy()
    log_p = _log_softmax(h.double().numpy() @ weight.T + bias)
    y = TARGETS.numpy()
    per_sample = -(1 - smoothing) * log_p[np.arange(len(y)), y] - smoothing * log_p.mean(axis=1)
    # The method computes in fp32: compare with the fp64 value at fp32 accuracy.
    expected = torch.tensor(per_sample.mean(), dtype=torch.float64)
    torch.testing.assert_close(method.loss(logits, TARGETS).double(), expected, rtol=1e-5, atol=1e-6)
    assert method.scores(logits) is logits
    torch.testing.assert_close(method.probabilities(logits), torch.softmax(logits, dim=1))


def test_haframe_builds_the_paper_frame():
    gamma, s_min = 2.0, -0.2
    method = _method("haframe", gamma=gamma, s_min=s_min)
    expected_s = (1 - s_min) * np.exp(-gamma * DISTANCES / DISTANCES.max()) + s_min
    frame = method.frame.double().numpy()
    np.testing.assert_allclose(method.similarity.double().numpy(), expected_s, atol=1e-6)
    np.testing.assert_allclose(frame @ frame.T, expected_s, atol=1e-5)  # W Wᵀ = S, hence unit rows
    assert method.frame.dtype == torch.float32 and method.frame.shape == (K, K)
    assert method.frame_info["s_min"] == pytest.approx(s_min) and method.frame_info["d_max"] == 2


def test_haframe_searches_s_min_by_default():
    method = _method("haframe", gamma=2.0)
    assert method.frame_info["s_min"] == pytest.approx(find_s_min(DISTANCES, 2.0))
    assert method.frame_info["s_min"] < 0


def test_frame_depends_on_the_seed_but_its_gram_does_not():
    a, b, c = (_method("haframe", seed=s, s_min=-0.2) for s in (0, 0, 1))
    assert torch.equal(a.frame, b.frame)
    assert not torch.allclose(a.frame, c.frame)
    torch.testing.assert_close(a.frame @ a.frame.T, c.frame @ c.frame.T, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["auto", "reference", "triton"])  # triton: interpreter on CPU
@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_haframe_loss_matches_hand_computation(backend, alpha):
    method = _method("haframe", gamma=1.0, alpha=alpha, s_min=-0.3, backend=backend)
    h = _features()
    outputs = method(h)
    assert outputs is h  # h is passed on, not normalised
    w = method.frame.double().numpy()
    s = method.similarity.double().numpy()
    hn = h.double().numpy()
    y = TARGETS.numpy()
    z = hn @ w.T
    ce = -_log_softmax(z)[np.arange(len(y)), y]
    cos = z / np.linalg.norm(hn, axis=1, keepdims=True) / np.linalg.norm(w, axis=1)[None, :]
    cosine_term = ((cos - s[:, y].T) ** 2).sum(axis=1)  # summed over classes
    expected = ((1 - alpha) * ce + alpha * cosine_term).mean()  # averaged over the batch
    loss = method.loss(outputs, TARGETS)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(method.scores(outputs).double(), torch.from_numpy(z), rtol=1e-5, atol=1e-5)


def test_haframe_scores_stay_fp32_under_autocast():
    method = _method("haframe", s_min=-0.2)
    h = _features()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = method.scores(method(h.bfloat16()))
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, h.bfloat16().float() @ method.frame.T)


def test_haframe_feature_width_must_be_k():
    with pytest.raises(ValueError, match=rf"K = {K} classes.*in_features = 600"):
        _method("haframe", in_features=600)
    bad = MethodContext(classes=tuple("abcde"), distances=DISTANCES[:4, :4])
    with pytest.raises(ValueError, match=r"distances must be K × K = 5 × 5.*\(4, 4\)"):
        get_method("haframe")(K, bad)


def test_fixed_etf_is_the_simplex_and_its_loss_is_cross_entropy():
    dim = K + 3  # any width ≥ K − 1
    method = _method("etf-ce", in_features=dim)
    frame = method.frame.double()
    gram = frame @ frame.T
    expected_gram = torch.full((K, K), -1.0 / (K - 1), dtype=torch.float64).fill_diagonal_(1.0)
    torch.testing.assert_close(gram, expected_gram, atol=1e-6, rtol=0)
    torch.testing.assert_close(method.similarity.double(), expected_gram, atol=1e-6, rtol=0)

    h = _features(dim=dim)
    z = h.double().numpy() @ frame.numpy().T
    expected = -_log_softmax(z)[np.arange(len(TARGETS)), TARGETS.numpy()].mean()
    loss = method.loss(method(h), TARGETS).double()
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    assert _method("etf-ce", in_features=K - 1).frame.shape == (K, K - 1)
    with pytest.raises(ValueError, match=rf"width ≥ K − 1 = {K - 1}.*in_features = {K - 2}"):
        _method("etf-ce", in_features=K - 2)


@pytest.mark.parametrize("name, dim", [("cross-entropy", 4), ("haframe", K), ("etf-ce", K)])
def test_gradient_reaches_the_features_and_not_the_frame(name, dim):
    method = _method(name, in_features=dim, **({"s_min": -0.2} if name == "haframe" else {}))
    h = _features(dim=dim).requires_grad_(True)
    method.loss(method(h), TARGETS).backward()
    assert h.grad is not None and torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0
    if name == "cross-entropy":
        assert method.classifier.weight.grad.abs().sum() > 0
    else:
        assert list(method.parameters()) == []
        assert not method.frame.requires_grad and method.frame.grad is None
        assert {"frame", "similarity"} <= set(method.state_dict())


def test_half_precision_casts_keep_the_frame_exact():
    """DeepSpeed's bf16/fp16 weights call .bfloat16()/.half() on the whole model: the frame must not be rounded."""
    method = _method("haframe", s_min=-0.2)
    frame, similarity = method.frame.clone(), method.similarity.clone()
    for cast in (torch.nn.Module.bfloat16, torch.nn.Module.half, torch.nn.Module.float):
        cast(method)
        assert torch.equal(method.frame, frame) and torch.equal(method.similarity, similarity)
    method.double()  # lossless casts still apply
    assert method.frame.dtype == torch.float64 and torch.equal(method.frame.float(), frame)
    ce = _method("cross-entropy", in_features=4).bfloat16()  # ordinary weights are cast as usual
    assert ce.classifier.weight.dtype == torch.bfloat16
