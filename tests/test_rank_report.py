"""tools/rank_report.py: its protocol metrics are the ones `sigma test` logs, and masking the
history never worsens a rank."""

import importlib.util
from pathlib import Path

import pytest

from sigma_lightning.data.datamodule import SeqRecDataModule
from tests.test_cli import run

spec = importlib.util.spec_from_file_location("rank_report", Path(__file__).parents[1] / "tools" / "rank_report.py")
rank_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rank_report)


def test_report_matches_sigma_test_and_masking_only_helps(tmp_path):
    run(tmp_path, "fit", "--trainer.max_epochs", "2")
    last = tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    cli = run(tmp_path, "test", "--ckpt_path", str(last))
    data: SeqRecDataModule = cli.datamodule
    report = rank_report.report(rank_report.load_model(str(last), {}), data)
    logged = cli.trainer.callback_metrics
    for name, value in report["protocol"].items():
        assert value == pytest.approx(float(logged[f"test/{name}"]), abs=1e-6), name
    assert report["users"] == data.data.num_users
    assert all(report["history_masked"][m] >= v - 1e-6 for m, v in report["protocol"].items())
    assert 0.0 <= report["top1_is_most_recent_item"] <= 1.0
    assert sum(report["ranks_1_to_10"]) == round(report["protocol"]["HR@10"] * report["users"])
    # a backbone override reaches the model (for checkpoints that predate a setting)
    other = rank_report.load_model(str(last), {"dropout": 0.45})
    assert other.backbone.blocks[0].attention.dropout.p == 0.45 and not other.training
