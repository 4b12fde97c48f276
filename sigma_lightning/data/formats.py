"""Format detection (``format: auto``): by content type, then by name, then by the first lines.

Parquet is recognised by its magic bytes. Otherwise the name decides (a compression suffix such as
``.gz`` is looked through: ``ratings.dat.gz`` is ``ratings.dat``): ``.parquet``/``.pq``, ``.inter``,
``.csv``, ``.tsv``, ``u.data``, ``ratings.dat``. Otherwise the first 200 non-blank lines: ``::`` ->
``movielens``; a tab-separated first line whose every field holds ``:`` -> ``inter``; a comma on every
line -> ``csv``; lines of varying width or more than 4 fields -> ``sequence``; exactly 2 fields ->
``pairs``; 3-4 fields ending in a unix time (>= 1e8) -> ``movielens``; otherwise ``sequence``.
"""

from __future__ import annotations

from pathlib import Path

from sigma_lightning.data.source import Source, open_source
from sigma_lightning.errors import DataError

BY_SUFFIX = {".parquet": "parquet", ".pq": "parquet", ".inter": "inter", ".csv": "csv", ".tsv": "tsv"}
BY_NAME = {"u.data": "movielens", "ratings.dat": "movielens"}
COMPRESSION_SUFFIXES = (".gz", ".gzip", ".bz2", ".xz", ".zst", ".zstd")
HEAD_LINES = 200


def base_name(path: Path) -> str:
    """The file name without a compression suffix, lower case."""
    name = path.name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def detect_format(source: Source | Path) -> str:
    """Guess the format of a source (or of the file at a path) as the module docstring says."""
    if not isinstance(source, Source):
        source = open_source(Path(source))
    if source.kind == "parquet":
        return "parquet"
    name = base_name(source.path)
    by_name = BY_SUFFIX.get(Path(name).suffix) or BY_NAME.get(name)
    if by_name is not None:
        return by_name
    lines = head_lines(source.data)
    if not lines:
        raise DataError(f"{source.path} is empty: it holds no interactions. Point `path` at a non-empty data file.")
    return detect_from_lines(lines)


def detect_from_lines(lines: list[str]) -> str:
    """The format that the first non-blank lines of a text file look like (see the module docstring)."""
    if "::" in lines[0]:
        return "movielens"
    first = lines[0].split("\t")
    if len(first) >= 2 and all(":" in field for field in first):
        return "inter"  # RecBole typed header: user_id:token\titem_id:token ...
    if all("," in line for line in lines):
        return "csv"
    widths = {len(line.split()) for line in lines}
    if len(widths) > 1 or max(widths) > 4:
        return "sequence"
    if widths == {2}:
        return "pairs"
    if all(_is_unix_time(line.split()[-1]) for line in lines):
        return "movielens"  # headerless user item [rating] time, tab or space separated
    return "sequence"  # 3-4 fields per line with no time column: short sequences


def head_lines(data: bytes, max_bytes: int = 1 << 16) -> list[str]:
    """The first non-blank complete lines of UTF-8 text (at most HEAD_LINES)."""
    head = data[:max_bytes]
    lines = head.decode("utf-8", errors="ignore").split("\n")
    if len(head) == max_bytes and len(lines) > 1:
        lines = lines[:-1]  # drop the cut-off last line
    return [line.rstrip("\r") for line in lines if line.strip(" \t\r")][:HEAD_LINES]


def _is_unix_time(token: str) -> bool:
    """A number that reads as seconds since 1970 after 1973 (1e8): a timestamp column."""
    try:
        return float(token) >= 1e8
    except ValueError:
        return False
