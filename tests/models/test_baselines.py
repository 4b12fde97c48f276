import pytest
import torch

from sigma_lightning.models import GRU4Rec, SASRec


def padded(histories: list[list[int]], length: int) -> torch.Tensor:
    """Left-aligned padding (docs/architecture.md): real items first, zeros after."""
    out = torch.zeros(len(histories), length, dtype=torch.long)
    for row, items in enumerate(histories):
        out[row, : len(items)] = torch.tensor(items)
    return out


@pytest.mark.parametrize("make", [lambda: SASRec(hidden_size=16, num_heads=2, max_seq_len=30), lambda: GRU4Rec(16)])
def test_representation_does_not_depend_on_padding(make):
    torch.manual_seed(0)
    backbone = make().eval()
    emb = torch.nn.Embedding(50, 16, padding_idx=0)
    histories = [[3, 7, 9], [1], [4, 4, 8, 2, 11, 6, 5, 9, 10, 12]]
    reps = []
    for length in (12, 20, 30):
        ids = padded(histories, length)
        with torch.no_grad():
            reps.append(backbone(emb(ids), ids != 0))
    torch.testing.assert_close(reps[0], reps[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reps[0], reps[2], atol=1e-5, rtol=1e-5)


def test_sasrec_is_causal():
    torch.manual_seed(0)
    backbone = SASRec(hidden_size=16, max_seq_len=10).eval()
    emb = torch.nn.Embedding(50, 16, padding_idx=0)
    a = padded([[3, 7, 9, 2]], 10)
    b = a.clone()
    b[0, 3] = 40  # change only the last real item
    with torch.no_grad():
        ha, hb = (backbone(emb(x), torch.tensor([[True, True, True, False] + [False] * 6])) for x in (a, b))
    torch.testing.assert_close(ha, hb)  # representation at position 2 must not see position 3


def test_sasrec_rejects_sequences_longer_than_its_positions():
    backbone = SASRec(hidden_size=16, max_seq_len=5)
    ids = torch.ones(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="max_seq_len"):
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
    recbole = ffn.norm(h + torch.nn.functional.dropout(ffn.fc2(inner), 0.5, training=True))
    torch.testing.assert_close(ours, recbole)
