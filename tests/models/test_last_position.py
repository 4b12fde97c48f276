"""Every backbone's `forward` runs its last layer at each row's last real item only where it can (the
training step reads nothing else): it must equal the output of the whole last layer read at that
position, in values and in every parameter's gradient, whatever the padding."""

import copy

import pytest
import torch

from sigma_lightning.models import SASRec, SIGMA, EchoMamba4Rec, Mamba4Rec, MambaConfig
from sigma_lightning.nn.layers import MaskedLayerStack, gather_last
from tests.padding import lengths_mask, perturb_

SMALL = dict(hidden_size=8, mamba=MambaConfig(d_state=4), flip_range=2)


def every_position_then_last(backbone: MaskedLayerStack, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The computation before the change: every layer at every position, then the last real one."""
    return gather_last(backbone.every_position(emb, mask), mask)  # (B, D)


def inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    mask = lengths_mask([7, 1, 4, 7, 2, 0], 7)  # a full row, a single item, several paddings, no item
    return torch.randn(6, 7, 8) * mask.unsqueeze(-1), mask


@pytest.mark.parametrize(
    "settings",
    [
        dict(num_layers=1),
        dict(num_layers=2),
        dict(num_layers=1, residual=False),
        dict(num_layers=2, fe_gru=False, ds_gate=False, partial_flip=False),
    ],
    ids=["one-layer", "two-layers", "no-residual", "ablations"],
)
def test_sigma_forward_equals_every_position_read_at_the_last(settings):
    emb, mask = inputs(0)
    new = perturb_(SIGMA(**SMALL, dropout=0.0, **settings), seed=1)  # train mode; dropout 0: no draws
    old = copy.deepcopy(new)
    assert_same_values_and_gradients(new, lambda emb_old: every_position_then_last(old, emb_old, mask), emb, mask, old)


MAMBA_SMALL = dict(hidden_size=8, mamba=MambaConfig(d_state=4))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Mamba4Rec(**MAMBA_SMALL, num_layers=1, dropout=0.0),
        lambda: Mamba4Rec(**MAMBA_SMALL, num_layers=2, dropout=0.0),
        lambda: Mamba4Rec(**MAMBA_SMALL, num_layers=1, dropout=0.0, residual=False),
        lambda: EchoMamba4Rec(**MAMBA_SMALL, num_layers=1, dropout=0.0, filter_len=16),
        lambda: EchoMamba4Rec(**MAMBA_SMALL, num_layers=2, dropout=0.0, filter_len=16),
    ],
    ids=["mamba4rec-one-layer", "mamba4rec-two-layers", "mamba4rec-no-residual", "echo-one-layer", "echo-two-layers"],
)
def test_mamba_backbones_forward_equals_every_position_read_at_the_last(make):
    emb, mask = inputs(5)
    new = perturb_(make(), seed=6)  # train mode; dropout 0: no draws
    old = copy.deepcopy(new)
    assert_same_values_and_gradients(new, lambda emb_old: every_position_then_last(old, emb_old, mask), emb, mask, old)


@pytest.mark.parametrize("make", [lambda: Mamba4Rec(**MAMBA_SMALL, dropout=0.3),
                                  lambda: EchoMamba4Rec(**MAMBA_SMALL, dropout=0.3, filter_len=16)],
                         ids=["mamba4rec", "echo"])  # fmt: skip
def test_mamba_backbones_forward_equals_every_position_in_eval_mode_with_dropout(make):
    emb, mask = inputs(7)
    model = perturb_(make(), seed=8).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(emb, mask), every_position_then_last(model, emb, mask))


def assert_same_values_and_gradients(new, old_forward, emb, mask, old) -> None:
    """new(emb, mask) and old_forward(emb) (B, D) agree in values, input and parameter gradients."""
    emb_new, emb_old = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    out_new, out_old = new(emb_new, mask), old_forward(emb_old)  # (B, D) each
    torch.testing.assert_close(out_new, out_old)
    weights = torch.randn_like(out_new)
    (out_new * weights).sum().backward()
    (out_old * weights).sum().backward()
    torch.testing.assert_close(emb_new.grad, emb_old.grad)
    for (name, p_new), p_old in zip(new.named_parameters(), old.parameters()):
        torch.testing.assert_close(p_new.grad, p_old.grad, msg=lambda m, name=name: f"{name}: {m}")


def test_sigma_forward_equals_every_position_in_eval_mode_with_dropout():
    emb, mask = inputs(1)
    model = perturb_(SIGMA(**SMALL, num_layers=2, dropout=0.3), seed=2).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(emb, mask), every_position_then_last(model, emb, mask))


def test_sigma_tail_drops_out_the_rows_it_computes():
    """In training the last layer's dropouts act on the (B, D) rows of the last real items, at rate p."""
    emb, mask = inputs(2)
    emb, mask = emb.repeat(200, 1, 1), mask.repeat(200, 1)  # (1200, 7, 8)
    model = SIGMA(**SMALL, num_layers=2, dropout=0.3)
    seen = {}
    for name in ("layers.1.dropout", "layers.1.ffn.dropout", "layers.0.dropout"):
        module = model.get_submodule(name)
        module.register_forward_hook(lambda m, args, out, name=name: seen.update({name: (args[0], out)}))
    model(emb, mask)
    assert seen["layers.0.dropout"][0].shape == (1200, 7, 8)  # inner layers: every position
    for name in ("layers.1.dropout", "layers.1.ffn.dropout"):
        before, after = seen[name]
        assert before.shape == (1200, 8)
        zeros = (after[before != 0] == 0).float().mean().item()  # the row without items is all zeros
        assert 0.27 < zeros < 0.33


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_sasrec_forward_equals_sequence_output_read_at_the_last(num_layers):
    emb, mask = inputs(3)
    new = perturb_(SASRec(hidden_size=8, num_layers=num_layers, num_heads=2, inner_size=16, dropout=0.0,
                          attn_dropout=0.0, max_seq_len=7), seed=4)  # fmt: skip
    old = copy.deepcopy(new)
    # the computation before the change: every position, read at the last real item
    every_position = lambda emb_old: gather_last(old.sequence_output(emb_old, mask), mask)  # noqa: E731
    assert_same_values_and_gradients(new, every_position, emb, mask, old)


def test_sasrec_last_block_attends_from_the_last_item_with_dropout():
    """In training the last block's attention has one query per row (its dropout acts on (B, h, 1, L)
    weights, rate p) and the eval-mode output still equals sequence_output read at the last item."""
    emb, mask = inputs(4)
    model = SASRec(hidden_size=8, num_layers=2, num_heads=2, inner_size=16, dropout=0.3, attn_dropout=0.3,
                   max_seq_len=7)  # fmt: skip
    shapes = []
    attention = model.blocks[-1].attention
    attention.register_forward_hook(lambda m, args, out: shapes.append((args[0].shape, out.shape)))
    model(emb, mask)
    assert shapes == [((6, 7, 8), (6, 8))]
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(emb, mask), gather_last(model.sequence_output(emb, mask), mask))
