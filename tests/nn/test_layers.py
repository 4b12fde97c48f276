import pytest
import torch
from torch import nn

from sigma_lightning.nn.layers import (
    GLU,
    DenseSelectiveGate,
    MaskedConv1d,
    SpectralFilter,
    init_backbone_,
    partial_flip,
)


def lengths_mask(lengths: list[int], L: int) -> torch.Tensor:
    return torch.arange(L) < torch.tensor(lengths).unsqueeze(1)  # (B, L) left-aligned


def pad(x: torch.Tensor, L: int) -> torch.Tensor:
    """Right-pad (B, L0, ...) with zeros to (B, L, ...)."""
    return torch.cat([x, x.new_zeros(x.size(0), L - x.size(1), *x.shape[2:])], dim=1)


# ---- partial_flip ---------------------------------------------------------------------------------
ITEMS = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0, 0]])  # n = 7 real items, right padding
MASK = ITEMS != 0


@pytest.mark.parametrize(
    "remaining, expected",
    [
        (0, [7, 6, 5, 4, 3, 2, 1, 0, 0]),  # whole flip of the real items, padding stays
        (2, [5, 4, 3, 2, 1, 6, 7, 0, 0]),  # [h_{n-r}..h_1, h_{n-r+1}..h_n]
        (5, [2, 1, 3, 4, 5, 6, 7, 0, 0]),
        (6, [1, 2, 3, 4, 5, 6, 7, 0, 0]),  # one item left to "reverse": unchanged
        (7, [1, 2, 3, 4, 5, 6, 7, 0, 0]),  # r >= n: no flip
        (50, [1, 2, 3, 4, 5, 6, 7, 0, 0]),
    ],
)
def test_partial_flip_known_answers(remaining, expected):
    assert partial_flip(ITEMS, MASK, remaining).tolist() == [expected]


def test_partial_flip_rows_of_different_lengths():
    ids = torch.tensor([[1, 2, 3, 4, 0, 0], [1, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0]])
    out = partial_flip(ids, ids != 0, remaining=2)
    assert out.tolist() == [[2, 1, 3, 4, 0, 0], [1, 0, 0, 0, 0, 0], [4, 3, 2, 1, 5, 6], [0, 0, 0, 0, 0, 0]]


def test_partial_flip_on_features_is_an_involution_and_ignores_padding_length():
    torch.manual_seed(0)
    mask = lengths_mask([5, 2, 8], 8)
    x = torch.randn(3, 8, 4) * mask.unsqueeze(-1)
    for r in (0, 1, 3, 10):
        y = partial_flip(x, mask, r)
        torch.testing.assert_close(partial_flip(y, mask, r), x)
        y_long = partial_flip(pad(x, 13), lengths_mask([5, 2, 8], 13), r)
        torch.testing.assert_close(y_long[:, :8], y)
        assert not y_long[:, 8:].any()


# ---- masked convolution and spectral filter -------------------------------------------------------
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_masked_conv_does_not_depend_on_padding(kernel_size):
    torch.manual_seed(0)
    conv = MaskedConv1d(4, kernel_size)
    mask = lengths_mask([3, 1, 6], 6)
    x = torch.randn(3, 6, 4)  # garbage at padding on purpose: it must be ignored
    y = conv(x, mask)
    x_long = pad(x, 11)
    x_long[:, 6:] = 5.0
    y_long = conv(x_long, lengths_mask([3, 1, 6], 11))
    torch.testing.assert_close(y_long[:, :6], y)
    assert not y_long[~lengths_mask([3, 1, 6], 11)].any()


