"""Launch plans under concurrency: ticket words per stream and per captured CUDA graph, nothing cached during
capture. The bookkeeping is tested on CPU (stream keys and capture state are plain values there); the GPU tests run
two streams and a graph replay against eager calls."""
from __future__ import annotations

import importlib

import pytest
import torch

from haf.kernels.dense import fused as fused
from haf.kernels.dense import memo as memo
from haf.kernels.dense import tiled as tiled
from haf.kernels.dense import config as cfg

from test_frame_loss_triton import DEVICE, SMALL_TILES, make_problem, run_fused


def test_ticket_slots_per_stream_and_a_fresh_one_per_capture():
    book = memo.TicketBook(3, torch.device("cpu"), slots=4)
    first = book.get("stream-a")
    assert book.get("stream-a") is first  # eager calls on one stream run in order: they share
    other = book.get("stream-b")
    assert other.data_ptr() != first.data_ptr() and other.shape == (3,)
    graph_1, graph_2 = book.get("stream-a", capturing=True), book.get("stream-a", capturing=True)
    pointers = {first.data_ptr(), other.data_ptr(), graph_1.data_ptr(), graph_2.data_ptr()}
    assert len(pointers) == 4 and all(int(t.abs().sum()) == 0 for t in (first, other, graph_1, graph_2))
    with pytest.raises(RuntimeError, match="ticket slots"):
        book.get("stream-c")


def _spy_tickets(monkeypatch):
    seen = []

    def launch(kernel, grid, *args, **meta):
        name = getattr(kernel, "__name__", None) or kernel.fn.__name__
        if name == "_row_block_kernel":
            seen.append(args[8].data_ptr())  # ticket_ptr
        kernel[grid](*args, **meta)

    monkeypatch.setattr(fused, "_launch", launch)
    return seen


def test_row_block_calls_on_two_streams_use_two_ticket_words(monkeypatch):
    monkeypatch.setattr(fused, "_PLANS", {})
    seen = _spy_tickets(monkeypatch)
    features, frame, target, similarity = make_problem(20, 16, 30, seed=2)
    stream = ["s1"]
    monkeypatch.setattr(fused, "stream_key", lambda device: stream[0])
    run_fused(features.float(), frame, target, similarity, 0.4, "mean")
    run_fused(features.float(), frame, target, similarity, 0.4, "mean")
    stream[0] = "s2"
    run_fused(features.float(), frame, target, similarity, 0.4, "mean")
    assert seen[0] == seen[1] and seen[2] != seen[0]


def test_first_call_during_capture_is_refused_and_caches_nothing(monkeypatch):
    monkeypatch.setattr(fused, "_PLANS", {})
    monkeypatch.setattr(fused, "capturing", lambda device: True)
    features, frame, target, similarity = make_problem(12, 16, 30, seed=3)
    with pytest.raises(RuntimeError, match="before capturing"):
        run_fused(features.float(), frame, target, similarity, 0.4, "mean")
    assert fused._PLANS == {}


def test_warm_plan_during_capture_takes_a_fresh_ticket(monkeypatch):
    monkeypatch.setattr(fused, "_PLANS", {})
    seen = _spy_tickets(monkeypatch)
    features, frame, target, similarity = make_problem(12, 16, 30, seed=4)
    run_fused(features.float(), frame, target, similarity, 0.4, "mean")  # warm-up outside capture
    monkeypatch.setattr(fused, "capturing", lambda device: True)
    run_fused(features.float(), frame, target, similarity, 0.4, "mean")
    run_fused(features.float(), frame, target, similarity, 0.4, "mean")
    assert len(set(seen)) == 3  # eager slot, then one slot per capture


def test_persistent_kernel_ticket_per_stream(monkeypatch):
    monkeypatch.setenv(cfg.VARIANT_ENV, "persistent")
    monkeypatch.setattr(fused, "_PLANS", {})
    monkeypatch.setattr(tiled, "persistent_programs", lambda device: 3)
    seen = []
    real = fused._launch

    def launch(kernel, grid, *args, **meta):
        if getattr(kernel, "__name__", "") == "_grad_features_persistent_kernel" or \
                getattr(getattr(kernel, "fn", None), "__name__", "") == "_grad_features_persistent_kernel":
            seen.append(args[6].data_ptr())
        real(kernel, grid, *args, **meta)

    monkeypatch.setattr(fused, "_launch", launch)
    stream = ["s1"]
    monkeypatch.setattr(fused, "stream_key", lambda device: stream[0])
    features, frame, target, similarity = make_problem(30, 24, 123, seed=5)
    run_fused(features.float(), frame, target, similarity, 0.4, "sum", config=SMALL_TILES)
    stream[0] = "s2"
    run_fused(features.float(), frame, target, similarity, 0.4, "sum", config=SMALL_TILES)
    assert len(seen) == 2 and seen[0] != seen[1]


