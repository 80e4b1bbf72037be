"""The fused Triton HAFrame loss against the float64 reference, on odd shapes and hard inputs.

Pass rule: for the loss and for dL/dh, the fused path's error against the float64 truth is no worse than
plain PyTorch's in the same dtype (every tensor cast to that dtype, eager ops), plus a tolerance of two units of
that dtype's precision relative to the truth's magnitude. "Error" is the RMS error over all elements; the largest
single-element error may reach twice PyTorch's (plus the tolerance), because one element's error is rounding
noise that differs between any two correct implementations (different summation order over K classes).

Without a GPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1 before this module imports
them), at small B and D; the same tests run on CUDA tensors when a GPU is present. GPU-only checks (CUDA graphs,
no host synchronisation, the paper shapes) are marked ``gpu``.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from haf.kernels import FrameLoss, frame_loss
from haf.kernels.dense import fused as fused
from haf.losses import COSINE_EPS, FEATURE_EPS, hierarchy_frame_loss

DEVICE = "cpu" if fused.INTERPRETED else "cuda"
IGNORE = -100
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

#: Small tiles so that tests with a few dozen rows and ≤ 128 classes still cover several tiles along every axis
#: (and the grouped launch order, the padded last tiles, the multi-step merge of partials, several column splits).
SMALL_TILES = fused.KernelConfig(
    logits_block_b=16, logits_block_k=32, logits_block_d=16, grad_block_b=16, grad_block_d=16, grad_block_k=64,
    rows_block=16, cols_block=64, partials_block=2, group=2, row_block_max_classes=0,
)
#: The launch-bound regime's kernel with steps smaller than the problem (several class and feature steps).
SMALL_ROW_TILES = fused.KernelConfig(row_block_b=16, row_block_k=32, row_block_d=16)


def make_problem(batch, dim, classes, *, seed=0, ignored=(1,), kind="random", scale=3.0):
    """Features, a unit-row frame (fp32), targets, and S = W Wᵀ (fp32, symmetric, S_ii = 1, as for HAFrame).

    kind: "random" — Gaussian features; "confident" — h = 40·w_y + noise, so z_y exceeds every other logit by
    ≫ 10 (p_y = 1 − O(e⁻²⁰)); "converged" — h = c_b·w_y, where every cosine equals S[i, y] and the cosine term is 0.
    """
    gen = torch.Generator().manual_seed(seed)
    frame = F.normalize(torch.randn(classes, dim, generator=gen, dtype=torch.float64), dim=1)
    target = torch.randint(0, classes, (batch,), generator=gen)
    if kind == "random":
        features = scale * torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    elif kind == "confident":
        features = 40.0 * frame[target] + 0.1 * torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    elif kind == "converged":
        features = frame[target] * (1.0 + 9.0 * torch.rand(batch, 1, generator=gen, dtype=torch.float64))
    else:
        raise ValueError(kind)
    frame = frame.float()
    similarity = frame.double() @ frame.double().T
    target[list(ignored)] = IGNORE
    return features, frame, target, similarity.float()


def truth(features, frame, target, similarity, alpha, reduction, grad_output=None):
    """float64 reference (haf.losses) on the exact input values: (loss, dL/dh)."""
    h = features.detach().double().requires_grad_()
    loss = hierarchy_frame_loss(h, frame.double(), target, similarity.double(), alpha, reduction, IGNORE)
    loss.backward(torch.ones_like(loss) if grad_output is None else grad_output.double())
    return loss.detach(), h.grad


def torch_same_dtype(features, frame, target, similarity, alpha, reduction, grad_output=None):
    """What plain PyTorch gives in the features' dtype: every tensor cast to it, eager ops, autograd."""
    dtype = features.dtype
    h = features.detach().clone().requires_grad_()
    w, s = frame.to(dtype), similarity.to(dtype)
    valid = target != IGNORE
    safe = torch.where(valid, target, torch.zeros_like(target))
    z = h @ w.T
    ce = F.cross_entropy(z, safe, reduction="none")
    norm = h.norm(dim=1)
    cos = z / (norm.clamp_min(FEATURE_EPS)[:, None] * w.norm(dim=1).clamp_min(COSINE_EPS)[None, :])
    cos = torch.where((norm >= FEATURE_EPS)[:, None], cos, 0.0)
    per = (1 - alpha) * ce + alpha * (cos - s.T[safe]).square().sum(dim=1)
    per = torch.where(valid, per, torch.zeros_like(per))
    loss = per if reduction == "none" else per.sum()
    if reduction == "mean":
        loss = loss / valid.sum().clamp_min(1)
    loss.backward(torch.ones_like(loss) if grad_output is None else grad_output.to(loss.dtype))
    return loss.detach(), h.grad


