"""ops.time_major_conv: MaskedConv1d's output, time major, in values and gradients."""

import pytest
import torch

from sigma_lightning.nn.layers import MaskedConv1d
from sigma_lightning.ops.time_major_conv import masked_conv_time_major
from tests.padding import lengths_mask


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("kernel_size", [1, 2, 3, 4, 5, 8])
def test_equals_masked_conv1d_transposed(kernel_size, bias):
    """Every kernel size torch's 'same' padding allows here, odd and even (the even ones pad one
    more step on the right), longer than the sequence (8 > 6), rows of every length and one without
    items, garbage at padding: the output (zero at padding), and the gradients of the input (zero at
    padding), the weight and the bias."""
    torch.manual_seed(kernel_size)
    conv = MaskedConv1d(5, kernel_size)
    if not bias:
        conv.conv.bias = None
    mask = lengths_mask([6, 4, 1, 0], 6)
    h = torch.randn(4, 6, 5, requires_grad=True)  # garbage at padding on purpose
    upstream = torch.randn(6, 4, 5)  # (L, B, C)
    leaves = [h, *conv.conv.parameters()]
    expected = conv(h, mask).transpose(0, 1)  # (L, B, C)
    actual = masked_conv_time_major(h, mask, conv.conv.weight, conv.conv.bias)
    assert actual.shape == (6, 4, 5) and actual.is_contiguous()
    torch.testing.assert_close(actual, expected)
    assert not actual[~mask.t()].any()
    for got, want in zip(torch.autograd.grad(actual, leaves, upstream), torch.autograd.grad(expected, leaves, upstream)):
        torch.testing.assert_close(got, want)


def test_one_step_and_the_gradient_is_batch_first():
    """L = 1 (only the centre tap reads inside the sequence); the input's gradient comes back in the
    input's own (B, L, C) layout."""
    conv = MaskedConv1d(3, 3)
    h = torch.randn(2, 1, 3, requires_grad=True)
    mask = torch.ones(2, 1, dtype=torch.bool)
    actual = masked_conv_time_major(h, mask, conv.conv.weight, conv.conv.bias)
    torch.testing.assert_close(actual, conv(h, mask).transpose(0, 1))
    (grad,) = torch.autograd.grad(actual.sum(), [h])
    assert grad.shape == (2, 1, 3) and grad.is_contiguous()


def test_compiled_equals_eager():
    """Under torch.compile (aot_eager: the graph functionalised, as inductor's is) the values and the
    gradients of the input and weight are eager's: a layout the compiled graph does not keep (an
    `out=` tensor, which the products then wrote into through a copy) lost the input's gradient."""
    torch.manual_seed(0)
    conv = MaskedConv1d(8, 3)
    mask = lengths_mask([12, 7, 1, 3, 9, 12], 12)
    h = torch.randn(6, 12, 8, requires_grad=True)
    upstream = torch.randn(12, 6, 8)
    leaves = [h, *conv.conv.parameters()]

    def conv_time_major(h):
        return masked_conv_time_major(h, mask, conv.conv.weight, conv.conv.bias)

    eager = conv_time_major(h)
    compiled = torch.compile(conv_time_major, backend="aot_eager", fullgraph=True)(h)
    torch.testing.assert_close(compiled, eager)
    for got, want in zip(torch.autograd.grad(compiled, leaves, upstream), torch.autograd.grad(eager, leaves, upstream)):
        torch.testing.assert_close(got, want)