def test_spectral_filter_is_a_fixed_two_sided_convolution():
    torch.manual_seed(0)
    N, D = 16, 3
    filt = SpectralFilter(D, filter_len=N)
    mask = lengths_mask([5, 2], 7)
    x = torch.randn(2, 7, D) * mask.unsqueeze(-1)
    kernel = torch.fft.irfft(torch.view_as_complex(filt.weight), n=N, dim=0)  # (N, D), k[(t - s) mod N]
    expected = torch.zeros_like(x)
    for t in range(7):
        for s in range(7):
            expected[:, t] += kernel[(t - s) % N] * x[:, s]
    torch.testing.assert_close(filt(x, mask), expected * mask.unsqueeze(-1), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("L", "filter_len"), [(1, 8), (7, 8), (8, 8), (6, 16), (50, 128)])
def test_spectral_filter_equals_the_fft_over_filter_len(L, filter_len):
    """Outputs and gradients equal the direct formulation (zero-pad every row to filter_len, rfft,
    multiply by W, irfft, cut to L), also where 2L - 1 > filter_len and lags wrap around."""
    torch.manual_seed(0)
    filt = SpectralFilter(5, filter_len=filter_len)
    mask = lengths_mask([L, max(L // 2, 1), 1], L)
    x = torch.randn(3, L, 5, requires_grad=True)

    def direct(x):
        keep = mask.unsqueeze(-1).float()
        spectrum = torch.fft.rfft(x * keep, n=filter_len, dim=1, norm="ortho") * torch.view_as_complex(filt.weight)
        return torch.fft.irfft(spectrum, n=filter_len, dim=1, norm="ortho")[:, :L] * keep

    y, y_direct = filt(x, mask), direct(x)
    torch.testing.assert_close(y, y_direct, atol=1e-6, rtol=1e-5)
    upstream = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, filt.weight], upstream)
    grads_direct = torch.autograd.grad(y_direct, [x, filt.weight], upstream)
    for g, g_direct in zip(grads, grads_direct):
        torch.testing.assert_close(g, g_direct, atol=1e-6, rtol=1e-5)


def test_spectral_filter_does_not_depend_on_padding():
    torch.manual_seed(0)
    filt = SpectralFilter(4, filter_len=32)
    lengths = [4, 1, 12]
    x = torch.randn(3, 12, 4)
    y = filt(x, lengths_mask(lengths, 12))
    y_long = filt(pad(x, 20), lengths_mask(lengths, 20))
    torch.testing.assert_close(y_long[:, :12], y, atol=1e-6, rtol=1e-5)
    assert not y_long[:, 12:].any()


def test_spectral_filter_rejects_sequences_longer_than_filter_len():
    filt = SpectralFilter(4, filter_len=8)
    with pytest.raises(ValueError, match="filter_len"):
        filt(torch.zeros(1, 9, 4), torch.ones(1, 9, dtype=torch.bool))


# ---- GLU, DS gate, init ---------------------------------------------------------------------------
def test_glu_and_ds_gate_shapes_and_gate_value_at_zero():
    x = torch.randn(2, 5, 8)
    mask = lengths_mask([5, 3], 5)
    assert GLU(8)(x).shape == (2, 5, 8)
    gate = DenseSelectiveGate(8, kernel_size=3)
    assert gate(x, mask).shape == (2, 5, 8)
    nn.init.zeros_(gate.dense_out.weight)
    nn.init.zeros_(gate.dense_out.bias)
    torch.testing.assert_close(gate(x, mask), torch.full((2, 5, 8), 0.5))  # SiLU(0) + sigmoid(0)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        nn.init.constant_(self.proj.bias, 3.0)


@pytest.mark.parametrize("init, block_bias", [("recbole", 0.0), ("mamba", 3.0)])
def test_init_backbone_keeps_block_init_only_for_mamba_scheme(init, block_bias):
    model = nn.Sequential(nn.Linear(4, 4), Block())
    nn.init.constant_(model[0].bias, 3.0)
    init_backbone_(model, init, keep=(Block,))
    assert torch.all(model[0].bias == 0) and model[0].weight.std() < 0.05
    assert torch.all(model[1].proj.bias == block_bias)
    with pytest.raises(ValueError, match="init"):
        init_backbone_(model, "xavier", keep=(Block,))
