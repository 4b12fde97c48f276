"""The `cuda` scan path's plumbing on a CPU: the code that calls mamba_ssm's and causal-conv1d's
kernels (argument order, layouts, masks, conv weights, the reverse direction) runs with the kernels
replaced by stand-ins that take exactly the kernels' arguments, check what the kernels' C++ checks
(shapes, dtypes, strides; everything but `is_cuda`), and compute with the packages' own pure-PyTorch
references, mamba_ssm's `selective_scan_ref` and causal-conv1d's `causal_conv1d_ref`
(tests/ops/upstream_refs.py). A Mamba block and every Mamba backbone on that path must give the
reference scan's outputs and gradients."""

from __future__ import annotations

import copy
import inspect
import threading

import pytest
import torch

from sigma_lightning import Mamba
from sigma_lightning.models import SIGMA, EchoMamba4Rec, Mamba4Rec, MambaConfig
from sigma_lightning.nn import mamba as mamba_file
from sigma_lightning.ops import _cuda

from .test_custom_op import assert_cuda_scan_equals
from .test_selective_scan import assert_close
from .upstream_refs import causal_conv1d_ref, selective_scan_ref

INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"not what the kernel takes: {what}")  # its TORCH_CHECK, or wrong gradients


def check_shape(t: torch.Tensor, *shape: int, name: str) -> None:
    check(tuple(t.shape) == shape, f"{name} must have shape {shape}, got {tuple(t.shape)}")


def last_contiguous(t: torch.Tensor, name: str) -> None:
    check(t.stride(-1) == 1 or t.size(-1) == 1, f"{name}.stride(-1) == 1")


