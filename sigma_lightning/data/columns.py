"""Columns of a table: which one is the user, item and time, and how their values are read.

Policies (docs/data.md, "Reading policies"):

* ids are the text as written, without surrounding spaces and tabs; a column whose every id is a
  plain integer (``0`` or ``-?[1-9][0-9]*``, within int64) is read as integers, so ``00242`` next
  to ``242`` keeps both as distinct string ids instead of merging them;
* an empty id, or one that spells a missing value (``NaN``, ``null``, ``None``, ``NA``, ``N/A``,
  ``<NA>``, ``#N/A``, any case), is an error naming its line, as is a missing time;
* Parquet integer columns are integer ids; float columns must hold whole numbers; other types are
  refused;
* times are numbers (finite) or dates polars can parse.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from sigma_lightning.data.source import excerpt
from sigma_lightning.errors import DataError

USER_CANDIDATES = ("user_id", "userid", "user", "uid", "reviewerid", "visitorid", "session_id")
ITEM_CANDIDATES = ("item_id", "itemid", "movie_id", "movieid", "item", "iid", "asin", "business_id", "product_id")
TIME_CANDIDATES = ("timestamp", "time", "ts", "unixreviewtime", "datetime", "date", "event_time")

MISSING = r"(?i)^(|nan|-nan|null|none|na|n/a|<na>|#n/a)$"
"""Values that spell a missing value in the exports of pandas, R, SQL and spreadsheets."""
SEPARATORS = (",", ";", "\t", "|")


# ----------------------------------------------------------------------------------------------
# Which column


def pick_column(columns: list[str], given: str | None, candidates: tuple[str, ...], position: int,
                has_header: bool, path: Path, setting: str, sep: str | None = None) -> str:
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
    raise DataError(_missing_column_message(columns, has_header, path, setting, sep))


def _missing_column_message(columns: list[str], has_header: bool, path: Path, setting: str, sep: str | None) -> str:
    guess = _separator_guess(columns[0]) if len(columns) == 1 and sep is not None else None
    if guess is not None:
        return (
            f"{path}: with `sep` {sep!r} every row is one column ({excerpt(columns[0])}), but the file looks "
            f"separated by {guess!r}. Set `sep: {guess!r}`."
        )
    return (
        f"{path}: cannot find the {setting.removesuffix('_col')} column among {columns}. Set `{setting}` to "
        "its name (or `has_header: false` for a table without a header)."
    )


def _separator_guess(field: str) -> str | None:
    counts = {sep: field.count(sep) for sep in SEPARATORS}
    best = max(counts, key=counts.get)
    return best if counts[best] else None


def pick_time_column(columns: list[str], given: str | None, has_header: bool, path: Path) -> str | None:
    """The time column, or None to use the file order (``given == ""`` asks for the file order)."""
    if given == "":
        return None
    if given is not None:
        return pick_column(columns, given, (), -1, has_header, path, "time_col")
    lowered = {name.lower(): name for name in columns}
    for candidate in TIME_CANDIDATES:
        if candidate in lowered:
            return lowered[candidate]
    if not has_header and len(columns) >= 3:
        return columns[3] if len(columns) >= 4 else columns[2]  # MovieLens shape: user item rating time
    return None


# ----------------------------------------------------------------------------------------------
# Values


def _first_bad(frame: pl.DataFrame, bad: pl.Series) -> tuple[int, object]:
    index = int(bad.arg_max())
    return frame["__line"][index], index


def id_column(frame: pl.DataFrame, name: str, path: Path, where: str) -> pl.Series:
    """The ``name`` ("user" or "item") column as Int64 ids or String ids (see the module docstring)."""
    values = frame[name]
    if values.null_count():
        line, _ = _first_bad(frame, values.is_null())
        raise DataError(f"{path}, {where} {line}: missing {name} id (null). Every {where} needs a user and an "
                        f"item; fix or remove the {where}.")
    if values.dtype.is_integer():
        as_int = values.cast(pl.Int64, strict=False)
        return as_int if as_int.null_count() == 0 else values.cast(pl.String)
    if values.dtype.is_float():
        return _float_ids(frame, values, name, path, where)
    if values.dtype not in (pl.String, pl.Categorical) and not isinstance(values.dtype, pl.Enum):
        raise DataError(f"{path}: the {name} column holds {values.dtype} values; ids must be integers or strings. "
                        f"Set `{name}_col` to the id column.")
    return _string_ids(frame, values.cast(pl.String).str.strip_chars(" \t"), name, path, where)


def plain_integers(values: pl.Series) -> pl.Series | None:
    """``values`` as Int64 if every one is a plain integer (its text is exactly the integer's canonical
    text, ``0`` or ``-?[1-9][0-9]*``, within int64), else None: reading it as a number loses nothing."""
    as_int = values.cast(pl.Int64, strict=False)
    if as_int.null_count() or not (as_int.cast(pl.String) == values).all():
        return None
    return as_int


def _string_ids(frame: pl.DataFrame, ids: pl.Series, name: str, path: Path, where: str) -> pl.Series:
    as_int = plain_integers(ids)
    if as_int is not None:
        return as_int.alias(name)
    missing = ids.str.contains(MISSING)
    if missing.any():
        line, index = _first_bad(frame, missing)
        what = f"empty {name} field" if ids[index] == "" else f"missing {name} id {excerpt(ids[index])}"
        raise DataError(f"{path}, {where} {line}: {what}. Every {where} needs a user and an item; fix or remove "
                        f"the {where}.")
    return ids.alias(name)


def _float_ids(frame: pl.DataFrame, values: pl.Series, name: str, path: Path, where: str) -> pl.Series:
    bad = values.is_nan() | (values != values.floor()) | values.is_infinite() | (values.abs() >= 2.0**63)
    if bad.any():
        line, index = _first_bad(frame, bad)
        raise DataError(
            f"{path}, {where} {line}: {name} id {values[index]!r} is not a whole number; ids must be integers "
            f"or strings. Set `{name}_col` to the id column, or fix the {where}."
        )
    return values.cast(pl.Int64).alias(name)


def time_column(frame: pl.DataFrame, path: Path, what: str, where: str) -> pl.Series:
    """Numbers stay numbers (finite), strings become numbers, else dates. Raises on the first bad value."""
    values = frame["time"]
    if values.dtype.is_numeric() or values.dtype in (pl.Datetime, pl.Date):
        bad = values.is_null() | (values.is_nan() | values.is_infinite() if values.dtype.is_float() else False)
        if bad.any():
            line, index = _first_bad(frame, pl.Series(bad))
            raise DataError(f"{path}, {where} {line}: {what} value {values[index]!r} is missing or not finite. "
                            f"Fix or remove the {where}, or set `time_col: ''` to use the file order.")
        return values.alias("time")
    if values.dtype != pl.String:
        raise DataError(f"{path}: {what} holds {values.dtype} values, not times. Set `time_col` to the time column, "
                        "or `time_col: ''` to use the file order.")
    return _string_times(frame, values.str.strip_chars(" \t"), path, what, where)


def _string_times(frame: pl.DataFrame, values: pl.Series, path: Path, what: str, where: str) -> pl.Series:
    as_int = plain_integers(values) if values.null_count() == 0 else None
    if as_int is not None:  # unix times, the common case: no missing value can read as an integer
        return as_int.alias("time")
    missing = values.is_null() | values.str.contains(MISSING)
    if missing.any():
        line, index = _first_bad(frame, missing)
        value = values[index]
        problem = f"empty {what} field" if not value else f"missing {what} value {excerpt(value)}"
        raise DataError(f"{path}, {where} {line}: {problem}. Fix or remove the {where}, or set `time_col: ''` to "
                        "use the file order.")
    as_number = values.cast(pl.Float64, strict=False)
    if as_number.null_count() == 0:
        if not as_number.is_finite().all():
            line, index = _first_bad(frame, ~as_number.is_finite())
            raise DataError(f"{path}, {where} {line}: {what} value {excerpt(values[index])} is not finite. "
                            f"Fix or remove the {where}.")
        return as_number.alias("time")
    return _date_times(frame, values, as_number, path, what, where)


def _date_times(frame: pl.DataFrame, values: pl.Series, as_number: pl.Series, path: Path, what: str,
                where: str) -> pl.Series:
    try:
        as_date = values.str.to_datetime(strict=False)
    except pl.exceptions.PolarsError:  # no date format fits the first values
        as_date = None
    if as_date is not None and as_date.null_count() == 0:
        return as_date.alias("time")
    bad = as_number.is_null() if as_date is None else as_date.is_null()
    line, index = _first_bad(frame, bad)
    raise DataError(
        f"{path}, {where} {line}: {what} value {excerpt(values[index])} is neither a number nor a date (or not in "
        "the date format of the first values). Fix the value, set `time_col` to the right column, or "
        "`time_col: ''` to use the file order."
    )
