import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sigma_lightning.models.echomamba4rec import EchoMamba4Rec
from sigma_lightning.models.mamba4rec import Mamba4Rec
from sigma_lightning.models.sigma import SIGMA

D = 16
TINY = dict(hidden_size=D, d_state=4, scan_impl="auto")
BACKBONES = {
    "mamba4rec": lambda **kw: Mamba4Rec(**TINY, **kw),
    "echo": lambda **kw: EchoMamba4Rec(**TINY, filter_len=32, **kw),
    "sigma": lambda **kw: SIGMA(**TINY, **{"flip_range": 2, **kw}),
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


def padded(histories: list[list[int]], length: int) -> torch.Tensor:
    """Left-aligned padding (docs/architecture.md): real items first, zeros after."""
    out = torch.zeros(len(histories), length, dtype=torch.long)
    for row, items in enumerate(histories):
        out[row, : len(items)] = torch.tensor(items)
    return out


def represent(backbone: nn.Module, emb: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    return backbone(emb(ids), ids != 0)  # (B, D)


def variants():
    yield from ((name, make, {}) for name, make in BACKBONES.items())
    yield from ((f"sigma-{name}", BACKBONES["sigma"], kw) for name, kw in SIGMA_VARIANTS.items())


@pytest.mark.parametrize("name, make, kwargs", list(variants()), ids=[v[0] for v in variants()])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_representation_does_not_depend_on_padding(name, make, kwargs, num_layers):
    torch.manual_seed(0)
    backbone = make(num_layers=num_layers, **kwargs).eval()
    emb = nn.Embedding(20, D, padding_idx=0)
    with torch.no_grad():
        short, long = (represent(backbone, emb, padded(HISTORIES, L)) for L in (12, 20))
    assert short.shape == (len(HISTORIES), D) and torch.isfinite(short).all()
    torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, make, kwargs", list(variants()), ids=[v[0] for v in variants()])
def test_every_parameter_gets_a_gradient(name, make, kwargs):
    torch.manual_seed(0)
    backbone = make(dropout=0.0, **kwargs)
    emb = nn.Embedding(20, D, padding_idx=0)
    rep = represent(backbone, emb, padded(HISTORIES, 12))
    F.cross_entropy(rep @ emb.weight.T, torch.tensor([1, 2, 3, 4])).backward()
    dead = {n for n, p in backbone.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
    assert dead == {n for n, _ in backbone.named_parameters() if n.endswith(NO_GRADIENT_BY_DESIGN.get(name, "-"))}


def test_sigma_ablations_remove_their_parameters_and_change_the_output():
    torch.manual_seed(0)
    full = SIGMA(**TINY, flip_range=2).eval()
    # At the RecBole init (weights N(0, 0.02)) the Mamba branches are nearly silent beside the
    # residual (a flip changes the output by ~1e-6): give every branch a say first.
    with torch.no_grad():
        for param in full.parameters():
            param.add_(0.2 * torch.randn_like(param))
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
            assert not torch.allclose(represent(variant, emb, ids), reference, atol=1e-4), kwargs


def test_residual_defaults_and_can_be_set():
    """Mamba4Rec follows its authors (a layer's input is added before the LayerNorm only with several
    layers); SIGMA adds it by default (docs/results.md: the authors' one-layer rule learns far slower).
    `residual` overrides both: same parameters, different output."""
    mamba4rec, sigma = BACKBONES["mamba4rec"], BACKBONES["sigma"]
    assert [layer.residual for layer in mamba4rec(num_layers=1).layers] == [False]
    assert [layer.residual for layer in mamba4rec(num_layers=2).layers] == [True, True]
    assert [layer.residual for layer in sigma(num_layers=1).layers] == [True]
    for make in (mamba4rec, sigma):
        assert [layer.residual for layer in make(num_layers=2, residual=False).layers] == [False, False]
        torch.manual_seed(0)
        plain, with_input = make(num_layers=1, residual=False).eval(), make(num_layers=1, residual=True).eval()
        with_input.load_state_dict(plain.state_dict())  # strict: the residual adds no parameters
        emb = nn.Embedding(20, D, padding_idx=0)
        ids = padded(HISTORIES, 12)
        with torch.no_grad():
            assert not torch.allclose(represent(plain, emb, ids), represent(with_input, emb, ids), atol=1e-3)


def test_partial_flip_variant_equals_whole_flip_when_r_is_zero():
    torch.manual_seed(0)
    a = SIGMA(**TINY, flip_range=0).eval()
    b = SIGMA(**TINY, flip_range=5, partial_flip=False).eval()
    b.load_state_dict(a.state_dict())
    emb = nn.Embedding(20, D, padding_idx=0)
    ids = padded(HISTORIES, 12)
    with torch.no_grad():
        torch.testing.assert_close(represent(a, emb, ids), represent(b, emb, ids))


@pytest.mark.parametrize("make, blocks", [
    (BACKBONES["mamba4rec"], ("layers.0.mamba",)),
    (BACKBONES["echo"], ("layers.0.bimamba.mamba_forward", "layers.0.bimamba.mamba_backward")),
    (BACKBONES["sigma"], ("layers.0.mamba", "layers.0.mamba_flipped")),
])
def test_mamba_blocks_use_mamba_ssm_parameter_names(make, blocks):
    state = make(num_layers=1).state_dict()
    for block in blocks:
        assert {k[len(block) + 1:] for k in state if k.startswith(block + ".")} == MAMBA_PARAMS, block


@pytest.mark.parametrize("make", BACKBONES.values(), ids=BACKBONES.keys())
def test_init_schemes(make):
    torch.manual_seed(0)
    recbole, mamba = make(init="recbole"), make(init="mamba")
    dt_bias = [p for n, p in recbole.named_parameters() if n.endswith("dt_proj.bias")]
    assert dt_bias and all(torch.all(b == 0) for b in dt_bias)  # RecBole init overwrites Mamba's dt init
    dt_bias = [p for n, p in mamba.named_parameters() if n.endswith("dt_proj.bias")]
    assert all(b.min() < -2 for b in dt_bias)  # softplus^-1(dt), dt in [1e-3, 0.1]
    for model in (recbole, mamba):
        others = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and "mamba" not in n]
        assert all(m.weight.std() < 0.03 and torch.all(m.bias == 0) for m in others)
    with pytest.raises(ValueError, match="init"):
        make(init="xavier")


def test_echo_rejects_sequences_longer_than_its_filter():
    backbone = EchoMamba4Rec(**TINY, filter_len=8)
    with pytest.raises(ValueError, match="filter_len"):
        backbone(torch.zeros(2, 9, D), torch.ones(2, 9, dtype=torch.bool))


def test_sigma_ablation_switches_parse_from_yaml_style_config():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_subclass_arguments(nn.Module, "backbone")
    config = {"backbone": {"class_path": "sigma_lightning.models.sigma.SIGMA",
                           "init_args": {**TINY, "fe_gru": False, "flip_range": 3, "init": "mamba"}}}
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in 4.49
    backbone = instantiate(parser.parse_object(config)).backbone
    assert isinstance(backbone, SIGMA) and backbone.layers[0].fe_gru is None
    assert backbone.layers[0].remaining == 3


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