def run_fused(features, frame, target, similarity, alpha, reduction, grad_output=None, config=None, **kwargs):
    h = features.detach().to(DEVICE).requires_grad_()
    loss = fused.triton_frame_loss(
        h, frame.to(DEVICE), target.to(DEVICE), similarity.to(DEVICE), alpha, reduction, IGNORE, config=config,
        **kwargs,
    )
    out = loss[0] if isinstance(loss, tuple) else loss
    out.backward(torch.ones_like(out) if grad_output is None else grad_output.to(DEVICE))
    assert h.grad.dtype == features.dtype and h.grad.shape == features.shape
    return out.detach().cpu(), h.grad.cpu()


def relative_error(value, exact):
    """Largest element error, relative to the largest truth element."""
    scale = exact.abs().max().clamp_min(1e-30)
    return ((value.double() - exact).abs().max() / scale).item()


def relative_rms_error(value, exact):
    """RMS error, relative to the truth's RMS."""
    scale = exact.square().mean().sqrt().clamp_min(1e-30)
    return ((value.double() - exact).square().mean().sqrt() / scale).item()


def assert_no_worse_than_torch(features, frame, target, similarity, alpha, reduction, grad_output=None,
                               config=None):
    """Run fused, PyTorch-in-dtype and the float64 truth; apply the pass rule to the loss and the gradient."""
    exact_loss, exact_grad = truth(features, frame, target, similarity, alpha, reduction, grad_output)
    ours_loss, ours_grad = run_fused(features, frame, target, similarity, alpha, reduction, grad_output, config)
    base_loss, base_grad = torch_same_dtype(features, frame, target, similarity, alpha, reduction, grad_output)
    assert torch.isfinite(ours_loss).all() and torch.isfinite(ours_grad).all()
    tolerance = 2 * torch.finfo(features.dtype).eps
    for what, ours, base, exact in (("loss", ours_loss, base_loss, exact_loss),
                                    ("grad", ours_grad, base_grad, exact_grad)):
        ours_rms, base_rms = relative_rms_error(ours, exact), relative_rms_error(base, exact)
        assert ours_rms <= base_rms + tolerance, (
            f"{what}: fused RMS error {ours_rms:.3g} > PyTorch-{features.dtype} {base_rms:.3g} + {tolerance:.3g}"
        )
        ours_max, base_max = relative_error(ours, exact), relative_error(base, exact)
        assert ours_max <= 2 * base_max + tolerance, (
            f"{what}: fused max error {ours_max:.3g} > 2 × PyTorch-{features.dtype} {base_max:.3g} + {tolerance:.3g}"
        )
    return ours_loss, ours_grad, exact_loss, exact_grad


# ---------------------------------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("classes", [100, 123, 608, 1010])
def test_matches_float64_reference_at_field_class_counts(classes, dtype):
    features, frame, target, similarity = make_problem(48, 37, classes, seed=classes, ignored=(0, 5, 17))
    assert_no_worse_than_torch(features.to(dtype), frame, target, similarity, 0.4, "mean")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reductions_over_several_tiles(reduction, dtype):
    features, frame, target, similarity = make_problem(45, 21, 123, seed=1, ignored=(2, 30))
    loss, grad, exact_loss, _ = assert_no_worse_than_torch(
        features.to(dtype), frame, target, similarity, 0.5, reduction, config=SMALL_TILES
    )
    if reduction == "none":
        assert loss.shape == (45,) and loss[2] == 0 and loss[30] == 0
        assert (grad[2] == 0).all() and (grad[30] == 0).all()  # ignored rows get no gradient
    else:
        assert loss.shape == ()


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_alpha_extremes(alpha):
    features, frame, target, similarity = make_problem(40, 19, 123, seed=2)
    assert_no_worse_than_torch(features.float(), frame, target, similarity, alpha, "mean", config=SMALL_TILES)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_confident_logits(dtype):
    features, frame, target, similarity = make_problem(40, 37, 608, seed=3, kind="confident")
    assert_no_worse_than_torch(features.to(dtype), frame, target, similarity, 0.4, "sum")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_converged_features(dtype):
    features, frame, target, similarity = make_problem(40, 37, 1010, seed=4, kind="converged")
    assert_no_worse_than_torch(features.to(dtype), frame, target, similarity, 0.4, "mean")


