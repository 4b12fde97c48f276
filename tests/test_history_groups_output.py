"""Where `sigma test`'s per-history-length metrics go when the logger has no folder."""

import lightning

from sigma_lightning.models import SASRec
from sigma_lightning.module import SeqRecModule
from tests.test_sequence_length import tiny_data


def test_history_groups_are_never_saved_into_the_working_folder(tmp_path, monkeypatch, capsys):
    """A logger with no folder (log_dir None): the groups are printed, and no history_groups.csv
    appears in whatever folder the run was started from."""
    from lightning.pytorch.loggers.logger import DummyLogger

    monkeypatch.chdir(tmp_path)
    model = SeqRecModule(backbone=SASRec(hidden_size=8, num_layers=1, num_heads=1, max_seq_len=20), num_items=30)
    trainer = lightning.Trainer(
        accelerator="cpu", logger=DummyLogger(), enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path / "root",
    )  # fmt: skip
    trainer.test(model, datamodule=tiny_data(max_seq_len=20))
    assert "test/history<=5/HR@10" in trainer.callback_metrics
    assert not list(tmp_path.rglob("history_groups.csv"))
