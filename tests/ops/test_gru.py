"""The GRU with the C time step (ops/gru.py, csrc/gru.c) against torch's nn.GRU and the plain
reference: outputs, last states and every gradient; which path runs where; opcheck and compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sigma_lightning.ops import gru as gru_ops
from sigma_lightning.ops.backend import c_kernel_available, use_fast_backend
from sigma_lightning.ops.gru import GRU, gru_layer_fwd, gru_layer_reference

needs_c = pytest.mark.skipif(not c_kernel_available(), reason="the C kernels could not be built here")

# (input size, hidden size, bias, layers, batch_first, batch, length): SIGMA's FE-GRU, GRU4Rec's
# (no bias, wider state), two layers, time major, widths that are not a multiple of a vector
# register, one step, one row.
CASES = [
    (16, 16, True, 1, True, 4, 9),
    (12, 24, False, 1, True, 3, 7),
    (5, 7, True, 2, True, 3, 6),
    (6, 33, True, 1, False, 2, 5),
    (4, 1, False, 1, True, 2, 3),
    (8, 8, True, 1, True, 5, 1),
    (8, 8, True, 1, True, 1, 4),
]


def twins(case, seed: int = 0) -> tuple[GRU, nn.GRU]:
    """Our GRU and torch's with the same parameters."""
    i, h, bias, layers, batch_first, _, _ = case
    torch.manual_seed(seed)
    ours = GRU(i, h, num_layers=layers, bias=bias, batch_first=batch_first)
    theirs = nn.GRU(i, h, num_layers=layers, bias=bias, batch_first=batch_first)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def run(module: nn.GRU, x: torch.Tensor, seed: int = 1):
    """Output, last states and the gradients of a loss that reads both."""
    x = x.detach().requires_grad_()
    out, last = module(x)
    g = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=g)).sum() + (last * torch.randn(last.shape, generator=g)).sum()
    return out, last, torch.autograd.grad(loss, [x, *module.parameters()])


