"""SIGMA's own blocks: the DS gate, FE-GRU, and SigmaLayer's branches (eqs 3-10)."""

import pytest
import torch
import torch.nn.functional as F

from sigma_lightning.models import MambaConfig
from sigma_lightning.models.sigma import DenseSelectiveGate, FeatureExtractGRU, SigmaLayer
from sigma_lightning.nn.layers import partial_flip
from sigma_lightning.ops.backend import c_kernel_available
from sigma_lightning.ops.selective_scan import use_fast_backend
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


@pytest.mark.parametrize("read", [False, True], ids=["every_position", "at_positions"])
def test_fe_gru_time_major_path_equals_nn_gru_path(read):
    """On float32 CPU tensors FE-GRU runs its convolution time major into the C GRU; elsewhere
    MaskedConv1d and nn.GRU (here forced with the torch backend). Both give the same output, and
    the same gradients of the input and of every parameter, at every position and at positions."""
    if not c_kernel_available():
        pytest.skip("the C kernels could not be built here (no C compiler?)")
    torch.manual_seed(0)
    fe_gru = FeatureExtractGRU(8, kernel_size=3)
    mask = lengths_mask([6, 3, 1, 0], 6)
    h = torch.randn(4, 6, 8, requires_grad=True)
    positions = torch.tensor([5, 2, 0, 0]) if read else None
    leaves = [h, *fe_gru.parameters()]
    assert fe_gru.gru.runs_c_kernels(h)
    runs = []
    for backend in ("c", "torch"):
        with use_fast_backend(backend):
            out = fe_gru(h, mask, positions)
            upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
            runs.append((out, torch.autograd.grad(out, leaves, upstream)))
    (out_c, grads_c), (out_t, grads_t) = runs
    assert out_c.shape == ((4, 8) if read else (4, 6, 8))
    torch.testing.assert_close(out_c, out_t)
    for got, want in zip(grads_c, grads_t):
        torch.testing.assert_close(got, want)


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
