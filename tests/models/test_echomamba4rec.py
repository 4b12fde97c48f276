"""EchoMamba4Rec's own blocks: the padding-aware spectral filter, the GLU and the bi-directional
Mamba (its two branches and their sum)."""

import pytest
import torch

from sigma_lightning.errors import ConfigError
from sigma_lightning.models.echomamba4rec import GLU, BiMamba, SpectralFilter, linear_fft_length
from sigma_lightning.models import MambaConfig
from tests.padding import lengths_mask, pad, perturb_, with_garbage_at_padding


# ---- spectral filter ------------------------------------------------------------------------------
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


@pytest.mark.parametrize("lengths", [[4, 1, 12], [12, 12, 12], [1, 1, 2]])
def test_spectral_filter_does_not_depend_on_padding(lengths):
    """Real outputs equal those of the same rows padded further, with other garbage at the padding;
    padding outputs are zero."""
    torch.manual_seed(0)
    filt = SpectralFilter(4, filter_len=32)
    x = with_garbage_at_padding(torch.randn(3, 12, 4), lengths_mask(lengths, 12), seed=1)
    y = filt(x, lengths_mask(lengths, 12))
    long_mask = lengths_mask(lengths, 20)
    y_long = filt(with_garbage_at_padding(pad(x, 20), long_mask, seed=2), long_mask)
    torch.testing.assert_close(y_long[:, :12], y, atol=1e-6, rtol=1e-5)
    assert not y_long[~long_mask].any()


def test_spectral_filter_rejects_sequences_longer_than_filter_len():
    filt = SpectralFilter(4, filter_len=8)
    with pytest.raises(ConfigError, match="filter_len"):
        filt(torch.zeros(1, 9, 4), torch.ones(1, 9, dtype=torch.bool))


@pytest.mark.parametrize(("length", "expected"), [(1, 1), (2, 4), (3, 8), (50, 128), (64, 128), (65, 256), (200, 512)])
def test_linear_fft_length_is_the_smallest_power_of_two_holding_every_lag(length, expected):
    assert linear_fft_length(length) == expected >= 2 * length - 1


# ---- GLU and bi-directional Mamba -----------------------------------------------------------------
def test_glu_is_value_times_sigmoid_gate():
    torch.manual_seed(0)
    glu = GLU(8)
    x = torch.randn(2, 5, 8)
    hidden = glu.fc1(x)
    expected = glu.fc2(hidden[..., :8] * torch.sigmoid(hidden[..., 8:]))
    torch.testing.assert_close(glu(x), expected)


def bimamba(seed: int = 0) -> BiMamba:
    torch.manual_seed(seed)
    block = BiMamba(hidden_size=8, mamba=MambaConfig(d_state=4), dropout=0.0).eval()
    return perturb_(block, seed)


@torch.no_grad()
def test_bimamba_backward_branch_scans_each_history_from_its_last_item():
    """The backward branch of a padded batch equals, row by row, a plain reverse scan of that row's
    real items alone (torch.flip of an unpadded sequence, no mask)."""
    block = bimamba()
    lengths = [5, 1, 7]
    mask = lengths_mask(lengths, 9)
    x = with_garbage_at_padding(torch.randn(3, 9, 8), mask, seed=3)
    forward, backward = block.forward_branch(x, mask), block.backward_branch(x, mask)
    torch.testing.assert_close(block(x, mask), forward + backward)
    for row, n in enumerate(lengths):
        alone = x[row : row + 1, :n]  # (1, n, D) no padding
        reverse = torch.flip(block.mamba_backward(torch.flip(alone, [1])), [1])
        expected = block.norm_backward(reverse + alone)[0]
        torch.testing.assert_close(backward[row, :n], expected, atol=1e-5, rtol=1e-5)
        expected_forward = block.norm_forward(block.mamba_forward(alone) + alone)[0]
        torch.testing.assert_close(forward[row, :n], expected_forward, atol=1e-5, rtol=1e-5)


def test_filter_len_must_be_a_power_of_two():
    from sigma_lightning.models import EchoMamba4Rec

    with pytest.raises(ConfigError, match=r"filter_len=96: expected a power of two >= 2 \(e\.g\. 128\)"):
        EchoMamba4Rec(hidden_size=8, filter_len=96)
