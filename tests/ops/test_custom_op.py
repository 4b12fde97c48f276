"""The scans as torch.library custom ops: torch.library.opcheck (schema, fake tensors, autograd
registration, AOT dispatch with static and dynamic shapes), the CUDA ops' plumbing against an
emulation of mamba_ssm's extension, and torch.compile of the Mamba block without graph breaks,
equal to eager in outputs and every gradient."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F

from sigma_lightning import Mamba
from sigma_lightning.ops import _chunked, _cscan, _cuda
from sigma_lightning.ops._fast_op import selective_scan_bwd, selective_scan_fwd
from sigma_lightning.ops.backend import c_kernel_available
from sigma_lightning.ops.selective_scan import selective_scan_reference, use_fast_backend

from .test_selective_scan import assert_close, make_inputs


def backends() -> list[str]:
    return ["c", "torch"] if c_kernel_available() else ["torch"]


def channels_last(batch, dim, L, N, has_D=True, has_z=True, seed=0) -> dict:
    """The fast op's inputs: u, dt, z (B, L, D), A (D, N), Bt, Ct (B, L, N), D (D,)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, requires_grad=True)  # noqa: E731
    return {
        "u": r(batch, L, dim),
        "dt": (0.5 * torch.rand(batch, L, dim, generator=g)).requires_grad_(),
        "A": (-torch.exp(0.5 * torch.randn(dim, N, generator=g))).requires_grad_(),
        "Bt": r(batch, L, N),
        "Ct": r(batch, L, N),
        "D": r(dim) if has_D else None,
        "z": r(batch, L, dim) if has_z else None,
    }


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("has_D, has_z", [(True, True), (False, False)], ids=["D_z", "bare"])
@pytest.mark.parametrize("with_extents", [False, True], ids=["all_steps", "extents"])
@pytest.mark.parametrize("softplus", [False, True], ids=["steps", "softplus_bias"])
@pytest.mark.parametrize("with_read", [False, True], ids=["every_output", "read"])
def test_opcheck_fast_scan(backend, has_D, has_z, with_extents, softplus, with_read, monkeypatch):
    monkeypatch.setattr(_cscan, "SEGMENT", 5)  # several segments: the fake's restart-state count matters
    for shape in ((2, 9, 12, 4), (1, 3, 1, 2)):
        x = channels_last(*shape, has_D=has_D, has_z=has_z)
        bias = torch.randn(shape[1], requires_grad=True) if softplus else None  # raw dt + bias through softplus
        ext = torch.tensor([7, 0][: shape[0]]) if with_extents else None  # mid-segment, and none at all
        keep = (torch.arange(shape[2]) != 3).float().expand(shape[0], -1) if softplus else None  # a padding step
        read = torch.tensor([min(8, shape[2] - 1), 0][: shape[0]]) if with_read else None  # C and out at one step
        if with_read:
            x["Ct"] = torch.randn(shape[0], shape[3], requires_grad=True)  # (B, N)
        args = (*x.values(), bias, softplus, keep, ext, read, backend)
        torch.library.opcheck(selective_scan_fwd, args)
        out, last, starts = selective_scan_fwd(*args)
        detached = [None if t is None else t.detach() for t in (*x.values(), bias)]
        dout, dlast = torch.randn_like(out), torch.randn_like(last)
        bwd_args = (*detached, softplus, keep, starts.detach(), dout, dlast, ext, read, backend)
        torch.library.opcheck(selective_scan_bwd, bwd_args)


