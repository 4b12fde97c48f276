"""The processed-data cache: one file per (source file, settings), written atomically, verified on read.

A cache file is ``<source stem>-<key hash>.pt`` in ``cache_dir("data")`` (sigma_lightning/paths.py)
unless the DataModule names another folder. It holds plain data only (tensors, strings, numbers,
dicts), so it is read with ``torch.load(weights_only=True)`` and no code is ever unpickled:

* ``version``, ``key``: the layout version and the full sha256 of the cache key (source file
  identity + reading and preprocessing settings), checked against what the caller expects;
* ``items``, ``offsets``: the CSR LongTensors of :class:`SequenceData`;
* ``user_ids``, ``item_ids``: a LongTensor for integer ids, else ``{"text": uint8 tensor of the
  UTF-8 of every id concatenated, "lengths": LongTensor of each id's length in characters}``;
* ``stats``: the statistics dict;
* ``checksum``: sha256 over all of the above, so an altered value is caught even where the file's
  structure is intact (torch.load itself verifies no content).

A file that cannot be read, fails the checksum or belongs to other settings is reported in one
warning line, removed and rebuilt by the caller. Writes go to a temporary file in the same folder
(flushed and fsynced) renamed into place with ``os.replace``, so readers see the old file or the new
one, never half of one; temporaries left by a killed writer are removed by :func:`clean_temporaries`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from sigma_lightning.atomic import atomic_torch_save
from sigma_lightning.data.sequences import SequenceData
from sigma_lightning.paths import cache_dir

CACHE_VERSION = 2
"""Bump when the cached layout or the preprocessing semantics change."""

TEMP_SUFFIX = ".tmp"
STALE_TEMP_S = 15 * 60
"""A temporary file this old is a killed write whatever its writer (a live write takes seconds)."""
DEAD_WRITER_GRACE_S = 60
"""A temporary of a process that no longer runs on this host is removed once this old."""


def default_cache_dir() -> Path:
    """The data cache folder of the package's one cache rule: ``paths.cache_dir("data")``."""
    return cache_dir("data")


