"""Every baseline method learns: a linear feature map + the method, trained on separable synthetic data.

Value and gradient checks hold at chosen points; this checks the whole training signal: a loss that pushes the
wrong way (a flipped sign, a stop-gradient cutting the path to the features, a detached class vector) leaves
four well-separated Gaussian classes unfitted. It cannot see a term whose weight is too small to matter.
"""
from __future__ import annotations

import pytest
import torch

from haf.methods import MethodContext, get_method
from method_fixtures import DISTANCES, LEVEL_LABELS  # the 4-leaf test tree

CONTEXT = MethodContext(classes=("a", "b", "c", "d"), distances=DISTANCES, level_labels=LEVEL_LABELS, seed=0)
METHODS = ("etf-dot-regression", "hug", "soft-labels", "hierarchical-ce", "flamingo", "hafeature")


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see conftest.py


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.randn(4, 10, generator=gen)
    targets = torch.arange(4).repeat(32)
    return centres[targets] + torch.randn(128, 10, generator=gen), targets


@pytest.mark.parametrize("name", METHODS)
def test_method_fits_separable_classes(name: str):
    torch.manual_seed(0)
    width = 6  # ≥ K − 1 for the ETF, ≥ 2 levels for Flamingo's chunks
    extractor = torch.nn.Linear(10, width)
    method = get_method(name)(width, CONTEXT)
    optimizer = torch.optim.Adam([*extractor.parameters(), *method.parameters()], lr=0.05)
    features, targets = _data(0)
    for _ in range(60):
        optimizer.zero_grad()
        loss = method.loss(method(extractor(features)), targets)
        loss.backward()
        optimizer.step()
    method.eval()
    with torch.no_grad():  # eval mode (BatchNorm's running statistics), same samples: training accuracy
        outputs = method(extractor(features))
        accuracy = (method.scores(outputs).argmax(1) == targets).float().mean().item()
        probs = method.probabilities(outputs)
    assert accuracy >= 0.95, f"{name}: training accuracy {accuracy:.2f}"
    assert (probs.argmax(1) == targets).float().mean().item() >= 0.95
