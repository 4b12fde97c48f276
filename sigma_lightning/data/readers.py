"""Readers: one function per file format, each returning the same interaction frame.

Every reader returns a polars ``DataFrame`` in file order with the columns

* ``user``: original user id (``Int64`` when every id is a plain integer, else ``String``, the text
  as written; see :mod:`.columns` for the policies);
* ``item``: original item id (same rule);
* ``time``: the sort key inside a user: the file's timestamp column when there is one,
  else the row's position in the file (so the file order is the time order).

:data:`READERS` maps each format name to its reader, ``reader(source, options) -> frame`` with the
raw columns ``__line`` (the line or row number for messages), ``user``, ``item`` and, where the file
has one, ``time``; :func:`read_interactions` opens the file (:mod:`.source`: compression, encoding,
binary), picks the reader (:mod:`.formats` for ``auto``) and checks and types the columns.
Bad input raises :class:`DataError` naming the file, the line and the setting to change.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl

from sigma_lightning.data import columns as col
from sigma_lightning.data.formats import detect_format
from sigma_lightning.data.lines import check_widths, common_width, split_csv, split_literal, split_whitespace, text_lines
from sigma_lightning.data.source import Source, check_source, excerpt, open_source
from sigma_lightning.errors import DataError  # re-exported here, where callers imported it from

__all__ = ["FORMATS", "READERS", "DataError", "ReadOptions", "check_source", "detect_format", "read_interactions"]


@dataclass(frozen=True)
class ReadOptions:
    """The reading settings of ``SeqRecDataModule`` (None: the format's default)."""

    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    sep: str | None = None
    has_header: bool | None = None


# ----------------------------------------------------------------------------------------------
# Line formats


def read_sequences(source: Source, options: ReadOptions) -> pl.DataFrame:
    """One user per line, ``user item item ...`` (spaces/tabs between fields, items oldest first)."""
    fields = split_whitespace(_text_lines(source))
    frame = fields.select(
        pl.col("line").alias("__line"),
        pl.col("fields").list.first().alias("user"),
        pl.col("fields").list.slice(1).alias("item"),
    ).explode("item")
    return frame.drop_nulls("item")  # a user with no items contributes nothing


def read_pairs(source: Source, options: ReadOptions) -> pl.DataFrame:
    """``user item`` per line, no time column: the file order is the time order within a user."""
    fields = _split(_text_lines(source), options.sep)
    check_widths(fields, source.path, {2}, "`user item`", options.sep)
    return fields.select(pl.col("line").alias("__line"), *_fields(["user", "item"]))


def read_movielens(source: Source, options: ReadOptions) -> pl.DataFrame:
    """MovieLens ratings: ``user::item::rating::time`` (ratings.dat) or tab separated (u.data).

    ``sep=None`` takes ``::`` when the first line has it, else spaces/tabs. Every line has the
    same width, 4 fields (time is the 4th) or 3 (``user item time``); a line that differs from
    most is an error.
    """
    lines = _text_lines(source)
    sep = options.sep
    if sep is None and "::" in lines["text"][0]:
        sep = "::"
    fields = _split(lines, sep)
    width = common_width(fields)
    allowed = {width} if width in (3, 4) else {3, 4}
    check_widths(fields, source.path, allowed, "`user item rating time` or `user item time`", sep)
    names = ["user", "item", "time"] if width == 3 else ["user", "item", "rating", "time"]
    return fields.select(pl.col("line").alias("__line"), *_fields(names)).drop("rating", strict=False)


def _text_lines(source: Source) -> pl.DataFrame:
    lines = text_lines(_text(source))
    if lines.height == 0:
        raise DataError(f"{source.path} is empty: it holds no interactions. Point `path` at a non-empty data file.")
    return lines


def _split(lines: pl.DataFrame, sep: str | None) -> pl.DataFrame:
    return split_whitespace(lines) if sep is None else split_literal(lines, sep)


def _fields(names: list[str]) -> list[pl.Expr]:
    return [pl.col("fields").list.get(i).alias(name) for i, name in enumerate(names)]  # finish() strips


def _text(source: Source) -> Source:
    if source.kind != "text":
        raise DataError(f"{source.path} is a Parquet file, not text. Set `format: parquet` (or `auto`).")
    return source


# ----------------------------------------------------------------------------------------------
# Tables


def read_csv(source: Source, options: ReadOptions) -> pl.DataFrame:
    """A delimited table (``sep``, default ``,``; ``"`` quotes respected for one-character separators)."""
    return _read_table(source, options, options.sep or ",", quotes=True)


def read_tsv(source: Source, options: ReadOptions) -> pl.DataFrame:
    """A tab-separated table (``sep`` overrides the tab)."""
    return _read_table(source, options, options.sep or "\t", quotes=True)


def read_inter(source: Source, options: ReadOptions) -> pl.DataFrame:
    """RecBole atomic ``.inter`` file: tab separated, typed header ``user_id:token\\titem_id:token ...``."""
    return _read_table(source, replace(options, has_header=True), "\t", quotes=False, typed_header=True)


def _read_table(source: Source, options: ReadOptions, sep: str, quotes: bool, typed_header: bool = False):
    """Header (or ``column_1 ...``), width check on every row, then the user/item/time columns."""
    lines = _text_lines(source)
    fields = split_csv(lines, sep, source.path) if quotes else split_literal(lines, sep)
    has_header = True if options.has_header is None else options.has_header
    header = [name.strip(" \t") for name in fields["fields"][0]] if has_header else None
    if typed_header:
        header = [name.split(":", 1)[0] for name in header]
    body = fields.slice(1) if has_header else fields
    width = len(header) if header else common_width(fields)
    names = _column_names(header, width, source.path)
    if body.height == 0:
        raise DataError(f"{source.path} holds a header but no rows. Point `path` at a file with interactions.")
    check_widths(body, source.path, {width}, f"{width} fields like the {'header' if header else 'first line'}", sep)
    picked = _pick_columns(names, options, has_header, source.path, sep)
    exprs = [pl.col("fields").list.get(names.index(c)).alias(role) for role, c in picked.items()]
    return body.select(pl.col("line").alias("__line"), *exprs)


def _column_names(header: list[str] | None, width: int, path: Path) -> list[str]:
    if header is None:
        return [f"column_{i + 1}" for i in range(width)]
    names = [name or f"column_{i + 1}" for i, name in enumerate(header)]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"{path}: the header names {repeated} more than once. Rename the columns, or set "
                        "`has_header: false`.")
    return names


