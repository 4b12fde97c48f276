"""From the reader's ``(user, item, time)`` frame to per-user item sequences, and back from a cache.

Pipeline (:func:`preprocess`): chronological order (ties keep the file order) -> optional
de-duplication of repeated (user, item) pairs (first kept) -> iterative k-core filtering to the
fixed point -> drop users too short to split (< 3) -> remap ids to ``1..num_items`` (items, 0 is
padding) and ``0..num_users-1`` (users), both in the sorted order of the original ids ->
:class:`SequenceData`, a CSR layout: ``items[offsets[u]:offsets[u + 1]]`` is user ``u``'s
sequence, oldest first.

The leave-one-out split and the prefix samples are index arithmetic on ``offsets``
(:func:`split_positions`), so nothing per-sample is stored. The cache holds plain tensors,
lists and dicts only and is read with ``torch.load(weights_only=True)`` (see :mod:`.cache`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import polars as pl
import torch
from torch import Tensor

from sigma_lightning.data.cache import (  # noqa: F401 (re-exported: the cache's names as they were importable here)
    CACHE_VERSION,
    cache_path,
    default_cache_dir,
    load_cache,
    save_cache,
    settings_key,
    source_fingerprint,
)
from sigma_lightning.data.sequences import SequenceData
from sigma_lightning.errors import DataError

MIN_SPLIT_LENGTH = 3
"""Leave-one-out needs one training item, one validation target and one test target."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings that change the processed data (all of them enter the cache key)."""

    min_user_interactions: int = 5
    min_item_interactions: int = 5
    deduplicate: bool = False


# ----------------------------------------------------------------------------------------------
# Frame steps (polars)


def order_interactions(frame: pl.DataFrame) -> pl.DataFrame:
    """Sort by user, then time; equal times keep their file order (explicit row index)."""
    return frame.with_row_index("__row").sort(["user", "time", "__row"]).drop("__row")


def deduplicate(frame: pl.DataFrame) -> pl.DataFrame:
    """Keep the first (earliest) occurrence of each (user, item) pair; expects an ordered frame."""
    return frame.unique(subset=["user", "item"], keep="first", maintain_order=True)


def k_core(frame: pl.DataFrame, min_user: int, min_item: int) -> pl.DataFrame:
    """Iteratively drop users with < ``min_user`` and items with < ``min_item`` interactions until
    nothing changes. The fixed point is the unique maximal (min_user, min_item)-core, whatever the
    removal order."""
    if min_user <= 1 and min_item <= 1:
        return frame
    while True:
        kept = frame.filter((pl.len().over("user") >= min_user) & (pl.len().over("item") >= min_item))
        if kept.height == frame.height:
            return kept
        frame = kept


def drop_short_users(frame: pl.DataFrame, min_length: int = MIN_SPLIT_LENGTH) -> tuple[pl.DataFrame, int]:
    """Drop users with fewer than ``min_length`` interactions; returns (frame, users dropped)."""
    counts = frame.group_by("user").len()
    short = counts.filter(pl.col("len") < min_length)
    if short.height == 0:
        return frame, 0
    return frame.filter(pl.len().over("user") >= min_length), short.height


