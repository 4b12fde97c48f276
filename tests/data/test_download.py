"""The downloader against a local HTTP server (tests/data/fixtures/raw.py): good, corrupt, dropped and
resumed, ignoring Range, 404, stalled, offline; and the checksum record checked on every later use."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from sigma_lightning.data.download import DownloadSettings, fetch, part_path, record_path, verify
from sigma_lightning.errors import DataError
from tests.data.fixtures.raw import closed_port, raw_file, serve

BODY = raw_file("amazon-beauty")  # 596 bytes of gzip
MD5 = hashlib.md5(BODY).hexdigest()
MANUAL = "To do it by hand: download the file and put it at DEST."
QUIET = DownloadSettings(progress=False, retries=1, timeout=5.0)


@pytest.fixture
def server():
    with serve({"reviews.json.gz": BODY}, drop_after=200, stall_s=1.0) as (base, state):
        yield base, state


def _fetch(url: str, dest: Path, settings: DownloadSettings = QUIET, md5: str | None = MD5) -> dict:
    return fetch([url], dest, md5, settings, MANUAL)


def test_good_download_is_verified_renamed_and_recorded(server, tmp_path):
    base, _ = server
    dest = tmp_path / "reviews.json.gz"
    record = _fetch(f"{base}/good/reviews.json.gz", dest)
    assert dest.read_bytes() == BODY and not part_path(dest).exists()
    on_disk = json.loads(record_path(dest).read_text())
    assert on_disk["sha256"] == hashlib.sha256(BODY).hexdigest() == record["sha256"]
    assert (on_disk["size"], on_disk["md5"], on_disk["md5_published"]) == (len(BODY), MD5, True)
    assert on_disk["url"] == f"{base}/good/reviews.json.gz"


def test_published_checksum_mismatch_is_an_error_and_nothing_is_kept(server, tmp_path):
    base, _ = server
    dest = tmp_path / "reviews.json.gz"
    with pytest.raises(DataError, match="fails its published checksum") as err:
        _fetch(f"{base}/corrupt/reviews.json.gz", dest)
    assert f"expected {MD5}" in str(err.value) and MANUAL in str(err.value)
    assert not dest.exists() and not part_path(dest).exists() and not record_path(dest).exists()


def test_dropped_connection_keeps_the_part_and_the_next_call_resumes_with_range(server, tmp_path):
    base, state = server
    dest = tmp_path / "reviews.json.gz"
    with pytest.raises(DataError, match="200 bytes are kept") as err:
        _fetch(f"{base}/drop/reviews.json.gz", dest)
    assert "next run resumes" in str(err.value) and MANUAL in str(err.value)
    assert part_path(dest).read_bytes() == BODY[:200] and not dest.exists()
    _fetch(f"{base}/drop/reviews.json.gz", dest)
    assert state.requests[-1] == ("/drop/reviews.json.gz", "bytes=200-")
    assert dest.read_bytes() == BODY and not part_path(dest).exists()


def test_dropped_connection_is_resumed_within_one_call(server, tmp_path):
    base, state = server
    dest = tmp_path / "reviews.json.gz"
    _fetch(f"{base}/drop/reviews.json.gz", dest, DownloadSettings(progress=False, retries=3))
    assert [r for _, r in state.requests] == [None, "bytes=200-"]
    assert dest.read_bytes() == BODY


def test_server_ignoring_range_rewrites_from_the_start(server, tmp_path):
    base, _ = server
    dest = tmp_path / "reviews.json.gz"
    part_path(dest).write_bytes(b"x" * 50)  # a stale partial file
    _fetch(f"{base}/norange/reviews.json.gz", dest)
    assert dest.read_bytes() == BODY


def test_a_whole_part_left_before_verification_is_used_as_it_is(server, tmp_path):
    base, state = server
    dest = tmp_path / "reviews.json.gz"
    part_path(dest).write_bytes(BODY)  # downloaded, then the run stopped before the rename
    _fetch(f"{base}/good/reviews.json.gz", dest)
    assert state.requests == [("/good/reviews.json.gz", f"bytes={len(BODY)}-")] and dest.read_bytes() == BODY


def test_a_part_longer_than_the_file_is_removed_and_fetched_again(server, tmp_path):
    base, _ = server
    dest = tmp_path / "reviews.json.gz"
    part_path(dest).write_bytes(BODY + b"stale tail")
    _fetch(f"{base}/good/reviews.json.gz", dest, DownloadSettings(progress=False, retries=2))
    assert dest.read_bytes() == BODY


def test_404_names_the_url_and_the_manual_steps(server, tmp_path):
    base, _ = server
    url = f"{base}/good/missing.json.gz"
    with pytest.raises(DataError) as err:
        _fetch(url, tmp_path / "missing.json.gz")
    message = str(err.value)
    assert f"{url}: HTTP 404" in message and MANUAL in message
    assert not (tmp_path / "missing.json.gz").exists()


def test_stalled_server_times_out_with_the_setting_named(server, tmp_path):
    base, _ = server
    dest = tmp_path / "reviews.json.gz"
    settings = DownloadSettings(progress=False, retries=1, timeout=0.2)
    with pytest.raises(DataError, match=r"no data for 0\.2 s \(`data\.download\.timeout`\)") as err:
        _fetch(f"{base}/slow/reviews.json.gz", dest, settings)
    assert MANUAL in str(err.value) and not dest.exists()
    assert part_path(dest).read_bytes() == BODY[: len(BODY) // 2]  # kept for the next run


def test_offline_gives_the_manual_steps(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/reviews.json.gz"
    with pytest.raises(DataError) as err:
        _fetch(url, tmp_path / "reviews.json.gz")
    assert f"{url}: unreachable" in str(err.value) and MANUAL in str(err.value)


def test_the_next_url_is_tried_after_a_failure(server, tmp_path):
    base, _ = server
    dest = tmp_path / "reviews.json.gz"
    record = fetch([f"{base}/good/gone.json.gz", f"{base}/good/reviews.json.gz"], dest, MD5, QUIET, MANUAL)
    assert record["url"].endswith("/good/reviews.json.gz") and dest.read_bytes() == BODY


def test_without_a_published_checksum_the_first_download_is_recorded(server, tmp_path):
    base, _ = server
    dest = tmp_path / "reviews.json.gz"
    record = _fetch(f"{base}/good/reviews.json.gz", dest, md5=None)
    assert record["md5_published"] is False and record["sha256"] == hashlib.sha256(BODY).hexdigest()
    assert verify(dest, None, MANUAL)["sha256"] == record["sha256"]


def test_a_file_changed_after_its_record_is_refused_and_left_alone(tmp_path):
    dest = tmp_path / "data.json.gz"
    dest.write_bytes(BODY)
    verify(dest, None, MANUAL)  # first use: recorded
    dest.write_bytes(BODY[:-1] + bytes([BODY[-1] ^ 0xFF]))  # same size, other content
    with pytest.raises(DataError, match="changed since it was first verified") as err:
        verify(dest, None, MANUAL)
    assert str(record_path(dest)) in str(err.value) and dest.exists()


def test_a_manually_placed_file_is_checked_against_the_published_md5(tmp_path):
    dest = tmp_path / "data.json.gz"
    dest.write_bytes(BODY + b"tail")
    with pytest.raises(DataError, match="is not the published file") as err:
        verify(dest, MD5, MANUAL)
    assert MANUAL in str(err.value) and not record_path(dest).exists()
    dest.write_bytes(BODY)
    assert verify(dest, MD5, MANUAL)["md5"] == MD5


def test_a_damaged_record_is_named(tmp_path):
    dest = tmp_path / "data.json.gz"
    dest.write_bytes(BODY)
    record_path(dest).write_text("{not json")
    with pytest.raises(DataError, match="cannot read the checksum record"):
        verify(dest, None, MANUAL)
