"""Recommendations out: the top-K next items of every user, in the original user and item ids.

Two ways in, one output format (docs/predict.md):

* `sigma predict --config ... --ckpt_path ...` writes a file through `RecommendationWriter`
  (`--predictions.path`, `--predictions.k`, `--predictions.exclude_seen`); `--data.predict_path FILE`
  recommends for the histories in FILE instead of the training users.
* `recommend(model, datamodule, histories=None, k=10)` returns the same rows as a polars DataFrame.

Columns, rows sorted by user then rank:
    user             the user's original id
    rank             1..k
    item             the recommended item's original id
    score            the model's score (a dot product); for popularity rows, the item's count
    from_popularity  True where the user had no item the model knows: the most popular items instead
    exclude_seen     whether the user's own history was left out of the ranking
With `exclude_seen`, a user whose history covers almost the whole catalogue gets fewer than k rows.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import polars as pl
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from sigma_lightning.data.histories import encode_histories, histories_frame
from sigma_lightning.errors import ConfigError, check_range
from sigma_lightning.module import evaluation_batches

COLUMNS = ("user", "rank", "item", "score", "from_popularity", "exclude_seen")


class Catalogue:
    """Original ids of a trained model's users and items, and the item popularity it falls back to.

    item_ids[j] is the original id of internal item j (item_ids[0]: padding); user_ids[u] that of
    user index u of the batches; item_counts (num_items,) the training interactions per item."""

    def __init__(self, user_ids: Sequence, item_ids: Sequence, item_counts: Tensor) -> None:
        self.users = pl.Series("user", list(user_ids))
        self.items = pl.Series("item", list(item_ids[1:]))
        self.item_counts = item_counts.float()  # (N,)

    def popular(self, k: int) -> tuple[Tensor, Tensor]:
        """The k most popular items (1..N) and their counts, each (k,)."""
        counts, index = self.item_counts.topk(min(k, self.item_counts.numel()))
        return index + 1, counts

    def frame(self, prediction: dict[str, Tensor], exclude_seen: bool) -> pl.DataFrame:
        """One predict batch -> rows of COLUMNS (ranks 1..k, excluded items dropped)."""
        items, scores = prediction["items"].cpu(), prediction["scores"].float().cpu()  # (B, k)
        cold = ~prediction["known"].cpu()  # (B,)
        if cold.any():
            popular, counts = self.popular(items.size(1))
            items, scores = items.clone(), scores.clone()
            items[cold], scores[cold] = popular, counts
        b, k = items.shape
        keep = torch.isfinite(scores).flatten()  # -inf: an excluded (seen) item, not a recommendation
        users = prediction["user"].cpu().repeat_interleave(k)[keep]
        return pl.DataFrame(
            {
                "user": self.users.gather(users.numpy()),
                "rank": torch.arange(1, k + 1).repeat(b)[keep].numpy(),
                "item": self.items.gather((items.flatten()[keep] - 1).numpy()),
                "score": scores.flatten()[keep].numpy(),
                "from_popularity": cold.repeat_interleave(k)[keep].numpy(),
                "exclude_seen": [exclude_seen] * int(keep.sum()),
            }
        )


class RecommendationWriter(BasePredictionWriter):
    """Writes `sigma predict`'s top-k recommendations to a Parquet or CSV file, batch by batch.

    Each batch goes to a part file as it is produced, so memory does not grow with the number of
    users; at the end rank zero merges the parts, sorted by user then rank, into `path` (atomically:
    a half-written file never takes its name). Under DDP every user is predicted on exactly one rank
    (the data module's evaluation shards are disjoint), each rank writes its own parts, and rank zero
    clears a killed earlier run's parts before any rank writes and merges only after every rank is done.

    Args:
        path: output file. Default: predictions.parquet in the checkpoint's run folder (beside
            its checkpoints/ folder), else in the trainer's default_root_dir.
        k: recommendations per user.
        exclude_seen: leave the items of each user's history out of its recommendations (the usual
            production choice); false ranks every item.
        format: "parquet", "csv", or "auto" (from the path's suffix; Parquet when it has none).
    """

    def __init__(
        self, path: str | None = None, k: int = 10, exclude_seen: bool = True,
        format: Literal["auto", "parquet", "csv"] = "auto",
    ) -> None:  # fmt: skip
        super().__init__(write_interval="batch")
        check_range("predictions.k", k, 1)
        if format not in ("auto", "parquet", "csv"):
            raise ConfigError(f"predictions.format={format!r}: expected auto, parquet or csv.")
        self.path, self.k, self.exclude_seen, self.format = path, k, exclude_seen, format
        self.output: Path | None = None
        self.catalogue: Catalogue | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        pl_module.predict_k, pl_module.predict_exclude_seen = self.k, self.exclude_seen

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.output = self._output_path(trainer)  # the checkpoint path is known from here on
        self.catalogue = prediction_catalogue(trainer.datamodule)
        if trainer.is_global_zero:  # a killed earlier run's parts, whatever its number of processes
            shutil.rmtree(self._parts(), ignore_errors=True)
        trainer.strategy.barrier()  # before any rank writes a part of this run

    def _output_path(self, trainer: Trainer) -> Path:
        if self.path:
            return Path(self.path).expanduser()
        ckpt = getattr(trainer, "ckpt_path", None)
        folder = Path(ckpt).resolve().parent.parent if ckpt else Path(trainer.default_root_dir)
        return folder / "predictions.parquet"

    def _parts(self) -> Path:
        return self.output.with_name(f".{self.output.name}.parts")

    def _file_format(self) -> str:
        if self.format != "auto":
            return self.format
        return "csv" if self.output.suffix.lower() in (".csv", ".txt") else "parquet"

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        parts = self._parts()
        parts.mkdir(parents=True, exist_ok=True)
        frame = self.catalogue.frame(prediction, self.exclude_seen)
        frame.write_parquet(parts / f"rank{trainer.global_rank:05d}-{dataloader_idx:02d}-{batch_idx:08d}.parquet")

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        trainer.strategy.barrier()  # every rank's parts are on disk
        if trainer.is_global_zero:
            rows = merge_parts(self._parts(), self.output, self._file_format())
            rank_zero_info(f"sigma: wrote {rows:,} recommendations (top {self.k}, exclude_seen={self.exclude_seen}) to {self.output}")
        trainer.strategy.barrier()


def prediction_catalogue(datamodule) -> Catalogue:
    """The datamodule's catalogue for the users it predicts for (its own, or predict_path's)."""
    return Catalogue(datamodule.predict_user_ids, datamodule.item_ids, item_counts(datamodule))


def item_counts(datamodule) -> Tensor:
    """(N,) interactions per item in the data the model was trained on: the popularity fallback."""
    return torch.bincount(datamodule.data.items, minlength=datamodule.num_items + 1)[1:]


def merge_parts(parts: Path, output: Path, file_format: str) -> int:
    """Sort the part files by (user, rank) into `output` (written beside it, then renamed); returns
    the number of rows. The parts folder is removed."""
    output.parent.mkdir(parents=True, exist_ok=True)
    files = sorted(parts.glob("*.parquet"))
    schema = {"user": pl.String, "rank": pl.Int64, "item": pl.String, "score": pl.Float32,
              "from_popularity": pl.Boolean, "exclude_seen": pl.Boolean}  # fmt: skip
    lazy = pl.scan_parquet(files).sort(["user", "rank"]) if files else pl.LazyFrame(schema=schema)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        if file_format == "csv":
            lazy.sink_csv(tmp)
        else:
            lazy.sink_parquet(tmp)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    shutil.rmtree(parts, ignore_errors=True)
    return pl.scan_parquet(output).select(pl.len()).collect().item() if file_format != "csv" else (
        pl.scan_csv(output).select(pl.len()).collect().item()
    )


@torch.no_grad()
def recommend(
    model, datamodule, histories: Mapping | pl.DataFrame | None = None, k: int = 10, exclude_seen: bool = True,
    batch_size: int = 1024,
) -> pl.DataFrame:  # fmt: skip
    """Top-k recommendations as a DataFrame with the columns of this module's docstring.

    model: a trained SeqRecModule; datamodule: the SeqRecDataModule it was trained on (its
    catalogue maps the ids). histories: None for every training user after their whole history,
    or new histories: {user: [item, ...] oldest first} or a (user, item, time) DataFrame."""
    if histories is None:
        dataset = datamodule.dataset("predict")
        catalogue = Catalogue(datamodule.user_ids, datamodule.item_ids, item_counts(datamodule))
    else:
        frame = histories if isinstance(histories, pl.DataFrame) else histories_frame(histories)
        encoded = encode_histories(frame, datamodule.item_ids)
        dataset = datamodule.histories_dataset(encoded)
        catalogue = Catalogue(encoded.user_ids, datamodule.item_ids, item_counts(datamodule))
    frames = [
        catalogue.frame(model.recommend_batch(batch, k, exclude_seen), exclude_seen)
        for batch in evaluation_batches(model, dataset, batch_size)
    ]
    return pl.concat(frames).sort(["user", "rank"]) if frames else pl.DataFrame(schema=list(COLUMNS))

