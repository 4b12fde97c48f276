"""Layers shared by the backbones: input normalisation, the point-wise feed-forward block,
masked helpers and the two initialisation schemes."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EmbeddingDropoutNorm(nn.Module):
    """Embedding -> dropout -> LayerNorm(eps 1e-12), the input frame of every paper backbone
    (MODELS.md section 0). Padding positions are zeroed afterwards so they carry nothing forward."""

    def __init__(self, hidden_size: int, dropout: float, eps: float = 1e-12) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.norm(self.dropout(x))  # (B, L, D)
        # LayerNorm turns an all-zero padding row into its bias; zero it so padding stays neutral.
        return x * mask.unsqueeze(-1)


class PointWiseFeedForward(nn.Module):
    """PFFN(h) = LayerNorm(h + dropout(W2 dropout(act(W1 h)))), inner size 4d by default."""

    def __init__(
        self, hidden_size: int, inner_size: int | None = None, dropout: float = 0.0, eps: float = 1e-12
    ) -> None:
        super().__init__()
        inner_size = inner_size or 4 * hidden_size
        self.fc1 = nn.Linear(hidden_size, inner_size)
        self.fc2 = nn.Linear(inner_size, hidden_size)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, h: Tensor) -> Tensor:
        out = self.fc2(self.dropout(self.act(self.fc1(h))))  # (B, L, D)
        return self.norm(h + self.dropout(out))


def gather_last(hidden: Tensor, mask: Tensor) -> Tensor:
    """Output at each row's last real position. hidden: (B, L, D), mask: (B, L) -> (B, D).

    Relies on the left-aligned padding convention (docs/architecture.md): real items occupy 0..n-1.
    """
    last = mask.sum(dim=1).clamp(min=1) - 1  # (B,)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


def recbole_init_(module: nn.Module, std: float = 0.02) -> None:
    """The authors' (RecBole) initialisation: Linear/Embedding weights ~ N(0, std), biases 0,
    LayerNorm 1/0. Apply with `model.apply(recbole_init_)`; it overwrites Mamba's own dt init."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
