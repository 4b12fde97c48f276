"""The fast selective scan as torch.library custom ops, so that torch.compile traces through it.

`selective_scan_fwd(u, dt, A, Bt, Ct, D, z, dt_bias, softplus, keep, ext, read, backend)` returns the output,
the last state and the
states the backward restarts from; `selective_scan_bwd` computes every input's gradient from them.
Both have fake implementations (shapes only, for tracing with fake or meta tensors) and are joined
by `register_autograd`, as mamba_ssm's compilable interface joins its CUDA kernels. `backend` ("c"
or "torch", see `backend.fast_backend`) is an argument, not read inside, so that the backward uses
the forward's backend and a traced graph records which one it calls.

Layouts (float32, channels-last): u, dt, z (B, L, D); A (D, N); Bt, Ct (B, L, N); D, dt_bias (D,).
dt is raw: the steps are softplus(dt + dt_bias) * keep with `softplus`, else (dt + dt_bias) * keep,
keep (B, L) being a step mask (0 at padding: the state passes unchanged). `ext`
(B,) int64, or None: row b's steps from ext[b] on are skipped, their output 0 and the state passed
on unchanged (what a step of size 0 with its output masked computes, at no cost: the Mamba block
passes its padding mask's extents, so that padding after each row's last item costs nothing).
`read` (B,) int64, or None: row b's output is read at step read[b] alone; then Ct is (B, N), C at
that step, the output is (B, D), and the steps after it are skipped (ext is taken as at most
read + 1): what the full scan gives there, for a caller that reads nothing else (the last layer).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sigma_lightning.ops import _chunked, _cscan

BACKENDS = {"c": _cscan, "torch": _chunked}


def _contiguous(*tensors: Tensor | None) -> list[Tensor | None]:
    # The kernels index raw memory: compiled graphs may hand over other strides than eager code.
    return [None if t is None else t.contiguous() for t in tensors]


@torch.library.custom_op("sigma_lightning::selective_scan_fwd", mutates_args=())
def selective_scan_fwd(
    u: Tensor, dt: Tensor, A: Tensor, Bt: Tensor, Ct: Tensor, D: Tensor | None, z: Tensor | None,
    dt_bias: Tensor | None, softplus: bool, keep: Tensor | None, ext: Tensor | None, read: Tensor | None,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """out (B, L, D) ((B, D) with `read`), last state (B, D, N), restart states (n_starts(L), B, D, N)."""
    u, dt, A, Bt, Ct, D, z, dt_bias, keep, ext, read = _contiguous(u, dt, A, Bt, Ct, D, z, dt_bias, keep, ext, read)
    return BACKENDS[backend].forward(u, dt, A, Bt, Ct, D, z, dt_bias, softplus, keep, _chunked.upto_read(ext, read), read)


@selective_scan_fwd.register_fake
def _(u, dt, A, Bt, Ct, D, z, dt_bias, softplus, keep, ext, read, backend):
    b, L, d = u.shape
    n = A.shape[1]
    starts = u.new_empty(BACKENDS[backend].n_starts(L), b, d, n)  # (n_starts, B, D, N)
    return u.new_empty(b, d) if read is not None else u.new_empty(b, L, d), u.new_empty(b, d, n), starts


@torch.library.custom_op("sigma_lightning::selective_scan_bwd", mutates_args=())
def selective_scan_bwd(
    u: Tensor, dt: Tensor, A: Tensor, Bt: Tensor, Ct: Tensor, D: Tensor | None, z: Tensor | None,
    dt_bias: Tensor | None, softplus: bool, keep: Tensor | None, starts: Tensor, dout: Tensor,
    dlast: Tensor | None, ext: Tensor | None, read: Tensor | None, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """(du, ddt, dA, dBt, dCt, dD, dz, ddt_bias) in the layouts of the inputs; dD, dz, ddt_bias
    empty where D, z, dt_bias are None."""
    u, dt, A, Bt, Ct, D, z, dt_bias, keep, starts, dout, dlast, ext, read = _contiguous(
        u, dt, A, Bt, Ct, D, z, dt_bias, keep, starts, dout, dlast, ext, read
    )
    grads = BACKENDS[backend].backward(
        u, dt, A, Bt, Ct, D, z, dt_bias, softplus, keep, starts, dout, dlast, _chunked.upto_read(ext, read), read
    )
    return tuple(u.new_empty(0) if g is None else g.contiguous() for g in grads)


@selective_scan_bwd.register_fake
def _(u, dt, A, Bt, Ct, D, z, dt_bias, softplus, keep, starts, dout, dlast, ext, read, backend):
    like = lambda t: u.new_empty(0) if t is None else t.new_empty(t.shape)  # noqa: E731
    return like(u), like(u), like(A), like(Bt), like(Ct), like(D), like(z), like(dt_bias)


def _setup_context(ctx, inputs, output) -> None:
    u, dt, A, Bt, Ct, D, z, dt_bias, softplus, keep, ext, read, backend = inputs
    ctx.backend, ctx.softplus = backend, softplus
    ctx.set_materialize_grads(False)  # an unused last state gets no (B, D, N) zeros as its gradient
    ctx.save_for_backward(u, dt, A, Bt, Ct, D, z, dt_bias, keep, ext, read, output[2])


def _backward(ctx, dout: Tensor | None, dlast: Tensor | None, _dstarts):
    u, dt, A, Bt, Ct, D, z, dt_bias, keep, ext, read, starts = ctx.saved_tensors
    if dout is None and dlast is None:
        return (None,) * 13
    if dout is None:  # only the last state is used
        dout = u.new_zeros(u.shape[0], u.shape[2]) if read is not None else torch.zeros_like(u)
    dout = dout.float()
    dlast = None if dlast is None else dlast.float()
    # Autocast off here too: a backward called inside an autocast region would otherwise run the
    # chunked loop's matmuls in bf16/fp16 (the C kernel ignores autocast).
    with torch.autocast(u.device.type, enabled=False):
        du, ddt, dA, dBt, dCt, dD, dz, ddt_bias = selective_scan_bwd(
            u, dt, A, Bt, Ct, D, z, dt_bias, ctx.softplus, keep, starts, dout, dlast, ext, read, ctx.backend
        )
    given = lambda grad, t: grad if t is not None else None  # noqa: E731
    return du, ddt, dA, dBt, dCt, given(dD, D), given(dz, z), given(ddt_bias, dt_bias), None, None, None, None, None


selective_scan_fwd.register_autograd(_backward, setup_context=_setup_context)
