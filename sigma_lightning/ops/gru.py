"""A GRU over time (torch.nn.GRU's equations, batch first, from a zero state): one signature, the
reference beside the fast path.

Per step, with the gates in torch's order (r, z, n):

    r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)     z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
    n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))   h' = (1 - z) * n + z * h

* `gru_layer_reference`: one layer in plain tensor ops, the ground truth beside torch's own nn.GRU
  (tests compare all three).
* `GRU`: nn.GRU with the same parameters (checkpoints are unchanged) and a fast forward. On
  float32 CPU tensors with the C backend (`backend.c_kernels_apply`) each layer's
  input gates are one matrix product and the time loop runs csrc/gru.c's element-wise step between
  torch's products, as custom ops (`sigma_lightning::gru_layer_fwd` / `_bwd`, so torch.compile
  traces through); the backward needs no exp (the forward keeps the gates). Elsewhere (GPU, other
  dtypes, autocast) nn.GRU's own forward runs.

Why: on CPU torch runs a GRU step as a dozen small ops forward and more in autograd's backward,
most of the time of SIGMA's FE-GRU (docs/efficiency.md, "CPU epochs").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sigma_lightning.ops import _cgru
from sigma_lightning.ops.backend import c_kernels_apply


def gru_layer_reference(
    x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None, b_hh: Tensor | None = None
) -> Tensor:  # fmt: skip
    """Every step's state (B, L, H) of one GRU layer over x (B, L, I) from a zero state, in plain
    tensor ops: w_ih (3H, I), w_hh (3H, H), biases (3H,) or None."""
    gi = F.linear(x, w_ih, b_ih)  # (B, L, 3H)
    h = x.new_zeros(x.shape[0], w_hh.shape[1])  # (B, H)
    states = []
    for t in range(x.shape[1]):
        i_r, i_z, i_n = gi[:, t].chunk(3, dim=-1)  # (B, H) each
        h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        h = (1 - z) * n + z * h
        states.append(h)
    return torch.stack(states, dim=1)  # (B, L, H)


class GRU(nn.GRU):
    """torch.nn.GRU (same arguments, parameters and state dict) whose forward runs csrc/gru.c's
    time step where `backend.c_kernels_apply` holds for the input and parameters and the call is
    the plain case: a batched tensor (not packed), no start state, one direction, no projections.
    Anything else is nn.GRU's own forward (cuDNN on GPU)."""

    def forward(self, input: Tensor, hx: Tensor | None = None):  # noqa: A002 (nn.GRU's names)
        if hx is not None or not self.runs_c_kernels(input):
            return super().forward(input, hx)
        states, lasts = self.time_major(input.transpose(0, 1) if self.batch_first else input)
        return (states.transpose(0, 1) if self.batch_first else states), lasts  # (B, L, H), (layers, B, H)

    def runs_c_kernels(self, input: Tensor) -> bool:
        """Whether `forward(input)` (no start state) takes the C path."""
        plain = isinstance(input, Tensor) and input.dim() == 3 and not self.bidirectional and self.proj_size == 0
        return plain and c_kernels_apply(input, *self.parameters())

    def time_major(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The C path on a time-major input x (L, B, I), whatever `batch_first` says, for a caller
        that holds its input in that order (where `runs_c_kernels` holds): every step's state of the
        last layer (L, B, H) and each layer's last state (layers, B, H)."""
        x = x.contiguous()  # (L, B, I): time major, each step's rows one block of memory
        lasts = []
        for layer in range(self.num_layers):
            if layer > 0 and self.training and self.dropout > 0:
                x = F.dropout(x, self.dropout)  # between layers, as nn.GRU does
            weights = [getattr(self, f"weight_{k}_l{layer}") for k in ("ih", "hh")]
            biases = [getattr(self, f"bias_{k}_l{layer}") for k in ("ih", "hh")] if self.bias else [None, None]
            x = gru_layer_fwd(x, *weights, *biases)[0]  # (L, B, H)
            lasts.append(x[-1])
        return x, torch.stack(lasts)


@torch.library.custom_op("sigma_lightning::gru_layer_fwd", mutates_args=())
def gru_layer_fwd(
    x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The C path for one layer, time major: x (L, B, I) -> states (L, B, H) and the workspace its
    backward reads (L, B, 4H)."""
    if (b_ih is None) != (b_hh is None):
        raise ValueError("gru_layer_fwd takes both biases or neither, as nn.GRU has")
    return _cgru.forward(*(None if t is None else t.contiguous() for t in (x, w_ih, w_hh, b_ih, b_hh)))


@gru_layer_fwd.register_fake
def _(x, w_ih, w_hh, b_ih, b_hh):
    L, b, _ = x.shape
    H = w_hh.shape[1]
    return x.new_empty(L, b, H), x.new_empty(L, b, 4 * H)


@torch.library.custom_op("sigma_lightning::gru_layer_bwd", mutates_args=())
def gru_layer_bwd(
    x: Tensor, w_ih: Tensor, w_hh: Tensor, has_bias: bool, out: Tensor, ws: Tensor, dout: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """(dx, dw_ih, dw_hh, db_ih, db_hh); the biases' empty without biases. Time major: dout (L, B, H)."""
    grads = _cgru.backward(*(t.contiguous() for t in (x, w_ih, w_hh)), has_bias, out, ws, dout.contiguous())
    return tuple(x.new_empty(0) if g is None else g for g in grads)


@gru_layer_bwd.register_fake
def _(x, w_ih, w_hh, has_bias, out, ws, dout):
    bias = lambda: x.new_empty(w_hh.shape[0] if has_bias else 0)  # noqa: E731
    return x.new_empty(x.shape), w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape), bias(), bias()


def _setup_context(ctx, inputs, output) -> None:
    x, w_ih, w_hh, b_ih, _ = inputs
    ctx.has_bias = b_ih is not None
    ctx.set_materialize_grads(False)  # the workspace gets no gradient: no zeros of its size
    ctx.save_for_backward(x, w_ih, w_hh, *output)


def _backward(ctx, dout: Tensor | None, _dws):
    if dout is None:
        return None, None, None, None, None
    x, w_ih, w_hh, out, ws = ctx.saved_tensors
    dx, dw_ih, dw_hh, db_ih, db_hh = gru_layer_bwd(x, w_ih, w_hh, ctx.has_bias, out, ws, dout)
    return dx, dw_ih, dw_hh, *((db_ih, db_hh) if ctx.has_bias else (None, None))


gru_layer_fwd.register_autograd(_backward, setup_context=_setup_context)
