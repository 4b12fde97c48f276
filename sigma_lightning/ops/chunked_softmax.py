"""Exact softmax cross-entropy over an item table, computed in item chunks with recomputation.

A full softmax over N items builds the (B, N) logits, and autograd keeps them (and their softmax)
for the backward: at N = 10^6 and B = 2048 each copy is 8 GB in float32. `chunked_cross_entropy`
gives the same value and gradients while holding only one (B, chunk_size) block at a time: the
forward walks the table with a running log-sum-exp and keeps (B,) numbers; the backward
recomputes each block's logits and accumulates the gradients of the user representations and of
that block of item embeddings. Memory: O(B x chunk_size) beside the inputs and the table's gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(user: Tensor, items: Tensor) -> torch.dtype:
    """The dtype the logits' matmuls run in: autocast's where it is on for the device (as a plain
    `user @ items.T` would), else the inputs' common dtype. Float64 is never lowered (autocast
    leaves it alone too)."""
    device = user.device.type
    wide = torch.promote_types(user.dtype, items.dtype)
    if torch.is_autocast_enabled(device) and wide != torch.float64:
        return torch.get_autocast_dtype(device)
    return wide


def chunk_logits(user: Tensor, items: Tensor, start: int, stop: int, dtype: torch.dtype) -> Tensor:
    """float32 logits of items start..stop-1, the matmul in `dtype`. user: (B, D) in dtype -> (B, C)."""
    out = user @ items[start:stop].to(dtype).T  # (B, C)
    return out if out.dtype == torch.float64 else out.float()


def target_columns(target: Tensor, start: int, width: int) -> tuple[Tensor, Tensor]:
    """Which rows' targets fall in columns start..start+width-1, and their column there (clamped,
    so a gather never leaves the block; use it only where the first is True). Both (B,)."""
    inside = (target >= start) & (target < start + width)  # (B,)
    return inside, (target - start).clamp(0, width - 1)


class ChunkedCrossEntropy(torch.autograd.Function):
    """mean_b [logsumexp_j(u_b . e_j) - u_b . e_{y_b}] with forward and backward in item chunks."""

    @staticmethod
    def forward(ctx, user: Tensor, items: Tensor, target: Tensor, chunk_size: int, dtype: torch.dtype) -> Tensor:
        u = user.to(dtype)  # (B, D)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        lse = torch.full((u.size(0),), float("-inf"), dtype=acc, device=u.device)  # (B,)
        # NaN until a block holds the target: an id outside 0..N-1 gives a NaN loss, never a wrong number.
        picked = torch.full_like(lse, float("nan"))  # (B,)
        for start in range(0, items.size(0), chunk_size):
            logits = chunk_logits(u, items, start, start + chunk_size, dtype)  # (B, C)
            lse = torch.logaddexp(lse, logits.logsumexp(dim=1))
            inside, column = target_columns(target, start, logits.size(1))
            picked = torch.where(inside, logits.gather(1, column.unsqueeze(1)).squeeze(1), picked)
        ctx.save_for_backward(user, items, target, lse)
        ctx.chunk_size, ctx.dtype = chunk_size, dtype
        return (lse - picked).mean()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        user, items, target, lse = ctx.saved_tensors
        u = user.to(ctx.dtype)  # (B, D)
        scale = grad.to(lse.dtype) / u.size(0)  # d mean / d row loss
        grad_user = torch.zeros(u.shape, dtype=lse.dtype, device=u.device)  # (B, D)
        grad_items = torch.zeros(items.shape, dtype=lse.dtype, device=u.device) if ctx.needs_input_grad[1] else None
        for start in range(0, items.size(0), ctx.chunk_size):
            stop = start + ctx.chunk_size
            logits = chunk_logits(u, items, start, stop, ctx.dtype)  # (B, C)
            probs = (logits - lse.unsqueeze(1)).exp_()  # (B, C) softmax of the block's columns
            inside, column = target_columns(target, start, logits.size(1))
            probs.scatter_add_(1, column.unsqueeze(1), -inside.to(probs.dtype).unsqueeze(1))  # softmax - onehot
            step = (probs * scale).to(ctx.dtype)  # (B, C) d loss / d logits, as the full path casts it
            if ctx.needs_input_grad[0]:
                grad_user += step @ items[start:stop].to(ctx.dtype)  # (B, D)
            if grad_items is not None:
                grad_items[start:stop] = step.T @ u  # (C, D)
        grad_user = grad_user.to(user.dtype) if ctx.needs_input_grad[0] else None
        grad_items = grad_items.to(items.dtype) if grad_items is not None else None
        return grad_user, grad_items, None, None, None


def chunked_cross_entropy(user: Tensor, items: Tensor, target: Tensor, chunk_size: int) -> Tensor:
    """Mean softmax cross-entropy of `user @ items.T` against `target`, never holding (B, N) logits.

    user: (B, D) representations; items: (N, D) the candidates' embeddings; target: (B,) long column
    indices in 0..N-1; chunk_size: items per block (a last, shorter block is fine). Equal to
    `F.cross_entropy((user @ items.T).float(), target)` in value and in the gradients of `user` and
    `items`, under autocast too (the matmuls then run in autocast's dtype, the sums in float32).
    """
    return ChunkedCrossEntropy.apply(user, items, target, int(chunk_size), compute_dtype(user, items))