def inputs(case, seed: int = 2) -> torch.Tensor:
    i, _, _, _, batch_first, batch, length = case
    shape = (batch, length, i) if batch_first else (length, batch, i)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def assert_runs_close(got, want) -> None:
    for a, b in zip(got[:2], want[:2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b, name in zip(got[2], want[2], ["x", "w_ih", "w_hh", "b_ih", "b_hh"] * 2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"d{name}: {m}")


@needs_c
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_c_path_equals_torch_gru(case):
    ours, theirs = twins(case)
    x = inputs(case)
    with use_fast_backend("c"):
        got = run(ours, x)
    assert_runs_close(got, run(theirs, x))


@needs_c
def test_c_path_on_two_threads():
    """Each step's rows split over two threads: the same as torch's."""
    case = (8, 16, True, 1, True, 160, 4)
    ours, theirs = twins(case)
    x = inputs(case)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert gru_ops._cgru._cscan.n_ranges(160, 16 * gru_ops._cgru._PER_UNIT) > 1  # split
        with use_fast_backend("c"):
            got = run(ours, x)
    finally:
        torch.set_num_threads(before)
    assert_runs_close(got, run(theirs, x))


@pytest.mark.parametrize("bias", [True, False])
def test_reference_equals_torch_gru(bias):
    """The plain-ops reference is torch's GRU, the ground truth the C path is held to."""
    _, theirs = twins((6, 5, bias, 1, True, 3, 8))
    x = inputs((6, 5, bias, 1, True, 3, 8))
    params = [theirs.weight_ih_l0, theirs.weight_hh_l0] + ([theirs.bias_ih_l0, theirs.bias_hh_l0] if bias else [])
    torch.testing.assert_close(gru_layer_reference(x, *params), theirs(x)[0], rtol=1e-5, atol=1e-6)


@needs_c
def test_dropout_between_layers_draws_as_the_reference():
    """In training, the output of every layer but the last is dropped out (nn.GRU's `dropout`); the
    mask is drawn on the time-major states, in the order the reference below draws it."""
    ours = GRU(5, 6, num_layers=2, dropout=0.5, batch_first=True).train()
    x = torch.randn(3, 7, 5)
    torch.manual_seed(3)
    with use_fast_backend("c"):
        got = ours(x)[0]
    torch.manual_seed(3)
    first = gru_layer_reference(x, ours.weight_ih_l0, ours.weight_hh_l0, ours.bias_ih_l0, ours.bias_hh_l0)
    dropped = F.dropout(first.transpose(0, 1).contiguous(), 0.5).transpose(0, 1)
    want = gru_layer_reference(dropped, ours.weight_ih_l1, ours.weight_hh_l1, ours.bias_ih_l1, ours.bias_hh_l1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, ours.eval()(x)[0])  # the dropout did something


@needs_c
def test_only_the_output_or_only_the_last_state_reaches_the_loss():
    """A loss of one output alone (the other's gradient absent), as SIGMA's last layer reads one
    step per row: the gradients still equal torch's."""
    case = (8, 8, True, 1, True, 3, 6)
    ours, theirs = twins(case)
    x = inputs(case)
    for pick in (lambda out, last: out[:, -2].sum(), lambda out, last: last.pow(2).sum()):
        grads = []
        for module, backend in ((ours, "c"), (theirs, "torch")):
            xx = x.clone().requires_grad_()
            with use_fast_backend(backend):
                grads.append(torch.autograd.grad(pick(*module(xx)), [xx, *module.parameters()]))
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_which_path_runs(monkeypatch):
    """The C step for the plain float32 CPU call with the C backend; nn.GRU's forward for the torch
    backend, a start state, bfloat16, autocast, unbatched input and two directions."""
    calls = []
    real = gru_ops._cgru.forward
    monkeypatch.setattr(gru_ops._cgru, "forward", lambda *a: calls.append(1) or real(*a))
    module, x = GRU(4, 3, batch_first=True), torch.randn(2, 5, 4)
    with use_fast_backend("torch"):
        module(x)
    assert calls == []
    if not c_kernel_available():
        return
    with use_fast_backend("c"):
        module(x)
        assert calls == [1]
        module(x, torch.zeros(1, 2, 3))
        module.to(torch.bfloat16)(x.to(torch.bfloat16))
        module.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            module(x)
        module(x[0])
        GRU(4, 3, batch_first=True, bidirectional=True)(x)
    assert calls == [1]


@needs_c
def test_state_dict_is_torch_grus():
    """Checkpoints of either load into the other."""
    ours, theirs = twins((4, 3, True, 2, True, 1, 1))
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    nn.GRU(4, 3, num_layers=2, batch_first=True).load_state_dict(ours.state_dict())


@needs_c
def test_opcheck():
    x = torch.randn(5, 3, 4, requires_grad=True)  # (L, B, I)
    w_ih, w_hh = torch.randn(9, 4, requires_grad=True), torch.randn(9, 3, requires_grad=True)
    b_ih, b_hh = torch.randn(9, requires_grad=True), torch.randn(9, requires_grad=True)
    with use_fast_backend("c"):
        torch.library.opcheck(gru_layer_fwd, (x, w_ih, w_hh, b_ih, b_hh))
        torch.library.opcheck(gru_layer_fwd, (x, w_ih, w_hh, None, None))


@needs_c
def test_compiles_without_graph_breaks_to_the_eager_values():
    """Dynamo refuses any nn.GRU unless `allow_rnn` is set (then the module would graph-break into
    eager code); with it, ours traces whole through its custom ops."""
    module, x = GRU(4, 3, batch_first=True), torch.randn(2, 5, 4, requires_grad=True)

    def values_and_grads(fn):
        out = fn(x)
        return (out, *torch.autograd.grad(out.pow(2).sum(), [x, *module.parameters()]))

    fn = lambda x: module(x)[0]  # noqa: E731
    with use_fast_backend("c"), torch._dynamo.config.patch(allow_rnn=True):
        explained = torch._dynamo.explain(fn)(x)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
        compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
        for got, want in zip(values_and_grads(compiled), values_and_grads(fn)):
            torch.testing.assert_close(got, want)
