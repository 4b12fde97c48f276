"""EchoMamba4Rec (Wang, He & Zhu 2024, "EchoMamba4Rec: Harmonizing Bidirectional State Space Models
with Spectral Filtering for Advanced Sequential Recommendation"): spectral filter, bi-directional
Mamba and a gated linear unit per layer (docs/models.md), with a spectral filter and a reverse scan
that ignore padding."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from sigma_lightning.nn.dropout import Dropout
from sigma_lightning.nn.layers import (
    MaskedLayerStack,
    at_positions,
    flipped_positions,
    init_backbone_,
    last_positions,
    partial_flip,
)
from sigma_lightning.nn.mamba import Mamba
from sigma_lightning.nn.mamba_config import MambaConfig
from sigma_lightning.errors import ConfigError
from sigma_lightning.nn.settings import BACKBONE, check_backbone_settings


def linear_fft_length(length: int) -> int:
    """Smallest power of two >= 2 * length - 1: an FFT that long convolves `length` positions with
    every lag between them without wrap-around."""
    return 1 << (2 * length - 2).bit_length()


class SpectralFilter(nn.Module):
    """Learnable frequency-domain filter (FMLP-Rec / EchoMamba4Rec) made independent of padding.

    The authors' filter multiplies rfft(x) over the padded length L by W of shape (L//2+1, D), a
    circular convolution whose taps depend on L. Here W has the fixed shape (filter_len//2+1, D) and
    defines the fixed kernel k = irfft(W, n=filter_len): y_t = sum_{s<n} k[(t - s) mod filter_len] x_s
    over each row's real items (zeroed at padding before and after), so the real outputs do not
    depend on L. With filter_len >= 2L - 1 no lag wraps around (a linear, two-sided convolution).
    It is what zero-padding each row to filter_len, rfft, multiplying by W, irfft and cutting to L
    positions computes, but evaluated with FFTs of the smallest power of two >= 2L - 1 holding only
    the 2L - 1 taps that lags between L positions can use: short (length-bucketed) batches cost
    little. Requires L <= filter_len.
    x: (B, L, D), mask: (B, L) -> (B, L, D). Computed in float32 (FFTs under autocast).
    """

    def __init__(self, hidden_size: int, filter_len: int = 128, init_std: float = 0.02) -> None:
        super().__init__()
        self.filter_len = filter_len
        self.weight = nn.Parameter(torch.randn(filter_len // 2 + 1, hidden_size, 2) * init_std)  # (F, D, re/im)

    def kernel(self) -> Tensor:
        """The filter's taps k[lag mod filter_len]: (filter_len, D), float32."""
        return torch.fft.irfft(torch.view_as_complex(self.weight.float()), n=self.filter_len, dim=0)

    def check_sequence_length(self, length: int) -> None:
        """Raise ConfigError unless sequences of `length` items fit within `filter_len`."""
        if length > self.filter_len:
            raise ConfigError(
                f"sequences of data.max_seq_len={length} items are longer than EchoMamba4Rec's "
                f"{BACKBONE}.filter_len={self.filter_len}: "
                f"set {BACKBONE}.filter_len >= 2 * data.max_seq_len - 1 (a power of two) or lower data.max_seq_len."
            )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        L = x.size(1)
        self.check_sequence_length(L)
        n = linear_fft_length(L)  # no lag between the L positions wraps around
        lags = torch.arange(-(L - 1), L, device=x.device)  # every t - s between two of the L positions
        kernel = self.kernel()  # (F, D)
        taps = kernel.new_zeros(n, kernel.size(1)).index_copy(0, lags % n, kernel[lags % self.filter_len])  # (n, D)
        keep = mask.unsqueeze(-1).float()  # (B, L, 1)
        spectrum = torch.fft.rfft(x.float() * keep, n=n, dim=1) * torch.fft.rfft(taps, dim=0)  # (B, n//2+1, D)
        y = torch.fft.irfft(spectrum, n=n, dim=1)[:, :L]  # (B, L, D)
        return (y * keep).to(x.dtype)


class GLU(nn.Module):
    """Gated linear unit as in EchoMamba4Rec: [v, g] = x W1 + b1; out = (v * sigmoid(g)) W2 + b2.
    x: (B, L, D) -> (B, L, D). Residual and normalisation belong to the caller."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, 2 * hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.fc1(x).chunk(2, dim=-1)  # (B, L, D) each
        return self.fc2(value * torch.sigmoid(gate))


class BiMamba(nn.Module):
    """out = forward_branch(x) + backward_branch(x). The flips of the backward branch reverse each
    row's real items only (padding stays after them), so the reverse scan starts at the last real
    item, never inside the padding. x: (B, L, D), mask: (B, L) -> (B, L, D). With `positions`
    (B,), row b's output at positions[b] alone (B, D), as in the two branches."""

    def __init__(self, *, hidden_size: int, mamba: MambaConfig, dropout: float) -> None:
        super().__init__()
        self.mamba_forward = Mamba(hidden_size, mamba)
        self.mamba_backward = Mamba(hidden_size, mamba)
        self.norm_forward = nn.LayerNorm(hidden_size, eps=1e-12)
        self.norm_backward = nn.LayerNorm(hidden_size, eps=1e-12)
        self.dropout = Dropout(dropout)

    def forward_branch(self, x: Tensor, mask: Tensor, positions: Tensor | None = None) -> Tensor:
        """f = LN(dropout(Mamba_fwd(x)) + x). (B, L, D) -> (B, L, D); with `positions` (B,), row b's
        value at positions[b] alone (B, D)."""
        f = self.mamba_forward(x, mask, positions=positions)  # (B, L, D), or (B, D)
        return self.norm_forward(self.dropout(f) + (x if positions is None else at_positions(x, positions)))

    def backward_branch(self, x: Tensor, mask: Tensor, positions: Tensor | None = None) -> Tensor:
        """b = LN(dropout(flip(Mamba_bwd(flip(x)))) + x), positions aligned with x; with `positions`
        as in forward_branch (the reverse scan read at the flipped place of each position: for the
        last real item, its first step)."""
        x_flipped = partial_flip(x, mask)  # (B, L, D)
        if positions is None:
            b = partial_flip(self.mamba_backward(x_flipped, mask), mask)  # (B, L, D)
            return self.norm_backward(self.dropout(b) + x)
        b = self.mamba_backward(x_flipped, mask, positions=flipped_positions(mask, positions))  # (B, D)
        return self.norm_backward(self.dropout(b) + at_positions(x, positions))

    def forward(self, x: Tensor, mask: Tensor, positions: Tensor | None = None) -> Tensor:
        return self.forward_branch(x, mask, positions) + self.backward_branch(x, mask, positions)


class EchoMambaLayer(nn.Module):
    """x = LN(dropout(filter(x)) + x); x = BiMamba(x); x = LN(dropout(GLU(x)) + x).
    x: (B, L, D), mask: (B, L) -> (B, L, D), or with `last_only` each row's last real position alone
    (B, D): the filter runs everywhere, the BiMamba reads its scans there and the GLU runs on B rows.
    The arguments are EchoMamba4Rec's."""

    def __init__(self, *, hidden_size: int, mamba: MambaConfig, dropout: float, filter_len: int) -> None:
        super().__init__()
        self.filter = SpectralFilter(hidden_size, filter_len)
        self.filter_norm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.bimamba = BiMamba(hidden_size=hidden_size, mamba=mamba, dropout=dropout)
        self.glu = GLU(hidden_size)
        self.glu_norm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor, last_only: bool = False) -> Tensor:
        x = self.filter_norm(self.dropout(self.filter(x, mask)) + x)  # (B, L, D)
        x = self.bimamba(x, mask, positions=last_positions(mask) if last_only else None)  # (B, L, D), or (B, D)
        return self.glu_norm(self.dropout(self.glu(x)) + x)


