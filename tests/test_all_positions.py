"""`data.train_samples: sequences`: every position of a training window trained in one pass (the
original SASRec's way) holds exactly the (history, next item) pairs of the prefix samples, and for a
causal backbone its loss is the mean of the prefix samples' losses, in value and gradient; the
backbones that look backwards in time are refused with one ConfigError; a short CLI fit runs."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sigma_lightning.data import preprocess as pp
from sigma_lightning.data.datamodule import SeqRecDataModule, WindowDataset
from sigma_lightning.data.synthetic import SyntheticConfig
from sigma_lightning.errors import ConfigError, DataError
from sigma_lightning.losses import ChunkedSoftmax, FullSoftmax, SampledSoftmax, train_target_counts
from sigma_lightning.models import SIGMA, EchoMamba4Rec, GRU4Rec, Mamba4Rec, MambaConfig, SASRec
from sigma_lightning.module import SeqRecModule
from sigma_lightning.cli import run_sigma
from tests.padding import perturb_
from tests.test_cli import TINY, tiny_args

MAX_LEN = 12
CAUSAL = {
    "sasrec": lambda: SASRec(hidden_size=16, num_heads=2, inner_size=32, max_seq_len=MAX_LEN),
    "gru4rec": lambda: GRU4Rec(hidden_size=16, gru_hidden_size=12, num_layers=2),
    "mamba4rec": lambda: Mamba4Rec(hidden_size=16, mamba=MambaConfig(d_state=4)),
}
NON_CAUSAL = {
    "sigma": lambda: SIGMA(hidden_size=16, flip_range=2, mamba=MambaConfig(d_state=4)),
    "echomamba4rec": lambda: EchoMamba4Rec(hidden_size=16, filter_len=32, mamba=MambaConfig(d_state=4)),
}


def synthetic_data(train_samples: str, max_length: int = MAX_LEN + 2, **kwargs) -> SeqRecDataModule:
    """Generated users whose training parts (max_length - 2 items) fit one window of MAX_LEN inputs."""
    config = SyntheticConfig(num_users=60, num_items=30, num_topics=3, max_length=max_length)
    return SeqRecDataModule(path="synthetic", synthetic=config, max_seq_len=MAX_LEN, use_cache=False,
                            train_samples=train_samples, **kwargs)  # fmt: skip


def pairs(dataset: WindowDataset) -> Counter:
    """The multiset of (user, history, target) pairs a training dataset trains, from its batches."""
    index = torch.arange(len(dataset))
    batch, users = dataset[index], dataset.users[index].tolist()
    found = Counter()
    for row, user in enumerate(users):
        inputs, target = batch["input_ids"][row].tolist(), batch["target"][row]
        real = [item for item in inputs if item]
        if target.dim() == 0:  # a prefix sample: one pair
            found[(user, tuple(real), int(target))] += 1
            continue
        for j, next_item in enumerate(target.tolist()):  # a window: one pair per position with a target
            if next_item:
                found[(user, tuple(real[: j + 1]), next_item)] += 1
    return found


def csr_dataset(lengths: list[int], max_seq_len: int, train_samples: str) -> WindowDataset:
    """Training samples of users with these lengths, every item id distinct (id = position + 1),
    so a pair names the exact positions it came from."""
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.long), 0)
    items = torch.arange(1, int(offsets[-1]) + 1)
    if train_samples == "sequences":
        users, starts, ends = pp.train_windows(offsets, max_seq_len)
        return WindowDataset(items, users, starts, ends, max_seq_len, all_positions=True)
    return WindowDataset(items, *pp.split_positions(offsets, "train"), max_seq_len)


# ---- the pairs ----------------------------------------------------------------------------------


def test_windows_hold_exactly_the_prefix_samples_pairs():
    prefixes, sequences = synthetic_data("prefixes"), synthetic_data("sequences")
    windows = sequences.dataset("train")
    assert len(windows) == sequences.num_users - int((sequences.data.lengths == 3).sum())  # one window a user
    assert pairs(windows) == pairs(prefixes.dataset("train"))
    assert sum(pairs(windows).values()) == prefixes.statistics["train_samples"]
    assert torch.equal(train_target_counts(sequences), train_target_counts(prefixes))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(3, 40), min_size=1, max_size=6), st.integers(1, 12))
def test_long_histories_train_every_target_once_with_the_window_history(lengths, max_seq_len):
    """Histories shorter than max_seq_len: the same pairs. Longer ones: every target exactly once, its
    history the part of the prefix sample's since its window started (docs/notes/all-positions.md)."""
    prefix = {(user, target): history for (user, history, target) in pairs(csr_dataset(lengths, max_seq_len, "prefixes"))}
    windows = pairs(csr_dataset(lengths, max_seq_len, "sequences"))
    assert all(count == 1 for count in windows.values())
    assert sorted((user, target) for user, _, target in windows) == sorted(prefix)
    for user, history, target in windows:
        full = prefix[(user, target)]  # the prefix sample's: the last max_seq_len items before target
        assert full[len(full) - len(history):] == history  # a suffix of it, ending right before the target
        first_item = history[0] - 1  # ids are positions + 1: the history's first position (global)
        user_start = sum(lengths[:user])
        if first_item == user_start or len(history) == max_seq_len:
            assert history == full  # the oldest window, or a window's last position: exactly the same


def test_train_windows_cut_from_the_newest():
    users, starts, ends = pp.train_windows(torch.tensor([0, 3, 10, 21]), length=4)
    # user 0: 3 items, no training target; user 1: 7 items, inputs 3..6 -> targets 4..7, one window;
    # user 2: 11 items, inputs 10..17 -> targets 11..18: windows [14, 18) and [10, 14), newest first.
    assert users.tolist() == [1, 2, 2]
    assert starts.tolist() == [3, 14, 10] and ends.tolist() == [7, 18, 14]


