"""The synthetic generator: deterministic, sized as asked, and sequential (next item beats popularity)."""

from __future__ import annotations

import pytest
import torch

from sigma_lightning.data import DataError, SyntheticConfig, generate
from sigma_lightning.data import preprocess as pp
from sigma_lightning.data.datamodule import SeqRecDataModule


def test_same_seed_same_data_other_seed_other_data():
    config = SyntheticConfig(num_users=200, num_items=60, num_topics=4)
    assert generate(config).equals(generate(config))
    assert not generate(config).equals(generate(SyntheticConfig(num_users=200, num_items=60, num_topics=4, seed=1)))


def test_sizes_and_lengths():
    config = SyntheticConfig(num_users=300, num_items=80, num_topics=5, min_length=4, max_length=12)
    frame = generate(config)
    lengths = frame.group_by("user").len()["len"]
    assert frame["user"].n_unique() == 300 and frame["item"].max() <= 80 and frame["item"].min() >= 1
    assert lengths.min() >= 4 and lengths.max() <= 12
    assert frame.columns == ["user", "item", "time"]


def test_popularity_is_skewed():
    counts = generate(SyntheticConfig()).group_by("item").len()["len"].sort(descending=True)
    top_decile = counts.head(len(counts) // 10).sum()
    assert top_decile > 0.2 * counts.sum()  # uniform would be 10%


@pytest.mark.parametrize(
    "bad",
    [{"min_length": 2}, {"num_items": 3, "num_topics": 4}, {"markov_prob": 0.95}, {"step_probs": (0.5, 0.2, 0.2)}],
)
def test_invalid_settings(bad):
    with pytest.raises(DataError, match="synthetic"):
        generate(SyntheticConfig(**bad))
    with pytest.raises(DataError, match="synthetic"):
        SeqRecDataModule(synthetic=SyntheticConfig(**bad))


def hit_rate_at_10(scores: torch.Tensor, targets: torch.Tensor) -> float:
    return (scores.topk(10).indices == targets.unsqueeze(1)).any(1).float().mean().item()


def test_next_item_is_predictable_beyond_popularity():
    """A bigram (Markov) count model fit on training + validation beats most-popular on the test items."""
    data = pp.preprocess(generate(SyntheticConfig()), pp.PreprocessConfig())
    items, n = data.items, data.num_items
    _, _, train_ends = pp.split_positions(data.offsets, "train")
    _, _, valid_ends = pp.split_positions(data.offsets, "valid")
    ends = torch.cat([train_ends, valid_ends])
    bigram = torch.zeros(n + 1, n + 1)
    bigram.index_put_((items[ends - 1], items[ends]), torch.ones(ends.numel()), accumulate=True)
    popularity = torch.bincount(items[ends], minlength=n + 1).float()
    _, _, test_ends = pp.split_positions(data.offsets, "test")
    targets = items[test_ends]
    markov = hit_rate_at_10(bigram[items[test_ends - 1]] + 1e-3 * popularity, targets)
    popular = hit_rate_at_10(popularity.expand(targets.numel(), -1), targets)
    assert markov > 0.5 and markov > 3 * popular
