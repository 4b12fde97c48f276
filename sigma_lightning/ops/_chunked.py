"""The pure-PyTorch backend of the fast selective scan: a chunked loop with recomputation.

Used on GPUs without mamba_ssm, and on CPUs where the C backend cannot be built. The sequence is cut
into chunks of about sqrt(L) steps; the forward keeps only the state at each chunk start, the
backward recomputes one chunk's states (B, D, K, N) at a time and runs the reverse recurrence over
it. Memory is O(sqrt(L) * B * D * N), never the whole (B, D, L, N).

Same layouts and return values as `_cscan.forward` / `_cscan.backward`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def chunk_len(L: int) -> int:
    return max(1, min(L, math.isqrt(L) + 1))


def n_starts(L: int) -> int:
    """How many chunk-start states `forward` keeps for a sequence of L >= 1 steps."""
    return -(-L // chunk_len(L))


def _states(h0: Tensor, u: Tensor, dt: Tensor, A: Tensor, Bt: Tensor, E: Tensor, H: Tensor) -> None:
    """States of one chunk from its start state h0 (B, D, N), with u, dt (B, K, D), Bt (B, K, N):
    writes decays exp(dt A) into E and states into H, both (B, K, D, N) workspaces. Workspaces are
    reused across chunks: fresh allocations this large cost page faults on every op on CPU."""
    torch.mul(dt.unsqueeze(-1), A, out=E).exp_()  # (B, K, D, N)
    torch.mul((dt * u).unsqueeze(-1), Bt.unsqueeze(2), out=H)  # (B, K, D, N), dt u B
    prev = h0
    for k in range(u.shape[1]):
        prev = H[:, k].addcmul_(E[:, k], prev)  # h_k = e_k * h_{k-1} + dt_k u_k B_k


def _dot_n(H: Tensor, C: Tensor) -> Tensor:
    """sum_n H[b, k, d, n] C[b, k, n] -> (B, K, D), as a batched matrix-vector product."""
    return torch.matmul(H, C.unsqueeze(-1)).squeeze(-1)


def _dot_d(H: Tensor, g: Tensor) -> Tensor:
    """sum_d H[b, k, d, n] g[b, k, d] -> (B, K, N)."""
    return torch.matmul(g.unsqueeze(-2), H).squeeze(-2)


def _computed(ext: Tensor | None, L: int) -> Tensor | None:
    """(B, L, 1) 1.0 at the steps each row computes (before its extent), or None for all."""
    return None if ext is None else (torch.arange(L, device=ext.device) < ext.unsqueeze(1)).unsqueeze(-1).float()


def _raw(dt: Tensor, dt_bias: Tensor | None) -> Tensor:
    """dt + dt_bias (B, L, D): what the softplus, if any, takes."""
    return dt if dt_bias is None else dt + dt_bias


def _gates(keep: Tensor | None, computed: Tensor | None) -> Tensor | float:
    """What multiplies the steps: the step mask (B, L, 1) and the extents' steps, or 1."""
    gate = 1.0 if keep is None else keep.unsqueeze(-1)
    return gate if computed is None else gate * computed


def upto_read(ext: Tensor | None, read: Tensor | None) -> Tensor | None:
    """The extents, cut at each row's read step + 1 (nothing after it reaches the output): what
    `read` implies, for every backend and implementation."""
    if read is None:
        return ext
    return read + 1 if ext is None else torch.minimum(ext, read + 1)


def spread_reads(x: Tensor, read: Tensor, L: int) -> Tensor:
    """(B, W) values at each row's read step -> (B, L, W), zero at every other step."""
    rows = torch.arange(x.shape[0], device=x.device)
    return x.new_zeros(x.shape[0], L, x.shape[1]).index_put_((rows, read), x)


def _pick(x: Tensor, read: Tensor) -> Tensor:
    """(B, L, W) -> (B, W): each row's value at its read step."""
    return x[torch.arange(x.shape[0], device=x.device), read]


def forward(u, dt, A, Bt, Ct, D, z, dt_bias=None, softplus=False, keep=None, ext=None, read=None):
    """u, dt, z: (B, L, D); A: (D, N); Bt, Ct: (B, L, N); D, dt_bias: (D,); keep (B, L); the steps
    are softplus?(dt + dt_bias) * keep; ext (B,) or None: as the C backend's, steps from ext[b] on
    have step size 0 and output 0; read (B,) or None: as the C backend's, Ct (B, N) and the output
    (B, D) at each row's read step (computed here from the whole sequence's).
    Returns out (B, L, D), last state (B, D, N) and the chunk-start states (n_chunks, B, D, N)."""
    if read is not None:
        out, last, starts = forward(u, dt, A, Bt, spread_reads(Ct, read, u.shape[1]), D, z, dt_bias, softplus, keep, ext)
        return _pick(out, read), last, starts
    computed = _computed(ext, u.shape[1])
    if dt_bias is not None or softplus or keep is not None or computed is not None:
        raw = _raw(dt, dt_bias)
        step = (F.softplus(raw) if softplus else raw) * _gates(keep, computed)  # as the C backend forms it
        out, last, starts = _forward(u, step, A, Bt, Ct, D, z)
        return out * (1 if computed is None else computed), last, starts
    return _forward(u, dt, A, Bt, Ct, D, z)


