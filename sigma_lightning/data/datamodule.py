"""SeqRecDataModule: a data file (or the synthetic generator) in, batch dicts out.

Batches follow docs/architecture.md. Each batch is built by one vectorised gather from the CSR
``items`` tensor (:func:`gather_windows`): the sampler yields one LongTensor of sample indices per
batch and the dataset turns it into the whole batch, so there is no per-sample Python code.
The DataModule shards its own samples by ``trainer.global_rank`` / ``world_size`` (the CLI sets
``use_distributed_sampler: false``): equal training shards, disjoint unpadded evaluation shards.
``batch_size`` is the global batch: W processes take ``batch_size / W`` samples each per step, so a
recipe optimises the same on any number of devices (docs/distributed.md).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from sigma_lightning.data import cache, datasets
from sigma_lightning.data import preprocess as pp
from sigma_lightning.data.download import DownloadSettings
from sigma_lightning.data.histories import EncodedHistories, encode_histories
from sigma_lightning.data.readers import FORMATS, DataError, check_source, read_interactions
from sigma_lightning.data.sampler import ShardedBatchSampler
from sigma_lightning.data.synthetic import SyntheticConfig, generate

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
"""``path`` value that selects the embedded generator."""


# ----------------------------------------------------------------------------------------------
# Batches


def gather_windows(items: Tensor, starts: Tensor, ends: Tensor, length: int) -> Tensor:
    """The most recent ``length`` items of each range ``items[starts:ends]``, left-aligned.

    items: (N,) flat sequences; starts, ends: (B,). Returns LongTensor (B, length): row b holds
    ``items[max(starts[b], ends[b] - length):ends[b]]`` oldest first, then 0-padding.

    Computed in numpy (single-threaded, views of the tensors' memory): a batch is ~0.1-1 M small
    integer ops, where torch's intra-op thread pool only adds barrier waits (45x slower on a 2-core
    machine with one busy core).
    """
    flat, lo_np, hi_np = items.numpy(), starts.numpy(), ends.numpy()
    lo = np.maximum(lo_np, hi_np - length)  # (B,)
    pos = lo[:, None] + np.arange(length)  # (B, L)
    real = pos < hi_np[:, None]  # (B, L) contiguous prefix
    gathered = flat[np.minimum(pos, max(flat.size - 1, 0))]  # (B, L)
    return torch.from_numpy(np.where(real, gathered, 0))


class WindowDataset(Dataset):
    """Samples ``(user, starts, ends)`` of one split; indexed by a LongTensor, it returns a whole batch.

    ``dataset[index]`` with ``index`` (B,) gives ``input_ids`` (B, L), ``target`` (B,) unless
    ``with_target`` is False, and for evaluation ``history`` (B, H) and ``user`` (B,). With
    ``all_positions`` (training windows of :func:`~sigma_lightning.data.preprocess.train_windows`)
    ``target`` is (B, L) instead: the next item of every input position, 0 after the last. With
    ``trim_padding`` L is the longest window in the batch (at most ``max_seq_len``) instead of
    ``max_seq_len``: the columns dropped are padding only, which no backbone of the package sees
    (each is tested to give the same representation whatever the padding), so it only saves time.
    """

    def __init__(
        self,
        items: Tensor,
        users: Tensor,
        starts: Tensor,
        ends: Tensor,
        max_seq_len: int,
        with_target: bool = True,
        evaluation: bool = False,
        trim_padding: bool = True,
        all_positions: bool = False,
    ) -> None:
        self.items, self.users, self.starts, self.ends = items, users, starts, ends
        self.max_seq_len, self.with_target, self.evaluation = max_seq_len, with_target, evaluation
        self.trim_padding, self.all_positions = trim_padding, all_positions

    def __len__(self) -> int:
        return self.ends.numel()

    @property
    def window_lengths(self) -> Tensor:
        """(N,) number of real items in each sample's input window."""
        return (self.ends - self.starts).clamp(max=self.max_seq_len)

    @property
    def target_items(self) -> Tensor:
        """(T,) the target of every (history, target) pair the samples hold: one per sample, or one
        per input position with ``all_positions``."""
        if not self.all_positions:
            return self.items[self.ends]
        counts = self.ends - self.starts  # (S,) targets per window
        first = torch.repeat_interleave(self.starts + 1 - (torch.cumsum(counts, 0) - counts), counts)
        return self.items[torch.arange(int(counts.sum())) + first]  # (T,)

    def __getitem__(self, index: Tensor | int) -> dict[str, Tensor]:
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)  # (B,)
        starts, ends = self.starts[index], self.ends[index]  # (B,) small: torch is fine here
        length = self.max_seq_len
        if self.trim_padding and index.numel():
            length = max(1, min(length, int((ends - starts).max())))
        batch = {"input_ids": gather_windows(self.items, starts, ends, length)}
        if self.with_target and self.all_positions:
            batch["target"] = gather_windows(self.items, starts + 1, ends + 1, length)  # (B, L), aligned
        elif self.with_target:
            batch["target"] = self.items[ends]
        if self.evaluation:
            longest = int((ends - starts).max()) if index.numel() else 0
            batch["history"] = gather_windows(self.items, starts, ends, max(longest, 1))
            batch["user"] = self.users[index]
        return batch


