"""The Mamba block: mamba_ssm parameter layout and init, padding invariance, fast vs reference,
autocast, dispatch errors, and (on a CUDA machine with mamba_ssm) the CUDA kernels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sigma_lightning import Mamba
from sigma_lightning.ops.backend import c_kernel_available
from sigma_lightning.ops.selective_scan import cuda_kernels, selective_scan, selective_scan_reference, use_fast_backend

# mamba_ssm.modules.mamba_simple.Mamba(d_model=64, d_state=32, d_conv=4, expand=2): d_inner 128,
# dt_rank ceil(64 / 16) = 4, x_proj out dt_rank + 2 * d_state = 68.
PAPER = dict(d_model=64, d_state=32, d_conv=4, expand=2)
MAMBA_SSM_STATE = {
    "A_log": (128, 32),
    "D": (128,),
    "in_proj.weight": (256, 64),
    "conv1d.weight": (128, 1, 4),
    "conv1d.bias": (128,),
    "x_proj.weight": (68, 128),
    "dt_proj.weight": (128, 4),
    "dt_proj.bias": (128,),
    "out_proj.weight": (64, 128),
}


def has_mamba_ssm() -> bool:
    return cuda_kernels().selective_scan_fn is not None


def test_state_dict_matches_mamba_ssm():
    block = Mamba(**PAPER)
    assert {k: tuple(v.shape) for k, v in block.state_dict().items()} == MAMBA_SSM_STATE
    assert block.A_log.dtype == block.D.dtype == torch.float32


def test_mamba_ssm_init():
    torch.manual_seed(0)
    block = Mamba(**PAPER, dt_min=0.001, dt_max=0.1)
    assert torch.equal(block.A_log, torch.log(torch.arange(1, 33, dtype=torch.float32)).expand(128, 32))
    assert torch.equal(block.D, torch.ones(128))
    dt = F.softplus(block.dt_proj.bias)
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert block.dt_proj.weight.abs().max() <= 4**-0.5
    assert block.conv1d.bias is not None and block.in_proj.bias is None and block.out_proj.bias is None


@pytest.mark.skipif(not has_mamba_ssm(), reason="mamba_ssm does not import here (needs its CUDA build)")
def test_state_dict_round_trip_with_mamba_ssm():
    from mamba_ssm import Mamba as MambaSSM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    ours, theirs = Mamba(**PAPER).to(device), MambaSSM(**PAPER).to(device)
    theirs.load_state_dict(ours.state_dict())  # strict: same names and shapes
    ours2 = Mamba(**PAPER).to(device)
    ours2.load_state_dict(theirs.state_dict())
    for k, v in ours.state_dict().items():
        assert torch.equal(ours2.state_dict()[k], v)
    if device == "cuda":
        x = torch.randn(2, 20, 64, device=device)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)


def padded_batch(seqs: list[torch.Tensor], L: int, offsets: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sequence placed at its offset inside L positions; garbage (not zeros) at the padding."""
    x = torch.randn(len(seqs), L, seqs[0].shape[-1])
    mask = torch.zeros(len(seqs), L, dtype=torch.bool)
    for i, (s, o) in enumerate(zip(seqs, offsets)):
        x[i, o : o + len(s)] = s
        mask[i, o : o + len(s)] = True
    return x, mask


@pytest.fixture(params=["c", "torch"])
def fast_backend(request):
    """Runs a test once per backend of the fast scan."""
    if request.param == "c" and not c_kernel_available():
        pytest.skip("the C scan could not be built here (no C compiler?)")
    with use_fast_backend(request.param):
        yield request.param


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_padding_invariance(impl, fast_backend):
    torch.manual_seed(0)
    block = Mamba(d_model=16, d_state=8, scan_impl=impl.split("-")[0])
    for p in block.parameters():  # move away from init so conv bias, D and z all matter
        p.data.add_(0.1 * torch.randn_like(p))
    seqs = [torch.randn(n, 16) for n in (5, 1, 9, 3)]
    alone = [block(s[None])[0] for s in seqs]  # each sequence by itself, no padding, no mask
    layouts = {
        "right": (12, [0, 0, 0, 0]),
        "left": (12, [12 - len(s) for s in seqs]),
        "middle": (14, [2, 7, 1, 5]),
        "left-long": (30, [30 - len(s) for s in seqs]),
    }
    for name, (L, offsets) in layouts.items():
        x, mask = padded_batch(seqs, L, offsets)
        out = block(x, mask)
        for i, (s, o) in enumerate(zip(seqs, offsets)):
            torch.testing.assert_close(out[i, o : o + len(s)], alone[i], rtol=1e-5, atol=1e-6, msg=name)
        assert (out[~mask] == 0).all(), name


