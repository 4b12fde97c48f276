"""The processed-data cache: hits, invalidation, safe loading, atomic writes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from sigma_lightning import paths
from sigma_lightning.data import DataError
from sigma_lightning.data import cache as pp_cache
from sigma_lightning.data import datamodule as dm_module
from sigma_lightning.data import preprocess as pp
from sigma_lightning.data.datamodule import SeqRecDataModule
from sigma_lightning.data.readers import read_interactions

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
    with pytest.warns(UserWarning, match=rf"data cache {cached} is unusable \(damaged or truncated"):
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


# ----------------------------------------------------------------------------------------------
# Integrity: a checksum over the contents, atomic fsynced writes, leftovers of killed writes


def fresh(path) -> pp.SequenceData:
    """The data as a fresh read and preprocess gives it (the reference a rebuilt cache must equal)."""
    return pp.preprocess(read_interactions(path), pp.PreprocessConfig(0, 0))


def assert_same_data(a: pp.SequenceData, b: pp.SequenceData) -> None:
    assert torch.equal(a.items, b.items) and torch.equal(a.offsets, b.offsets)
    assert a.user_ids == b.user_ids and a.item_ids == b.item_ids and a.stats == b.stats


def rebuilt_after(write, cache_dir, count_reads, damage, reason: str) -> None:
    """Cache a file, damage the cache entry, and check the next load warns, rebuilds and is right."""
    path = write("seq.txt", SEQUENCES)
    make_dm(path, cache_dir).prepare_data()
    (cached,) = cache_dir.iterdir()
    damage(cached)
    with pytest.warns(UserWarning, match=rf"^data cache {cached} is unusable \({reason}.*\); removed it") as seen:
        dm = make_dm(path, cache_dir)
        data = dm.data
    assert len(seen) == 1 and "\n" not in str(seen[0].message)
    assert len(count_reads) == 2  # read again from the source
    assert_same_data(data, fresh(path))
    assert_same_data(make_dm(path, cache_dir).data, data)  # and the rewritten entry is good
    assert len(count_reads) == 2


def alter_one_value(cached) -> None:
    """Change one item id, keeping the file a valid torch file with the same structure."""
    payload = torch.load(cached, weights_only=True)
    payload["items"][3] = payload["items"][4]
    torch.save(payload, cached)


def flip_one_tensor_byte(cached) -> None:
    """Flip a bit inside the stored offsets: torch.load reads the file without complaint."""
    raw = bytearray(cached.read_bytes())
    offsets = torch.load(cached, weights_only=True)["offsets"]
    needle = offsets.numpy().tobytes()
    at = raw.find(needle)
    assert at > 0
    raw[at + 8] ^= 0x01
    cached.write_bytes(bytes(raw))


def test_altered_value_with_intact_structure_is_detected_and_rebuilt(write, cache_dir, count_reads):
    rebuilt_after(write, cache_dir, count_reads, alter_one_value, "altered: its contents do not match their checksum")


def test_flipped_byte_is_detected_and_rebuilt(write, cache_dir, count_reads):
    rebuilt_after(write, cache_dir, count_reads, flip_one_tensor_byte, "altered")


def test_truncated_cache_is_rebuilt(write, cache_dir, count_reads):
    def truncate(cached):
        cached.write_bytes(cached.read_bytes()[: cached.stat().st_size // 2])

    rebuilt_after(write, cache_dir, count_reads, truncate, "damaged or truncated")


def test_empty_and_unreadable_cache_files_are_rebuilt(write, cache_dir, count_reads):
    rebuilt_after(write, cache_dir, count_reads, lambda cached: cached.write_bytes(b""), "damaged or truncated")


def test_entry_of_other_settings_under_this_name_is_rebuilt(write, cache_dir, count_reads):
    def swap(cached):
        payload = torch.load(cached, weights_only=True)
        payload["key"] = "0" * 64
        payload["checksum"] = pp_cache.checksum(payload)  # a consistent file, but not this entry
        torch.save(payload, cached)

    rebuilt_after(write, cache_dir, count_reads, swap, "written for another source file or other settings")


def test_string_and_integer_ids_survive_the_round_trip(tmp_path):
    for ids in (["a", "", "\u00e9t\u00e9", "x y"], [3, -1, 2**40]):
        data = pp.SequenceData(torch.tensor([1, 2]), torch.tensor([0, 2]), ["u"], [None, *ids])
        pp.save_cache(data, tmp_path / "c.pt", key="k")
        loaded = pp.load_cache(tmp_path / "c.pt", key="k")
        assert loaded.item_ids == [None, *ids] and loaded.user_ids == ["u"]


def test_write_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(pp_cache.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(pp_cache.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    data = pp.SequenceData(torch.tensor([1, 2, 3]), torch.tensor([0, 3]), ["u"], [None, 1, 2, 3])
    pp.save_cache(data, tmp_path / "x.pt")
    assert calls[:2] == ["fsync", "replace"]
    assert cache_files(tmp_path) == ["x.pt"]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def leftover(folder, host: str, pid: int, age_s: float):
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".seq-0123.pt.{host}.{pid}.abcd1234{pp_cache.TEMP_SUFFIX}"
    tmp.write_bytes(b"half a file")
    old = time.time() - age_s
    os.utime(tmp, (old, old))
    return tmp


def test_leftover_temporaries_of_killed_writes_are_removed(cache_dir):
    host = pp_cache._host()
    dead = leftover(cache_dir, host, dead_pid(), age_s=120)
    ancient = leftover(cache_dir, "otherhost", 1, age_s=pp_cache.STALE_TEMP_S + 60)
    live = leftover(cache_dir, host, os.getpid(), age_s=120)  # a write in progress in this process
    young_dead = leftover(cache_dir, host, dead_pid(), age_s=1)  # within the grace period
    remote = leftover(cache_dir, "otherhost", 2, age_s=120)  # another host's pid tells nothing here
    removed = pp_cache.clean_temporaries(cache_dir)
    assert sorted(removed) == sorted([dead, ancient])
    assert live.exists() and young_dead.exists() and remote.exists() and not dead.exists()


def test_datamodule_cleans_leftovers_when_it_reads_the_cache(write, cache_dir):
    path = write("seq.txt", SEQUENCES)
    make_dm(path, cache_dir).prepare_data()
    stale = leftover(cache_dir, pp_cache._host(), dead_pid(), age_s=600)
    make_dm(path, cache_dir).prepare_data()  # a cache hit
    assert not stale.exists() and len(cache_files(cache_dir)) == 1
