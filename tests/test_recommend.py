"""Recommendations out: `sigma predict` writes top-k per user in the original ids, and the file
agrees with `sigma test` on the same checkpoint (an independent HR@10)."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from sigma_lightning.data.histories import encode_histories, histories_frame
from sigma_lightning.module import top_k_items
from sigma_lightning.recommend import Catalogue, recommend
from tests.test_cli import run


def test_top_k_leaves_out_the_history_and_ranks_best_first():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]])  # column j = item j + 1
    items, top = top_k_items(scores, 3, exclude=torch.tensor([[2, 0], [1, 3]]))
    assert items[0].tolist() == [4, 3, 1] and torch.equal(top[0], torch.tensor([0.7, 0.5, 0.1]))
    assert items[1, :2].tolist() == [2, 4] and top[1, 2] == float("-inf")  # only two items left


def test_catalogue_maps_ids_drops_excluded_and_falls_back_to_popularity():
    catalogue = Catalogue(["u0", "u1"], [None, "a", "b", "c"], torch.tensor([5, 9, 1]))
    prediction = {
        "user": torch.tensor([1, 0]),
        "items": torch.tensor([[3, 1], [2, 3]]),
        "scores": torch.tensor([[2.0, float("-inf")], [0.0, 0.0]]),
        "known": torch.tensor([True, False]),
    }
    frame = catalogue.frame(prediction, exclude_seen=True)
    assert frame.rows() == [
        ("u1", 1, "c", 2.0, False, True),  # the -inf (seen) item is not written
        ("u0", 1, "b", 9.0, True, True),  # no known item: the most popular, flagged
        ("u0", 2, "a", 5.0, True, True),
    ]


def test_new_histories_drop_unknown_items_and_keep_users_without_one():
    frame = histories_frame({"x": ["b", "zzz", "a"], "y": ["nope"]})
    with pytest.warns(UserWarning, match="dropped 2 of 4 interactions"):
        encoded = encode_histories(frame, [None, "a", "b"])
    assert encoded.user_ids == ["x", "y"] and encoded.unknown_items == 2
    assert encoded.items.tolist() == [2, 1] and encoded.lengths.tolist() == [2, 0]  # time order kept


def hit_rate_from_file(predictions: pl.DataFrame, targets: dict) -> float:
    top = predictions.filter(pl.col("rank") <= 10).group_by("user").agg(pl.col("item"))
    hits = [target in items for user, items in top.iter_rows() for target in [targets[user]]]
    assert len(hits) == len(targets)  # every user once
    return sum(hits) / len(hits)


@pytest.mark.slow
@pytest.mark.parametrize("masked", [False, True])
def test_hit_rate_from_the_predictions_file_equals_sigma_test(tmp_path, masked):
    """The file's HR@10 for each user's history without its last item (last item = target) is what
    `sigma test` reports, unmasked and masked. deduplicate: no target repeats an earlier item, which
    `sigma test` would keep rankable and `exclude_seen` would leave out."""
    dedup = ["--data.deduplicate", "true"]
    run(tmp_path, "fit", "--trainer.max_epochs", "2", *dedup)
    last = str(tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt")
    cli = run(tmp_path, "test", "--ckpt_path", last, "--model.mask_history", str(masked).lower(), *dedup)
    expected = float(cli.trainer.callback_metrics["test/HR@10"])
    data = cli.datamodule.data
    rows, targets = [], {}
    for u, user in enumerate(data.user_ids):  # each user's history without its last item, in original ids
        seq = [data.item_ids[i] for i in data.items[data.offsets[u] : data.offsets[u + 1]].tolist()]
        rows += [(user, item, t) for t, item in enumerate(seq[:-1])]
        targets[user] = seq[-1]
    histories = tmp_path / "histories.csv"
    pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row").write_csv(histories)
    out = tmp_path / "out.parquet"
    run(tmp_path, "predict", "--ckpt_path", last, "--data.predict_path", str(histories), *dedup,
        "--predictions.path", str(out), "--predictions.exclude_seen", str(masked).lower())  # fmt: skip
    predictions = pl.read_parquet(out)
    assert predictions["exclude_seen"].to_list() == [masked] * predictions.height
    assert predictions.sort(["user", "rank"]).equals(predictions)  # rows sorted by user, then rank
    assert hit_rate_from_file(predictions, targets) == pytest.approx(expected, abs=1e-3)
    assert 0.05 < expected < 0.95  # a trained model: the comparison means something


@pytest.mark.slow
def test_python_api_equals_the_written_file(tmp_path):
    cli = run(tmp_path, "fit", "--trainer.max_epochs", "1")
    last = str(tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt")
    out = tmp_path / "top.csv"
    run(tmp_path, "predict", "--ckpt_path", last, "--predictions.path", str(out), "--predictions.k", "5")
    written = pl.read_csv(out)
    assert written.height == 5 * cli.datamodule.num_users and written["user"].n_unique() == cli.datamodule.num_users
    frame = recommend(cli.model, cli.datamodule, k=5)  # the fitted model holds last.ckpt's weights
    assert frame.select("user", "rank", "item").rows() == written.select("user", "rank", "item").rows()
    seen = {  # exclude_seen is the default: no recommendation repeats the user's own history
        (cli.datamodule.user_ids[u], cli.datamodule.item_ids[i])
        for u in range(cli.datamodule.num_users)
        for i in cli.datamodule.data.items[cli.datamodule.data.offsets[u] : cli.datamodule.data.offsets[u + 1]].tolist()
    }
    assert not any((user, item) in seen for user, item in frame.select("user", "item").iter_rows())