def test_cosine_term_vanishes_at_convergence_without_cancellation():
    """ĥ = w_y makes every cosine equal S[i, y]. The fused kernel forms (cos − S) directly, so its α = 1 loss stays
    at fp32 rounding of the cosines (~1e-13 summed), far below what the P = S W identity form loses to cancellation
    in fp32 (Σz²/n² and c_y are both ≈ Σ_i S[i, y]², O(K·s²)); the identity itself holds in float64."""
    features, frame, target, similarity = make_problem(32, 37, 1010, seed=5, ignored=(), kind="converged")
    ours, _ = run_fused(features.float(), frame, target, similarity, 1.0, "none")
    assert ours.abs().max().item() < 1e-9

    def identity_form(h, w, s):  # Σ z²/n² − 2 h·P[y]/n + c_y with P = S W, c_y = ‖S[y]‖²  (docs/METHOD.md)
        z, n = h @ w.T, h.norm(dim=1)
        p_rows = (s @ w)[target]
        return (z.square().sum(1) / n**2 - 2 * (h * p_rows).sum(1) / n + s[target].square().sum(1))

    exact = truth(features.float(), frame, target, similarity, 1.0, "none")[0]
    h64, w64, s64 = features.float().double(), frame.double(), similarity.double()
    torch.testing.assert_close(identity_form(h64, w64, s64), exact, rtol=0, atol=1e-9)
    identity_fp32 = identity_form(features.float(), frame, similarity)
    assert (ours.double() - exact).abs().max() < 1e-3 * (identity_fp32.double() - exact).abs().max()


def test_zero_features_row_is_finite_and_matches():
    features, frame, target, similarity = make_problem(24, 21, 100, seed=6)
    features[3] = 0.0  # ‖h‖ < ε: the cosine is h·ŵ/ε, a linear map, finite loss and gradient
    features[4] = 1e-10
    assert_no_worse_than_torch(features.float(), frame, target, similarity, 0.5, "mean")


def test_frame_rows_need_not_be_unit():
    features, frame, target, similarity = make_problem(24, 21, 100, seed=7)
    scales = torch.linspace(0.5, 2.0, frame.shape[0])[:, None]
    assert_no_worse_than_torch(features.float(), frame * scales, target, similarity, 0.5, "mean")


def test_non_symmetric_similarity_is_refused():
    features, frame, target, similarity = make_problem(24, 21, 100, seed=8)
    similarity = similarity + 0.1 * torch.rand(similarity.shape, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="similarity is not symmetric"):
        run_fused(features.float(), frame, target, similarity, 0.5, "mean")


def test_non_contiguous_features():
    features, frame, target, similarity = make_problem(40, 23, 123, seed=9)
    transposed = features.float().T.contiguous().T  # same values, strides (1, B)
    assert not transposed.is_contiguous()
    assert_no_worse_than_torch(transposed, frame, target, similarity, 0.4, "mean", config=SMALL_TILES)


# ---------------------------------------------------------------------------------------------------- autograd
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_grad_output_scales_the_gradient(dtype):
    """A loss scaler (fp16) multiplies grad_output; ``none`` gets one weight per row."""
    features, frame, target, similarity = make_problem(40, 21, 123, seed=10)
    features = features.to(dtype)
    assert_no_worse_than_torch(features, frame, target, similarity, 0.4, "mean", torch.tensor(1024.0))
    weights = torch.linspace(-2.0, 3.0, 40)
    assert_no_worse_than_torch(features, frame, target, similarity, 0.4, "none", weights, config=SMALL_TILES)


def test_fp16_large_batch_under_loss_scaling():
    """fp16 with a mean over many rows and a loss scaler's grad_output: the unscaled gradient is kept in fp32 and
    G is not pre-multiplied by 1/B, so neither underflows fp16 before the scale arrives."""
    features, frame, target, similarity = make_problem(512, 21, 100, seed=18, ignored=(0,))
    assert_no_worse_than_torch(features.half(), frame, target, similarity, 0.4, "mean", torch.tensor(1024.0))