def _forward(u, dt, A, Bt, Ct, D, z):
    """`forward` with final steps dt."""
    b, L, d = u.shape
    K = chunk_len(L)
    E, H = (u.new_empty(b, K, d, A.shape[1]) for _ in range(2))  # (B, K, D, N) workspaces
    h = u.new_zeros(b, d, A.shape[1])  # (B, D, N)
    y = torch.empty_like(u)  # (B, L, D)
    starts = []
    for s in range(0, L, K):
        k = min(K, L - s)
        starts.append(h)
        _states(h, u[:, s : s + k], dt[:, s : s + k], A, Bt[:, s : s + k], E[:, :k], H[:, :k])
        y[:, s : s + k] = _dot_n(H[:, :k], Ct[:, s : s + k])
        h = H[:, k - 1].clone()
    if D is not None:
        y = y + u * D
    out = y * F.silu(z) if z is not None else y
    return out, h, torch.stack(starts)


def backward(u, dt, A, Bt, Ct, D, z, dt_bias, softplus, keep, starts: Tensor, dout: Tensor, dlast: Tensor | None,
             ext=None, read=None):  # fmt: skip
    """Gradients (du, ddt, dA, dBt, dCt, dD, dz, ddt_bias) given the chunk-start states from `forward`."""
    if read is not None:
        L = u.shape[1]
        grads = backward(u, dt, A, Bt, spread_reads(Ct, read, L), D, z, dt_bias, softplus, keep, starts,
                         spread_reads(dout, read, L), dlast, ext)  # fmt: skip
        return (*grads[:4], _pick(grads[4], read), *grads[5:])
    computed = _computed(ext, u.shape[1])
    if dt_bias is not None or softplus or keep is not None or computed is not None:
        raw, gate = _raw(dt, dt_bias), _gates(keep, computed)
        step = (F.softplus(raw) if softplus else raw) * gate
        slope = torch.sigmoid(raw) * gate if softplus else gate  # d step / d raw
        if computed is not None:
            dout = dout * computed
        du, dstep, dA, dB, dC, dD, dz = _backward(u, step, A, Bt, Ct, D, z, starts, dout, dlast)
        ddt = dstep * slope
        return du, ddt, dA, dB, dC, dD, dz, None if dt_bias is None else ddt.sum((0, 1))
    return (*_backward(u, dt, A, Bt, Ct, D, z, starts, dout, dlast), None)


def _backward(u, dt, A, Bt, Ct, D, z, starts: Tensor, dout: Tensor, dlast: Tensor | None):
    """`backward` with final steps dt: (du, ddt, dA, dBt, dCt, dD, dz)."""
    b, L, d = u.shape
    K = chunk_len(L)
    E, H, G = (u.new_empty(b, K, d, A.shape[1]) for _ in range(3))  # (B, K, D, N) workspaces
    du, ddt, dz = torch.empty_like(u), torch.empty_like(u), (torch.empty_like(z) if z is not None else None)
    dB, dC = torch.empty_like(Bt), torch.empty_like(Ct)  # (B, L, N)
    dA = torch.zeros_like(A)  # (D, N)
    dD = torch.zeros_like(D) if D is not None else None
    carry = dlast if dlast is not None else u.new_zeros(b, d, A.shape[1])  # dLoss/dh at chunk end
    for i in reversed(range(len(starts))):
        s = i * K
        k = min(K, L - s)
        sl = slice(s, s + k)
        u_c, dt_c, B_c, C_c = u[:, sl], dt[:, sl], Bt[:, sl], Ct[:, sl]
        E_c, H_c, G_c = E[:, :k], H[:, :k], G[:, :k]
        _states(starts[i], u_c, dt_c, A, B_c, E_c, H_c)
        gy = dout[:, sl]  # (B, K, D)
        if z is not None:
            y = _dot_n(H_c, C_c) + (u_c * D if D is not None else 0)
            z_c = z[:, sl]
            sg = torch.sigmoid(z_c)
            dz[:, sl] = gy * y * sg * (1 + z_c * (1 - sg))
            gy = gy * z_c * sg
        dC[:, sl] = _dot_d(H_c, gy)
        # G_k = dLoss/dh_k: its own output term plus the next step's, carried back through e_{k+1}
        torch.mul(gy.unsqueeze(-1), C_c.unsqueeze(2), out=G_c)  # (B, K, D, N)
        G_c[:, -1] += carry
        for j in range(k - 2, -1, -1):
            G_c[:, j].addcmul_(E_c[:, j + 1], G_c[:, j + 1])
        carry = E_c[:, 0] * G_c[:, 0]
        # Ge = dLoss/d(dt_k A) = G_k e_k h_{k-1}, built in E's memory
        Ge = E_c.mul_(G_c)
        Ge[:, 1:].mul_(H_c[:, :-1])
        Ge[:, 0].mul_(starts[i])
        dA += torch.mul(Ge, dt_c.unsqueeze(-1), out=H_c).sum((0, 1))
        GB = _dot_n(G_c, B_c)  # sum_n G B, (B, K, D)
        ddt[:, sl] = torch.mul(Ge, A, out=H_c).sum(-1) + GB * u_c
        dB[:, sl] = _dot_d(G_c, dt_c * u_c)
        du[:, sl] = GB * dt_c + (gy * D if D is not None else 0)
        if D is not None:
            dD += (gy * u_c).sum((0, 1))
    return du, ddt, dA, dB, dC, dD, dz
