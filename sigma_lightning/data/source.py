"""Opening a data file: what it is (regular file, compressed, Parquet, text, binary) and its text.

:func:`open_source` is the one way the readers get at a file's content:

* the path must name a regular file (a folder, FIFO or device is refused by name, not "not found"),
  readable by this process;
* gzip, bz2, xz and zstd content is decompressed, recognised by its first bytes, whatever the name;
* Parquet is recognised by its magic bytes and handed over as bytes;
* anything else must be text: binary content (a NUL byte, or mostly control bytes) is refused, a
  UTF-8 byte-order mark is dropped, UTF-16/32 with a byte-order mark is decoded, other text is
  decoded with ``encoding`` (UTF-8 by default) and must hold no control characters but tab;
  line ends are ``\\n`` or ``\\r\\n``.

Every refusal is a :class:`~sigma_lightning.errors.DataError` naming the file, the line or byte
offset, what was expected and what to change; quoted excerpts are short and escaped (:func:`excerpt`).
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import lzma
import os
import re
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path

from sigma_lightning.errors import DataError

PARQUET_MAGIC = b"PAR1"
COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
ARCHIVES = {
    b"PK\x03\x04": "a zip archive (or an .xlsx workbook): unzip it, or export the sheet as CSV",
    b"7z\xbc\xaf\x27\x1c": "a 7z archive: extract it",
    b"Rar!": "a RAR archive: extract it",
    b"\x89HDF": "an HDF5 file: export the table as CSV or Parquet",
}
UTF_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
            (codecs.BOM_UTF16_BE, "utf-16"))
CONTROL_BYTES = bytes(range(0x09)) + b"\x0b\x0c" + bytes(range(0x0E, 0x20)) + b"\x7f"
"""Characters no text table holds (tab, \\n and \\r are allowed)."""
CONTROL_SEARCH = re.compile(b"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
EXCERPT_CHARS = 80


@dataclass(frozen=True)
class Source:
    """A data file's content: for ``kind == "text"``, ``data`` is valid UTF-8 (see :func:`decode`);
    for ``"parquet"``, the file's bytes."""

    path: Path
    kind: str
    data: bytes
    compression: str | None = None


def open_source(path: Path, encoding: str = "utf-8") -> Source:
    """Read, decompress and decode ``path`` (see the module docstring); DataError on anything unusable."""
    check_source(path)
    data, compression = decompress(read_bytes(path), path)
    if data.startswith(PARQUET_MAGIC):
        return Source(path, "parquet", data, compression)
    for magic, what in ARCHIVES.items():
        if data.startswith(magic):
            raise DataError(f"{path} is {what}; then point `path` at the interactions file inside.")
    return Source(path, "text", decode(data, path, encoding), compression)


