"""Readers: one function per file format, each returning the same interaction frame.

Every reader returns a polars ``DataFrame`` in file order with the columns

* ``user``: original user id (``Int64`` when every id is an integer, else ``String``);
* ``item``: original item id (same rule);
* ``time``: the sort key inside a user: the file's timestamp column when there is one,
  else the row's position in the file (so the file order is the time order).

Ties in ``time`` are broken by file order later (preprocess keeps the row order explicitly).
Bad input raises :class:`DataError` naming the file, the line and the setting to change.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from sigma_lightning.errors import DataError  # re-exported here, where callers imported it from

FORMATS = ("sequence", "csv", "tsv", "parquet", "movielens", "inter", "pairs")
"""Formats a reader exists for; ``"auto"`` picks one with :func:`detect_format`."""

USER_CANDIDATES = ("user_id", "userid", "user", "uid", "reviewerid", "visitorid", "session_id")
ITEM_CANDIDATES = ("item_id", "itemid", "movie_id", "movieid", "item", "iid", "asin", "business_id", "product_id")
TIME_CANDIDATES = ("timestamp", "time", "ts", "unixreviewtime", "datetime", "date", "event_time")


# ----------------------------------------------------------------------------------------------
# Format detection


def detect_format(path: Path) -> str:
    """Guess the format of ``path`` from its name, then from the shape of its first lines."""
    name, suffix = path.name.lower(), path.suffix.lower()
    by_suffix = {".parquet": "parquet", ".pq": "parquet", ".inter": "inter", ".csv": "csv", ".tsv": "tsv"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    if name in ("u.data", "ratings.dat"):
        return "movielens"
    lines = _head_lines(path)
    if not lines:
        raise DataError(f"{path} is empty: it holds no interactions. Point `path` at a non-empty data file.")
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


def _head_lines(path: Path, max_bytes: int = 1 << 16, max_lines: int = 200) -> list[str]:
    """The first non-empty complete lines of a text file (at most ``max_lines``)."""
    with path.open("rb") as fh:
        head = fh.read(max_bytes)
    text = head.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if len(head) == max_bytes and len(lines) > 1:
        lines = lines[:-1]  # drop the cut-off last line
    return [line.rstrip("\r") for line in lines if line.strip()][:max_lines]


def _is_unix_time(token: str) -> bool:
    """A number that reads as seconds since 1970 after 1973 (1e8): a timestamp column."""
    try:
        return float(token) >= 1e8
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------------
# Line-based readers (exact line numbers, any separator including '::' and runs of whitespace)


def _read_lines(path: Path) -> pl.DataFrame:
    """Non-empty lines of a text file: columns ``line`` (1-based number) and ``text``."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # MovieLens and other older files
    frame = pl.DataFrame({"text": text.split("\n")}).with_row_index("line", offset=1)
    frame = frame.with_columns(pl.col("text").str.strip_chars())
    return frame.filter(pl.col("text") != "")


def _split_fields(lines: pl.DataFrame, sep: str | None) -> pl.DataFrame:
    """Add ``fields`` (list of stripped strings): split on ``sep``, or on runs of whitespace."""
    if sep is None:
        fields = pl.col("text").str.extract_all(r"\S+")
    else:
        fields = pl.col("text").str.split(sep).list.eval(pl.element().str.strip_chars())
    return lines.with_columns(fields.alias("fields"))


def _check_width(fields: pl.DataFrame, path: Path, min_width: int, sep: str | None, shape: str) -> None:
    """Raise on the first line with fewer than ``min_width`` fields."""
    short = fields.filter(pl.col("fields").list.len() < min_width)
    if short.height:
        line, text = short.row(0)[:2]
        how = "whitespace" if sep is None else repr(sep)
        raise DataError(
            f"{path}, line {line}: expected {shape} ({min_width}+ fields separated by {how}), got {text!r}. "
            "Fix the line, or set `format`/`sep` to match the file."
        )


