"""HUG, MHE variant (Liu et al., ICLR 2023): hand-worked energy and intra-class term, gradients, method behaviour."""
from __future__ import annotations

import math

import pytest
import torch

from haf.methods._loss_common import normface_scale
from haf.methods.hug import hug_intra_class_distance, hug_loss, hyperspherical_energy
from haf.methods import MethodContext, get_method
from method_fixtures import DISTANCES  # the 4-leaf test tree

CONTEXT = MethodContext(classes=("a", "b", "c", "d"), distances=DISTANCES)
# Four proxies on a square (norms deliberately not 1: only directions count).
SQUARE = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-3.0, 0.0], [0.0, -0.5]], dtype=torch.float64)


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see conftest.py


def test_energy_of_a_square_hand_worked_and_at_a_critical_point():
    # Squared distances: 4 neighbouring pairs at 2, 2 opposite pairs at 4 → mean(1/d²) = (4·½ + 2·¼)/6 = 5/12.
    proxies = SQUARE.clone().requires_grad_(True)
    energy = hyperspherical_energy(proxies)
    assert energy.item() == pytest.approx(5 / 12, abs=1e-12)
    # The square is the uniform configuration: the gradient (tangent to the sphere) vanishes.
    energy.backward()
    torch.testing.assert_close(proxies.grad, torch.zeros_like(proxies), atol=1e-12, rtol=0)


def test_energy_gradient_matches_finite_differences():
    proxies = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(hyperspherical_energy, (proxies,))


def test_intra_class_term_is_class_balanced_and_detaches_the_proxies():
    # Class 0: one sample along (0, 1) at distance √2 from ŵ_0 = (1, 0), one along (1, 0) at distance 0 → √2/2.
    # Class 1: one sample at ŵ_1 → 0. Mean over the two present classes: √2/4 (not the sample mean √2/3).
    features = torch.tensor([[0.0, 3.0], [5.0, 0.0], [0.0, 2.0]], dtype=torch.float64, requires_grad=True)
    proxies = SQUARE.clone().requires_grad_(True)
    target = torch.tensor([0, 0, 1])
    intra = hug_intra_class_distance(features, proxies, target)
    assert intra.item() == pytest.approx(math.sqrt(2) / 4, abs=1e-12)
    intra.backward()
    assert proxies.grad is None  # the proxies are detached in this term
    # ∂/∂x of ‖x̂ − ŵ‖ / (count·n_present) for sample 0 (x̂ = (0,1), ŵ = (1,0), ‖x‖ = 3): the unit vector
    # (x̂ − ŵ)/‖x̂ − ŵ‖ = (−1, 1)/√2 projected on the tangent plane at x̂ is (−1/√2, 0), divided by ‖x‖ = 3,
    # then by count·n_present = 2·2. Sample 1 sits on its proxy: the distance's gradient there is 0, not NaN.
    torch.testing.assert_close(features.grad[0], torch.tensor([-1 / math.sqrt(2) / 3 / 4, 0.0], dtype=torch.float64))
    torch.testing.assert_close(features.grad[1], torch.zeros(2, dtype=torch.float64))


def test_intra_class_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(6, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    proxies = torch.randn(4, 3, dtype=torch.float64, generator=gen)
    target = torch.tensor([0, 0, 1, 3, 3, 3])
    assert torch.autograd.gradcheck(lambda x: hug_intra_class_distance(x, proxies, target), (features,))


def test_hug_loss_is_the_weighted_sum():
    features = torch.tensor([[0.0, 3.0], [5.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    value = hug_loss(features, SQUARE, torch.tensor([0, 0, 1]), inter_weight=0.15, intra_weight=0.015)
    assert value.item() == pytest.approx(0.15 * 5 / 12 + 0.015 * math.sqrt(2) / 4, abs=1e-12)


def test_method_scores_are_cosines_and_probabilities_sum_to_one():
    method = get_method("hug")(2, CONTEXT)
    with torch.no_grad():
        method.proxies.copy_(SQUARE.float())
    h = torch.tensor([[1.0, 0.1], [-4.0, 0.0], [0.0, -2.0]])
    scores = method.scores(method(h))
    assert torch.equal(scores.argmax(1), torch.tensor([0, 2, 3]))
    assert scores.abs().max().item() <= 1.0 + 1e-6
    probs = method.probabilities(method(h))
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    assert torch.equal(probs.argmax(1), scores.argmax(1))
    # softmax(s · cos) with the NormFace scale for K = 4 and the default target probability 0.99
    torch.testing.assert_close(probs, torch.softmax(normface_scale(4, 0.99) * scores, dim=1))


def test_method_loss_trains_proxies_and_features():
    method = get_method("hug")(3, CONTEXT)
    features = torch.randn(6, 3, requires_grad=True)
    loss = method.loss(method(features), torch.tensor([0, 1, 2, 3, 0, 1]))
    loss.backward()
    assert method.proxies.grad is not None and method.proxies.grad.abs().sum() > 0
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_options_validation():
    Options = get_method("hug").Options
    assert (Options().inter_weight, Options().intra_weight) == (0.15, 0.015)  # the paper's α, β for MHE-HUG
    with pytest.raises(ValueError, match="intra_weight must be a non-negative number"):
        Options(intra_weight=-1.0)
    with pytest.raises(ValueError, match="both 0"):
        Options(inter_weight=0.0, intra_weight=0.0)
    with pytest.raises(ValueError, match="target_probability"):
        Options(target_probability=0.0)


def test_crm_reporting_is_opt_in():
    from haf.training.evaluation import method_supports_crm

    assert not method_supports_crm(get_method("hug")(2, CONTEXT))
    assert method_supports_crm(get_method("hug")(2, CONTEXT, get_method("hug").Options(report_crm=True)))


def test_vectorised_intra_class_term_matches_the_per_class_loop():
    # The authors' form: for each class present, mean ‖x̂ − ŵ_c‖ over its samples; then the mean over classes.
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(37, 11, dtype=torch.float64, generator=gen)
    proxies = torch.randn(123, 11, dtype=torch.float64, generator=gen)
    target = torch.randint(0, 123, (37,), generator=gen)
    per_class = []
    for c in target.unique():
        x = features[target == c]
        x = x / x.norm(dim=1, keepdim=True)
        w = proxies[c] / proxies[c].norm()
        per_class.append((x - w).norm(dim=1).mean())
    torch.testing.assert_close(hug_intra_class_distance(features, proxies, target), torch.stack(per_class).mean())
    # and the energy against the explicit double loop over pairs
    unit = proxies[:9] / proxies[:9].norm(dim=1, keepdim=True)
    pairs = [1 / (unit[i] - unit[j]).square().sum() for i in range(9) for j in range(i + 1, 9)]
    torch.testing.assert_close(hyperspherical_energy(proxies[:9]), torch.stack(pairs).mean())
