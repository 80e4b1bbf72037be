"""Contracts every registered method keeps: which matrix is its classifier, which buffers are fixed."""
import pytest
from torch import nn

from haf.methods import MethodContext, available_methods, get_method
from haf.methods.base import Method
from method_fixtures import DISTANCES, LEVEL_LABELS  # the 4-leaf test tree

# Two-level tree over 4 leaves: {0, 1} and {2, 3} are siblings.
CONTEXT = MethodContext(classes=("a", "b", "c", "d"), distances=DISTANCES,
                        level_labels=LEVEL_LABELS, seed=0)
PER_LEVEL = {"flamingo", "hafeature"}  # one classifier per level: no single K-row classifier


@pytest.mark.parametrize("name", available_methods())
def test_classifier_weights_are_the_methods_own_k_rows(name):
    method = get_method(name)(4, CONTEXT)  # in_features = K = 4 suits every method, frames included
    weights = method.classifier_weights()
    if name in PER_LEVEL:
        assert weights is None
        return
    assert weights.shape == (4, 4)
    # it is the matrix the method scores with: a buffer or a parameter of the method itself, not a copy
    owned = list(method.parameters()) + list(method.buffers())
    assert any(weights is tensor for tensor in owned)


@pytest.mark.parametrize("name", available_methods())
def test_fixed_buffers_never_include_batchnorm_statistics(name):
    method = get_method(name)(4, CONTEXT)
    for key, buffer in method.fixed_buffers().items():
        assert "running_" not in key and "num_batches_tracked" not in key
        assert buffer.is_floating_point()


def test_base_method_declares_no_fixed_buffers():
    class WithNorm(Method):
        def __init__(self):
            super().__init__(4, CONTEXT)
            self.norm = nn.BatchNorm1d(4)

    method = WithNorm()
    assert dict(method.named_buffers())  # it has BatchNorm statistics ...
    assert method.fixed_buffers() == {}  # ... which follow the model's dtype, unlike a frame
    assert method.classifier_weights() is None
