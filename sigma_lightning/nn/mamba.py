"""Mamba-1 block in pure PyTorch, with mamba_ssm's arguments, initialisation and parameter names.

A state_dict moves between this block and `mamba_ssm.Mamba` without renaming. The selective scan
runs through `sigma_lightning.ops.selective_scan` (`MambaConfig.scan_impl`: "auto" picks mamba_ssm's CUDA
kernels where they import and the input is on CUDA, else the fast scan), so the block works on any
device. An optional padding mask makes the output independent of the padding around a sequence.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sigma_lightning.ops.depthwise_conv import depthwise_conv
from sigma_lightning.ops.narrow_linear import narrow_linear
from sigma_lightning.nn.layers import at_positions, mask_extents
from sigma_lightning.nn.mamba_config import MambaConfig
from sigma_lightning.nn.settings import check_integer
from sigma_lightning.ops.selective_scan import cuda_error, cuda_kernels, resolve_impl, selective_scan


class Mamba(nn.Module):
    """Mamba-1 block (Gu & Dao 2023): (B, L, d_model) -> (B, L, d_model), as docs/mamba.md writes it out.

    `Mamba(64, MambaConfig(d_state=32))` and mamba_ssm's keyword form `Mamba(64, d_state=32)` build
    the same block; keywords replace the config's fields of the same name.

    Args:
        d_model: width of the input and the output (>= 1).
        config: the block's settings (MambaConfig(): the papers' d_state 32, d_conv 4, expand 2).
        layer_idx: mamba_ssm's layer index, kept for its callers; unused.
        device: where to create the parameters.
        dtype: dtype of the parameters (A_log and D stay float32).
        **settings: MambaConfig fields by name (d_state, d_conv, expand, dt_rank, dt_min, dt_max,
            dt_init, dt_scale, dt_init_floor, conv_bias, bias, scan_impl), over `config`.
    """

    def __init__(
        self,
        d_model: int,
        config: MambaConfig | None = None,
        *,
        layer_idx: int | None = None,
        device=None,
        dtype=None,
        **settings: Any,
    ) -> None:
        super().__init__()
        if config is not None and not isinstance(config, MambaConfig):
            raise TypeError(f"Mamba(d_model, config): config must be a MambaConfig, got {config!r}; "
                            "pass mamba_ssm's settings by keyword (Mamba(64, d_state=16)).")
        config = replace(config or MambaConfig(), **settings)
        check_integer("d_model", d_model)
        if config.scan_impl == "cuda" and cuda_kernels().selective_scan_fn is None:
            raise RuntimeError(cuda_error(torch.device("cuda")))  # can never run: say so now
        factory = {"device": device, "dtype": dtype}
        self.config, self.layer_idx, self.scan_impl = config, layer_idx, config.scan_impl
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, config.d_state, config.d_conv, config.expand
        self.d_inner = int(config.expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if config.dt_rank == "auto" else config.dt_rank

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=config.bias, **factory)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, config.d_conv, padding=config.d_conv - 1, groups=self.d_inner,
            bias=config.conv_bias, **factory,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * config.d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        self._init_dt(config)  # before out_proj: same RNG order as mamba_ssm
        # S4D-real: A = -(1..N) in every channel, stored as log; A_log and D stay float32.
        A = torch.arange(1, config.d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))  # (d_inner, N)
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))  # (d_inner,)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=config.bias, **factory)
        # Same markers as mamba_ssm, for optimisers / re-initialisers that look for them.
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.dt_proj.bias._no_reinit = True

    @torch.no_grad()
    def _init_dt(self, config: MambaConfig) -> None:
        """mamba_ssm's dt init: weight ~ U(+-std) (or constant std), std = dt_rank^-0.5 * dt_scale;
        bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max], floored at dt_init_floor."""
        std = self.dt_rank**-0.5 * config.dt_scale
        if config.dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        log_span = math.log(config.dt_max) - math.log(config.dt_min)
        log_dt = torch.rand_like(self.dt_proj.bias, dtype=torch.float32) * log_span
        dt = torch.exp(log_dt + math.log(config.dt_min)).clamp(min=config.dt_init_floor)  # (d_inner,)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)

    def forward(self, hidden_states: Tensor, mask: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        """hidden_states (B, L, d_model); mask (B, L) True at real positions, or None.
        Padding positions leave the state untouched and output zeros. With `positions` (B,), only
        row b's output at positions[b] is formed, (B, d_model): the same values, the gate z, the
        read-out C and the output projection run on B rows instead of B x L (for a caller that reads
        no other position)."""
        impl = resolve_impl(self.scan_impl, hidden_states.device)
        x, z = self._in_proj(hidden_states, positions)  # (B, L, d_inner), and z (B, L, d_inner) or (B, d_inner)
        keep = None if mask is None else mask.unsqueeze(-1).to(x.dtype)  # (B, L, 1)
        x = self._conv(x, mask, impl)  # (B, L, d_inner)
        dt, B, C = self._x_proj(x, positions)  # (B, L, dt_rank), (B, L, N), (B, L, N)
        dt = narrow_linear(dt, self.dt_proj.weight)  # (B, L, d_inner): bias, softplus and mask in the scan
        A = -torch.exp(self.A_log.float())  # (d_inner, N)
        y = selective_scan(
            x.transpose(1, 2),  # (B, d_inner, L), channels-last in memory as the C scan wants it
            dt.transpose(1, 2),  # (B, d_inner, L), raw steps
            A,
            B.transpose(1, 2),  # (B, N, L)
            C if positions is not None else C.transpose(1, 2),  # (B, N, L), or (B, N) at positions
            self.D.float(),
            z=None if positions is not None else z.transpose(1, 2),  # (B, d_inner, L)
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            impl=impl,
            step_mask=mask,  # step size 0 at padding: the state passes it unchanged
            extents=None if mask is None else mask_extents(mask),  # no work for the padding after the last item
            read=positions,  # with positions, the output there alone: (B, d_inner)
        )  # (B, d_inner, L), or (B, d_inner)
        if positions is None:
            y = y.transpose(1, 2)  # (B, L, d_inner)
        else:
            y = y * F.silu(z)  # (B, d_inner): the gate the scan applies elsewhere
            keep = None if keep is None else at_positions(keep, positions)  # (B, 1)
        out = self.out_proj(y)  # (B, L, d_model), or (B, d_model)
        return out if keep is None else out * keep

    def _in_proj(self, hidden_states: Tensor, positions: Tensor | None) -> tuple[Tensor, Tensor]:
        """x (B, L, d_inner) and the gate z: (B, L, d_inner), or (B, d_inner) at `positions` only."""
        if positions is None:
            x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (B, L, d_inner) each
            return x, z
        w_x, w_z = self.in_proj.weight.chunk(2, dim=0)  # (d_inner, d_model) each
        b_x, b_z = (None, None) if self.in_proj.bias is None else self.in_proj.bias.chunk(2)
        return F.linear(hidden_states, w_x, b_x), F.linear(at_positions(hidden_states, positions), w_z, b_z)

    def _x_proj(self, x: Tensor, positions: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """dt (B, L, dt_rank), B and C (B, L, N). With `positions`, C (which only reads the state
        out, y_l = C_l . h_l) is projected at those rows only, (B, N): the scan reads no other."""
        if positions is None:
            return torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        w_dt_b, w_c = self.x_proj.weight.split([self.dt_rank + self.d_state, self.d_state])
        dt, B = F.linear(x, w_dt_b).split([self.dt_rank, self.d_state], dim=-1)  # (B, L, dt_rank), (B, L, N)
        return dt, B, F.linear(at_positions(x, positions), w_c)  # (B, N)

    def _conv(self, x: Tensor, mask: Tensor | None, impl: str) -> Tensor:
        """Depthwise causal conv + SiLU: (B, L, d_inner) -> (B, L, d_inner). Padding enters the conv
        as the zeros a sequence start sees."""
        weight = self.conv1d.weight.squeeze(1)  # (d_inner, d_conv)
        conv_fn = cuda_kernels().causal_conv1d_fn if impl == "cuda" else None
        if conv_fn is not None:  # takes (B, d_inner, L) contiguous in L, as mamba_ssm passes it
            x = x if mask is None else x * mask.unsqueeze(-1).to(x.dtype)
            return conv_fn(x.transpose(1, 2).contiguous(), weight, self.conv1d.bias, activation="silu").transpose(1, 2)
        return depthwise_conv(x, weight, self.conv1d.bias, left_pad=self.d_conv - 1, silu=True, keep=mask)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}, d_inner={self.d_inner}, scan_impl={self.scan_impl!r}"
