"""The fused frame loss's input rules, half-precision accuracy near convergence, launch count, caches and the
torch.library operator (interpreter on CPU; the same tests run on CUDA tensors with a GPU)."""
from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
import torch.nn.functional as F

from haf.kernels import frame_loss
from haf.kernels.dense import fused as fused
from haf.losses import hierarchy_frame_loss

DEVICE = "cpu" if fused.INTERPRETED else "cuda"


def problem(batch=24, dim=21, classes=100, seed=0, kind="random", scale=1.0, noise=0.01):
    gen = torch.Generator().manual_seed(seed)
    frame = F.normalize(torch.randn(classes, dim, generator=gen, dtype=torch.float64), dim=1)
    target = torch.randint(0, classes, (batch,), generator=gen)
    if kind == "near":  # h ≈ c·w_y + small noise: the state HAFrame trains towards
        c = scale * (1.0 + 4.0 * torch.rand(batch, 1, generator=gen, dtype=torch.float64))
        features = c * (frame[target] + noise * torch.randn(batch, dim, generator=gen, dtype=torch.float64))
    else:
        features = 3.0 * torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    similarity = frame @ frame.T
    similarity = 0.5 * (similarity + similarity.T)
    return features, frame.float(), target, similarity.float()


def on(device, *tensors):
    return [t.to(device) for t in tensors]


def fused_loss_and_grad(features, frame, target, similarity, alpha, reduction="mean", **kwargs):
    h = features.detach().to(DEVICE).requires_grad_()
    loss = fused.triton_frame_loss(h, *on(DEVICE, frame, target, similarity), alpha, reduction, **kwargs)
    loss.backward()
    return loss.detach().cpu().double(), h.grad.cpu().double()


def truth(features, frame, target, similarity, alpha, reduction="mean"):
    h = features.detach().double().requires_grad_()
    loss = hierarchy_frame_loss(h, frame.double(), target, similarity.double(), alpha, reduction)
    loss.backward()
    return loss.detach(), h.grad


# ------------------------------------------------------------------------------------------ accuracy near convergence
@pytest.mark.parametrize("alpha", [0.4, 1.0])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_near_convergence_meets_the_bar(dtype, alpha):
    """Loss within 1e-3 and dL/dh within 1e-2 (relative, largest element) of float64 on the given half inputs."""
    features, frame, target, similarity = problem(32, 37, 100, seed=3, kind="near", noise=0.02)
    features = features.to(dtype)
    loss, grad = fused_loss_and_grad(features, frame, target, similarity, alpha)
    exact_loss, exact_grad = truth(features, frame, target, similarity, alpha)
    assert abs(loss - exact_loss) <= 1e-3 * abs(exact_loss)
    assert (grad - exact_grad).abs().max() <= 1e-2 * exact_grad.abs().max()
    assert (grad - exact_grad).norm() <= 1e-2 * exact_grad.norm()


# ------------------------------------------------------------------------------------------ targets
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16,
                                   torch.uint32], ids=str)
def test_every_integer_target_dtype(dtype):
    """Compared by value: −100 is unrepresentable in unsigned dtypes, so no row of those is ignored (the old
    kernel read its masked lanes as 156 and counted them)."""
    features, frame, target, similarity = problem(24, 21, 100, seed=4)
    signed = dtype.is_signed
    if signed:
        target[[2, 9]] = -100
    typed = target.to(dtype)
    loss, grad = fused_loss_and_grad(features.float(), frame, typed, similarity, 0.4)
    exact_loss, exact_grad = truth(features.float(), frame, target, similarity, 0.4)
    torch.testing.assert_close(loss, exact_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, exact_grad, rtol=1e-4, atol=1e-6)


