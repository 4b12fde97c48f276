"""Text tables as polars frames of lines and fields, with the exact line number of every row.

A record is one line: ``\\n`` (or ``\\r\\n``) ends it, blank lines (spaces and tabs only) are
skipped, and a quoted field cannot span lines. Fields are split on runs of spaces and tabs
(:func:`split_whitespace`), on a literal separator of any length (:func:`split_literal`), or as CSV
with ``"`` quotes (:func:`split_csv`: lines without a quote split in polars, the others by Python's
``csv`` module in strict mode, so ``a,"b,c"`` is two fields and ``"b`` is an error naming its line).
"""

from __future__ import annotations

import csv
from pathlib import Path

import polars as pl

from sigma_lightning.data.source import Source, excerpt
from sigma_lightning.errors import DataError

BLANK = " \t"


def text_lines(source: Source) -> pl.DataFrame:
    """Non-blank lines of a text source: ``line`` (1-based number in the file) and ``text``."""
    if not source.data:
        return pl.DataFrame({"line": [], "text": []}, schema={"line": pl.Int64, "text": pl.String})
    # NUL never occurs in a text source (source.decode refuses it), so each line is one field; polars
    # keeps empty lines (as null) and strips the \r of \r\n, which keeps the numbering exact.
    lines = pl.read_csv(
        source.data, has_header=False, separator="\x00", quote_char=None, new_columns=["text"], infer_schema_length=0
    )
    lines = lines.with_row_index("line", offset=1).with_columns(pl.col("line").cast(pl.Int64), pl.col("text").fill_null(""))
    return lines.filter(pl.col("text").str.strip_chars(BLANK) != "")


def split_whitespace(lines: pl.DataFrame) -> pl.DataFrame:
    """``line``, ``text``, ``fields``: the runs of characters other than space and tab."""
    return lines.with_columns(pl.col("text").str.extract_all(r"[^ \t]+").alias("fields"))


def split_literal(lines: pl.DataFrame, sep: str) -> pl.DataFrame:
    """``line``, ``text``, ``fields``: split on the literal ``sep`` (fields keep their spaces)."""
    return lines.with_columns(pl.col("text").str.split(sep).alias("fields"))


def split_csv(lines: pl.DataFrame, sep: str, path: Path) -> pl.DataFrame:
    """``line``, ``text``, ``fields``: CSV fields with ``"`` quotes (see the module docstring)."""
    if len(sep) != 1:
        return split_literal(lines, sep)
    quoted = pl.col("text").str.contains('"', literal=True)
    plain = split_literal(lines.filter(~quoted), sep)
    rest = lines.filter(quoted)
    if rest.height == 0:
        return plain
    fields = [_csv_fields(line, text, sep, path) for line, text in rest.iter_rows()]
    parsed = rest.with_columns(pl.Series("fields", fields, dtype=pl.List(pl.String)))
    return pl.concat([plain, parsed]).sort("line")


def _csv_fields(line: int, text: str, sep: str, path: Path) -> list[str]:
    try:
        return next(csv.reader([text], delimiter=sep, quotechar='"', strict=True))
    except csv.Error as err:
        raise DataError(
            f"{path}, line {line}: bad quoting ({err}) in {excerpt(text)}. A quoted field must close on its "
            "line (\"\" for a quote inside it); fix the line, or check `sep`."
        ) from None


def common_width(fields: pl.DataFrame) -> int:
    """The number of fields most lines have, so a stray line is the one reported (ties: the larger,
    as a cut-off line is the commoner fault)."""
    counts = fields["fields"].list.len().value_counts(sort=True)
    top = counts.filter(pl.col("count") == counts["count"].max())
    return int(top[counts.columns[0]].max())


def check_widths(fields: pl.DataFrame, path: Path, allowed: set[int], shape: str, sep: str | None) -> None:
    """Raise on the first line whose number of fields is not in ``allowed`` (ragged rows are errors
    wherever they are in the file)."""
    widths = fields["fields"].list.len()
    bad = fields.filter(~widths.is_in(sorted(allowed)))
    if bad.height:
        line, text, got = bad["line"][0], bad["text"][0], int(bad["fields"].list.len()[0])
        how = "spaces/tabs" if sep is None else repr(sep)
        expected = " or ".join(str(w) for w in sorted(allowed))
        raise DataError(
            f"{path}, line {line}: expected {shape} ({expected} fields separated by {how}), got {got}: "
            f"{excerpt(text)}. Fix the line, or set `format`/`sep` to match the file."
        )
