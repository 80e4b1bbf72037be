"""Shared set-up for tests/ and bench/.

Without a GPU, Triton kernels run through Triton's interpreter: ``TRITON_INTERPRET`` must be set before
``triton.jit`` decorates a kernel, so it is set here, before any test module imports ``haf.kernels``.
"""
import os

# Multi-threaded OpenBLAS busy-waits when the cores are shared or oversubscribed (numpy eigensolves ran 6-20x
# slower on 2 shared cores); set before numpy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def single_torch_thread():
    """One intra-op thread for modules of tiny-tensor tests (``pytestmark = pytest.mark.usefixtures(...)``).

    On tiny tensors extra threads only add synchronisation: the method tests ran 10-20x slower with two threads
    on a shared 2-core machine.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