def test_an_unknown_train_samples_value_is_named():
    with pytest.raises(DataError, match="data.train_samples"):
        SeqRecDataModule(train_samples="everything")


# ---- the loss -----------------------------------------------------------------------------------


def whole_split(data: SeqRecDataModule) -> dict[str, torch.Tensor]:
    """Every training sample of `data` as one batch."""
    train = data.dataset("train")
    return train[torch.arange(len(train))]


def loss_and_grads(model: SeqRecModule, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    user, target = model.training_pairs(batch)  # (P, D), (P,)
    loss = model.loss(user, model.item_embedding.weight[1:], target - 1)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("loss", [FullSoftmax, lambda: ChunkedSoftmax(chunk_size=7)], ids=["full", "chunked"])
@pytest.mark.parametrize("name", sorted(CAUSAL))
def test_all_positions_loss_is_the_mean_of_the_prefix_losses(name, loss):
    """Same weights, dropout off: one pass over the windows gives the prefix samples' mean loss and
    its gradient. Fails if the backbone saw later items (causality) or targets were shifted wrongly."""
    prefixes, sequences = synthetic_data("prefixes"), synthetic_data("sequences")
    torch.manual_seed(0)
    model = SeqRecModule(perturb_(CAUSAL[name](), seed=1), num_items=prefixes.num_items, loss=loss())
    model = model.double().eval()  # eval: dropout off, so both passes compute the same function
    expected, expected_grads = loss_and_grads(model, whole_split(prefixes))
    got, grads = loss_and_grads(model, whole_split(sequences))
    # float64 throughout, but the selective scan computes in float32 (ops/selective_scan.py)
    rtol, atol = (1e-6, 1e-7) if name == "mamba4rec" else (1e-9, 1e-12)
    torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)
    assert len(grads) == len(expected_grads)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=100 * rtol, atol=atol)  # summation order


def test_every_pair_weighs_the_same_over_an_epoch_of_bucketed_windows():
    """Bucketed windows make batches of very different pair counts; each batch's loss is scaled by its
    pairs over the mean, so an epoch's summed loss is the sum over every pair / pairs per batch, as an
    epoch of fixed-size prefix batches is (a batch's plain mean would let short windows count most)."""
    data = synthetic_data("sequences", max_length=30, batch_size=8, bucket_by_length=True)
    model = SeqRecModule(CAUSAL["sasrec"](), num_items=data.num_items).double().eval()
    model.pairs_per_batch = data.train_pairs_per_batch
    train = data.dataset("train")
    assert model.pairs_per_batch == pytest.approx(8 * train.target_items.numel() / len(train))
    batches = list(data.train_dataloader())
    assert len({int((b["target"] != 0).sum()) for b in batches}) > 1  # the batches differ in pairs
    with torch.no_grad():
        epoch = sum(model.training_step(b, i) for i, b in enumerate(batches))
        user, target = model.training_pairs(whole_split(data))
        pair_sum = torch.nn.functional.cross_entropy(
            (user @ model.item_embedding.weight[1:].T).float(), target - 1, reduction="sum"
        )  # float32 logits, as FullSoftmax's
    torch.testing.assert_close(epoch, pair_sum / model.pairs_per_batch)


def test_sampled_softmax_trains_on_every_position():
    """A sampled loss takes the (P, D) pairs as it takes prefix samples, its counts the same pairs'."""
    data = synthetic_data("sequences")
    model = SeqRecModule(CAUSAL["sasrec"](), num_items=data.num_items,
                         loss=SampledSoftmax(num_negatives=8, negatives="popularity"))  # fmt: skip
    model.loss.set_item_counts(train_target_counts(data))
    batch = whole_split(data)
    loss = model.training_step(batch, 0)
    assert loss.isfinite() and loss.requires_grad
    assert model.training_pairs(batch)[0].size(0) == int((batch["target"] != 0).sum())


@pytest.mark.parametrize("name", sorted(NON_CAUSAL))
def test_backbones_that_look_backwards_are_refused(name):
    data = synthetic_data("sequences")
    model = SeqRecModule(NON_CAUSAL[name](), num_items=data.num_items)
    with pytest.raises(ConfigError, match="data.train_samples"):
        model.training_pairs(whole_split(data))


# ---- through the CLI ----------------------------------------------------------------------------


def test_a_short_fit_trains_every_position_through_the_cli(tmp_path):
    cli = run_sigma(tiny_args(tmp_path, "fit", "--trainer.max_epochs", "1", "--data.train_samples", "sequences"))
    assert cli.datamodule.train_samples == "sequences"
    assert cli.datamodule.dataset("train").all_positions
    assert cli.trainer.callback_metrics["train/loss_epoch"].isfinite()
    assert "val/NDCG@10" in cli.trainer.callback_metrics


def test_the_cli_refuses_sigma_with_every_position_in_one_line(tmp_path, capsys):
    args = ["fit", "--config", "quickstart.yaml", "--config", "backbones/sigma.yaml", *TINY[:-10],
            "--model.backbone.init_args.hidden_size", "16", "--trainer.max_epochs", "1",
            "--trainer.enable_progress_bar", "false", "--data.cache_dir", str(tmp_path / "cache"),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--data.train_samples", "sequences"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        run_sigma(args)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sigma: error:")]
    assert len(errors) == 1 and "data.train_samples" in errors[0] and "SIGMA" in errors[0]
