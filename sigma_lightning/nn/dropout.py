"""Dropout whose CPU mask takes one float32 draw per element, where torch's takes a double.

On CPU, torch's dropout draws its mask with `bernoulli_(1 - p)`, which takes one double-precision
uniform (two 32-bit draws of the generator) per element, one element at a time (docs/efficiency.md
measures what that costs a training step). Here a float32 CPU tensor in training gets its mask as
`torch.rand_like(x) >= p` instead: one float32 uniform per element (24 random bits, so p is honoured
to 2^-24), the same distribution (each element kept with probability 1 - p, independently, kept
values scaled by 1 / (1 - p)) from the same seeded generator. Everything else (eval mode, p of 0 or
1, other dtypes, other devices, where CUDA's fused dropout is fast) is torch's own dropout.

A seed draws other masks than torch's dropout would: runs repeat exactly with this code, not with
code that used nn.Dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def dropout(x: Tensor, p: float, training: bool = True, inplace: bool = False) -> Tensor:
    """F.dropout(x, p, training, inplace), with the mask drawn as `rand >= p` for float32 CPU
    tensors (see the module's docstring). x: any shape -> the same shape."""
    if not training or not 0.0 < p < 1.0 or x.device.type != "cpu" or x.dtype != torch.float32:
        return F.dropout(x, p, training, inplace)
    mask = torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))  # kept: 1 / (1 - p), dropped: 0
    return x.mul_(mask) if inplace else x * mask


class Dropout(nn.Dropout):
    """nn.Dropout (the same arguments; no parameters or buffers, so state dicts do not change), with
    `dropout` above as its forward."""

    def forward(self, input: Tensor) -> Tensor:
        return dropout(input, self.p, self.training, self.inplace)
