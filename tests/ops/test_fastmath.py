"""Accuracy of the C kernels' float32 helpers (csrc/fastmath.h), measured in ulps against float64,
in the same library build as the kernels (csrc/fastmath_eval.c)."""

from __future__ import annotations

import ctypes

import pytest
import torch

from sigma_lightning.ops import _cscan
from sigma_lightning.ops.backend import c_kernel_available

pytestmark = pytest.mark.skipif(not c_kernel_available(), reason="the C kernels could not be built here")
EXP2, EXP2_V16, SIGMOID, SOFTPLUS, TANH = range(5)


def evaluate(fn: int, x: torch.Tensor) -> torch.Tensor | None:
    """fastmath.h's function `fn` at x (float32), or None where this build lacks it."""
    lib = _cscan.load()
    lib.fastmath_eval.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    lib.fastmath_eval.restype = ctypes.c_int64
    x = x.to(torch.float32).contiguous()
    y = torch.full_like(x, float("nan"))
    return None if lib.fastmath_eval(fn, x.data_ptr(), y.data_ptr(), x.numel()) else y


def ulps(actual: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """|actual - exact| in units of the float32 spacing at exact (exact in float64)."""
    spacing = torch.nextafter(exact.float().abs(), torch.tensor(float("inf"))).double() - exact.float().abs().double()
    return (actual.double() - exact).abs() / spacing


def grid(lo: float, hi: float, n: int = 200_001) -> torch.Tensor:
    return torch.linspace(lo, hi, n, dtype=torch.float32)


@pytest.mark.parametrize("fn", [EXP2, EXP2_V16], ids=["exp2_f32", "exp2_v16"])
def test_exp2_within_one_ulp(fn):
    """Over the normal range, dense around 0 and across integers (the range reduction's seams)."""
    x = torch.cat([grid(-126, 126), grid(-1, 1), grid(-20.5, -19.5)])
    y = evaluate(fn, x)
    if y is None:
        pytest.skip("exp2_v16 needs AVX-512, which this build lacks")
    assert ulps(y, torch.exp2(x.double())).max() < 1.0


@pytest.mark.parametrize("fn", [EXP2, EXP2_V16], ids=["exp2_f32", "exp2_v16"])
def test_exp2_ends(fn):
    """Exactly 1 at 0 (a decay of a zero step), 0 far below the range, NaN stays NaN."""
    y = evaluate(fn, torch.tensor([0.0, -127.5, -200.0, -1e30, float("nan")]))
    if y is None:
        pytest.skip("exp2_v16 needs AVX-512, which this build lacks")
    assert y[0] == 1.0 and (y[1:4] == 0).all() and y[4].isnan()


def test_exp2_v16_equals_exp2_f32():
    """The two range reductions feed the same polynomial: equal to the bit in the normal range."""
    x = grid(-126, 126)
    fast = evaluate(EXP2_V16, x)
    if fast is None:
        pytest.skip("exp2_v16 needs AVX-512, which this build lacks")
    torch.testing.assert_close(fast, evaluate(EXP2, x), rtol=0, atol=0)


@pytest.mark.parametrize("fn, exact", [(SIGMOID, torch.sigmoid), (SOFTPLUS, torch.nn.functional.softplus)],
                         ids=["sigmoid", "softplus"])
def test_sigmoid_and_softplus_accuracy(fn, exact):
    """Within 6 ulp on [-10, 10]; beyond, the float32 product x * log2(e) that 2^t is taken of
    carries a relative error of |x| times float32's, so the bound grows as 4 + |x| / 4 ulp."""
    x = torch.cat([grid(-10, 10), grid(-85, 85)])  # e^-85 is near the smallest normal float
    err = ulps(evaluate(fn, x), exact(x.double()))
    assert err[x.abs() <= 10].max() < 6.0
    over = err - (4 + x.abs() / 4)
    assert (over < 0).all(), f"{err[over.argmax()]:.1f} ulp at x = {x[over.argmax()]:.3f}"


def test_tanh_within_three_ulp():
    """Both branches (|x| < 0.625 by a polynomial, beyond from exp) and their seam; odd; saturates."""
    x = torch.cat([grid(-12, 12), grid(-0.7, 0.7), grid(-1e-3, 1e-3)])
    err = ulps(evaluate(TANH, x), torch.tanh(x.double()))
    assert err.max() < 3.0, f"{err.max():.1f} ulp at x = {x[err.argmax()]:.5f}"
    y = evaluate(TANH, torch.tensor([0.0, 30.0, -30.0, float("inf"), float("nan")]))
    assert y[:4].tolist() == [0.0, 1.0, -1.0, 1.0] and y[4].isnan()
