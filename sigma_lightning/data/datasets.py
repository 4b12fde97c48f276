"""Named data sets: ``data.dataset: ml-1m`` (and the rest of :data:`REGISTRY`) instead of a file.

:func:`prepare` turns a name into a local Parquet file of ``(user, item, time)`` rows that the
DataModule reads like any other file (then the usual 5-core filter and chronological leave-one-out):

1. the publisher's raw file is looked for in ``<data folder>/<name>/`` (:func:`default_data_dir`);
   absent, it is downloaded (:mod:`.download`: progress bar, resumable, checked against the
   published md5 where there is one), or, for a set behind an agreement (Yelp), the message says
   where to get it and where to put it;
2. present, it is verified: size and sha256 recorded at first use must still match;
3. it is converted once to ``interactions-<sha256 prefix>-v<CONVERTER_VERSION>.parquet`` beside it
   (a new raw file or converter makes a new name; the old one is removed).

A lock file in the set's folder makes concurrent processes (DDP ranks) wait for the first one.
Sources, formats and terms of every set: docs/data.md, "Named data sets".
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from filelock import FileLock
from rich.progress import open as progress_open

from sigma_lightning.data.download import DownloadSettings, fetch, verify
from sigma_lightning.errors import ConfigError, DataError

DATA_ENV = "SIGMA_LIGHTNING_DATA"
CONVERTER_VERSION = 1
"""Bump when a converter's output changes, so every converted file is rebuilt."""


