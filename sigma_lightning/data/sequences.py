"""SequenceData: the processed interactions every later stage reads (CSR layout, id maps, statistics)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class SequenceData:
    """Processed interactions in CSR form.

    items: LongTensor (N,) internal item ids ``1..num_items``, grouped by user, oldest first.
    offsets: LongTensor (U + 1,) user ``u`` owns ``items[offsets[u]:offsets[u + 1]]``.
    user_ids: original id of each internal user index (length U).
    item_ids: original id of each internal item id (length num_items + 1; ``item_ids[0]`` is None, padding).
    stats: Table-1 statistics (see :func:`sigma_lightning.data.preprocess.compute_stats`).
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
