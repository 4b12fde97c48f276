"""Full-ranking metrics HR@K, NDCG@K and MRR@K as torchmetrics Metrics: over all users
(RankingMetrics) and per history-length group (GroupedRankingMetrics, SIGMA's Figure 3).

The rank of the target is 1 + the number of *other* items scoring at least as high (pessimistic on
ties): a model that gives every item the same score ranks every target last, so a collapsed model
cannot score by luck. Metric states are sums and a user count, reduced by summing across processes,
so each user counts exactly once under DDP as long as each user is evaluated on one rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from sigma_lightning.errors import ConfigError


def target_ranks(scores: Tensor, target: Tensor) -> Tensor:
    """1-based pessimistic rank of each target among all candidates.

    scores: (B, N) float scores of the N candidate items; target: (B,) column index of the target
    in `scores`. Returns (B,) long ranks in 1..N. NaN scores never beat anything, and a NaN target
    score ranks last.
    """
    scores = scores.float()
    target_score = scores.gather(1, target.unsqueeze(1))  # (B, 1)
    at_least_as_high = (scores >= target_score).sum(dim=1)  # (B,), includes the target itself
    ranks = at_least_as_high.clamp(min=1)
    return torch.where(target_score.squeeze(1).isnan(), scores.size(1), ranks)


def checked_top_k(top_k: Sequence[int]) -> list[int]:
    """The distinct cut-offs of `top_k`, sorted; ConfigError unless it is non-empty and all >= 1."""
    if not top_k or any(int(k) < 1 for k in top_k):
        raise ConfigError(f"top_k={list(top_k)}: expected a non-empty list of integers >= 1.")
    return sorted({int(k) for k in top_k})


def rank_terms(ranks: Tensor, top_k: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Each user's HR, NDCG and MRR term at every cut-off: ranks (B,) 1-based -> three (B, K) float32."""
    ranks = ranks.to(torch.float32)  # float32 sums: exact counts up to 2**24 users, and MPS-safe
    ks = torch.tensor(list(top_k), dtype=torch.float32, device=ranks.device)  # (K,)
    hit = ranks.unsqueeze(1) <= ks.unsqueeze(0)  # (B, K)
    ndcg = torch.where(hit, 1.0 / torch.log2(ranks + 1.0).unsqueeze(1), 0.0)  # (B, K)
    mrr = torch.where(hit, 1.0 / ranks.unsqueeze(1), 0.0)  # (B, K)
    return hit.float(), ndcg, mrr


def metric_means(hr_sum: Tensor, ndcg_sum: Tensor, mrr_sum: Tensor, count: Tensor, top_k: Sequence[int]) -> dict:
    """{"HR@k": ..., "NDCG@k": ..., "MRR@k": ...} from the (K,) sums over `count` users."""
    count = count.to(torch.float32)
    out: dict[str, Tensor] = {}
    for i, k in enumerate(top_k):
        out[f"HR@{k}"] = hr_sum[i] / count
        out[f"NDCG@{k}"] = ndcg_sum[i] / count
        out[f"MRR@{k}"] = mrr_sum[i] / count
    return out


class RankingMetrics(Metric):
    """HR@K, NDCG@K and MRR@K for every K in `top_k`, averaged over users.

    Call `update(ranks)` with 1-based target ranks (see `target_ranks`); `compute()` returns a dict
    `{"HR@10": tensor, "NDCG@10": tensor, "MRR@10": tensor, ...}`.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, top_k: list[int] | tuple[int, ...] = (10,), **kwargs) -> None:
        super().__init__(**kwargs)
        self.top_k = checked_top_k(top_k)
        n = len(self.top_k)
        self.add_state("hr_sum", default=torch.zeros(n, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("ndcg_sum", default=torch.zeros(n, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("mrr_sum", default=torch.zeros(n, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, ranks: Tensor) -> None:
        hr, ndcg, mrr = rank_terms(ranks, self.top_k)  # (B, K) each
        self.hr_sum += hr.sum(dim=0)
        self.ndcg_sum += ndcg.sum(dim=0)
        self.mrr_sum += mrr.sum(dim=0)
        self.count += ranks.numel()

    def compute(self) -> dict[str, Tensor]:
        return metric_means(self.hr_sum, self.ndcg_sum, self.mrr_sum, self.count.clamp(min=1), self.top_k)


HISTORY_EDGES = (5, 20)
"""SIGMA's Figure 3 groups: at most 5 items before the target, 6 to 20, more than 20."""


