"""The tiled regime's schedule variants (``HAF_FRAME_LOSS_VARIANT``: basic, persistent, tma) against the float64
reference, on ragged shapes: persistent grids taking several turns, kernel 3's last round split over the classes,
TMA descriptors where the operands are 16-byte aligned and pointer loads where they are not. Under the interpreter
the persistent grid has ``_INTERPRETER_SMS`` (3) programs; where a test counts programs it sets 3 on any device."""
from __future__ import annotations

import pytest
import torch

from haf.kernels.dense import config as cfg
from haf.kernels.dense import tiled as tiled
from haf.kernels.dense import fused as fused

from test_frame_loss_triton import DEVICE, SMALL_TILES, assert_no_worse_than_torch, make_problem, run_fused

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
#: (B, D, K): 2 × 2 dH tiles of 16 on 3 programs → one whole round, the 4th tile split in two (K = 123: 2 blocks);
#: D = 21 is not 16-byte aligned in half precision (TMA falls back to pointer loads), D = 24 is.
SHAPES = [(30, 24, 123), (45, 21, 100), (40, 40, 70)]


class _Spy:
    """Records (kernel name, TMA flag, grid) of every launch, then launches."""

    def __init__(self, launch):
        self.launch, self.calls = launch, []

    def __call__(self, kernel, grid, *args, **meta):
        self.calls.append((kernel.__name__ if hasattr(kernel, "__name__") else kernel.fn.__name__,
                           meta.get("TMA"), grid))
        self.launch(kernel, grid, *args, **meta)


@pytest.mark.parametrize("variant", ["persistent", "tma"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_variant_matches_float64_reference(shape, dtype, variant, monkeypatch):
    monkeypatch.setenv(cfg.VARIANT_ENV, variant)
    features, frame, target, similarity = make_problem(*shape, seed=sum(shape), ignored=(0, 7))
    ours_loss, ours_grad, _, _ = assert_no_worse_than_torch(features.to(dtype), frame, target, similarity, 0.4,
                                                            "mean", config=SMALL_TILES)
    monkeypatch.setenv(cfg.VARIANT_ENV, "basic")
    basic_loss, basic_grad = run_fused(features.to(dtype), frame, target, similarity, 0.4, "mean", config=SMALL_TILES)
    torch.testing.assert_close(ours_loss, basic_loss, rtol=1e-6, atol=0)  # kernels 1-2 sum in the same order
    atol = 4 * torch.finfo(dtype).eps * basic_grad.abs().max().item()  # split tiles sum the classes in 2 parts
    torch.testing.assert_close(ours_grad, basic_grad, rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_tma_where_aligned_pointer_loads_elsewhere_and_split_tail(dtype, monkeypatch):
    monkeypatch.setenv(cfg.VARIANT_ENV, "tma")
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 plan: IEEE fp32 keeps pointer loads
    try:
        _check_tma_choice(dtype, monkeypatch)
    finally:
        torch.set_float32_matmul_precision(previous)


def _check_tma_choice(dtype, monkeypatch):
    spy = _Spy(fused._launch)
    monkeypatch.setattr(fused, "_launch", spy)
    monkeypatch.setattr(tiled, "persistent_programs", lambda device: 3)  # the interpreter's grid, on any device
    monkeypatch.setattr(fused, "_PLANS", {})  # no plan cached with another program count
    for dim, aligned in ((24, True), (21, False)):  # rows of 24 (and K = 128) are 16-byte multiples, 21 not
        spy.calls.clear()
        features, frame, target, similarity = make_problem(30, dim, 128, seed=dim)
        run_fused(features.to(dtype), frame, target, similarity, 0.4, "sum", config=SMALL_TILES)
        launched = {name: (tma, grid) for name, tma, grid in spy.calls}
        assert launched["_logits_stats_persistent_kernel"][0] is aligned
        assert launched["_grad_features_persistent_kernel"][0] is aligned
        assert launched["_grad_features_persistent_kernel"][1] == (3,)  # 3 whole tiles + 2 slices on 3 programs
        plans = [p for p in fused._PLANS.values() if isinstance(p, tiled.TiledPlan) and p.variant == "tma"]
        assert plans and all((p.tickets.buffer == 0).all() for p in plans)  # each split tile's last slice reset its ticket


def test_tail_split_covers_every_tile_and_class():
    for tiles in range(1, 40):
        for programs in (1, 3, 132):
            for k_blocks in (1, 2, 7, 500):
                full, splits, per_split = tiled.tail_split(tiles, programs, k_blocks, 64)
                assert 0 <= full <= tiles and full % programs == 0 or full == tiles
                assert 1 <= splits <= tiled.MAX_TAIL_SPLITS and per_split % 64 == 0
                assert (splits - 1) * per_split < k_blocks * 64 <= splits * per_split  # no empty slice, none missing
                assert (tiles - full) * splits <= max(programs, 1) or splits == 1
    assert tiled.tail_split(288, 132, 500, 64) == (264, 5, 100 * 64)  # 24 tail tiles → 5 slices each


def test_variant_resolution(monkeypatch):
    monkeypatch.delenv(cfg.VARIANT_ENV, raising=False)
    assert cfg.resolve_variant(torch.device("cpu")) == "basic"  # default until measured on a GPU
    monkeypatch.setenv(cfg.VARIANT_ENV, "TMA ")
    assert cfg.resolve_variant(torch.device(DEVICE)) == "tma"
    monkeypatch.setattr(cfg, "_tensor_descriptor_class", lambda: None)  # a Triton without host descriptors
    assert cfg.resolve_variant(torch.device(DEVICE)) == "persistent"
    monkeypatch.setenv(cfg.VARIANT_ENV, "fast")
    with pytest.raises(ValueError, match="HAF_FRAME_LOSS_VARIANT='fast' must be one of"):
        cfg.resolve_variant(torch.device("cpu"))


@pytest.mark.parametrize("variant", ["persistent", "tma"])
def test_variant_no_grad_logits_and_unreduced(variant, monkeypatch):
    features, frame, target, similarity = make_problem(30, 24, 123, seed=5, ignored=(3,))
    args = (frame, target, similarity, 0.4)
    monkeypatch.setenv(cfg.VARIANT_ENV, "basic")
    loss, logits = fused.triton_frame_loss(features.float(), *args, "none", return_logits=True, config=SMALL_TILES)
    monkeypatch.setenv(cfg.VARIANT_ENV, variant)
    ours_loss, ours_logits = fused.triton_frame_loss(features.float(), *args, "none", return_logits=True,
                                                     config=SMALL_TILES)
    torch.testing.assert_close(ours_logits, logits, rtol=0, atol=0)
    torch.testing.assert_close(ours_loss, loss, rtol=1e-6, atol=0)
    assert ours_loss[3] == 0

