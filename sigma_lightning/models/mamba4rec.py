"""Mamba4Rec (Liu et al. 2024, "Mamba4Rec: Towards Efficient Sequential Recommendation with
Selective State Space Models"): Mamba blocks with a residual LayerNorm and a point-wise feed-forward
network, the baseline of the SSM recommenders (docs/models.md)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from sigma_lightning.nn.dropout import Dropout
from sigma_lightning.nn.layers import (
    MaskedLayerStack,
    PointWiseFeedForward,
    at_positions,
    init_backbone_,
    last_positions,
)
from sigma_lightning.nn.mamba import Mamba
from sigma_lightning.nn.mamba_config import MambaConfig
from sigma_lightning.nn.settings import check_backbone_settings


class Mamba4RecLayer(nn.Module):
    """h = Mamba(x); h = LayerNorm(dropout(h) + x) (without "+ x" when `residual` is False, as the
    authors do for a single layer); out = PFFN(h). x: (B, L, D), mask: (B, L) -> (B, L, D), or with
    `last_only` each row's last real position alone (B, D): the Mamba block reads its scan there
    and the rest runs on B rows. The arguments are Mamba4Rec's."""

    def __init__(self, *, hidden_size: int, mamba: MambaConfig, dropout: float, residual: bool) -> None:
        super().__init__()
        self.mamba = Mamba(hidden_size, mamba)
        self.residual = residual
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.ffn = PointWiseFeedForward(hidden_size, dropout=dropout)

    def forward(self, x: Tensor, mask: Tensor, last_only: bool = False) -> Tensor:
        last = last_positions(mask) if last_only else None  # (B,)
        h = self.dropout(self.mamba(x, mask, positions=last))  # (B, L, D), or (B, D)
        if last_only:
            x = at_positions(x, last)  # (B, D)
        h = self.norm(h + x if self.residual else h)  # (B, L, D), or (B, D)
        return self.ffn(h)


class Mamba4Rec(MaskedLayerStack):
    """Mamba4Rec, the Mamba baseline of the SSM recommenders (Liu et al. 2024).

    Embedding frame (dropout, LayerNorm), `num_layers` Mamba4RecLayers, the output at the last real
    item. The scans are causal and masked, so padding never changes a real position's output.

    Args:
        hidden_size: embedding width D (>= 1; papers: 64).
        num_layers: stacked Mamba4RecLayers (>= 1; the papers' baseline: 2).
        dropout: dropout probability in [0, 1) (papers: 0.3 on Amazon and Yelp, 0.2 on MovieLens).
        mamba: settings of every layer's Mamba block (papers: d_state 32, d_conv 4, expand 2).
        init: "recbole" (the authors': N(0, 0.02) everywhere, Mamba's dt init overwritten) or
            "mamba" (the Mamba blocks keep their own initialisation).
        residual: add each layer's input before its LayerNorm (as in every backbone). The authors'
            code does so only when num_layers > 1: `residual: false` with one layer is their model.
    """

    def __init__(
        self,
        hidden_size: int = 64,
        num_layers: int = 2,
        dropout: float = 0.3,
        mamba: MambaConfig = MambaConfig(),
        init: Literal["recbole", "mamba"] = "recbole",
        residual: bool = True,
    ) -> None:
        check_backbone_settings(hidden_size=hidden_size, num_layers=num_layers, dropout=dropout)
        layers = (
            Mamba4RecLayer(hidden_size=hidden_size, mamba=mamba, dropout=dropout, residual=residual)
            for _ in range(num_layers)
        )
        super().__init__(hidden_size=hidden_size, dropout=dropout, layers=layers)
        init_backbone_(self, init, keep=(Mamba,))

    def sequence_output(self, item_emb: Tensor, mask: Tensor) -> Tensor:
        """Every position's output (B, L, D): the convolutions and scans run forwards and the rest is
        per position, so position t is `forward` of the prefix ending at t (`data.train_samples:
        sequences` trains them all). Not on MaskedLayerStack: SIGMA and EchoMamba4Rec look backwards."""
        return self.every_position(item_emb, mask)
