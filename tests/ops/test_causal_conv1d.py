"""The shifted-multiply-add causal depthwise conv against F.conv1d (depthwise_conv_reference with
K - 1 zeros on the left): outputs and every gradient."""

import pytest
import torch

from sigma_lightning.ops.causal_conv1d import causal_conv1d
from sigma_lightning.ops.depthwise_conv import depthwise_conv_reference


def causal_conv1d_reference(x, weight, bias=None):
    return depthwise_conv_reference(x, weight, bias, left_pad=weight.shape[1] - 1)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 8, 4), (3, 17, 13, 4), (1, 5, 6, 2), (2, 2, 4, 7)],
                         ids=lambda s: "x".join(map(str, s)))  # (B, L, D, K): L = 1, L < K, odd D
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "no_bias"])
def test_equals_conv1d_with_gradients(shape, has_bias):
    B, L, D, K = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, L, D, generator=g, requires_grad=True)
    weight = torch.randn(D, K, generator=g, requires_grad=True)
    bias = torch.randn(D, generator=g, requires_grad=True) if has_bias else None
    leaves = [t for t in (x, weight, bias) if t is not None]
    upstream = torch.randn(B, L, D, generator=g)
    expected = causal_conv1d_reference(x, weight, bias)
    actual = causal_conv1d(x, weight, bias)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(torch.autograd.grad(actual, leaves, upstream), torch.autograd.grad(expected, leaves, upstream)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_is_causal():
    x = torch.randn(2, 9, 4)
    weight, bias = torch.randn(4, 4), torch.randn(4)
    changed = x.clone()
    changed[:, 5:] = 100.0  # the future must not reach positions 0..4
    torch.testing.assert_close(causal_conv1d(changed, weight, bias)[:, :5], causal_conv1d(x, weight, bias)[:, :5])


def test_bf16_input_gives_bf16_output_and_float_weight_gradients():
    x = torch.randn(2, 6, 8, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(8, 4, requires_grad=True)
    bias = torch.randn(8, requires_grad=True)
    y = causal_conv1d(x, weight, bias)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), causal_conv1d_reference(x.float(), weight, bias), rtol=3e-2, atol=3e-2)
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and weight.grad.dtype == bias.grad.dtype == torch.float32
