"""The processed-data cache: hits, invalidation, safe loading, atomic writes."""

from __future__ import annotations

import os

import pytest
import torch

from sigma_lightning import paths
from sigma_lightning.data import DataError
from sigma_lightning.data import datamodule as dm_module
from sigma_lightning.data import preprocess as pp
from sigma_lightning.data.datamodule import SeqRecDataModule

SEQUENCES = "u1 a b c d\nu2 b c d e\nu3 a c d e\n"


def make_dm(path, cache_dir, **kwargs) -> SeqRecDataModule:
    settings = {"min_user_interactions": 0, "min_item_interactions": 0, **kwargs}
    return SeqRecDataModule(str(path), cache_dir=str(cache_dir), **settings)


def cache_files(cache_dir) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir()) if cache_dir.exists() else []


@pytest.fixture
def count_reads(monkeypatch) -> list[int]:
    """Counts calls of the reader behind the DataModule (a cache hit makes none)."""
    calls: list[int] = []
    real = dm_module.read_interactions

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(dm_module, "read_interactions", counting)
    return calls


def test_cache_hit_skips_reading_and_keeps_id_maps(write, cache_dir, count_reads):
    path = write("seq.txt", SEQUENCES)
    first = make_dm(path, cache_dir)
    assert first.num_items == 5 and len(count_reads) == 1
    assert len(cache_files(cache_dir)) == 1
    second = make_dm(path, cache_dir)
    assert second.num_items == 5 and len(count_reads) == 1  # served from the cache
    assert second.item_ids == [None, "a", "b", "c", "d", "e"] and second.user_ids == ["u1", "u2", "u3"]
    assert torch.equal(first.data.items, second.data.items) and first.statistics == second.statistics


def test_integer_ids_round_trip(write, cache_dir):
    path = write("seq.txt", "7 30 10 20\n5 10 20 30\n")
    make_dm(path, cache_dir).prepare_data()
    dm = make_dm(path, cache_dir)
    assert dm.user_ids == [5, 7] and dm.item_ids == [None, 10, 20, 30]


def test_max_seq_len_does_not_invalidate(write, cache_dir, count_reads):
    path = write("seq.txt", SEQUENCES)
    make_dm(path, cache_dir, max_seq_len=2).prepare_data()
    make_dm(path, cache_dir, max_seq_len=9).prepare_data()
    assert len(count_reads) == 1


@pytest.mark.parametrize(
    "change",
    [{"deduplicate": True}, {"min_user_interactions": 4}, {"min_item_interactions": 2}, {"format": "sequence"}],
)
def test_setting_change_invalidates(write, cache_dir, count_reads, change):
    path = write("seq.txt", SEQUENCES)
    make_dm(path, cache_dir).prepare_data()
    make_dm(path, cache_dir, **change).prepare_data()
    assert len(count_reads) == 2 and len(cache_files(cache_dir)) == 2


def test_file_change_invalidates(write, cache_dir, count_reads):
    path = write("seq.txt", SEQUENCES)
    assert make_dm(path, cache_dir).num_items == 5
    path.write_text(SEQUENCES + "u4 a b f\n")
    assert make_dm(path, cache_dir).num_items == 6 and len(count_reads) == 2


def test_same_size_rewrite_invalidates_by_mtime(write, cache_dir, count_reads):
    path = write("seq.txt", SEQUENCES)
    make_dm(path, cache_dir).prepare_data()
    path.write_text(SEQUENCES.replace("a", "z"))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert make_dm(path, cache_dir).item_ids[-1] == "z" and len(count_reads) == 2


def test_bad_input_leaves_no_cache_file(write, cache_dir):
    path = write("ratings.dat", "1::2::5::100\n1::3\n")
    with pytest.raises(DataError, match="line 2"):
        _ = make_dm(path, cache_dir).num_items
    assert cache_files(cache_dir) == []


def test_empty_after_filtering_leaves_no_cache_file(write, cache_dir):
    path = write("seq.txt", SEQUENCES)
    with pytest.raises(DataError, match="no interactions left"):
        _ = make_dm(path, cache_dir, min_user_interactions=50).num_items
    assert cache_files(cache_dir) == []


def test_failed_write_leaves_no_partial_file(write, cache_dir, monkeypatch):
    data = pp.SequenceData(torch.tensor([1, 2, 3]), torch.tensor([0, 3]), ["u"], [None, 1, 2, 3])

    def broken_save(obj, fh):
        fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pp.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        pp.save_cache(data, cache_dir / "x.pt")
    assert cache_files(cache_dir) == []


def test_corrupt_cache_file_is_rebuilt(write, cache_dir, count_reads):
    path = write("seq.txt", SEQUENCES)
    make_dm(path, cache_dir).prepare_data()
    (cached,) = cache_dir.iterdir()
    cached.write_bytes(b"not a torch file")
    assert make_dm(path, cache_dir).num_items == 5 and len(count_reads) == 2


def test_cache_is_plain_data_loadable_with_weights_only(write, cache_dir):
    path = write("seq.txt", SEQUENCES)
    make_dm(path, cache_dir).prepare_data()
    (cached,) = cache_dir.iterdir()
    payload = torch.load(cached, weights_only=True)
    assert set(payload) == {"version", "key", "checksum", "items", "offsets", "user_ids", "item_ids", "stats"}
    assert all(isinstance(payload[k], torch.Tensor) for k in ("items", "offsets"))


def test_use_cache_false_writes_nothing(write, cache_dir):
    make_dm(write("seq.txt", SEQUENCES), cache_dir, use_cache=False).prepare_data()
    assert cache_files(cache_dir) == []


def test_default_cache_dir_is_the_package_cache_rule(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert pp.default_cache_dir() == tmp_path / "sigma_lightning" / "data" == paths.cache_dir("data")
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "mine"))
    assert pp.default_cache_dir() == tmp_path / "mine" / "data"
    assert SeqRecDataModule().cache_dir == tmp_path / "mine" / "data"
