"""Depthwise convolution over time with the padding mask and SiLU folded in: one signature, the
reference beside the fast path.

For x (B, L, D), weight (D, K), bias (D,) and keep (B, L) (1 at real positions, 0 at padding):

    y = act(conv(x * keep)) * (keep if mask_output else 1)

where conv has `left_pad` zeros before the sequence and K - 1 - left_pad after it: K - 1 is the
Mamba block's causal convolution, (K - 1) // 2 PyTorch's padding="same" (SIGMA's gates and FE-GRU).

* `depthwise_conv_reference`: F.conv1d and plain tensor ops, the ground truth.
* `depthwise_conv`: on float32 CPU tensors with the C backend (`backend.fast_backend`), one pass of
  csrc/depthwise_conv.c forward and one backward, registered as custom ops (torch.compile traces
  them); elsewhere the reference, with the causal case on CPU through `causal_conv1d` (its
  hand-written backward beats oneDNN's at short widths).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sigma_lightning.ops import _cconv
from sigma_lightning.ops.backend import c_kernels_apply
from sigma_lightning.ops.causal_conv1d import causal_conv1d


def depthwise_conv_reference(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, *, left_pad: int, silu: bool = False,
    keep: Tensor | None = None, mask_output: bool = False,
) -> Tensor:  # fmt: skip
    """x (B, L, D), weight (D, K), bias (D,) or None, keep (B, L) or None -> (B, L, D)."""
    x = _masked(x, keep)  # (B, L, D)
    K = weight.shape[1]
    padded = F.pad(x.transpose(1, 2), (left_pad, K - 1 - left_pad))  # (B, D, L + K - 1)
    y = F.conv1d(padded, weight.unsqueeze(1), bias, groups=x.shape[2]).transpose(1, 2)  # (B, L, D)
    return _activated(y, silu, keep if mask_output else None)


def depthwise_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, *, left_pad: int, silu: bool = False,
    keep: Tensor | None = None, mask_output: bool = False,
) -> Tensor:  # fmt: skip
    """The same values as `depthwise_conv_reference`, by the fastest path for these tensors."""
    if not 0 <= left_pad < weight.shape[1]:
        K = weight.shape[1]
        raise ValueError(f"left_pad must be in [0, {K}) for a kernel of {K}, got {left_pad}")
    if c_kernels_apply(x, weight, bias):
        keep = None if keep is None else keep.to(torch.float32).contiguous()
        return depthwise_conv_fwd(x, weight, bias, keep, left_pad, silu, mask_output)
    if left_pad == weight.shape[1] - 1 and x.device.type == "cpu":
        y = causal_conv1d(_masked(x, keep), weight, bias)  # (B, L, D)
        return _activated(y, silu, keep if mask_output else None)
    return depthwise_conv_reference(x, weight, bias, left_pad=left_pad, silu=silu, keep=keep, mask_output=mask_output)


def _masked(x: Tensor, keep: Tensor | None) -> Tensor:
    return x if keep is None else x * keep.unsqueeze(-1).to(x.dtype)


def _activated(y: Tensor, silu: bool, keep: Tensor | None) -> Tensor:
    return _masked(F.silu(y) if silu else y, keep)


@torch.library.custom_op("sigma_lightning::depthwise_conv_fwd", mutates_args=())
def depthwise_conv_fwd(
    x: Tensor, weight: Tensor, bias: Tensor | None, keep: Tensor | None, left_pad: int, silu: bool, mask_output: bool
) -> Tensor:
    """The C kernel: x (B, L, D) float32, weight (D, K), keep (B, L) float32 -> (B, L, D)."""
    return _cconv.forward(_unit_channel_stride(x), *_taps_bias(weight, bias), keep, left_pad, silu, mask_output)


@depthwise_conv_fwd.register_fake
def _(x, weight, bias, keep, left_pad, silu, mask_output):
    return x.new_empty(x.shape)


@torch.library.custom_op("sigma_lightning::depthwise_conv_bwd", mutates_args=())
def depthwise_conv_bwd(
    x: Tensor, weight: Tensor, bias: Tensor | None, keep: Tensor | None, left_pad: int, silu: bool,
    mask_output: bool, grad: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """(dx (B, L, D), dweight (D, K), dbias (D,), empty without a bias)."""
    dx, dtaps, dbias = _cconv.backward(
        _unit_channel_stride(x), *_taps_bias(weight, bias), keep, left_pad, silu, mask_output, grad.contiguous()
    )
    return dx, dtaps.t().contiguous(), x.new_empty(0) if dbias is None else dbias


@depthwise_conv_bwd.register_fake
def _(x, weight, bias, keep, left_pad, silu, mask_output, grad):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), x.new_empty(0 if bias is None else bias.shape)


def _unit_channel_stride(x: Tensor) -> Tensor:
    # The kernel reads rows and steps by their strides (a chunk of a wider projection is read in
    # place), channels one after another.
    return x if x.stride(2) == 1 else x.contiguous()


def _taps_bias(weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
    return weight.t().contiguous(), None if bias is None else bias.contiguous()  # (K, D), (D,)


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, keep, left_pad, silu, mask_output = inputs
    ctx.settings = (left_pad, silu, mask_output)
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight, bias, keep)


def _backward(ctx, grad: Tensor):
    x, weight, bias, keep = ctx.saved_tensors
    dx, dweight, dbias = depthwise_conv_bwd(x, weight, bias, keep, *ctx.settings, grad)
    return dx, dweight, dbias if ctx.has_bias else None, None, None, None, None


depthwise_conv_fwd.register_autograd(_backward, setup_context=_setup_context)
