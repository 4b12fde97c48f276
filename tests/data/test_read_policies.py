"""The reading policies of docs/data.md: each bad input gets one DataError naming the file and the
line (or byte offset, or setting) and the fix; nothing wrong is read as if it were right."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import stat

import polars as pl
import pytest

from sigma_lightning.data import source as source_module
from sigma_lightning.data.datamodule import SeqRecDataModule
from sigma_lightning.data.readers import FORMATS, DataError, read_interactions
from sigma_lightning.data.source import open_source

zstandard = pytest.importorskip("zstandard")

CSV_ROWS = ["user_id,item_id,timestamp"] + [f"u{i % 7},i{i % 11},{1000 + i}" for i in range(1, 600)]


def csv_text(rows: list[str]) -> str:
    return "\n".join(rows) + "\n"


def refused(path, *args, match: str, **kwargs) -> str:
    """read_interactions raises one DataError that names the file and matches ``match``; returns it."""
    with pytest.raises(DataError, match=match) as info:
        read_interactions(path, *args, **kwargs)
    message = str(info.value)
    assert os.path.basename(str(path)) in message
    assert "\n" not in message and len(message) < 600 and message.isprintable()
    return message


def rows(frame: pl.DataFrame) -> list[tuple]:
    return list(frame.select("user", "item", "time").iter_rows())


# ----------------------------------------------------------------------------------------------
# Ragged rows: an error wherever they are


@pytest.mark.parametrize("line", [2, 7, 482])
@pytest.mark.parametrize("extra", [",7,8", ",7", "-drop-last"])
def test_ragged_csv_row_is_an_error_on_any_line(write, line, extra):
    table = list(CSV_ROWS)
    table[line - 1] = table[line - 1].rsplit(",", 1)[0] if extra == "-drop-last" else table[line - 1] + extra
    got = 2 if extra == "-drop-last" else 3 + extra.count(",")
    refused(write("t.csv", csv_text(table)), match=rf"t\.csv, line {line}: expected 3 fields .*got {got}")


@pytest.mark.parametrize(
    ("name", "text", "fmt", "line"),
    [
        ("p.txt", "a x\nb y\nc z w\n", "pairs", 3),
        ("u.data", "1\t2\t5\t978300760\n1\t3\t5\t978300761\n1\t4\t978300762\n", "movielens", 3),
        ("ratings.dat", "1::2::5::978300760\n1::3::5::978300761::9\n", "movielens", 2),
        ("t.tsv", "user_id\titem_id\n" + "a\tx\n" * 8 + "a\tx\tq\n", "tsv", 10),
        ("t.txt", "user||item\na||x\nb||y||z\n", "csv", 3),
        ("x.inter", "user_id:token\titem_id:token\nA\tx\nA\n", "inter", 3),
    ],
)
def test_ragged_rows_in_every_delimited_format(write, name, text, fmt, line):
    sep = "||" if name == "t.txt" else None
    refused(write(name, text), fmt, sep=sep, match=rf"line {line}: expected")


def test_quoted_separators_are_one_field_and_a_bad_quote_names_its_line(write):
    path = write("t.csv", 'user_id,item_id\na,"x,1"\n"b",y\n')
    assert rows(read_interactions(path)) == [("a", "x,1", 0), ("b", "y", 1)]
    refused(write("bad.csv", 'user_id,item_id\na,x\nb,"y\n'), match=r"bad\.csv, line 3: bad quoting")


# ----------------------------------------------------------------------------------------------
# Missing ids, ids as written


@pytest.mark.parametrize("token", ["NaN", "nan", "null", "NULL", "None", "NA", "N/A", "<NA>", "#N/A"])
@pytest.mark.parametrize(
    ("name", "template", "fmt", "line"),
    [
        ("t.csv", "user_id,item_id\nu1,5\nu1,{t}\nu2,6\n", "csv", 3),
        ("s.txt", "u1 5 6 7\nu2 8 {t} 9\n", "sequence", 2),
        ("p.txt", "u1 5\n{t} 6\n", "pairs", 2),
        ("u.data", "1\t5\t3\t978300760\n{t}\t6\t3\t978300761\n", "movielens", 2),
    ],
)
def test_missing_value_ids_are_errors_naming_the_line(write, token, name, template, fmt, line):
    refused(write(name, template.format(t=token)), fmt, match=rf"line {line}: missing (user|item) id '{token}'")


def test_empty_id_field_names_the_line(write):
    refused(write("t.csv", "user_id,item_id\nA,x\n ,y\n"), match=r"t\.csv, line 3: empty user field")


def test_parquet_null_and_nan_ids_name_the_row(tmp_path):
    path = tmp_path / "t.parquet"
    pl.DataFrame({"user_id": ["a", None, "b"], "item_id": [1, 2, 3]}).write_parquet(path)
    refused(path, match=r"row 2: missing user id \(null\)")
    pl.DataFrame({"user_id": ["a", "b", "c"], "item_id": [1.0, float("nan"), 3.0]}).write_parquet(path)
    refused(path, match=r"row 2: item id nan is not a whole number")
    pl.DataFrame({"user_id": ["a", "b"], "item_id": [1.0, 2.5]}).write_parquet(path)
    refused(path, match=r"row 2: item id 2.5 is not a whole number")


def test_parquet_whole_float_ids_are_integers(tmp_path):
    path = tmp_path / "t.parquet"
    pl.DataFrame({"user_id": ["a", "b"], "item_id": [1.0, 20.0]}).write_parquet(path)
    frame = read_interactions(path)
    assert frame.schema["item"] == pl.Int64 and frame["item"].to_list() == [1, 20]


def test_nan_time_is_an_error_not_a_float(write):
    refused(write("t.csv", "user_id,item_id,timestamp\na,x,1\na,y,NaN\n"), match=r"line 3: missing time value 'NaN'")
    refused(write("t2.csv", "user_id,item_id,timestamp\na,x,1\na,y,inf\n"), match=r"line 3: time value 'inf' is not finite")


def test_leading_zeros_keep_ids_distinct_strings(write):
    frame = read_interactions(write("u.data", "196\t00242\t3\t881250949\n196\t242\t3\t881250950\n"))
    assert frame.schema["item"] == pl.String and frame["item"].to_list() == ["00242", "242"]
    assert frame.schema["user"] == pl.Int64


def test_ids_are_integers_only_when_every_id_is_a_plain_integer(write):
    frame = read_interactions(write("p.txt", "1 10\n2 x7\n-3 -0\n"), "pairs")
    assert frame.schema["user"] == pl.Int64 and frame["user"].to_list() == [1, 2, -3]
    assert frame.schema["item"] == pl.String and frame["item"].to_list() == ["10", "x7", "-0"]
    huge = read_interactions(write("h.txt", "1 99999999999999999999\n"), "pairs")
    assert huge["item"].to_list() == ["99999999999999999999"]


# ----------------------------------------------------------------------------------------------
# Byte-order mark, encoding, control characters, line ends


def test_utf8_bom_is_stripped(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_bytes(b"\xef\xbb\xbf1 10 11\n2 12\n")
    assert open_source(path).data == b"1 10 11\n2 12\n"
    frame = read_interactions(path, "sequence")
    assert frame.schema["user"] == pl.Int64 and frame["user"].to_list() == [1, 1, 2]
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbfuser_id,item_id\na,x\n")
    assert rows(read_interactions(path)) == [("a", "x", 0)]


def test_utf16_with_bom_is_decoded(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("user_id,item_id\nä,x\n".encode("utf-16"))
    assert rows(read_interactions(path)) == [("ä", "x", 0)]


def test_latin1_file_names_line_offset_and_encoding_then_reads_with_the_setting(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("user_id,item_id\na,x\nb,caf\u00e9\n".encode("latin-1"))
    refused(path, match=r"t\.csv, line 3 \(byte offset 25\): not valid utf-8 \(bytes '\\xe9\\n'\)\. Set `encoding`")
    assert rows(read_interactions(path, encoding="latin-1")) == [("a", "x", 0), ("b", "caf\u00e9", 1)]
    refused(path, encoding="klingon", match=r"unknown `encoding` 'klingon'")


def test_encoding_setting_reaches_the_reader_and_the_cache_key(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_bytes("u1 caf\u00e9 b c\n".encode("latin-1"))
    dm = SeqRecDataModule(str(path), encoding="latin-1", min_user_interactions=0, min_item_interactions=0,
                          cache_dir=str(tmp_path / "cache"))
    assert dm.item_ids == [None, "b", "c", "caf\u00e9"]


def test_control_character_and_bare_carriage_return_name_their_line(write):
    refused(write("s.txt", "u1 a b\nu2 c\x07 d\n"), "sequence", match=r"s\.txt, line 2: control character '\\x07'")
    refused(write("m.txt", "u1 a b\ru2 c d\r"), "sequence", match=r"m\.txt, line 1: a carriage return")


def test_crlf_line_ends_are_read(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"user_id,item_id\r\na,x\r\nb,y\r\n")
    assert rows(read_interactions(path)) == [("a", "x", 0), ("b", "y", 1)]


# ----------------------------------------------------------------------------------------------
# Compression, binary content, Parquet where text is expected


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize(("suffix", "compress"), [(".gz", gzip.compress), (".bz2", bz2.compress),
                                                  (".xz", lzma.compress), (".zst", zstd)])
def test_compressed_files_are_read_transparently(tmp_path, suffix, compress):
    text = b"1 10 11 12\n2 12 13 14\n"
    path = tmp_path / f"Beauty.txt{suffix}"
    path.write_bytes(compress(text))
    plain = tmp_path / "Beauty.txt"
    plain.write_bytes(text)
    assert rows(read_interactions(path)) == rows(read_interactions(plain))
    misnamed = tmp_path / "ratings.csv"  # the magic bytes decide, not the name
    misnamed.write_bytes(compress(b"user_id,item_id\na,x\n"))
    assert rows(read_interactions(misnamed)) == [("a", "x", 0)]


def test_compression_suffix_is_looked_through_for_the_format(tmp_path):
    path = tmp_path / "ratings.dat.gz"
    path.write_bytes(gzip.compress(b"1::2::5::978300760\n"))
    assert rows(read_interactions(path)) == [(1, 2, 978300760)]


def test_truncated_gzip_is_named_damaged(tmp_path):
    path = tmp_path / "Beauty.txt.gz"
    path.write_bytes(gzip.compress(b"1 10 11 12\n" * 1000)[:60])
    refused(path, match=r"gzip-compressed but cannot be decompressed .*damaged or truncated")


def test_random_binary_is_refused_without_dumping_it(tmp_path):
    path = tmp_path / "data.txt"
    path.write_bytes(bytes(range(256)) * 64)
    message = refused(path, match=r"data\.txt is binary, not a text table \(a NUL byte at byte offset 0")
    assert len(message) < 400


@pytest.mark.parametrize("fmt", ["auto", "sequence", "csv"])
def test_binary_is_refused_for_every_text_format(tmp_path, fmt):
    path = tmp_path / "blob.csv"
    path.write_bytes(os.urandom(4096))
    refused(path, fmt, match=r"binary|not valid utf-8")


def test_parquet_read_as_text_and_text_read_as_parquet(tmp_path, write):
    path = tmp_path / "t.csv"
    pl.DataFrame({"user_id": ["a"], "item_id": ["x"]}).write_parquet(path)
    assert rows(read_interactions(path)) == [("a", "x", 0)]  # auto: the magic bytes say Parquet
    refused(path, "csv", match=r"is a Parquet file, not text\. Set `format: parquet`")
    refused(write("t.parquet", "user_id,item_id\na,x\n"), match=r"is not a Parquet file \(it starts 'user_id")


def test_zip_archive_is_named(tmp_path):
    import zipfile

    path = tmp_path / "ratings.csv"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ratings.csv", "user_id,item_id\na,x\n")
    refused(path, match=r"is a zip archive .*unzip it")


# ----------------------------------------------------------------------------------------------
# Separator hint, file kinds, permissions


def test_semicolon_csv_suggests_sep_not_user_col(write):
    path = write("t.csv", "user_id;item_id;timestamp\na;x;1\n")
    message = refused(path, match=r"looks separated by ';'\. Set `sep: ';'`")
    assert "user_col" not in message
    assert rows(read_interactions(path, sep=";")) == [("a", "x", 1)]


def test_dev_zero_is_not_a_regular_file():
    with pytest.raises(DataError, match=r"/dev/zero is not a regular file \(it is a character device\)"):
        read_interactions("/dev/zero")


def test_folder_and_fifo_are_named(tmp_path):
    refused(tmp_path, match=r"is a folder, not a data file")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    refused(fifo, match=r"pipe is not a regular file \(it is a FIFO")


def test_missing_file_is_not_found(tmp_path):
    refused(tmp_path / "nope.txt", match=r"data file not found: .*nope\.txt")


def test_unreadable_file_gets_one_message(tmp_path, monkeypatch):
    path = tmp_path / "secret.txt"
    path.write_text("1 2 3 4\n")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(source_module.Path, "read_bytes", denied)
    refused(path, match=r"cannot read the data file .*secret\.txt: Permission denied\. Check its permissions")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_by_mode(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("1 2 3 4\n")
    path.chmod(0)
    try:
        refused(path, match=r"cannot read the data file")
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


# ----------------------------------------------------------------------------------------------
# Duplicates


def test_exact_duplicate_rows_are_counted_and_reported(write, tmp_path):
    path = write("t.csv", "user_id,item_id,timestamp\n" + "a,x,1\na,y,2\na,x,1\na,z,3\na,x,4\nb,x,1\nb,y,2\nb,z,3\n")
    settings = {"min_user_interactions": 0, "min_item_interactions": 0, "cache_dir": str(tmp_path / "c")}
    with pytest.warns(UserWarning, match=r"t\.csv: 1 rows repeat an earlier row exactly .*`deduplicate: true`"):
        stats = SeqRecDataModule(str(path), **settings).statistics
    assert stats["duplicate_rows"] == 1 and stats["repeated_pairs"] == 2 and stats["interactions"] == 8
    deduplicated = SeqRecDataModule(str(path), deduplicate=True, **settings).statistics
    assert deduplicated["interactions"] == 6


def test_every_format_has_a_reader():
    assert set(FORMATS) == {"sequence", "csv", "tsv", "parquet", "movielens", "inter", "pairs"}
