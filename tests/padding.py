"""Helpers for the padding tests: left-aligned masks and batches (docs/architecture.md: real items
at positions 0..n-1, padding after them), garbage at padding, perturbed parameters."""

from __future__ import annotations

import torch
from torch import nn


def lengths_mask(lengths: list[int], L: int) -> torch.Tensor:
    """(B, L) bool, True at each row's first `lengths[i]` positions."""
    return torch.arange(L) < torch.tensor(lengths).unsqueeze(1)


def pad(x: torch.Tensor, L: int) -> torch.Tensor:
    """Right-pad (B, L0, ...) with zeros to (B, L, ...)."""
    return torch.cat([x, x.new_zeros(x.size(0), L - x.size(1), *x.shape[2:])], dim=1)


def padded(histories: list[list[int]], length: int) -> torch.Tensor:
    """Item ids (B, length): each history left-aligned, 0 (padding) after it."""
    out = torch.zeros(len(histories), length, dtype=torch.long)
    for row, items in enumerate(histories):
        out[row, : len(items)] = torch.tensor(items)
    return out


def with_garbage_at_padding(x: torch.Tensor, mask: torch.Tensor, seed: int) -> torch.Tensor:
    """x with large random values where mask is False: what a layer must never read."""
    g = torch.Generator().manual_seed(seed)
    noise = 10 * torch.randn(x.shape, generator=g, dtype=x.dtype)
    keep = mask.view(*mask.shape, *([1] * (x.dim() - 2)))
    return torch.where(keep, x, noise)


@torch.no_grad()
def perturb_(module: nn.Module, seed: int, scale: float = 0.3) -> nn.Module:
    """Add N(0, scale) to every parameter. At the RecBole init (weights N(0, 0.02)) the Mamba
    branches are tiny beside the residual paths, so a padding leak inside them moves the output by
    ~1e-7; perturbed, every branch has a say."""
    g = torch.Generator().manual_seed(seed)
    for param in module.parameters():
        param.add_(scale * torch.randn(param.shape, generator=g, dtype=param.dtype))
    return module
