"""A masked Conv1d over positions ('same' padding) whose output is time major, for a recurrence
that reads its input one time step at a time (SIGMA's FE-GRU).

    masked_conv_time_major(h, mask, weight, bias)  # h (B, L, C) -> (L, B, C_out)

equals `MaskedConv1d(h, mask).transpose(0, 1)`: the input zeroed at padding, then

    out[t] = bias + sum_k x[t + k - left] W_k^T,   W_k = weight[:, :, k],  left = (K - 1) // 2

(torch's padding="same": the steps outside 0..L-1 read zeros), and the output zeroed at padding.

In time-major memory the B rows of one time step are one block, so the shift by k - left steps is
an offset of whole blocks: each kernel tap is one matrix product of a contiguous (steps * B, C)
block, added into the output, and so is each tap of the backward. Against nn.Conv1d on the
(B, C, L) layout followed by the GRU's own transpose to time major, the only layout copies are the
input's transpose to time major and its gradient's back (docs/efficiency.md, "The read step's
backward in one pass, and FE-GRU's convolution time major").
"""

from __future__ import annotations

import torch
from torch import Tensor


def _taps(L: int, K: int) -> list[tuple[int, slice, slice]]:
    """(k, output steps, input steps) of each kernel tap that reads inside 0..L-1."""
    left = (K - 1) // 2
    taps = []
    for k in range(K):
        shift = k - left  # output step t reads input step t + shift
        lo, hi = max(0, -shift), min(L, L - shift)
        if lo < hi:
            taps.append((k, slice(lo, hi), slice(lo + shift, hi + shift)))
    return taps


def _rows(x: Tensor, steps: slice) -> Tensor:
    """Time steps `steps` of a contiguous time-major (L, B, C) tensor as one (steps * B, C) matrix,
    a view (the products below add into it in place)."""
    return x[steps].view(-1, x.shape[-1])


class _MaskedConvTimeMajor(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, keep: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        # (L, B, C), zero at padding. Its layout, and the gradient's below, come from functional ops,
        # not `out=`: a compiled graph does not keep an out= tensor's layout, and the products, which
        # add in place into views of fresh contiguous tensors, would write into a copy.
        x = (h.transpose(0, 1) * keep).contiguous()
        L, B = x.shape[:2]
        out = h.new_empty(L, B, weight.shape[0])  # (L, B, C_out)
        if bias is None:
            out.zero_()
        else:
            out.copy_(bias.expand_as(out))
        for k, dst, src in _taps(L, weight.shape[2]):
            _rows(out, dst).addmm_(_rows(x, src), weight[:, :, k].t())
        ctx.save_for_backward(x, keep, weight)
        ctx.has_bias = bias is not None
        return out.mul_(keep)

    @staticmethod
    def backward(ctx, dout: Tensor):
        x, keep, weight = ctx.saved_tensors
        L, B, C = x.shape
        g = (dout * keep).contiguous()  # (L, B, C_out): the output mask's gradient
        dx = x.new_zeros(L, B, C)
        dweight = torch.zeros_like(weight)  # (C_out, C, K)
        for k, dst, src in _taps(L, weight.shape[2]):
            _rows(dx, src).addmm_(_rows(g, dst), weight[:, :, k])
            dweight[:, :, k] = _rows(g, dst).t() @ _rows(x, src)
        dh = (dx * keep).transpose(0, 1).contiguous()  # (B, L, C), as autograd adds it to h's other gradients
        dbias = g.sum(dim=(0, 1)) if ctx.has_bias else None
        return dh, None, dweight, dbias


def masked_conv_time_major(h: Tensor, mask: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """h (B, L, C), mask (B, L) bool, weight (C_out, C, K), bias (C_out,) or None -> (L, B, C_out)
    contiguous: the masked 'same' convolution of MaskedConv1d, time major."""
    keep = mask.t().unsqueeze(-1).to(h.dtype).contiguous()  # (L, B, 1)
    return _MaskedConvTimeMajor.apply(h, keep, weight, bias)
