"""SeqRecDataModule: batches, sharding over fake ranks, deterministic shuffling, Lightning and YAML wiring."""

from __future__ import annotations

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from sigma_lightning.data import DataError, SyntheticConfig
from sigma_lightning.data.datamodule import SeqRecDataModule, ShardedBatchSampler

SMALL = SyntheticConfig(num_users=120, num_items=40, num_topics=4, max_length=15)


def small_dm(cache_dir, **kwargs) -> SeqRecDataModule:
    return SeqRecDataModule(synthetic=SMALL, cache_dir=str(cache_dir), **{"batch_size": 32, **kwargs})


def all_batches(loader) -> list[dict[str, torch.Tensor]]:
    return list(loader)


def test_batches_on_hand_made_sequences(two_users, cache_dir):
    dm = SeqRecDataModule(
        str(two_users), max_seq_len=3, min_user_interactions=0, min_item_interactions=0, cache_dir=str(cache_dir),
        trim_padding=False,
    )
    assert dm.num_items == 8 and dm.num_users == 2
    assert dm.item_ids == [None, 1, 2, 3, 4, 5, 6, 7, 8] and dm.user_ids == ["A", "B"]
    train = dm.dataset("train")[torch.arange(2)]
    assert train.keys() == {"input_ids", "target"}
    assert train["input_ids"].tolist() == [[1, 0, 0], [1, 2, 0]] and train["target"].tolist() == [2, 3]
    (valid,) = all_batches(dm.val_dataloader())
    assert valid["input_ids"].tolist() == [[1, 2, 3], [6, 0, 0]] and valid["target"].tolist() == [4, 7]
    assert valid["history"].tolist() == [[1, 2, 3], [6, 0, 0]] and valid["user"].tolist() == [0, 1]
    (test,) = all_batches(dm.test_dataloader())
    assert test["input_ids"].tolist() == [[2, 3, 4], [6, 7, 0]] and test["target"].tolist() == [5, 8]
    assert test["history"].tolist() == [[1, 2, 3, 4], [6, 7, 0, 0]]
    (pred,) = all_batches(dm.predict_dataloader())
    assert "target" not in pred
    assert pred["input_ids"].tolist() == [[3, 4, 5], [6, 7, 8]]
    assert pred["history"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]] and pred["user"].tolist() == [0, 1]
    assert all(t.dtype == torch.long for t in pred.values())


def test_trimmed_batches_drop_padding_columns_only(two_users, cache_dir):
    dm = SeqRecDataModule(
        str(two_users), max_seq_len=3, min_user_interactions=0, min_item_interactions=0, cache_dir=str(cache_dir)
    )
    train = dm.dataset("train")[torch.arange(2)]
    assert train["input_ids"].tolist() == [[1, 0], [1, 2]]  # longest window is 2: one padding column cut
    assert dm.dataset("train")[torch.tensor([0])]["input_ids"].tolist() == [[1]]
    (valid,) = all_batches(dm.val_dataloader())  # evaluation users come sorted by window length
    assert valid["input_ids"].tolist() == [[6, 0, 0], [1, 2, 3]] and valid["user"].tolist() == [1, 0]
    assert valid["target"].tolist() == [7, 4]


def test_bucketing_groups_lengths_and_keeps_every_sample(cache_dir):
    plain = small_dm(cache_dir, max_seq_len=8, batch_size=16)
    bucketed = small_dm(cache_dir, max_seq_len=8, batch_size=16, bucket_by_length=True)
    plain_batches, bucket_batches = all_batches(plain.train_dataloader()), all_batches(bucketed.train_dataloader())
    key = lambda batches: sorted(  # noqa: E731
        tuple(row[row != 0].tolist()) + (int(t),) for b in batches for row, t in zip(b["input_ids"], b["target"])
    )
    assert key(plain_batches) == key(bucket_batches)  # same samples, other grouping
    width = lambda batches: sum(b["input_ids"].numel() for b in batches)  # noqa: E731
    assert width(bucket_batches) < width(plain_batches)  # less padding to compute on


def test_train_loader_covers_every_sample_once(cache_dir):
    dm = small_dm(cache_dir, max_seq_len=8, trim_padding=False)
    batches = all_batches(dm.train_dataloader())
    assert len(batches) == len(dm.train_dataloader())
    inputs = torch.cat([b["input_ids"] for b in batches])
    assert inputs.shape == (dm.statistics["train_samples"], 8)
    mask = inputs != 0
    assert torch.equal(mask, mask.cummin(dim=1).values)  # left-aligned: real items are a prefix
    assert int(mask.sum(1).min()) >= 1


# ----------------------------------------------------------------------------------------------
# Sharding (two fake ranks) and shuffling


def loaders_for_ranks(dm: SeqRecDataModule, world: int, make) -> list[list[dict]]:
    out = []
    for rank in range(world):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world)
        out.append(all_batches(make()))
    dm.trainer = None
    return out


def test_train_shards_are_equal_and_cover_all_samples(cache_dir):
    dm = small_dm(cache_dir, batch_size=14)  # the global batch: 7 per rank
    n = dm.statistics["train_samples"]
    shards = []
    for rank in range(2):
        sampler = ShardedBatchSampler(n, 7, shuffle=True, seed=1, rank=rank, world_size=2, equal_shards=True)
        shards.append(sampler.shard())
    assert shards[0].numel() == shards[1].numel() == (n + 1) // 2
    assert set(torch.cat(shards).tolist()) == set(range(n))
    per_rank = loaders_for_ranks(dm, 2, dm.train_dataloader)
    assert len(per_rank[0]) == len(per_rank[1])
    assert [b["target"].numel() for b in per_rank[0]] == [b["target"].numel() for b in per_rank[1]]
    assert per_rank[0][0]["target"].numel() == 7


