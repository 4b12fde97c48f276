"""Full-ranking metrics HR@K, NDCG@K and MRR@K as a torchmetrics Metric.

The rank of the target is 1 + the number of *other* items scoring at least as high (pessimistic on
ties): a model that gives every item the same score ranks every target last, so a collapsed model
cannot score by luck. Metric states are sums and a user count, reduced by summing across processes,
so each user counts exactly once under DDP as long as each user is evaluated on one rank.
"""

from __future__ import annotations

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


class RankingMetrics(Metric):
    """HR@K, NDCG@K and MRR@K for every K in `top_k`, averaged over users.

    Call `update(ranks)` with 1-based target ranks (see `target_ranks`); `compute()` returns a dict
    `{"HR@10": tensor, "NDCG@10": tensor, "MRR@10": tensor, ...}`.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, top_k: list[int] | tuple[int, ...] = (10,), **kwargs) -> None:
        super().__init__(**kwargs)
        if not top_k or any(int(k) < 1 for k in top_k):
            raise ConfigError(f"top_k={list(top_k)}: expected a non-empty list of integers >= 1.")
        self.top_k = sorted({int(k) for k in top_k})
        n = len(self.top_k)
        self.add_state("hr_sum", default=torch.zeros(n, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("ndcg_sum", default=torch.zeros(n, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("mrr_sum", default=torch.zeros(n, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, ranks: Tensor) -> None:
        ranks = ranks.to(torch.float32)  # (B,); float32 sums: exact counts up to 2**24 users, and MPS-safe
        ks = torch.tensor(self.top_k, dtype=torch.float32, device=ranks.device)  # (K,)
        hit = ranks.unsqueeze(0) <= ks.unsqueeze(1)  # (K, B)
        self.hr_sum += hit.sum(dim=1)
        self.ndcg_sum += torch.where(hit, 1.0 / torch.log2(ranks + 1.0), 0.0).sum(dim=1)
        self.mrr_sum += torch.where(hit, 1.0 / ranks, 0.0).sum(dim=1)
        self.count += ranks.numel()

    def compute(self) -> dict[str, Tensor]:
        count = self.count.clamp(min=1).to(torch.float32)
        out: dict[str, Tensor] = {}
        for i, k in enumerate(self.top_k):
            out[f"HR@{k}"] = self.hr_sum[i] / count
            out[f"NDCG@{k}"] = self.ndcg_sum[i] / count
            out[f"MRR@{k}"] = self.mrr_sum[i] / count
        return out
