"""The fast selective scan (both backends) against the float32 reference, plus dispatch and dtypes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sigma_lightning.ops import _chunked, _cscan
from sigma_lightning.ops import selective_scan as ss
from sigma_lightning.ops.backend import c_kernel_available
from sigma_lightning.ops.selective_scan import (
    fast_backend,
    selective_scan,
    selective_scan_fast,
    selective_scan_reference,
    use_fast_backend,
)

# (batch, d_inner, L, d_state): L = 1, odd L, several chunks of the torch backend, d_inner not a
# multiple of the C kernel's 8-channel blocks, batch 1, d_state in {1, 16, 32}; full 16-channel
# blocks beside a part block with d_state not a multiple of the backward's 8-state chunks.
SHAPES = [(1, 4, 1, 1), (2, 8, 7, 16), (3, 12, 33, 32), (1, 16, 64, 16), (2, 40, 9, 12)]
REPO = str(Path(__file__).resolve().parents[2])
NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


@pytest.fixture(params=["c", "c-segments", "torch"])
def backend(request, monkeypatch):
    """Runs a test once per backend of `selective_scan_fast`; "c-segments" cuts every sequence
    into 5-step kernel calls (as the C backend does with long sequences)."""
    name = request.param.split("-")[0]
    if request.param == "c-segments":
        monkeypatch.setattr(_cscan, "SEGMENT", 5)
    if name == "c" and not c_kernel_available():
        pytest.skip("the C scan could not be built here (no C compiler?)")
    with use_fast_backend(name):
        assert fast_backend("cpu") == name
        yield request.param


def make_inputs(batch, dim, L, N, has_z=True, has_bias=True, softplus=True, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    # Raw delta goes through softplus (around 0.3); without softplus it is the positive step itself.
    delta = 0.5 * r(batch, dim, L) - 1.0 if softplus else 0.5 * torch.rand(batch, dim, L, generator=g)
    inputs = {
        "u": r(batch, dim, L),
        "delta": delta,
        "A": -torch.exp(0.5 * r(dim, N)),
        "B": r(batch, N, L),
        "C": r(batch, N, L),
        "D": r(dim),
        "z": r(batch, dim, L) if has_z else None,
        "delta_bias": (0.5 * r(dim) if softplus else 0.1 * torch.rand(dim, generator=g)) if has_bias else None,
    }
    return {k: (v.requires_grad_() if v is not None else None) for k, v in inputs.items()}


def run(fn, inputs: dict, softplus: bool, seed: int = 1):
    """Outputs, last state and the gradients of a loss that uses both."""
    out, last = fn(**inputs, delta_softplus=softplus, return_last_state=True)
    g = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=g)).sum() + (last * torch.randn(last.shape, generator=g)).sum()
    leaves = [inputs[k] for k in NAMES if inputs[k] is not None]
    grads = torch.autograd.grad(loss, leaves)
    return out, last, dict(zip([k for k in NAMES if inputs[k] is not None], grads))


def assert_close(actual, expected, name=""):
    # float32 rounding only: relative 1e-5, absolute 1e-5 of the tensor's scale
    scale = expected.abs().max().item() + 1e-6
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale, msg=lambda m: f"{name}: {m}")


def assert_runs_close(actual, expected) -> None:
    """Two `run` results: outputs, last states and every gradient."""
    assert_close(actual[0], expected[0], "out")
    assert_close(actual[1], expected[1], "last")
    for name in expected[2]:
        assert_close(actual[2][name], expected[2][name], f"d{name}")

@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("has_z", [True, False], ids=["z", "no_z"])
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("softplus", [True, False], ids=["softplus", "no_softplus"])
def test_fast_equals_reference(backend, shape, has_z, has_bias, softplus):
    inputs = make_inputs(*shape, has_z=has_z, has_bias=has_bias, softplus=softplus)
    out_r, last_r, grads_r = run(selective_scan_reference, inputs, softplus)
    out_f, last_f, grads_f = run(selective_scan_fast, inputs, softplus)
    assert out_f.shape == out_r.shape and last_f.shape == last_r.shape
    assert_close(out_f, out_r, "out")
    assert_close(last_f, last_r, "last_state")
    assert grads_f.keys() == grads_r.keys()
    for name in grads_r:
        assert_close(grads_f[name], grads_r[name], f"d{name}")


@pytest.mark.parametrize("seed", range(4))
def test_fast_equals_reference_on_random_shapes(backend, seed):
    """Shapes drawn at random (seeded): batch 1-4, d_inner 1-24, L 1-70, d_state 1-33."""
    g = torch.Generator().manual_seed(100 + seed)
    ranges = ((1, 4), (1, 24), (1, 70), (1, 33))
    batch, dim, L, N = (int(torch.randint(lo, hi + 1, (1,), generator=g)) for lo, hi in ranges)
    inputs = make_inputs(batch, dim, L, N, seed=seed)
    out_r, last_r, grads_r = run(selective_scan_reference, inputs, True)
    out_f, last_f, grads_f = run(selective_scan_fast, inputs, True)
    assert_close(out_f, out_r, f"out {(batch, dim, L, N)}")
    assert_close(last_f, last_r, f"last_state {(batch, dim, L, N)}")
    for name in grads_r:
        assert_close(grads_f[name], grads_r[name], f"d{name} {(batch, dim, L, N)}")


@pytest.mark.parametrize("use", ["out", "last"])
def test_fast_gradient_of_one_output(backend, use):
    """Only the output, or only the last state, reaches the loss: the gradients still equal the
    reference's (the unused output's gradient is absent or zero)."""
    inputs = make_inputs(2, 8, 9, 4)
    grads = []
    for fn in (selective_scan_reference, selective_scan_fast):
        out, last = fn(**inputs, delta_softplus=True, return_last_state=True)
        loss = (out if use == "out" else last).pow(2).sum()
        grads.append(torch.autograd.grad(loss, [inputs["u"], inputs["A"], inputs["B"]]))
    for g_f, g_r in zip(grads[1], grads[0]):
        assert_close(g_f, g_r)



def test_fast_gradient_of_one_step_per_row(backend):
    """The loss reads each row's output at one step (a different one per row, none for one row), as
    the last layer does: every other step has no output gradient. Every input's gradient, dz
    included (zero at the steps not read), equals the reference's."""
    inputs = make_inputs(3, 40, 11, 8)
    read = torch.zeros(3, 1, 11)
    read[0, :, 10], read[1, :, 4] = 1.0, 1.0  # row 2 reads nothing
    weights = torch.randn(3, 40, 11) * read  # (B, D, L)
    weights[1, :20] = 0.0  # row 1 reads some channels only: a block is quiet only if all of its are
    grads = []
    for fn in (selective_scan_reference, selective_scan_fast):
        loss = (fn(**inputs, delta_softplus=True) * weights).sum()
        grads.append(torch.autograd.grad(loss, [inputs[k] for k in NAMES]))
    for name, g_f, g_r in zip(NAMES, grads[1], grads[0]):
        assert_close(g_f, g_r, f"d{name}")
    assert (grads[1][NAMES.index("z")] * (1 - read) == 0).all()