def check_source(path: Path) -> None:
    """Raise DataError unless ``path`` is an existing regular file this process may read."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise DataError(
            f"data file not found: {path}. Set `path` to an existing file, or `synthetic` for the embedded generator."
        ) from None
    except OSError as err:
        raise _unreadable(path, err) from None
    if stat.S_ISDIR(info.st_mode):
        raise DataError(f"{path} is a folder, not a data file. Set `path` to the data file inside it.")
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{path} is not a regular file (it is {_kind(info.st_mode)}). Set `path` to a data file.")
    if not os.access(path, os.R_OK):
        raise _unreadable(path, PermissionError("permission denied"))


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def _unreadable(path: Path, err: OSError) -> DataError:
    reason = err.strerror or str(err)
    return DataError(f"cannot read the data file {path}: {reason}. Check its permissions, or set `path` to a copy you can read.")


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise _unreadable(path, err) from None


# ----------------------------------------------------------------------------------------------
# Compression


def decompress(data: bytes, path: Path) -> tuple[bytes, str | None]:
    """``(content, compression name)``: gzip, bz2, xz or zstd by magic bytes, else ``(data, None)``."""
    name = next((name for magic, name in COMPRESSED.items() if data.startswith(magic)), None)
    if name is None:
        return data, None
    try:
        return _DECOMPRESSORS[name](data), name
    except DataError:
        raise
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as err:
        raise DataError(
            f"{path} is {name}-compressed but cannot be decompressed ({' '.join(str(err).split())[:120]}): "
            "the file is damaged or truncated. Fetch it again, or point `path` at an intact copy."
        ) from None


def _zstd(data: bytes) -> bytes:
    try:
        import zstandard
    except ImportError:
        raise DataError(
            "reading zstd-compressed data needs the `zstandard` package: `pip install zstandard`, "
            "or decompress the file first (`zstd -d FILE`)."
        ) from None
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
            return reader.read()
    except zstandard.ZstdError as err:
        raise ValueError(str(err)) from None


_DECOMPRESSORS = {"gzip": gzip.decompress, "bz2": bz2.decompress, "xz": lzma.decompress, "zstd": _zstd}


# ----------------------------------------------------------------------------------------------
# Text


def decode(data: bytes, path: Path, encoding: str = "utf-8") -> bytes:
    """The UTF-8 bytes of a file that must be text (see the module docstring): no byte-order mark,
    no control characters but tab, no bare carriage return."""
    for bom, codec in UTF_BOMS:
        if data.startswith(bom):
            return _refuse_controls(_decode(data, path, codec).encode("utf-8"), path)
    refuse_binary(data, path)
    codec = _codec(encoding, path)
    if codec != "utf-8":
        data = _decode(data, path, codec).encode("utf-8")
    data = data.removeprefix(codecs.BOM_UTF8)
    _decode(data, path, "utf-8")  # validates; the readers work on the bytes
    return _refuse_controls(data, path)


def _codec(encoding: str, path: Path) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise DataError(f"{path}: unknown `encoding` {encoding!r}; use a Python codec name such as utf-8, latin-1 "
                        "or cp1252.") from None


def _decode(data: bytes, path: Path, codec: str) -> str:
    try:
        return data.decode(codec)
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}, line {line_number(data, err.start)} (byte offset {err.start}): not valid {codec} "
            f"(bytes {excerpt(data[err.start:err.start + 4])}). Set `encoding` to the file's encoding "
            "(e.g. latin-1 or cp1252), or convert the file to UTF-8."
        ) from None


def refuse_binary(data: bytes, path: Path) -> None:
    """Raise if ``data`` holds a NUL byte, or its start more than 10% control bytes (at least 8: a
    stray control character in a short text file gets the message naming its line instead)."""
    head = data[:8192]
    nul = data.find(b"\x00")
    controls = len(head) - len(head.translate(None, CONTROL_BYTES))
    if nul >= 0 or controls > max(8, 0.1 * len(head)):
        where = f"a NUL byte at byte offset {nul}" if nul >= 0 else f"{controls} control bytes in its first {len(head)}"
        raise DataError(
            f"{path} is binary, not a text table ({where}; it starts {excerpt(head)}). Point `path` at the "
            "interactions file (text, or Parquet; gzip, bz2, xz and zstd are decompressed)."
        )


def _refuse_controls(data: bytes, path: Path) -> bytes:
    """Refuse control characters and bare carriage returns, naming the first one's line. UTF-8 bytes
    below 0x80 are always the ASCII character itself, so a byte-level search is exact."""
    if len(data.translate(None, CONTROL_BYTES)) != len(data):
        start = CONTROL_SEARCH.search(data).start()
        raise DataError(
            f"{path}, line {line_number(data, start)}: control character {excerpt(data[start:start + 1])} in "
            f"{excerpt(_line_at(data, start))}; a text table holds none but tab. Remove it, or point `path` at the right file."
        )
    if data.count(b"\r") != data.count(b"\r\n"):
        start = re.search(b"\r(?!\n)", data).start()
        raise DataError(
            f"{path}, line {line_number(data, start)}: a carriage return (\\r) not followed by \\n: lines must "
            "end in \\n or \\r\\n. Convert the line ends (e.g. `tr '\\r' '\\n'`)."
        )
    return data


def line_number(data: bytes, offset: int) -> int:
    """1-based line of byte ``offset``."""
    return data.count(b"\n", 0, offset) + 1


def _line_at(data: bytes, index: int) -> bytes:
    start = data.rfind(b"\n", 0, index) + 1
    end = data.find(b"\n", index)
    return data[start : end if end >= 0 else len(data)]


def excerpt(value: str | bytes, limit: int = EXCERPT_CHARS) -> str:
    """A quoted excerpt for messages: at most ``limit`` characters shown, every non-printable one
    (and, for bytes that are not UTF-8, every byte outside printable ASCII) escaped, so no message
    ever dumps binary."""
    binary = isinstance(value, bytes) and not _is_utf8(value[: 4 * limit])
    text = value.decode("latin-1" if binary else "utf-8", errors="replace") if isinstance(value, bytes) else value
    pieces, size = [], 0
    for ch in text:
        piece = ch if ch.isprintable() and not (binary and ord(ch) > 0x7E) else ascii(ch)[1:-1]
        if size + len(piece) > limit:
            return "'" + "".join(pieces) + "'..."
        pieces.append(piece)
        size += len(piece)
    return "'" + "".join(pieces) + "'"


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as err:  # a character cut at the end of the slice is still UTF-8
        return err.reason == "unexpected end of data" and err.start >= len(value) - 3
    return True
