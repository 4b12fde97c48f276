"""Real data sets from ../shared/data (skipped where absent): counts equal the published ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from sigma_lightning.data.datamodule import SeqRecDataModule
from sigma_lightning.data.readers import read_interactions


@pytest.fixture
def shared_file(shared_data: Path):
    """``shared_file("beauty/Beauty.txt")``: the path, or a skip naming it where it is absent."""

    def _get(relative: str) -> Path:
        path = shared_data / relative
        if not path.is_file():
            pytest.skip(f"real data not available: {path}")
        return path

    return _get


def test_beauty_counts_match_the_paper(shared_file, tmp_path):
    dm = SeqRecDataModule(str(shared_file("beauty/Beauty.txt")), cache_dir=str(tmp_path))
    stats = dm.statistics
    assert (stats["users"], stats["items"], stats["interactions"]) == (22_363, 12_101, 198_502)
    assert round(stats["avg_length"], 2) == 8.88
    assert stats["raw_interactions"] == 198_502 and stats["dropped_short_users"] == 0
    assert stats["train_samples"] == 198_502 - 3 * 22_363
    lengths = dm.data.lengths
    assert int(lengths.min()) == 5 and int(lengths.max()) == 204
    assert dm.item_ids[1:4] == [1, 2, 3]  # integer ids keep their numeric order


def test_ml_100k_raw_counts(shared_file):
    frame = read_interactions(shared_file("ml-100k/u.data"))
    assert frame.height == 100_000
    assert frame["user"].n_unique() == 943 and frame["item"].n_unique() == 1_682


def test_ml_100k_processed(shared_file, tmp_path):
    dm = SeqRecDataModule(str(shared_file("ml-100k/u.data")), max_seq_len=200, cache_dir=str(tmp_path))
    stats = dm.statistics
    assert (stats["raw_users"], stats["raw_items"], stats["raw_interactions"]) == (943, 1_682, 100_000)
    assert stats["users"] == 943  # every user has 20+ ratings
    assert stats["items"] < 1_682 and stats["interactions"] < 100_000  # items with < 5 ratings go
    batch = next(iter(dm.test_dataloader()))
    assert batch["input_ids"].shape[1] == 200 and batch["history"].shape[1] > 200
