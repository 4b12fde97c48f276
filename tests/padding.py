"""Helpers for the padding tests: left-aligned masks and batches (docs/architecture.md: real items
at positions 0..n-1, padding after them), garbage at padding, perturbed parameters, and the check
that a backbone computes, block by block, the same at real positions whatever the padding."""

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


Branches = dict  # {module type: (module, *its forward args) -> {name: (B, L, ...) output}}


@torch.no_grad()
def probe(backbone: nn.Module, branches: Branches, item_emb: torch.Tensor, mask: torch.Tensor) -> dict:
    """The representation (B, D) and what each block of a type in `branches` computes, keyed
    "<module name>/<branch>", evaluated on the arguments that block received in the forward pass."""
    seen: dict[str, tuple[nn.Module, tuple]] = {}
    hooks = [
        module.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, (mod, args)))
        for name, module in backbone.named_modules()
        if type(module) in branches
    ]
    try:
        out = {"representation": backbone(item_emb, mask)}
    finally:
        for hook in hooks:
            hook.remove()
    for name, (module, args) in seen.items():
        out.update({f"{name}/{key}": value for key, value in branches[type(module)](module, *args).items()})
    return out


def assert_padding_invariant(backbone: nn.Module, branches: Branches, histories: list[list[int]],
                             lengths: list[int], seed: int, num_items: int = 20) -> None:  # fmt: skip
    """Each history alone (no padding at all) against the batch padded to each of `lengths`, with
    garbage in the padding rows of the item embeddings: every probed branch at the real positions
    and the representation must agree."""
    table = torch.randn(num_items, backbone.hidden_size, generator=torch.Generator().manual_seed(seed))
    alone = [probe(backbone, branches, table[ids], ids != 0) for ids in (torch.tensor([h]) for h in histories)]
    for L in lengths:
        ids = padded(histories, L)
        mask = ids != 0
        batch = probe(backbone, branches, with_garbage_at_padding(table[ids], mask, seed + L), mask)
        assert batch.keys() == alone[0].keys()
        for key, value in batch.items():
            for row, items in enumerate(histories):
                n = len(items)
                got, expected = (value[row], alone[row][key][0]) if key == "representation" else (
                    value[row, :n], alone[row][key][0, :n])  # fmt: skip
                # float32 sums in another order (batch size, FFT length) differ by up to ~2e-5 of the
                # tensor's scale (a LayerNorm without residual amplifies it); a flip or filter that
                # reads padding moves a perturbed backbone's branches by 3e-2 to 2e-1 of it.
                scale = max(1.0, expected.abs().max().item())
                torch.testing.assert_close(got, expected, atol=1e-4 * scale, rtol=1e-3,
                                           msg=lambda m, k=key, r=row, L=L: f"{k}, row {r}, L={L}: {m}")  # fmt: skip
