"""SIGMA's own blocks: the DS gate, FE-GRU, and SigmaLayer's branches (eqs 3-10)."""

import pytest
import torch
import torch.nn.functional as F

from sigma_lightning.models import MambaConfig
from sigma_lightning.models.sigma import DenseSelectiveGate, FeatureExtractGRU, SigmaLayer
from sigma_lightning.nn.layers import partial_flip
from tests.padding import lengths_mask, perturb_, with_garbage_at_padding

LAYER = dict(hidden_size=8, mamba=MambaConfig(d_state=4), dropout=0.0, remaining=2, ds_gate=True, fe_gru=True,
             gate_kernel_size=3, gru_kernel_size=3, gru_bias=True, residual=True)  # fmt: skip


def test_ds_gate_is_silu_plus_sigmoid_of_its_masked_convolution():
    torch.manual_seed(0)
    gate = DenseSelectiveGate(8, kernel_size=3)
    mask = lengths_mask([5, 3], 5)
    x = torch.randn(2, 5, 8)
    delta = gate.dense_out(gate.conv(gate.dense_in(x), mask))
    torch.testing.assert_close(gate(x, mask), F.silu(delta) + torch.sigmoid(delta))
    torch.nn.init.zeros_(gate.dense_out.weight)
    torch.nn.init.zeros_(gate.dense_out.bias)
    torch.testing.assert_close(gate(x, mask), torch.full((2, 5, 8), 0.5))  # SiLU(0) + sigmoid(0)


def test_ds_gate_and_fe_gru_ignore_what_lies_at_padding():
    torch.manual_seed(0)
    gate, fe_gru = DenseSelectiveGate(8, kernel_size=5), FeatureExtractGRU(8, kernel_size=3)
    mask = lengths_mask([4, 1, 6], 6)
    x = torch.randn(3, 6, 8)
    for block in (gate, fe_gru):
        clean, dirty = block(x, mask), block(with_garbage_at_padding(x, mask, seed=1), mask)
        torch.testing.assert_close(dirty[mask], clean[mask])
    assert not fe_gru(x, mask)[~mask].any()


def test_sigma_layer_takes_keyword_arguments_only():
    with pytest.raises(TypeError):
        SigmaLayer(*LAYER.values())
    assert isinstance(SigmaLayer(**LAYER), SigmaLayer)


@torch.no_grad()
def test_sigma_layer_is_eqs_3_to_10():
    """forward = PFFN(LN(W (a1 (G(H) M + PF(G(PF H) M^f)) + a2 FE-GRU(H)) + b + H)), every part
    computed here from the blocks, the flipped branch put back on the original positions."""
    torch.manual_seed(0)
    layer = perturb_(SigmaLayer(**LAYER).eval(), seed=0)
    mask = lengths_mask([6, 2, 4], 6)
    h = torch.randn(3, 6, 8) * mask.unsqueeze(-1)
    h_f = partial_flip(h, mask, 2)
    forward = layer.gate(h, mask) * layer.mamba(h, mask)
    flipped = partial_flip(layer.gate(h_f, mask) * layer.mamba_flipped(h_f, mask), mask, 2)
    torch.testing.assert_close(layer.mamba_branch(h, mask), forward)
    torch.testing.assert_close(layer.flipped_branch(h, mask), flipped)
    z = layer.mamba_weight * (forward + flipped) + layer.gru_weight * layer.fe_gru(h, mask)
    torch.testing.assert_close(layer(h, mask), layer.ffn(layer.norm(layer.proj(z) + h)))