def grads_outside_the_op(fn):
    """Runs `fn` (which calls torch.autograd.grad) on a fresh thread: an op's body runs below
    autograd (its dispatch keys are excluded on this thread), a new thread starts without that."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(value=fn()))
    thread.start()
    thread.join()
    return result["value"]


class SelectiveScanExtension:
    """mamba_ssm's compiled `selective_scan_cuda` module (csrc/selective_scan/selective_scan.cpp,
    2.3.2): `fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)` -> [out, x, out_z if z] and
    `bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute_out_z)` ->
    [du, ddelta, dA, dB, dC, dD, ddelta_bias, dz if z], B and C as (B, G, N, L); computed by
    `selective_scan_ref`. `cu_seqlens`: newer releases take one more trailing argument (None)."""

    def __init__(self, cu_seqlens: bool = False) -> None:
        self.cu_seqlens = cu_seqlens
        self.calls: list[str] = []

    def _check(self, u, delta, A, B, C, D, z, delta_bias, rest) -> None:
        check(list(rest) == ([None] if self.cu_seqlens else []), f"trailing arguments {rest}")
        check(u.dtype in INPUT_DTYPES and A.dtype == torch.float32, "u half/bf16/float, A float")
        check(delta.dtype == B.dtype == C.dtype == u.dtype, "delta, B, C in u's dtype")
        batch, dim, seqlen = u.shape
        check(A.shape[1] <= 256, "state dimension <= 256")
        check_shape(delta, batch, dim, seqlen, name="delta")
        check_shape(A, dim, A.shape[1], name="A")
        for name, t in (("B", B), ("C", C)):
            check(t.dim() == 4, f"{name} is (batch, n_groups, dstate, seqlen) for input-dependent {name}")
            check_shape(t, batch, t.shape[1], A.shape[1], seqlen, name=name)
            check(dim % t.shape[1] == 0, f"{name}'s groups divide dim")
            last_contiguous(t, name)
        last_contiguous(u, "u")
        last_contiguous(delta, "delta")
        for name, t in (("D", D), ("delta_bias", delta_bias)):
            if t is not None:
                check(t.dtype == torch.float32, f"{name} float")
                check_shape(t, dim, name=name)
                last_contiguous(t, name)
        if z is not None:
            check(z.dtype == u.dtype, "z in u's dtype")
            check_shape(z, batch, dim, seqlen, name="z")
            last_contiguous(z, "z")

    def fwd(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus, *rest):
        self._check(u, delta, A, B, C, D, z, delta_bias, rest)
        self.calls.append("fwd")
        out, last = selective_scan_ref(u, delta, A, B, C, D, None, delta_bias, delta_softplus, True)
        # x: the kernel's per-chunk (a, b) pairs; the last chunk's b's are the last state, [..., -1, 1::2]
        x = u.new_zeros(u.shape[0], u.shape[1], -(-u.shape[2] // 2048), 2 * A.shape[1], dtype=A.dtype)
        x[:, :, -1, 1::2] = last
        return [out, x, *([out * torch.nn.functional.silu(z)] if z is not None else [])]

    def bwd(self, u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute_out_z, *rest):
        self._check(u, delta, A, B, C, D, z, delta_bias, rest)
        check(dout.dtype == u.dtype, "dout in u's dtype")
        check_shape(dout, *u.shape, name="dout")
        last_contiguous(dout, "dout")
        check(x is not None and x.shape[:2] == u.shape[:2] and x.shape[3] == 2 * A.shape[1], "x from fwd")
        check((out is not None) == (z is not None), "out (the ungated output) given exactly with z")
        if out is not None:
            check_shape(out, *u.shape, name="out")
            check(out.dtype == u.dtype, "out in u's dtype")
        check(dz is None and recompute_out_z is False, "mamba_ssm passes dz=None, recompute_out_z=False")
        # The kernel reads both: x's chunk states restart the scan, out (ungated) forms dz.
        ungated, last = selective_scan_ref(u, delta, A, B, C, D, None, delta_bias, delta_softplus, True)
        check(torch.allclose(x[:, :, -1, 1::2], last, atol=1e-5), "x is what fwd returned for these inputs")
        check(out is None or torch.allclose(out, ungated, atol=1e-5), "out is fwd's ungated output")
        self.calls.append("bwd")

        def gradients():
            leaves = [t.detach().requires_grad_() for t in (u, delta, A, B, C)]
            extra = {name: t.detach().requires_grad_() for name, t in (("D", D), ("z", z), ("delta_bias", delta_bias))
                     if t is not None}  # fmt: skip
            y = selective_scan_ref(*leaves, extra.get("D"), extra.get("z"), extra.get("delta_bias"), delta_softplus)
            return torch.autograd.grad(y, [*leaves, *extra.values()], dout), list(extra)

        (du, ddelta, dA, dB, dC, *rest_grads), names = grads_outside_the_op(gradients)
        given = dict(zip(names, rest_grads))
        dz = [given["z"]] if z is not None else []
        return [du, ddelta, dA, dB, dC, given.get("D"), given.get("delta_bias"), *dz]


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None):  # fmt: skip
    """causal-conv1d's `causal_conv1d_fn` (1.7.0: the signature and the checks of
    csrc/causal_conv1d.cpp, but `is_cuda`), computed by `causal_conv1d_ref`. x (batch, dim, seqlen)."""
    check(activation in (None, "silu", "swish"), "activation None, silu or swish")
    check(x.dtype in INPUT_DTYPES and weight.dtype in INPUT_DTYPES, "x, weight half/bf16/float")
    batch, dim, seqlen = x.shape
    check_shape(weight, dim, weight.shape[1], name="weight")
    check(2 <= weight.shape[1] <= 4, "causal_conv1d only supports width between 2 and 4")
    check(x.stride(2) == 1 or x.stride(1) == 1, "x contiguous in seqlen or in dim")
    if x.stride(1) == 1 and x.stride(2) > 1:  # channel last
        check(dim % 8 == 0 and x.stride(2) % 8 == 0 and x.stride(0) % 8 == 0, "channel-last needs multiples of 8")
    if bias is not None:
        check(bias.dtype == weight.dtype, "bias in weight's dtype")
        check(bias.stride(-1) == 1, "bias contiguous")
        check_shape(bias, dim, name="bias")
    causal_conv1d_fn.calls += 1
    return causal_conv1d_ref(x, weight, bias, initial_states, return_final_states, final_states_out, activation,
                             seq_idx)  # fmt: skip


causal_conv1d_fn.calls = 0


@pytest.fixture
def extension(monkeypatch) -> SelectiveScanExtension:
    """The cuda path with the stand-ins as the kernels, on CPU tensors."""
    ext = SelectiveScanExtension()
    kernels = _cuda.CudaKernels(object(), causal_conv1d_fn, ext, False, None)
    monkeypatch.setattr(_cuda, "cuda_kernels", lambda: kernels)
    monkeypatch.setattr(mamba_file, "cuda_kernels", lambda: kernels)
    monkeypatch.setattr(_cuda, "cuda_error", lambda device: None)  # the tensors stay on the CPU
    causal_conv1d_fn.calls = 0
    return ext


def test_the_stand_ins_have_the_kernels_signatures():
    """The stand-ins' parameters are the kernels' (mamba_ssm 2.3.2's SelectiveScanFn calls fwd with 9
    arguments and bwd with 14; causal_conv1d_fn's keywords)."""
    names = lambda f: list(inspect.signature(f).parameters)  # noqa: E731
    assert names(SelectiveScanExtension.fwd)[1:10] == "u delta A B C D z delta_bias delta_softplus".split()
    assert names(SelectiveScanExtension.bwd)[1:15] == (
        "u delta A B C D z delta_bias dout x out dz delta_softplus recompute_out_z".split()
    )
    assert names(causal_conv1d_fn) == ["x", "weight", "bias", "seq_idx", "initial_states", "return_final_states",
                                       "final_states_out", "activation"]  # fmt: skip


@pytest.mark.parametrize("cu_seqlens", [False, True], ids=["mamba_ssm_2.3", "with_cu_seqlens"])
@pytest.mark.parametrize("has_z", [True, False], ids=["z", "no_z"])
def test_cuda_scan_equals_mamba_ssms_reference(extension, cu_seqlens, has_z, monkeypatch):
    """selective_scan_cuda with the extension computed by mamba_ssm's own reference: output, last
    state and every input's gradient equal mamba_ssm's `selective_scan_ref` differentiated by
    autograd (the last state's gradient ignored, as mamba_ssm does)."""
    extension.cu_seqlens = cu_seqlens
    monkeypatch.setattr(_cuda, "cuda_kernels", lambda: _cuda.CudaKernels(object(), None, extension, cu_seqlens, None))
    assert_cuda_scan_equals(selective_scan_ref, has_z)
    assert extension.calls[-2:] == ["fwd", "bwd"]


def perturbed(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for p in module.parameters():  # away from init, so that every parameter has a say
        p.data.add_(0.1 * torch.randn_like(p))
    return module


def on_impl(module: torch.nn.Module, impl: str) -> torch.nn.Module:
    """A copy of `module` whose Mamba blocks use the scan `impl`."""
    module = copy.deepcopy(module)
    for block in module.modules():
        if isinstance(block, Mamba):
            block.scan_impl = impl
    return module


def left_padding_mask(batch: int, L: int, starts: list[int]) -> torch.Tensor:
    return torch.arange(L).expand(batch, L) >= torch.tensor(starts).unsqueeze(1)  # (B, L)


def assert_same_outputs_and_grads(make_output, reference: torch.nn.Module, cuda: torch.nn.Module, x) -> None:
    out_r, out_c = make_output(reference, x), make_output(cuda, x)
    assert_close(out_c, out_r, "output")
    upstream = torch.randn_like(out_r)
    grads_r = torch.autograd.grad(out_r, [x, *reference.parameters()], upstream, allow_unused=True)
    grads_c = torch.autograd.grad(out_c, [x, *cuda.parameters()], upstream, allow_unused=True)
    names = ["input", *(n for n, _ in reference.named_parameters())]
    for name, g_r, g_c in zip(names, grads_r, grads_c):
        assert (g_r is None) == (g_c is None), name
        if g_r is not None:
            assert_close(g_c, g_r, f"d{name}")


@pytest.mark.parametrize("mask", [True, False], ids=["masked", "no_mask"])
def test_mamba_block_on_the_cuda_path_equals_the_reference_scan(extension, mask):
    """The whole block: conv weights (d_inner, d_conv) and layout (B, d_inner, L) for causal_conv1d,
    the x/z split, step sizes with and without padding, A, D and the dt bias for the scan."""
    block = perturbed(Mamba(16, d_state=8, scan_impl="reference"))
    x = torch.randn(3, 9, 16, requires_grad=True)
    m = left_padding_mask(3, 9, [0, 4, 2]) if mask else None
    assert_same_outputs_and_grads(lambda b, x: b(x, m), block, on_impl(block, "cuda"), x)
    assert extension.calls == ["fwd", "bwd"] and causal_conv1d_fn.calls == 1


BACKBONES = {
    "Mamba4Rec": lambda: Mamba4Rec(hidden_size=16, mamba=MambaConfig(d_state=4, scan_impl="reference"), num_layers=2),
    "EchoMamba4Rec": lambda: EchoMamba4Rec(hidden_size=16, mamba=MambaConfig(d_state=4, scan_impl="reference"),
                                           filter_len=32),  # a forward and a reverse scan per layer
    "SIGMA": lambda: SIGMA(hidden_size=16, mamba=MambaConfig(d_state=4, scan_impl="reference"), flip_range=3),
}  # fmt: skip


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_mamba_backbone_on_the_cuda_path_equals_the_reference_scan(extension, backbone):
    """Representations and every gradient, with left padding: the reverse scans (EchoMamba4Rec) and
    the partially flipped branch (SIGMA) hand the kernels their flipped tensors as they should."""
    model = perturbed(BACKBONES[backbone]()).eval()  # no dropout: both runs see the same network
    emb = torch.randn(4, 10, 16, requires_grad=True)  # (B, L, D) item embeddings
    mask = left_padding_mask(4, 10, [0, 3, 7, 9])
    assert_same_outputs_and_grads(lambda m, x: m(x * mask.unsqueeze(-1), mask), model, on_impl(model, "cuda"), emb)
    blocks = sum(isinstance(b, Mamba) for b in model.modules())
    assert extension.calls.count("fwd") == blocks and extension.calls.count("bwd") == blocks
    assert causal_conv1d_fn.calls == blocks


def test_cuda_path_under_bf16_autocast(extension):
    """Under autocast the conv gets the bf16 activations with float32 weights (which the kernel
    accepts) and the scan gets float32 everything; the result is the reference block's under autocast."""
    block = perturbed(Mamba(16, d_state=8, scan_impl="reference"))
    x = torch.randn(3, 9, 16, requires_grad=True)
    m = left_padding_mask(3, 9, [0, 4, 2])

    def run(b, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return b(x, m).float()

    out_r, out_c = run(block, x), run(on_impl(block, "cuda"), x)
    torch.testing.assert_close(out_c, out_r, rtol=2e-2, atol=2e-2)  # bf16 matmuls around the same scan
    assert torch.isfinite(out_c).all() and causal_conv1d_fn.calls == 1


def test_the_vendored_references_are_the_installed_packages():
    """Where mamba_ssm and causal-conv1d import (a CUDA machine with them installed), their reference
    functions are the ones copied into upstream_refs.py, to the character."""
    interface = pytest.importorskip("mamba_ssm.ops.selective_scan_interface", exc_type=ImportError)
    conv = pytest.importorskip("causal_conv1d.causal_conv1d_interface", exc_type=ImportError)
    assert inspect.getsource(interface.selective_scan_ref) == inspect.getsource(selective_scan_ref)
    assert inspect.getsource(conv.causal_conv1d_ref) == inspect.getsource(causal_conv1d_ref)
