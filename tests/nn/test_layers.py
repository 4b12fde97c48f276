import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sigma_lightning.errors import ConfigError
from sigma_lightning.nn.layers import (
    EmbeddingDropoutNorm,
    MaskedConv1d,
    PointWiseFeedForward,
    gather_last,
    init_backbone_,
    partial_flip,
)
from tests.padding import lengths_mask, pad


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


@pytest.mark.parametrize("remaining", [0, 1, 3, 10])
def test_partial_flip_gradient_is_gathers(remaining):
    """The flip's own backward (the same permutation applied to the gradient) gives what autograd
    gives for the plain gather, rows of different lengths and padding included."""
    from sigma_lightning.nn.layers import flip_index

    torch.manual_seed(0)
    mask = lengths_mask([5, 2, 8, 0], 8)
    x = torch.randn(4, 8, 3, requires_grad=True)
    grad = torch.randn(4, 8, 3)
    index = flip_index(mask, remaining).unsqueeze(-1).expand(-1, -1, 3)
    (expected,) = torch.autograd.grad(x.gather(1, index), x, grad)
    (actual,) = torch.autograd.grad(partial_flip(x, mask, remaining), x, grad)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


# ---- masked convolution ---------------------------------------------------------------------------
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


def test_masked_conv_zeroes_its_input_at_padding():
    """What lies at padding never enters a real output, even where the 'same' kernel reaches it
    (position n - 1 sees n), and the output is zero there."""
    torch.manual_seed(0)
    conv = MaskedConv1d(4, kernel_size=3)
    mask = lengths_mask([3, 5], 6)
    x = torch.randn(2, 6, 4)
    garbage = x.clone()
    garbage[~mask] = 100.0
    torch.testing.assert_close(conv(garbage, mask), conv(x, mask))
    assert not conv(garbage, mask)[~mask].any()



@pytest.mark.parametrize("kernel_size", [1, 2, 3, 4, 5])
def test_masked_conv_at_positions_equals_the_whole_output_read_there(kernel_size):
    """Any position, real or padding, first or last, with a position-wise map before the conv: the
    values and the gradients of the input, the map's and the conv's parameters."""
    torch.manual_seed(0)
    conv, pointwise = MaskedConv1d(4, kernel_size), nn.Linear(4, 4)
    mask = lengths_mask([6, 3, 1, 0, 6], 6)
    x = torch.randn(5, 6, 4)  # garbage at padding on purpose
    positions = torch.tensor([5, 2, 0, 1, 0])  # row 3 has no items: its position is padding
    leaves = [x.requires_grad_(), *conv.parameters(), *pointwise.parameters()]
    upstream = torch.randn(5, 4)
    whole = conv(pointwise(x), mask)[torch.arange(5), positions]  # (B, C)
    at = conv.at_positions(x, mask, positions, pointwise=pointwise)  # (B, C)
    torch.testing.assert_close(at, whole)
    assert not at[3].any()
    for got, want in zip(torch.autograd.grad(at, leaves, upstream), torch.autograd.grad(whole, leaves, upstream)):
        torch.testing.assert_close(got, want)

# ---- shared blocks --------------------------------------------------------------------------------
def test_embedding_frame_zeroes_padding_and_normalises_real_positions():
    frame = EmbeddingDropoutNorm(8, dropout=0.0)
    with torch.no_grad():
        frame.norm.bias.fill_(0.5)  # LayerNorm would turn a zero padding row into this bias
    mask = lengths_mask([2, 4], 4)
    out = frame(torch.randn(2, 4, 8) * mask.unsqueeze(-1), mask)
    assert not out[~mask].any()
    torch.testing.assert_close(out[mask].mean(-1), torch.full((6,), 0.5))


def test_pointwise_feed_forward_is_the_papers_formula():
    """PFFN(h) = LN(h + W2 GELU(W1 h + b1) + b2) in eval mode; inner size 4d by default."""
    torch.manual_seed(0)
    ffn = PointWiseFeedForward(8, dropout=0.3).eval()
    assert ffn.fc1.out_features == 32
    h = torch.randn(2, 3, 8)
    expected = F.layer_norm(h + ffn.fc2(F.gelu(ffn.fc1(h))), (8,), ffn.norm.weight, ffn.norm.bias, eps=1e-12)
    torch.testing.assert_close(ffn(h), expected)


def test_gather_last_reads_each_rows_last_real_position():
    hidden = torch.arange(2 * 5, dtype=torch.float).view(2, 5, 1)  # value = 5 * row + position
    mask = lengths_mask([3, 5], 5)
    assert gather_last(hidden, mask).flatten().tolist() == [2.0, 9.0]


# ---- init -----------------------------------------------------------------------------------------
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
    with pytest.raises(ConfigError, match="model.backbone.init_args.init='xavier'"):
        init_backbone_(model, "xavier", keep=(Block,))