@pytest.mark.parametrize("split", ["val", "test", "predict"])
def test_eval_shards_are_disjoint_and_cover_users_once(cache_dir, split):
    dm = small_dm(cache_dir, eval_batch_size=16)
    per_rank = loaders_for_ranks(dm, 2, getattr(dm, f"{split}_dataloader"))
    users = [torch.cat([b["user"] for b in batches]) for batches in per_rank]
    assert not set(users[0].tolist()) & set(users[1].tolist())
    assert sorted(torch.cat(users).tolist()) == list(range(dm.num_users))


def test_shuffle_is_deterministic_per_epoch(cache_dir):
    dm = small_dm(cache_dir)

    def order(epoch: int, seed: int = 42) -> torch.Tensor:
        dm.seed = seed
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return torch.cat([b["target"] for b in loader])

    assert torch.equal(order(0), order(0))
    assert torch.equal(order(3), order(3))  # a resumed run at epoch 3 sees the same order
    assert not torch.equal(order(0), order(1))
    assert not torch.equal(order(0), order(0, seed=7))


def test_eval_loaders_are_deterministic_and_sorted_by_length(cache_dir):
    dm = small_dm(cache_dir)
    batches = list(dm.val_dataloader())
    users = torch.cat([b["user"] for b in batches])
    assert sorted(users.tolist()) == list(range(dm.num_users))  # each user once
    assert users.tolist() == torch.cat([b["user"] for b in dm.val_dataloader()]).tolist()
    lengths = torch.cat([(b["input_ids"] != 0).sum(1) for b in batches])
    assert torch.equal(lengths, lengths.sort().values)
    unsorted = small_dm(cache_dir, trim_padding=False)
    assert torch.cat([b["user"] for b in unsorted.val_dataloader()]).tolist() == list(range(dm.num_users))


# ----------------------------------------------------------------------------------------------
# Settings, Lightning and YAML


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_seq_len": 0}, r"max_seq_len must be >= 1 \(got 0\)"),
        ({"format": "xlsx"}, r"unknown data format 'xlsx'"),
        ({"batch_size": 0}, r"batch_size must be >= 1"),
        ({"min_item_interactions": -1}, r"min_item_interactions must be >= 0"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(DataError, match=message):
        SeqRecDataModule(**kwargs)


def test_missing_file_through_the_datamodule(tmp_path, cache_dir):
    dm = SeqRecDataModule(str(tmp_path / "missing.txt"), cache_dir=str(cache_dir))
    with pytest.raises(DataError, match="data file not found"):
        _ = dm.num_items


def test_no_training_samples_is_explained(write, cache_dir):
    path = write("three.txt", "a 1 2 3\nb 4 5 6\n")
    dm = SeqRecDataModule(str(path), min_user_interactions=0, min_item_interactions=0, cache_dir=str(cache_dir))
    with pytest.raises(DataError, match="no training samples"):
        dm.setup("fit")


class MeanPool(pl.LightningModule):
    """The smallest model that consumes the batches: mean of item embeddings -> scores."""

    def __init__(self, num_items: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(num_items + 1, 8, padding_idx=0)
        self.epochs_seen: list[int] = []

    def _scores(self, batch):
        mask = (batch["input_ids"] != 0).unsqueeze(-1)
        user = (self.emb(batch["input_ids"]) * mask).sum(1) / mask.sum(1)
        return user @ self.emb.weight[1:].T

    def training_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.epochs_seen.append(self.trainer.train_dataloader.sampler.epoch)
        return nn.functional.cross_entropy(self._scores(batch), batch["target"] - 1)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", nn.functional.cross_entropy(self._scores(batch), batch["target"] - 1))

    def predict_step(self, batch, batch_idx):
        return {"user": batch["user"], "top": self._scores(batch).topk(3).indices + 1}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_lightning_fit_sets_epochs_and_predict_covers_users(cache_dir):
    dm = small_dm(cache_dir)
    model = MeanPool(dm.num_items)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=2,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=dm)
    assert model.epochs_seen == [0, 1]
    predictions = trainer.predict(model, datamodule=dm)
    users = torch.cat([p["user"] for p in predictions])
    assert sorted(users.tolist()) == list(range(dm.num_users))


def test_yaml_config_with_synthetic_settings(tmp_path):
    from jsonargparse import ArgumentParser

    config = tmp_path / "data.yaml"
    config.write_text(
        "data:\n  path: synthetic\n  max_seq_len: 20\n  synthetic:\n    num_users: 50\n    num_items: 30\n"
        "    num_topics: 3\n    seed: 3\n"
    )
    parser = ArgumentParser()
    parser.add_argument("--config", action="config")
    parser.add_class_arguments(SeqRecDataModule, "data")
    cfg = parser.parse_args(["--config", str(config)])
    dm = parser.instantiate(cfg).data
    assert dm.max_seq_len == 20 and dm.synthetic.num_users == 50 and dm.synthetic.seed == 3
    assert 0 < dm.num_items <= 30
