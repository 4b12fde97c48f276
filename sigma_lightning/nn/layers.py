"""Layers shared by the backbones: input normalisation, the point-wise feed-forward block, the
layer stack, masked helpers and the two initialisation schemes. Blocks used by one model live
beside it (sigma_lightning/models/)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from sigma_lightning.nn.dropout import Dropout
from sigma_lightning.nn.settings import BACKBONE, check_choice


class EmbeddingDropoutNorm(nn.Module):
    """Embedding -> dropout -> LayerNorm(eps 1e-12), the input frame of the Mamba backbones as the
    authors' RecBole code builds it. Padding positions are zeroed afterwards so they carry nothing
    forward."""

    def __init__(self, hidden_size: int, dropout: float, eps: float = 1e-12) -> None:
        super().__init__()
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.norm(self.dropout(x))  # (B, L, D)
        # LayerNorm turns an all-zero padding row into its bias; zero it so padding stays neutral.
        return x * mask.unsqueeze(-1)


class PointWiseFeedForward(nn.Module):
    """PFFN(h) = LayerNorm(h + dropout(W2 inner_dropout(act(W1 h)))), inner size 4d by default.
    Mamba4Rec's and SIGMA's code drop out after the activation too (inner_dropout None: = dropout);
    RecBole's SASRec does not (inner_dropout 0)."""

    def __init__(
        self,
        hidden_size: int,
        *,
        inner_size: int | None = None,
        dropout: float = 0.0,
        eps: float = 1e-12,
        inner_dropout: float | None = None,
    ) -> None:
        super().__init__()
        inner_size = inner_size or 4 * hidden_size
        self.fc1 = nn.Linear(hidden_size, inner_size)
        self.fc2 = nn.Linear(inner_size, hidden_size)
        self.act = nn.GELU()
        self.inner_dropout = Dropout(dropout if inner_dropout is None else inner_dropout)
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, h: Tensor) -> Tensor:
        out = self.fc2(self.inner_dropout(self.act(self.fc1(h))))  # (B, L, D)
        return self.norm(h + self.dropout(out))


class MaskedLayerStack(nn.Module):
    """The shape every Mamba backbone shares: embedding frame (dropout, LayerNorm) -> layers, each
    `(x (B, L, D), mask (B, L), last_only=False) -> (B, L, D)` -> output at the last real item (B, D).
    A layer called with `last_only=True` returns its output at each row's last real position alone
    (B, D), the same values as its full output read there. Subclasses build their layers and pass
    them in."""

    def __init__(self, *, hidden_size: int, dropout: float, layers: Iterable[nn.Module]) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.frame = EmbeddingDropoutNorm(hidden_size, dropout)
        self.layers = nn.ModuleList(layers)

    def forward(self, item_emb: Tensor, mask: Tensor) -> Tensor:
        """The output at each row's last real item (B, D): `every_position` read there, but the last
        layer computes that position alone (a training step reads nothing else), so its
        position-wise tail (output projections, feed-forward network at 4x width, dropouts,
        LayerNorms) runs on B rows instead of B x L, and its scans read one step. Its dropouts draw
        B x D numbers instead of B x L x D, so a seed's run differs from one where every position was
        dropped out (the same distribution)."""
        x = self.frame(item_emb, mask)  # (B, L, D)
        *inner, last = self.layers
        for layer in inner:
            x = layer(x, mask)  # (B, L, D)
        return last(x, mask, last_only=True)  # (B, D)

    def every_position(self, item_emb: Tensor, mask: Tensor) -> Tensor:
        """The last layer's output at every position (B, L, D). Not named `sequence_output`, the
        causal backbones' method: here position t may depend on items after t (SIGMA and
        EchoMamba4Rec look backwards); a causal subclass offers it under that name."""
        x = self.frame(item_emb, mask)  # (B, L, D)
        for layer in self.layers:
            x = layer(x, mask)  # (B, L, D)
        return x


def gather_last(hidden: Tensor, mask: Tensor) -> Tensor:
    """Value at each row's last real position. hidden: (B, L, ...), mask: (B, L) -> (B, ...).

    Relies on the left-aligned padding convention (docs/architecture.md): real items occupy 0..n-1.
    """
    return at_positions(hidden, last_positions(mask))


def last_positions(mask: Tensor) -> Tensor:
    """Each row's last real position (B,) (0 for a row without any). mask: (B, L) left-aligned."""
    return mask.sum(dim=1).clamp(min=1) - 1


def mask_extents(mask: Tensor) -> Tensor:
    """Each row's last True position + 1 (0 for a row with none): mask (B, L) -> (B,) int64. What
    follows is padding, which leaves the state unchanged and is masked in the output."""
    L = mask.shape[1]
    last_from_end = mask.flip(1).to(torch.uint8).argmax(1)  # (B,): steps from the end to the last True
    return torch.where(mask.any(1), L - last_from_end, 0).to(torch.int64)


def at_positions(hidden: Tensor, positions: Tensor) -> Tensor:
    """Row b's value at position positions[b]. hidden: (B, L, ...), positions: (B,) -> (B, ...)."""
    return hidden[torch.arange(hidden.size(0), device=hidden.device), positions]


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