def read_sequences(path: Path) -> pl.DataFrame:
    """One user per line, ``user item item ...`` (whitespace separated, items oldest first)."""
    fields = _split_fields(_read_lines(path), sep=None)
    frame = fields.select(
        pl.col("fields").list.first().alias("user"), pl.col("fields").list.slice(1).alias("item")
    ).explode("item")
    frame = frame.drop_nulls("item")  # a user with no items contributes nothing
    frame = frame.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("time"))
    return _finish(frame, path)


def read_pairs(path: Path, sep: str | None = None) -> pl.DataFrame:
    """``user item`` per line, no time column: the file order is the time order within a user."""
    fields = _split_fields(_read_lines(path), sep)
    _check_width(fields, path, 2, sep, "`user item`")
    frame = fields.select(
        pl.col("fields").list.get(0).alias("user"),
        pl.col("fields").list.get(1).alias("item"),
        pl.int_range(pl.len(), dtype=pl.Int64).alias("time"),
    )
    return _finish(frame, path)


def read_movielens(path: Path, sep: str | None = None) -> pl.DataFrame:
    """MovieLens ratings: ``user::item::rating::time`` (ratings.dat) or tab separated (u.data).

    ``sep=None`` takes ``::`` when the first line has it, else any whitespace. A file with three
    fields per line is read as ``user item time``.
    """
    lines = _read_lines(path)
    if lines.height == 0:
        raise DataError(f"{path} is empty: it holds no interactions. Point `path` at a non-empty data file.")
    if sep is None and "::" in lines["text"][0]:
        sep = "::"
    fields = _split_fields(lines, sep)
    _check_width(fields, path, 3, sep, "`user item rating time` or `user item time`")
    time_index = pl.when(pl.col("fields").list.len() >= 4).then(3).otherwise(2)
    frame = fields.select(
        "line",
        "text",
        pl.col("fields").list.get(0).alias("user"),
        pl.col("fields").list.get(1).alias("item"),
        pl.col("fields").list.get(time_index).alias("time"),
    )
    frame = frame.with_columns(_parse_time(frame["time"], path, frame["line"], "time (last column)"))
    return _finish(frame.select("user", "item", "time"), path)


# ----------------------------------------------------------------------------------------------
# Table readers (polars' CSV/Parquet scanners, lazy: only the needed columns are read)


def read_table(
    path: Path,
    sep: str = ",",
    has_header: bool = True,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
) -> pl.DataFrame:
    """A CSV/TSV table. Without a header, columns are named ``column_1, column_2, ...`` and the
    defaults are user = 1, item = 2, time = 4 (if 4+ columns) or 3 (if 3 columns)."""
    if len(sep) != 1:
        return _read_split_table(path, sep, has_header, user_col, item_col, time_col)
    lazy = pl.scan_csv(path, separator=sep, has_header=has_header, infer_schema=False, quote_char='"')
    return _select_columns(lazy, path, has_header, user_col, item_col, time_col, header_lines=int(has_header))


def read_inter(
    path: Path, user_col: str | None = None, item_col: str | None = None, time_col: str | None = None
) -> pl.DataFrame:
    """RecBole atomic ``.inter`` file: tab separated, typed header ``user_id:token\\titem_id:token ...``."""
    lazy = pl.scan_csv(path, separator="\t", has_header=True, infer_schema=False, quote_char=None)
    lazy = lazy.rename(lambda name: name.split(":", 1)[0])
    return _select_columns(lazy, path, True, user_col, item_col, time_col, header_lines=1)


def read_parquet(
    path: Path, user_col: str | None = None, item_col: str | None = None, time_col: str | None = None
) -> pl.DataFrame:
    """A Parquet table; columns chosen by name as for CSV."""
    return _select_columns(pl.scan_parquet(path), path, True, user_col, item_col, time_col, header_lines=0)


def _read_split_table(
    path: Path, sep: str, has_header: bool, user_col: str | None, item_col: str | None, time_col: str | None
) -> pl.DataFrame:
    """A table with a multi-character separator (polars' CSV scanner takes one byte)."""
    fields = _split_fields(_read_lines(path), sep)
    if fields.height == 0:
        raise DataError(f"{path} is empty: it holds no interactions. Point `path` at a non-empty data file.")
    names = fields["fields"][0].to_list() if has_header else None
    body = fields.slice(1) if has_header else fields
    width = len(names) if names else int(body["fields"].list.len().max())
    names = names or [f"column_{i + 1}" for i in range(width)]
    _check_width(body, path, width, sep, f"{width} fields")
    table = body.select(
        pl.col("line").alias("__line"), *[pl.col("fields").list.get(i).alias(n) for i, n in enumerate(names)]
    )
    return _select_columns(table.lazy(), path, has_header, user_col, item_col, time_col, header_lines=None)


