"""ShardedBatchSampler: this rank's sample indices as whole LongTensor batches.

The training order is a permutation drawn from ``(seed, epoch)`` alone, so a run resumed at epoch k
sees the order the uninterrupted run saw; shards are equal (training) or disjoint (evaluation).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler


class ShardedBatchSampler(Sampler[Tensor]):
    """Yields this rank's samples as LongTensor batches of indices.

    Shuffled from ``(seed, epoch)`` when ``shuffle`` (Lightning calls :meth:`set_epoch` each epoch,
    so a resumed run sees the same order). ``equal_shards`` pads by wrapping so every rank gets
    ``ceil(N / world_size)`` samples (training); otherwise ranks take disjoint strides ``rank::world``
    with no padding (evaluation: every sample on exactly one rank).

    ``lengths`` (N,) groups samples of similar length into the same batch, so trimmed batches carry
    little padding: without ``shuffle`` the order is simply sorted by length (evaluation: metrics do
    not depend on the order); with ``shuffle`` (training, ``bucket_by_length``) the shuffled order is
    sorted within windows of ``BUCKET_WINDOW`` global batches and the batches are shuffled again.
    """

    BUCKET_WINDOW = 64

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        equal_shards: bool = False,
        lengths: Tensor | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.rank, self.world_size, self.equal_shards = rank, world_size, equal_shards
        self.lengths = lengths

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self) -> Tensor:
        """LongTensor (S,) of this rank's sample indices for the current epoch, in batch order."""
        gen = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=gen)
        elif self.lengths is not None:
            order = torch.argsort(self.lengths, stable=True)
        else:
            order = torch.arange(self.num_samples)
        if self.equal_shards and self.num_samples:
            total = math.ceil(self.num_samples / self.world_size) * self.world_size
            order = order.repeat(math.ceil(total / self.num_samples))[:total]
        if self.shuffle and self.lengths is not None:
            order = self._bucket(order, gen)
        return order[self.rank :: self.world_size]

    def _bucket(self, order: Tensor, gen: torch.Generator) -> Tensor:
        """Sort a shuffled order by length within windows, then shuffle whole (global) batches."""
        step = self.batch_size * self.world_size  # one global batch: each rank takes a stride of it
        window = step * self.BUCKET_WINDOW
        chunks = [c[torch.argsort(self.lengths[c], stable=True)] for c in order.split(window)]
        batches = torch.cat(chunks).split(step)
        return torch.cat([batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()])

    def _shard_size(self) -> int:
        if self.equal_shards:
            return math.ceil(self.num_samples / self.world_size) if self.num_samples else 0
        return len(range(self.rank, self.num_samples, self.world_size))

    def __iter__(self):
        yield from self.shard().split(self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self._shard_size() / self.batch_size)


def _epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed from (seed, epoch) (no overlap between seed+1/epoch and seed/epoch+1)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint64)[0] >> np.uint64(1))
