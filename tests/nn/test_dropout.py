"""sigma_lightning.nn.dropout: the distribution nn.Dropout has, its gradient, its fallbacks, and that
every backbone uses it."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sigma_lightning.models import SIGMA, EchoMamba4Rec, GRU4Rec, Mamba4Rec, SASRec
from sigma_lightning.nn.dropout import Dropout, dropout


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_keeps_each_element_with_probability_one_minus_p_and_scales_it(p):
    torch.manual_seed(0)
    x = torch.full((1000, 1000), 2.0)
    y = dropout(x, p)
    kept = y != 0
    n = kept.numel()
    # Binomial(n, 1 - p): within 5 standard deviations
    assert abs(kept.sum().item() - n * (1 - p)) < 5 * math.sqrt(n * p * (1 - p))
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 2.0 / (1 - p)))
    assert abs(y.mean().item() - 2.0) < 5 * 2.0 * math.sqrt(p / (1 - p) / n)  # unbiased


def test_mask_elements_are_independent_of_their_neighbours():
    torch.manual_seed(1)
    kept = (dropout(torch.ones(2_000_000), 0.3) != 0).float()
    a, b = kept[:-1], kept[1:]
    correlation = ((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std())
    assert abs(correlation.item()) < 5 / math.sqrt(a.numel())


def test_gradient_is_the_same_mask_and_scale():
    torch.manual_seed(2)
    x = torch.randn(64, 50, 32, requires_grad=True)
    y = dropout(x, 0.3)
    g = torch.randn_like(y)
    y.backward(g)
    expected = torch.where(y != 0, g / 0.7, torch.zeros_like(g))
    torch.testing.assert_close(x.grad, expected)


def test_same_seed_same_mask_and_inplace_matches():
    x = torch.randn(128, 64)
    torch.manual_seed(3)
    a = dropout(x, 0.25)
    torch.manual_seed(3)
    x_copy = x.clone()
    b = dropout(x_copy, 0.25, inplace=True)
    torch.manual_seed(4)
    c = dropout(x, 0.25)
    torch.testing.assert_close(a, b)
    assert b is x_copy
    assert not torch.equal(a, c)


def test_eval_and_edge_probabilities_are_torchs():
    x = torch.randn(32, 16)
    assert dropout(x, 0.3, training=False) is x  # F.dropout returns its input in eval mode
    torch.testing.assert_close(dropout(x, 0.0), x)
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))  # no 0 * inf


def test_other_dtypes_fall_back_to_torchs_dropout():
    x = torch.randn(256, 256, dtype=torch.bfloat16)
    torch.manual_seed(5)
    ours = dropout(x, 0.3)
    torch.manual_seed(5)
    torchs = F.dropout(x, 0.3)
    assert torch.equal(ours, torchs)


def test_module_is_nn_dropout_with_our_forward():
    module = Dropout(0.4)
    assert isinstance(module, nn.Dropout) and module.p == 0.4 and module.state_dict() == {}
    x = torch.ones(10_000)
    kept = (module(x) != 0).float().mean().item()
    assert abs(kept - 0.6) < 0.03
    module.eval()
    assert module(x) is x


@pytest.mark.parametrize(
    "backbone", [SIGMA(), Mamba4Rec(), EchoMamba4Rec(filter_len=128), SASRec(max_seq_len=50), GRU4Rec()],
    ids=lambda b: type(b).__name__,
)
def test_every_backbone_dropout_is_ours(backbone):
    """torch's own nn.Dropout would run in place of ours unnoticed: only the speed would tell."""
    dropouts = [m for m in backbone.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(type(m) is Dropout for m in dropouts)
