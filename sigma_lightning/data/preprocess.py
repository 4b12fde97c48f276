"""From the reader's ``(user, item, time)`` frame to per-user item sequences, and back from a cache.

Pipeline (:func:`preprocess`): chronological order (ties keep the file order) -> optional
de-duplication of repeated (user, item) pairs (first kept) -> iterative k-core filtering to the
fixed point -> drop users too short to split (< 3) -> remap ids to ``1..num_items`` (items, 0 is
padding) and ``0..num_users-1`` (users), both in the sorted order of the original ids ->
:class:`SequenceData`, a CSR layout: ``items[offsets[u]:offsets[u + 1]]`` is user ``u``'s
sequence, oldest first.

The leave-one-out split and the prefix samples are index arithmetic on ``offsets``
(:func:`split_positions`), so nothing per-sample is stored. The cache holds plain tensors,
lists and dicts only and is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl
import torch
from torch import Tensor

from sigma_lightning.data.readers import DataError

log = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when the cached layout or the preprocessing semantics change."""

MIN_SPLIT_LENGTH = 3
"""Leave-one-out needs one training item, one validation target and one test target."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings that change the processed data (all of them enter the cache key)."""

    min_user_interactions: int = 5
    min_item_interactions: int = 5
    deduplicate: bool = False


@dataclass
class SequenceData:
    """Processed interactions in CSR form.

    items: LongTensor (N,) internal item ids ``1..num_items``, grouped by user, oldest first.
    offsets: LongTensor (U + 1,) user ``u`` owns ``items[offsets[u]:offsets[u + 1]]``.
    user_ids: original id of each internal user index (length U).
    item_ids: original id of each internal item id (length num_items + 1; ``item_ids[0]`` is None, padding).
    stats: Table-1 statistics (see :func:`compute_stats`).
    """

    items: Tensor
    offsets: Tensor
    user_ids: list
    item_ids: list
    stats: dict = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return self.offsets.numel() - 1

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def lengths(self) -> Tensor:
        """LongTensor (U,) interactions per user."""
        return self.offsets[1:] - self.offsets[:-1]


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
    }
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


# ----------------------------------------------------------------------------------------------
# Cache


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/sigma_lightning``, else ``~/.cache/sigma_lightning``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sigma_lightning"


def source_fingerprint(path: Path) -> dict:
    """Identity of a source file: resolved path, size and modification time (ns)."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cache_path(cache_dir: Path, source: Path, settings: dict) -> Path:
    """Cache file for this source file and these settings: ``<stem>-<hash>.pt``."""
    key = json.dumps({"version": CACHE_VERSION, "source": source_fingerprint(source), **settings}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_dir / f"{source.stem}-{digest}.pt"


def save_cache(data: SequenceData, path: Path) -> None:
    """Write atomically (temp file in the same folder, then rename): no half-written file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "version": CACHE_VERSION,
        "items": data.items,
        "offsets": data.offsets,
        "user_ids": _ids_to_storable(data.user_ids),
        "item_ids": _ids_to_storable(data.item_ids[1:]),
        "stats": data.stats,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_cache(path: Path) -> SequenceData | None:
    """Read a cache file written by :func:`save_cache`; None if absent, stale or unreadable."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file: rebuild it
        log.warning("ignoring unreadable cache file %s (%s)", path, err)
        return None
    if not isinstance(payload, dict) or payload.get("version") != CACHE_VERSION:
        return None
    return SequenceData(
        items=payload["items"],
        offsets=payload["offsets"],
        user_ids=_ids_from_storable(payload["user_ids"]),
        item_ids=[None, *_ids_from_storable(payload["item_ids"])],
        stats=payload["stats"],
    )


def _ids_to_storable(ids: list) -> Tensor | list:
    """Integer ids as one LongTensor (fast to save and load), string ids as a list."""
    if ids and all(isinstance(x, int) for x in ids):
        return torch.tensor(ids, dtype=torch.long)
    return list(ids)


def _ids_from_storable(ids: Tensor | list) -> list:
    return ids.tolist() if isinstance(ids, Tensor) else list(ids)


def settings_key(format: str, read_options: dict, config: PreprocessConfig) -> dict:
    """Everything that changes the processed data besides the source file itself."""
    return {"format": format, "read": read_options, "preprocess": asdict(config)}
