"""Ranking and top-K in item chunks equal the full computation, ties and excluded items included.

Embeddings here hold small integers, so every score is exact whatever the order of the sums: ties
are real ties in both computations, across chunk boundaries too."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sigma_lightning.metrics import target_ranks
from sigma_lightning.module import mask_seen_items, top_k_items
from sigma_lightning.scoring import rank_targets, top_k_chunked, top_k_lowest_first


def integer_case(seed: int, batch: int = 6, num_items: int = 23, dim: int = 2, values: int = 2):
    """Users and items with entries in -values..values: many exactly tied scores."""
    generator = torch.Generator().manual_seed(seed)
    user = torch.randint(-values, values + 1, (batch, dim), generator=generator).float()
    items = torch.randint(-values, values + 1, (num_items, dim), generator=generator).float()
    target = torch.randint(0, num_items, (batch,), generator=generator)
    history = torch.randint(0, num_items + 1, (batch, 5), generator=generator)  # item ids, 0 = padding
    return user, items, target, history


CHUNKS = [1, 2, 5, 7, 22, 23, 24, 1000]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("seed", range(4))
def test_chunked_ranks_and_cross_entropy_equal_the_full_ones(chunk, seed):
    user, items, target, _ = integer_case(seed)
    scores = user @ items.T  # (B, N)
    ranks, cross_entropy = rank_targets(user, items, target, chunk)
    assert torch.equal(ranks, target_ranks(scores, target))
    torch.testing.assert_close(cross_entropy, F.cross_entropy(scores, target, reduction="none"))


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("seed", range(4))
def test_chunked_ranks_with_the_history_left_out_equal_the_masked_full_ones(chunk, seed):
    user, items, target, history = integer_case(seed)
    history[:, 0] = target + 1  # the target is in the history: it must stay ranked
    scores = mask_seen_items(user @ items.T, history, target + 1)  # (B, N)
    ranks, cross_entropy = rank_targets(user, items, target, chunk, exclude=history)
    assert torch.equal(ranks, target_ranks(scores, target))
    torch.testing.assert_close(cross_entropy, F.cross_entropy(scores, target, reduction="none"))


def test_ties_across_a_chunk_boundary_rank_pessimistically():
    """Items 2 and 3 (columns 1, 2) tie with the target in column 3, in other chunks of two."""
    user = torch.tensor([[1.0]])
    items = torch.tensor([[0.0], [5.0], [5.0], [5.0], [1.0]])
    for chunk in (1, 2, 3, 5):
        ranks, _ = rank_targets(user, items, torch.tensor([3]), chunk)
        assert ranks.tolist() == [3], chunk


def test_a_nan_target_ranks_last_and_a_nan_competitor_beats_nothing():
    user = torch.tensor([[1.0], [1.0]])
    items = torch.tensor([[0.1], [float("nan")], [0.5]])
    for chunk in (1, 2, 3):
        ranks, _ = rank_targets(user, items, torch.tensor([1, 0]), chunk)
        assert ranks.tolist() == [3, 2], chunk


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("k", [1, 3, 10, 23, 40])
def test_chunked_top_k_equals_the_full_top_k(chunk, k):
    for seed in range(3):
        user, items, _, history = integer_case(seed)
        for exclude in (None, history):
            want_items, want_scores = top_k_items(user @ items.T, k, exclude)
            got_items, got_scores = top_k_chunked(user, items, k, chunk, exclude)
            assert torch.equal(got_items, want_items) and torch.equal(got_scores, want_scores), (seed, exclude)


def test_top_k_breaks_ties_by_the_lower_item_id_in_every_chunking():
    user = torch.tensor([[1.0]])
    items = torch.tensor([[1.0], [3.0], [1.0], [3.0], [2.0], [3.0]])  # items 2, 4, 6 tie at 3
    for chunk in (1, 2, 3, 4, 6):
        got, scores = top_k_chunked(user, items, 4, chunk)
        assert got.tolist() == [[2, 4, 6, 5]] and scores.tolist() == [[3.0, 3.0, 3.0, 2.0]], chunk
        assert top_k_chunked(user, items, 2, chunk)[0].tolist() == [[2, 4]], chunk  # the cut falls inside a tie


def test_top_k_counts_nan_as_minus_infinity_and_keeps_excluded_items_last():
    scores = torch.tensor([[float("nan"), 1.0, float("-inf"), 0.5]])
    values, columns = top_k_lowest_first(scores, 4)
    assert columns.tolist() == [[1, 3, 0, 2]] and values[0, 2:].tolist() == [float("-inf")] * 2


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), num_items=st.integers(1, 30), chunk=st.integers(1, 31), k=st.integers(1, 35),
       values=st.integers(0, 3))  # fmt: skip
def test_chunked_scoring_matches_full_scoring_on_any_case(seed, num_items, chunk, k, values):
    user, items, target, history = integer_case(seed, num_items=num_items, values=values)
    scores = mask_seen_items(user @ items.T, history, target + 1)
    assert torch.equal(rank_targets(user, items, target, chunk, history)[0], target_ranks(scores, target))
    want = top_k_items(user @ items.T, k, history)
    got = top_k_chunked(user, items, k, chunk, history)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # An independent reference: a stable sort of the whole masked matrix (ties keep the lower id).
    reference = mask_seen_items(user @ items.T, history).sort(dim=1, descending=True, stable=True)
    assert torch.equal(got[0], reference.indices[:, :k] + 1) and torch.equal(got[1], reference.values[:, :k])