def group_labels(edges: Sequence[int] = HISTORY_EDGES, name: str = "edges") -> list[str]:
    """Names of the history-length groups that `edges` bound: (5, 20) -> ["<= 5", "6-20", "> 20"].
    `name`: the setting `edges` came from, named by the error for bad edges."""
    if not edges or any(int(e) < 1 for e in edges) or list(edges) != sorted(set(edges)):
        raise ConfigError(f"{name}={list(edges)}: expected increasing history lengths >= 1, e.g. [5, 20].")
    inner = [f"{lo + 1}-{hi}" if hi > lo + 1 else f"{hi}" for lo, hi in zip(edges[:-1], edges[1:])]
    return [f"<= {edges[0]}", *inner, f"> {edges[-1]}"]


class GroupedRankingMetrics(Metric):
    """HR@K, NDCG@K and MRR@K per group of users, the groups set by history length (SIGMA's Figure 3).

    `edges` (increasing, >= 1) bound the groups: a user with h items before its target falls in the
    first group whose upper edge is >= h, the last group being h > edges[-1]. Call `update(ranks,
    history_lengths)`, both (B,); `compute()` returns {label: {"users": n, "HR@10": ..., ...}} for
    every group with at least one user, labels as `group_labels` names them. The states are per-group
    sums and counts, summed across processes like `RankingMetrics`'.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, edges: Sequence[int] = HISTORY_EDGES, top_k: Sequence[int] = (10,), name: str = "edges",
                 **kwargs) -> None:  # fmt: skip
        super().__init__(**kwargs)
        self.labels = group_labels(edges, name)
        self.edges = [int(e) for e in edges]
        self.top_k = checked_top_k(top_k)
        shape = (len(self.labels), len(self.top_k))  # (G, K)
        for state in ("hr_sum", "ndcg_sum", "mrr_sum"):
            self.add_state(state, default=torch.zeros(shape, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(shape[0], dtype=torch.long), dist_reduce_fx="sum")

    def update(self, ranks: Tensor, history_lengths: Tensor) -> None:
        edges = torch.tensor(self.edges, device=ranks.device)  # (G - 1,)
        group = torch.bucketize(history_lengths.to(ranks.device), edges)  # (B,) edges[g-1] < h <= edges[g]
        hr, ndcg, mrr = rank_terms(ranks, self.top_k)  # (B, K) each
        self.hr_sum.index_add_(0, group, hr)
        self.ndcg_sum.index_add_(0, group, ndcg)
        self.mrr_sum.index_add_(0, group, mrr)
        self.count += torch.bincount(group, minlength=len(self.labels))

    def compute(self) -> dict[str, dict[str, Tensor]]:
        out: dict[str, dict[str, Tensor]] = {}
        for g, label in enumerate(self.labels):
            if self.count[g] == 0:
                continue
            means = metric_means(self.hr_sum[g], self.ndcg_sum[g], self.mrr_sum[g], self.count[g], self.top_k)
            out[label] = {"users": self.count[g].to(torch.float32), **means}
        return out


def group_rows(groups: dict[str, dict[str, Tensor]]) -> list[dict[str, str | int | float]]:
    """`GroupedRankingMetrics.compute()`'s result as table rows: group, users, then each metric."""
    return [
        {"group": label, "users": int(values["users"]), **{k: v.item() for k, v in values.items() if k != "users"}}
        for label, values in groups.items()
    ]