def default_data_dir() -> Path:
    """Where named data sets live: $SIGMA_LIGHTNING_DATA, else $XDG_DATA_HOME/sigma_lightning, else
    ~/.local/share/sigma_lightning. Not under the cache root: emptying caches must not throw away
    downloads of up to gigabytes."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "sigma_lightning"


Converter = Callable[[Path, bool], pl.DataFrame]
"""(raw file, show progress) -> frame with columns user (String), item (String), time (Int64)."""


@dataclass(frozen=True)
class NamedDataset:
    """One named data set: where its raw file comes from and how it becomes interactions.

    ``urls`` are tried in order (empty: no download, ``manual`` says what to do); ``md5`` is the
    publisher's checksum where one is published; ``page`` and ``terms`` are for the messages and docs.
    """

    name: str
    filename: str
    urls: tuple[str, ...]
    md5: str | None
    convert: Converter
    page: str
    terms: str
    manual: str = ""


# ----------------------------------------------------------------------------------------------
# Converters


def movielens(member: str, sep: bytes) -> Converter:
    """A GroupLens zip: ``member`` holds ``user<sep>item<sep>rating<sep>timestamp`` lines."""

    def convert(raw: Path, progress: bool) -> pl.DataFrame:
        text = _zip_member(raw, member).replace(sep, b"\t")
        columns = {"user": pl.String, "item": pl.String, "rating": pl.String, "time": pl.Int64}
        try:
            table = pl.read_csv(io.BytesIO(text), separator="\t", has_header=False, schema=columns)
        except pl.exceptions.PolarsError as err:
            raise DataError(
                f"{raw}: {member} does not parse ({' '.join(str(err).split())[:160]}). {_damaged(raw)}"
            ) from None
        return table.select("user", "item", "time")

    return convert


def _zip_member(raw: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(raw) as archive:
            return archive.read(member)
    except KeyError:
        raise DataError(f"{raw} holds no {member}: it is not the publisher's archive. {_damaged(raw)}") from None
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{raw} is not a readable zip archive ({err}). {_damaged(raw)}") from None


def json_lines(user: str, item: str, time: str, time_format: str | None = None) -> Converter:
    """One record per line (JSON, or a Python literal as in the Steam and older Amazon files):
    ``user``/``item``/``time`` are the keys; ``time`` is unix seconds, or a date in ``time_format``.
    Records lacking one of them (or with a time that does not parse) are skipped, in one warning."""

    def convert(raw: Path, progress: bool) -> pl.DataFrame:
        rows, dropped = {"line": [], "user": [], "item": [], "time": []}, []
        for number, record in _records(raw, progress):
            values = [record.get(key) if isinstance(record, dict) else None for key in (user, item, time)]
            if None in values:
                dropped.append(number)
                continue
            for column, value in zip(rows, [number, *map(str, values)], strict=True):
                rows[column].append(value)
        frame = pl.DataFrame(rows, schema={"line": pl.Int64, "user": pl.String, "item": pl.String, "time": pl.String})
        frame = frame.with_columns(_unix_seconds(frame["time"], time_format))
        dropped += frame.filter(pl.col("time").is_null())["line"].to_list()
        _warn_skipped(raw, dropped, f"`{user}`, `{item}` and a valid `{time}`")
        return frame.drop_nulls("time").select("user", "item", "time")

    return convert


def _unix_seconds(values: pl.Series, time_format: str | None) -> pl.Series:
    """Int64 unix seconds; null where a value is not one."""
    if time_format is None:
        return values.cast(pl.Int64, strict=False)
    return values.str.to_datetime(time_format, strict=False).dt.epoch("s").alias(values.name)


def _warn_skipped(raw: Path, lines: list[int], needed: str) -> None:
    if lines:
        warnings.warn(
            f"{raw}: skipped {len(lines):,} records without {needed} (the first at line {min(lines)}).", stacklevel=3
        )


def _records(raw: Path, progress: bool) -> Iterator[tuple[int, object]]:
    """``(line number, parsed record)`` for every non-empty line; gzip is decompressed."""
    with progress_open(raw, "rb", description=f"reading {raw.name}", disable=not progress) as fh:
        compressed = fh.read(2) == b"\x1f\x8b"
        fh.seek(0)
        stream = gzip.GzipFile(fileobj=fh) if compressed else fh
        try:
            for number, line in enumerate(stream, start=1):
                if line.strip():
                    yield number, _parse(line, raw, number)
        except (EOFError, gzip.BadGzipFile, OSError) as err:
            raise DataError(f"{raw} is damaged or truncated ({err}). {_damaged(raw)}") from None


def _parse(line: bytes, raw: Path, number: int) -> object:
    """JSON, else a Python literal (ast.literal_eval: data only, never code)."""
    try:
        return json.loads(line)
    except ValueError:
        pass
    try:
        return ast.literal_eval(line.decode("utf-8"))
    except (ValueError, SyntaxError, UnicodeDecodeError, RecursionError, MemoryError):
        raise DataError(
            f"{raw}, line {number}: neither JSON nor a Python literal ({line[:80]!r}). {_damaged(raw)}"
        ) from None


def _damaged(raw: Path) -> str:
    return f"Delete {raw} (and its .checksum.json) and run again to download it afresh."


# ----------------------------------------------------------------------------------------------
# The registry

GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
GROUPLENS_TERMS = (
    "GroupLens research licence (README in the archive): research use, no redistribution or commercial "
    "use without permission; cite Harper & Konstan, ACM TiiS 2015"
)
AMAZON_2014 = (
    "https://mcauleylab.ucsd.edu/public_datasets/data/amazon/categoryFiles/",
    "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/",
)
AMAZON_PAGE = "https://cseweb.ucsd.edu/~jmcauley/datasets/amazon/links.html"
AMAZON_TERMS = "research use; cite McAuley et al., SIGIR 2015 and He & McAuley, WWW 2016"
AMAZON_REVIEW = json_lines("reviewerID", "asin", "unixReviewTime")


def _grouplens(name: str, page: str, member: str, sep: bytes, md5: str) -> NamedDataset:
    """A MovieLens zip; ``md5`` is the one GroupLens publishes beside it (``<name>.zip.md5``)."""
    filename = f"{name}.zip"
    return NamedDataset(
        name=name,
        filename=filename,
        urls=(GROUPLENS + filename,),
        md5=md5,
        convert=movielens(member, sep),
        page=f"https://grouplens.org/datasets/movielens/{page}/",
        terms=GROUPLENS_TERMS,
    )


def _amazon(name: str, category: str) -> NamedDataset:
    """A 2014 Amazon 5-core review file (McAuley et al.): one JSON record per review."""
    filename = f"reviews_{category}_5.json.gz"
    urls = tuple(base + filename for base in AMAZON_2014)
    return NamedDataset(
        name=name, filename=filename, urls=urls, md5=None, convert=AMAZON_REVIEW, page=AMAZON_PAGE, terms=AMAZON_TERMS
    )


REGISTRY: dict[str, NamedDataset] = {
    spec.name: spec
    for spec in (
        _grouplens("ml-100k", "100k", "ml-100k/u.data", b"\t", md5="0e33842e24a9c977be4e0107933c0723"),
        _grouplens("ml-1m", "1m", "ml-1m/ratings.dat", b"::", md5="c4d9eecfca2ab87c1945afe126590906"),
        _amazon("amazon-beauty", "Beauty"),
        _amazon("amazon-sports", "Sports_and_Outdoors"),
        _amazon("amazon-games", "Video_Games"),
        NamedDataset(
            name="yelp",
            filename="yelp_academic_dataset_review.json",
            urls=(),
            md5=None,
            convert=json_lines("user_id", "business_id", "date", "%Y-%m-%d %H:%M:%S"),
            page="https://www.yelp.com/dataset",
            terms="Yelp Dataset User Agreement: non-commercial academic use, no redistribution",
            manual="the Yelp Open Dataset is given out only after accepting its Dataset User Agreement: "
            "download the JSON archive from https://www.yelp.com/dataset, extract "
            "yelp_academic_dataset_review.json from it (`tar -xf yelp_dataset.tar "
            "yelp_academic_dataset_review.json`) and put that file at {dest}",
        ),
        NamedDataset(
            name="steam",
            filename="steam_reviews.json.gz",
            urls=(
                "https://mcauleylab.ucsd.edu/public_datasets/data/steam/steam_reviews.json.gz",
                "https://cseweb.ucsd.edu/~wckang/steam_reviews.json.gz",
            ),
            md5=None,
            convert=json_lines("username", "product_id", "date", "%Y-%m-%d"),
            page="https://cseweb.ucsd.edu/~jmcauley/datasets.html#steam_data",
            terms="research use; cite Kang & McAuley, ICDM 2018 (SASRec) and Wan & McAuley, RecSys 2018",
        ),
    )
}
"""Every name ``data.dataset`` accepts. Tests replace entries (e.g. a fixture's md5)."""


def get(name: str) -> NamedDataset:
    """The registry entry of ``name``; ConfigError listing the names otherwise."""
    if name not in REGISTRY:
        raise ConfigError(
            f"data.dataset={name!r} is not a named data set; use one of {', '.join(REGISTRY)}, "
            "or set `data.path` to a file instead."
        )
    return REGISTRY[name]


def check_choice(name: str, path: str | None, format: str) -> None:
    """Raise ConfigError for an unknown name, or a name given together with a file or a format."""
    get(name)
    if path is not None:
        raise ConfigError(
            f"data.dataset={name!r} and data.path={path!r} are both set: set one of them "
            "(on the command line, either one alone replaces the other one set in a config file)."
        )
    if format != "auto":
        raise ConfigError(
            f"data.format={format!r} does not apply to data.dataset={name!r}: leave `data.format` at auto."
        )


# ----------------------------------------------------------------------------------------------
# From a name to a local file


def prepare(
    name: str,
    data_dir: str | Path | None = None,
    settings: DownloadSettings = DownloadSettings(),  # noqa: B008 (frozen)
) -> Path:
    """The converted Parquet file of the named set, fetched, verified and converted as needed."""
    spec = get(name)
    folder = (Path(data_dir).expanduser() if data_dir else default_data_dir()) / spec.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(
            f"cannot create the data folder {folder} ({err.strerror or err}). Set `data.data_dir` "
            f"(or ${DATA_ENV}) to a folder you can write."
        ) from None
    with FileLock(folder / ".lock"):
        record = _raw_file(spec, folder / spec.filename, settings)
        return _converted(spec, folder / spec.filename, record["sha256"], settings.progress)


def manual_steps(spec: NamedDataset, dest: Path) -> str:
    """What to do by hand: where to get the file and where to put it."""
    if spec.manual:
        return f"{spec.name}: {spec.manual.format(dest=dest)}."
    return (
        f"To do it by hand (e.g. without internet here): download {spec.urls[0]} (described at {spec.page}) "
        f"and put it at {dest}; it is verified on first use."
    )


def _raw_file(spec: NamedDataset, dest: Path, settings: DownloadSettings) -> dict:
    """Verify the raw file in place, or fetch it; returns its checksum record."""
    steps = manual_steps(spec, dest)
    if dest.is_file():
        return verify(dest, spec.md5, steps)
    if not spec.urls:
        raise DataError(f"{dest} is not there and {spec.name} cannot be downloaded automatically. {steps}")
    urls = (f"{settings.mirror.rstrip('/')}/{spec.filename}",) if settings.mirror else spec.urls
    return fetch(urls, dest, spec.md5, settings, steps)


def _converted(spec: NamedDataset, raw: Path, sha256: str, progress: bool) -> Path:
    """``interactions-<sha256[:16]>-v<N>.parquet`` beside ``raw``, written once (atomically)."""
    out = raw.with_name(f"interactions-{sha256[:16]}-v{CONVERTER_VERSION}.parquet")
    if not out.is_file():
        frame = spec.convert(raw, progress)
        if frame.height == 0:
            raise DataError(f"{raw} holds no interactions. {_damaged(raw)}")
        temp = out.with_name(out.name + ".tmp")
        frame.write_parquet(temp)
        os.replace(temp, out)
        for old in raw.parent.glob("interactions-*.parquet"):
            if old != out:
                old.unlink()
    return out
