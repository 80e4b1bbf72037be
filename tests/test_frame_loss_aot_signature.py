"""The AOT check compiles what runs: each recorded launch of the launcher's host code (meta tensors, no kernel
runs) is specialised by the same rules as Triton's runtime (pure Python, compared with Triton's own
``native_specialize_impl`` on the same argument values)."""
from __future__ import annotations

import pytest
import torch

from haf.kernels.dense import aot as aot

CASES = [  # (dtype, (B, D, K), precision, variant)
    (torch.bfloat16, (256, 1010, 1010), None, "basic"),  # launch-bound regime, D and K not multiples of 16
    (torch.bfloat16, (8192, 2048, 32000), None, "tma"),  # tiled, TMA descriptors, the split tail
    (torch.float32, (3000, 1040, 2001), "ieee", "persistent"),  # odd K: unaligned views of the workspaces
    (torch.float16, (1 << 20, 2112, 16), None, "basic"),  # B·D > 2³¹: the backward's element count is i64
]


def _native():
    try:
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.compiler import BaseBackend
    except ImportError:  # older Triton: specialisation in Python only
        pytest.skip("this Triton has no native_specialize_impl to compare with")
    return lambda value: native_specialize_impl(BaseBackend, value, False, True, True)


@pytest.mark.parametrize("dtype, shape, precision, variant", CASES, ids=lambda c: str(c))
def test_recorded_launches_specialise_like_the_runtime(dtype, shape, precision, variant):
    native = _native()
    launches = aot.record_launches(dtype, *shape, precision=precision, variant=variant)
    names = {launch.kernel.__name__ for launch in launches}
    assert "_scale_grad_kernel" in names and len(names) in (2, 5)
    for launch in launches:
        for name, is_constexpr in aot.kernel_params(launch.kernel):
            if not is_constexpr:
                value = launch.args[name]
                assert aot.specialise(value) == native(value), (launch.kernel.__name__, name, value)


def test_specialisation_rules():
    assert aot.specialise(1) == ("constexpr", 1)  # a unit stride is a constant in the compiled kernel
    assert aot.specialise(48) == ("i32", "D") and aot.specialise(-100) == ("i32", "")
    assert aot.specialise(2**31) == ("i64", "D")  # beyond i32: the kernel gets 64-bit arithmetic
    assert aot.specialise(0.4) == ("fp32", None)
    base = torch.empty(64, device="meta")
    assert aot.specialise(base[4:]) == ("*fp32", "D") and aot.specialise(base[1:]) == ("*fp32", "")


def test_large_counts_are_i64_and_unit_strides_constants():
    launches = aot.record_launches(torch.float16, 1 << 20, 2112, 16)
    logits = next(launch for launch in launches if launch.kernel.__name__ == "_logits_stats_kernel")
    signature, constexprs, attrs = aot.specialisation(logits)
    names = [name for name, _ in aot.kernel_params(logits.kernel)]
    assert signature["stride_hd"] == "constexpr" and constexprs[(names.index("stride_hd"),)] == 1
    assert signature["B"] == "i32" and attrs[(names.index("D"),)] == [["tt.divisibility", 16]]  # 2112 = 16 · 132
    scale = next(launch for launch in launches if launch.kernel.__name__ == "_scale_grad_kernel")
    assert aot.specialisation(scale)[0]["numel"] == "i64"  # 2²⁰ · 2112 elements