def to_sequences(frame: pl.DataFrame) -> SequenceData:
    """Remap ids (sorted order of the originals) and lay the ordered frame out as CSR."""
    user_ids = frame["user"].unique().sort()
    item_ids = frame["item"].unique().sort()
    indexed = frame.with_columns(
        (pl.col("user").rank("dense").cast(pl.Int64) - 1).alias("uidx"),
        pl.col("item").rank("dense").cast(pl.Int64).alias("iidx"),
    )
    indexed = indexed.with_row_index("__row").sort(["uidx", "__row"])  # stable: keeps the time order
    items = torch.from_numpy(indexed["iidx"].to_numpy().copy())
    counts = torch.bincount(torch.from_numpy(indexed["uidx"].to_numpy().copy()), minlength=user_ids.len())
    offsets = torch.zeros(user_ids.len() + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(counts, 0)
    return SequenceData(items, offsets, user_ids.to_list(), [None, *item_ids.to_list()])


# ----------------------------------------------------------------------------------------------
# The whole pipeline


def preprocess(frame: pl.DataFrame, config: PreprocessConfig, source: str = "data") -> SequenceData:
    """Reader frame -> :class:`SequenceData` (see the module docstring for the steps)."""
    raw = {
        "raw_users": frame["user"].n_unique(),
        "raw_items": frame["item"].n_unique(),
        "raw_interactions": frame.height,
        **count_repeats(frame),
    }
    if not config.deduplicate:
        warn_duplicates(source, raw["duplicate_rows"])
    frame = order_interactions(frame)
    if config.deduplicate:
        frame = deduplicate(frame)
    frame = k_core(frame, config.min_user_interactions, config.min_item_interactions)
    frame, dropped = drop_short_users(frame)
    warn_dropped(source, dropped)
    if frame.height == 0:
        raise DataError(
            f"{source}: no interactions left after filtering (min_user_interactions="
            f"{config.min_user_interactions}, min_item_interactions={config.min_item_interactions}, "
            f"{raw['raw_interactions']} rows before; every user needs {MIN_SPLIT_LENGTH}+ interactions). "
            "Lower `min_user_interactions` / `min_item_interactions` or use a larger data set."
        )
    data = to_sequences(frame)
    data.stats = {**compute_stats(data), **raw, "dropped_short_users": dropped}
    return data


def count_repeats(frame: pl.DataFrame) -> dict[str, int]:
    """``repeated_pairs``: interactions whose (user, item) pair occurred before (what ``deduplicate``
    drops); ``duplicate_rows``: rows equal to an earlier one in user, item and time."""
    groups = frame.group_by("user", "item").agg(pl.len().alias("n"), pl.col("time").n_unique().alias("times"))
    totals = groups.select((pl.col("n") - 1).sum().alias("pairs"), (pl.col("n") - pl.col("times")).sum().alias("rows"))
    return {"repeated_pairs": int(totals["pairs"][0] or 0), "duplicate_rows": int(totals["rows"][0] or 0)}


def warn_duplicates(source: str, duplicates: int) -> None:
    """Warn that ``duplicates`` rows repeat an earlier row exactly (no-op for 0): kept, but likely a glitch."""
    if duplicates:
        warnings.warn(
            f"{source}: {duplicates:,} rows repeat an earlier row exactly (same user, item and time); they are kept "
            "as repeated interactions. Set `deduplicate: true` to keep only the first interaction of each "
            "(user, item) pair, or remove the repeats from the file.",
            stacklevel=3,
        )


def warn_dropped(source: str, dropped: int) -> None:
    """Warn that ``dropped`` users were too short for leave-one-out (no-op for 0)."""
    if dropped:
        warnings.warn(
            f"{source}: dropped {dropped} users with fewer than {MIN_SPLIT_LENGTH} interactions after filtering "
            "(leave-one-out needs a training item, a validation and a test target).",
            stacklevel=3,
        )


def compute_stats(data: SequenceData) -> dict[str, float | int]:
    """Table-1 statistics: users, items, interactions, average length, density, training samples."""
    users, items, n = data.num_users, data.num_items, int(data.items.numel())
    return {
        "users": users,
        "items": items,
        "interactions": n,
        "avg_length": n / max(users, 1),
        "density": n / max(users * items, 1),
        "train_samples": int((data.lengths - MIN_SPLIT_LENGTH).clamp(min=0).sum()),
    }


def format_stats(stats: dict, title: str = "data") -> str:
    """A plain-text table of the statistics (one ``name  value`` line each)."""
    width = max(len(k) for k in stats)
    lines = [title] + [f"  {key:<{width}}  {format_value(key, value):>12}" for key, value in stats.items()]
    return "\n".join(lines)


def format_value(key: str, value: float | int) -> str:
    """How a statistic is shown: density with 6 decimals, other floats with 2, ints with separators."""
    if key == "density":
        return f"{value:.6f}"
    return f"{value:.2f}" if isinstance(value, float) else f"{value:,}"


# ----------------------------------------------------------------------------------------------
# Leave-one-out and prefix samples as index ranges into ``items``


def split_positions(offsets: Tensor, split: str) -> tuple[Tensor, Tensor, Tensor]:
    """Samples of one split as ``(users, starts, ends)`` LongTensors, each (S,).

    A sample's input is ``items[starts:ends]`` (its whole history, to be cut to the most recent L)
    and its target ``items[ends]`` (none for ``predict``). For a user with n items (positions 0..n-1):

    * ``train``: every prefix of the training part ``0..n-3`` predicting its next item,
      i.e. targets at positions 1..n-3 (n - 3 samples);
    * ``valid``: history ``0..n-3``, target position n-2;
    * ``test``: history ``0..n-2``, target position n-1;
    * ``predict``: the full history ``0..n-1``, no target.
    """
    starts, lengths = offsets[:-1], offsets[1:] - offsets[:-1]
    users = torch.arange(lengths.numel())
    if split == "train":
        per_user = (lengths - MIN_SPLIT_LENGTH).clamp(min=0)  # (U,)
        sample_users = torch.repeat_interleave(users, per_user)
        first = torch.cumsum(per_user, 0) - per_user  # index of each user's first sample
        rank = torch.arange(int(per_user.sum())) - torch.repeat_interleave(first, per_user)
        return sample_users, starts[sample_users], starts[sample_users] + 1 + rank
    held_out = {"valid": 2, "test": 1, "predict": 0}
    if split not in held_out:
        raise ValueError(f"unknown split {split!r}; use train, valid, test or predict")
    return users, starts, offsets[1:] - held_out[split]
