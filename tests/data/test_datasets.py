"""Named data sets: the registry, the raw-format converters on fixtures (with a known 5-core result),
``data.dataset`` in the DataModule end to end through a local server, and the real files where present."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pytest
import yaml

from sigma_lightning.data import datasets
from sigma_lightning.data.datamodule import SeqRecDataModule
from sigma_lightning.data.download import DownloadSettings, record_path
from sigma_lightning.errors import ConfigError, DataError
from tests.data.fixtures.raw import closed_port, raw_file, serve, zip_bytes

QUIET = DownloadSettings(progress=False, retries=1, timeout=5.0)
AU1_IN_TIME_ORDER = ["B000000001", "B000000006", "B000000004", "B000000002", "B000000005", "B000000003"]


@pytest.fixture(autouse=True)
def private_folders(tmp_path, monkeypatch):
    """Tests never touch the user's data or cache folders."""
    monkeypatch.setenv(datasets.DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv("SIGMA_LIGHTNING_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def published(monkeypatch):
    """``published(name)``: the fixture becomes that set's published file (its md5, where the set has one)."""

    def _publish(name: str) -> bytes:
        body = raw_file(name)
        spec = datasets.REGISTRY[name]
        md5 = hashlib.md5(body).hexdigest() if spec.md5 else None
        monkeypatch.setitem(datasets.REGISTRY, name, dataclasses.replace(spec, md5=md5))
        return body

    return _publish


@pytest.fixture
def mirror(published):
    """A local server publishing the amazon-beauty fixture; yields (mirror URL, server state)."""
    body = published("amazon-beauty")
    with serve({"reviews_Beauty_5.json.gz": body}) as (base, state):
        yield f"{base}/good", state


def _mirrored(url: str) -> DownloadSettings:
    return dataclasses.replace(QUIET, mirror=url)


# ----------------------------------------------------------------------------------------------
# The registry


def test_registry_names_are_the_documented_ones():
    assert list(datasets.REGISTRY) == [
        "ml-100k",
        "ml-1m",
        "amazon-beauty",
        "amazon-sports",
        "amazon-games",
        "yelp",
        "steam",
    ]
    for spec in datasets.REGISTRY.values():
        assert spec.urls or spec.manual, spec.name
        assert all(url.endswith("/" + spec.filename) for url in spec.urls), spec.name


def test_grouplens_publishes_md5s_the_others_are_recorded_at_first_use():
    md5 = {name: spec.md5 for name, spec in datasets.REGISTRY.items() if spec.md5}
    assert md5 == {"ml-100k": "0e33842e24a9c977be4e0107933c0723", "ml-1m": "c4d9eecfca2ab87c1945afe126590906"}


def test_unknown_name_lists_the_names():
    with pytest.raises(ConfigError, match="one of ml-100k, ml-1m, amazon-beauty"):
        SeqRecDataModule(dataset="ml-10m")


def test_a_name_and_a_path_together_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"data.dataset='ml-1m' and data.path=.* are both set"):
        SeqRecDataModule(str(tmp_path / "x.txt"), dataset="ml-1m")
    with pytest.raises(ConfigError, match="leave `data.format` at auto"):
        SeqRecDataModule(dataset="ml-1m", format="movielens")


def test_data_dir_defaults_to_the_environment_variable(tmp_path, monkeypatch):
    assert datasets.default_data_dir() == tmp_path / "data"
    monkeypatch.delenv(datasets.DATA_ENV)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert datasets.default_data_dir() == tmp_path / "xdg" / "sigma_lightning"


# ----------------------------------------------------------------------------------------------
# Converters on raw-format fixtures


def _convert(name: str, tmp_path: Path) -> list[tuple]:
    raw = tmp_path / datasets.REGISTRY[name].filename
    raw.write_bytes(raw_file(name))
    return datasets.REGISTRY[name].convert(raw, False).rows()


def test_movielens_zips_convert_to_user_item_time(tmp_path):
    assert _convert("ml-1m", tmp_path) == [("1", "1193", 978300760), ("1", "661", 978302109), ("2", "1357", 978298709)]
    assert _convert("ml-100k", tmp_path)[0] == ("196", "242", 881250949)


def test_a_zip_without_the_member_is_named(tmp_path):
    raw = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(raw, "w") as archive:
        archive.writestr("ml-1m/movies.dat", "1::Toy Story::Animation\n")
    with pytest.raises(DataError, match="holds no ml-1m/ratings.dat"):
        datasets.REGISTRY["ml-1m"].convert(raw, False)


def test_amazon_reviews_convert_json_and_python_literal_lines(tmp_path):
    rows = _convert("amazon-beauty", tmp_path)
    assert len(rows) == 48 and ("AU3", "B000000004", 1300864000) in rows  # line 4 is a Python literal


def test_json_only_tokens_parse(tmp_path):
    raw = tmp_path / "reviews_Beauty_5.json.gz"  # true/null are JSON, not Python literals
    raw.write_bytes(
        gzip.compress(b'{"reviewerID": "A1", "asin": "B1", "unixReviewTime": 5, "verified": true, "vote": null}\n')
    )
    assert datasets.REGISTRY["amazon-beauty"].convert(raw, False).rows() == [("A1", "B1", 5)]


def test_steam_literals_convert_and_records_without_item_or_date_are_skipped(tmp_path):
    with pytest.warns(
        UserWarning,
        match=r"skipped 2 records without `username`, `product_id` and a valid `date` \(the first at line 4\)",
    ):
        rows = _convert("steam", tmp_path)
    assert rows == [
        ("Chaos Syren", "725280", 1513468800),
        ("Ironmonk", "328100", 1483488000),
        ("Chaos Syren", "328100", 1513296000),
    ]


def test_yelp_dates_become_unix_seconds(tmp_path):
    rows = _convert("yelp", tmp_path)
    assert rows[0] == ("mh_-eMZ6K5RLWhZyISBhwA", "XQfwVwDr-v0ZS3_CbbE5Xw", 1531001351)  # 2018-07-07 22:09:11 UTC
    assert len(rows) == 3


def test_a_line_that_is_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "ran"
    raw = tmp_path / "steam_reviews.json.gz"
    raw.write_bytes(gzip.compress(f"__import__('pathlib').Path({str(marker)!r}).touch()\n".encode()))
    with pytest.raises(DataError, match="line 1: neither JSON nor a Python literal"):
        datasets.REGISTRY["steam"].convert(raw, False)
    assert not marker.exists()


def test_a_truncated_gzip_is_named_damaged(tmp_path):
    raw = tmp_path / "reviews_Beauty_5.json.gz"
    raw.write_bytes(raw_file("amazon-beauty")[:300])
    with pytest.raises(DataError, match="damaged or truncated") as err:
        datasets.REGISTRY["amazon-beauty"].convert(raw, False)
    assert f"Delete {raw}" in str(err.value)


# ----------------------------------------------------------------------------------------------
# prepare() and data.dataset end to end


def test_prepare_downloads_converts_once_and_reuses(mirror, tmp_path):
    url, state = mirror
    first = datasets.prepare("amazon-beauty", settings=_mirrored(url))
    assert first.parent == tmp_path / "data" / "amazon-beauty"  # $SIGMA_LIGHTNING_DATA
    assert first.name.startswith("interactions-") and first.suffix == ".parquet"
    assert record_path(first.parent / "reviews_Beauty_5.json.gz").is_file()
    again = datasets.prepare("amazon-beauty", settings=_mirrored(url))
    assert again == first and len(state.requests) == 1


def test_concurrent_callers_download_once(published):
    body = published("amazon-beauty")
    with serve({"reviews_Beauty_5.json.gz": body}, stall_s=0.3) as (base, state):
        settings = _mirrored(f"{base}/slow")  # the first caller is mid-download when the second comes
        with ThreadPoolExecutor(2) as pool:
            paths = list(pool.map(lambda _: datasets.prepare("amazon-beauty", settings=settings), range(2)))
    assert paths[0] == paths[1] and len(state.requests) == 1


def test_offline_names_the_official_url_and_where_to_put_the_file(published, tmp_path):
    published("amazon-beauty")
    with pytest.raises(DataError) as err:
        datasets.prepare("amazon-beauty", settings=_mirrored(f"http://127.0.0.1:{closed_port()}"))
    message = str(err.value)
    dest = tmp_path / "data" / "amazon-beauty" / "reviews_Beauty_5.json.gz"
    assert "unreachable" in message and datasets.REGISTRY["amazon-beauty"].urls[0] in message
    assert f"put it at {dest}" in message


def test_yelp_explains_the_agreement_then_uses_the_file_put_there(tmp_path):
    dest = tmp_path / "data" / "yelp" / "yelp_academic_dataset_review.json"
    with pytest.raises(DataError, match="https://www.yelp.com/dataset") as err:
        datasets.prepare("yelp", settings=QUIET)
    assert f"put that file at {dest}" in str(err.value) and "Dataset User Agreement" in str(err.value)
    dest.write_bytes(raw_file("yelp"))
    assert datasets.prepare("yelp", settings=QUIET).is_file()


def test_named_set_gives_the_known_five_core_result(mirror, tmp_path):
    url, _ = mirror
    dm = SeqRecDataModule(dataset="amazon-beauty", download=_mirrored(url))
    stats = dm.statistics
    # X (4 reviews) goes, then AU7 (4 left), then Y (4 left): the 6 x 6 grid remains.
    assert (stats["raw_users"], stats["raw_items"], stats["raw_interactions"]) == (7, 8, 48)
    assert (stats["users"], stats["items"], stats["interactions"]) == (6, 6, 36)
    au1 = dm.user_ids.index("AU1")
    sequence = dm.data.items[dm.data.offsets[au1] : dm.data.offsets[au1 + 1]]
    assert [dm.item_ids[i] for i in sequence.tolist()] == AU1_IN_TIME_ORDER  # chronological


def test_a_raw_file_changed_later_is_refused(mirror, tmp_path):
    url, _ = mirror
    datasets.prepare("amazon-beauty", settings=_mirrored(url))
    raw = tmp_path / "data" / "amazon-beauty" / "reviews_Beauty_5.json.gz"
    raw.write_bytes(raw.read_bytes() + b"\0")
    with pytest.raises(DataError, match="changed since it was first verified"):
        SeqRecDataModule(dataset="amazon-beauty", download=_mirrored(url)).prepare_data()


def test_a_raw_file_replaced_on_purpose_is_converted_afresh(mirror, tmp_path):
    url, _ = mirror
    first = datasets.prepare("amazon-beauty", settings=_mirrored(url))
    raw = tmp_path / "data" / "amazon-beauty" / "reviews_Beauty_5.json.gz"
    raw.write_bytes(gzip.compress(b'{"reviewerID": "A1", "asin": "B1", "unixReviewTime": 5}\n'))
    record_path(raw).unlink()  # what the "changed since" message says to do for a deliberate replacement
    second = datasets.prepare("amazon-beauty", settings=_mirrored(url))
    assert second != first and not first.exists()
    assert pl.read_parquet(second).rows() == [("A1", "B1", 5)]


# ----------------------------------------------------------------------------------------------
# Real files (../shared/data), skipped where absent


def test_real_ml_100k_through_the_named_route_matches_the_file_route(shared_data, tmp_path, monkeypatch):
    u_data = shared_data / "ml-100k" / "u.data"
    if not u_data.is_file():
        pytest.skip(f"real data not available: {u_data}")
    folder = tmp_path / "data" / "ml-100k"
    folder.mkdir(parents=True)
    (folder / "ml-100k.zip").write_bytes(zip_bytes("ml-100k/u.data", u_data))  # GroupLens' layout, not its bytes
    monkeypatch.setitem(datasets.REGISTRY, "ml-100k", dataclasses.replace(datasets.REGISTRY["ml-100k"], md5=None))
    named = SeqRecDataModule(dataset="ml-100k", download=QUIET).statistics
    direct = SeqRecDataModule(str(u_data)).statistics
    assert (named["users"], named["items"], named["interactions"]) == (943, 1_349, 99_287)
    assert named == direct


def test_real_beauty_raw_file_gives_the_papers_counts(shared_data, tmp_path):
    raw = shared_data / "beauty" / "reviews_Beauty_5.json.gz"
    if not raw.is_file():
        pytest.skip(f"the raw Amazon file is not available: {raw}")
    folder = tmp_path / "data" / "amazon-beauty"
    folder.mkdir(parents=True)
    (folder / raw.name).symlink_to(raw)
    stats = SeqRecDataModule(dataset="amazon-beauty", download=QUIET).statistics
    assert (stats["users"], stats["items"], stats["interactions"]) == (22_363, 12_101, 198_502)


# ----------------------------------------------------------------------------------------------
# Through the `sigma` command


def test_cli_offline_is_one_line_with_exit_status_2(tmp_path, capsys):
    from sigma_lightning.cli import SigmaExit, run_sigma

    args = [
        "fit",
        "--config",
        "quickstart.yaml",
        "--data.dataset",
        "ml-1m",
        "--data.download.retries",
        "1",
        "--data.download.mirror",
        f"http://127.0.0.1:{closed_port()}",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
    ]
    with pytest.raises(SigmaExit) as err:
        run_sigma(args)
    assert err.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        line.startswith("sigma: error: cannot download ml-1m.zip")
        and "https://files.grouplens.org/datasets/movielens/ml-1m.zip" in line
    )
    assert f"put it at {tmp_path / 'data' / 'ml-1m' / 'ml-1m.zip'}" in line


