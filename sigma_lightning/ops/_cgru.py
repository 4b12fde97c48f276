"""The C backend of the GRU recurrence (csrc/gru.c): the time loop, with torch's matrix products
between the kernel's element-wise steps. Built into the kernels' library (`_cscan.load()`); each
step's rows are split over the same thread pool as the scan. Float32, batch first.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from sigma_lightning.ops import _cscan

# Rough work per row and step for the thread split: three exps and a few dozen flops per unit.
_PER_UNIT = 40


class _GruArgs(ctypes.Structure):
    """Mirror of `gru_args` in csrc/gru.c."""

    _fields_ = [(name, ctypes.c_void_p) for name in "gi gh bi bh hp h ws carry dout dgi dgh dbias".split()] + [
        (name, ctypes.c_int64) for name in "H sgi sdout".split()
    ]


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _step(t: Tensor, step: int) -> int:
    """Address of step `step` of a contiguous float32 (L, B, ...) tensor."""
    return t.data_ptr() + 4 * step * t.stride(0)


def forward(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None) -> tuple[Tensor, Tensor]:
    """x (L, B, I) contiguous, time major; w_ih (3H, I), w_hh (3H, H), biases (3H,) or both None.
    Returns every step's state from a zero start (L, B, H), and the workspace the backward reads
    ((L, B, 4H): r, z, n and the hidden part of n's pre-activation)."""
    lib = _cscan.declared("gru", _GruArgs)
    L, b, i = x.shape
    H = w_hh.shape[1]
    gi = torch.mm(x.view(L * b, i), w_ih.t()).view(L, b, 3 * H)  # every step's input gates at once
    out, ws = x.new_empty(L, b, H), x.new_empty(L, b, 4 * H)
    gh = x.new_zeros(b, 3 * H)  # (B, 3H): h_{t-1} W_hh^T, zero at the first step
    zeros = x.new_zeros(max(b * H, 3 * H))  # h_{-1}, and the biases of a GRU without them
    if b_ih is None:
        b_ih = b_hh = zeros
    args = _GruArgs(gh=_ptr(gh), bi=_ptr(b_ih), bh=_ptr(b_hh), H=H, sgi=3 * H)
    for t in range(L):
        if t > 0:
            torch.mm(out[t - 1], w_hh.t(), out=gh)
        args.gi, args.h, args.ws = _step(gi, t), _step(out, t), _step(ws, t)
        args.hp = _step(out, t - 1) if t > 0 else _ptr(zeros)
        _cscan.run_in_ranges(lib.gru_fwd, args, b, H * _PER_UNIT)
    return out, ws


def backward(x: Tensor, w_ih: Tensor, w_hh: Tensor, has_bias: bool, out: Tensor, ws: Tensor, dout: Tensor):
    """Gradients (dx, dw_ih, dw_hh, db_ih, db_hh; the biases' None without biases) from dout
    (L, B, H) contiguous and what `forward` took and returned."""
    lib = _cscan.declared("gru", _GruArgs)
    L, b, i = x.shape
    H = w_hh.shape[1]
    dgi = x.new_empty(L, b, 3 * H)
    dgh = x.new_empty(b, 3 * H)  # (B, 3H): gradient of step t's gh
    carry = x.new_zeros(b, H)  # (B, H): dLoss/dh_t sent back from step t + 1
    h_start = x.new_zeros(b, H)  # h_{-1}
    dw_hh = x.new_zeros(3 * H, H)
    dbias = x.new_zeros(b, 4 * H) if has_bias else None  # (B, 4H): rows' sums for db_ih, db_hh
    args = _GruArgs(carry=_ptr(carry), dgh=_ptr(dgh), dbias=_ptr(dbias), H=H, sgi=3 * H, sdout=H)
    for t in reversed(range(L)):
        args.ws, args.dout, args.dgi = _step(ws, t), _step(dout, t), _step(dgi, t)
        args.hp = _step(out, t - 1) if t > 0 else _ptr(h_start)
        _cscan.run_in_ranges(lib.gru_bwd, args, b, H * _PER_UNIT)
        if t > 0:
            dw_hh.addmm_(dgh.t(), out[t - 1])  # (3H, H): gh_t = h_{t-1} W_hh^T
            carry.addmm_(dgh, w_hh)  # (B, H): dh_{t-1} = dh_t z_t + dgh_t W_hh
    flat = dgi.view(L * b, 3 * H)
    dx = torch.mm(flat, w_ih).view(L, b, i)
    dw_ih = torch.mm(flat.t(), x.view(L * b, i))
    if dbias is None:
        return dx, dw_ih, dw_hh, None, None
    sums = dbias.sum(0)  # (4H,): dgi's r, z, n parts, then dn_pre r
    return dx, dw_ih, dw_hh, sums[: 3 * H], torch.cat([sums[: 2 * H], sums[3 * H :]])