def test_gradient_flows_through_ops_before_the_loss():
    features, frame, target, similarity = make_problem(24, 21, 100, seed=11)
    x = features.float().to(DEVICE).requires_grad_()
    args = (frame.to(DEVICE), target.to(DEVICE), similarity.to(DEVICE))
    (2.0 * fused.triton_frame_loss(x * 3.0, *args, 0.4)).backward()
    exact = truth(features.float() * 3.0, frame, target, similarity, 0.4, "mean")[1] * 6.0
    assert relative_error(x.grad.cpu(), exact) < 1e-5


def test_autocast_runs_the_product_in_the_autocast_dtype():
    """Under autocast, fp32 features are multiplied like an autocast matmul (bf16 operands, fp32 accumulation);
    the gradient flows back through the cast to the fp32 features."""
    features, frame, target, similarity = make_problem(24, 21, 100, seed=19)
    h = features.float().to(DEVICE).requires_grad_()
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss = fused.triton_frame_loss(h, frame.to(DEVICE), target.to(DEVICE), similarity.to(DEVICE), 0.4)
    loss.backward()
    assert loss.dtype == torch.float32 and h.grad.dtype == torch.float32
    rounded = features.float().bfloat16()
    expected_loss, expected_grad = run_fused(rounded, frame, target, similarity, 0.4, "mean")
    torch.testing.assert_close(loss.detach().cpu(), expected_loss, rtol=0, atol=0)
    torch.testing.assert_close(h.grad.cpu(), expected_grad.float(), rtol=0, atol=0)


def test_only_the_feature_gradient_is_kept_between_forward_and_backward():
    """No B × K tensor survives the forward: the graph node holds dL/dh (B × D) and saves nothing else."""
    features, frame, target, similarity = make_problem(24, 21, 608, seed=20)
    h = features.float().to(DEVICE).requires_grad_()
    loss = fused.triton_frame_loss(h, frame.to(DEVICE), target.to(DEVICE), similarity.to(DEVICE))
    node = loss.grad_fn
    assert node.saved_tensors == ()
    kept = [value for value in vars(node).values() if isinstance(value, torch.Tensor)]
    # dL/dh, and the small workspace holding the mean's batch weight (the backward reads it in place: no view)
    assert sorted(t.dim() for t in kept) == [1, 2] and any(tuple(t.shape) == (24, 21) for t in kept)
    assert all(t.untyped_storage().nbytes() <= 24 * 608 for t in kept)  # neither is a view of a B × K buffer
    loss.backward()
    assert node.grad_features is None  # handed over to h.grad, not kept


def test_second_backward_through_the_same_graph_is_refused():
    features, frame, target, similarity = make_problem(16, 21, 100, seed=12)
    h = features.float().to(DEVICE).requires_grad_()
    loss = fused.triton_frame_loss(h, frame.to(DEVICE), target.to(DEVICE), similarity.to(DEVICE))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()


