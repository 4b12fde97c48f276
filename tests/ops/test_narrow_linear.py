"""narrow_linear against F.linear: values and both gradients, over shapes, layouts and dtypes."""

import pytest
import torch
import torch.nn.functional as F

from sigma_lightning.ops.narrow_linear import narrow_linear


@pytest.mark.parametrize("shape", [(3, 7, 4, 16), (1, 1, 1, 5), (2, 50, 4, 128), (5, 3, 8, 2)],
                         ids=lambda s: "x".join(map(str, s)))  # (B, L, in, out)
@pytest.mark.parametrize("sliced", [False, True], ids=["contiguous", "slice"])
def test_equals_f_linear_with_gradients(shape, sliced):
    B, L, n_in, n_out = shape
    g = torch.Generator().manual_seed(0)
    # the Mamba block passes a slice of x_proj's output: a non-contiguous view
    wide = torch.randn(B, L, n_in + 6, generator=g, requires_grad=True)
    x = wide[..., 3 : 3 + n_in] if sliced else wide[..., :n_in].contiguous()
    weight = torch.randn(n_out, n_in, generator=g, requires_grad=True)
    upstream = torch.randn(B, L, n_out, generator=g)
    expected, actual = F.linear(x, weight), narrow_linear(x, weight)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    want = torch.autograd.grad(expected, (wide, weight), upstream)
    got = torch.autograd.grad(actual, (wide, weight), upstream)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_gradcheck_float64():
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(narrow_linear, (x, weight))


def test_bf16_input_gives_bf16_output_and_float_weight_gradient():
    x = torch.randn(2, 6, 4, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(16, 4, requires_grad=True)
    y = narrow_linear(x, weight)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), F.linear(x.float(), weight), rtol=3e-2, atol=3e-2)
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.float32
    # upstream gradient 1 everywhere: each weight row's gradient is the sum of the inputs
    torch.testing.assert_close(weight.grad, x.float().sum((0, 1)).expand(16, 4), rtol=3e-2, atol=3e-2)


def test_under_autocast_same_dtype_as_f_linear():
    x, weight = torch.randn(2, 6, 4), torch.randn(16, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert narrow_linear(x, weight).dtype == F.linear(x, weight).dtype == torch.bfloat16