def test_block_fast_equals_reference_with_gradients(fast_backend):
    torch.manual_seed(0)
    block = Mamba(d_model=32, d_state=16)
    x = torch.randn(3, 11, 32, requires_grad=True)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 8:] = False
    mask[2, :4] = False
    w = torch.randn(3, 11, 32)
    results = []
    for impl in ("reference", "fast"):
        block.scan_impl = impl
        for m in (None, mask):
            loss = (block(x, m) * w).sum()
            grads = torch.autograd.grad(loss, [x, *block.parameters()])
            results.append((loss.detach(), grads))
    names = ["input", *(n for n, _ in block.named_parameters())]
    for (loss_r, grads_r), (loss_f, grads_f) in zip(results[:2], results[2:]):
        torch.testing.assert_close(loss_f, loss_r, rtol=1e-5, atol=1e-5)
        for name, g_f, g_r in zip(names, grads_f, grads_r):
            scale = g_r.abs().max().item() + 1e-6
            torch.testing.assert_close(g_f, g_r, rtol=1e-5, atol=1e-5 * scale, msg=name)


def test_autocast_bf16_on_cpu():
    torch.manual_seed(0)
    block = Mamba(d_model=32, d_state=16)
    x = torch.randn(2, 10, 32)
    ref = block(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=5e-2, atol=5e-2)
    out.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())


def test_forcing_cuda_where_it_cannot_run():
    if not has_mamba_ssm():  # known at construction: the kernels will never import
        with pytest.raises(RuntimeError) as err:
            Mamba(**PAPER, scan_impl="cuda")
    else:  # kernels exist, but the input is on CPU
        with pytest.raises(RuntimeError) as err:
            Mamba(**PAPER, scan_impl="cuda")(torch.randn(1, 3, 64))
    msg = str(err.value)
    assert "scan_impl='cuda'" in msg and "pip install sigma-lightning[cuda]" in msg and "scan_impl='auto'" in msg
    with pytest.raises(ValueError, match="scan_impl"):
        Mamba(**PAPER, scan_impl="fastest")


@pytest.mark.cuda
@pytest.mark.skipif(
    not (torch.cuda.is_available() and has_mamba_ssm()), reason="needs a CUDA GPU and mamba_ssm's kernels"
)
def test_cuda_kernels_equal_reference():
    torch.manual_seed(0)
    b, d, L, n = 2, 64, 37, 16
    u, delta, z = (torch.randn(b, d, L, device="cuda") for _ in range(3))
    A = -torch.exp(torch.randn(d, n, device="cuda"))
    B, C = torch.randn(b, n, L, device="cuda"), torch.randn(b, n, L, device="cuda")
    D, bias = torch.randn(d, device="cuda"), torch.randn(d, device="cuda")
    args = (u, delta, A, B, C, D, z, bias, True, True)
    out_c, last_c = selective_scan(*args, impl="cuda")
    out_r, last_r = selective_scan_reference(*args)
    torch.testing.assert_close(out_c, out_r, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last_c, last_r, rtol=1e-4, atol=1e-4)
    # the block: cuda path (with causal_conv1d where installed) equals the reference path, with padding
    block = Mamba(**PAPER).cuda()
    x = torch.randn(3, 20, 64, device="cuda")
    mask = torch.ones(3, 20, dtype=torch.bool, device="cuda")
    mask[0, 15:] = False
    mask[1, :7] = False
    block.scan_impl = "cuda"
    out_cuda = block(x, mask)
    block.scan_impl = "reference"
    torch.testing.assert_close(out_cuda, block(x, mask), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_equals_mambapy_with_the_same_weights(impl):
    """mambapy (pure PyTorch, written independently of this package) has mamba_ssm's parameter
    names: our state_dict loads into it strictly, and both compute the same outputs and gradients."""
    mambapy = pytest.importorskip("mambapy.mamba", reason="mambapy is in the test extra: pip install -e .[test]")
    torch.manual_seed(0)
    ours = Mamba(d_model=16, d_state=8, d_conv=4, expand=2, scan_impl=impl)
    theirs = mambapy.MambaBlock(mambapy.MambaConfig(d_model=16, n_layers=1, d_state=8, expand_factor=2, d_conv=4, pscan=False))
    theirs.load_state_dict(ours.state_dict())  # strict: same names and shapes
    x = torch.randn(3, 13, 16, requires_grad=True)
    y_ours, y_theirs = ours(x), theirs(x)
    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(y_ours)
    grads_ours = torch.autograd.grad(y_ours, [x, *ours.parameters()], upstream)
    grads_theirs = torch.autograd.grad(y_theirs, [x, *theirs.parameters()], upstream)
    names = ["x", *(name for name, _ in ours.named_parameters())]
    assert names[1:] == [name for name, _ in theirs.named_parameters()]
    for name, g_ours, g_theirs in zip(names, grads_ours, grads_theirs):
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"d{n}: {m}")