@pytest.mark.parametrize("threads", [2, 3])
def test_c_gradients_on_several_threads(threads):
    """Work split over threads: each kernel call sums dA, dD and the bias's gradient into its own
    slot, and the slots add up to the reference's gradients."""
    if not c_kernel_available():
        pytest.skip("the C scan could not be built here (no C compiler?)")
    inputs = make_inputs(24, 40, 30, 16)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with use_fast_backend("c"):
            assert _cscan.n_ranges(24, 10**6) > 1  # the work below is split
            got = run(selective_scan_fast, inputs, True)
    finally:
        torch.set_num_threads(before)
    assert_runs_close(got, run(selective_scan_reference, inputs, True))


def test_fast_without_D_and_long_sequence(backend):
    inputs = make_inputs(2, 9, 200, 8, has_z=False)
    inputs["D"] = None
    out_r, last_r, grads_r = run(selective_scan_reference, inputs, True)
    out_f, last_f, grads_f = run(selective_scan_fast, inputs, True)
    assert_close(out_f, out_r)
    assert_close(last_f, last_r)
    for name in grads_r:
        assert_close(grads_f[name], grads_r[name], f"d{name}")



def masked_by_extents(inputs: dict, extents: torch.Tensor, softplus: bool):
    """What extents mean, spelled out on the reference: step size 0 and output 0 from each row's
    extent on (the state passes those steps unchanged)."""

    def fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        computed = (torch.arange(u.shape[2]) < extents.unsqueeze(1)).unsqueeze(1)  # (B, 1, L)
        step = ss._step_sizes(delta, delta_bias, delta_softplus) * computed
        out, last = selective_scan_reference(u, step, A, B, C, D, z, None, False, True)
        return out * computed, last

    return run(fn, inputs, softplus)


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_extents_skip_each_rows_tail(backend, impl):
    """Every row's steps from its extent on: none, some (inside the first and a later 5-step
    segment), all; outputs, last state and every gradient, with garbage-sized deltas in the tail."""
    inputs = make_inputs(4, 40, 23, 8)  # 40 channels: whole blocks of 8 or 16 and a partial one
    extents = torch.tensor([23, 0, 3, 12])
    with torch.no_grad():
        tail = torch.arange(23) >= extents.unsqueeze(1)  # (B, L)
        inputs["delta"][tail.unsqueeze(1).expand_as(inputs["delta"])] = 50.0  # must not matter
    expected = masked_by_extents(inputs, extents, True)
    actual = run(lambda **kw: selective_scan(**kw, impl=impl, extents=extents), inputs, True)
    assert_runs_close(actual, expected)
    assert (actual[0][1] == 0).all() and (actual[2]["delta"][tail.unsqueeze(1).expand(-1, 40, -1)] == 0).all()


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("softplus", [True, False], ids=["softplus", "no_softplus"])
def test_step_mask_multiplies_the_steps(backend, impl, softplus):
    """step_mask scales the steps after bias and softplus: padding anywhere in a row (before, inside,
    after its items) leaves the state as it was; outputs, last state, every gradient (the bias's too)."""
    inputs = make_inputs(3, 40, 13, 8, softplus=softplus)
    step_mask = torch.ones(3, 13)
    step_mask[0, :4] = 0
    step_mask[1, 5:9] = 0
    step_mask[2] = 0

    def masked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        step = ss._step_sizes(delta, delta_bias, delta_softplus) * step_mask.unsqueeze(1)
        return selective_scan_reference(u, step, A, B, C, D, z, None, False, return_last_state)

    expected = run(masked, inputs, softplus)
    actual = run(lambda **kw: selective_scan(**kw, impl=impl, step_mask=step_mask), inputs, softplus)
    assert_runs_close(actual, expected)


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("has_z", [True, False], ids=["z", "no_z"])
def test_read_gives_the_full_scans_outputs_at_the_read_steps(backend, impl, has_z):
    """`read`: C (B, N) and the output (B, D) at one step per row equal the full scan's with C zero
    elsewhere, read at those steps; the last state is the state after the read step (extents cut
    at read + 1). Reads at the first and last step, mid-sequence (in different 5-step segments of
    "c-segments"), and past a row's extent (output 0, gradient 0). Every input's gradient."""
    inputs = make_inputs(4, 20, 13, 8, has_z=has_z)
    inputs["C"] = torch.randn(4, 8, requires_grad=True)  # (B, N) at the read steps
    read, extents = torch.tensor([12, 0, 6, 9]), torch.tensor([13, 13, 4, 11])
    step_mask = torch.ones(4, 13)
    step_mask[3, 2] = 0.0  # a padding step before the read one

    def definition(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        rows = torch.arange(4)
        C_full = C.new_zeros(4, 13, 8).index_put((rows, read), C).transpose(1, 2)  # (B, N, L)
        step = ss._step_sizes(delta, delta_bias, delta_softplus) * step_mask.unsqueeze(1)
        out, last = selective_scan(u, step, A, B, C_full, D, z, return_last_state=True, impl="reference",
                                   extents=torch.minimum(extents, read + 1))  # fmt: skip
        return out[rows, :, read], last

    expected = run(definition, inputs, True)
    actual = run(lambda **kw: selective_scan(**kw, impl=impl, step_mask=step_mask, extents=extents, read=read),
                 inputs, True)  # fmt: skip
    assert actual[0].shape == (4, 20)
    assert_runs_close(actual, expected)
    assert (actual[0][2] == 0).all() and (actual[2]["C"][2] == 0).all()  # read past the extent


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("settings", ["softplus-bias", "plain"])
@pytest.mark.parametrize("use", ["out", "last", "both"])
def test_read_gradients_on_every_shape(backend, shape, settings, use):
    """The backward of a `read` scan (one pass, no stored states in the C kernel) against the
    reference on the full scan read at one step per row: every shape of SHAPES (full and part
    channel blocks, d_state 1 to 32, one step to several segments), with and without softplus and
    bias, the loss reading the output, the last state or both. Reads at the last step, the first,
    and mid-sequence; a row with padding steps before its read step."""
    batch, dim, L, N = shape
    softplus = settings == "softplus-bias"
    inputs = make_inputs(batch, dim, L, N, has_z=False, has_bias=softplus, softplus=softplus, seed=L)
    inputs["C"] = torch.randn(batch, N, generator=torch.Generator().manual_seed(L), requires_grad=True)
    read = torch.tensor([L - 1, 0, L // 2, (2 * L) // 3])[:batch]
    step_mask = torch.ones(batch, L)
    step_mask[-1, : read[-1]] = torch.arange(int(read[-1])) % 3 != 1  # padding between items

    def loss(out, last):
        g = torch.Generator().manual_seed(7)
        terms = {"out": (out * torch.randn(out.shape, generator=g)).sum(),
                 "last": (last * torch.randn(last.shape, generator=g)).sum()}  # fmt: skip
        return terms["out"] + terms["last"] if use == "both" else terms[use]

    def grads(scan):
        out, last = scan(**inputs, delta_softplus=softplus, return_last_state=True)
        leaves = [inputs[k] for k in NAMES if inputs[k] is not None]
        return out, last, torch.autograd.grad(loss(out, last), leaves, allow_unused=True)

    def definition(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        rows = torch.arange(batch)
        C_full = C.new_zeros(batch, L, N).index_put((rows, read), C).transpose(1, 2)  # (B, N, L)
        step = ss._step_sizes(delta, delta_bias, delta_softplus) * step_mask.unsqueeze(1)
        out, last = selective_scan(u, step, A, B, C_full, D, z, return_last_state=True, impl="reference",
                                   extents=read + 1)  # fmt: skip
        return out[rows, :, read], last

    expected = grads(definition)
    actual = grads(lambda **kw: selective_scan(**kw, impl="fast", step_mask=step_mask, read=read))
    assert_close(actual[0], expected[0], "out")
    assert_close(actual[1], expected[1], "last")
    for name, a, e in zip([k for k in NAMES if inputs[k] is not None], actual[2], expected[2]):
        assert_close(a if a is not None else torch.zeros_like(e), e if e is not None else torch.zeros_like(a), f"d{name}")


def test_dispatch_on_cpu():
    inputs = {k: v.detach() if v is not None else None for k, v in make_inputs(2, 8, 5, 4).items()}
    ref = selective_scan_reference(**inputs, delta_softplus=True)
    for impl in ("auto", "reference", "fast"):
        assert_close(selective_scan(**inputs, delta_softplus=True, impl=impl), ref, impl)
    assert ss.resolve_impl("auto", torch.device("cpu")) == "fast"
    with pytest.raises(ValueError, match="scan_impl"):
        selective_scan(**inputs, impl="triton")


def test_forcing_cuda_on_cpu_raises_a_clear_error():
    inputs = make_inputs(1, 4, 3, 2)
    with pytest.raises(RuntimeError) as err:
        selective_scan(**inputs, impl="cuda")
    msg = str(err.value)
    assert "scan_impl='cuda'" in msg and "pip install sigma-lightning[cuda]" in msg and "scan_impl='auto'" in msg


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_autocast_bf16_scans_in_float32(impl):
    """Under bf16 autocast the scan still runs in float32 and returns the input dtype."""
    inputs = make_inputs(2, 8, 16, 8)
    low = {k: v.detach().to(torch.bfloat16) if k in ("u", "delta", "B", "C", "z") else v.detach() for k, v in inputs.items()}
    high = {k: v.float() for k, v in low.items()}  # the same values in float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, last = selective_scan(**low, delta_softplus=True, return_last_state=True, impl=impl)
    out_ref, last_ref = selective_scan_reference(**high, delta_softplus=True, return_last_state=True)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    assert_close(last, last_ref, "last_state")  # a bf16 scan would be off by ~1e-2
    torch.testing.assert_close(out, out_ref.to(torch.bfloat16), rtol=1e-2, atol=1e-2)


def test_fast_runs_the_backend_it_reports(backend, monkeypatch):
    """The backend fast_backend() names is the one whose forward and backward run."""
    calls = []
    for module in (_cscan, _chunked):
        for name in ("forward", "backward"):
            original = getattr(module, name)
            spy = lambda *a, _f=original, _m=module.__name__, _n=name: calls.append((_m, _n)) or _f(*a)  # noqa: E731
            monkeypatch.setattr(module, name, spy)
    inputs = make_inputs(2, 8, 12, 4)
    out, last, grads = run(selective_scan_fast, inputs, True)
    module = "sigma_lightning.ops._cscan" if backend.startswith("c") else "sigma_lightning.ops._chunked"
    assert calls == [(module, "forward"), (module, "backward")]


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )


def test_c_build_goes_to_the_kernel_cache(tmp_path):
    """A fresh process builds into cache_dir("kernels") under $SIGMA_LIGHTNING_CACHE: the library,
    its manifest, no half-written leftovers."""
    code = (
        "from sigma_lightning.ops.selective_scan import fast_backend; from sigma_lightning.paths import cache_dir;"
        "print(fast_backend('cpu'), cache_dir('kernels'))"
    )
    res = _python(code, SIGMA_LIGHTNING_CACHE=str(tmp_path), PYTHONPATH=REPO, TMPDIR=str(tmp_path))
    if res.returncode == 0 and res.stdout.split()[0] == "torch":
        pytest.skip("no working C compiler here")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["c", str(tmp_path / "kernels")]
    built = sorted(p.name for p in (tmp_path / "kernels").iterdir())
    assert len(built) == 2 and built[0].endswith(".json") and built[1] == built[0].replace(".json", ".so")


def test_no_compiler_falls_back_with_one_warning(tmp_path):
    code = "\n".join([
        "import warnings, torch",
        "from sigma_lightning.ops.selective_scan import fast_backend, selective_scan_fast",
        "x = torch.randn(1, 3, 5)",
        "with warnings.catch_warnings(record=True) as w:",
        "    warnings.simplefilter('always')",
        "    b = fast_backend('cpu'); fast_backend('cpu')",
        "    y = selective_scan_fast(x, x.abs(), -torch.ones(3, 2), torch.randn(1, 2, 5), torch.randn(1, 2, 5))",
        "print(b, len(w), tuple(y.shape))",
        "print(w[0].message)",
    ])  # fmt: skip
    env = dict(SIGMA_LIGHTNING_CACHE=str(tmp_path), CC="false", PYTHONPATH=REPO, TMPDIR=str(tmp_path))
    res = _python(code, **env)
    assert res.returncode == 0, res.stderr
    first, message = res.stdout.split("\n", 1)
    assert first.split() == ["torch", "1", "(1,", "3,", "5)"]
    assert "`false --version` failed" in message and "python -m sigma_lightning.ops.build" in message
