"""Properties every Mamba backbone and SIGMA variant must have: padding never changes what a real
position computes (branch by branch, layer by layer, and the representation), every parameter
learns, the ablation switches do what they say, mamba_ssm parameter names, init schemes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from sigma_lightning.models import SIGMA, EchoMamba4Rec, Mamba4Rec, MambaConfig
from sigma_lightning.models.echomamba4rec import BiMamba, EchoMambaLayer
from sigma_lightning.models.mamba4rec import Mamba4RecLayer
from sigma_lightning.models.sigma import SigmaLayer
from tests.padding import assert_padding_invariant, padded, perturb_, probe

D = 16
TINY = dict(hidden_size=D, mamba=MambaConfig(d_state=4))
BACKBONES = {
    "mamba4rec": lambda **kw: Mamba4Rec(**{**TINY, **kw}),
    "echo": lambda **kw: EchoMamba4Rec(**{**TINY, "filter_len": 32, **kw}),
    "sigma": lambda **kw: SIGMA(**{**TINY, "flip_range": 2, **kw}),
}
SIGMA_VARIANTS = {
    "whole_flip": dict(partial_flip=False),
    "no_ds_gate": dict(ds_gate=False),
    "no_fe_gru": dict(fe_gru=False),
    "r0": dict(flip_range=0),
    "r_beyond_n": dict(flip_range=100),
    "other_kernels": dict(gate_kernel_size=5, gru_kernel_size=1, gru_bias=False),
    "authors_one_layer": dict(residual=False),
}
# A reverse scan over all real items reaches the last real item at its first step, from a zero state:
# there A never enters the output, so its A_log gets exactly no gradient from the representation.
NO_GRADIENT_BY_DESIGN = {"echo": ("bimamba.mamba_backward.A_log",), "sigma-whole_flip": ("mamba_flipped.A_log",),
                         "sigma-r0": ("mamba_flipped.A_log",)}
MAMBA_PARAMS = {"in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
                "dt_proj.bias", "A_log", "D", "out_proj.weight"}  # mamba_ssm's names
HISTORIES = [[3, 7, 9], [1], [4, 4, 8, 2, 11, 6, 5, 9, 10, 12], [5, 2, 13, 14, 1, 3]]


def represent(backbone: nn.Module, emb: nn.Embedding, ids: Tensor) -> Tensor:
    return backbone(emb(ids), ids != 0)  # (B, D)


def variants():
    yield from ((name, make, {}) for name, make in BACKBONES.items())
    yield from ((f"sigma-{name}", BACKBONES["sigma"], kw) for name, kw in SIGMA_VARIANTS.items())


VARIANTS = list(variants())
VARIANT_IDS = [v[0] for v in VARIANTS]

# ---- padding invariance, branch by branch ---------------------------------------------------------
# What each block computes on the arguments it receives, every output (B, L, D) on the input's positions.
BRANCHES = {
    SigmaLayer: lambda layer, x, m: {
        "mamba_branch": layer.mamba_branch(x, m),
        "flipped_branch": layer.flipped_branch(x, m),
        **({"fe_gru": layer.fe_gru(x, m)} if layer.fe_gru is not None else {}),
        "output": layer(x, m),
    },
    BiMamba: lambda block, x, m: {"forward_branch": block.forward_branch(x, m),
                                  "backward_branch": block.backward_branch(x, m)},  # fmt: skip
    EchoMambaLayer: lambda layer, x, m: {"filter": layer.filter(x, m), "output": layer(x, m)},
    Mamba4RecLayer: lambda layer, x, m: {"mamba": layer.mamba(x, m), "output": layer(x, m)},
}


def expected_probes(name: str, num_layers: int) -> set[str]:
    """The branches the probe must find: the test is void if a block escapes it."""
    per_layer = {
        "mamba4rec": ("mamba", "output"),
        "echo": ("filter", "output", "bimamba/forward_branch", "bimamba/backward_branch"),
    }.get(name, ("mamba_branch", "flipped_branch", "output") + (() if name == "sigma-no_fe_gru" else ("fe_gru",)))
    return {"representation"} | {
        f"layers.{i}.{key}" if key.startswith("bimamba") else f"layers.{i}/{key}"
        for i in range(num_layers) for key in per_layer
    }  # fmt: skip


@pytest.mark.parametrize("name, make, kwargs", VARIANTS, ids=VARIANT_IDS)
# No shrinking: a failure is reported as drawn (shrinking a backbone failure takes minutes).
@settings(max_examples=8, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate])
@given(
    histories=st.lists(st.lists(st.integers(1, 19), min_size=1, max_size=11), min_size=1, max_size=4),
    extra=st.lists(st.integers(0, 9), min_size=1, max_size=2),
    num_layers=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_representation_does_not_depend_on_padding(name, make, kwargs, histories, extra, num_layers, seed):
    """Perturbed parameters (every branch has a say), random histories, several paddings: each
    block's branches at the real positions, each layer's output, and the representation equal those
    of each history computed alone."""
    torch.manual_seed(seed)
    backbone = perturb_(make(num_layers=num_layers, **kwargs).eval(), seed)
    longest = max(map(len, histories))
    lengths = sorted({longest + e for e in extra})
    one_item = probe(backbone, BRANCHES, torch.zeros(1, 1, D), torch.ones(1, 1, dtype=torch.bool))
    assert expected_probes(name, num_layers) <= one_item.keys()
    assert_padding_invariant(backbone, BRANCHES, histories, lengths, seed)


# ---- gradients, ablations, residual ---------------------------------------------------------------
@pytest.mark.parametrize("name, make, kwargs", VARIANTS, ids=VARIANT_IDS)
def test_every_parameter_gets_a_gradient(name, make, kwargs):
    torch.manual_seed(0)
    backbone = make(dropout=0.0, **kwargs)
    emb = nn.Embedding(20, D, padding_idx=0)
    rep = represent(backbone, emb, padded(HISTORIES, 12))
    F.cross_entropy(rep @ emb.weight.T, torch.tensor([1, 2, 3, 4])).backward()
    dead = {n for n, p in backbone.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
    assert dead == {n for n, _ in backbone.named_parameters() if n.endswith(NO_GRADIENT_BY_DESIGN.get(name, "-"))}


def perturbed_sigma(**kwargs) -> SIGMA:
    torch.manual_seed(0)
    return perturb_(SIGMA(**{**TINY, "flip_range": 2, **kwargs}).eval(), seed=0)


def test_sigma_ablations_remove_their_parameters_and_change_the_output():
    full = perturbed_sigma()  # every branch has a say
    keys = set(full.state_dict())
    emb = nn.Embedding(20, D, padding_idx=0)
    ids = padded(HISTORIES, 12)
    with torch.no_grad():
        reference = represent(full, emb, ids)
        for kwargs, removed in [
            (dict(partial_flip=False), ()),
            (dict(flip_range=0), ()),
            (dict(ds_gate=False), ("layers.0.gate.",)),
            (dict(fe_gru=False), ("layers.0.fe_gru.", "layers.0.gru_weight")),
        ]:
            variant = SIGMA(**{**TINY, "flip_range": 2, **kwargs}).eval()
            expected = {k for k in keys if not k.startswith(removed)} if removed else keys
            assert set(variant.state_dict()) == expected, kwargs
            variant.load_state_dict({k: v for k, v in full.state_dict().items() if k in expected})
            assert not torch.allclose(represent(variant, emb, ids), reference, atol=1e-3), kwargs


@torch.no_grad()
def test_partial_flip_false_is_the_whole_flip_r0_and_differs_from_r():
    """partial_flip=False computes r = 0 whatever flip_range says; with the same weights r = 2 is
    another model (so the equality is not that of two near-silent branches)."""
    r0, whole, r2 = perturbed_sigma(flip_range=0), perturbed_sigma(flip_range=5, partial_flip=False), perturbed_sigma()
    emb = nn.Embedding(20, D, padding_idx=0)
    ids = padded(HISTORIES, 12)
    torch.testing.assert_close(represent(whole, emb, ids), represent(r0, emb, ids))
    assert not torch.allclose(represent(r2, emb, ids), represent(r0, emb, ids), atol=1e-3)


@pytest.mark.parametrize("make", [BACKBONES["mamba4rec"], BACKBONES["sigma"]], ids=["mamba4rec", "sigma"])
def test_residual_means_the_same_in_every_backbone(make):
    """`residual` defaults to True whatever num_layers is (the authors' one-layer rule is
    `residual: false`, written out in the recipes); it adds no parameters and changes the output."""
    for num_layers in (1, 2):
        assert [layer.residual for layer in make(num_layers=num_layers).layers] == [True] * num_layers
        assert [layer.residual for layer in make(num_layers=num_layers, residual=False).layers] == [False] * num_layers
    torch.manual_seed(0)
    plain, with_input = make(num_layers=1, residual=False).eval(), make(num_layers=1).eval()
    with_input.load_state_dict(plain.state_dict())  # strict: the residual adds no parameters
    emb = nn.Embedding(20, D, padding_idx=0)
    ids = padded(HISTORIES, 12)
    with torch.no_grad():
        assert not torch.allclose(represent(plain, emb, ids), represent(with_input, emb, ids), atol=1e-3)


# ---- parameter names, init, settings --------------------------------------------------------------
@pytest.mark.parametrize("make, blocks", [
    (BACKBONES["mamba4rec"], ("layers.0.mamba",)),
    (BACKBONES["echo"], ("layers.0.bimamba.mamba_forward", "layers.0.bimamba.mamba_backward")),
    (BACKBONES["sigma"], ("layers.0.mamba", "layers.0.mamba_flipped")),
])  # fmt: skip
def test_mamba_blocks_use_mamba_ssm_parameter_names(make, blocks):
    state = make(num_layers=1).state_dict()
    for block in blocks:
        assert {k[len(block) + 1:] for k in state if k.startswith(block + ".")} == MAMBA_PARAMS, block


@pytest.mark.parametrize("make", BACKBONES.values(), ids=BACKBONES.keys())
def test_every_mamba_block_gets_the_backbones_mamba_config(make):
    config = MambaConfig(d_state=3, d_conv=2, expand=1, scan_impl="reference")
    blocks = [m for m in make(num_layers=2, mamba=config).modules() if type(m).__name__ == "Mamba"]
    assert len(blocks) >= 2 and all(block.config == config for block in blocks)
    assert all(block.A_log.shape == (D, 3) and block.conv1d.kernel_size == (2,) for block in blocks)


@pytest.mark.parametrize("make", BACKBONES.values(), ids=BACKBONES.keys())
def test_init_schemes(make):
    torch.manual_seed(0)
    recbole, mamba = make(init="recbole"), make(init="mamba")
    dt_bias = [p for n, p in recbole.named_parameters() if n.endswith("dt_proj.bias")]
    assert dt_bias and all(torch.all(b == 0) for b in dt_bias)  # RecBole init overwrites Mamba's dt init
    dt_bias = [p for n, p in mamba.named_parameters() if n.endswith("dt_proj.bias")]
    assert dt_bias and all(b.min() < -2 for b in dt_bias)  # softplus^-1(dt), dt in [1e-3, 0.1]
    for model in (recbole, mamba):
        others = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and "mamba" not in n]
        assert others and all(m.weight.std() < 0.03 and torch.all(m.bias == 0) for m in others)


def test_echo_rejects_sequences_longer_than_its_filter():
    backbone = EchoMamba4Rec(**TINY, filter_len=8)
    with pytest.raises(ValueError, match="filter_len"):
        backbone(torch.zeros(2, 9, D), torch.ones(2, 9, dtype=torch.bool))


def test_sigma_settings_parse_from_yaml_style_config():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_subclass_arguments(nn.Module, "backbone")
    init_args = {"hidden_size": D, "mamba": {"d_state": 4, "expand": 1}, "fe_gru": False, "flip_range": 3,
                 "init": "mamba"}  # fmt: skip
    config = {"backbone": {"class_path": "sigma_lightning.models.sigma.SIGMA", "init_args": init_args}}
    backbone = parser.instantiate(parser.parse_object(config)).backbone
    assert isinstance(backbone, SIGMA) and backbone.layers[0].fe_gru is None
    assert backbone.layers[0].remaining == 3
    assert backbone.layers[0].mamba.config == MambaConfig(d_state=4, expand=1)  # the rest: defaults


@pytest.mark.parametrize("make", BACKBONES.values(), ids=BACKBONES.keys())
def test_overfits_a_tiny_next_item_task(make):
    """Next item = a fixed function of the last two items; a few dozen Adam steps must cut the loss."""
    torch.manual_seed(0)
    n_items, L = 12, 8
    lengths = torch.randint(2, L + 1, (32,))
    seqs = torch.randint(1, n_items + 1, (32, L)) * (torch.arange(L) < lengths.unsqueeze(1))
    last, prev = (seqs.gather(1, (lengths - k).unsqueeze(1)).squeeze(1) for k in (1, 2))
    target = (last + 2 * prev) % n_items + 1  # (B,)
    backbone = make(dropout=0.0, num_layers=1)
    emb = nn.Embedding(n_items + 1, D, padding_idx=0)
    nn.init.normal_(emb.weight, std=0.02)
    opt = torch.optim.Adam([*backbone.parameters(), *emb.parameters()], lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(represent(backbone, emb, seqs) @ emb.weight[1:].T, target - 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::8]
