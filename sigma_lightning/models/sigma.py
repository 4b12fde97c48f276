"""SIGMA (Liu et al. 2024, "SIGMA: Selective Gated Mamba for Sequential Recommendation"): a
partially flipped bi-directional Mamba weighted by a dense selective gate, mixed with a convolution
+ GRU path, then a point-wise feed-forward network (paper eqs 1-10; docs/models.md). Flips,
convolutions and scans ignore padding."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sigma_lightning.nn.dropout import Dropout
from sigma_lightning.nn.layers import (
    MaskedConv1d,
    MaskedLayerStack,
    PointWiseFeedForward,
    at_positions,
    flipped_positions,
    init_backbone_,
    last_positions,
    partial_flip,
)
from sigma_lightning.nn.mamba import Mamba
from sigma_lightning.nn.mamba_config import MambaConfig
from sigma_lightning.ops.gru import GRU
from sigma_lightning.ops.time_major_conv import masked_conv_time_major
from sigma_lightning.nn.settings import check_backbone_settings


class DenseSelectiveGate(nn.Module):
    """SIGMA's DS gate (eqs 4-6): G0 = Conv1d(H W1 + b1); delta = G0 W2 + b2;
    G(H) = SiLU(delta) + sigmoid(delta). The convolution is a MaskedConv1d (kernel size is not given
    by the paper; 3 by default). h: (B, L, D), mask: (B, L) -> (B, L, D)."""

    def __init__(self, hidden_size: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.dense_in = nn.Linear(hidden_size, hidden_size)
        self.conv = MaskedConv1d(hidden_size, kernel_size)
        self.dense_out = nn.Linear(hidden_size, hidden_size)

    def forward(self, h: Tensor, mask: Tensor, positions: Tensor | None = None) -> Tensor:
        """With `positions` (B,), row b's gate at positions[b] only (B, D), from the K positions
        around it (dense_in and the convolution on B x K rows instead of B x L)."""
        if positions is None:
            g0 = self.conv(self.dense_in(h), mask)  # (B, L, D)
        else:
            g0 = self.conv.at_positions(h, mask, positions, pointwise=self.dense_in)  # (B, D)
        delta = self.dense_out(g0)  # (B, L, D), or (B, D)
        return F.silu(delta) + torch.sigmoid(delta)


class FeatureExtractGRU(nn.Module):
    """FE-GRU (eq 7): C = Conv1d(H) (masked, 'same' padding); F = GRU(C), zero at padding.
    The GRU runs left to right, so right padding never reaches a real position. `ops.gru.GRU` is
    nn.GRU with a C time step on CPU; there the convolution writes its output time major, in the
    order the GRU reads it (`ops.time_major_conv`), instead of the conv's and the GRU's own layouts.
    h: (B, L, D), mask: (B, L) -> (B, L, D)."""

    def __init__(self, hidden_size: int, kernel_size: int = 3, bias: bool = True) -> None:
        super().__init__()
        self.conv = MaskedConv1d(hidden_size, kernel_size)
        self.gru = GRU(hidden_size, hidden_size, bias=bias, batch_first=True)

    def forward(self, h: Tensor, mask: Tensor, positions: Tensor | None = None) -> Tensor:
        """With `positions` (B,), row b's output at positions[b] only (B, D)."""
        if not self.gru.runs_c_kernels(h):
            states, _ = self.gru(self.conv(h, mask))  # (B, L, D)
            if positions is not None:
                return at_positions(states, positions) * at_positions(mask, positions).unsqueeze(-1)  # (B, D)
            return states * mask.unsqueeze(-1)
        conv = self.conv.conv
        states, _ = self.gru.time_major(masked_conv_time_major(h, mask, conv.weight, conv.bias))  # (L, B, D)
        if positions is not None:
            rows = torch.arange(h.shape[0], device=h.device)
            return states[positions, rows] * at_positions(mask, positions).unsqueeze(-1)  # (B, D)
        return states.transpose(0, 1) * mask.unsqueeze(-1)  # (B, L, D)


