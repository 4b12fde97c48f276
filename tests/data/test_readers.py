"""Every reader and format, format detection, and the messages for bad input."""

from __future__ import annotations

import polars as pl
import pytest

from sigma_lightning.data.readers import DataError, detect_format, read_interactions


def rows(frame: pl.DataFrame) -> list[tuple]:
    return list(frame.select("user", "item", "time").iter_rows())


def test_sequence_file_with_string_ids(write):
    path = write("seq.txt", "u1 B0001 B0002 B0003\n\nu2  B0002\tB0009\n")
    frame = read_interactions(path, "sequence")
    assert frame.schema["user"] == pl.String and frame.schema["item"] == pl.String
    assert rows(frame) == [
        ("u1", "B0001", 0),
        ("u1", "B0002", 1),
        ("u1", "B0003", 2),
        ("u2", "B0002", 3),
        ("u2", "B0009", 4),
    ]


def test_sequence_file_with_integer_ids(write):
    frame = read_interactions(write("seq.txt", "1 10 11\n2 12\n"), "sequence")
    assert frame.schema["user"] == pl.Int64 and frame.schema["item"] == pl.Int64
    assert rows(frame) == [(1, 10, 0), (1, 11, 1), (2, 12, 2)]


def test_pairs_file_keeps_file_order_as_time(write):
    frame = read_interactions(write("pairs.txt", "a x\nb y\na z\n"), "pairs")
    assert rows(frame) == [("a", "x", 0), ("b", "y", 1), ("a", "z", 2)]


def test_csv_with_header_custom_columns_and_separator(write):
    path = write("t.csv", 'who;what;when;rating\nA;"x;1";30;5\nA;y;10;4\nB;x;20;3\n')
    frame = read_interactions(path, "csv", user_col="who", item_col="what", time_col="when", sep=";")
    assert rows(frame) == [("A", "x;1", 30), ("A", "y", 10), ("B", "x", 20)]


def test_csv_guesses_common_column_names(write):
    path = write("reviews.csv", "reviewerID,asin,overall,unixReviewTime\nA1,B01,5,1400000000\nA2,B02,4,1300000000\n")
    assert rows(read_interactions(path)) == [("A1", "B01", 1400000000), ("A2", "B02", 1300000000)]


def test_csv_without_header_uses_positions(write):
    path = write("t.csv", "1,10,5,300\n1,11,3,100\n")
    frame = read_interactions(path, "csv", has_header=False)
    assert rows(frame) == [(1, 10, 300), (1, 11, 100)]


def test_csv_without_time_column_uses_file_order(write):
    path = write("t.csv", "user_id,item_id\nA,x\nA,y\n")
    assert rows(read_interactions(path)) == [("A", "x", 0), ("A", "y", 1)]


def test_time_col_empty_string_ignores_the_time_column(write):
    path = write("t.csv", "user_id,item_id,timestamp\nA,x,9\nA,y,1\n")
    assert rows(read_interactions(path, time_col="")) == [("A", "x", 0), ("A", "y", 1)]


def test_csv_date_strings_are_parsed(write):
    path = write("t.csv", "user_id,item_id,date\nA,x,2020-01-02\nA,y,2019-05-01\n")
    frame = read_interactions(path)
    assert frame["time"].dtype == pl.Datetime
    assert frame["time"][1] < frame["time"][0]


def test_tsv(write):
    path = write("t.tsv", "user_id\titem_id\ttimestamp\nA\tx\t2\nB\ty\t1\n")
    assert rows(read_interactions(path)) == [("A", "x", 2), ("B", "y", 1)]


def test_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    pl.DataFrame({"user_id": [3, 3, 4], "item_id": ["x", "y", "x"], "timestamp": [1.5, 0.5, 2.0]}).write_parquet(path)
    assert rows(read_interactions(path)) == [(3, "x", 1.5), (3, "y", 0.5), (4, "x", 2.0)]