def _pick_columns(names: list[str], options: ReadOptions, has_header: bool, path: Path, sep: str | None):
    """``{"user": column, "item": column[, "time": column]}`` from the settings and the header."""
    picked = {
        "user": col.pick_column(names, options.user_col, col.USER_CANDIDATES, 0, has_header, path, "user_col", sep),
        "item": col.pick_column(names, options.item_col, col.ITEM_CANDIDATES, 1, has_header, path, "item_col", sep),
    }
    time = col.pick_time_column(names, options.time_col, has_header, path)
    if time is not None:
        picked["time"] = time
    return picked


def read_parquet(source: Source, options: ReadOptions) -> pl.DataFrame:
    """A Parquet table; columns chosen by name as for CSV (only those are read)."""
    if source.kind != "parquet":
        raise DataError(f"{source.path} is not a Parquet file (it starts {excerpt(source.data[:40])}). "
                        "Set `format` to the file's format, or `auto`.")
    try:
        names = list(pl.read_parquet_schema(io.BytesIO(source.data)))
        picked = _pick_columns(names, options, True, source.path, None)
        table = pl.read_parquet(io.BytesIO(source.data), columns=list(dict.fromkeys(picked.values())))
    except pl.exceptions.PolarsError as err:
        raise DataError(f"{source.path}: cannot read the Parquet file ({' '.join(str(err).split())[:200]}): it "
                        "is damaged or truncated. Point `path` at an intact copy.") from None
    frame = table.select(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("__line"),
                         *[pl.col(c).alias(role) for role, c in picked.items()])
    return frame


# ----------------------------------------------------------------------------------------------
# Entry point


READERS: dict[str, Callable[[Source, ReadOptions], pl.DataFrame]] = {
    "sequence": read_sequences,
    "csv": read_csv,
    "tsv": read_tsv,
    "parquet": read_parquet,
    "movielens": read_movielens,
    "inter": read_inter,
    "pairs": read_pairs,
}
FORMATS = tuple(READERS)
"""Formats a reader exists for; ``"auto"`` picks one with :func:`detect_format`."""


def read_interactions(
    path: str | Path,
    format: str = "auto",
    *,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    sep: str | None = None,
    has_header: bool | None = None,
    encoding: str = "utf-8",
) -> pl.DataFrame:
    """Read any supported file into the ``(user, item, time)`` frame described in the module docstring."""
    path = Path(path).expanduser()
    if format != "auto" and format not in READERS:
        raise DataError(f"unknown data format {format!r} for {path}; use 'auto' or one of {', '.join(FORMATS)}.")
    source = open_source(path, encoding)
    fmt = detect_format(source) if format == "auto" else format
    options = ReadOptions(user_col, item_col, time_col, sep, has_header)
    return finish(READERS[fmt](source, options), path, where="row" if fmt == "parquet" else "line")


def finish(frame: pl.DataFrame, path: Path, where: str = "line") -> pl.DataFrame:
    """Typed, checked ``user``, ``item``, ``time``: ids by the policies of :mod:`.columns`, the time
    column parsed (or the file order where there is none); raises on an empty result."""
    if frame.height == 0:
        raise DataError(f"{path} holds no interactions. Point `path` at a non-empty data file.")
    user, item = col.id_column(frame, "user", path, where), col.id_column(frame, "item", path, where)
    if "time" in frame.columns:
        time = col.time_column(frame, path, "time", where)
    else:
        time = pl.int_range(0, frame.height, dtype=pl.Int64, eager=True).alias("time")
    return pl.DataFrame([user, item, time])