class SigmaLayer(nn.Module):
    """One G-Mamba block + PFFN.

    M = Mamba(H); M^f = Mamba_f(PF(H)) (eq 2, separate parameters);
    M^ = G(H) * M + PF(G(PF(H)) * M^f) (eq 3; PF is its own inverse, so the outer PF puts the flipped
    branch back on the original positions), or M + PF(M^f) without the DS gate;
    Z = a1 M^ + a2 FE-GRU(H) (eq 8; a1 M^ alone without FE-GRU); Z^ = Z W + b (eq 9);
    out = PFFN(LN(dropout(Z^) + H)) (eq 10; "+ H" only when `residual`).
    x: (B, L, D), mask: (B, L) -> (B, L, D). The arguments are SIGMA's (`remaining` is r, 0 for a
    whole flip).
    """

    def __init__(
        self, *, hidden_size: int, mamba: MambaConfig, dropout: float, remaining: int, ds_gate: bool,
        fe_gru: bool, gate_kernel_size: int, gru_kernel_size: int, gru_bias: bool, residual: bool,
    ) -> None:  # fmt: skip
        super().__init__()
        self.remaining = remaining
        self.residual = residual
        self.mamba = Mamba(hidden_size, mamba)
        self.mamba_flipped = Mamba(hidden_size, mamba)
        self.gate = DenseSelectiveGate(hidden_size, gate_kernel_size) if ds_gate else None
        self.fe_gru = FeatureExtractGRU(hidden_size, gru_kernel_size, gru_bias) if fe_gru else None
        # Mixing scalars a1, a2 (eq 8). Init 0.9 / 0.1: the authors' code weights its two Mamba
        # branches 0.8 + 0.1 and its GRU branch 0.1.
        self.mamba_weight = nn.Parameter(torch.tensor(0.9))
        self.gru_weight = nn.Parameter(torch.tensor(0.1)) if fe_gru else None
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.ffn = PointWiseFeedForward(hidden_size, dropout=dropout)

    def _gated(self, mamba: Mamba, h: Tensor, mask: Tensor, positions: Tensor | None = None) -> Tensor:
        m = mamba(h, mask, positions=positions)  # (B, L, D), or (B, D) at `positions`
        return m if self.gate is None else self.gate(h, mask, positions) * m

    def mamba_branch(self, h: Tensor, mask: Tensor, positions: Tensor | None = None) -> Tensor:
        """G(H) * Mamba(H), the forward half of eq 3. h: (B, L, D) -> (B, L, D); with `positions`
        (B,), row b's value at positions[b] only (B, D), as in the two methods below."""
        return self._gated(self.mamba, h, mask, positions)

    def flipped_branch(self, h: Tensor, mask: Tensor, positions: Tensor | None = None) -> Tensor:
        """PF(G(PF(H)) * Mamba_f(PF(H))), the flipped half of eq 3 on the original positions."""
        h_flipped = partial_flip(h, mask, self.remaining)  # (B, L, D)
        if positions is None:
            return partial_flip(self._gated(self.mamba_flipped, h_flipped, mask), mask, self.remaining)
        # The outer PF reads original position t from flipped position flip_index[t].
        return self._gated(self.mamba_flipped, h_flipped, mask, flipped_positions(mask, positions, self.remaining))

    def pf_mamba(self, h: Tensor, mask: Tensor, positions: Tensor | None = None) -> Tensor:
        """Gated bi-directional PF-Mamba output M^ (eqs 2-3). h: (B, L, D) -> (B, L, D)."""
        return self.mamba_branch(h, mask, positions) + self.flipped_branch(h, mask, positions)

    def forward(self, x: Tensor, mask: Tensor, last_only: bool = False) -> Tensor:
        """x (B, L, D) -> (B, L, D); with `last_only`, each row's last real position only (B, D):
        the same values as gather_last of the full output, with everything after the scans, the
        GRU and the convolutions (the Mamba output projections, the gates' second dense layer, W,
        dropout, LN, PFFN) run on B rows instead of B x L (the backbone's last layer needs no more)."""
        last = last_positions(mask) if last_only else None  # (B,)
        z = self.mamba_weight * self.pf_mamba(x, mask, last)  # (B, L, D), or (B, D)
        if self.fe_gru is not None:
            z = z + self.gru_weight * self.fe_gru(x, mask, last)
        if last_only:
            x = at_positions(x, last)  # (B, D)
        z = self.dropout(self.proj(z))  # (B, L, D), or (B, D)
        return self.ffn(self.norm(z + x if self.residual else z))