def _select_columns(
    lazy: pl.LazyFrame,
    path: Path,
    has_header: bool,
    user_col: str | None,
    item_col: str | None,
    time_col: str | None,
    header_lines: int | None,
) -> pl.DataFrame:
    """Pick user/item/time from a table, parse time, give line numbers in errors.

    ``header_lines`` turns a 0-based row index into a file line number (``None``: the frame
    already has a ``__line`` column; Parquet passes 0 and errors name the row).
    """
    try:
        columns = lazy.collect_schema().names()
    except pl.exceptions.PolarsError as err:
        raise DataError(f"{path}: cannot read the table ({err}). Check `format`, `sep` and `has_header`.") from err
    user = _pick_column(columns, user_col, USER_CANDIDATES, 0, has_header, path, "user_col")
    item = _pick_column(columns, item_col, ITEM_CANDIDATES, 1, has_header, path, "item_col")
    time = _pick_time_column(columns, time_col, has_header, path)
    if "__line" not in columns:
        lazy = lazy.with_row_index("__line", offset=(header_lines or 0) + 1)
    selected = [pl.col("__line"), pl.col(user).alias("user"), pl.col(item).alias("item")]
    if time is not None:
        selected.append(pl.col(time).alias("time"))
    try:
        frame = lazy.select(selected).collect()
    except pl.exceptions.PolarsError as err:
        where = _first_ragged_line(path, len(columns))
        raise DataError(
            f"{path}{where}: cannot parse the table ({' '.join(str(err).split())}). Fix the line, or check "
            f"`sep` (it gives the columns {columns}), `has_header` and `format`."
        ) from err
    present = [c for c in ("user", "item", "time") if c in frame.columns]
    frame = frame.filter(pl.any_horizontal([pl.col(c).is_not_null() for c in present]))  # blank lines
    where = "row" if header_lines == 0 else "line"
    _check_missing(frame, path, where)
    if time is None:
        frame = frame.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("time"))
    else:
        frame = frame.with_columns(_parse_time(frame["time"], path, frame["__line"], f"time column {time!r}", where))
    return _finish(frame.select("user", "item", "time"), path)


def _first_ragged_line(path: Path, width: int) -> str:
    """ ", line N" for the first line with more fields than the header (a plain split, for messages only)."""
    try:
        lines = _read_lines(path)
    except OSError:
        return ""
    for sep in (",", "\t", ";", "|"):
        counts = lines["text"].str.count_matches(sep, literal=True)
        if counts[0] == width - 1:  # this separator explains the header
            ragged = lines.filter(counts > width - 1)
            return f", line {ragged['line'][0]}" if ragged.height else ""
    return ""


def _pick_column(
    columns: list[str],
    given: str | None,
    candidates: tuple[str, ...],
    position: int,
    has_header: bool,
    path: Path,
    setting: str,
) -> str:
    """The column named ``given``, else the first candidate name present, else the positional default."""
    if given is not None:
        if given not in columns:
            raise DataError(
                f"{path}: no column {given!r} (set by `{setting}`); its columns are {columns}. "
                f"Set `{setting}` to one of them."
            )
        return given
    lowered = {name.lower(): name for name in columns}
    for candidate in candidates:
        if candidate in lowered:
            return lowered[candidate]
    if not has_header and position < len(columns):
        return columns[position]
    raise DataError(
        f"{path}: cannot find the {setting.removesuffix('_col')} column among {columns}. Set `{setting}` to "
        "its name (or `has_header: false` for a table without a header)."
    )


