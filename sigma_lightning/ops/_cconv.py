"""The C backend of the depthwise convolution over time (csrc/depthwise_conv.c).

The kernel is built into the same library as the C selective scan (`_cscan.load()`, build.py) and
runs on the same thread pool, one range of batch rows per call. Float32, channels-last.
"""

from __future__ import annotations

import ctypes

from torch import Tensor

from sigma_lightning.ops import _cscan


class _ConvArgs(ctypes.Structure):
    """Mirror of `conv_args` in csrc/depthwise_conv.c."""

    _fields_ = [(name, ctypes.c_void_p) for name in "x w bias keep y gy gx gw gbias".split()] + [
        (name, ctypes.c_int64) for name in "D L K P sxb sxt silu mask_out".split()
    ]


def _library() -> ctypes.CDLL:
    return _cscan.declared("conv", _ConvArgs)


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _args(x: Tensor, taps: Tensor, bias: Tensor | None, keep: Tensor | None, left_pad: int, silu: bool,
          mask_out: bool, **outputs: Tensor | None) -> _ConvArgs:  # fmt: skip
    b, L, d = x.shape
    return _ConvArgs(
        x=_ptr(x), w=_ptr(taps), bias=_ptr(bias), keep=_ptr(keep), **{k: _ptr(v) for k, v in outputs.items()},
        D=d, L=L, K=taps.shape[0], P=left_pad, sxb=x.stride(0), sxt=x.stride(1), silu=int(silu), mask_out=int(mask_out),
    )  # fmt: skip


def forward(x: Tensor, taps: Tensor, bias: Tensor | None, keep: Tensor | None, left_pad: int, silu: bool,
            mask_out: bool) -> Tensor:  # fmt: skip
    """x (B, L, D) float32 with unit channel stride (any row and step strides); taps (K, D), bias (D,)
    and keep (B, L) contiguous float32 -> y (B, L, D) contiguous (csrc/depthwise_conv.c)."""
    b, L, d = x.shape
    y = x.new_empty(b, L, d)  # (B, L, D)
    lib = _library()
    args = _args(x, taps, bias, keep, left_pad, silu, mask_out, y=y)
    _cscan.run_in_ranges(lib.conv_fwd, args, b, L * d * taps.shape[0])
    return y


def backward(x: Tensor, taps: Tensor, bias: Tensor | None, keep: Tensor | None, left_pad: int, silu: bool,
             mask_out: bool, grad: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:  # fmt: skip
    """(dx (B, L, D), dtaps (K, D), dbias (D,) or None) from grad (B, L, D) contiguous."""
    b, L, d = x.shape
    k = taps.shape[0]
    gx = x.new_empty(b, L, d)  # (B, L, D)
    gw = x.new_empty(b, k, d)  # (B, K, D): each row's part
    gbias = x.new_empty(b, d) if bias is not None else None  # (B, D)
    lib = _library()
    args = _args(x, taps, bias, keep, left_pad, silu, mask_out, gy=grad, gx=gx, gw=gw, gbias=gbias)
    _cscan.run_in_ranges(lib.conv_bwd, args, b, 2 * L * d * k)
    return gx, gw.sum(0), None if gbias is None else gbias.sum(0)

