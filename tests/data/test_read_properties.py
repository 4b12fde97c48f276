"""Property-based tests of every reader: random well-formed files read back exactly, and random
lines or bytes either read as a checked frame or raise DataError; nothing else (no other exception,
no null id, no id that is not in the file)."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import re

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sigma_lightning.data.readers import FORMATS, DataError, read_interactions

# The policies, written out again here so that a change to the package's own patterns cannot also
# change what these tests expect.
MISSING = r"(?i)^(|nan|-nan|null|none|na|n/a|<na>|#n/a)$"


def plain_integer(value: str) -> bool:
    """An id read as an integer: its text is exactly the integer's canonical text, within int64."""
    try:
        number = int(value)
    except ValueError:
        return False
    return str(number) == value and -(2**63) <= number < 2**63


SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PLAIN_ID_CHARS = st.characters(
    blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), blacklist_characters=" \t:,;|\"'\ufeff\x85"
)
CSV_ID_CHARS = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\t\ufeff\x85")


def ids(chars: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Ids as a user writes them: plain integers (some zero-padded) or text, never a missing marker."""
    number = st.integers(-5, 10**6).map(str) | st.integers(0, 999).map(lambda n: f"{n:05d}")
    text = st.text(chars, min_size=1, max_size=6).map(lambda s: s.strip(" ")).filter(
        lambda s: s and not re.match(MISSING, s)
    )
    return number | text


def typed(values: list[str]) -> list:
    """What a reader must return for a column written as ``values``: ints when all are plain integers."""
    if all(plain_integer(v) for v in values):
        return [int(v) for v in values]
    return values


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("properties")


def wrap(data: bytes, how: str) -> bytes:
    """The same content as a plain file, with a BOM, or compressed."""
    return {"plain": data, "bom": b"\xef\xbb\xbf" + data, "gzip": gzip.compress(data), "bz2": bz2.compress(data)}[how]


WRAPS = st.sampled_from(["plain", "bom", "gzip", "bz2"])
ROWS = st.lists(st.tuples(ids(PLAIN_ID_CHARS), ids(PLAIN_ID_CHARS)), min_size=1, max_size=30)


def expected(pairs: list[tuple[str, str]], times: list | None = None) -> list[tuple]:
    users, items = typed([u for u, _ in pairs]), typed([i for _, i in pairs])
    return list(zip(users, items, times if times is not None else range(len(pairs))))


def rows(frame: pl.DataFrame) -> list[tuple]:
    return list(frame.select("user", "item", "time").iter_rows())


# ----------------------------------------------------------------------------------------------
# Well-formed files are read exactly


@SETTINGS
@given(lines=st.lists(st.tuples(ids(PLAIN_ID_CHARS), st.lists(ids(PLAIN_ID_CHARS), min_size=1, max_size=6)),
                      min_size=1, max_size=15),
       gap=st.sampled_from([" ", "\t", "  ", " \t "]), how=WRAPS, crlf=st.booleans())
def test_sequence_files_read_exactly(folder, lines, gap, how, crlf):
    end = "\r\n" if crlf else "\n"
    text = "".join(gap.join([user, *items]) + end for user, items in lines)
    path = folder / "seq.txt"
    path.write_bytes(wrap(text.encode(), how))
    pairs = [(user, item) for user, items in lines for item in items]
    assert rows(read_interactions(path, "sequence")) == expected(pairs)


@SETTINGS
@given(pairs=ROWS, gap=st.sampled_from([" ", "\t", " \t"]), how=WRAPS)
def test_pair_files_read_exactly(folder, pairs, gap, how):
    path = folder / "pairs.txt"
    path.write_bytes(wrap("".join(f"{u}{gap}{i}\n" for u, i in pairs).encode(), how))
    assert rows(read_interactions(path, "pairs")) == expected(pairs)


@SETTINGS
@given(pairs=ROWS, sep=st.sampled_from(["::", " :: ", "::\t", "\t"]), how=WRAPS, data=st.data())
def test_movielens_files_read_exactly(folder, pairs, sep, how, data):
    times = data.draw(st.lists(st.integers(10**8, 2 * 10**9), min_size=len(pairs), max_size=len(pairs)))
    text = "".join(f"{u}{sep}{i}{sep}5{sep}{t}\n" for (u, i), t in zip(pairs, times))  # spaces around fields go
    path = folder / "ratings.dat"
    path.write_bytes(wrap(text.encode(), how))
    assert rows(read_interactions(path)) == expected(pairs, times)


@SETTINGS
@given(pairs=st.lists(st.tuples(ids(CSV_ID_CHARS), ids(CSV_ID_CHARS)), min_size=1, max_size=30),
       quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]), sep=st.sampled_from([",", ";", "\t", "|"]),
       how=WRAPS, data=st.data())
def test_csv_files_written_by_the_csv_module_read_exactly(folder, pairs, quoting, sep, how, data):
    pairs = [(u.strip(" "), i.strip(" ")) for u, i in pairs]
    pairs = [(u, i) for u, i in pairs if u and i and not re.match(MISSING, u) and not re.match(MISSING, i)]
    if not pairs:
        return
    times = data.draw(st.lists(st.integers(0, 10**9) | st.floats(0, 1e9), min_size=len(pairs), max_size=len(pairs)))
    out = io.StringIO()
    writer = csv.writer(out, delimiter=sep, quoting=quoting, lineterminator="\n")
    writer.writerow(["user_id", "item_id", "timestamp"])
    writer.writerows([(u, i, t) for (u, i), t in zip(pairs, times)])
    path = folder / "table.csv"
    path.write_bytes(wrap(out.getvalue().encode(), how))
    frame = read_interactions(path, sep=sep)
    assert rows(frame) == expected(pairs, [float(t) if frame.schema["time"] == pl.Float64 else t for t in times])


@SETTINGS
@given(pairs=st.lists(st.tuples(ids(CSV_ID_CHARS), st.integers(-(2**40), 2**40)), min_size=1, max_size=30))
def test_parquet_files_read_exactly(folder, pairs):
    pairs = [(u.strip(" "), i) for u, i in pairs]
    pairs = [(u, i) for u, i in pairs if u and not re.match(MISSING, u)]
    if not pairs:
        return
    path = folder / "table.parquet"
    pl.DataFrame({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs]}).write_parquet(path)
    assert rows(read_interactions(path)) == [(u, i, n) for n, (u, i) in enumerate(zip(typed([u for u, _ in pairs]),
                                                                                        [i for _, i in pairs]))]


# ----------------------------------------------------------------------------------------------
# One bad cell in a well-formed file: DataError naming its line


LAYOUTS = {
    "pairs": ("pairs.txt", "", lambda cells: " ".join(cells), 2),
    "movielens": ("ratings.dat", "", lambda cells: "::".join(cells), 4),
    "csv": ("table.csv", "user_id,item_id,rating,timestamp\n", lambda cells: ",".join(cells), 4),
    "tsv": ("table.tsv", "user_id\titem_id\trating\ttimestamp\n", lambda cells: "\t".join(cells), 4),
}


@SETTINGS
@given(pairs=st.lists(st.tuples(ids(PLAIN_ID_CHARS), ids(PLAIN_ID_CHARS)), min_size=3, max_size=30),
       fmt=st.sampled_from(sorted(LAYOUTS)), data=st.data())
def test_one_bad_cell_is_an_error_naming_its_line(folder, pairs, fmt, data):
    name, header, join, width = LAYOUTS[fmt]
    cells = [[u, i, "5", str(10**9 + n)][:width] for n, (u, i) in enumerate(pairs)]
    row = data.draw(st.integers(0, len(cells) - 1))
    fault = data.draw(st.sampled_from(["missing user", "missing item", "extra field", "short row"]))
    marker = data.draw(st.sampled_from(["NaN", "null", "None", "NA", "N/A", "<NA>", "nan"]))
    if fault.startswith("missing"):
        cells[row][0 if fault == "missing user" else 1] = marker
    elif fault == "extra field":
        cells[row].append("7")
    else:
        cells[row].pop()
    path = folder / name
    path.write_text(header + "".join(join(c) + "\n" for c in cells))
    line = row + 1 + (1 if header else 0)
    expected = rf"line {line}: (missing (user|item) id '{re.escape(marker)}'|expected)"
    with pytest.raises(DataError, match=expected):
        read_interactions(path, fmt)


# ----------------------------------------------------------------------------------------------
# Anything else: a checked frame or DataError


def check_outcome(path, fmt: str, written: bytes) -> None:
    """The only allowed outcomes: DataError, or a frame whose ids are non-null, stripped, present in
    the file as written and not missing markers, with finite times."""
    try:
        frame = read_interactions(path, fmt)
    except DataError as err:
        message = str(err)
        assert "\n" not in message and message.isprintable() and len(message) < 1000
        return
    assert frame.columns == ["user", "item", "time"] and frame.height >= 1
    assert frame.null_count().row(0) == (0, 0, 0)
    text = _text_of(written)
    for name in ("user", "item"):
        values = frame[name].cast(pl.String).unique().to_list()
        for value in values:
            assert value and value == value.strip(" \t") and not re.match(MISSING, value)
            assert value in text, f"{name} id {value!r} is not in the file"
    if frame.schema["time"] == pl.Float64:
        assert frame["time"].is_finite().all()


def _text_of(written: bytes) -> str:
    for decompress in (gzip.decompress, bz2.decompress):
        try:
            written = decompress(written)
        except (OSError, ValueError, EOFError):
            pass
    for codec in ("utf-8-sig", "utf-16"):
        try:
            return written.decode(codec)
        except UnicodeDecodeError:
            pass
    return written.decode("latin-1")


TOKENS = st.text(st.characters(codec="utf-8", blacklist_categories=("Cs",)), max_size=5) | st.sampled_from(
    ["NaN", "null", "", "1", "00242", "242", '"', '""', "1e9", "inf", "-0", "2020-01-01", "user_id", "item_id",
     "timestamp", "x:token", "\ufeff", "\r", "\x00", "\x07"]
)
LINES = st.lists(st.lists(TOKENS, max_size=6).flatmap(
    lambda tokens: st.sampled_from([",", "\t", " ", "::", ";", "  "]).map(lambda sep: sep.join(tokens))
), max_size=12)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(lines=LINES, fmt=st.sampled_from(["auto", *FORMATS]), name=st.sampled_from(["d.txt", "d.csv", "u.data"]),
       end=st.sampled_from(["\n", "\r\n"]))
def test_random_lines_give_a_checked_frame_or_data_error(folder, lines, fmt, name, end):
    written = end.join(lines).encode("utf-8", errors="surrogatepass")
    path = folder / name
    path.write_bytes(written)
    check_outcome(path, fmt, written)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300) | st.binary(max_size=40).map(gzip.compress),
       fmt=st.sampled_from(["auto", *FORMATS]))
def test_random_bytes_give_a_checked_frame_or_data_error(folder, data, fmt):
    path = folder / "blob.txt"
    path.write_bytes(data)
    check_outcome(path, fmt, data)