@pytest.mark.slow
def test_cli_fit_on_a_named_set_from_a_mirror(mirror, tmp_path):
    from sigma_lightning.cli import run_sigma

    url, state = mirror
    cli = run_sigma(
        [
            "fit",
            "--config",
            "quickstart.yaml",
            "--data.dataset",
            "amazon-beauty",
            "--data.download.mirror",
            url,
            "--data.download.progress",
            "false",
            "--data.batch_size",
            "8",
            "--trainer.max_epochs",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "runs"),
        ]
    )
    assert cli.datamodule.statistics["interactions"] == 36 and cli.trainer.current_epoch == 1
    assert state.requests == [("/good/reviews_Beauty_5.json.gz", None)]


@pytest.mark.slow
def test_a_recipe_downloads_its_named_set(mirror, tmp_path):
    """`sigma fit --config beauty.yaml` on a fresh machine: the recipe names amazon-beauty, which is
    downloaded (here from the local mirror), converted and trained on."""
    from sigma_lightning.cli import run_sigma

    url, state = mirror
    cli = run_sigma(
        [
            "fit", "--config", "beauty.yaml",
            "--data.download.mirror", url, "--data.download.progress", "false",
            "--model.backbone.init_args.hidden_size", "8", "--model.backbone.init_args.num_heads", "1",
            "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        ]
    )  # fmt: skip
    assert cli.datamodule.named_dataset == "amazon-beauty" and cli.datamodule.statistics["interactions"] == 36
    assert cli.trainer.current_epoch == 1
    assert state.requests == [("/good/reviews_Beauty_5.json.gz", None)]


@pytest.mark.parametrize(
    ("argv", "dataset", "path"),
    [
        (["--data.path", "mine.csv"], None, "mine.csv"),
        (["--data.path=mine.csv"], None, "mine.csv"),
        ([], "amazon-beauty", "synthetic"),
    ],
    ids=["path", "path=", "recipe"],
)
def test_a_path_on_the_command_line_replaces_the_recipes_named_set(capsys, argv, dataset, path):
    from sigma_lightning.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "beauty.yaml", *argv, "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)["data"]
    assert (printed["dataset"], printed["path"]) == (dataset, path)


def test_a_named_set_on_the_command_line_replaces_a_configs_path(tmp_path, capsys):
    from sigma_lightning.cli import main

    config = tmp_path / "mine.yaml"
    config.write_text("data:\n  path: mine.csv\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "quickstart.yaml", "--config", str(config), "--data.dataset", "ml-1m", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)["data"]
    assert (printed["dataset"], printed["path"]) == ("ml-1m", "synthetic")


def test_both_sources_on_the_command_line_stay_an_error(tmp_path, capsys):
    from sigma_lightning.cli import SigmaExit, run_sigma

    with pytest.raises(SigmaExit):
        run_sigma(["fit", "--config", "beauty.yaml", "--data.dataset", "ml-1m", "--data.path", "mine.csv",
                   "--trainer.logger.init_args.save_dir", str(tmp_path)])  # fmt: skip
    assert "are both set" in capsys.readouterr().err