# ---- masked helpers for layers that look backwards in time ----------------------------------------
def flip_index(mask: Tensor, remaining: int = 0) -> Tensor:
    """Source positions of the partial flip. mask: (B, L) left-aligned real prefix -> (B, L) long.

    For a row with n real items, positions 0..k-1 with k = max(n - remaining, 0) are reversed
    (position t reads k-1-t); the last `remaining` real items and all padding stay in place.
    """
    lengths = mask.sum(dim=1, keepdim=True)  # (B, 1)
    flipped = (lengths - remaining).clamp(min=0)  # (B, 1)
    t = torch.arange(mask.size(1), device=mask.device)  # (L,)
    return torch.where(t < flipped, flipped - 1 - t, t)  # (B, L)


def flipped_positions(mask: Tensor, positions: Tensor, remaining: int = 0) -> Tensor:
    """Where the partial flip puts row b's position positions[b]: (B,) long. The flip is its own
    inverse, so this is also the position it reads there (a flipped branch's value at original
    position t is its output at flipped_positions(t))."""
    return flip_index(mask, remaining).gather(1, positions.unsqueeze(1)).squeeze(1)  # (B,)


def partial_flip(x: Tensor, mask: Tensor, remaining: int = 0) -> Tensor:
    """SIGMA's partial flip on each row's real items: [h_1..h_n] -> [h_{n-r}..h_1, h_{n-r+1}..h_n].

    x: (B, L, ...) any trailing shape, mask: (B, L) bool, remaining: r >= 0 (r = 0 reverses all real
    items, r >= n leaves the row as it is). Padding stays where it is, so the output is left-aligned
    again; the map is its own inverse, so applying it twice restores x.
    """
    B, L = mask.shape
    rows = flip_index(mask, remaining) + L * torch.arange(B, device=mask.device).unsqueeze(1)  # (B, L)
    return _SelfInverseRows.apply(x, rows.view(-1))


class _SelfInverseRows(torch.autograd.Function):
    """x (B, L, ...) read as B L rows of its trailing size, in the order `rows` (B L,) gives: one
    index per row (index_select), where gather would read an index per element. The partial flip is
    its own inverse, so the gradient is the same selection of the output's gradient (gather's own
    backward would zero a tensor and scatter-add into it)."""

    @staticmethod
    def forward(ctx, x: Tensor, rows: Tensor) -> Tensor:
        ctx.save_for_backward(rows)
        return x.reshape(rows.numel(), -1).index_select(0, rows).view(x.shape)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (rows,) = ctx.saved_tensors
        return grad.reshape(rows.numel(), -1).index_select(0, rows).view(grad.shape), None


class MaskedConv1d(nn.Module):
    """Conv1d over positions ('same' padding) that cannot see the padding: the input is zeroed at
    padding before the convolution and the output zeroed there after it. Positions after a row's last
    real item are then zeros whatever L is, so real outputs do not depend on how the row is padded.
    x: (B, L, C), mask: (B, L) -> (B, L, C)."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding="same")

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        keep = mask.unsqueeze(-1).to(x.dtype)  # (B, L, 1)
        y = self.conv((x * keep).transpose(1, 2)).transpose(1, 2)  # (B, L, C)
        return y * keep

    def at_positions(self, x: Tensor, mask: Tensor, positions: Tensor, pointwise: nn.Module | None = None) -> Tensor:
        """forward(pointwise(x), mask) read at row b's positions[b] only (B, C), computed from the K
        inputs that position reads: `pointwise`, a position-wise module (a Linear), runs on B x K
        rows instead of B x L, and the convolution is one (B, K C) x (K C, C) product."""
        K = self.conv.kernel_size[0]
        reads = positions.unsqueeze(1) - (K - 1) // 2 + torch.arange(K, device=x.device)  # (B, K), as "same" pads
        inside = (reads >= 0) & (reads < x.size(1))  # (B, K)
        reads = reads.clamp(0, x.size(1) - 1)
        rows = torch.arange(x.size(0), device=x.device).unsqueeze(1)  # (B, 1)
        window = x[rows, reads]  # (B, K, C)
        if pointwise is not None:
            window = pointwise(window)  # (B, K, C)
        keep = (mask[rows, reads] & inside).unsqueeze(-1).to(window.dtype)  # (B, K, 1)
        y = torch.einsum("bki,oik->bo", window * keep, self.conv.weight)  # (B, C)
        if self.conv.bias is not None:
            y = y + self.conv.bias
        return y * at_positions(mask, positions).unsqueeze(-1).to(y.dtype)


# ---- initialisation schemes --------------------------------------------------------------------
INIT_SCHEMES = ("recbole", "mamba")


def init_backbone_(backbone: nn.Module, init: str, keep: tuple[type, ...] = ()) -> None:
    """Initialise a backbone after it is built.

    init="recbole": `recbole_init_` on every module (the authors' code; it also overwrites the dt
    initialisation of Mamba blocks: dt_proj ~ N(0, 0.02), dt bias 0).
    init="mamba": the same on every module except those inside instances of `keep` (the Mamba
    blocks), which keep their own initialisation.
    """
    check_choice(f"{BACKBONE}.init", init, INIT_SCHEMES)
    kept = set()
    if init == "mamba":
        kept = {id(m) for block in backbone.modules() if isinstance(block, keep) for m in block.modules()}
    for module in backbone.modules():
        if id(module) not in kept:
            recbole_init_(module)
