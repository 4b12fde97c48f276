"""A data max_seq_len longer than the backbone accepts is one ConfigError naming both settings,
raised when the run sets up, before any batch is drawn (not at the first long batch)."""

import lightning
import pytest

from sigma_lightning.cli import main
from sigma_lightning.data.datamodule import SeqRecDataModule
from sigma_lightning.data.synthetic import SyntheticConfig
from sigma_lightning.errors import ConfigError
from sigma_lightning.models import SASRec, EchoMamba4Rec
from sigma_lightning.module import SeqRecModule
from tests.test_cli import tiny_args


@pytest.fixture
def forward_never_runs(monkeypatch):
    def forward(*args, **kwargs):
        raise AssertionError("a batch reached the backbone before the settings were checked")

    monkeypatch.setattr(SASRec, "forward", forward)
    monkeypatch.setattr(EchoMamba4Rec, "forward", forward)


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_cli_names_both_settings_before_any_batch(tmp_path, capsys, forward_never_runs, subcommand):
    args = tiny_args(tmp_path, subcommand, "--data.max_seq_len", "12", "--model.backbone.init_args.max_seq_len", "10")
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1, message
    assert "data.max_seq_len=12" in message
    assert "model.backbone.init_args.max_seq_len=10" in message


def tiny_data(max_seq_len: int) -> SeqRecDataModule:
    synthetic = SyntheticConfig(num_users=60, num_items=30, num_topics=3, max_length=40)
    return SeqRecDataModule(path="synthetic", synthetic=synthetic, max_seq_len=max_seq_len, batch_size=32)


@pytest.mark.parametrize(
    ("backbone", "setting"),
    [
        (lambda: SASRec(hidden_size=8, num_layers=1, num_heads=1, max_seq_len=16), "max_seq_len=16"),
        (lambda: EchoMamba4Rec(hidden_size=8, filter_len=16), "filter_len=16"),
    ],
    ids=["sasrec", "echomamba4rec"],
)
def test_trainer_fit_checks_at_setup(tmp_path, forward_never_runs, backbone, setting):
    model = SeqRecModule(backbone=backbone(), num_items=30)
    trainer = lightning.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=rf"data.max_seq_len=20 .*{setting}"):
        trainer.fit(model, datamodule=tiny_data(max_seq_len=20))


def test_lengths_that_fit_are_accepted(tmp_path):
    model = SeqRecModule(backbone=EchoMamba4Rec(hidden_size=8, filter_len=32), num_items=30)
    trainer = lightning.Trainer(
        accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=tiny_data(max_seq_len=20))
    assert trainer.global_step == 1

