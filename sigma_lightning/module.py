"""SeqRecModule: the LightningModule that trains and evaluates any next-item backbone.

It owns the item-embedding table (tied: the same table embeds the inputs and scores every item),
full-ranking HR/NDCG/MRR@K (scored in item chunks, so a large catalogue never needs a (B, N) matrix)
and the default optimiser; the training loss is a component too (`model.loss`, sigma_lightning/losses.py:
full, chunked or sampled softmax). It knows no particular backbone nor loss: any nn.Module with `hidden_size` and
`forward(item_emb (B, L, D), mask (B, L)) -> (B, D)` plugs in (docs/architecture.md).
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics import MeanMetric

from sigma_lightning.errors import ConfigError, check_range
from sigma_lightning.losses import FullSoftmax, Loss, train_target_counts
from sigma_lightning.metrics import GroupedRankingMetrics, RankingMetrics, group_rows
from sigma_lightning.scoring import rank_targets, top_k_chunked, top_k_lowest_first

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


class SeqRecModule(L.LightningModule):
    """Next-item recommendation with a pluggable backbone.

    Args:
        backbone: the sequence encoder (chosen in YAML by `class_path`/`init_args`).
        num_items: number of real items; ids are 1..num_items, 0 is padding. The CLI links it from
            the data module.
        top_k: cut-offs for HR/NDCG/MRR; 10 is always included.
        mask_history: when True, items the user already interacted with (other than the target) are
            excluded from the ranking. Off by default, as in the papers' protocol.
        embedding_init_std: std of the N(0, std) item-embedding initialisation (RecBole: 0.02).
        learning_rate: learning rate of the default Adam optimiser (used when no `optimizer:` is
            configured; the CLI's `optimizer:` section replaces it).
        loss: the training loss (chosen in YAML by `class_path`, sigma_lightning/losses.py); None is
            `FullSoftmax()`, the papers' cross-entropy over every item. For 10^5+ items use
            `ChunkedSoftmax` (exact, bounded memory) or `SampledSoftmax` (docs/efficiency.md).
        score_chunk_size: evaluation and prediction score this many items at a time: a catalogue
            up to this size takes one matmul, a larger one O(batch x score_chunk_size) memory.
        history_groups: `sigma test` also reports HR/NDCG/MRR@K per group of users by the number of
            items before the test item, split at these edges (SIGMA's Figure 3: [5, 20] gives <= 5,
            6-20 and > 20): logged as `test/history<=5/HR@10` and so on, printed with the test
            results and saved to `history_groups.csv` in the test's log folder; [] switches it off.
        compile: run the backbone through torch.compile (not the loss nor the scoring). The first
            training and the first evaluation batch each trace and compile it (seconds to minutes on
            a CPU), later batches run the compiled code. Weights and checkpoints are the same as
            without it: a checkpoint loads with compile on or off. docs/efficiency.md measures it.
        compile_mode: torch.compile's mode with the inductor backend: default, reduce-overhead (CUDA
            graphs), max-autotune, max-autotune-no-cudagraphs.
        compile_backend: torch.compile's backend: inductor generates fused C++ (CPU) or Triton (GPU)
            code and needs a C/C++ compiler; aot_eager traces forward and backward the same way but
            runs them as traced, without generating code (for checking a model compiles).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_items: int = 0,
        top_k: list[int] = [10, 20],  # noqa: B006 (jsonargparse needs a literal default)
        mask_history: bool = False,
        embedding_init_std: float = 0.02,
        learning_rate: float = 1e-3,
        loss: Loss | None = None,
        score_chunk_size: int = 32768,
        history_groups: list[int] = [5, 20],  # noqa: B006 (as top_k)
        compile: bool = False,  # noqa: A002 (the setting's name, model.compile)
        compile_mode: CompileMode = "default",
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__()
        hidden_size = check_module_settings(backbone, num_items, top_k, embedding_init_std, learning_rate)
        check_range("model.score_chunk_size", score_chunk_size, 1)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Attribute '(backbone|loss)' is an instance of `nn.Module`")
            self.save_hyperparameters()
        for name in ("backbone", "loss"):
            if isinstance(self.hparams.get(name), nn.Module):
                # Outside the CLI these arrive as objects: keep checkpoints free of pickled code (they
                # load with weights_only=True); pass `backbone=` (and `loss=`) again to load_from_checkpoint.
                self.hparams.pop(name)
        self.backbone = backbone
        if compile:
            compile_backbone(backbone, compile_mode, compile_backend)
        self.loss = loss if loss is not None else FullSoftmax()
        self.score_chunk_size = score_chunk_size
        self.num_items = num_items
        self.item_embedding = nn.Embedding(num_items + 1, hidden_size, padding_idx=0)
        nn.init.normal_(self.item_embedding.weight, std=embedding_init_std)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        top_k = sorted(set(top_k) | {10})
        self.val_metrics = RankingMetrics(top_k)
        self.test_metrics = RankingMetrics(top_k)
        # The evaluation cross-entropy's mean over users, its sum and count summed across processes:
        # Lightning's own sync_dist mean truncates an odd total user count (151 users on 2 ranks: /150).
        self.val_loss, self.test_loss = MeanMetric(nan_strategy="disable"), MeanMetric(nan_strategy="disable")
        self.test_groups = (
            GroupedRankingMetrics(history_groups, top_k, "model.history_groups") if history_groups else None
        )
        # What predict_step returns; RecommendationWriter (`sigma predict --predictions.k ...`) sets both.
        self.predict_k = max(top_k)
        self.predict_exclude_seen = mask_history
        # Pairs in one training batch of windows on average (data.train_samples: sequences), from the
        # data module when fitting starts; None: each batch's loss is its pairs' plain mean.
        self.pairs_per_batch: float | None = None

    # ---- forward and scoring ---------------------------------------------------------------
    def forward(self, input_ids: Tensor) -> Tensor:
        """User representations. input_ids: (B, L) padded item ids -> (B, D)."""
        mask = input_ids != 0  # (B, L)
        return self.backbone(self.item_embedding(input_ids), mask)  # (B, D)

    def item_scores(self, user_repr: Tensor) -> Tensor:
        """Scores of every real item. user_repr: (B, D) -> (B, num_items); column j is item j + 1."""
        return user_repr @ self.item_embedding.weight[1:].T  # (B, N)

    def _ranking_scores(self, batch: dict[str, Tensor]) -> Tensor:
        # Rank in float32 outside autocast: bf16 logits create ties that a pessimistic rank punishes.
        with torch.autocast(device_type=self.device.type, enabled=False):
            scores = self.item_scores(self(batch["input_ids"]).float())  # (B, N)
        if self.hparams.mask_history and "history" in batch:
            scores = mask_seen_items(scores, batch["history"], batch.get("target"))
        return scores

    # ---- steps -----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # A backbone with a longest input (learned positions, a filter length) says so before the
        # first batch, naming both settings; others accept any length.
        check = getattr(self.backbone, "check_sequence_length", None)
        max_seq_len = getattr(self.trainer.datamodule, "max_seq_len", None) if self._trainer is not None else None
        if check is not None and max_seq_len is not None:
            check(max_seq_len)

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if getattr(datamodule, "train_samples", "prefixes") == "sequences":
            check_all_positions(self.backbone)  # before the sanity check, not at the first step
            self.pairs_per_batch = datamodule.train_pairs_per_batch
        if self.loss.needs_item_counts and datamodule is not None:
            self.loss.set_item_counts(train_target_counts(datamodule).to(self.device))

    def training_pairs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The (user representation (P, D), target item (P,)) pairs of a training batch: one per row
        for prefix samples (`target` (B,)); one per real position for sequences trained at every
        position (`target` (B, L), 0 where a position has no next item), read from the backbone's
        `sequence_output` in one pass. Each pair counts once in the loss's mean either way."""
        target = batch["target"]
        if target.dim() == 1:
            return self(batch["input_ids"]), target  # (B, D), (B,)
        check_all_positions(self.backbone)
        input_ids = batch["input_ids"]  # (B, L)
        hidden = self.backbone.sequence_output(self.item_embedding(input_ids), input_ids != 0)  # (B, L, D)
        real = target != 0  # (B, L): positions with a next item
        return hidden[real], target[real]  # (P, D), (P,)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        user, target = self.training_pairs(batch)  # (P, D), (P,)
        loss = self.loss(user, self.item_embedding.weight[1:], target - 1)  # padding is never a class
        # sync_dist: under DDP the logged loss is the mean over every process's samples, not rank 0's.
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=user.size(0),
                 sync_dist=True)  # fmt: skip
        if self._trainer is not None and self.trainer.optimizers:
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]  # the same on every rank
            self.log("train/lr", lr, on_step=False, on_epoch=True, sync_dist=True)
        if batch["target"].dim() == 2 and self.pairs_per_batch:
            # Batches of windows hold different numbers of pairs (bucketed: 350 one-item windows, or 350
            # of 50): weigh each batch's mean by its pairs, so every pair counts the same over an epoch,
            # as in prefix batches of a fixed size, instead of the pairs of short windows counting most.
            loss = loss * (user.size(0) / self.pairs_per_batch)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def evaluation_ranks(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Each row's 1-based rank of its target among all items (pessimistic on ties, the history
        left out with `mask_history`) and its cross-entropy, both (B,): what validation and test count."""
        target = batch["target"] - 1  # (B,)
        exclude = batch.get("history") if self.hparams.mask_history else None
        # Rank in float32 outside autocast: bf16 logits create ties that a pessimistic rank punishes.
        with torch.autocast(device_type=self.device.type, enabled=False):
            user = self(batch["input_ids"]).float()  # (B, D)
            items = self.item_embedding.weight[1:].float()  # (N, D)
            return rank_targets(user, items, target, self.score_chunk_size, exclude)  # (B,), (B,)

    def _eval_step(self, batch: dict[str, Tensor], metrics: RankingMetrics, stage: str) -> None:
        ranks, cross_entropy = self.evaluation_ranks(batch)  # (B,), (B,)
        # Logged as an epoch mean; no per-step collective, so uneven shards never hang DDP.
        loss = getattr(self, f"{stage}_loss")
        loss.update(cross_entropy)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True)
        metrics.update(ranks)
        if stage == "test" and self.test_groups is not None:
            self.test_groups.update(ranks, (batch["history"] != 0).sum(1))  # (B,): every item before the target

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")
        if self.test_groups is not None:
            self._log_history_groups()

    def _log_metrics(self, metrics: RankingMetrics, stage: str) -> None:
        values = metrics.compute()  # synced across ranks by torchmetrics: every rank has every user's
        for name, value in values.items():
            # The values are already equal on every rank; sync_dist averages equal values, and says
            # so to Lightning (which otherwise warns that an epoch-level value may be rank 0's only).
            self.log(f"{stage}/{name}", value, prog_bar=name in ("HR@10", "NDCG@10"), sync_dist=True)
        metrics.reset()

    def _log_history_groups(self) -> None:
        """Logs `test/history<group>/<metric>` per history-length group (users included) and, on
        rank 0, saves them to `history_groups.csv` in the trainer's log folder (when it has a logger)."""
        groups = self.test_groups.compute()  # synced across ranks (torchmetrics), as test_metrics
        for label, values in groups.items():  # the same groups on every rank: the counts are synced
            for name, value in values.items():
                self.log(f"test/history{label.replace(' ', '')}/{name}", value, sync_dist=True)
        self.test_groups.reset()
        if self._trainer is None or self.trainer.logger is None:
            return  # no run folder to save into (Trainer(logger=False)): logged only
        folder = self.trainer.log_dir  # on every rank: under DDP it is a broadcast from rank 0
        if self.trainer.is_global_zero:
            rows = group_rows(groups)
            saved = ""
            if folder is not None:  # never the working folder: a logger without a folder saves nothing
                path = Path(folder) / "history_groups.csv"
                write_rows(path, rows)
                saved = f" (saved to {path})"
            rank_zero_info(f"sigma: test metrics by history length{saved}:\n{format_rows(rows)}")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Top `predict_k` items per user after its whole history (see `recommend_batch`).
        `RecommendationWriter` sets `predict_k` and `predict_exclude_seen` when `sigma predict` starts."""
        return self.recommend_batch(batch, self.predict_k, self.predict_exclude_seen)

    def recommend_batch(self, batch: dict[str, Tensor], k: int, exclude_seen: bool) -> dict[str, Tensor]:
        """{"user": (B,), "items": (B, k) ids 1..N, "scores": (B, k), "known": (B,)} for a predict
        batch (input_ids, history, user). With `exclude_seen` the history's items score -inf; `known`
        is False for a row with no item at all (its scores mean nothing: the caller falls back)."""
        exclude = batch.get("history") if exclude_seen else None
        with torch.autocast(device_type=self.device.type, enabled=False):
            user = self(batch["input_ids"]).float()  # (B, D)
            items, top = top_k_chunked(user, self.item_embedding.weight[1:].float(), k, self.score_chunk_size, exclude)
        return {"user": batch["user"], "items": items, "scores": top, "known": (batch["input_ids"] != 0).any(1)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)


def evaluation_batches(model: nn.Module, dataset, batch_size: int):
    """Every sample of `dataset` (a WindowDataset) in batches on `model`'s device, with the model in
    eval mode while they are drawn (its mode is restored afterwards, also after an error)."""
    was_training = model.training
    model.eval()
    try:
        for index in torch.arange(len(dataset)).split(batch_size):
            yield {name: t.to(model.device) for name, t in dataset[index].items()}
    finally:
        model.train(was_training)


def check_all_positions(backbone: nn.Module) -> None:
    """Raise ConfigError unless `backbone` can train every position in one pass (`sequence_output`)."""
    if not callable(getattr(backbone, "sequence_output", None)):
        raise ConfigError(
            f"data.train_samples=sequences trains every position of a sequence in one pass, which needs a causal "
            f"backbone with `sequence_output` (SASRec, GRU4Rec, Mamba4Rec); {type(backbone).__name__} has none "
            "(SIGMA and EchoMamba4Rec look backwards in time): set data.train_samples: prefixes."
        )


def write_rows(path: Path, rows: list[dict]) -> None:
    """A CSV file of `rows` (dicts with the same keys), its folder made if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]) if rows else ["group", "users"])
        writer.writeheader()
        writer.writerows(rows)


