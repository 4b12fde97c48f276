"""SASRec and GRU4Rec: padding never changes a real position (perturbed weights, each history alone
against the padded batch), SASRec is causal and rejects sequences past its positions, and its
feed-forward block is RecBole's."""

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from sigma_lightning.errors import ConfigError
from sigma_lightning.models import GRU4Rec, SASRec
from sigma_lightning.models.sasrec import SASRecBlock
from sigma_lightning.nn.dropout import dropout
from sigma_lightning.ops.gru import GRU
from tests.padding import assert_padding_invariant, padded, perturb_, probe

BASELINES = {
    "sasrec": lambda: SASRec(hidden_size=16, num_heads=2, max_seq_len=30),
    "gru4rec": lambda: GRU4Rec(16, gru_hidden_size=12, num_layers=2),
}
BRANCHES = {
    SASRecBlock: lambda block, x, attn_mask: {"output": block(x, attn_mask)},
    GRU: lambda gru, x: {"states": gru(x)[0]},
}


@pytest.mark.parametrize("name", BASELINES)
@settings(max_examples=8, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate])
@given(
    histories=st.lists(st.lists(st.integers(1, 19), min_size=1, max_size=12), min_size=1, max_size=4),
    extra=st.lists(st.integers(0, 12), min_size=1, max_size=2),
    seed=st.integers(0, 2**16),
)
def test_representation_does_not_depend_on_padding(name, histories, extra, seed):
    torch.manual_seed(seed)
    backbone = perturb_(BASELINES[name]().eval(), seed)
    lengths = sorted({max(map(len, histories)) + e for e in extra})
    keys = probe(backbone, BRANCHES, torch.zeros(1, 2, 16), torch.ones(1, 2, dtype=torch.bool)).keys()
    assert len(keys) > 1, keys  # the blocks were probed, not only the representation
    assert_padding_invariant(backbone, BRANCHES, histories, lengths, seed)


@torch.no_grad()
def test_sasrec_is_causal():
    """Changing the last real item changes its own position's output and no earlier one's."""
    torch.manual_seed(0)
    backbone = perturb_(SASRec(hidden_size=16, max_seq_len=10).eval(), seed=0)
    emb = torch.nn.Embedding(50, 16, padding_idx=0)
    a = padded([[3, 7, 9, 2]], 6)
    b = a.clone()
    b[0, 3] = 40
    outputs = [probe(backbone, BRANCHES, emb(ids), ids != 0)["blocks.1/output"] for ids in (a, b)]  # (1, L, D)
    torch.testing.assert_close(outputs[0][:, :3], outputs[1][:, :3])
    assert not torch.allclose(outputs[0][:, 3], outputs[1][:, 3], atol=1e-3)


def test_sasrec_rejects_sequences_longer_than_its_positions():
    backbone = SASRec(hidden_size=16, max_seq_len=5)
    ids = torch.ones(2, 8, dtype=torch.long)
    with pytest.raises(ConfigError, match="max_seq_len"):
        backbone(torch.zeros(2, 8, 16), ids != 0)


def test_sasrec_feed_forward_is_recboles_in_training_mode():
    """RecBole's FeedForward: LayerNorm(h + dropout(W2 gelu(W1 h))), one dropout draw, none between
    the two linear layers. Same RNG seed, same weights: same training-mode output."""
    ffn = SASRec(hidden_size=16, num_heads=2, dropout=0.5, attn_dropout=0.5, max_seq_len=8).blocks[0].ffn.train()
    h = torch.randn(3, 5, 16)
    torch.manual_seed(1)
    ours = ffn(h)
    torch.manual_seed(1)
    inner = torch.nn.functional.gelu(ffn.fc1(h))
    recbole = ffn.norm(h + dropout(ffn.fc2(inner), 0.5, training=True))  # the package's dropout, as ffn's
    torch.testing.assert_close(ours, recbole)
