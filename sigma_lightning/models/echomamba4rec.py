"""EchoMamba4Rec (Wang, He & Zhu 2024): spectral filter, bi-directional Mamba and a gated linear
unit per layer (MODELS.md section 3), with a spectral filter and a reverse scan that ignore padding."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from sigma_lightning.nn.layers import (
    GLU,
    MaskedLayerStack,
    SpectralFilter,
    init_backbone_,
    partial_flip,
)
from sigma_lightning.nn.mamba import Mamba


class BiMamba(nn.Module):
    """f = LN(dropout(Mamba_fwd(x)) + x); b = flip(Mamba_bwd(flip(x))); b = LN(dropout(b) + x);
    out = f + b. The flips reverse each row's real items only (padding stays after them), so the
    reverse scan starts at the last real item, never inside the padding. x: (B, L, D) -> (B, L, D)."""

    def __init__(self, hidden_size: int, d_state: int, d_conv: int, expand: int, dropout: float, scan_impl: str):
        super().__init__()
        self.mamba_forward = Mamba(hidden_size, d_state=d_state, d_conv=d_conv, expand=expand, scan_impl=scan_impl)
        self.mamba_backward = Mamba(hidden_size, d_state=d_state, d_conv=d_conv, expand=expand, scan_impl=scan_impl)
        self.norm_forward = nn.LayerNorm(hidden_size, eps=1e-12)
        self.norm_backward = nn.LayerNorm(hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        f = self.mamba_forward(x, mask)  # (B, L, D)
        b = partial_flip(self.mamba_backward(partial_flip(x, mask), mask), mask)  # (B, L, D) positions aligned
        return self.norm_forward(self.dropout(f) + x) + self.norm_backward(self.dropout(b) + x)


class EchoMambaLayer(nn.Module):
    """x = LN(dropout(filter(x)) + x); x = BiMamba(x); x = LN(dropout(GLU(x)) + x).
    x: (B, L, D), mask: (B, L) -> (B, L, D)."""

    def __init__(
        self, hidden_size: int, d_state: int, d_conv: int, expand: int, dropout: float, filter_len: int, scan_impl: str
    ) -> None:
        super().__init__()
        self.filter = SpectralFilter(hidden_size, filter_len)
        self.filter_norm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.bimamba = BiMamba(hidden_size, d_state, d_conv, expand, dropout, scan_impl)
        self.glu = GLU(hidden_size)
        self.glu_norm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.filter_norm(self.dropout(self.filter(x, mask)) + x)  # (B, L, D)
        x = self.bimamba(x, mask)  # (B, L, D)
        return self.glu_norm(self.dropout(self.glu(x)) + x)


class EchoMamba4Rec(MaskedLayerStack):
    """EchoMamba4Rec backbone: embedding frame (dropout, LayerNorm) -> `num_layers` EchoMambaLayers
    -> output at the last real item.

    Padding invariance: the spectral filter is a fixed-length (`filter_len`) convolution on each
    row's zero-masked real items (see SpectralFilter), the reverse scan runs over each row's real
    items reversed, and the scans are masked; the same history therefore gives the same
    representation whatever length it is padded to (up to filter_len).

    Args:
        hidden_size: embedding width D. num_layers: stacked layers (paper: 1). dropout: 0.3 (Amazon,
        Yelp) / 0.2 (ML-1M). d_state, d_conv, expand: Mamba shape (N = 32, 4, 2).
        filter_len: FFT length of the spectral filter, >= the padded length L; 2 * max_seq_len
        rounded up to a power of two avoids wrap-around (128 for max_seq_len 50, 512 for 200).
        scan_impl: the Mamba blocks' selective-scan implementation. init: "recbole" (the authors')
        or "mamba" (Mamba blocks keep their own init).
    """

    def __init__(
        self,
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.3,
        d_state: int = 32,
        d_conv: int = 4,
        expand: int = 2,
        filter_len: int = 128,
        scan_impl: str = "auto",
        init: Literal["recbole", "mamba"] = "recbole",
    ) -> None:
        layers = (
            EchoMambaLayer(hidden_size, d_state, d_conv, expand, dropout, filter_len, scan_impl)
            for _ in range(num_layers)
        )
        super().__init__(hidden_size, dropout, layers)
        init_backbone_(self, init, keep=(Mamba,))
