"""Selective scan (Mamba-1): one signature, three implementations and a dispatcher.

All share mamba_ssm's `selective_scan_fn` signature and shapes (input-dependent B and C):
    u, delta, z: (B, D, L)   A: (D, N)   B, C: (B, N, L)   D, delta_bias: (D,)
    h_l = exp(delta_l A) * h_{l-1} + delta_l B_l u_l ;  y_l = C_l . h_l + D u_l ;  out = y * silu(z)
returning out (B, D, L) in u's dtype, and with return_last_state also h_L (B, D, N) in float32.
Every implementation computes in float32, also under bf16/fp16 autocast.

* `selective_scan_reference`: the plain sequential recurrence, the ground truth for tests.
* `selective_scan_fast`: exact up to float rounding; a torch.library custom op whose backward
  recomputes the states instead of storing (B, D, L, N). Backend: a small C kernel on CPU tensors
  (`_cscan.py`), a chunked pure-PyTorch loop elsewhere (`_chunked.py`); see `backend.py`.
* `selective_scan_cuda`: mamba_ssm's CUDA kernel, when it imports and the tensors are on CUDA.
* `selective_scan(..., impl="auto")`: cuda if usable, else fast.
The fast and CUDA scans are custom ops with fake implementations: torch.compile traces them
without graph breaks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sigma_lightning.ops._chunked import spread_reads, upto_read
from sigma_lightning.ops._cuda import CudaKernels, cuda_error, cuda_kernels, selective_scan_cuda
from sigma_lightning.ops._fast_op import selective_scan_fwd
from sigma_lightning.ops.backend import (
    FAST_BACKEND_ENV,
    IMPLS,
    fast_backend,
    resolve_impl,
    scan_backend_report,
    set_fast_backend,
    use_fast_backend,
)

__all__ = [
    "FAST_BACKEND_ENV", "IMPLS", "CudaKernels", "cuda_error", "cuda_kernels", "fast_backend", "resolve_impl",
    "scan_backend_report", "selective_scan", "selective_scan_cuda", "selective_scan_fast",
    "selective_scan_reference", "set_fast_backend", "use_fast_backend",
]  # fmt: skip


def _check_shapes(u: Tensor, A: Tensor, B: Tensor, C: Tensor, read: Tensor | None = None) -> None:
    if B.dim() != 3 or C.dim() != (2 if read is not None else 3) or A.is_complex():
        raise NotImplementedError(
            "selective_scan supports real A and input-dependent B, C of shape (B, N, L) (C (B, N) with `read`)"
        )
    assert u.dim() == 3 and A.shape[0] == u.shape[1] and B.shape == (u.shape[0], A.shape[1], u.shape[2])
    assert C.shape == (B.shape if read is None else B.shape[:2])


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


def selective_scan_fast(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    step_mask=None, extents=None, read=None,
):  # fmt: skip
    """The scan with a recomputing backward; exact up to float rounding. See `backend.fast_backend`.
    `step_mask`, `extents` and `read`: see `selective_scan`; here the skipped steps cost nothing, and
    with `read` no (B, D, L) output or C is formed."""
    _check_shapes(u, A, B, C, read)
    dtype_in = u.dtype
    last_dim = lambda t: None if t is None else t.float().transpose(1, 2).contiguous()  # noqa: E731
    backend = fast_backend(u.device)
    with torch.autocast(u.device.type, enabled=False):
        # Channels-last (B, L, D) / (B, L, N) for the kernels; free when the caller's (B, D, L)
        # tensors are transposed views of (B, L, D) memory, as in the Mamba block. The kernels add
        # the bias and take the softplus themselves.
        out, last, _ = selective_scan_fwd(
            last_dim(u),
            last_dim(delta),
            A.float().contiguous(),
            last_dim(B),
            C.float().contiguous() if read is not None else last_dim(C),  # (B, N) at the read steps
            None if D is None else D.float().contiguous(),
            last_dim(z),
            None if delta_bias is None else delta_bias.float().contiguous(),
            bool(delta_softplus),
            None if step_mask is None else step_mask.float().contiguous(),
            None if extents is None else extents.to(torch.int64).contiguous(),
            None if read is None else read.to(torch.int64).contiguous(),
            backend,
        )
    # (B, D, L), a view of (B, L, D) memory; (B, D) with `read`
    out = (out if read is not None else out.transpose(1, 2)).to(dtype_in)
    return (out, last) if return_last_state else out


_IMPL_FNS = {"reference": selective_scan_reference, "fast": selective_scan_fast, "cuda": selective_scan_cuda}


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False, impl="auto",
    step_mask=None, extents=None, read=None,
):  # fmt: skip
    """Dispatch to one implementation; impl in {"auto", "reference", "fast", "cuda"}.

    `step_mask` (B, L), or None: multiplies every step size (after bias and softplus): 0 at a
    padding step leaves the state as it was (exp(0 A) = 1, 0 B u = 0).

    `extents` (B,) int64, or None: row b's steps from extents[b] on take step size 0 and output 0
    (the state passes them unchanged), whatever delta says there. For a row whose steps after its
    last real item are padding with step size 0 and masked output, as in the Mamba block, this
    changes nothing but the cost: the fast scan skips those steps; the others compute them masked.

    `read` (B,) int64, or None: row b's output is wanted at step read[b] alone. C is then (B, N), C
    at that step (no other step's output uses C), the output is (B, D), and each row's steps after
    its read step are skipped, as if extents were min(extents, read + 1) (they cannot reach the
    output; the last state is then the state after the read step). The values are those of the
    full scan at the read steps; the fast scan forms no (B, D, L) output, C or output gradient."""
    impl = resolve_impl(impl, u.device)
    if impl == "fast":
        return selective_scan_fast(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, step_mask, extents, read
        )
    if read is not None:  # the definition: the full scan with C at the read steps, read there
        _check_shapes(u, A, B, C, read)
        rows = torch.arange(u.shape[0], device=u.device)
        C_full = spread_reads(C, read, u.shape[2]).transpose(1, 2)  # (B, N, L)
        out = selective_scan(
            u, delta, A, B, C_full, D, z, delta_bias, delta_softplus, return_last_state, impl, step_mask,
            upto_read(extents, read),
        )  # fmt: skip
        y = (out[0] if return_last_state else out)[rows, :, read]  # (B, D)
        return (y, out[1]) if return_last_state else y
    if step_mask is None and extents is None:
        return _IMPL_FNS[impl](u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    delta = _step_sizes(delta, delta_bias, delta_softplus)  # (B, D, L)
    if step_mask is not None:
        delta = delta * step_mask.unsqueeze(1).to(delta.dtype)
    if extents is None:
        return _IMPL_FNS[impl](u, delta, A, B, C, D, z, None, False, return_last_state)
    computed = torch.arange(u.shape[2], device=u.device) < extents.unsqueeze(1)  # (B, L)
    out = _IMPL_FNS[impl](u, delta * computed.unsqueeze(1), A, B, C, D, z, None, False, return_last_state)
    if return_last_state:
        return out[0] * computed.unsqueeze(1).to(out[0].dtype), out[1]
    return out * computed.unsqueeze(1).to(out.dtype)
