"""GRU4Rec (Hidasi et al. 2016, "Session-based Recommendations with Recurrent Neural Networks") in
RecBole's sequential form: embedding -> dropout -> GRU -> Linear."""

from __future__ import annotations

from torch import Tensor, nn

from sigma_lightning.nn.dropout import Dropout
from sigma_lightning.nn.layers import gather_last
from sigma_lightning.nn.settings import check_backbone_settings
from sigma_lightning.ops.gru import GRU


class GRU4Rec(nn.Module):
    """GRU4Rec, a GRU over the item sequence (Hidasi et al. 2016), as RecBole builds it.

    The user representation is the projected state at the last real item. The GRU is causal, so right padding (docs/architecture.md) never reaches a real position.

    Args:
        hidden_size: embedding width D, also the representation's (>= 1; RecBole: 64).
        gru_hidden_size: width of the GRU state (>= 1; RecBole: 128).
        num_layers: stacked GRU layers (>= 1; RecBole: 1).
        dropout: dropout probability on the embeddings, in [0, 1) (RecBole: 0.3).
    """

    def __init__(
        self, hidden_size: int = 64, gru_hidden_size: int = 128, num_layers: int = 1, dropout: float = 0.3
    ) -> None:
        check_backbone_settings(
            hidden_size=hidden_size, gru_hidden_size=gru_hidden_size, num_layers=num_layers, dropout=dropout
        )
        super().__init__()
        self.hidden_size = hidden_size
        self.dropout = Dropout(dropout)
        # nn.GRU with a C time step on CPU (ops/gru.py)
        self.gru = GRU(hidden_size, gru_hidden_size, num_layers=num_layers, bias=False, batch_first=True)
        self.proj = nn.Linear(gru_hidden_size, hidden_size)
        # RecBole's GRU4Rec init: Xavier for the GRU weights (the Linear keeps PyTorch's default).
        for name, weight in self.gru.named_parameters():
            if "weight_ih" in name or "weight_hh" in name:
                nn.init.xavier_uniform_(weight)

    def forward(self, item_emb: Tensor, mask: Tensor) -> Tensor:
        return gather_last(self.sequence_output(item_emb, mask), mask)  # (B, D)

    def sequence_output(self, item_emb: Tensor, mask: Tensor) -> Tensor:
        """Every position's output (B, L, D): the GRU runs forwards, so position t is `forward` of the
        prefix ending at t (`data.train_samples: sequences` trains them all)."""
        states, _ = self.gru(self.dropout(item_emb))  # (B, L, H)
        return self.proj(states)  # (B, L, D)
