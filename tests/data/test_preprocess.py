"""Ordering, de-duplication, k-core, id maps, leave-one-out and prefix samples on hand-made data."""

from __future__ import annotations

import warnings

import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sigma_lightning.data import preprocess as pp
from sigma_lightning.data.datamodule import gather_windows
from sigma_lightning.data.readers import DataError


def frame(rows: list[tuple]) -> pl.DataFrame:
    """(user, item, time) rows in file order."""
    return pl.DataFrame(rows, schema=["user", "item", "time"], orient="row")


def test_order_is_chronological_and_stable_on_ties():
    df = frame([("u", "c", 5), ("u", "a", 1), ("u", "x", 3), ("u", "y", 3), ("v", "z", 0), ("u", "w", 3)])
    ordered = pp.order_interactions(df)
    assert ordered["item"].to_list() == ["a", "x", "y", "w", "c", "z"]


def test_deduplicate_keeps_first_occurrence():
    df = pp.order_interactions(frame([("u", "a", 1), ("u", "b", 2), ("u", "a", 3), ("v", "a", 1), ("u", "c", 4)]))
    assert pp.deduplicate(df)["item"].to_list() == ["a", "b", "c", "a"]


def test_k_core_reaches_the_known_fixed_point():
    # u4 -> d has 1 user -> u3 has 1 item -> c has 1 user: only {u1, u2} x {a, b} survives.
    df = frame(
        [
            ("u1", "a", 0),
            ("u1", "b", 1),
            ("u1", "c", 2),
            ("u2", "a", 0),
            ("u2", "b", 1),
            ("u3", "c", 0),
            ("u3", "d", 1),
            ("u4", "d", 0),
        ]
    )
    core = pp.k_core(df, 2, 2)
    assert sorted(core.select("user", "item").iter_rows()) == [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b")]
    assert pp.k_core(core, 2, 2).height == core.height  # a fixed point


def test_k_core_with_different_thresholds_and_no_op():
    df = frame([("u1", "a", 0), ("u1", "b", 1), ("u1", "c", 2), ("u2", "a", 0), ("u2", "b", 1)])
    assert pp.k_core(df, 3, 1)["user"].unique().to_list() == ["u1"]
    assert pp.k_core(df, 1, 1).height == df.height
    assert pp.k_core(df, 2, 3).height == 0


def test_ids_are_remapped_in_sorted_order_and_kept():
    df = frame([("10", "B9", 0), ("10", "A1", 1), ("10", "C3", 2), ("9", "A1", 0), ("9", "B9", 1), ("9", "C3", 2)])
    data = pp.preprocess(df, pp.PreprocessConfig(0, 0))
    assert data.item_ids == [None, "A1", "B9", "C3"]
    assert data.user_ids == ["10", "9"]  # strings sort as strings
    assert data.items.tolist() == [2, 1, 3, 1, 2, 3]
    assert data.offsets.tolist() == [0, 3, 6]


def test_integer_ids_sort_numerically():
    df = frame([(10, 100, 0), (10, 20, 1), (10, 3, 2), (9, 3, 0), (9, 20, 1), (9, 100, 2)])
    data = pp.preprocess(df, pp.PreprocessConfig(0, 0))
    assert data.user_ids == [9, 10] and data.item_ids == [None, 3, 20, 100]


def test_short_users_are_dropped_with_a_warning():
    df = frame([("a", 1, 0), ("a", 2, 1), ("a", 3, 2), ("b", 1, 0), ("b", 2, 1), ("c", 3, 0)])
    with pytest.warns(UserWarning, match="dropped 2 users with fewer than 3"):
        data = pp.preprocess(df, pp.PreprocessConfig(0, 0), "tiny")
    assert data.user_ids == ["a"] and data.stats["dropped_short_users"] == 2


def test_empty_after_filtering_is_a_data_error():
    df = frame([("a", 1, 0), ("a", 2, 1), ("a", 3, 2)])
    with pytest.raises(DataError, match=r"tiny: no interactions left after filtering.*min_user_interactions=5.*Lower"):
        pp.preprocess(df, pp.PreprocessConfig(5, 5), "tiny")


def test_stats_match_table_one_definitions():
    df = frame([("a", i, i) for i in range(1, 6)] + [("b", i, i) for i in range(1, 4)])
    stats = pp.preprocess(df, pp.PreprocessConfig(0, 0)).stats
    assert stats["users"] == 2 and stats["items"] == 5 and stats["interactions"] == 8
    assert stats["avg_length"] == 4.0 and stats["density"] == pytest.approx(8 / 10)
    assert stats["train_samples"] == 2 + 0 and stats["raw_interactions"] == 8
    assert "density" in pp.format_stats(stats)


# ----------------------------------------------------------------------------------------------
# Leave-one-out and prefixes: user 0 = 1 2 3 4 5, user 1 = 6 7 8


OFFSETS = torch.tensor([0, 5, 8])
ITEMS = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8])