def test_no_grad_path_gives_the_same_loss():
    features, frame, target, similarity = make_problem(40, 21, 123, seed=13)
    args = (frame.to(DEVICE), target.to(DEVICE), similarity.to(DEVICE), 0.4, "none")
    h = features.float().to(DEVICE)
    with_grad = fused.triton_frame_loss(h.clone().requires_grad_(), *args, config=SMALL_TILES)
    with torch.no_grad():
        without = fused.triton_frame_loss(h.clone().requires_grad_(), *args, config=SMALL_TILES)
    plain = fused.triton_frame_loss(h, *args, config=SMALL_TILES)
    assert without.grad_fn is None and plain.grad_fn is None
    torch.testing.assert_close(without, with_grad.detach(), rtol=0, atol=0)
    torch.testing.assert_close(plain, with_grad.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("grad", [True, False])
def test_return_logits(grad):
    features, frame, target, similarity = make_problem(40, 21, 123, seed=14)
    h = features.float().to(DEVICE).requires_grad_(grad)
    loss, logits = fused.triton_frame_loss(
        h, frame.to(DEVICE), target.to(DEVICE), similarity.to(DEVICE), return_logits=True, config=SMALL_TILES
    )
    assert logits.dtype == torch.float32 and not logits.requires_grad
    torch.testing.assert_close(logits.cpu().double(), features.float().double() @ frame.double().T,
                               rtol=1e-5, atol=1e-5)
    alone = fused.triton_frame_loss(h.detach(), frame.to(DEVICE), target.to(DEVICE), similarity.to(DEVICE))
    torch.testing.assert_close(loss.detach(), alone, rtol=1e-6, atol=1e-6)
    if grad:
        loss.backward()
        assert torch.isfinite(h.grad).all()


# ---------------------------------------------------------------------------------------------------- chunking
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_row_chunks_give_the_same_result(dtype):
    """A tiny chunk budget splits the batch into 16-row chunks; the mean still divides by the whole batch's count."""
    features, frame, target, similarity = make_problem(40, 21, 60, seed=15, ignored=(0, 1, 39))
    one_chunk = run_fused(features.to(dtype), frame, target, similarity, 0.4, "mean", config=SMALL_TILES)
    tiny = fused.KernelConfig(**{**SMALL_TILES.__dict__, "chunk_bytes": 1})
    assert fused._chunk_rows(40, 21, 60, 2, tiny, 1) == 16
    chunked = run_fused(features.to(dtype), frame, target, similarity, 0.4, "mean", config=tiny)
    torch.testing.assert_close(chunked[0], one_chunk[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(chunked[1], one_chunk[1], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------- edges
def test_all_rows_ignored_gives_zero_like_the_reference():
    features, frame, target, similarity = make_problem(8, 21, 100, seed=16, ignored=range(8))
    loss, grad = run_fused(features.float(), frame, target, similarity, 0.4, "mean")
    assert loss.item() == 0.0 and (grad == 0).all()


def test_empty_batch():
    _, frame, _, similarity = make_problem(4, 21, 100)
    h = torch.zeros(0, 21, device=DEVICE, requires_grad=True)
    loss = fused.triton_frame_loss(h, frame.to(DEVICE), torch.zeros(0, dtype=torch.long, device=DEVICE),
                                   similarity.to(DEVICE))
    loss.backward()
    assert loss.item() == 0.0 and h.grad.shape == (0, 21)


@pytest.mark.skipif(DEVICE != "cpu", reason="host-side target check is for CPU tensors (CUDA rows become NaN)")
def test_out_of_range_target_names_the_row():
    features, frame, target, similarity = make_problem(8, 21, 100)
    target[5] = 100
    with pytest.raises(ValueError, match=r"target\[5\] = 100"):
        fused.triton_frame_loss(features.float(), frame, target, similarity)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: {**a, "frame": a["frame"].clone().requires_grad_()}, "frame requires grad"),
        (lambda a: {**a, "features": a["features"].double()}, "triton backend takes features"),
        (lambda a: {**a, "frame": a["frame"][:, :-1]}, "frame must be K × D"),
        (lambda a: {**a, "similarity": a["similarity"][:-1]}, "similarity must be K × K"),
        (lambda a: {**a, "target": a["target"].float()}, "integer tensor"),
        (lambda a: {**a, "alpha": 1.5}, "alpha"),
        (lambda a: {**a, "alpha": torch.tensor([0.5, 0.5])}, "alpha must be a number"),
        (lambda a: {**a, "alpha": "0.5"}, "alpha must be a number"),
        (lambda a: {**a, "alpha": None}, "alpha must be a number"),
        (lambda a: {**a, "reduction": "avg"}, "reduction"),
    ],
)
def test_bad_input_is_a_clear_error(mutate, message):
    features, frame, target, similarity = make_problem(8, 21, 100)
    args = {"features": features.float().to(DEVICE), "frame": frame.to(DEVICE), "target": target.to(DEVICE),
            "similarity": similarity.to(DEVICE), "alpha": 0.5, "reduction": "mean"}
    with pytest.raises((ValueError, TypeError), match=message):
        fused.triton_frame_loss(**mutate(args))


def test_kernel_config_is_validated():
    with pytest.raises(ValueError, match="power of two"):
        fused.KernelConfig(logits_block_k=48)
    with pytest.raises(ValueError, match="≥ 16"):
        fused.KernelConfig(grad_block_k=8)


def test_prepared_frame_is_cached_and_refreshed_after_an_in_place_edit():
    _, frame, _, _ = make_problem(4, 21, 100)
    first = fused._prepare_frame(frame, torch.float32)
    assert fused._prepare_frame(frame, torch.float32) is first
    frame.mul_(2.0)  # bumps the version counter: the cached inverse norms would now be wrong
    second = fused._prepare_frame(frame, torch.float32)
    assert second is not first
    torch.testing.assert_close(second.inv_norm, first.inv_norm / 2.0)


# ---------------------------------------------------------------------------------------------------- dispatch
def test_public_dispatcher_and_module_reach_the_fused_path(monkeypatch):
    features, frame, target, similarity = make_problem(24, 21, 100, seed=17)
    args = (features.float().to(DEVICE), frame.to(DEVICE), target.to(DEVICE), similarity.to(DEVICE), 0.4)
    direct = fused.triton_frame_loss(*args)
    torch.testing.assert_close(frame_loss(*args, backend="triton"), direct, rtol=0, atol=0)
    monkeypatch.setenv("HAF_BACKEND", "triton")
    torch.testing.assert_close(frame_loss(*args), direct, rtol=0, atol=0)
    module = FrameLoss(frame, similarity, alpha=0.4, backend="triton").to(DEVICE)
    torch.testing.assert_close(module(args[0], args[2]), direct, rtol=0, atol=0)
    reference = frame_loss(*args, backend="reference")
    torch.testing.assert_close(direct, reference, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- GPU only
PAPER_SHAPES = [(64, 100, 100), (256, 1010, 1010), (1024, 608, 608)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", PAPER_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gpu_paper_shapes(shape, dtype):
    batch, dim, classes = shape
    features, frame, target, similarity = make_problem(batch, dim, classes, seed=batch, ignored=(0, 7))
    assert_no_worse_than_torch(features.to(dtype), frame, target, similarity, 0.4, "mean")


@pytest.mark.gpu
def test_gpu_no_host_synchronisation_and_cuda_graph_capture():
    features, frame, target, similarity = make_problem(256, 1010, 1010, seed=20)
    h = features.to(torch.bfloat16).cuda().requires_grad_()
    args = (frame.cuda(), target.cuda(), similarity.cuda(), 0.4)
    fused.triton_frame_loss(h, *args).backward()  # warm-up: compiles kernels, fills the frame caches
    h.grad = None
    torch.cuda.set_sync_debug_mode("error")
    try:
        fused.triton_frame_loss(h, *args).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    expected_grad = h.grad.clone()

    static_h = h.detach().clone()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fused.triton_frame_loss(static_h, *args)
        with torch.cuda.graph(graph):
            static_loss = fused.triton_frame_loss(static_h, *args)
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    torch.testing.assert_close(static_loss, fused.triton_frame_loss(h.detach(), *args))
    assert torch.isfinite(expected_grad).all()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_large_problem_in_several_chunks(dtype):
    """Compiled large-regime tiles, several row chunks, K = 2000 and D = 1040 not tile multiples."""
    batch, dim, classes = 3000, 1040, 2000
    features, frame, target, similarity = make_problem(batch, dim, classes, seed=21, ignored=(0, 1000))
    config = dataclasses.replace(fused.choose_config(batch, dim, classes, dtype, fused._input_precision(dtype)),
                                 chunk_bytes=8 << 20)
    g_bytes = 0 if dtype == torch.float32 else 2
    assert fused._chunk_rows(batch, dim, classes, g_bytes, config, fused._sm_count(torch.device("cuda"))) < batch
    assert_no_worse_than_torch(features.to(dtype), frame, target, similarity, 0.4, "mean", config=config)


@pytest.mark.gpu
def test_gpu_peak_memory_at_the_wide_hierarchy_is_within_target():
    """docs/METHOD.md: at (8192, 2048, 32000) bf16 the fused step's peak extra memory is ≤ 15% of the reference's."""
    batch, dim, classes = 8192, 2048, 32000
    gen = torch.Generator(device="cuda").manual_seed(0)
    frame = F.normalize(torch.randn(classes, dim, device="cuda", generator=gen), dim=1)
    gram = (frame @ frame.T).clamp(-1.0, 1.0)
    similarity = 0.5 * (gram + gram.T)  # bitwise symmetric, like S from a hierarchy (no transposed copy cached)
    target = torch.randint(0, classes, (batch,), device="cuda", generator=gen)
    features = torch.randn(batch, dim, device="cuda", generator=gen).bfloat16().requires_grad_()

    def peak(backend):
        features.grad = None
        frame_loss(features, frame, target, similarity, 0.4, backend=backend).backward()  # warm-up, caches
        features.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        frame_loss(features, frame, target, similarity, 0.4, backend=backend).backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    assert peak("triton") <= 0.15 * peak("reference")


@pytest.mark.gpu
def test_gpu_out_of_range_target_gives_nan_row_without_sync():
    features, frame, target, similarity = make_problem(64, 100, 100)
    target[3] = 100
    loss = fused.triton_frame_loss(features.float().cuda(), frame.cuda(), target.cuda(), similarity.cuda(),
                                   reduction="none")
    assert torch.isnan(loss[3]) and torch.isfinite(loss[4:]).all()
