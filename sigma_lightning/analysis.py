"""Per-user evaluation: where each user's held-out item ranks, and HR/NDCG/MRR@K by history length.

SIGMA's paper (Liu et al. 2024, Figure 3) compares the models on users with short, medium and long
histories. `user_ranks` gives every user's rank of its test (or validation) item under the module's
own ranking, its `mask_history` setting included, so their HR/NDCG/MRR are exactly what
`sigma test` reports; `grouped_metrics` averages them per history-length group with the same
`GroupedRankingMetrics` that `sigma test` reports the groups with (`model.history_groups`).

    ranks = user_ranks(model, datamodule)   # user, history, rank
    grouped_metrics(ranks)                  # group (<= 5, 6-20, > 20), users, HR@10, NDCG@10, MRR@10
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl
import torch

from sigma_lightning.errors import ConfigError
from sigma_lightning.metrics import HISTORY_EDGES, GroupedRankingMetrics, group_labels, group_rows
from sigma_lightning.module import evaluation_batches

__all__ = ["HISTORY_EDGES", "group_labels", "grouped_metrics", "user_ranks"]


@torch.no_grad()
def user_ranks(model, datamodule, split: str = "test", batch_size: int = 1024) -> pl.DataFrame:
    """Each user's 1-based rank of its held-out item among all items (pessimistic on ties).

    model: a SeqRecModule; datamodule: the SeqRecDataModule it was trained on; split: "test"
    (target: the last item) or "valid" (the second-last). Returns one row per user with columns
    user (original id), history (the number of items before the target, not cut to max_seq_len)
    and rank, in the data module's user order."""
    if split not in ("valid", "test"):
        raise ConfigError(f"split={split!r}: expected 'valid' or 'test' (the splits with a held-out item).")
    dataset = datamodule.dataset(split)
    # (B,) per batch: what `sigma test` counts
    ranks = [model.evaluation_ranks(batch)[0].cpu() for batch in evaluation_batches(model, dataset, batch_size)]
    return pl.DataFrame(
        {
            "user": pl.Series(datamodule.user_ids).gather(dataset.users.numpy()),
            "history": (dataset.ends - dataset.starts).numpy(),
            "rank": torch.cat(ranks).numpy() if ranks else [],
        },
        schema_overrides={"history": pl.Int64, "rank": pl.Int64},
    )


def grouped_metrics(
    ranks: pl.DataFrame, edges: Sequence[int] = HISTORY_EDGES, top_k: Sequence[int] = (10,)
) -> pl.DataFrame:
    """HR/NDCG/MRR@K per history-length group of a `user_ranks` frame.

    A user with history h falls in the first group whose upper edge is >= h. Returns columns group,
    users, then HR@k, NDCG@k, MRR@k for each k; groups without users are left out."""
    metric = GroupedRankingMetrics(edges, top_k)
    metric.update(torch.tensor(ranks["rank"].to_numpy()), torch.tensor(ranks["history"].to_numpy()))  # (U,) each
    return pl.DataFrame(group_rows(metric.compute()))
