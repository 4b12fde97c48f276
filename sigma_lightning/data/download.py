"""Fetching and verifying the raw file of a named data set (see :mod:`.datasets` and docs/data.md).

:func:`fetch` downloads one URL after another (the publisher's first, then mirrors) into
``<file>.part`` with a rich progress bar, resumes a partial ``.part`` with an HTTP Range request
(also after a dropped connection, up to ``retries`` times), checks the publisher's md5 where one is
published and only then renames the file into place. :func:`verify` is the check on every later
use: the size and sha256 recorded beside the file at first use (``<file>.checksum.json``) must still
match. Every failure is one :class:`~sigma_lightning.errors.DataError` naming the URL, the file and
what to do; a file that fails its checksum is deleted, never kept.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from sigma_lightning.errors import DataError

CHUNK = 1 << 20
RECORD_SUFFIX = ".checksum.json"
PART_SUFFIX = ".part"


@dataclass(frozen=True)
class DownloadSettings:
    """How named data sets are fetched (``data.download`` in YAML).

    Args:
        mirror: a base URL used instead of the publisher's: the file is fetched from
            ``<mirror>/<published file name>`` (an institutional mirror, or a local server in tests).
        timeout: seconds without a single byte from the server before an attempt gives up.
        retries: attempts per URL; each one resumes from the ``.part`` file the last one left.
        progress: show a progress bar (rich) while downloading and converting.
    """

    mirror: str | None = None
    timeout: float = 60.0
    retries: int = 3
    progress: bool = True


class _Interrupted(Exception):
    """One attempt ended early (dropped, stalled); the .part file holds what arrived."""


def fetch(urls: Sequence[str], dest: Path, md5: str | None, settings: DownloadSettings, manual: str) -> dict:
    """Download ``dest`` from the first of ``urls`` that works, verify it, and return its record.

    ``manual`` is the what-to-do-by-hand sentence added to every failure message.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        try:
            _download(url, dest, settings)
        except _Interrupted as err:
            failures.append(f"{url}: {err}")
            continue
        return _accept(dest, url, md5, manual)
    raise DataError(f"cannot download {dest.name}: {'; '.join(failures)}. {manual}")


def _download(url: str, dest: Path, settings: DownloadSettings) -> None:
    """Fill ``dest.part`` from ``url``, resuming across up to ``settings.retries`` attempts."""
    part, attempts = part_path(dest), max(settings.retries, 1)
    for _ in range(attempts):
        try:
            _attempt(url, part, settings)
            return
        except _Interrupted as err:
            last = err
        except urllib.error.HTTPError as err:
            raise _Interrupted(f"HTTP {err.code} {err.reason}") from None
        except urllib.error.URLError as err:
            raise _Interrupted(f"unreachable ({_reason(err.reason)})") from None
        except TimeoutError:  # socket.timeout is an alias
            last = _Interrupted(f"no data for {settings.timeout:g} s (`data.download.timeout`)")
        except (http.client.HTTPException, OSError) as err:  # ConnectionResetError, IncompleteRead, ...
            last = _Interrupted(f"connection dropped ({type(err).__name__})")
    kept = part.stat().st_size if part.exists() else 0
    raise _Interrupted(
        f"{last} after {attempts} attempt(s); {kept:,} bytes are kept in {part} and the next run resumes"
    )


