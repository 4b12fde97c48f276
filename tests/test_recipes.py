"""Every bundled recipe holds the papers' hyperparameters (the SIGMA paper's "Experiment Setting" and
appendix D; docs/models.md), builds its backbone, and parses through the CLI. Rules are written out
here, not taken from the generator."""

from pathlib import Path

import pytest
import torch
import yaml

from sigma_lightning import models
from sigma_lightning.cli import BUNDLED_CONFIGS, main
from sigma_lightning.data.datasets import REGISTRY
from sigma_lightning.models import MambaConfig

DATA_SETS = {"beauty": 50, "sports": 50, "games": 50, "yelp": 50, "ml-1m": 200, "ml-100k": 200}
# Each recipe trains on its named data set (downloaded on first use), not on a file path of ours.
NAMED_SETS = {"beauty": "amazon-beauty", "sports": "amazon-sports", "games": "amazon-games", "yelp": "yelp",
              "ml-1m": "ml-1m", "ml-100k": "ml-100k"}  # fmt: skip
LAYERS = {"SASRec": 2, "Mamba4Rec": 2, "SIGMA": 1, "EchoMamba4Rec": 1, "GRU4Rec": 1}
RECIPES = [BUNDLED_CONFIGS / f"{d}.yaml" for d in DATA_SETS]
RECIPES += [p for d in DATA_SETS for p in sorted((BUNDLED_CONFIGS / d).glob("*.yaml"))]
MAMBA_MODELS = ("SIGMA", "EchoMamba4Rec", "Mamba4Rec")


def test_every_data_set_has_a_recipe_per_backbone():
    for data in DATA_SETS:
        names = {p.stem for p in (BUNDLED_CONFIGS / data).glob("*.yaml")}
        assert names == {"sasrec", "gru4rec", "mamba4rec", "echomamba4rec", "sigma"}, data


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(BUNDLED_CONFIGS)))
def test_recipe_follows_the_papers(path: Path):
    config = yaml.safe_load(path.read_text())
    data_set = path.stem if path.parent == BUNDLED_CONFIGS else path.parent.name
    max_len, dropout = DATA_SETS[data_set], 0.2 if data_set.startswith("ml-") else 0.3
    backbone = config["model"]["backbone"]
    name, args = backbone["class_path"].rsplit(".", 1)[1], backbone["init_args"]
    assert config["data"]["max_seq_len"] == max_len and config["data"]["batch_size"] == 2048
    assert config["data"]["dataset"] == NAMED_SETS[data_set] in REGISTRY and "path" not in config["data"]
    assert config["data"]["min_user_interactions"] == config["data"]["min_item_interactions"] == 5
    assert config["optimizer"]["class_path"] == "torch.optim.Adam" and config["optimizer"]["init_args"]["lr"] == 1e-3
    assert args["hidden_size"] == 64 and args["dropout"] == dropout and args["num_layers"] == LAYERS[name]
    if name in MAMBA_MODELS:
        assert args["mamba"] == {"d_state": 32, "d_conv": 4, "expand": 2}
        args = {**args, "mamba": MambaConfig(**args["mamba"])}
    if name == "Mamba4Rec":  # the authors' rule, written out: the layer input is added only with 2+ layers
        assert args["residual"] is (args["num_layers"] > 1)
    if name == "SIGMA":  # the default model: every part on, r = 5, with the one-layer residual
        assert args["flip_range"] == 5 and args["residual"] is True
        assert args["partial_flip"] is args["ds_gate"] is args["fe_gru"] is True
    if name == "EchoMamba4Rec":
        assert args["filter_len"] >= 2 * max_len - 1
    if name == "SASRec":
        assert args["max_seq_len"] >= max_len and args["attn_dropout"] == dropout
    # the backbone builds from these arguments and maps a padded batch to one vector per user
    net = getattr(models, name)(**args)
    ids = torch.zeros(2, max_len, dtype=torch.long)
    ids[0, -3:], ids[1, -max_len:] = torch.tensor([1, 2, 3]), 7
    item_embeddings = torch.nn.Embedding(10, 64, padding_idx=0)
    assert net(item_embeddings(ids), ids > 0).shape == (2, 64)


PACKAGE = BUNDLED_CONFIGS.parent
SHIPPED = sorted(p for p in PACKAGE.rglob("*") if p.suffix in (".py", ".yaml", ".c") and "__pycache__" not in p.parts)


def test_what_the_wheel_ships_cites_only_what_a_user_has():
    """A user of the wheel has the papers and the docs, not this project's notes: no recipe comment
    or docstring points at them."""
    assert len(SHIPPED) > 40
    for path in SHIPPED:
        text = path.read_text()
        for outside in ("../shared", "MODELS.md", "shared/papers"):
            assert outside not in text, f"{path.relative_to(PACKAGE)} cites {outside}"


def test_backbone_sections_match_the_beauty_recipes():
    """backbones/<model>.yaml holds the model section of a full recipe (Amazon's dropout 0.3)."""
    for model in ("sigma", "mamba4rec", "echomamba4rec", "gru4rec"):
        section = yaml.safe_load((BUNDLED_CONFIGS / "backbones" / f"{model}.yaml").read_text())
        full = yaml.safe_load((BUNDLED_CONFIGS / "beauty" / f"{model}.yaml").read_text())
        assert section["model"]["backbone"] == full["model"]["backbone"], model


@pytest.mark.parametrize("name", ["beauty/sigma", "ml-1m/echomamba4rec", "ml-100k/mamba4rec"])
def test_recipes_parse_through_the_cli(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", f"{name}.yaml", "--print_config"])
    assert exit_info.value.code == 0
    assert f"name: {name.replace('/', '-')}" in capsys.readouterr().out
