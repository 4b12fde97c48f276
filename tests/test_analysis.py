"""Per-user ranks and history-length groups (sigma_lightning/analysis.py): the ranks reproduce
`trainer.test`'s metrics, and the groups split users at the documented edges."""

from __future__ import annotations

import lightning as L
import polars as pl
import pytest
import torch

from sigma_lightning.analysis import group_labels, grouped_metrics, user_ranks
from sigma_lightning.data.datamodule import SeqRecDataModule
from sigma_lightning.data.synthetic import SyntheticConfig
from sigma_lightning.errors import ConfigError
from sigma_lightning.metrics import RankingMetrics
from sigma_lightning.models import GRU4Rec
from sigma_lightning.module import SeqRecModule


@pytest.fixture(scope="module")
def data() -> SeqRecDataModule:
    synthetic = SyntheticConfig(num_users=150, num_items=60, min_length=3, max_length=30)
    return SeqRecDataModule(path="synthetic", synthetic=synthetic, max_seq_len=10, batch_size=64,
                            min_user_interactions=3, min_item_interactions=1)  # fmt: skip


@pytest.mark.parametrize("mask_history", [False, True])
def test_user_ranks_give_the_metrics_trainer_test_logs(data, mask_history):
    L.seed_everything(0)
    model = SeqRecModule(GRU4Rec(hidden_size=16, gru_hidden_size=16), num_items=data.num_items,
                         mask_history=mask_history)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.test(model, datamodule=data, verbose=False)[0]
    ranks = user_ranks(model, data, batch_size=7)  # batches that do not divide the users
    assert ranks.height == data.num_users and ranks["user"].n_unique() == data.num_users
    metric = RankingMetrics([10])
    metric.update(torch.tensor(ranks["rank"].to_list()))
    for name, value in metric.compute().items():
        assert value.item() == pytest.approx(logged[f"test/{name}"], abs=1e-6), name


def test_history_counts_every_item_before_the_target_beyond_max_seq_len(data):
    model = SeqRecModule(GRU4Rec(hidden_size=8, gru_hidden_size=8), num_items=data.num_items)
    lengths = dict(zip(data.user_ids, data.data.lengths.tolist()))
    test, valid = user_ranks(model, data), user_ranks(model, data, split="valid")
    assert all(h == lengths[u] - 1 for u, h in test.select("user", "history").iter_rows())
    assert all(h == lengths[u] - 2 for u, h in valid.select("user", "history").iter_rows())
    assert test["history"].max() > data.max_seq_len  # not cut to the model's window
    assert model.training  # left in the mode it came in


def test_groups_split_at_the_edges_and_average_to_the_overall_metric():
    ranks = pl.DataFrame({"user": list("abcdef"), "history": [1, 5, 6, 20, 21, 90], "rank": [1, 3, 12, 1, 2, 50]})
    groups = grouped_metrics(ranks)
    assert groups["group"].to_list() == ["<= 5", "6-20", "> 20"]
    assert groups["users"].to_list() == [2, 2, 2]
    assert groups["HR@10"].to_list() == [1.0, 0.5, 0.5]  # 12 and 50 miss; 5 is short, 20 medium
    assert groups["NDCG@10"][0] == pytest.approx((1 + 1 / torch.log2(torch.tensor(4.0)).item()) / 2)
    assert groups["MRR@10"][2] == pytest.approx(0.25)
    overall = (groups["HR@10"] * groups["users"]).sum() / groups["users"].sum()
    assert overall == pytest.approx(4 / 6)


def test_empty_groups_are_left_out_and_labels_follow_the_edges():
    ranks = pl.DataFrame({"user": ["a"], "history": [3], "rank": [1]})
    assert grouped_metrics(ranks, edges=(2, 3, 10))["group"].to_list() == ["3"]
    assert group_labels((2, 3, 10)) == ["<= 2", "3", "4-10", "> 10"]


@pytest.mark.parametrize("edges", [(), (20, 5), (0, 5), (5, 5)])
def test_bad_edges_name_the_setting(edges):
    with pytest.raises(ConfigError, match="edges="):
        group_labels(edges)


def test_a_split_without_a_target_is_refused(data):
    model = SeqRecModule(GRU4Rec(hidden_size=8, gru_hidden_size=8), num_items=data.num_items)
    with pytest.raises(ConfigError, match="split='predict'"):
        user_ranks(model, data, split="predict")
