import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sigma_lightning.errors import ConfigError
from sigma_lightning.metrics import RankingMetrics, target_ranks
from sigma_lightning.models import GRU4Rec
from sigma_lightning.module import SeqRecModule


def test_ranks_are_pessimistic_on_ties():
    scores = torch.tensor(
        [
            [0.1, 0.9, 0.5, 0.3],  # target col 2 (0.5): one item higher -> rank 2
            [1.0, 1.0, 1.0, 1.0],  # all tied: target ranks last
            [0.2, 0.7, 0.7, 0.1],  # target col 1 tied with col 2 -> rank 2
            [5.0, 1.0, 2.0, 3.0],  # target col 0 is the best -> rank 1
        ]
    )
    target = torch.tensor([2, 0, 1, 0])
    assert target_ranks(scores, target).tolist() == [2, 4, 2, 1]


def test_nan_target_score_ranks_last_and_a_nan_competitor_beats_nothing():
    scores = torch.tensor([[0.1, float("nan"), 0.5]] * 3)
    assert target_ranks(scores, torch.tensor([1, 2, 0])).tolist() == [3, 1, 2]


def test_metric_values_hand_computed():
    metric = RankingMetrics(top_k=[1, 3])
    metric.update(torch.tensor([1, 2]))
    metric.update(torch.tensor([3, 7]))
    out = metric.compute()
    # HR@1: only rank 1 -> 1/4; HR@3: ranks 1,2,3 -> 3/4
    assert out["HR@1"].item() == pytest.approx(0.25)
    assert out["HR@3"].item() == pytest.approx(0.75)
    ndcg3 = (1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)) / 4
    assert out["NDCG@3"].item() == pytest.approx(ndcg3, rel=1e-6)
    assert out["NDCG@1"].item() == pytest.approx(0.25)
    assert out["MRR@3"].item() == pytest.approx((1 + 1 / 2 + 1 / 3) / 4, rel=1e-6)
    assert out["MRR@1"].item() == pytest.approx(0.25)


def test_collapsed_model_scores_zero():
    # A model that scores every item the same must not get credit for any hit.
    scores = torch.zeros(8, 100)
    target = torch.randint(0, 100, (8,))
    metric = RankingMetrics(top_k=[10])
    metric.update(target_ranks(scores, target))
    assert all(v.item() == 0.0 for v in metric.compute().values())


def test_reset_and_accumulate_across_batches_equals_one_batch():
    ranks = torch.randint(1, 30, (64,))
    whole, parts = RankingMetrics([5, 10]), RankingMetrics([5, 10])
    whole.update(ranks)
    for chunk in ranks.split(10):
        parts.update(chunk)
    for key, value in whole.compute().items():
        assert parts.compute()[key].item() == pytest.approx(value.item(), rel=1e-6)
    parts.reset()
    assert parts.count.item() == 0


def test_invalid_top_k():
    for top_k in ([0], [], [10, -1]):
        with pytest.raises(ConfigError, match="top_k"):
            RankingMetrics(top_k=top_k)


# Two processes evaluate different users, as under DDP (each user on one rank, uneven shards).
RANKS_PER_PROCESS = [[1, 4, 30], [2, 11, 1, 9, 50]]


def _evaluate_on_one_rank(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        metrics = SeqRecModule(GRU4Rec(hidden_size=8), num_items=60).val_metrics  # as the module builds them
        metrics.update(torch.tensor(RANKS_PER_PROCESS[rank]))
        torch.save({k: float(v) for k, v in metrics.compute().items()}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_every_rank_reports_the_metrics_of_all_users_each_counted_once(tmp_path):
    mp.start_processes(_evaluate_on_one_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2,
                       start_method="spawn")  # fork can copy a lock another thread holds: deadlock  # fmt: skip
    everyone = RankingMetrics([10, 20])
    everyone.update(torch.tensor(sum(RANKS_PER_PROCESS, [])))
    expected = {k: float(v) for k, v in everyone.compute().items()}
    assert expected["HR@10"] == pytest.approx(5 / 8)  # users, not per-rank averages (2/3 and 3/5)
    for rank in range(2):
        assert torch.load(tmp_path / f"{rank}.pt") == pytest.approx(expected)