def format_rows(rows: list[dict]) -> str:
    """`rows` (dicts with the same keys) as an aligned text table; floats to 4 decimals."""
    if not rows:
        return "  (no users)"
    cells = [list(rows[0])] + [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    return "\n".join("  " + "  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in cells)


def compile_backbone(backbone: nn.Module, mode: str, backend: str) -> None:
    """torch.compile `backbone` in place: its forward (nn.Module.compile) and, where it has one,
    `sequence_output` (training at every position calls it instead). The module itself is not
    wrapped, so its parameters and state_dict keys stay as they are (no `_orig_mod.` prefix)."""
    import torch._dynamo  # torch.compile's tracer: imported only when a model is compiled

    backends = torch._dynamo.list_backends(exclude_tags=())
    if backend not in backends:
        raise ConfigError(f"model.compile_backend={backend!r}: expected one of {', '.join(sorted(backends))}.")
    if mode != "default" and backend != "inductor":
        raise ConfigError(
            f"model.compile_mode={mode!r} is a setting of the inductor backend, not of {backend!r}: "
            "set model.compile_backend: inductor or model.compile_mode: default."
        )
    options = {"backend": backend, "mode": None if mode == "default" else mode}
    backbone.compile(**options)
    if callable(getattr(backbone, "sequence_output", None)):
        backbone.sequence_output = torch.compile(backbone.sequence_output, **options)


def check_module_settings(
    backbone: nn.Module, num_items: int, top_k: list[int], embedding_init_std: float, learning_rate: float
) -> int:
    """Raise ConfigError, naming the setting as YAML writes it, for a value SeqRecModule cannot use;
    returns the backbone's `hidden_size`."""
    if num_items < 1:
        raise ConfigError(
            f"model.num_items={num_items}: expected >= 1. The CLI sets it from the data module; in Python "
            "pass num_items=datamodule.num_items."
        )
    hidden_size = getattr(backbone, "hidden_size", None)
    if not isinstance(hidden_size, int) or isinstance(hidden_size, bool):
        raise ConfigError(
            f"model.backbone: {type(backbone).__name__} has no integer attribute `hidden_size`; every backbone "
            "must declare the width of the item embeddings it consumes (docs/architecture.md)."
        )
    for i, k in enumerate(top_k):
        check_range(f"model.top_k[{i}]", k, 1)
    check_range("model.embedding_init_std", embedding_init_std, 0, low_inclusive=False)
    check_range("model.learning_rate", learning_rate, 0, low_inclusive=False)
    return hidden_size


def mask_seen_items(scores: Tensor, history: Tensor, target: Tensor | None = None) -> Tensor:
    """Set the scores of items in `history` (B, H; 0 = padding) to -inf, except each row's target.

    scores: (B, N) with column j = item j + 1. Returns a new tensor.
    """
    scores = scores.clone()
    rows = torch.arange(scores.size(0), device=scores.device).unsqueeze(1).expand_as(history)  # (B, H)
    seen = history > 0
    keep = scores.gather(1, (target - 1).unsqueeze(1)) if target is not None else None  # (B, 1)
    scores[rows[seen], history[seen] - 1] = float("-inf")
    if keep is not None:
        scores.scatter_(1, (target - 1).unsqueeze(1), keep)
    return scores


def top_k_items(scores: Tensor, k: int, exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The k best items of each row. scores: (B, N), column j = item j + 1; exclude: (B, H) item ids
    to leave out (0 = padding), their scores set to -inf. Returns items (B, k') in 1..N and their
    scores (B, k'), best first, ties to the lower id, k' = min(k, N) (as `scoring.top_k_chunked`)."""
    if exclude is not None:
        scores = mask_seen_items(scores, exclude)
    top, index = top_k_lowest_first(scores, k)  # (B, k')
    return index + 1, top