def test_uint8_targets_with_ignore_index_in_range():
    features, frame, target, similarity = problem(24, 21, 100, seed=5)
    target[[1, 7]] = 99
    loss, _ = fused_loss_and_grad(features.float(), frame, target.to(torch.uint8), similarity, 0.4,
                                  ignore_index=99)
    exact, _ = truth(features.float(), frame, torch.where(target == 99, -100, target), similarity, 0.4)
    torch.testing.assert_close(loss, exact, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad, message", [(torch.uint64, "uint64"), (torch.bool, "integer tensor")])
def test_unrepresentable_target_dtypes_are_refused(bad, message):
    features, frame, target, similarity = problem(8, 21, 100)
    with pytest.raises(ValueError, match=message):
        fused_loss_and_grad(features.float(), frame, target.to(bad), similarity, 0.4)


# ------------------------------------------------------------------------------------------ input validation
@pytest.mark.parametrize("case, message", [
    ("nan-features", "features has non-finite"),
    ("inf-frame", "frame has non-finite"),
    ("nan-similarity", "similarity has non-finite"),
    ("asymmetric", "similarity is not symmetric"),
    ("range", "outside \\[-1, 1\\]"),
    ("unit", "not unit norm"),
    ("alpha-string", "alpha must be a number"),
    ("alpha-none", "alpha must be a number"),
    ("alpha-vector", "alpha must be a number"),
    ("alpha-range", "alpha .* \\[0, 1\\]"),
])
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_bad_values_are_one_line_errors_naming_the_argument(case, message, backend):
    features, frame, target, similarity = problem(8, 21, 100, seed=6)
    features = features.float()
    alpha, unit = 0.4, False
    if case == "nan-features":
        features[3, 2] = float("nan")
    elif case == "inf-frame":
        frame = frame.clone()
        frame[1, 1] = float("inf")
    elif case == "nan-similarity":
        similarity = similarity.clone()
        similarity[2, 2] = float("nan")
    elif case == "asymmetric":
        similarity = similarity.clone()
        similarity[0, 1] += 0.1
    elif case == "range":
        similarity = similarity * 1.5
    elif case == "unit":
        frame, unit = frame * 1.1, True
    elif case == "alpha-string":
        alpha = "0.4"
    elif case == "alpha-none":
        alpha = None
    elif case == "alpha-vector":
        alpha = torch.tensor([0.4, 0.5])
    elif case == "alpha-range":
        alpha = 1.5
    args = on(DEVICE, features, frame, target, similarity)
    with pytest.raises((ValueError, TypeError), match=message) as raised:
        frame_loss(*args, alpha, backend=backend, unit_frame=unit)
    assert "\n" not in str(raised.value)


def test_constant_checks_run_once_per_tensor_version(monkeypatch):
    features, frame, target, similarity = problem(8, 21, 100, seed=7)
    calls = []
    real = fused.check_similarity_values
    monkeypatch.setattr(fused, "check_similarity_values", lambda s: (calls.append(1), real(s)))
    args = on(DEVICE, features.float(), frame, target, similarity)
    for _ in range(3):
        fused.triton_frame_loss(*args, 0.4)
    assert len(calls) == 1
    args[3].mul_(1.0)  # a new version: checked (and prepared) again
    fused.triton_frame_loss(*args, 0.4)
    assert len(calls) == 2


# ------------------------------------------------------------------------------------------ ‖h‖ below ε
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_features_below_eps_have_no_direction_in_every_dtype(dtype):
    features, frame, target, similarity = problem(16, 21, 100, seed=8)
    features[2] = 0.0
    features[5] = 1e-8  # ‖h‖ ≈ 4.6e-8 < FEATURE_EPS (a subnormal in fp16, 0 after rounding in none)
    features = features.to(dtype)
    loss, grad = fused_loss_and_grad(features, frame, target, similarity, 0.5, "sum")
    exact_loss, exact_grad = truth(features, frame, target, similarity, 0.5, "sum")
    assert torch.isfinite(grad).all() and grad.abs().max() < 10.0
    torch.testing.assert_close(loss, exact_loss, rtol=1e-5, atol=1e-5)
    # dL/dh is stored in the input dtype: within that dtype's rounding of the largest element
    assert (grad - exact_grad).abs().max() <= max(2 * torch.finfo(dtype).eps, 1e-5) * exact_grad.abs().max()
    assert grad[2].abs().max() <= 1.0  # cross-entropy's gradient only: (1 − α)·Σ|p − δ|·‖w‖ ≤ 1


# ------------------------------------------------------------------------------------------ launches and caches
class _Counter:
    def __init__(self):
        self.launches = []

    def __call__(self, kernel, grid, *args, **meta):
        self.launches.append(kernel)  # launch replaced by a no-op: the interpreter's own tensor traffic is not ours


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_one_kernel_forward_and_at_most_three_launches_per_step(reduction, monkeypatch):
    from torch.utils._python_dispatch import TorchDispatchMode

    features, frame, target, similarity = problem(40, 21, 100, seed=9)
    counter = _Counter()
    monkeypatch.setattr(fused, "_launch", counter)
    # the target range is checked on the host for CPU tensors only (a GPU row gets NaN instead): the GPU path
    monkeypatch.setattr(fused, "check_target_range", lambda *args: None)
    free = {"empty.memory_format", "empty_strided.default", "slice.Tensor", "select.int", "view.default",
            "detach.default", "unsqueeze.default", "alias.default", "t.default", "as_strided.default",
            "ones_like.default"}  # ones_like: autograd's seed, not counted

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__ not in free and func.__name__.split(".")[0] not in ("empty", "_to_copy"):
                self.ops.append(func.__name__)
            return func(*args, **(kwargs or {}))

    h = features.float().to(DEVICE).requires_grad_()
    args = on(DEVICE, frame, target, similarity)
    fused.triton_frame_loss(h, *args, 0.4, reduction).sum().backward()  # warm: plan, prepared frame
    h.grad = None
    counter.launches.clear()
    with Ops() as ops:
        loss = fused.triton_frame_loss(h, *args, 0.4, reduction)
        (loss.sum() if reduction == "none" else loss).backward()
    torch_launches = [op for op in ops.ops if op != "sum.default" or reduction != "none"]
    assert counter.launches == [fused.K._row_block_kernel, fused.K._scale_grad_kernel]  # forward, backward
    assert len(counter.launches) + len(torch_launches) <= 3, torch_launches


def test_prepared_frame_cache_holds_nothing_after_the_frame_dies():
    features, frame, target, similarity = problem(8, 21, 100, seed=10)
    frame = frame.clone().to(DEVICE)
    similarity = similarity.clone().to(DEVICE)
    fused.triton_frame_loss(*on(DEVICE, features.float()), frame, target.to(DEVICE), similarity, 0.4)
    assert frame in fused._frames and similarity in fused._tables
    kept = [weakref.ref(t) for entry in (fused._frames[frame], fused._tables[similarity])
            for value in entry[1].values() for t in (value if isinstance(value, tuple) else (value,))]
    assert kept and all(ref() is not None for ref in kept)
    del frame, similarity
    gc.collect()
    assert all(ref() is None for ref in kept)  # the prepared copies died with their tensors


# ------------------------------------------------------------------------------------------ torch.compile
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiled_model_traces_through_the_loss_without_a_graph_break(reduction):
    """The reference backend behind the registered operator, compiled with fullgraph=True on CPU."""
    features, frame, target, similarity = problem(12, 9, 7, seed=11)
    features, frame, similarity = features.float(), frame.float(), similarity.float()
    layer = torch.nn.Linear(9, 9).double().float()

    def step(x):
        loss = frame_loss(layer(x), frame, target, similarity, 0.4, reduction, backend="reference")
        return loss.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = features.clone().requires_grad_()
    compiled(x).backward()
    got_x, got_w = x.grad.clone(), layer.weight.grad.clone()
    x.grad = None
    layer.weight.grad = None
    step(x).backward()
    torch.testing.assert_close(got_x, x.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_w, layer.weight.grad, rtol=1e-5, atol=1e-6)
    assert math.isfinite(float(compiled(x)))


def test_registered_operator_matches_the_fused_path():
    features, frame, target, similarity = problem(20, 21, 100, seed=12)
    h = features.float().to(DEVICE)
    loss, grad, scale = torch.ops.haf.frame_loss(h, *on(DEVICE, frame, target, similarity), 0.4, "mean", -100,
                                                 "triton", False, True)
    exact_loss, exact_grad = truth(features.float(), frame, target, similarity, 0.4)
    torch.testing.assert_close(loss.cpu().double(), exact_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close((grad * scale).cpu().double(), exact_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_kernel_applies_grad_output_of_any_stride(dtype):
    """reduction="none": ``loss.sum()`` hands the backward an expanded grad_output (stride 0), a weighted sum a
    strided one; "mean" a scalar times the batch weight. Each against float64 on the same inputs."""
    features, frame, target, similarity = problem(20, 21, 100, seed=15)
    features = features.to(dtype)
    weights = torch.linspace(-2.0, 3.0, 40, dtype=torch.float64)[::2]  # a strided view
    for reduction, reduce in (("none", lambda loss: loss.sum()), ("none", lambda loss: (loss * weights.to(loss)).sum()),
                              ("mean", lambda loss: 3.0 * loss)):
        h = features.detach().to(DEVICE).requires_grad_()
        reduce(fused.triton_frame_loss(h, *on(DEVICE, frame, target, similarity), 0.4, reduction).cpu()).backward()
        x = features.detach().double().requires_grad_()
        reduce(hierarchy_frame_loss(x, frame.double(), target, similarity.double(), 0.4, reduction)).backward()
        scale = x.grad.abs().max()
        assert float((h.grad.cpu().double() - x.grad).abs().max() / scale) < (1e-2 if dtype != torch.float32 else 1e-5)


def test_second_derivative_through_the_fused_gradient_is_refused():
    features, frame, target, similarity = problem(8, 21, 100, seed=16)
    h = features.float().to(DEVICE).requires_grad_()
    loss = fused.triton_frame_loss(h, *on(DEVICE, frame, target, similarity), 0.4)
    seed = torch.ones((), device=DEVICE, requires_grad=True)  # a differentiable grad_output: d²L/dh d(seed) asked
    (grad,) = torch.autograd.grad(loss, h, seed, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


# ------------------------------------------------------------------------------------------ GPU only
@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_gpu_tensors_on_a_non_current_device():
    features, frame, target, similarity = problem(24, 21, 100, seed=13)
    args = on("cuda:1", features.float(), frame, target, similarity)
    with torch.cuda.device(0):
        loss = fused.triton_frame_loss(*args, 0.4)
    torch.testing.assert_close(loss.cpu().double(), truth(features.float(), frame, target, similarity, 0.4)[0],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_gpu_forward_backward_captures_in_a_cuda_graph():
    features, frame, target, similarity = problem(256, 1010, 1010, seed=14)
    h = features.to(torch.bfloat16).cuda().requires_grad_()
    args = on("cuda", frame, target, similarity)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm-up: compilation, plan, prepared frame
            h.grad = None
            fused.triton_frame_loss(h, *args, 0.4).backward()
        graph = torch.cuda.CUDAGraph()
        h.grad = None
        with torch.cuda.graph(graph):
            static_loss = fused.triton_frame_loss(h, *args, 0.4)
            static_loss.backward()
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    torch.cuda.synchronize()
    exact_loss, exact_grad = truth(features.to(torch.bfloat16), frame, target, similarity, 0.4)
    assert abs(static_loss.item() - exact_loss.item()) <= 1e-3 * abs(exact_loss.item())
    assert (h.grad.double().cpu() - exact_grad).abs().max() <= 1e-2 * exact_grad.abs().max()


@pytest.mark.gpu
def test_gpu_non_finite_features_are_reported_by_the_next_call():
    features, frame, target, similarity = problem(24, 21, 100, seed=15)
    bad = features.float().clone()
    bad[0, 0] = float("nan")
    args = on("cuda", frame, target, similarity)
    fused.triton_frame_loss(bad.cuda(), *args, 0.4)
    torch.cuda.synchronize()
    with pytest.raises(ValueError, match="non-finite"):
        fused.triton_frame_loss(features.float().cuda(), *args, 0.4)
