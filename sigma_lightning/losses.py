"""Training losses of next-item prediction over the item table, chosen in YAML as `model.loss`.

Every loss maps user representations (B, D), the table of real items (N, D) (row j is item j + 1)
and target columns (B,) in 0..N-1 to a scalar:

* `FullSoftmax`: cross-entropy over every item, from the whole (B, N) logits (the papers' loss);
* `ChunkedSoftmax`: the same value and gradients, computed in item chunks (memory O(B x chunk));
* `SampledSoftmax`: cross-entropy over the target and a sample of negatives (uniform, popularity
  or the batch's other targets), with the log-Q correction that makes it estimate the full one.

    model:
      loss:
        class_path: sigma_lightning.losses.SampledSoftmax
        init_args: {negatives: popularity, num_negatives: 1024}

Losses that sample by popularity need how often each item is a training target: SeqRecModule
hands them `train_target_counts(datamodule)` when fitting starts (`set_item_counts`).
docs/efficiency.md measures the memory and time of each at 10^5 and 10^6 items.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sigma_lightning.errors import ConfigError, check_range
from sigma_lightning.ops.chunked_softmax import chunked_cross_entropy

Negatives = Literal["uniform", "popularity", "in_batch"]


class Loss(nn.Module):
    """Base of the training losses: `forward(user (B, D), items (N, D), target (B,)) -> scalar`."""

    needs_item_counts = False  # True: set_item_counts must be called before training

    def set_item_counts(self, counts: Tensor) -> None:
        """How often each item is a training target, (N,); unused unless `needs_item_counts`."""

    def forward(self, user: Tensor, items: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError


class FullSoftmax(Loss):
    """Cross-entropy over every item from the full (B, N) logits (float32 softmax)."""

    def forward(self, user: Tensor, items: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy((user @ items.T).float(), target)  # (B, N) logits


class ChunkedSoftmax(Loss):
    """Exact cross-entropy over every item, `chunk_size` items at a time, recomputed in backward:
    equal to `FullSoftmax` in value and gradients, with O(B x chunk_size) memory instead of O(B x N).

    Args:
        chunk_size: items per block; larger blocks run fewer, bigger matmuls.
    """

    def __init__(self, chunk_size: int = 8192) -> None:
        super().__init__()
        check_range("model.loss.init_args.chunk_size", chunk_size, 1)
        self.chunk_size = chunk_size

    def forward(self, user: Tensor, items: Tensor, target: Tensor) -> Tensor:
        return chunked_cross_entropy(user, items, target, self.chunk_size)


class SampledSoftmax(Loss):
    """Cross-entropy over each row's target and one sample of negatives shared by the batch.

    A row's logits are its target's and those of K negatives; a negative that is the row's own target
    (an accidental hit) is masked out for that row. Memory O(B x K) instead of O(B x N).

    Args:
        num_negatives: K, the items drawn per batch (with replacement) for `uniform` and `popularity`.
        negatives: where the negatives come from, each with its sampling probability q_j:
            `uniform`, q_j = 1/N; `popularity`, q_j proportional to (c_j + 1) ** popularity_exponent,
            c_j the item's count as a training target; `in_batch`, the batch's targets (K = B - 1 other
            rows; num_negatives unused), q_j = c_j / sum(c), the chance a training sample's target is j
            (counts below 1 count as 1).
        log_q_correction: subtract log(K q_j), the log of a negative's expected number of draws, from
            its logit. The negatives' exp-sum then estimates the full softmax's sum over the other
            items without bias, and the loss (and its gradient) approach the full cross-entropy as K
            grows (Bengio and Senecal 2008; Jean et al. 2015; Yi et al. 2019 for in-batch negatives).
            Off: the plain sampled softmax, which under `popularity`/`in_batch` pushes popular items
            down too hard.
        popularity_exponent: the power of (c_j + 1) for `popularity` (0 is uniform).
    """

    def __init__(self, num_negatives: int = 256, negatives: Negatives = "uniform",
                 log_q_correction: bool = True, popularity_exponent: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        check_range("model.loss.init_args.num_negatives", num_negatives, 1)
        check_range("model.loss.init_args.popularity_exponent", popularity_exponent, 0)
        if negatives not in ("uniform", "popularity", "in_batch"):
            raise ConfigError(
                f"model.loss.init_args.negatives={negatives!r}: expected 'uniform', 'popularity' or 'in_batch'."
            )
        self.num_negatives, self.negatives = num_negatives, negatives
        self.log_q_correction, self.popularity_exponent = log_q_correction, popularity_exponent
        # Derived from the training data when fitting starts: not part of a checkpoint's weights.
        self.register_buffer("sampling_probs", torch.empty(0), persistent=False)

    @property
    def needs_item_counts(self) -> bool:
        return self.negatives != "uniform" and self.sampling_probs.numel() == 0

    def set_item_counts(self, counts: Tensor) -> None:
        counts = counts.detach().to(torch.float32)  # (N,)
        if counts.dim() != 1 or counts.numel() == 0 or bool((counts < 0).any()):
            raise ConfigError(
                f"SampledSoftmax.set_item_counts: expected (N,) counts >= 0, got shape {tuple(counts.shape)}."
            )
        if self.negatives == "in_batch":
            weights = counts.clamp(min=1)
        else:
            weights = (counts + 1) ** self.popularity_exponent
        self.sampling_probs = (weights / weights.sum()).to(self.sampling_probs.device)

    def forward(self, user: Tensor, items: Tensor, target: Tensor) -> Tensor:
        negatives = self.draw(items.size(0), target)  # (K,)
        return F.cross_entropy(self.logits(user, items, target, negatives), torch.zeros_like(target))

    def logits(self, user: Tensor, items: Tensor, target: Tensor, negatives: Tensor) -> Tensor:
        """(B, 1 + K) float32 logits: the target's in column 0, then the negatives' (K,) columns,
        log-Q corrected if set, -inf where a negative is the row's target."""
        scores = (user @ items[negatives].T).float()  # (B, K)
        if self.log_q_correction:
            scores = scores - self.log_expected_draws(negatives, items.size(0))
        scores = scores.masked_fill(negatives.unsqueeze(0) == target.unsqueeze(1), float("-inf"))  # accidental hits
        positive = (user.float() * items[target].float()).sum(dim=1, keepdim=True)  # (B, 1)
        return torch.cat([positive, scores], dim=1)

    def draw(self, num_items: int, target: Tensor) -> Tensor:
        """The negatives' columns (K,): drawn with replacement, or the batch's targets for `in_batch`."""
        if self.negatives == "in_batch":
            return target
        if self.negatives == "uniform":
            return torch.randint(num_items, (self.num_negatives,), device=target.device)
        return torch.multinomial(self.probs_for(num_items).to(target.device), self.num_negatives, replacement=True)

    def log_expected_draws(self, negatives: Tensor, num_items: int) -> Tensor:
        """log(K q_j) for each negative (K,): K draws from q, or B - 1 other rows for `in_batch`."""
        if self.negatives == "uniform":
            return torch.full(negatives.shape, math.log(negatives.numel() / num_items), device=negatives.device)
        draws = max(negatives.numel() - 1, 1) if self.negatives == "in_batch" else negatives.numel()
        return torch.log(draws * self.probs_for(num_items).to(negatives.device)[negatives])

    def probs_for(self, num_items: int) -> Tensor:
        """The sampling probabilities (N,), or one ConfigError saying how to provide them."""
        if self.sampling_probs.numel() == 0:
            raise ConfigError(
                f"model.loss: SampledSoftmax(negatives={self.negatives!r}) needs each item's count as a training "
                "target. SeqRecModule sets it when fit starts with a data module (trainer.fit(model, datamodule=...)); "
                "otherwise call loss.set_item_counts(train_target_counts(datamodule)) first."
            )
        if self.sampling_probs.numel() != num_items:
            raise ConfigError(
                f"model.loss: the item counts cover {self.sampling_probs.numel()} items but the item table has "
                f"{num_items}; set them from the data the model is trained on."
            )
        return self.sampling_probs


def train_target_counts(datamodule) -> Tensor:
    """(N,) long: how often each item 1..N is the target of a training pair of a SeqRecDataModule
    (the same counts whether its samples are prefixes or sequences trained at every position)."""
    return torch.bincount(datamodule.dataset("train").target_items, minlength=datamodule.num_items + 1)[1:]
