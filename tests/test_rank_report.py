"""research/rank_report.py: its protocol metrics are the ones `sigma test` logs, and masking the
history never worsens a rank."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from research import rank_report
from research.common import load_model
from sigma_lightning.data.datamodule import SeqRecDataModule
from sigma_lightning.module import SeqRecModule
from tests.test_cli import run


def test_report_matches_sigma_test_and_masking_only_helps(tmp_path):
    run(tmp_path, "fit", "--trainer.max_epochs", "2")
    last = tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    cli = run(tmp_path, "test", "--ckpt_path", str(last))
    data: SeqRecDataModule = cli.datamodule
    report = rank_report.report(load_model(str(last), {}), data)
    logged = cli.trainer.callback_metrics
    for name, value in report["protocol"].items():
        assert value == pytest.approx(float(logged[f"test/{name}"]), abs=1e-6), name
    assert report["users"] == data.data.num_users
    assert all(report["history_masked"][m] >= v - 1e-6 for m, v in report["protocol"].items())
    assert 0.0 <= report["top1_is_most_recent_item"] <= 1.0
    assert sum(report["ranks_1_to_10"]) == round(report["protocol"]["HR@10"] * report["users"])
    # a backbone override reaches the model (for checkpoints that predate a setting)
    other = load_model(str(last), {"dropout": 0.45})
    assert other.backbone.blocks[0].attention.dropout.p == 0.45 and not other.training


class LastItem(nn.Module):
    """The user representation is the last item's embedding: the extreme of a residual path."""

    hidden_size = 16

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x[torch.arange(x.size(0)), mask.sum(1) - 1]  # (B, D)


def test_a_model_that_echoes_the_last_item_ranks_it_first(tmp_path):
    """With equal-norm embeddings, <e_last, e_j> is largest for j = last (Cauchy-Schwarz): every
    top-1 is the most recent item, and masking the history can only help."""
    data = run(tmp_path, "fit", "--trainer.max_epochs", "0").datamodule
    model = SeqRecModule(LastItem(), num_items=data.num_items).eval()
    with torch.no_grad():
        weight = model.item_embedding.weight
        weight[1:] = nn.functional.normalize(weight[1:], dim=1)
    report = rank_report.report(model, data)
    assert report["top1_is_most_recent_item"] == 1.0
    assert rank_report.top1_is_last_on_training_prefixes(model, data, 2) == 1.0
    assert report["seen_items_above_target_mean"] >= 1.0  # the last item at least (never the target here)
    assert report["history_masked"]["NDCG@10"] > report["protocol"]["NDCG@10"]


@pytest.mark.slow
def test_research_scripts_run_as_modules_from_the_repository_root(tmp_path):
    """`python -m research.<script>`: each imports the package and research.common (no file-path
    imports), rank_report's stdout is JSON only, and sigma_branches refuses a non-SIGMA checkpoint."""
    rng = torch.Generator().manual_seed(0)
    lines = [" ".join(map(str, [u, *torch.randint(1, 31, (8,), generator=rng).tolist()])) for u in range(60)]
    (tmp_path / "seqs.txt").write_text("\n".join(lines) + "\n")
    data = ["--data.path", str(tmp_path / "seqs.txt"), "--data.min_user_interactions", "1", "--data.min_item_interactions", "1"]
    run(tmp_path, "fit", "--trainer.max_epochs", "1", *data)
    last = str(tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt")
    root = Path(__file__).parents[1]
    script = [sys.executable, "-m", "research.rank_report", last, "--data", data[1], "--max-seq-len", "10"]
    done = subprocess.run(script, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["users"] == 60 and set(report["protocol"]) == {"HR@10", "NDCG@10", "MRR@10"}
    script = [sys.executable, "-m", "research.sigma_branches", last, "--data", data[1], "--max-seq-len", "10"]
    done = subprocess.run(script, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "holds no SIGMA backbone" in done.stderr