class SIGMA(MaskedLayerStack):
    """SIGMA, the selective gated Mamba recommender (Liu et al. 2024).

    Embedding frame (dropout, LayerNorm), `num_layers` SigmaLayers, the output at the last real item.

    Padding invariance: the partial flip is index arithmetic on each row's real items, convolutions
    see zeros after the last real item whatever L is, the scans are masked and the GRU is causal.

    Args:
        hidden_size: embedding width D (>= 1; papers: 64).
        num_layers: stacked SigmaLayers (>= 1; paper: 1, with 2 slightly better).
        dropout: dropout probability in [0, 1) (papers: 0.3 on Amazon and Yelp, 0.2 on MovieLens).
        mamba: settings of the two Mamba blocks of every layer (papers: d_state 32, d_conv 4, expand 2).
        flip_range: r >= 0, how many of the most recent real items the partial flip keeps in place
            (the paper's best on Beauty: 5).
        partial_flip: false flips every real item (r = 0): the "w/o partial flipping" ablation.
        ds_gate: false sums the two directions ungated: the "w/o DS gate" ablation (no gate built).
        fe_gru: false drops the FE-GRU path: the "w/o FE-GRU" ablation (no conv or GRU built).
        gate_kernel_size: kernel of the DS gate's convolution (>= 1; the paper gives none).
        gru_kernel_size: kernel of the FE-GRU convolution (>= 1; the authors' code: 3).
        gru_bias: biases in the FE-GRU's GRU (paper eq 7 has them; the authors' code has none).
        init: "recbole" (the authors': N(0, 0.02) everywhere, Mamba's dt init overwritten) or
            "mamba" (the Mamba blocks keep their own initialisation).
        residual: add the layer's input H before the LayerNorm that precedes the PFFN (as in every
            backbone); the authors' code does so only when num_layers > 1, so `residual: false`
            with one layer is their model (it learns far slower on Beauty: docs/models.md).
    """

    def __init__(
        self,
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.3,
        mamba: MambaConfig = MambaConfig(),
        flip_range: int = 5,
        partial_flip: bool = True,
        ds_gate: bool = True,
        fe_gru: bool = True,
        gate_kernel_size: int = 3,
        gru_kernel_size: int = 3,
        gru_bias: bool = True,
        init: Literal["recbole", "mamba"] = "recbole",
        residual: bool = True,
    ) -> None:
        check_backbone_settings(
            hidden_size=hidden_size, num_layers=num_layers, dropout=dropout, flip_range=flip_range,
            gate_kernel_size=gate_kernel_size, gru_kernel_size=gru_kernel_size,
        )  # fmt: skip
        layers = (
            SigmaLayer(
                hidden_size=hidden_size, mamba=mamba, dropout=dropout, remaining=flip_range if partial_flip else 0,
                ds_gate=ds_gate, fe_gru=fe_gru, gate_kernel_size=gate_kernel_size,
                gru_kernel_size=gru_kernel_size, gru_bias=gru_bias, residual=residual,
            )  # fmt: skip
            for _ in range(num_layers)
        )
        super().__init__(hidden_size=hidden_size, dropout=dropout, layers=layers)
        init_backbone_(self, init, keep=(Mamba,))
