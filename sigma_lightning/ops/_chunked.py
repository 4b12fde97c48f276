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


def _states(h0: Tensor, u: Tensor, dt: Tensor, A: Tensor, Bt: Tensor) -> tuple[Tensor, Tensor]:
    """States of one chunk from its start state h0 (B, D, N); u, dt (B, K, D), Bt (B, K, N).
    Returns states (B, K, D, N) and decays exp(dt A) (B, K, D, N)."""
    E = torch.exp(dt.unsqueeze(-1) * A)  # (B, K, D, N)
    H = (dt * u).unsqueeze(-1) * Bt.unsqueeze(2)  # (B, K, D, N), becomes the states in place
    prev = h0
    for k in range(u.shape[1]):
        prev = H[:, k].addcmul_(E[:, k], prev)  # h_k = e_k * h_{k-1} + dt_k u_k B_k
    return H, E


def forward(u, dt, A, Bt, Ct, D, z):
    """u, dt, z: (B, L, D); A: (D, N); Bt, Ct: (B, L, N); D: (D,).
    Returns out (B, L, D), last state (B, D, N) and the chunk-start states (n_chunks, B, D, N)."""
    b, L, d = u.shape
    K = chunk_len(L)
    h = u.new_zeros(b, d, A.shape[1])  # (B, D, N)
    y = torch.empty_like(u)  # (B, L, D)
    starts = []
    for s in range(0, L, K):
        starts.append(h)
        H, _ = _states(h, u[:, s : s + K], dt[:, s : s + K], A, Bt[:, s : s + K])
        y[:, s : s + K] = torch.einsum("bkdn,bkn->bkd", H, Ct[:, s : s + K])
        h = H[:, -1].clone()
    if D is not None:
        y = y + u * D
    out = y * F.silu(z) if z is not None else y
    return out, h, torch.stack(starts)


def backward(u, dt, A, Bt, Ct, D, z, starts: Tensor, dout: Tensor | None, dlast: Tensor | None):
    """Gradients (du, ddt, dA, dBt, dCt, dD, dz) given the chunk-start states from `forward`."""
    b, L, d = u.shape
    K = chunk_len(L)
    dout = torch.zeros_like(u) if dout is None else dout
    du, ddt, dz = torch.empty_like(u), torch.empty_like(u), (torch.empty_like(z) if z is not None else None)
    dB, dC = torch.empty_like(Bt), torch.empty_like(Ct)  # (B, L, N)
    dA = torch.zeros_like(A)  # (D, N)
    dD = torch.zeros_like(D) if D is not None else None
    carry = dlast if dlast is not None else u.new_zeros(b, d, A.shape[1])  # dLoss/dh at chunk end
    for i in reversed(range(len(starts))):
        sl = slice(i * K, min((i + 1) * K, L))
        u_c, dt_c, B_c, C_c = u[:, sl], dt[:, sl], Bt[:, sl], Ct[:, sl]
        H, E = _states(starts[i], u_c, dt_c, A, B_c)  # (B, K, D, N)
        gy = dout[:, sl]  # (B, K, D)
        if z is not None:
            y = torch.einsum("bkdn,bkn->bkd", H, C_c)
            if D is not None:
                y = y + u_c * D
            z_c = z[:, sl]
            s = torch.sigmoid(z_c)
            dz[:, sl] = gy * y * s * (1 + z_c * (1 - s))
            gy = gy * z_c * s
        dC[:, sl] = torch.einsum("bkdn,bkd->bkn", H, gy)
        # G_k = dLoss/dh_k: its own output term plus the next step's, carried back through e_{k+1}
        G = gy.unsqueeze(-1) * C_c.unsqueeze(2)  # (B, K, D, N)
        G[:, -1] += carry
        for k in range(G.shape[1] - 2, -1, -1):
            G[:, k].addcmul_(E[:, k + 1], G[:, k + 1])
        carry = E[:, 0] * G[:, 0]
        Hp = torch.cat([starts[i].unsqueeze(1), H[:, :-1]], dim=1)  # previous states, (B, K, D, N)
        del H
        Ge = Hp.mul_(E).mul_(G)  # dLoss/d(dt_k A), (B, K, D, N)
        dA += torch.einsum("bkdn,bkd->dn", Ge, dt_c)
        GB = torch.einsum("bkdn,bkn->bkd", G, B_c)  # (B, K, D)
        ddt[:, sl] = torch.einsum("bkdn,dn->bkd", Ge, A) + GB * u_c
        dB[:, sl] = torch.einsum("bkdn,bkd->bkn", G, dt_c * u_c)
        du[:, sl] = GB * dt_c + (gy * D if D is not None else 0)
        if D is not None:
            dD += (gy * u_c).sum((0, 1))
    return du, ddt, dA, dB, dC, dD, dz
