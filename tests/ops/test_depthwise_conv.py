"""The depthwise convolution over time with the mask and SiLU folded in: the C kernel against the
F.conv1d reference (outputs and every gradient), padding invariance, the custom ops' registration
(opcheck, torch.compile), and which path runs where."""

from __future__ import annotations

import pytest
import torch

from sigma_lightning.ops import depthwise_conv as dc
from sigma_lightning.ops.backend import c_kernel_available, use_fast_backend
from sigma_lightning.ops.depthwise_conv import depthwise_conv, depthwise_conv_reference

needs_c = pytest.mark.skipif(not c_kernel_available(), reason="the C kernels cannot be built here")


def inputs(B=3, L=9, D=13, K=4, lengths=(9, 4, 0), strided=False, seed=0):
    """x (B, L, D) (a chunk of a wider tensor if `strided`), weight (D, K), bias (D,), and a
    left-aligned mask with the given real lengths (an empty row among them)."""
    g = torch.Generator().manual_seed(seed)
    wide = torch.randn(B, L, 2 * D, generator=g)
    x = (wide[..., D:] if strided else wide[..., D:].contiguous()).requires_grad_()
    weight = torch.randn(D, K, generator=g, requires_grad=True)
    bias = torch.randn(D, generator=g, requires_grad=True)
    mask = torch.arange(L) < torch.tensor(lengths).unsqueeze(1)  # (B, L)
    return x, weight, bias, mask


def values_and_grads(fn, x, weight, bias, seed=1, **settings):
    y = fn(x, weight, bias, **settings)
    upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
    leaves = [t for t in (x, weight, bias) if t is not None]
    return [y, *torch.autograd.grad(y, leaves, upstream)]


SETTINGS = [
    pytest.param(dict(left_pad=3, silu=True, mask=True, mask_output=False), id="mamba_causal_silu"),
    pytest.param(dict(left_pad=1, silu=False, mask=True, mask_output=True), id="same_masked_out"),
    pytest.param(dict(left_pad=0, silu=True, mask=False, mask_output=False), id="anticausal_no_mask"),
    pytest.param(dict(left_pad=2, silu=False, mask=True, mask_output=False), id="middle_pad"),
]


@needs_c
@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "chunk_view"])
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "no_bias"])
def test_c_kernel_equals_the_reference_with_gradients(settings, strided, has_bias):
    x, weight, bias, mask = inputs(strided=strided)
    bias = bias if has_bias else None
    settings = dict(settings)
    keep = mask if settings.pop("mask") else None
    with use_fast_backend("c"):
        actual = values_and_grads(depthwise_conv, x, weight, bias, keep=keep, **settings)
    expected = values_and_grads(depthwise_conv_reference, x, weight, bias, keep=keep, **settings)
    for name, got, want in zip(["y", "dx", "dweight", "dbias"], actual, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@needs_c
@pytest.mark.parametrize("K, L", [(1, 1), (2, 1), (4, 2), (3, 3), (5, 7)])
def test_short_sequences_and_kernel_sizes(K, L):
    """Sequences shorter than the kernel, a kernel of one tap, every left padding."""
    for left_pad in range(K):
        x, weight, bias, mask = inputs(B=2, L=L, D=9, K=K, lengths=(L, L // 2))
        with use_fast_backend("c"):
            actual = values_and_grads(depthwise_conv, x, weight, bias, left_pad=left_pad, silu=True, keep=mask)
        expected = values_and_grads(depthwise_conv_reference, x, weight, bias, left_pad=left_pad, silu=True, keep=mask)
        for got, want in zip(actual, expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["c", "torch"])
def test_padding_neither_reaches_real_positions_nor_gets_a_gradient(backend):
    if backend == "c" and not c_kernel_available():
        pytest.skip("the C kernels cannot be built here")
    x, weight, bias, mask = inputs(lengths=(9, 4, 2))
    noisy = x.detach().clone()
    noisy[~mask] = 1e4  # what padding holds must not matter
    noisy.requires_grad_()
    with use_fast_backend(backend):
        y = depthwise_conv(x, weight, bias, left_pad=1, keep=mask, mask_output=True)
        y_noisy = depthwise_conv(noisy, weight, bias, left_pad=1, keep=mask, mask_output=True)
        torch.testing.assert_close(y_noisy, y)
        assert (y[~mask] == 0).all()
        (dx,) = torch.autograd.grad(y_noisy.sum(), noisy)
    assert (dx[~mask] == 0).all() and (dx[mask] != 0).any()


@needs_c
def test_opcheck():
    x, weight, bias, mask = inputs(B=2, L=5, D=6, K=3, lengths=(5, 2))
    keep = mask.float()
    for args in [(x, weight, bias, keep, 1, False, True), (x, weight, None, None, 2, True, False)]:
        torch.library.opcheck(dc.depthwise_conv_fwd, args)
        y = dc.depthwise_conv_fwd(*args)
        detached = [t.detach() if isinstance(t, torch.Tensor) else t for t in args]
        torch.library.opcheck(dc.depthwise_conv_bwd, (*detached, torch.randn_like(y)))


@needs_c
def test_compiles_without_graph_breaks_to_the_eager_values():
    x, weight, bias, mask = inputs(lengths=(9, 4, 1))

    def fn(x, weight, bias):
        return depthwise_conv(x, weight, bias, left_pad=3, silu=True, keep=mask)

    with use_fast_backend("c"):
        explained = torch._dynamo.explain(fn)(x, weight, bias)
        assert explained.graph_break_count == 0
        compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
        for got, want in zip(values_and_grads(compiled, x, weight, bias), values_and_grads(fn, x, weight, bias)):
            torch.testing.assert_close(got, want)


def test_which_path_runs(monkeypatch):
    """The C kernel for float32 CPU tensors with the C backend; otherwise torch ops (with the
    reference's dtypes under autocast and in bfloat16)."""
    calls = []
    monkeypatch.setattr(dc._cconv, "forward", lambda *a: calls.append("c") or torch.zeros(a[0].shape))
    x, weight, bias, mask = inputs()
    with use_fast_backend("torch"):
        depthwise_conv(x, weight, bias, left_pad=3, keep=mask)
    assert calls == []
    if c_kernel_available():
        with use_fast_backend("c"):
            depthwise_conv(x, weight, bias, left_pad=3, keep=mask)
            assert calls == ["c"]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = depthwise_conv(x, weight, bias, left_pad=1, keep=mask)
            assert calls == ["c"] and y.dtype == torch.bfloat16
            y = depthwise_conv(x.bfloat16(), weight, bias, left_pad=3, keep=mask)
            assert calls == ["c"] and y.dtype == torch.bfloat16


def test_left_padding_outside_the_kernel_is_refused():
    x, weight, bias, _ = inputs(K=3)
    with pytest.raises(ValueError, match=r"left_pad must be in \[0, 3\) for a kernel of 3, got 3"):
        depthwise_conv(x, weight, bias, left_pad=3)
