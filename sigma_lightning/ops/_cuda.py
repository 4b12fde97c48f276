"""mamba_ssm's CUDA selective scan, imported once and lazily, called through torch.library custom ops.

The ops wrap the compiled extension mamba_ssm's own `selective_scan_fn` calls (`selective_scan_cuda
.fwd` / `.bwd`), with fake implementations and `register_autograd`, so torch.compile traces the
block without a graph break at the scan. Like mamba_ssm, the backward ignores the gradient of the
last state. The extension takes a trailing `cu_seqlens` argument in newer mamba_ssm releases; it is
passed (as None) where mamba_ssm's `selective_scan_fn` has that parameter.
"""

from __future__ import annotations

import functools
import inspect
from typing import NamedTuple

import torch
from torch import Tensor

CHUNK = 2048  # steps per chunk of mamba_ssm's forward: its intermediates x are (B, D, n_chunks, 2N)


class CudaKernels(NamedTuple):
    selective_scan_fn: object | None
    causal_conv1d_fn: object | None
    extension: object | None  # the compiled selective_scan_cuda module
    takes_cu_seqlens: bool
    error: str | None  # why selective_scan_fn is missing


@functools.cache
def cuda_kernels() -> CudaKernels:
    """mamba_ssm's selective scan and causal_conv1d's causal_conv1d_fn, imported once, lazily.
    Either is None where it does not import (no CUDA build, no GPU driver, not installed)."""
    scan = conv = ext = error = None
    takes_cu_seqlens = False
    try:
        from mamba_ssm.ops import selective_scan_interface as interface

        scan, ext = interface.selective_scan_fn, interface.selective_scan_cuda
        takes_cu_seqlens = "cu_seqlens" in inspect.signature(scan).parameters
    except Exception as e:  # ImportError, OSError (missing libcudart), RuntimeError from triton, ...
        scan, ext, error = None, None, f"{type(e).__name__}: {e}"
    try:
        from causal_conv1d import causal_conv1d_fn as conv
    except Exception:
        conv = None
    return CudaKernels(scan, conv, ext, takes_cu_seqlens, error)


@torch.compiler.assume_constant_result
def cuda_available() -> bool:
    """Whether mamba_ssm's kernels imported (a constant to torch.compile: they import once)."""
    return cuda_kernels().extension is not None


def cuda_error(device: torch.device) -> str | None:
    """Why impl='cuda' cannot run on `device` (None if it can)."""
    if device.type != "cuda":
        reason = f"the tensors are on {device.type}, not CUDA"
    elif not cuda_available():
        reason = f"mamba_ssm does not import ({cuda_kernels().error})"
    else:
        return None
    return (
        f"scan_impl='cuda' cannot run: {reason}. Install the kernels on a CUDA machine with "
        "`pip install sigma-lightning[cuda]`, or use scan_impl='auto' (falls back to the fast scan)."
    )


def _call(name: str, *args):
    kernels = cuda_kernels()
    return getattr(kernels.extension, name)(*args, *((None,) if kernels.takes_cu_seqlens else ()))


@torch.library.custom_op("sigma_lightning::selective_scan_cuda_fwd", mutates_args=())
def selective_scan_cuda_fwd(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None, delta_softplus: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """out (B, D, L) gated by z, the ungated output (empty without z), intermediates x (B, D, n_chunks, 2N)."""
    # (B, N, L) -> (B, 1, N, L): one group of input-dependent B and C, as mamba_ssm passes them
    out, x, *rest = _call("fwd", u, delta, A, B.unsqueeze(1), C.unsqueeze(1), D, z, delta_bias, delta_softplus)
    return (rest[0], out, x) if z is not None else (out, u.new_empty(0), x)


@selective_scan_cuda_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    b, d, L = u.shape
    x = u.new_empty(b, d, -(-L // CHUNK), 2 * A.shape[1])  # (B, D, n_chunks, 2N)
    return u.new_empty(u.shape), u.new_empty(u.shape if z is not None else (0,)), x


@torch.library.custom_op("sigma_lightning::selective_scan_cuda_bwd", mutates_args=())
def selective_scan_cuda_bwd(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None, delta_softplus: bool, x: Tensor, ungated: Tensor, dout: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """(du, ddelta, dA, dB, dC, dD, ddelta_bias, dz); dD, ddelta_bias, dz empty where not given."""
    du, ddelta, dA, dB, dC, dD, ddelta_bias, *rest = _call(
        "bwd", u, delta, A, B.unsqueeze(1), C.unsqueeze(1), D, z, delta_bias, dout, x,
        ungated if z is not None else None, None, delta_softplus, False,
    )  # fmt: skip
    given = lambda grad, t: grad if t is not None else u.new_empty(0)  # noqa: E731
    dz = rest[0] if z is not None else None
    return du, ddelta, dA, dB.squeeze(1), dC.squeeze(1), given(dD, D), given(ddelta_bias, delta_bias), given(dz, z)


@selective_scan_cuda_bwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, x, ungated, dout):
    like = lambda t: u.new_empty(0) if t is None else t.new_empty(t.shape)  # noqa: E731
    return like(u), like(delta), like(A), like(B), like(C), like(D), like(delta_bias), like(z)


def _setup_context(ctx, inputs, output) -> None:
    ctx.delta_softplus = inputs[8]
    ctx.save_for_backward(*inputs[:8], output[2], output[1])  # inputs, x, ungated


def _backward(ctx, dout: Tensor | None, _dungated, _dx):
    *inputs, x, ungated = ctx.saved_tensors
    dout = torch.zeros_like(inputs[0]) if dout is None else dout.contiguous()
    du, ddelta, dA, dB, dC, dD, ddelta_bias, dz = selective_scan_cuda_bwd(
        *inputs, ctx.delta_softplus, x, ungated, dout
    )
    D, z, delta_bias = inputs[5:8]
    keep = lambda grad, t: grad if t is not None else None  # noqa: E731
    return du, ddelta, dA, dB, dC, keep(dD, D), keep(dz, z), keep(ddelta_bias, delta_bias), None


selective_scan_cuda_fwd.register_autograd(_backward, setup_context=_setup_context)


def selective_scan_cuda(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """mamba_ssm's CUDA kernel on float32 inputs; raises a clear error where it cannot run."""
    error = cuda_error(u.device)
    if error is not None:
        raise RuntimeError(error)
    dtype_in = u.dtype
    f32 = lambda t: None if t is None else t.float().contiguous()  # noqa: E731
    with torch.autocast(u.device.type, enabled=False):
        out, _, x = selective_scan_cuda_fwd(
            f32(u), f32(delta), f32(A), f32(B), f32(C), f32(D), f32(z), f32(delta_bias), delta_softplus
        )
    out = out.to(dtype_in)
    return (out, x[:, :, -1, 1::2]) if return_last_state else out  # last state (B, D, N)
