"""Full-catalogue ranking and top-K in item chunks: never a (B, N) score matrix at once.

Evaluation ranks each target among every item, and `sigma predict` picks each user's best K; both
need every item's score, but neither needs them all at the same time. These functions walk the item
table in blocks of `chunk_size` items: one matmul when the catalogue fits in one block, otherwise
O(B x chunk_size) memory whatever N is. Conventions follow the module: `items` (N, D) is the table
of real items (row j is item j + 1), `target` (B,) a column index 0..N-1 and `exclude` (B, H) item
ids 1..N to leave out (the history; 0 is padding).

The results equal the full computation's: ranks are pessimistic on ties (`metrics.target_ranks`),
and among equal scores top-K takes the lower item id first, so the K items do not depend on the
chunk size or on how a sort happens to order ties.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def score_chunks(user: Tensor, items: Tensor, chunk_size: int, exclude: Tensor | None = None,
                 keep: Tensor | None = None) -> Iterator[tuple[int, Tensor]]:  # fmt: skip
    """(start, scores (B, C)) for items start..start+C-1, in order; scores in user's dtype.
    Items in `exclude` score -inf, except each row's `keep` column (B,), the target."""
    for start in range(0, items.size(0), chunk_size):
        scores = user @ items[start : start + chunk_size].T  # (B, C)
        if exclude is not None:
            scores = mask_excluded(scores, exclude, start, keep)
        yield start, scores


def mask_excluded(scores: Tensor, exclude: Tensor, start: int, keep: Tensor | None = None) -> Tensor:
    """scores (B, C) of items start+1..start+C with the items of `exclude` (B, H) set to -inf, but
    not each row's `keep` column (B,) if given. Counted by scatter_add, so repeated ids and rows
    without any are fine and nothing waits for the device."""
    column = exclude - 1 - start  # (B, H)
    hit = (exclude > 0) & (column >= 0) & (column < scores.size(1))  # (B, H)
    if keep is not None:
        hit &= column != (keep - start).unsqueeze(1)
    count = torch.zeros_like(scores).scatter_add_(1, column.clamp(0, scores.size(1) - 1), hit.to(scores.dtype))
    return scores.masked_fill(count > 0, float("-inf"))


def rank_targets(user: Tensor, items: Tensor, target: Tensor, chunk_size: int,
                 exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Pessimistic 1-based rank of each target among all N items and its cross-entropy, both (B,).

    rank = 1 + the number of other items scoring at least as high as the target (NaN never beats
    anything; a NaN target ranks last, N); cross-entropy = logsumexp over all items - target score.
    With `exclude`, those items (except the target) are left out of both, as `mask_seen_items`.
    """
    target_score = (user * items[target]).sum(dim=1)  # (B,)
    above = torch.zeros_like(target, dtype=torch.long)  # (B,) other items >= the target
    lse = torch.full_like(target_score, float("-inf"))  # (B,)
    for start, scores in score_chunks(user, items, chunk_size, exclude, keep=target):
        at_least = scores >= target_score.unsqueeze(1)  # (B, C)
        inside = (target >= start) & (target < start + scores.size(1))  # (B,) the target is in this block
        own = at_least.gather(1, (target - start).clamp(0, scores.size(1) - 1).unsqueeze(1)).squeeze(1)
        above += at_least.sum(dim=1) - (inside & own).long()  # the target is no competitor of itself
        lse = torch.logaddexp(lse, scores.logsumexp(dim=1))
    ranks = torch.where(target_score.isnan(), items.size(0), above + 1)
    return ranks, lse - target_score


def top_k_lowest_first(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best columns of each row, best first, ties to the lower column; NaN counts as -inf.

    scores: (B, M). Returns values (B, k') and columns (B, k'), k' = min(k, M). torch.topk may
    return any of several tied columns; this picks the same ones whatever the block sizes.
    """
    k = min(k, scores.size(1))
    scores = torch.where(scores.isnan(), float("-inf"), scores)  # (B, M)
    kth = scores.topk(k, dim=1).values[:, -1:]  # (B, 1) the k-th best value
    above = scores > kth  # (B, M) always taken
    tied = scores == kth  # (B, M) taken from the left until k are chosen
    room = k - above.sum(dim=1, keepdim=True, dtype=torch.int32)  # (B, 1) >= 1
    take = above | (tied & (tied.cumsum(dim=1, dtype=torch.int32) <= room))  # exactly k per row
    columns = take.nonzero()[:, 1].view(scores.size(0), k)  # (B, k) ascending
    return sort_lowest_first(scores.gather(1, columns), columns)


def sort_lowest_first(values: Tensor, columns: Tensor) -> tuple[Tensor, Tensor]:
    """values, columns (B, M) with tied values in ascending column order -> sorted best first,
    ties keeping that order (a stable sort)."""
    order = values.sort(dim=1, descending=True, stable=True).indices  # (B, M)
    return values.gather(1, order), columns.gather(1, order)


def top_k_chunked(user: Tensor, items: Tensor, k: int, chunk_size: int,
                  exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Each row's k best items over the whole table: ids (B, k') in 1..N and scores (B, k'), best
    first, k' = min(k, N); excluded items score -inf (they come last, if k reaches them)."""
    best_values = user.new_empty(user.size(0), 0)  # (B, 0)
    best_columns = torch.empty(user.size(0), 0, dtype=torch.long, device=user.device)
    for start, scores in score_chunks(user, items, chunk_size, exclude):
        values, columns = top_k_lowest_first(scores, k)  # (B, k) within the block
        # Earlier blocks hold lower ids, so the concatenation keeps ties in ascending id order.
        merged = sort_lowest_first(torch.cat([best_values, values], 1), torch.cat([best_columns, columns + start], 1))
        best_values, best_columns = merged[0][:, :k], merged[1][:, :k]
    return best_columns + 1, best_values
