"""research/recbole_crosscheck.py (runs where RecBole is installed; these tests need no RecBole): the
atomic file it writes keeps every user's items in order, its RecBole settings are the recipe's,
and its saved state continues a run as if it had not stopped."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from research import recbole_crosscheck as crosscheck

ROOT = Path(__file__).parents[1]


def test_atomic_file_keeps_each_users_order(tmp_path):
    src = tmp_path / "Beauty.txt"
    src.write_text("1 5 3 9\n2 3 7\n")
    crosscheck.write_atomic_file(src, tmp_path / "rb")
    lines = (tmp_path / "rb" / "beauty" / "beauty.inter").read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float"
    rows = [line.split("\t") for line in lines[1:]]
    assert rows == [["1", "5", "0"], ["1", "3", "1"], ["1", "9", "2"], ["2", "3", "0"], ["2", "7", "1"]]


def test_settings_are_the_recipes(tmp_path):
    recipe = yaml.safe_load((ROOT / "sigma_lightning" / "configs" / "beauty" / "sasrec.yaml").read_text())
    backbone = recipe["model"]["backbone"]["init_args"]
    cfg = crosscheck.recbole_config(tmp_path, epochs=3, seed=42)
    assert (cfg["hidden_size"], cfg["n_layers"], cfg["n_heads"], cfg["inner_size"]) == (
        backbone["hidden_size"], backbone["num_layers"], backbone["num_heads"], backbone["inner_size"],
    )  # fmt: skip
    assert (cfg["hidden_dropout_prob"], cfg["attn_dropout_prob"]) == (backbone["dropout"], backbone["attn_dropout"])
    assert cfg["MAX_ITEM_LIST_LENGTH"] == recipe["data"]["max_seq_len"]
    assert cfg["train_batch_size"] == recipe["data"]["batch_size"]
    assert cfg["learning_rate"] == recipe["optimizer"]["init_args"]["lr"]
    assert cfg["user_inter_num_interval"] == f"[{recipe['data']['min_user_interactions']},inf)"
    assert cfg["item_inter_num_interval"] == f"[{recipe['data']['min_item_interactions']},inf)"
    assert cfg["eval_args"]["mode"] == "full" and cfg["loss_type"] == "CE" and cfg["seed"] == 42


RUN = {"seed": 42, "data": "/data/Beauty.txt"}


def _epoch(model, optimizer, loader):
    """A training epoch drawing from every stream save_state keeps: the loader's shuffling
    generator, torch's (dropout), numpy's and Python's global generators."""
    for (x,) in loader:
        noise = float(np.random.rand()) + random.random()
        loss = (torch.nn.functional.dropout(model(x), 0.5) ** 2).mean() * (1 + noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _setup(seed):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(seed)
    data = torch.utils.data.TensorDataset(torch.arange(24, dtype=torch.float32).view(8, 3))
    return model, optimizer, generator, torch.utils.data.DataLoader(data, batch_size=3, shuffle=True, generator=generator)


def test_state_continues_as_an_uninterrupted_run(tmp_path):
    np.random.seed(1)
    random.seed(1)
    model, optimizer, _, loader = _setup(0)
    for _ in range(3):
        _epoch(model, optimizer, loader)
    straight = [t.clone() for t in model.parameters()]

    np.random.seed(1)
    random.seed(1)
    model, optimizer, generator, loader = _setup(0)
    _epoch(model, optimizer, loader)
    crosscheck.save_state(tmp_path / "s.pt", 0, RUN, model, optimizer, generator)
    np.random.seed(7)  # a new process: every stream somewhere else
    random.seed(7)
    model, optimizer, generator, loader = _setup(5)
    assert crosscheck.load_state(tmp_path / "s.pt", RUN, model, optimizer, generator) == 0
    for _ in range(2):
        _epoch(model, optimizer, loader)
    for got, want in zip(model.parameters(), straight):
        assert torch.equal(got, want)


def test_state_of_another_run_is_refused(tmp_path):
    model, optimizer, generator, _ = _setup(0)
    crosscheck.save_state(tmp_path / "s.pt", 3, RUN, model, optimizer, generator)
    with pytest.raises(SystemExit, match="another run \\(seed: 42 there, 43 now\\)"):
        crosscheck.load_state(tmp_path / "s.pt", {**RUN, "seed": 43}, model, optimizer, generator)


def test_early_stop_follows_recboles_rule():
    # a tie counts as the new best (RecBole compares with >=); stop after stopping_step + 1 misses
    assert crosscheck.early_stop([0.1, 0.3, 0.2, 0.3, 0.2], stopping_step=2) == (3, False)
    assert crosscheck.early_stop([0.1, 0.3, 0.2, 0.2, 0.2], stopping_step=2) == (1, True)
    assert crosscheck.early_stop([0.1, 0.3, 0.2, 0.2], stopping_step=2) == (1, False)
    assert crosscheck.early_stop([], stopping_step=10) == (-1, False)
