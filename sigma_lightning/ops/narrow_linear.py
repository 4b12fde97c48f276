"""`F.linear(x, weight)` (no bias) for inputs with very few features, such as the Mamba block's
`dt_proj`, whose input is `dt_rank` = ceil(d_model / 16) wide (4 at d_model 64).

The values are F.linear's. Only the weight gradient is formed differently: autograd computes it as
`g^T x`, a (out, rows) x (rows, in) product that CPU BLAS runs very slowly when `in` is this small
and `rows` (= batch x length) is large, while `(x^T g)^T` is the same sum in a shape BLAS handles
well. `benchmarks/bench_narrow_linear.py` (one thread of the 2-core AMD EPYC; figures in
docs/mamba.md): the projection's forward + backward at 227,328 rows (a batch of 2048 sequences of
width 111, MovieLens-100K) 786 ms with F.linear against 132 ms, and a whole SIGMA training step
8-12% shorter. At the package's other Linear shapes the two orders were within 2x of each other
either way (timed by hand, not by the benchmark), so only this one uses it.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _NarrowLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        w = weight.to(x.dtype)  # under autocast x may be bf16, as F.linear's output would be
        ctx.save_for_backward(x, weight)
        return x @ w.t()  # (..., out)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        x, weight = ctx.saved_tensors
        grad = grad.to(x.dtype)
        dx = grad @ weight.to(x.dtype)  # (..., in)
        rows_x = x.reshape(-1, x.shape[-1])  # (rows, in)
        rows_grad = grad.reshape(-1, grad.shape[-1])  # (rows, out)
        dweight = (rows_x.t() @ rows_grad).t()  # (out, in): the fast order, see the module docstring
        return dx, dweight.to(weight.dtype)


def narrow_linear(x: Tensor, weight: Tensor) -> Tensor:
    """x (..., in), weight (out, in) -> (..., out); equals F.linear(x, weight) in values and gradients."""
    return _NarrowLinear.apply(x, weight)
