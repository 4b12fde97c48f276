"""Synthetic sequences with learnable sequential structure (the embedded default data set).

Items are split into ``num_topics`` topics; inside a topic they sit on a ring. A user starts on a
random topic at a popular item, then each step

* with probability ``markov_prob`` moves 1, 2 or 3 places along the ring (probabilities
  ``step_probs``): the next item is predictable from the current one, far beyond popularity;
* with probability ``topic_switch_prob`` jumps to a popular item of another random topic;
* otherwise picks a popular item of the whole catalogue (noise).

Popularity is Zipf-like (``popularity_exponent``) over a random item order, so a most-popular
ranking is a fair but beatable baseline. Everything is drawn from one ``numpy`` generator seeded
with ``seed``: the same config gives the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from sigma_lightning.data.readers import DataError


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and structure of the synthetic data (usable from YAML as ``data.synthetic``)."""

    num_users: int = 2000
    num_items: int = 500
    num_topics: int = 10
    min_length: int = 5
    max_length: int = 40
    markov_prob: float = 0.7
    topic_switch_prob: float = 0.1
    step_probs: tuple[float, float, float] = (0.6, 0.25, 0.15)
    popularity_exponent: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        """Raise DataError on settings the generator cannot honour."""
        c = self
        if c.num_users < 1 or c.num_topics < 1 or c.num_items < c.num_topics:
            raise DataError(
                f"synthetic: need num_users >= 1 and num_items >= num_topics >= 1 (got num_users={c.num_users}, "
                f"num_items={c.num_items}, num_topics={c.num_topics}); fix `data.synthetic`."
            )
        if not 3 <= c.min_length <= c.max_length:
            raise DataError(
                f"synthetic: need 3 <= min_length <= max_length (got {c.min_length}, {c.max_length}); "
                "leave-one-out needs 3 items per user. Fix `data.synthetic.min_length`/`max_length`."
            )
        if c.markov_prob < 0 or c.topic_switch_prob < 0 or c.markov_prob + c.topic_switch_prob > 1:
            raise DataError(
                f"synthetic: markov_prob ({c.markov_prob}) and topic_switch_prob ({c.topic_switch_prob}) must be "
                ">= 0 and sum to at most 1."
            )
        if min(c.step_probs) < 0 or abs(sum(c.step_probs) - 1) > 1e-6:
            raise DataError(f"synthetic: step_probs {tuple(c.step_probs)} must be >= 0 and sum to 1.")


def generate(config: SyntheticConfig = SyntheticConfig()) -> pl.DataFrame:
    """Interaction frame ``(user, item, time)`` as the readers return it; ids start at 1."""
    config.validate()
    rng = np.random.default_rng(config.seed)
    n_items, n_topics = config.num_items, config.num_topics
    # Latent layout: topic t owns latent positions bounds[t]..bounds[t+1]-1 (a ring).
    bounds = np.linspace(0, n_items, n_topics + 1).round().astype(np.int64)
    popularity = 1.0 / np.arange(1, n_items + 1) ** config.popularity_exponent
    popularity = popularity[rng.permutation(n_items)]  # popular items spread over all topics
    cum = np.cumsum(popularity)

    lengths = _lengths(rng, config)  # (U,)
    steps = int(lengths.max())
    latent = np.zeros((config.num_users, steps), dtype=np.int64)  # (U, T)
    topic = rng.integers(0, n_topics, config.num_users)  # (U,)
    latent[:, 0] = _popular_in_topic(rng, cum, bounds, topic)
    step_offsets = np.arange(1, len(config.step_probs) + 1)
    for t in range(1, steps):
        r = rng.random(config.num_users)
        follow = r < config.markov_prob
        switch = (~follow) & (r < config.markov_prob + config.topic_switch_prob)
        noise = ~(follow | switch)
        cur = latent[:, t - 1]
        nxt = np.empty_like(cur)
        # Markov step along the topic's ring.
        start, size = bounds[topic], bounds[topic + 1] - bounds[topic]
        hop = rng.choice(step_offsets, size=config.num_users, p=config.step_probs)
        ring_next = start + (cur - start + hop) % size
        nxt[follow] = ring_next[follow]
        # Jump to another topic's popular item.
        new_topic = (topic + rng.integers(1, max(n_topics, 2), config.num_users)) % n_topics
        topic = np.where(switch, new_topic, topic)
        nxt[switch] = _popular_in_topic(rng, cum, bounds, topic)[switch]
        # Noise: a popular item anywhere; the user moves to its topic.
        anywhere = np.searchsorted(cum, rng.random(config.num_users) * cum[-1], side="right")
        nxt[noise] = anywhere[noise]
        topic = np.where(noise, np.searchsorted(bounds, nxt, side="right") - 1, topic)
        latent[:, t] = nxt

    item_of_latent = rng.permutation(n_items) + 1  # external ids 1..num_items hide the layout
    keep = np.arange(steps)[None, :] < lengths[:, None]  # (U, T)
    users = np.broadcast_to(np.arange(1, config.num_users + 1)[:, None], keep.shape)[keep]
    times = np.broadcast_to(np.arange(steps)[None, :], keep.shape)[keep]
    return pl.DataFrame({"user": users, "item": item_of_latent[latent[keep]], "time": times}).cast(pl.Int64)


def _lengths(rng: np.random.Generator, config: SyntheticConfig) -> np.ndarray:
    """Log-uniform lengths in [min_length, max_length]: many short users, a long tail. (U,)"""
    lo, hi = config.min_length, config.max_length + 1
    return np.floor(lo * (hi / lo) ** rng.random(config.num_users)).astype(np.int64).clip(lo, config.max_length)


def _popular_in_topic(rng: np.random.Generator, cum: np.ndarray, bounds: np.ndarray, topic: np.ndarray) -> np.ndarray:
    """One popularity-weighted latent item from each user's topic. (U,)"""
    low = np.where(bounds[topic] > 0, cum[bounds[topic] - 1], 0.0)
    high = cum[bounds[topic + 1] - 1]
    draw = low + rng.random(topic.shape[0]) * (high - low)
    picked = np.searchsorted(cum, draw, side="right")
    return np.clip(picked, bounds[topic], bounds[topic + 1] - 1)