@pytest.mark.gpu
def test_gpu_two_streams_same_shape_give_the_eager_loss():
    features, frame, target, similarity = make_problem(256, 64, 500, seed=6)
    args = [t.cuda() for t in (frame, target, similarity)]
    h = features.float().cuda()
    expected = fused.triton_frame_loss(h, *args, 0.4, "mean")
    streams = [torch.cuda.Stream() for _ in range(2)]
    out = []
    torch.cuda.synchronize()
    for _ in range(20):
        for stream in streams:
            with torch.cuda.stream(stream):
                out.append(fused.triton_frame_loss(h, *args, 0.4, "mean"))
    torch.cuda.synchronize()
    for loss in out:
        torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)


@pytest.mark.gpu
def test_gpu_capture_without_warm_up_is_refused():
    features, frame, target, similarity = make_problem(48, 40, 77, seed=7)
    args = [t.cuda() for t in (frame.clone(), target, similarity.clone())]
    h = features.float().cuda()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="before capturing"):
        with torch.cuda.graph(graph):
            fused.triton_frame_loss(h, *args, 0.4, "mean")


# ------------------------------------------------------------------------------------------ one rule, both entries
def test_regime_choice_counts_the_feature_width():
    assert cfg.row_block_regime(256, 1010, 1010, False)  # the paper shape
    assert not cfg.row_block_regime(256, 1 << 16, 1010, False)  # same B·K, a GEMM of 17 G multiply-adds
    assert not cfg.row_block_regime(256, 64, 1010, True)  # logits asked: tiled
    assert not cfg.row_block_regime(16, 64, 4096, False)  # too many classes for one program's sweep


def _record_configs(monkeypatch):
    calls = []

    def spy(batch, dim, classes, dtype, precision):
        calls.append((batch, dim, classes, dtype, precision))
        return cfg.choose_config(batch, dim, classes, dtype, precision)

    monkeypatch.setattr(fused, "choose_config", spy)
    monkeypatch.setattr(tiled, "choose_config", spy)
    return calls


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "autocast-bf16"])
@pytest.mark.parametrize("classes", [30, 70], ids=["row-block", "tiled"])
def test_compiled_operator_and_eager_entry_pick_the_same_tiles(autocast, classes, monkeypatch):
    """fp32 features, with and without autocast: the operator torch.compile traces gets the same dtype, plan and
    tiles as the eager entry (row_block_max_classes=40 sends K = 70 to the tiled regime)."""
    dispatcher = importlib.import_module("haf.kernels.frame_loss")

    config_cap = fused.KernelConfig(row_block_max_classes=40)
    monkeypatch.setattr(cfg, "_DEFAULT_CONFIG", config_cap)
    features, frame, target, similarity = make_problem(20, 16, classes, seed=8)
    h = features.float().to(DEVICE).requires_grad_()
    args = [t.to(DEVICE) for t in (frame, target, similarity)]
    seen = {}
    for entry in ("eager", "compiled"):
        monkeypatch.setattr(fused, "_PLANS", {})
        calls = _record_configs(monkeypatch)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
            if entry == "eager":
                loss = dispatcher.frame_loss(h, *args, 0.4, backend="triton")
            else:
                loss = dispatcher._compiled_frame_loss(h, *args, 0.4, "mean", -100, "triton", False, False)
        loss.backward()
        tiled_plans = [isinstance(plan, tiled.TiledPlan) for plan in fused._PLANS.values()]
        assert tiled_plans and all(tiled_plans) == (classes == 70) and any(tiled_plans) == (classes == 70), entry
        seen[entry] = (calls, h.grad.dtype, loss.detach().cpu())
        h.grad = None
    assert seen["eager"][0] and seen["eager"][0] == seen["compiled"][0]
    assert seen["eager"][0][0][3] == (torch.bfloat16 if autocast else torch.float32)
    torch.testing.assert_close(seen["eager"][2], seen["compiled"][2], rtol=1e-6, atol=0)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "autocast-bf16"])
def test_compiled_triton_loss_traces_without_a_graph_break(autocast):
    """torch.compile(fullgraph=True) through the Triton backend's operator (eager backend: the trace, not Inductor),
    with the autocast cast traced in front of it; the gradient matches the uncompiled call."""
    features, frame, target, similarity = make_problem(20, 16, 30, seed=9)
    args = [t.to(DEVICE) for t in (frame, target, similarity)]
    dispatcher = importlib.import_module("haf.kernels.frame_loss")

    def step(x):
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
            return dispatcher.frame_loss(x * 1.0, *args, 0.4, backend="triton")

    grads = []
    for fn in (step, torch.compile(step, fullgraph=True, backend="aot_eager")):
        x = features.float().to(DEVICE).requires_grad_()
        fn(x).backward()
        grads.append(x.grad)
    tol = 1e-2 if autocast else 1e-5  # bf16 per-row gradients: the operator's backward rounds twice (1 ulp)
    torch.testing.assert_close(grads[1], grads[0], rtol=tol, atol=tol * grads[0].abs().max().item())
