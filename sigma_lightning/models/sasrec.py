"""SASRec (Kang & McAuley 2018, "Self-Attentive Sequential Recommendation") as in RecBole: learned
positions, post-LayerNorm causal self-attention blocks. A baseline for the Mamba backbones."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sigma_lightning.errors import ConfigError
from sigma_lightning.nn.dropout import Dropout
from sigma_lightning.nn.layers import PointWiseFeedForward, last_positions, recbole_init_
from sigma_lightning.nn.settings import BACKBONE, check_backbone_settings


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with RecBole's post-norm residual: LN(x + drop(W_o attn(x)))."""

    def __init__(self, *, hidden_size: int, num_heads: int, attn_dropout: float, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = attn_dropout
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-12)

    def forward(self, x: Tensor, attn_mask: Tensor, last: Tensor | None = None) -> Tensor:
        """x (B, L, D), attn_mask (B, 1, L, L) -> (B, L, D). With `last` (B,), one position per row:
        only it queries (keys and values stay at every position), (B, D), the same values as the
        full output read there."""
        B, L, D = x.shape
        heads, width = self.num_heads, D // self.num_heads
        if last is None:
            residual = x  # (B, L, D)
            q, k, v = self.qkv(x).view(B, L, 3, heads, width).unbind(2)  # (B, L, h, hs)
        else:
            rows = torch.arange(B, device=x.device)  # (B,)
            residual = x[rows, last]  # (B, D)
            (w_q, w_kv), (b_q, b_kv) = self.qkv.weight.split([D, 2 * D]), self.qkv.bias.split([D, 2 * D])
            q = F.linear(residual, w_q, b_q).view(B, 1, heads, width)  # (B, 1, h, hs)
            k, v = F.linear(x, w_kv, b_kv).view(B, L, 2, heads, width).unbind(2)  # (B, L, h, hs)
            attn_mask = attn_mask[rows, :, last].unsqueeze(2)  # (B, 1, 1, L): that row of the mask
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, h, L or 1, hs)
        p = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)  # (B, h, L or 1, hs)
        y = y.transpose(1, 2).reshape(residual.shape)  # (B, L, D) or (B, D)
        return self.norm(residual + self.dropout(self.out(y)))


class SASRecBlock(nn.Module):
    """Self-attention, then RecBole's feed-forward block. x: (B, L, D) -> (B, L, D). The arguments are
    SASRec's."""

    def __init__(self, *, hidden_size: int, num_heads: int, inner_size: int, attn_dropout: float, dropout: float):
        super().__init__()
        self.attention = CausalSelfAttention(
            hidden_size=hidden_size, num_heads=num_heads, attn_dropout=attn_dropout, dropout=dropout
        )
        # RecBole's FeedForward: no dropout between the two linear layers
        self.ffn = PointWiseFeedForward(hidden_size, inner_size=inner_size, dropout=dropout, inner_dropout=0.0)

    def forward(self, x: Tensor, attn_mask: Tensor, last: Tensor | None = None) -> Tensor:
        """With `last` (B,), the output at those positions only (B, D) (see CausalSelfAttention)."""
        return self.ffn(self.attention(x, attn_mask, last=last))


class SASRec(nn.Module):
    """SASRec, self-attentive sequential recommendation (Kang & McAuley 2018), as RecBole builds it.

    Item embedding + learned position embedding -> LayerNorm -> dropout -> `num_layers` blocks.
    Positions count from each user's oldest kept item, and attention is causal, so right padding
    (docs/architecture.md) never changes a real position's output.

    Args:
        hidden_size: embedding width D (>= 1, a multiple of num_heads; papers: 64).
        num_layers: stacked self-attention blocks (>= 1; RecBole: 2).
        num_heads: attention heads per block (>= 1, dividing hidden_size; RecBole: 2).
        inner_size: width of the feed-forward block (>= 1; RecBole: 256).
        dropout: hidden dropout probability in [0, 1) (RecBole: 0.5; the papers' Amazon setting: 0.3).
        attn_dropout: attention dropout probability in [0, 1) (RecBole: 0.5; papers: as dropout).
        max_seq_len: number of learned positions (>= 1, at least the data's max_seq_len).
    """

    def __init__(
        self,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        inner_size: int = 256,
        dropout: float = 0.5,
        attn_dropout: float = 0.5,
        max_seq_len: int = 200,
    ) -> None:
        check_backbone_settings(
            hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads, inner_size=inner_size,
            dropout=dropout, attn_dropout=attn_dropout, max_seq_len=max_seq_len,
        )  # fmt: skip
        if hidden_size % num_heads:
            raise ConfigError(
                f"{BACKBONE}.num_heads={num_heads} does not divide {BACKBONE}.hidden_size={hidden_size}: "
                "set num_heads to a divisor of hidden_size."
            )
        super().__init__()
        self.hidden_size = hidden_size
        self.position_embedding = nn.Embedding(max_seq_len, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.dropout = Dropout(dropout)
        self.blocks = nn.ModuleList(
            SASRecBlock(
                hidden_size=hidden_size, num_heads=num_heads, inner_size=inner_size, attn_dropout=attn_dropout,
                dropout=dropout,
            )
            for _ in range(num_layers)
        )
        self.apply(recbole_init_)

    def _embed(self, item_emb: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The blocks' input (B, L, D) and their attention mask (B, 1, L, L): causal, real keys only."""
        L = item_emb.shape[1]
        self.check_sequence_length(L)
        positions = torch.arange(L, device=item_emb.device)  # (L,)
        x = self.dropout(self.norm(item_emb + self.position_embedding(positions)))  # (B, L, D)
        causal = torch.ones(L, L, dtype=torch.bool, device=item_emb.device).tril()  # (L, L)
        return x, (causal & mask.unsqueeze(1)).unsqueeze(1)

    def check_sequence_length(self, length: int) -> None:
        """Raise ConfigError unless sequences of `length` items fit the learned positions."""
        positions = self.position_embedding.num_embeddings
        if length > positions:
            raise ConfigError(
                f"sequences of data.max_seq_len={length} items are longer than SASRec's "
                f"{BACKBONE}.max_seq_len={positions} (its learned positions): "
                f"set {BACKBONE}.max_seq_len >= {length} or data.max_seq_len <= {positions}."
            )

    def forward(self, item_emb: Tensor, mask: Tensor) -> Tensor:
        """The output at each row's last real item (B, D): `sequence_output` read there, but the last
        block queries from that position only and runs its feed-forward there. A training step reads
        nothing else, and that block's PFFN was a third of the step at length 50 (docs/efficiency.md,
        "CPU epochs"). Its dropouts draw for B rows instead of B x L, so a seed's run differs from one
        that dropped out every position (same distribution)."""
        x, attn_mask = self._embed(item_emb, mask)  # (B, L, D), (B, 1, L, L)
        last = last_positions(mask)  # (B,)
        for block in self.blocks[:-1]:
            x = block(x, attn_mask)  # (B, L, D)
        return self.blocks[-1](x, attn_mask, last=last)  # (B, D); by keyword: hooks see (x, attn_mask)

    def sequence_output(self, item_emb: Tensor, mask: Tensor) -> Tensor:
        """Every position's output (B, L, D): position t attends to real items 0..t only (causal), so
        it is `forward` of the prefix ending at t (`data.train_samples: sequences` trains them all)."""
        x, attn_mask = self._embed(item_emb, mask)  # (B, L, D), (B, 1, L, L)
        for block in self.blocks:
            x = block(x, attn_mask)
        return x  # (B, L, D)
