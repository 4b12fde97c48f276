"""Histories the model never saw, encoded with a trained model's item catalogue.

`sigma predict --data.predict_path FILE` (and `recommend(..., histories=...)`) recommend for the
users of FILE, read by the same readers as training data (any supported format). Each user's
interactions are ordered by time as in training, items are mapped to the catalogue's internal ids,
and items the catalogue does not hold are dropped (counted once, in one warning). A user left with
no known item keeps an empty history: the predictions then come from item popularity and are
flagged in the output (docs/predict.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import polars as pl
import torch
from torch import Tensor

from sigma_lightning.data.preprocess import order_interactions


@dataclass
class EncodedHistories:
    """Histories in CSR form: user u's internal item ids are `items[offsets[u]:offsets[u + 1]]`.

    user_ids: the original id of each user, in output order. unknown_items: interactions dropped
    because the catalogue does not hold their item.
    """

    items: Tensor  # (N,) long, 1..num_items
    offsets: Tensor  # (U + 1,) long
    user_ids: list
    unknown_items: int

    @property
    def lengths(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]  # (U,)


def histories_frame(histories: Mapping[object, Sequence[object]]) -> pl.DataFrame:
    """{user: [item, ...] oldest first} -> the readers' (user, item, time) frame."""
    users, items, times = [], [], []
    for user, seq in histories.items():
        users.extend([user] * len(seq))
        items.extend(seq)
        times.extend(range(len(seq)))
    if not users:
        return pl.DataFrame({"user": [], "item": [], "time": []}, schema={"user": pl.String, "item": pl.String, "time": pl.Int64})
    return pl.DataFrame({"user": users, "item": items, "time": times}, strict=False)


def encode_histories(frame: pl.DataFrame, item_ids: Sequence[object], source: str = "histories") -> EncodedHistories:
    """Map a (user, item, time) frame onto the catalogue `item_ids` (`item_ids[j]` is the original id
    of internal item j; `item_ids[0]` is padding). Users keep the order of their sorted ids."""
    catalogue = pl.DataFrame({"item": list(item_ids[1:]), "iidx": range(1, len(item_ids))}, strict=False)
    frame = order_interactions(frame)
    if frame["item"].dtype != catalogue["item"].dtype:  # e.g. integer ids in one file, strings in the other
        frame = frame.with_columns(pl.col("item").cast(pl.String))
        catalogue = catalogue.with_columns(pl.col("item").cast(pl.String))
    joined = frame.with_row_index("__row").join(catalogue, on="item", how="left").sort("__row")
    unknown = int(joined["iidx"].null_count())
    if unknown:
        warnings.warn(
            f"{source}: dropped {unknown} of {frame.height} interactions whose item the model does not know "
            "(not in its training catalogue).",
            stacklevel=2,
        )
    users = frame.select("user").unique(maintain_order=True).with_row_index("uidx")  # sorted: frame is ordered
    known = joined.filter(pl.col("iidx").is_not_null()).join(users, on="user", how="left").sort("__row")
    counts = torch.bincount(torch.from_numpy(known["uidx"].to_numpy().astype("int64")), minlength=users.height)
    offsets = torch.zeros(users.height + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(counts, 0)
    items = torch.from_numpy(known["iidx"].to_numpy().astype("int64"))  # (N,) grouped by user, time-ordered
    return EncodedHistories(items, offsets, users["user"].to_list(), unknown)
