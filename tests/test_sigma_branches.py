"""research/sigma_branches.py: switching a branch off at inference is exactly that branch's mixing
weight set to zero, leaves the model unchanged afterwards, and the measured norms are those of the
branches at each user's last position."""

import pytest
import torch

from research import sigma_branches
from sigma_lightning.models import SIGMA
from sigma_lightning.module import SeqRecModule
from sigma_lightning.nn.layers import gather_last
from sigma_lightning.nn.mamba_config import MambaConfig
from tests.test_cli import run


def tiny_sigma(num_items: int, **kwargs) -> SeqRecModule:
    torch.manual_seed(0)
    backbone = SIGMA(hidden_size=16, mamba=MambaConfig(d_state=4), dropout=0.0, **kwargs)
    return SeqRecModule(backbone, num_items=num_items).eval()


@torch.no_grad()
def test_switching_off_a_branch_is_its_mixing_weight_at_zero(tmp_path):
    data = run(tmp_path, "fit", "--trainer.max_epochs", "0").datamodule
    model = tiny_sigma(data.num_items, residual=False)
    layer = model.backbone.layers[0]
    ids = next(iter(data.test_dataloader()))["input_ids"]
    before = model(ids)
    with sigma_branches.switched_off(layer.fe_gru):
        gru_off = model(ids)
    with sigma_branches.switched_off(layer.mamba), sigma_branches.switched_off(layer.mamba_flipped):
        mamba_off = model(ids)
    torch.testing.assert_close(model(ids), before)  # the hooks are gone
    assert not torch.allclose(gru_off, before) and not torch.allclose(mamba_off, before)
    for weight, expected in ((layer.gru_weight, gru_off), (layer.mamba_weight, mamba_off)):
        kept = weight.item()
        weight.fill_(0.0)
        torch.testing.assert_close(model(ids), expected)
        weight.fill_(kept)


@torch.no_grad()
def test_norms_are_the_branches_at_the_last_position(tmp_path):
    data = run(tmp_path, "fit", "--trainer.max_epochs", "0").datamodule
    model = tiny_sigma(data.num_items)
    layer = model.backbone.layers[0]
    sums, users = torch.zeros(3), 0
    for batch in data.test_dataloader():
        ids = batch["input_ids"]
        mask = ids > 0
        x = model.backbone.frame(model.item_embedding(ids), mask)  # (B, L, D), the layer's input
        parts = (layer.mamba_weight * layer.pf_mamba(x, mask), layer.gru_weight * layer.fe_gru(x, mask), x)
        sums += torch.tensor([gather_last(p, mask).norm(dim=-1).sum().item() for p in parts])
        users += ids.size(0)
    norms = sigma_branches.branch_norms(model, data)
    assert list(norms.values()) == pytest.approx((sums / users).tolist(), rel=1e-5)

    without_gru = sigma_branches.report(tiny_sigma(data.num_items, fe_gru=False), data)
    assert without_gru["a2 (gru_weight)"] is None and without_gru["norms_at_last_position"]["fe_gru"] == 0.0
    assert without_gru["test_fe_gru_off"] == without_gru["test"]  # nothing to switch off
