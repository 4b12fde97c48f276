"""Selective scan (Mamba-1): one signature, three implementations and a dispatcher.

All share mamba_ssm's `selective_scan_fn` signature and shapes (input-dependent B and C):
    u, delta, z: (B, D, L)   A: (D, N)   B, C: (B, N, L)   D, delta_bias: (D,)
    h_l = exp(delta_l A) * h_{l-1} + delta_l B_l u_l ;  y_l = C_l . h_l + D u_l ;  out = y * silu(z)
returning out (B, D, L) in u's dtype, and with return_last_state also h_L (B, D, N) in float32.
Every implementation computes in float32, also under bf16/fp16 autocast.

* `selective_scan_reference`: the plain sequential recurrence, the ground truth for tests.
* `selective_scan_fast`: exact up to float rounding; a custom autograd.Function whose backward
  recomputes the states instead of storing (B, D, L, N). Backend: a small C kernel on CPU tensors
  (`_cscan.py`), a chunked pure-PyTorch loop elsewhere (`_chunked.py`); see `fast_backend()`.
* `selective_scan_cuda`: mamba_ssm's CUDA kernel, when it imports and the tensors are on CUDA.
* `selective_scan(..., impl="auto")`: cuda if usable, else fast.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sigma_lightning.ops import _chunked, _cscan

IMPLS = ("auto", "reference", "fast", "cuda")
# Set to "torch" to make `fast` skip the C kernel (tests, debugging); read at every call.
FAST_BACKEND_ENV = "SIGMA_LIGHTNING_FAST_SCAN"


class CudaKernels(NamedTuple):
    selective_scan_fn: object | None
    causal_conv1d_fn: object | None
    error: str | None  # why selective_scan_fn is missing


@functools.cache
def cuda_kernels() -> CudaKernels:
    """mamba_ssm's selective_scan_fn and causal_conv1d's causal_conv1d_fn, imported once, lazily.
    Either is None where it does not import (no CUDA build, no GPU driver, not installed)."""
    scan = conv = error = None
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as scan
    except Exception as e:  # ImportError, OSError (missing libcudart), RuntimeError from triton, ...
        error = f"{type(e).__name__}: {e}"
    try:
        from causal_conv1d import causal_conv1d_fn as conv
    except Exception:
        conv = None
    return CudaKernels(scan, conv, error)


def cuda_error(device: torch.device) -> str | None:
    """Why impl='cuda' cannot run on `device` (None if it can)."""
    if device.type != "cuda":
        reason = f"the tensors are on {device.type}, not CUDA"
    elif cuda_kernels().selective_scan_fn is None:
        reason = f"mamba_ssm does not import ({cuda_kernels().error})"
    else:
        return None
    return (
        f"scan_impl='cuda' cannot run: {reason}. Install the kernels on a CUDA machine with "
        "`pip install sigma-lightning[cuda]`, or use scan_impl='auto' (falls back to the fast scan)."
    )


def fast_backend(device: torch.device | str = "cpu") -> str:
    """Which backend `selective_scan_fast` uses for tensors on `device`: "c" (compiled kernel,
    CPU only) or "torch" (chunked pure-PyTorch loop)."""
    if torch.device(device).type == "cpu" and os.environ.get(FAST_BACKEND_ENV, "").lower() != "torch":
        if _cscan.load() is not None:
            return "c"
    return "torch"


def _check_shapes(u: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    if B.dim() != 3 or C.dim() != 3 or A.is_complex():
        raise NotImplementedError("selective_scan supports real A and input-dependent B, C of shape (B, N, L)")
    assert u.dim() == 3 and A.shape[0] == u.shape[1] and B.shape == C.shape == (u.shape[0], A.shape[1], u.shape[2])


def _step_sizes(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float().unsqueeze(-1)
    return F.softplus(delta) if delta_softplus else delta  # (B, D, L)


def selective_scan_reference(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """The sequential recurrence in float32, step by step (ground truth; slow, stores every step)."""
    _check_shapes(u, A, B, C)
    dtype_in = u.dtype
    with torch.autocast(u.device.type, enabled=False):
        u, A, B, C = u.float(), A.float(), B.float(), C.float()
        delta = _step_sizes(delta, delta_bias, delta_softplus)  # (B, D, L)
        h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (B, D, N)
        ys = []
        for l in range(u.shape[2]):
            decay = torch.exp(delta[:, :, l, None] * A)  # (B, D, N)
            h = decay * h + (delta[:, :, l] * u[:, :, l]).unsqueeze(-1) * B[:, None, :, l]  # (B, D, N)
            ys.append((h * C[:, None, :, l]).sum(-1))  # (B, D)
        y = torch.stack(ys, dim=-1)  # (B, D, L)
        if D is not None:
            y = y + u * D.float().unsqueeze(-1)
        if z is not None:
            y = y * F.silu(z.float())
    out = y.to(dtype_in)
    return (out, h) if return_last_state else out


class _FastScanFn(torch.autograd.Function):
    """Float32 scan on prepared, channels-last inputs: u, dt, z (B, L, D), A (D, N), Bt, Ct (B, L, N),
    D (D,). Returns out (B, L, D) and the last state (B, D, N)."""

    @staticmethod
    def forward(ctx, u, dt, A, Bt, Ct, D, z, backend: str):
        ctx.set_materialize_grads(False)
        ctx.backend = _cscan if backend == "c" else _chunked
        out, last, starts = ctx.backend.forward(u, dt, A, Bt, Ct, D, z)
        ctx.save_for_backward(u, dt, A, Bt, Ct, D, z, starts)  # starts: a few states, or None
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        if dout is None and dlast is None:
            return (None,) * 8
        u, dt, A, Bt, Ct, D, z, starts = ctx.saved_tensors
        with torch.autocast(u.device.type, enabled=False):
            dout = torch.zeros_like(u) if dout is None else dout.float().contiguous()
            dlast = None if dlast is None else dlast.float().contiguous()
            du, ddt, dA, dBt, dCt, dD, dz = ctx.backend.backward(u, dt, A, Bt, Ct, D, z, starts, dout, dlast)
        return du, ddt, dA, dBt, dCt, dD, dz, None


def selective_scan_fast(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """The scan with a recomputing backward; exact up to float rounding. See `fast_backend()`."""
    _check_shapes(u, A, B, C)
    dtype_in = u.dtype
    last_dim = lambda t: None if t is None else t.float().transpose(1, 2).contiguous()  # noqa: E731
    with torch.autocast(u.device.type, enabled=False):
        # Channels-last (B, L, D) / (B, L, N) for the kernels; free when the caller's (B, D, L)
        # tensors are transposed views of (B, L, D) memory, as in the Mamba block.
        dt = _step_sizes(delta, delta_bias, delta_softplus)  # (B, D, L)
        out, last = _FastScanFn.apply(
            last_dim(u),
            last_dim(dt),
            A.float().contiguous(),
            last_dim(B),
            last_dim(C),
            None if D is None else D.float().contiguous(),
            last_dim(z),
            fast_backend(u.device),
        )
    out = out.transpose(1, 2).to(dtype_in)  # (B, D, L), a view of (B, L, D) memory
    return (out, last) if return_last_state else out


def selective_scan_cuda(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """mamba_ssm's CUDA kernel on float32 inputs; raises a clear error where it cannot run."""
    error = cuda_error(u.device)
    if error is not None:
        raise RuntimeError(error)
    dtype_in = u.dtype
    f32 = lambda t: None if t is None else t.float()  # noqa: E731
    with torch.autocast("cuda", enabled=False):
        res = cuda_kernels().selective_scan_fn(
            f32(u), f32(delta), A.float(), f32(B), f32(C), f32(D), f32(z), f32(delta_bias),
            delta_softplus, return_last_state,
        )  # fmt: skip
    if return_last_state:
        return res[0].to(dtype_in), res[1]
    return res.to(dtype_in)


def resolve_impl(impl: str, device: torch.device) -> str:
    """The concrete implementation ("reference", "fast" or "cuda") that `impl` means on `device`."""
    if impl not in IMPLS:
        raise ValueError(f"scan_impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "cuda" if cuda_error(device) is None else "fast"
    return impl


_IMPL_FNS = {"reference": selective_scan_reference, "fast": selective_scan_fast, "cuda": selective_scan_cuda}


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False, impl="auto"
):
    """Dispatch to one implementation; impl in {"auto", "reference", "fast", "cuda"}."""
    fn = _IMPL_FNS[resolve_impl(impl, u.device)]
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
