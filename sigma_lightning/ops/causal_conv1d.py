"""Depthwise causal convolution over time in the channels-last layout the Mamba block works in:
y_t = bias + sum_k weight[:, k] * x_{t-K+1+k}, with zeros before the sequence start.

`causal_conv1d` computes it with K shifted multiply-adds and a hand-written backward: on CPU,
oneDNN's depthwise convolution backward took 4x longer at the short widths of length-bucketed
batches (benchmarks/bench_mamba.py measures the block). Its ground truth is
`depthwise_conv.depthwise_conv_reference` with `left_pad = K - 1` (F.conv1d). It takes and returns
(B, L, D); weight is (D, K), as mamba_ssm's `causal_conv1d_fn` takes it. `depthwise_conv` calls it
on CPU where the C kernel does not apply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class _CausalConv1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        L, K = x.shape[1], weight.shape[1]
        padded = F.pad(x, (0, 0, K - 1, 0))  # (B, K-1+L, D): the zeros a sequence start sees
        taps = weight.t().to(x.dtype)  # (K, D); under autocast x may be bf16, as conv1d's output would be
        y = padded[:, K - 1 :] * taps[K - 1]  # (B, L, D)
        for k in range(K - 1):
            y.addcmul_(padded[:, k : k + L], taps[k])
        if bias is not None:
            y += bias.to(x.dtype)
        ctx.save_for_backward(padded, weight)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        padded, weight = ctx.saved_tensors
        L, K = grad.shape[1], weight.shape[1]
        grad = grad.to(padded.dtype)
        taps = weight.t().to(padded.dtype)  # (K, D)
        grad_padded = F.pad(grad, (0, 0, 0, K - 1))  # (B, L+K-1, D): no output after the end
        # x_s reaches y_{s+K-1-k} through tap k
        dx = grad_padded[:, :L] * taps[K - 1]  # (B, L, D)
        for k in range(K - 1):
            dx.addcmul_(grad_padded[:, K - 1 - k : K - 1 - k + L], taps[k])
        dweight = torch.stack([(grad * padded[:, k : k + L]).sum((0, 1)) for k in range(K)], dim=1)  # (D, K)
        dbias = grad.sum((0, 1)).to(weight.dtype) if ctx.has_bias else None
        return dx, dweight.to(weight.dtype), dbias


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (B, L, D), weight (D, K), bias (D,) or None -> (B, L, D); same values as the reference."""
    return _CausalConv1d.apply(x, weight, bias)
