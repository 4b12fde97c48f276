"""Mamba4Rec (Liu et al. 2024): Mamba blocks with a residual LayerNorm and a point-wise
feed-forward network, the baseline of the SSM recommenders (MODELS.md section 2)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from sigma_lightning.nn.layers import MaskedLayerStack, PointWiseFeedForward, init_backbone_
from sigma_lightning.nn.mamba import Mamba


class Mamba4RecLayer(nn.Module):
    """h = Mamba(x); h = LayerNorm(dropout(h) + x) (without "+ x" when `residual` is False, as the
    authors do for a single layer); out = PFFN(h). x: (B, L, D), mask: (B, L) -> (B, L, D)."""

    def __init__(
        self, hidden_size: int, d_state: int, d_conv: int, expand: int, dropout: float, residual: bool, scan_impl: str
    ) -> None:
        super().__init__()
        self.mamba = Mamba(hidden_size, d_state=d_state, d_conv=d_conv, expand=expand, scan_impl=scan_impl)
        self.residual = residual
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.ffn = PointWiseFeedForward(hidden_size, 4 * hidden_size, dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.dropout(self.mamba(x, mask))  # (B, L, D)
        h = self.norm(h + x if self.residual else h)  # (B, L, D)
        return self.ffn(h)


class Mamba4Rec(MaskedLayerStack):
    """Mamba4Rec backbone: embedding frame (dropout, LayerNorm) -> `num_layers` Mamba4RecLayers ->
    output at the last real item. The scans are causal and masked, so padding never changes a real
    position's output.

    Args:
        hidden_size: embedding width D. num_layers: stacked layers. residual: add each layer's input
        before its LayerNorm; None (default) does so only when num_layers > 1, as the authors' code
        (docs/results.md measures what the residual does for one layer). dropout: 0.3 (Amazon, Yelp) / 0.2
        (ML-1M). d_state, d_conv, expand: Mamba shape (N = 32, 4, 2). scan_impl: the Mamba block's
        selective-scan implementation ("auto", "fast", "reference", "cuda").
        init: "recbole" (N(0, 0.02) everywhere, overwriting Mamba's dt init, as the authors) or
        "mamba" (Mamba blocks keep their own init).
    """

    def __init__(
        self,
        hidden_size: int = 64,
        num_layers: int = 2,
        dropout: float = 0.3,
        d_state: int = 32,
        d_conv: int = 4,
        expand: int = 2,
        scan_impl: str = "auto",
        init: Literal["recbole", "mamba"] = "recbole",
        residual: bool | None = None,
    ) -> None:
        residual = num_layers > 1 if residual is None else residual
        layers = (
            Mamba4RecLayer(hidden_size, d_state, d_conv, expand, dropout, residual, scan_impl)
            for _ in range(num_layers)
        )
        super().__init__(hidden_size, dropout, layers)
        init_backbone_(self, init, keep=(Mamba,))