def source_fingerprint(path: Path) -> dict:
    """Identity of a source file: resolved path, size and modification time (ns)."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def settings_key(format: str, read_options: dict, config) -> dict:
    """Everything that changes the processed data besides the source file itself
    (``config`` is the :class:`~sigma_lightning.data.preprocess.PreprocessConfig`)."""
    return {"format": format, "read": read_options, "preprocess": asdict(config)}


def cache_key(source: Path, settings: dict) -> str:
    """Full sha256 (hex) of the layout version, the source file identity and the settings."""
    key = json.dumps({"version": CACHE_VERSION, "source": source_fingerprint(source), **settings}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


def cache_path(cache_dir: Path, source: Path, settings: dict) -> Path:
    """Cache file for this source file and these settings: ``<stem>-<hash>.pt``."""
    return Path(cache_dir) / f"{source.stem}-{cache_key(source, settings)[:20]}.pt"


# ----------------------------------------------------------------------------------------------
# Payload: plain tensors, and a checksum over every value


def _ids_to_storable(ids: list) -> Tensor | dict:
    """Integer ids as one LongTensor; string ids as their concatenated UTF-8 and lengths."""
    if all(isinstance(x, int) for x in ids):
        return torch.tensor(ids, dtype=torch.long)
    text = "".join(ids).encode("utf-8")
    return {
        "text": torch.frombuffer(bytearray(text), dtype=torch.uint8) if text else torch.zeros(0, dtype=torch.uint8),
        "lengths": torch.tensor([len(x) for x in ids], dtype=torch.long),
    }


def _ids_from_storable(stored: Tensor | dict) -> list:
    if isinstance(stored, Tensor):
        return stored.tolist()
    text = bytes(stored["text"].numpy()).decode("utf-8")
    ids, start = [], 0
    for length in stored["lengths"].tolist():
        ids.append(text[start : start + length])
        start += length
    if start != len(text):
        raise ValueError("string ids do not add up to their stored text")
    return ids


def _tensors(payload: dict) -> list[tuple[str, Tensor]]:
    """Every tensor of the payload with a stable name, in a fixed order."""
    named = [("items", payload["items"]), ("offsets", payload["offsets"])]
    for name in ("user_ids", "item_ids"):
        value = payload[name]
        pairs = [(name, value)] if isinstance(value, Tensor) else [(f"{name}.{k}", value[k]) for k in sorted(value)]
        named.extend(pairs)
    return named


def checksum(payload: dict) -> str:
    """sha256 over the key, every tensor (name, dtype, shape and bytes) and the statistics."""
    digest = hashlib.sha256(payload["key"].encode())
    for name, tensor in _tensors(payload):
        array = tensor.detach().contiguous().numpy()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(memoryview(array).cast("B"))
    digest.update(json.dumps(payload["stats"], sort_keys=True).encode())
    return digest.hexdigest()


def to_payload(data: SequenceData, key: str) -> dict:
    payload = {
        "version": CACHE_VERSION,
        "key": key,
        "items": data.items.contiguous(),
        "offsets": data.offsets.contiguous(),
        "user_ids": _ids_to_storable(data.user_ids),
        "item_ids": _ids_to_storable(data.item_ids[1:]),
        "stats": dict(data.stats),
    }
    payload["checksum"] = checksum(payload)
    return payload


def from_payload(payload: object, key: str | None) -> SequenceData:
    """The SequenceData of a loaded payload; ValueError (with the reason) if it is not a good one."""
    if not isinstance(payload, dict) or "version" not in payload:
        raise ValueError("not a data cache file")
    if payload["version"] != CACHE_VERSION:
        raise ValueError(f"of layout version {payload['version']}, not {CACHE_VERSION}")
    if key is not None and payload.get("key") != key:
        raise ValueError("written for another source file or other settings")
    try:
        expected = checksum(payload)
    except (KeyError, TypeError, AttributeError, RuntimeError) as err:
        raise ValueError(f"missing or malformed fields ({err})") from err
    if payload.get("checksum") != expected:
        raise ValueError("altered: its contents do not match their checksum")
    return SequenceData(
        items=payload["items"],
        offsets=payload["offsets"],
        user_ids=_ids_from_storable(payload["user_ids"]),
        item_ids=[None, *_ids_from_storable(payload["item_ids"])],
        stats=payload["stats"],
    )


# ----------------------------------------------------------------------------------------------
# Files


def save_cache(data: SequenceData, path: Path, key: str = "") -> None:
    """Write atomically: a temporary in the same folder, flushed and fsynced, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_temporaries(path.parent)
    payload = to_payload(data, key)
    tmp = path.parent / f".{path.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    atomic_torch_save(payload, path, tmp)


def load_cache(path: Path, key: str | None = None) -> SequenceData | None:
    """Read a file written by :func:`save_cache`. None if it is absent; a damaged, altered or foreign
    file is reported in one warning line, removed, and None returned so the caller rebuilds it."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, damaged, foreign or unreadable: never used, always rebuilt
        return _discard(path, "damaged or truncated: torch.load cannot read it")
    try:
        return from_payload(payload, key)
    except Exception as err:
        return _discard(path, " ".join(str(err).split())[:200] or type(err).__name__)


def _discard(path: Path, reason: str) -> None:
    """One warning line naming the file and why; the file is removed so the rebuild replaces it."""
    warnings.warn(f"data cache {path} is unusable ({reason}); removed it, rebuilding from the source", stacklevel=3)
    path.unlink(missing_ok=True)


def clean_temporaries(folder: Path, now: float | None = None) -> list[Path]:
    """Remove temporaries of killed writes in ``folder``: those older than STALE_TEMP_S, and those of
    a process of this host that no longer runs (after DEAD_WRITER_GRACE_S). Returns what was removed."""
    removed = []
    now = time.time() if now is None else now
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        try:
            age = now - tmp.stat().st_mtime
        except OSError:
            continue  # its writer renamed or removed it meanwhile
        if age > STALE_TEMP_S or (age > DEAD_WRITER_GRACE_S and _writer_is_dead(tmp.name)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _writer_is_dead(name: str) -> bool:
    """True if ``.<file>.<host>.<pid>.<token>.tmp`` names this host and a pid that does not run."""
    parts = name.removesuffix(TEMP_SUFFIX).rsplit(".", 3)
    if len(parts) != 4 or parts[1] != _host() or not parts[2].isdigit():
        return False  # another host's write: only its age tells
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (owned by someone else)
    return False


def _host() -> str:
    """This host's name without dots, so a temporary's name splits back into its parts."""
    return socket.gethostname().replace(".", "-") or "host"
