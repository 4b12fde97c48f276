"""mamba_ssm's and causal-conv1d's pure-PyTorch reference functions, copied verbatim, so that the
`cuda` path's plumbing is tested against the kernels' own references in CI, where neither package
can be installed or imported (docs/precision.md, "The fused kernels' plumbing", says why).

* `selective_scan_ref`: mamba_ssm 2.3.2.post1 (sdist sha256 104cc47e9101e5401a675fa2b784f2952b9b037f3b1dd83b5ac544394e95d028),
  mamba_ssm/ops/selective_scan_interface.py lines 115-181. Copyright (c) 2023, Tri Dao, Albert Gu;
  Apache License 2.0 (https://github.com/state-spaces/mamba/blob/main/LICENSE).
* `causal_conv1d_ref`: causal-conv1d 1.7.0 (sdist sha256 3202758494eaa7b597ce1c282dfa188889506bfcb92cad3c407d26736bfcd32b),
  causal_conv1d/causal_conv1d_interface.py lines 129-190. Copyright (c) 2024, Tri Dao; BSD 3-Clause
  License (https://github.com/Dao-AILab/causal-conv1d/blob/main/LICENSE).

Only the imports the two functions need are added above them; the function bodies are unchanged
(tests/ops/test_cuda_plumbing.py checks them against the installed packages where those import).
"""

# ruff: noqa
# fmt: off
import torch
import torch.nn.functional as F
from einops import rearrange, repeat


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """
    u: r(B D L)
    delta: r(B D L)
    A: c(D N) or r(D N)
    B: c(D N) or r(B N L) or r(B N 2L) or r(B G N L) or (B G N L)
    C: c(D N) or r(B N L) or r(B N 2L) or r(B G N L) or (B G N L)
    D: r(D)
    z: r(B D L)
    delta_bias: r(D), fp32

    out: r(B D L)
    last_state (optional): r(B D dstate) or c(B D dstate)
    """
    dtype_in = u.dtype
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    is_variable_B = B.dim() >= 3
    is_variable_C = C.dim() >= 3
    if A.is_complex():
        if is_variable_B:
            B = torch.view_as_complex(rearrange(B.float(), "... (L two) -> ... L two", two=2))
        if is_variable_C:
            C = torch.view_as_complex(rearrange(C.float(), "... (L two) -> ... L two", two=2))
    else:
        B = B.float()
        C = C.float()
    x = A.new_zeros((batch, dim, dstate))
    ys = []
    deltaA = torch.exp(torch.einsum('bdl,dn->bdln', delta, A))
    if not is_variable_B:
        deltaB_u = torch.einsum('bdl,dn,bdl->bdln', delta, B, u)
    else:
        if B.dim() == 3:
            deltaB_u = torch.einsum('bdl,bnl,bdl->bdln', delta, B, u)
        else:
            B = repeat(B, "B G N L -> B (G H) N L", H=dim // B.shape[1])
            deltaB_u = torch.einsum('bdl,bdnl,bdl->bdln', delta, B, u)
    if is_variable_C and C.dim() == 4:
        C = repeat(C, "B G N L -> B (G H) N L", H=dim // C.shape[1])
    last_state = None
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        if not is_variable_C:
            y = torch.einsum('bdn,dn->bd', x, C)
        else:
            if C.dim() == 3:
                y = torch.einsum('bdn,bn->bd', x, C[:, :, i])
            else:
                y = torch.einsum('bdn,bdn->bd', x, C[:, :, :, i])
        if i == u.shape[2] - 1:
            last_state = x
        if y.is_complex():
            y = y.real * 2
        ys.append(y)
    y = torch.stack(ys, dim=2) # (batch dim L)
    out = y if D is None else y + u * rearrange(D, "d -> d 1")
    if z is not None:
        out = out * F.silu(z)
    out = out.to(dtype=dtype_in)
    return out if not return_last_state else (out, last_state)


def causal_conv1d_ref(
    x,
    weight,
    bias=None,
    initial_states=None,
    return_final_states=False,
    final_states_out=None,
    activation=None,
    seq_idx=None,
):
    """
    x: (batch, dim, seqlen)
    weight: (dim, width)
    bias: (dim,)
    seq_idx: (batch, seqlen)
    initial_states: (batch, dim, width - 1)
    final_states_out: (batch, dim, width - 1)

    out: (batch, dim, seqlen)
    """
    if activation not in [None, "silu", "swish"]:
        raise NotImplementedError("activation must be None, silu, or swish")
    dtype_in = x.dtype
    x = x.to(weight.dtype)
    seqlen = x.shape[-1]
    dim, width = weight.shape
    if seq_idx is not None:
        assert seq_idx.shape == (x.shape[0], seqlen)
        assert not return_final_states, "seq_idx does not support return_final_states"
        if initial_states is None:
            x = F.pad(x, (width - 1, 0))
            initial_state_seq_idx = seq_idx.new_full((x.shape[0], width - 1), -1)
        else:
            x = torch.cat([initial_states, x], dim=-1)
            initial_state_seq_idx = seq_idx[:, :1].expand(-1, width - 1)
        seq_idx_with_state = torch.cat([initial_state_seq_idx, seq_idx], dim=-1)
        x_windows = x.unfold(dimension=-1, size=width, step=1)
        seq_idx_windows = seq_idx_with_state.unfold(dimension=-1, size=width, step=1)
        same_sequence = seq_idx_windows == seq_idx.unsqueeze(-1)
        out = torch.sum(
            x_windows * same_sequence.unsqueeze(1) * weight.view(1, dim, 1, width),
            dim=-1,
        )
        if bias is not None:
            out = out + bias.view(1, dim, 1)
        out = out.masked_fill((seq_idx < 0).unsqueeze(1), 0.0)
    elif initial_states is None:
        out = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=dim)
    else:
        x = torch.cat([initial_states, x], dim=-1)
        out = F.conv1d(x, weight.unsqueeze(1), bias, padding=0, groups=dim)
    out = out[..., :seqlen]
    if return_final_states:
        final_states = F.pad(x, (width - 1 - x.shape[-1], 0)).to(
            dtype_in
        )  # (batch, dim, width - 1)
        if final_states_out is not None:
            final_states_out.copy_(final_states)
        else:
            final_states_out = final_states
    out = (out if activation is None else F.silu(out)).to(dtype=dtype_in)
    return out if not return_final_states else (out, final_states_out)