class EchoMamba4Rec(MaskedLayerStack):
    """EchoMamba4Rec, bi-directional Mamba with a spectral filter (Wang, He & Zhu 2024).

    Embedding frame (dropout, LayerNorm), `num_layers` EchoMambaLayers, the output at the last real
    item.

    Padding invariance: the spectral filter is a fixed-length (`filter_len`) convolution on each
    row's zero-masked real items (see SpectralFilter), the reverse scan runs over each row's real
    items reversed, and the scans are masked; the same history therefore gives the same
    representation whatever length it is padded to (up to filter_len).

    Args:
        hidden_size: embedding width D (>= 1; papers: 64).
        num_layers: stacked EchoMambaLayers (>= 1; paper: 1).
        dropout: dropout probability in [0, 1) (papers: 0.3 on Amazon and Yelp, 0.2 on MovieLens).
        mamba: settings of the forward and backward Mamba blocks of every layer (papers: d_state
            32, d_conv 4, expand 2).
        filter_len: FFT length of the spectral filter, a power of two >= 2 and >= the padded length
            L; >= 2 * max_seq_len - 1 avoids wrap-around (128 for max_seq_len 50, 512 for 200).
        init: "recbole" (the authors': N(0, 0.02) everywhere, Mamba's dt init overwritten) or
            "mamba" (the Mamba blocks keep their own initialisation).
    """

    def __init__(
        self,
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.3,
        mamba: MambaConfig = MambaConfig(),
        filter_len: int = 128,
        init: Literal["recbole", "mamba"] = "recbole",
    ) -> None:
        check_backbone_settings(hidden_size=hidden_size, num_layers=num_layers, dropout=dropout, filter_len=filter_len)
        layers = (
            EchoMambaLayer(hidden_size=hidden_size, mamba=mamba, dropout=dropout, filter_len=filter_len)
            for _ in range(num_layers)
        )
        super().__init__(hidden_size=hidden_size, dropout=dropout, layers=layers)
        init_backbone_(self, init, keep=(Mamba,))

    def check_sequence_length(self, length: int) -> None:
        """Raise ConfigError unless sequences of `length` items fit every layer's spectral filter."""
        for module in self.modules():
            if isinstance(module, SpectralFilter):
                module.check_sequence_length(length)
