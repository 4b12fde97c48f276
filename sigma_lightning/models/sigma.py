"""SIGMA (Liu et al. 2024): a partially flipped bi-directional Mamba weighted by a dense selective
gate, mixed with a convolution + GRU path, then a point-wise feed-forward network
(paper eqs 1-10, MODELS.md section 4). Flips, convolutions and scans ignore padding."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from sigma_lightning.nn.layers import (
    DenseSelectiveGate,
    MaskedLayerStack,
    MaskedConv1d,
    PointWiseFeedForward,
    init_backbone_,
    partial_flip,
)
from sigma_lightning.nn.mamba import Mamba


class FeatureExtractGRU(nn.Module):
    """FE-GRU (eq 7): C = Conv1d(H) (masked, 'same' padding); F = GRU(C), zero at padding.
    The GRU runs left to right, so right padding never reaches a real position.
    h: (B, L, D), mask: (B, L) -> (B, L, D)."""

    def __init__(self, hidden_size: int, kernel_size: int = 3, bias: bool = True) -> None:
        super().__init__()
        self.conv = MaskedConv1d(hidden_size, kernel_size)
        self.gru = nn.GRU(hidden_size, hidden_size, bias=bias, batch_first=True)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        states, _ = self.gru(self.conv(h, mask))  # (B, L, D)
        return states * mask.unsqueeze(-1)


class SigmaLayer(nn.Module):
    """One G-Mamba block + PFFN.

    M = Mamba(H); M^f = Mamba_f(PF(H)) (eq 2, separate parameters);
    M^ = G(H) * M + PF(G(PF(H)) * M^f) (eq 3; PF is its own inverse, so the outer PF puts the flipped
    branch back on the original positions), or M + PF(M^f) without the DS gate;
    Z = a1 M^ + a2 FE-GRU(H) (eq 8; a1 M^ alone without FE-GRU); Z^ = Z W + b (eq 9);
    out = PFFN(LN(dropout(Z^) + H)) (eq 10; "+ H" only when `residual`).
    x: (B, L, D), mask: (B, L) -> (B, L, D).
    """

    def __init__(
        self,
        hidden_size: int,
        d_state: int,
        d_conv: int,
        expand: int,
        dropout: float,
        remaining: int,
        ds_gate: bool,
        fe_gru: bool,
        gate_kernel_size: int,
        gru_kernel_size: int,
        gru_bias: bool,
        residual: bool,
        scan_impl: str,
    ) -> None:
        super().__init__()
        self.remaining = remaining
        self.residual = residual
        self.mamba = Mamba(hidden_size, d_state=d_state, d_conv=d_conv, expand=expand, scan_impl=scan_impl)
        self.mamba_flipped = Mamba(hidden_size, d_state=d_state, d_conv=d_conv, expand=expand, scan_impl=scan_impl)
        self.gate = DenseSelectiveGate(hidden_size, gate_kernel_size) if ds_gate else None
        self.fe_gru = FeatureExtractGRU(hidden_size, gru_kernel_size, gru_bias) if fe_gru else None
        # Mixing scalars a1, a2 (eq 8). Init 0.9 / 0.1: the authors' code weights its two Mamba
        # branches 0.8 + 0.1 and its GRU branch 0.1.
        self.mamba_weight = nn.Parameter(torch.tensor(0.9))
        self.gru_weight = nn.Parameter(torch.tensor(0.1)) if fe_gru else None
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.ffn = PointWiseFeedForward(hidden_size, 4 * hidden_size, dropout)

    def pf_mamba(self, h: Tensor, mask: Tensor) -> Tensor:
        """Gated bi-directional PF-Mamba output M^ (eqs 2-3). h: (B, L, D) -> (B, L, D)."""
        h_flipped = partial_flip(h, mask, self.remaining)  # (B, L, D)
        m = self.mamba(h, mask)  # (B, L, D)
        m_flipped = self.mamba_flipped(h_flipped, mask)  # (B, L, D) in flipped order
        if self.gate is not None:
            m = self.gate(h, mask) * m
            m_flipped = self.gate(h_flipped, mask) * m_flipped
        return m + partial_flip(m_flipped, mask, self.remaining)  # (B, L, D) positions aligned

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        z = self.mamba_weight * self.pf_mamba(x, mask)  # (B, L, D)
        if self.fe_gru is not None:
            z = z + self.gru_weight * self.fe_gru(x, mask)
        z = self.dropout(self.proj(z))  # (B, L, D)
        return self.ffn(self.norm(z + x if self.residual else z))


class SIGMA(MaskedLayerStack):
    """SIGMA backbone: embedding frame (dropout, LayerNorm) -> `num_layers` SigmaLayers -> output at
    the last real item.

    Padding invariance: the partial flip is index arithmetic on each row's real items, convolutions
    see zeros after the last real item whatever L is, the scans are masked and the GRU is causal.

    Args:
        hidden_size: embedding width D. num_layers: stacked layers (paper: 1; 2 slightly better).
        dropout: 0.3 (Amazon, Yelp) / 0.2 (ML-1M). d_state, d_conv, expand: Mamba shape (32, 4, 2).
        flip_range: r, the number of most recent real items the partial flip keeps in place
        (paper's best on Beauty: 5). partial_flip: False flips every real item (r = 0), the
        "w/o partial flipping" ablation. ds_gate: False sums the two directions ungated ("w/o DS
        gate"). fe_gru: False drops the FE-GRU path ("w/o FE-GRU"); switched-off parts are not built.
        gate_kernel_size, gru_kernel_size: kernels of the DS-gate and FE-GRU convolutions (the paper
        gives none; the authors' FE-GRU uses 3). gru_bias: GRU biases (paper eq 7 has them; the
        authors' code has none). scan_impl: the Mamba blocks' scan implementation.
        init: "recbole" (the authors') or "mamba" (Mamba blocks keep their own init).
        residual: add the layer's input H before the LayerNorm that precedes the PFFN (default). The
        authors' code does so only when num_layers > 1; `residual: false` with one layer reproduces
        it, and learns far slower on Beauty (docs/results.md).
    """

    def __init__(
        self,
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.3,
        d_state: int = 32,
        d_conv: int = 4,
        expand: int = 2,
        flip_range: int = 5,
        partial_flip: bool = True,
        ds_gate: bool = True,
        fe_gru: bool = True,
        gate_kernel_size: int = 3,
        gru_kernel_size: int = 3,
        gru_bias: bool = True,
        scan_impl: str = "auto",
        init: Literal["recbole", "mamba"] = "recbole",
        residual: bool = True,
    ) -> None:
        if flip_range < 0:
            raise ValueError(f"flip_range must be >= 0, got {flip_range}")
        remaining = flip_range if partial_flip else 0
        layers = (
            SigmaLayer(
                hidden_size, d_state, d_conv, expand, dropout, remaining, ds_gate, fe_gru,
                gate_kernel_size, gru_kernel_size, gru_bias, residual, scan_impl,
            )
            for _ in range(num_layers)
        )
        super().__init__(hidden_size, dropout, layers)
        init_backbone_(self, init, keep=(Mamba,))
