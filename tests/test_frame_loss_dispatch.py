"""The public dispatcher ``haf.kernels.frame_loss``: backend choice, HAF_BACKEND, the module form, bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from haf.kernels import BACKEND_ENV, FrameLoss, frame_loss, resolve_backend
from haf.losses import hierarchy_frame_loss


def _problem(batch: int = 6, dim: int = 9, classes: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    frame = F.normalize(torch.randn(classes, dim, generator=gen, dtype=torch.float64), dim=1)
    similarity = frame @ frame.T
    target = torch.randint(0, classes, (batch,), generator=gen)
    target[1] = -100
    return features, frame, target, similarity


def test_auto_picks_reference_on_cpu(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert resolve_backend("auto", torch.zeros(2, 2)) == "reference"


def test_environment_replaces_auto_but_not_an_explicit_choice(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "triton")
    assert resolve_backend("auto", torch.zeros(2, 2)) == "triton"
    assert resolve_backend("reference", torch.zeros(2, 2)) == "reference"
    monkeypatch.setenv(BACKEND_ENV, "cuda-please")
    with pytest.raises(ValueError, match=BACKEND_ENV):
        resolve_backend("auto", torch.zeros(2, 2))


def test_unknown_backend_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="reference"):
        frame_loss(*_problem(), backend="fast")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reference_backend_is_haf_losses(reduction, monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    features, frame, target, similarity = _problem()
    got = frame_loss(features, frame, target, similarity, 0.4, reduction, backend="reference")
    want = hierarchy_frame_loss(features, frame, target, similarity, 0.4, reduction)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_reference_backend_returns_the_logits_when_asked(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    features, frame, target, similarity = _problem()
    loss, logits = frame_loss(features, frame, target, similarity, backend="reference", return_logits=True)
    torch.testing.assert_close(logits, features @ frame.T)
    assert not logits.requires_grad and loss.ndim == 0


def test_module_holds_frame_and_similarity_as_buffers(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    features, frame, target, similarity = _problem()
    module = FrameLoss(frame, similarity, alpha=0.4, backend="reference")
    assert list(module.parameters()) == []
    assert set(module.state_dict()) == {"frame", "similarity"}
    assert set(FrameLoss(frame, similarity, persistent=False).state_dict()) == set()
    torch.testing.assert_close(module(features, target), hierarchy_frame_loss(features, frame, target, similarity, 0.4))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"alpha": 1.5}, "alpha"),
        ({"reduction": "avg"}, "reduction"),
        ({"backend": "gpu"}, "backend"),
    ],
)
def test_module_rejects_bad_options(kwargs, message):
    _, frame, _, similarity = _problem()
    with pytest.raises(ValueError, match=message):
        FrameLoss(frame, similarity, **kwargs)


def test_module_rejects_a_similarity_of_the_wrong_size():
    _, frame, _, _ = _problem()
    with pytest.raises(ValueError, match="K × K"):
        FrameLoss(frame, torch.eye(3))