def windows(split: str, length: int) -> tuple[torch.Tensor, ...]:
    users, starts, ends = pp.split_positions(OFFSETS, split)
    return users, gather_windows(ITEMS, starts, ends, length), ends


def test_train_samples_are_every_prefix_of_the_training_part():
    users, inputs, ends = windows("train", 4)
    assert users.tolist() == [0, 0]
    assert inputs.tolist() == [[1, 0, 0, 0], [1, 2, 0, 0]]
    assert ITEMS[ends].tolist() == [2, 3]


def test_valid_test_predict_split():
    users, inputs, ends = windows("valid", 4)
    assert users.tolist() == [0, 1]
    assert inputs.tolist() == [[1, 2, 3, 0], [6, 0, 0, 0]] and ITEMS[ends].tolist() == [4, 7]
    _, inputs, ends = windows("test", 4)
    assert inputs.tolist() == [[1, 2, 3, 4], [6, 7, 0, 0]] and ITEMS[ends].tolist() == [5, 8]
    _, inputs, _ = windows("predict", 6)
    assert inputs.tolist() == [[1, 2, 3, 4, 5, 0], [6, 7, 8, 0, 0, 0]]


def test_truncation_keeps_the_most_recent_items_left_aligned():
    _, inputs, _ = windows("test", 2)
    assert inputs.tolist() == [[3, 4], [6, 7]]
    _, inputs, _ = windows("predict", 1)
    assert inputs.tolist() == [[5], [8]]


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown split"):
        pp.split_positions(OFFSETS, "dev")


# ----------------------------------------------------------------------------------------------
# The array pipeline against a plain-Python reference, on random frames


def reference(rows: list[tuple], min_user: int, min_item: int, dedup: bool) -> tuple[list, list, list, int]:
    """The protocol written out with lists and dicts: (user_ids, item_ids, sequences, short users dropped)."""
    from collections import Counter

    ordered = sorted(enumerate(rows), key=lambda r: (r[1][0], r[1][2], r[0]))
    events = [(u, i) for _, (u, i, _) in ordered]
    if dedup:
        seen: set = set()
        events = [e for e in events if not (e in seen or seen.add(e))]
    while True:
        users, items = Counter(u for u, _ in events), Counter(i for _, i in events)
        kept = [(u, i) for u, i in events if users[u] >= min_user and items[i] >= min_item]
        if len(kept) == len(events):
            break
        events = kept
    lengths = Counter(u for u, _ in events)
    dropped = sum(1 for n in lengths.values() if n < pp.MIN_SPLIT_LENGTH)
    events = [(u, i) for u, i in events if lengths[u] >= pp.MIN_SPLIT_LENGTH]
    user_ids, item_ids = sorted({u for u, _ in events}), sorted({i for _, i in events})
    index = {i: n + 1 for n, i in enumerate(item_ids)}
    sequences = [[index[i] for v, i in events if v == u] for u in user_ids]
    return user_ids, item_ids, sequences, dropped


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 9), st.integers(0, 4)), max_size=80),
    min_user=st.integers(0, 4),
    min_item=st.integers(0, 4),
    dedup=st.booleans(),
)
def test_preprocess_equals_the_plain_reference(rows, min_user, min_item, dedup):
    user_ids, item_ids, sequences, dropped = reference(rows, min_user, min_item, dedup)
    config = pp.PreprocessConfig(min_user, min_item, dedup)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not sequences:
            with pytest.raises(DataError, match="no interactions left"):
                pp.preprocess(frame(rows) if rows else frame([("a", 0, 0)]).clear(), config)
            return
        data = pp.preprocess(frame(rows), config)
    assert data.user_ids == user_ids and data.item_ids == [None, *item_ids]
    got = [data.items[a:b].tolist() for a, b in zip(data.offsets[:-1].tolist(), data.offsets[1:].tolist())]
    assert got == sequences
    assert data.stats["raw_interactions"] == len(rows)
    assert data.stats["repeated_pairs"] == len(rows) - len({(u, i) for u, i, _ in rows})
    assert data.stats["duplicate_rows"] == len(rows) - len(set(rows))
    assert data.stats["dropped_short_users"] == dropped