@pytest.mark.parametrize("backend", backends())
def test_fake_shapes_are_the_real_ones(backend, monkeypatch):
    """The fake implementation gives every output the real shape (what tracing relies on)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setattr(_cscan, "SEGMENT", 5)
    for L in (1, 5, 6, 11, 30):
        inputs = [t.detach() for t in channels_last(2, 9, L, 4).values()]
        real = selective_scan_fwd(*inputs, None, False, None, None, None, backend)
        mode = FakeTensorMode()
        fakes = [mode.from_tensor(t) for t in inputs]
        with mode:
            fake = selective_scan_fwd(*fakes, None, False, None, None, None, backend)
        assert [t.shape for t in fake] == [t.shape for t in real], L


class FakeExtension:
    """mamba_ssm's `selective_scan_cuda` extension as its interface calls it, computed on CPU by the
    reference scan: fwd -> [out, x, out_z if z], bwd -> [du, ddelta, dA, dB, dC, dD, ddelta_bias,
    dz if z]; B and C come as (B, 1, N, L); x (B, D, n_chunks, 2N) holds the last state at [..., -1, 1::2]."""

    def __init__(self, cu_seqlens: bool) -> None:
        self.cu_seqlens = cu_seqlens

    def _extra(self, rest) -> None:
        assert list(rest) == ([None] if self.cu_seqlens else [])

    def fwd(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus, *rest):
        self._extra(rest)
        assert B.dim() == C.dim() == 4 and B.shape[1] == 1
        out, last = selective_scan_reference(u, delta, A, B[:, 0], C[:, 0], D, None, delta_bias, delta_softplus, True)
        x = u.new_zeros(u.shape[0], u.shape[1], -(-u.shape[2] // _cuda.CHUNK), 2 * A.shape[1])
        x[:, :, -1, 1::2] = last
        return [out, x, *([out * F.silu(z)] if z is not None else [])]

    def bwd(self, u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute, *rest):
        # An op's body runs below autograd: the gradients come from the torch backend's backward.
        self._extra(rest)
        assert dz is None and not recompute and (out is None) == (z is None)
        pre = delta + (delta_bias[:, None] if delta_bias is not None else 0)  # (B, D, L)
        dt = F.softplus(pre) if delta_softplus else pre
        cl = lambda t: None if t is None else t.transpose(1, 2).contiguous()  # noqa: E731  (B, L, D)
        ins = (cl(u), cl(dt), A, cl(B[:, 0]), cl(C[:, 0]), D, cl(z))
        starts = _chunked.forward(*ins)[2]
        du, ddt, dA, dB, dC, dD, dzz, _ = _chunked.backward(*ins, None, False, None, starts, cl(dout), None)
        ddelta = cl(ddt) * (torch.sigmoid(pre) if delta_softplus else 1)  # (B, D, L)
        db = ddelta.sum((0, 2)) if delta_bias is not None else None
        return [cl(du), ddelta, dA, cl(dB)[:, None], cl(dC)[:, None], dD, db, *([cl(dzz)] if z is not None else [])]


@pytest.mark.parametrize("cu_seqlens", [False, True], ids=["mamba_ssm_2.2", "with_cu_seqlens"])
@pytest.mark.parametrize("has_z", [True, False], ids=["z", "no_z"])
def test_cuda_ops_pass_mamba_ssm_its_arguments(cu_seqlens, has_z, monkeypatch):
    """The CUDA path's ops with the extension emulated: opcheck passes, and outputs, last state and
    the gradients of every input equal the reference (the last state's gradient is ignored, as
    mamba_ssm does)."""
    kernels = _cuda.CudaKernels(object(), None, FakeExtension(cu_seqlens), cu_seqlens, None)
    monkeypatch.setattr(_cuda, "cuda_kernels", lambda: kernels)
    monkeypatch.setattr(_cuda, "cuda_error", lambda device: None)  # the tensors stay on the CPU
    assert_cuda_scan_equals(selective_scan_reference, has_z)


def assert_cuda_scan_equals(reference, has_z: bool) -> None:
    """With `_cuda.cuda_kernels` patched to an extension: the forward op passes opcheck, and
    selective_scan_cuda's output, last state and every input's gradient equal `reference`'s
    (same signature, differentiated by autograd; the last state's gradient ignored, as mamba_ssm does)."""
    x = make_inputs(2, 8, 7, 4, has_z=has_z)
    args = [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    torch.library.opcheck(_cuda.selective_scan_cuda_fwd, (*args, True))
    out, last = _cuda.selective_scan_cuda(*args, delta_softplus=True, return_last_state=True)
    out_r, last_r = reference(*args, delta_softplus=True, return_last_state=True)
    assert_close(out, out_r, "out")
    assert_close(last, last_r, "last_state")
    upstream = torch.randn_like(out)
    leaves = [t for t in args if t is not None]
    names = [n for n, t in zip("u delta A B C D z delta_bias".split(), args) if t is not None]
    for got, want, name in zip(torch.autograd.grad(out, leaves, upstream),
                               torch.autograd.grad(out_r, leaves, upstream), names, strict=True):  # fmt: skip
        assert_close(got, want, f"d{name}")


def perturbed_block(**settings) -> Mamba:
    torch.manual_seed(0)
    block = Mamba(16, d_state=8, **settings)
    for p in block.parameters():  # away from init, so that every parameter has a say
        p.data.add_(0.1 * torch.randn_like(p))
    return block


def outputs_and_grads(block, x, mask):
    out = block(x, mask)
    return out, torch.autograd.grad(out.pow(2).sum(), [x, *block.parameters()])


@pytest.mark.parametrize("backend", backends())
def test_compiled_block_has_no_graph_breaks_and_equals_eager(backend):
    block = perturbed_block()
    x = torch.randn(3, 9, 16, requires_grad=True)
    mask = torch.arange(9).expand(3, 9) >= torch.tensor([[0], [4], [2]])  # (B, L), left padding
    with use_fast_backend(backend):
        torch._dynamo.reset()
        explained = torch._dynamo.explain(block)(x, mask)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
        # aot_eager traces forward and backward as inductor does (AOTAutograd), without its C++ build.
        compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
        out_c, grads_c = outputs_and_grads(compiled, x, mask)
        out_e, grads_e = outputs_and_grads(block, x, mask)
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
    names = ["x", *(n for n, _ in block.named_parameters())]
    for name, g_c, g_e in zip(names, grads_c, grads_e):
        torch.testing.assert_close(g_c, g_e, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"d{n}: {m}")
