"""Backbone and Mamba settings: a bad value raises one ConfigError naming the setting as a recipe
writes it and its valid range (before torch sees it); boundary values build; MambaConfig reaches
every block from YAML and from the command line of the real `sigma` CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from sigma_lightning.cli import run_sigma
from sigma_lightning.errors import ConfigError
from sigma_lightning.models import SIGMA, EchoMamba4Rec, GRU4Rec, Mamba4Rec, MambaConfig, SASRec
from sigma_lightning.nn.mamba import Mamba
from tests.nn.test_mamba_config import one_line

SMALL = {"hidden_size": 8}
# (backbone, bad settings, the setting the message names, what it says the valid values are)
BAD_BACKBONE_SETTINGS = [
    (SIGMA, {"dropout": 1.5}, "dropout", "0.0 <= model.backbone.init_args.dropout < 1.0"),
    (SIGMA, {"dropout": -0.1}, "dropout", "< 1.0"),
    (SIGMA, {"dropout": 1.0}, "dropout", "< 1.0"),
    (SIGMA, {"hidden_size": 0}, "hidden_size", "1 <="),
    (SIGMA, {"num_layers": 0}, "num_layers", "1 <="),
    (SIGMA, {"flip_range": -1}, "flip_range", "0 <="),
    (SIGMA, {"gate_kernel_size": 0}, "gate_kernel_size", "1 <="),
    (SIGMA, {"gru_kernel_size": 0}, "gru_kernel_size", "1 <="),
    (SIGMA, {"hidden_size": 8.0}, "hidden_size", "an integer >= 1"),
    (SIGMA, {"init": "xavier"}, "init", "'recbole', 'mamba'"),
    (EchoMamba4Rec, {"filter_len": 100}, "filter_len", "a power of two >= 2"),
    (EchoMamba4Rec, {"filter_len": 1}, "filter_len", "2 <="),
    (EchoMamba4Rec, {"dropout": 2.0}, "dropout", "< 1.0"),
    (EchoMamba4Rec, {"num_layers": 0}, "num_layers", "1 <="),
    (Mamba4Rec, {"num_layers": -2}, "num_layers", "1 <="),
    (Mamba4Rec, {"dropout": float("nan")}, "dropout", "< 1.0"),
    (SASRec, {"num_heads": 3}, "num_heads", "does not divide model.backbone.init_args.hidden_size=8"),
    (SASRec, {"num_heads": 0}, "num_heads", "1 <="),
    (SASRec, {"attn_dropout": 1.0}, "attn_dropout", "< 1.0"),
    (SASRec, {"max_seq_len": 0}, "max_seq_len", "1 <="),
    (SASRec, {"inner_size": 0}, "inner_size", "1 <="),
    (GRU4Rec, {"gru_hidden_size": 0}, "gru_hidden_size", "1 <="),
    (GRU4Rec, {"dropout": 1.5}, "dropout", "< 1.0"),
]


@pytest.mark.parametrize("backbone, settings, name, valid", BAD_BACKBONE_SETTINGS,
                         ids=[f"{b.__name__}-{'-'.join(s)}={list(s.values())[0]}" for b, s, _, _ in BAD_BACKBONE_SETTINGS])  # fmt: skip
def test_bad_backbone_setting_names_the_setting_and_its_range(backbone, settings, name, valid):
    with pytest.raises(ConfigError) as error:
        backbone(**{**SMALL, **settings})
    message = one_line(error)
    assert message.startswith(f"model.backbone.init_args.{name}=") and valid in message, message


def test_boundary_values_build():
    SIGMA(**SMALL, dropout=0.0, flip_range=0, gate_kernel_size=1, gru_kernel_size=1, mamba=MambaConfig(d_state=1))
    EchoMamba4Rec(**SMALL, filter_len=2, num_layers=1)
    SASRec(**SMALL, num_heads=8, max_seq_len=1, attn_dropout=0.0)


# ---- through the real CLI -------------------------------------------------------------------------
TINY_DATA = [
    "--data.path", "synthetic", "--data.synthetic.num_users", "60", "--data.synthetic.num_items", "30",
    "--data.synthetic.num_topics", "3", "--data.synthetic.max_length", "10", "--data.max_seq_len", "8",
    "--data.batch_size", "32", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--trainer.max_epochs", "0",
]  # fmt: skip


def sigma_fit(tmp_path: Path, recipe: str, *extra: str):
    recipe_file = tmp_path / "backbone.yaml"
    recipe_file.write_text(recipe)
    return run_sigma(["fit", "--config", "quickstart.yaml", "--config", str(recipe_file), *TINY_DATA,
                      "--data.cache_dir", str(tmp_path / "cache"),
                      "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *extra])  # fmt: skip


RECIPE = """model:
  backbone:
    class_path: sigma_lightning.models.{name}
    init_args:
      hidden_size: 16
      mamba: {{d_state: 8, d_conv: 3, expand: 1}}
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGMA", "EchoMamba4Rec", "Mamba4Rec"])
def test_mamba_settings_from_yaml_and_the_command_line_reach_every_block(tmp_path, name):
    cli = sigma_fit(tmp_path, RECIPE.format(name=name), "--model.backbone.init_args.mamba.d_state", "4")
    blocks = [m for m in cli.model.backbone.modules() if isinstance(m, Mamba)]
    assert len(blocks) >= 1 + (name != "Mamba4Rec") and type(cli.model.backbone).__name__ == name
    # the command line's d_state over the YAML's, the YAML's d_conv and expand, the rest: defaults
    assert all(block.config == MambaConfig(d_state=4, d_conv=3, expand=1) for block in blocks)
    assert cli.model.hparams["backbone"]["init_args"]["mamba"]["d_state"] == 4  # what checkpoints store


@pytest.mark.slow
def test_a_bad_mamba_setting_is_one_line_from_the_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sigma_fit(tmp_path, RECIPE.format(name="SIGMA"), "--model.backbone.init_args.mamba.expand", "0")
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sigma: error:")]
    assert lines == [
        "sigma: error: model.backbone.init_args.mamba.expand=0 is out of range: expected 1 <= "
        "model.backbone.init_args.mamba.expand. Set `model.backbone.init_args.mamba.expand` within it."
    ]