def _attempt(url: str, part: Path, settings: DownloadSettings) -> None:
    """One request: append to ``part`` from its current size (206) or rewrite it (200)."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "sigma_lightning", **_range(offset)})
    try:
        response = urllib.request.urlopen(request, timeout=settings.timeout)  # noqa: S310 (http/https only)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not offset:
            raise
        if _content_total(err) == offset:
            return  # the .part is already whole (a run stopped before verifying it)
        part.unlink()  # longer than the server's file: not a prefix of it
        raise _Interrupted("the partial file was longer than the server's; it was removed") from None
    with response:
        resumed = response.status == 206
        if resumed and _content_start(response) != offset:
            part.unlink()
            raise _Interrupted("the server answered another byte range; starting over")
        total = _total(response, offset if resumed else 0)
        with _open_part(part, resumed) as out, _progress(settings, part.name) as bar:
            task = bar.add_task("download", total=total, completed=offset if resumed else 0)
            while chunk := response.read1(CHUNK):  # what has arrived: a drop keeps it
                _write(out, chunk, part)
                bar.advance(task, len(chunk))
    if total is not None and part.stat().st_size < total:
        raise _Interrupted(f"connection dropped at {part.stat().st_size:,} of {total:,} bytes")


def _open_part(part: Path, append: bool):
    try:
        return part.open("ab" if append else "wb")
    except OSError as err:
        raise _unwritable(part, err) from None


def _write(out, chunk: bytes, part: Path) -> None:
    try:
        out.write(chunk)
    except OSError as err:
        raise _unwritable(part, err) from None


def _unwritable(part: Path, err: OSError) -> DataError:
    return DataError(
        f"cannot write {part} ({err.strerror or err}). Free space there, or set `data.data_dir` "
        "(or $SIGMA_LIGHTNING_DATA) to a folder with room for the data set."
    )


def _range(offset: int) -> dict:
    return {"Range": f"bytes={offset}-"} if offset else {}


def _content_start(response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _content_total(response) -> int | None:
    """The full size in ``Content-Range: bytes */SIZE`` (a 416 answer), where given."""
    match = re.search(r"/(\d+)$", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _total(response, offset: int) -> int | None:
    """The full file's size, where the server says it."""
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _reason(reason) -> str:
    return getattr(reason, "strerror", None) or str(reason)


def _progress(settings: DownloadSettings, name: str) -> Progress:
    columns = (f"{name}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    return Progress(*columns, disable=not settings.progress)


# ----------------------------------------------------------------------------------------------
# Verification


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_SUFFIX)


def record_path(dest: Path) -> Path:
    return dest.with_name(dest.name + RECORD_SUFFIX)


def digests(path: Path, *algorithms: str) -> dict:
    """Size and the hex digests of ``algorithms`` (e.g. "sha256", "md5") of a file, read once."""
    hashers = {name: hashlib.new(name, usedforsecurity=False) for name in algorithms}
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            for hasher in hashers.values():
                hasher.update(chunk)
            size += len(chunk)
    return {"size": size, **{name: hasher.hexdigest() for name, hasher in hashers.items()}}


def _accept(dest: Path, url: str, md5: str | None, manual: str) -> dict:
    """Check a finished ``.part`` against the published md5, rename it to ``dest``, record it."""
    part = part_path(dest)
    found = digests(part, "sha256", "md5")
    if md5 is not None and found["md5"] != md5:
        part.unlink()
        raise DataError(
            f"{url}: the downloaded file fails its published checksum (md5 {found['md5']}, expected {md5}) "
            f"and was deleted. Run again to download it afresh; if it fails again, the file on the server "
            f"changed or a proxy alters it. {manual}"
        )
    os.replace(part, dest)
    return write_record(dest, {**found, "url": url, "md5_published": md5 is not None})


def write_record(dest: Path, record: dict) -> dict:
    """Write ``<dest>.checksum.json`` atomically (temporary file, then rename)."""
    record = {"file": dest.name, **record, "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    temp = record_path(dest).with_suffix(".tmp")
    temp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(temp, record_path(dest))
    return record


def verify(dest: Path, md5: str | None, manual: str) -> dict:
    """Check a file already in place: against its record, or at first use against ``md5`` (then
    recorded). Raises DataError when it differs; the user's file is left alone."""
    record_file = record_path(dest)
    if record_file.exists():
        record = _read_record(record_file)
        found = digests(dest, "sha256")  # the one hash of every later use (md5 as well would double the time)
        if (record.get("size"), record.get("sha256")) != (found["size"], found["sha256"]):
            raise DataError(
                f"{dest} changed since it was first verified (size {found['size']:,}, "
                f"sha256 {found['sha256'][:16]}...; {record_file} records size {record.get('size')}, "
                f"sha256 {str(record.get('sha256'))[:16]}...). "
                f"Delete {dest} to download it again, or delete {record_file} if you replaced it on purpose."
            )
        return record
    found = digests(dest, "sha256", "md5")
    if md5 is not None and found["md5"] != md5:
        raise DataError(
            f"{dest} is not the published file (md5 {found['md5']}, expected {md5}). Delete it and run again "
            f"to download it, or put the publisher's file there. {manual}"
        )
    return write_record(dest, {**found, "url": None, "md5_published": md5 is not None})


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(
            f"cannot read the checksum record {path} ({err}). Delete it to record the file afresh."
        ) from None
    if not isinstance(record, dict):
        raise DataError(f"{path} is not a checksum record (a JSON object). Delete it to record the file afresh.")
    return record