# ----------------------------------------------------------------------------------------------
# The DataModule


class SeqRecDataModule(pl.LightningDataModule):
    """Sequential-recommendation data: read, preprocess (cached), split leave-one-out, batch.

    Args:
        path: data file, or ``"synthetic"`` for the embedded generator (settings in ``synthetic``).
        format: ``auto`` (from the file's name and first lines), ``sequence`` (``user item item ...``
            per line), ``csv``, ``tsv``, ``parquet``, ``movielens`` (ratings.dat ``::`` or u.data),
            ``inter`` (RecBole atomic file) or ``pairs`` (``user item`` per line, file order = time).
        max_seq_len: L, the most recent items fed to the model.
        batch_size: the global training batch: with W processes (``trainer.devices`` x
            ``trainer.num_nodes``) each takes ``batch_size / W`` samples per step, so a recipe takes
            the same optimisation steps on any number of devices; it must divide by W.
        eval_batch_size: the global validation/test/predict batch (default ``batch_size``); each of
            the W processes takes ``ceil(eval_batch_size / W)`` users at a time (memory only: the
            metrics do not depend on it).
        user_col, item_col, time_col: column names for tables (default: guessed from the header;
            ``column_1, column_2, ...`` without a header); ``time_col: ""`` uses the file order.
        sep: field separator for tables and pairs (default per format; ``::`` allowed).
        has_header: whether a CSV/TSV table has a header row (default True).
        encoding: text encoding of the file (a Python codec name); UTF-8 by default, and a file that is
            not valid UTF-8 is an error naming the line, so set e.g. ``latin-1`` for such a file.
        min_user_interactions, min_item_interactions: iterative k-core thresholds.
        deduplicate: keep only the first interaction of each (user, item) pair.
        cache_dir: where processed data is cached (default ``paths.cache_dir("data")``:
            ``$SIGMA_LIGHTNING_CACHE/data``, else ``$XDG_CACHE_HOME/sigma_lightning/data``, else
            ``~/.cache/sigma_lightning/data``).
        use_cache: read and write the cache.
        num_workers: DataLoader worker processes (batches are cheap; 0 is usually fastest).
        seed: seeds the training order (with the epoch).
        trim_padding: cut each batch to its longest window (padding only; exact for every backbone
            of the package, which are padding-invariant) and sort evaluation users by length.
        bucket_by_length: batch training samples of similar length together (shuffled within
            windows of 64 batches). Much faster on short-sequence data such as Beauty, but the
            batches differ from the papers' uniformly shuffled ones; off by default.
        train_samples: what a training sample is. ``prefixes`` (the papers'): one sample per
            training prefix, its next item the target, ``target`` (B,). ``sequences`` (the original
            SASRec's way): each user's training part in one window of up to ``max_seq_len`` inputs
            (longer ones in several), trained at every position in one pass, ``target`` (B, L): the
            same (history, next item) pairs with far fewer sequence passes, for causal backbones only
            (SASRec, GRU4Rec, Mamba4Rec). ``batch_size`` then counts windows, each holding several
            pairs (Beauty: 5.9 on average), so keep the pairs per step with a smaller batch
            (docs/notes/all-positions.md). Validation and test are the same either way.
        synthetic: generator settings when ``path`` is ``"synthetic"``.
        predict_path: a file of new histories (any supported format, read with the same settings
            as ``path``) to recommend for in ``sigma predict``, instead of the training users. Items
            the model does not know are dropped (one warning); a user with none left gets the most
            popular items, flagged in the output (docs/predict.md).
        dataset: a named data set instead of ``path`` (``ml-100k``, ``ml-1m``, ``amazon-beauty``,
            ``amazon-sports``, ``amazon-games``, ``yelp``, ``steam``): its publisher's file is
            downloaded when absent, verified and converted once (docs/data.md, "Named data sets").
        data_dir: where named data sets are kept (default ``$SIGMA_LIGHTNING_DATA``, else
            ``$XDG_DATA_HOME/sigma_lightning``, else ``~/.local/share/sigma_lightning``).
        download: how a named data set is fetched (``mirror``, ``timeout``, ``retries``, ``progress``).
    """

    def __init__(
        self,
        path: str = SYNTHETIC,
        format: Literal["auto", "sequence", "csv", "tsv", "parquet", "movielens", "inter", "pairs"] = "auto",
        max_seq_len: int = 50,
        batch_size: int = 2048,
        eval_batch_size: int | None = None,
        user_col: str | None = None,
        item_col: str | None = None,
        time_col: str | None = None,
        sep: str | None = None,
        has_header: bool | None = None,
        encoding: str = "utf-8",
        min_user_interactions: int = 5,
        min_item_interactions: int = 5,
        deduplicate: bool = False,
        cache_dir: str | None = None,
        use_cache: bool = True,
        num_workers: int = 0,
        seed: int = 42,
        trim_padding: bool = True,
        bucket_by_length: bool = False,
        train_samples: Literal["prefixes", "sequences"] = "prefixes",
        synthetic: SyntheticConfig = SyntheticConfig(),  # noqa: B008 (frozen; jsonargparse shows the default)
        predict_path: str | None = None,
        dataset: str | None = None,
        data_dir: str | None = None,
        download: DownloadSettings = DownloadSettings(),  # noqa: B008 (frozen, as synthetic)
    ) -> None:
        super().__init__()
        _check_settings(
            format, max_seq_len, batch_size, eval_batch_size, min_user_interactions, min_item_interactions, num_workers
        )
        if train_samples not in ("prefixes", "sequences"):
            raise DataError(f"data.train_samples={train_samples!r}: expected 'prefixes' or 'sequences'.")
        self.train_samples = train_samples
        self.path, self.format = path, format
        self.max_seq_len, self.batch_size = max_seq_len, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.read_options = {
            "user_col": user_col,
            "item_col": item_col,
            "time_col": time_col,
            "sep": sep,
            "has_header": has_header,
            "encoding": encoding,
        }
        self.preprocess_config = pp.PreprocessConfig(min_user_interactions, min_item_interactions, deduplicate)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else cache.default_cache_dir()
        self.use_cache, self.num_workers, self.seed = use_cache, num_workers, seed
        self.trim_padding, self.bucket_by_length = trim_padding, bucket_by_length
        self.synthetic = synthetic
        if path == SYNTHETIC:
            synthetic.validate()
        self._data: pp.SequenceData | None = None
        self.predict_path = predict_path
        self.predict_histories: EncodedHistories | None = None  # read by predict_dataloader
        self.named_dataset, self.data_dir, self.download = dataset, data_dir, download
        if dataset is not None:
            datasets.check_choice(dataset, None if path == SYNTHETIC else path, format)

    # -- data -------------------------------------------------------------------------------------

    @property
    def data(self) -> pp.SequenceData:
        """The processed data, read (or loaded from the cache) on first access."""
        if self._data is None:
            self._data = self._load()
            _print_stats(self._data.stats, self._source_name())
        return self._data

    @property
    def num_items(self) -> int:
        """Items after filtering (ids 1..num_items; 0 is padding). Linked to the model by the CLI."""
        return self.data.num_items

    @property
    def num_users(self) -> int:
        return self.data.num_users

    @property
    def item_ids(self) -> list:
        """Original id of each internal item id; ``item_ids[0]`` is None (padding)."""
        return self.data.item_ids

    @property
    def user_ids(self) -> list:
        """Original id of each internal user index (the batches' ``user``)."""
        return self.data.user_ids

    @property
    def train_pairs_per_batch(self) -> float:
        """(History, next item) pairs in one process's training batch on average: its batch size for
        prefix samples, its windows times the mean pairs per window for ``train_samples: sequences``."""
        train = self.dataset("train")
        per_sample = train.target_items.numel() / max(len(train), 1)
        return per_process_batch(self.batch_size, self._rank_world()[1]) * per_sample

    @property
    def statistics(self) -> dict[str, float | int]:
        """Table-1 statistics (users, items, interactions, avg_length, density, ...) for logging."""
        return dict(self.data.stats)

    def prepare_data(self) -> None:
        """Read and preprocess once (rank 0 of each node), writing the cache the other ranks read."""
        _ = self.data

    def setup(self, stage: str) -> None:
        _ = self.data
        if stage == "fit":
            per_process_batch(self.batch_size, self._rank_world()[1])  # fails before the first step
        if stage == "fit" and self.data.stats["train_samples"] == 0:
            raise DataError(
                f"{self._source_name()}: no training samples (every user has exactly 3 interactions, all held "
                "out for validation and test). Use data with longer sequences or lower the k-core thresholds."
            )

    def _source_name(self) -> str:
        if self.named_dataset is not None:
            return self.named_dataset
        return SYNTHETIC if self.path == SYNTHETIC else str(Path(self.path).expanduser())

    def _load(self) -> pp.SequenceData:
        if self.path == SYNTHETIC and self.named_dataset is None:
            return pp.preprocess(generate(self.synthetic), self.preprocess_config, SYNTHETIC)
        source = self._source()
        check_source(source)  # a missing or unreadable file is named before any cache lookup
        if not self.use_cache:
            return self._read(source)
        settings = cache.settings_key(self.format, self.read_options, self.preprocess_config)
        key, path = cache.cache_key(source, settings), cache.cache_path(self.cache_dir, source, settings)
        cache.clean_temporaries(self.cache_dir)
        data = cache.load_cache(path, key)
        if data is not None:
            pp.warn_dropped(str(source), data.stats.get("dropped_short_users", 0))
            return data
        data = self._read(source)
        try:
            cache.save_cache(data, path, key)
        except OSError as err:
            log.warning("could not write the data cache %s (%s); going on without it", path, err)
        return data

    def _source(self) -> Path:
        """The data file: ``path``, or the named data set's converted file (fetched when absent)."""
        if self.named_dataset is None:
            return Path(self.path).expanduser()
        return datasets.prepare(self.named_dataset, self.data_dir, self.download)

    def _read(self, source: Path) -> pp.SequenceData:
        frame = read_interactions(source, self.format, **self.read_options)
        return pp.preprocess(frame, self.preprocess_config, str(source))

    # -- loaders ----------------------------------------------------------------------------------

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def dataset(self, split: str) -> WindowDataset:
        """All samples of ``split`` (train, valid, test or predict), unsharded; ``dataset(split)[index]`` is a batch.
        Training samples are prefixes or, with ``train_samples: sequences``, windows trained at every position."""
        sequences = split == "train" and self.train_samples == "sequences"
        if sequences:
            users, starts, ends = pp.train_windows(self.data.offsets, self.max_seq_len)
        else:
            users, starts, ends = pp.split_positions(self.data.offsets, split)
        return WindowDataset(
            self.data.items,
            users,
            starts,
            ends,
            self.max_seq_len,
            with_target=split != "predict",
            evaluation=split != "train",
            trim_padding=self.trim_padding,
            all_positions=sequences,
        )

    def _loader(self, dataset: WindowDataset, sampler: ShardedBatchSampler) -> DataLoader:
        # batch_size=None: the sampler yields whole index batches and the dataset builds whole batches.
        return DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # Its own generator: creating an iterator must not draw from the global RNG, or a resumed
            # run's dropout masks would drift from the uninterrupted run's (RNGStateCheckpoint).
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train")
        rank, world = self._rank_world()
        sampler = ShardedBatchSampler(
            len(dataset), per_process_batch(self.batch_size, world), shuffle=True, seed=self.seed, rank=rank,
            world_size=world,
            equal_shards=True, lengths=dataset.window_lengths if self.bucket_by_length else None,
        )
        return self._loader(dataset, sampler)

    def _eval_loader(self, dataset: WindowDataset) -> DataLoader:
        rank, world = self._rank_world()
        lengths = dataset.window_lengths if self.trim_padding else None
        batch = -(-self.eval_batch_size // world)  # ceil: the global evaluation batch shared out
        sampler = ShardedBatchSampler(len(dataset), batch, rank=rank, world_size=world, lengths=lengths)
        return self._loader(dataset, sampler)

    def val_dataloader(self) -> DataLoader:
        """Validation: history = items before the second-last, target = the second-last item."""
        return self._eval_loader(self.dataset("valid"))

    def test_dataloader(self) -> DataLoader:
        """Test: history = all items but the last (train + valid), target = the last item."""
        return self._eval_loader(self.dataset("test"))

    def predict_dataloader(self) -> DataLoader:
        """Predict: the user's full history (train + valid + test) as input; no ``target``; with
        ``predict_path``, the histories of that file instead. Map ``user`` back with
        :attr:`predict_user_ids` and predicted items with :attr:`item_ids`."""
        if self.predict_path is None:
            return self._eval_loader(self.dataset("predict"))
        source = Path(self.predict_path).expanduser()
        frame = read_interactions(source, self.format, **self.read_options)
        self.predict_histories = encode_histories(frame, self.item_ids, str(source))
        return self._eval_loader(self.histories_dataset(self.predict_histories))

    def histories_dataset(self, histories: EncodedHistories) -> WindowDataset:
        """Predict samples of encoded histories: each user's whole history, cut to ``max_seq_len``."""
        users = torch.arange(len(histories.user_ids))  # (U,)
        starts, ends = histories.offsets[:-1], histories.offsets[1:]  # (U,) each
        return WindowDataset(histories.items, users, starts, ends, self.max_seq_len,
                             with_target=False, evaluation=True, trim_padding=self.trim_padding)  # fmt: skip

    @property
    def predict_user_ids(self) -> list:
        """Original id of each user index of the predict batches (``predict_path``'s users, else
        :attr:`user_ids`)."""
        return self.predict_histories.user_ids if self.predict_histories is not None else self.user_ids


def per_process_batch(batch_size: int, world_size: int) -> int:
    """Each process's share of the global training batch ``batch_size`` over ``world_size`` processes.
    Equal shares, so averaging the processes' gradients (DDP) averages over the global batch."""
    if batch_size % world_size:
        lower, upper = max(world_size, batch_size // world_size * world_size), -(-batch_size // world_size) * world_size
        raise DataError(
            f"data.batch_size={batch_size} is the global batch, shared equally by {world_size} processes "
            f"(trainer.devices x trainer.num_nodes): set it to a multiple of {world_size}, e.g. {lower} or {upper}."
        )
    return batch_size // world_size


def _check_settings(
    format: str,
    max_seq_len: int,
    batch_size: int,
    eval_batch_size: int | None,
    min_user: int,
    min_item: int,
    num_workers: int,
) -> None:
    """Raise DataError on a setting no data could satisfy."""
    if format != "auto" and format not in FORMATS:
        raise DataError(f"unknown data format {format!r}; use 'auto' or one of {', '.join(FORMATS)}.")
    if max_seq_len < 1:
        raise DataError(f"max_seq_len must be >= 1 (got {max_seq_len}); set `max_seq_len`, e.g. 50.")
    for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if value is not None and value < 1:
            raise DataError(f"{name} must be >= 1 (got {value}).")
    for name, value in (
        ("min_user_interactions", min_user),
        ("min_item_interactions", min_item),
        ("num_workers", num_workers),
    ):
        if value < 0:
            raise DataError(f"{name} must be >= 0 (got {value}).")


@rank_zero_only
def _print_stats(stats: dict, source: str) -> None:
    """Print the statistics table once, on rank 0 (rich if installed, else the log)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency, but stay usable without it
        log.info(pp.format_stats(stats, source))
        return
    table = Table(title=f"data: {Path(source).name}")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key, value in stats.items():
        table.add_row(key, pp.format_value(key, value))
    Console().print(table)