def test_movielens_ratings_dat(write):
    path = write("ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    frame = read_interactions(path)
    assert rows(frame) == [(1, 1193, 978300760), (1, 661, 978302109), (2, 1193, 978298413)]


def test_movielens_u_data(write):
    path = write("u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    assert rows(read_interactions(path)) == [(196, 242, 881250949), (186, 302, 891717742)]


def test_recbole_inter_typed_header(write):
    path = write(
        "beauty.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\nA\tx\t5\t3.5\nA\ty\t4\t1\n"
    )
    frame = read_interactions(path)
    assert rows(frame) == [("A", "x", 3.5), ("A", "y", 1.0)]


def test_table_with_multi_character_separator(write):
    path = write("t.txt", "user||item||ts\na||x||2\nb||y||1\n")
    assert rows(read_interactions(path, "csv", sep="||")) == [("a", "x", 2), ("b", "y", 1)]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("Beauty.txt", "1 1 2 3 4 5\n2 6 7 8\n3 4 12 13 14 15 16\n", "sequence"),
        ("seq.txt", "u1 a b c d e f\n", "sequence"),
        ("same_length.txt", "a 1 2 3\nb 4 5 6\n", "sequence"),
        ("ratings.dat", "1::2::5::100\n", "movielens"),
        ("ml.txt", "1::2::5::100\n", "movielens"),
        ("u.data", "1\t2\t3\t4\n", "movielens"),
        ("plain.txt", "1\t2\t3\t881250949\n4\t5\t3\t891717742\n", "movielens"),
        ("x.inter", "user_id:token\titem_id:token\n", "inter"),
        ("inter.txt", "user_id:token\titem_id:token\ttimestamp:float\nA\tx\t1\n", "inter"),
        ("pairs.txt", "a x\nb y\n", "pairs"),
        ("t.csv", "a,b\n", "csv"),
        ("t.tsv", "a\tb\n", "tsv"),
        ("t.parquet", "", "parquet"),
        ("table.txt", "user,item,time\na,b,1\n", "csv"),
        ("spaces.txt", "user,item name,time\na,b c d e f,1\n", "csv"),
    ],
)
def test_detect_format(write, name, text, expected):
    assert detect_format(write(name, text)) == expected


# ----------------------------------------------------------------------------------------------
# Bad input: one DataError naming the file / line / setting and the fix


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"data file not found: .*nope\.txt.*Set `path`"):
        read_interactions(tmp_path / "nope.txt")


def test_unknown_format(write):
    with pytest.raises(DataError, match=r"unknown data format 'xlsx'.*sequence"):
        read_interactions(write("a.txt", "1 2 3\n"), "xlsx")


def test_empty_file(write):
    with pytest.raises(DataError, match=r"empty\.txt.*empty"):
        read_interactions(write("empty.txt", "\n\n"))


def test_missing_column_names_setting_and_columns(write):
    path = write("t.csv", "user_id,item_id\nA,x\n")
    with pytest.raises(DataError, match=r"t\.csv: no column 'product'.*`item_col`.*\['user_id', 'item_id'\]"):
        read_interactions(path, item_col="product")


def test_unguessable_column(write):
    with pytest.raises(DataError, match=r"cannot find the user column among \['a', 'b'\].*`user_col`"):
        read_interactions(write("t.csv", "a,b\n1,2\n"))


def test_short_row_names_file_and_line(write):
    path = write("ratings.dat", "1::10::5::100\n\n1::11\n")
    with pytest.raises(DataError, match=r"ratings\.dat, line 3: expected .*'1::11'"):
        read_interactions(path)


def test_bad_time_value_names_line(write):
    path = write("u.data", "1\t10\t5\t100\n1\t11\t5\tsoon\n")
    with pytest.raises(DataError, match=r"u\.data, line 2: time .*'soon'.*neither a number nor a date"):
        read_interactions(path)


def test_empty_field_in_csv_names_line(write):
    path = write("t.csv", "user_id,item_id,timestamp\nA,x,1\nA,,2\n")
    with pytest.raises(DataError, match=r"t\.csv, line 3: empty item field"):
        read_interactions(path)


def test_ragged_csv_row_is_a_data_error(write):
    path = write("t.csv", "user_id,item_id,timestamp\nA,x,1\nA,y,2,7,8\n")
    with pytest.raises(DataError, match=r"t\.csv, line 3: expected 3 fields like the header .*got 5: 'A,y,2,7,8'"):
        read_interactions(path)


def test_blank_lines_in_csv_are_skipped(write):
    path = write("t.csv", "user_id,item_id,timestamp\n\nA,x,1\n\nA,y,2\n")
    assert rows(read_interactions(path)) == [("A", "x", 1), ("A", "y", 2)]


def test_short_pair_line(write):
    with pytest.raises(DataError, match=r"p\.txt, line 2: expected `user item`"):
        read_interactions(write("p.txt", "a x\nb\n"), "pairs")