def _pick_time_column(columns: list[str], given: str | None, has_header: bool, path: Path) -> str | None:
    """The time column, or None to use the file order (``given == ""`` asks for the file order)."""
    if given == "":
        return None
    if given is not None:
        return _pick_column(columns, given, (), -1, has_header, path, "time_col")
    lowered = {name.lower(): name for name in columns}
    for candidate in TIME_CANDIDATES:
        if candidate in lowered:
            return lowered[candidate]
    if not has_header and len(columns) >= 3:
        return columns[3] if len(columns) >= 4 else columns[2]  # MovieLens shape: user item rating time
    return None


def _check_missing(frame: pl.DataFrame, path: Path, where: str = "line") -> None:
    """Raise on the first row with an empty user, item or time field."""
    present = [c for c in ("user", "item", "time") if c in frame.columns]
    bad = frame.filter(pl.any_horizontal([pl.col(c).is_null() for c in present]))
    if bad.height:
        row = bad.row(0, named=True)
        empty = [c for c in present if row[c] is None]
        raise DataError(
            f"{path}, {where} {row['__line']}: empty {'/'.join(empty)} field. Fix or remove the {where}, "
            "or check `sep` and the column settings."
        )


def _parse_time(values: pl.Series, path: Path, lines: pl.Series, what: str, where: str = "line") -> pl.Series:
    """Numbers stay numbers; strings are parsed as numbers, else as dates. Raises on the first bad value."""
    if values.dtype.is_numeric():
        return values.alias("time")
    if values.dtype == pl.Datetime or values.dtype == pl.Date:
        return values.alias("time")
    as_number = values.cast(pl.Float64, strict=False)
    if as_number.null_count() == values.null_count():
        integral = as_number.cast(pl.Int64, strict=False)
        if integral.null_count() == values.null_count() and (integral == as_number).all():
            return integral.alias("time")
        return as_number.alias("time")
    try:
        as_date = values.str.to_datetime(strict=False)
    except pl.exceptions.PolarsError:  # no date format fits the first values
        as_date = None
    if as_date is not None and as_date.null_count() == values.null_count():
        return as_date.alias("time")
    bad_index = (as_number.is_null() & values.is_not_null()).arg_max()
    raise DataError(
        f"{path}, {where} {lines[bad_index]}: {what} value {values[bad_index]!r} is neither a number nor a date. "
        "Fix the value, set `time_col` to the right column, or `time_col: ''` to use the file order."
    )


def _finish(frame: pl.DataFrame, path: Path) -> pl.DataFrame:
    """Cast ids to Int64 when they are all integers (else String); raise on an empty result."""
    if frame.height == 0:
        raise DataError(f"{path} holds no interactions. Point `path` at a non-empty data file.")
    return frame.with_columns(_id_column(frame["user"]), _id_column(frame["item"]))


def _id_column(ids: pl.Series) -> pl.Series:
    """Integer ids as Int64 (so they sort numerically), anything else as String."""
    if ids.dtype.is_integer():
        return ids.cast(pl.Int64)
    as_string = ids.cast(pl.String)
    as_int = as_string.cast(pl.Int64, strict=False)
    return as_int if as_int.null_count() == 0 else as_string


# ----------------------------------------------------------------------------------------------
# Entry point


def read_interactions(
    path: str | Path,
    format: str = "auto",
    *,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    sep: str | None = None,
    has_header: bool | None = None,
) -> pl.DataFrame:
    """Read any supported file into the ``(user, item, time)`` frame described in the module docstring."""
    path = Path(path).expanduser()
    if not path.is_file():
        hint = " (it is a folder: name the file inside it)" if path.is_dir() else ""
        raise DataError(
            f"data file not found: {path}{hint}. Set `path` to an existing file, or `synthetic` for the "
            "embedded generator."
        )
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {format!r} for {path}; use 'auto' or one of {', '.join(FORMATS)}.")
    if fmt == "sequence":
        return read_sequences(path)
    if fmt == "pairs":
        return read_pairs(path, sep)
    if fmt == "movielens":
        return read_movielens(path, sep)
    if fmt == "inter":
        return read_inter(path, user_col, item_col, time_col)
    if fmt == "parquet":
        return read_parquet(path, user_col, item_col, time_col)
    default_sep = "\t" if fmt == "tsv" else ","
    header = True if has_header is None else has_header
    return read_table(path, sep or default_sep, header, user_col, item_col, time_col)
